//! The cross-platform userspace configuration API ("UAPI") that `wg(8)` and
//! `wg-quick(8)` speak over the unix stream socket
//! `/var/run/wireguard/<interface>.sock`.
//!
//! This module knows nothing about the protocol engine. It parses requests
//! into plain data ([`SetRequest`]), hands them to a [`UapiHandler`], and
//! formats the handler's [`DeviceSnapshot`] as a `get` answer.
//!
//! * [`parse_set`] turns the body of a `set=1` request into a [`SetRequest`];
//!   its documentation lists the parsing decisions.
//! * [`write_get`] formats a whole `get=1` answer.
//! * [`serve_connection`] runs the request loop on one accepted connection.
//! * [`UapiListener`] binds the socket the way `wg(8)` expects to find it.
//! * [`serve_concurrently`] serves its connections, several at once, each
//!   cut when its client stops making progress ([`ProgressStream`]).
//!
//! Framing (one connection may carry several requests):
//!
//! ```text
//! request  = "get=1" LF LF | "set=1" LF *( key "=" value LF ) LF
//! response = *( key "=" value LF ) "errno=" int LF LF
//! ```
//!
//! Error numbers go on the wire **negative** (`errno=-22`), success is
//! `errno=0`: `wg(8)` negates the number it reads to obtain the errno.

mod concurrent;
mod format;
mod listener;
mod parse;
mod progress;
mod server;

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ferroguard_proto::crypto::ct_eq;
use zeroize::Zeroizing;

pub use concurrent::{serve_concurrently, MAX_CONNECTIONS};
pub use format::{write_get, GetWriter, PeerLines};
pub use listener::{socket_dir, UapiListener, SOCKET_DIR_ENV};
pub use parse::{parse_set, MAX_LINE_LEN, MAX_REQUEST_LEN};
pub use progress::{ProgressStream, PROGRESS_BYTES};
pub use server::serve_connection;

/// `-EIO` as sent on the wire: reading the request failed or ended early.
pub const EIO: i32 = -5;
/// `-EPROTO` as sent on the wire: a line of a `set` request had no `=`.
pub const EPROTO: i32 = -71;
/// `-EINVAL` as sent on the wire: an unknown key or an invalid value.
pub const EINVAL: i32 = -22;
/// `-EADDRINUSE` as sent on the wire: the listen port could not be bound
/// (wireguard-go also reports a failed fwmark update with it).
pub const EADDRINUSE: i32 = -98;
/// `-ENOANO` as sent on the wire: wireguard-go's "unknown error".
pub const ENOANO: i32 = -55;

/// An error number as sent on the wire: always negative (`-EINVAL` is
/// `Errno(-22)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Errno(pub i32);

impl Errno {
    /// Reading the request failed or it ended before its blank line.
    pub const IO: Errno = Errno(EIO);
    /// A `set` line without `=`.
    pub const PROTOCOL: Errno = Errno(EPROTO);
    /// An unknown key or an invalid value.
    pub const INVALID: Errno = Errno(EINVAL);
    /// The listen port (or fwmark) could not be applied to the sockets.
    pub const ADDRESS_IN_USE: Errno = Errno(EADDRINUSE);
    /// Any other failure.
    pub const UNKNOWN: Errno = Errno(ENOANO);

    /// The error number of an I/O error, negated for the wire; errors that
    /// carry no OS error number become [`Errno::IO`].
    pub fn from_io_error(error: &io::Error) -> Errno {
        match error.raw_os_error() {
            Some(code) if code > 0 => Errno(-code),
            _ => Errno::IO,
        }
    }

    /// The value written after `errno=`: always negative, whatever a handler
    /// put in the struct (a positive number is negated, zero or an
    /// unrepresentable value becomes [`ENOANO`]), so that an error is never
    /// reported as success and `wg(8)` prints the right message.
    pub fn wire_value(self) -> i32 {
        match self.0 {
            code if code < 0 => code,
            0 => ENOANO,
            code => code.checked_neg().unwrap_or(ENOANO),
        }
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let code = self.wire_value();
        let os_error = io::Error::from_raw_os_error(code.saturating_neg());
        write!(f, "errno {code} ({os_error})")
    }
}

/// A device-wide change of a `set` request, in request order.
#[derive(Debug, Clone)]
pub enum DeviceOp {
    /// `private_key`: the new static private key as sent (the engine clamps
    /// it). All zeros means "remove the private key".
    PrivateKey(Zeroizing<[u8; 32]>),
    /// `listen_port`: the UDP port to bind, 0 = any.
    ListenPort(u16),
    /// `fwmark`: the socket mark, 0 = off.
    Fwmark(u32),
    /// `replace_peers=true`: remove all peers at this point of the request.
    ReplacePeers,
}

/// A change to one peer of a `set` request, in request order.
#[derive(Debug, Clone)]
pub enum PeerOp {
    /// `preshared_key`: all zeros means "no preshared key".
    PresharedKey(Zeroizing<[u8; 32]>),
    /// `endpoint`: a numeric address (IPv6 with its scope id).
    Endpoint(SocketAddr),
    /// `persistent_keepalive_interval` in seconds, 0 = off.
    PersistentKeepalive(u16),
    /// `replace_allowed_ips=true`: remove all allowed IPs of this peer at
    /// this point of the request.
    ReplaceAllowedIps,
    /// `allowed_ip=addr/cidr`: route the prefix to this peer (taking it from
    /// any other peer). Host bits may be set; the engine masks them.
    AddAllowedIp(IpAddr, u8),
    /// `allowed_ip=-addr/cidr`: remove the prefix if this peer owns it.
    RemoveAllowedIp(IpAddr, u8),
}

/// The changes a `set` request makes to one peer.
///
/// Semantics the handler implements (those of wireguard-go and the kernel):
/// * the peer is created unless it exists, `update_only` or `remove` is set;
/// * `update_only`: if the peer does not exist, nothing of this update is
///   applied (wherever the line stood in the request);
/// * `remove`: the peer is removed if it exists and `ops` are not applied;
/// * a public key equal to the device's own public key is ignored, with
///   its ops;
/// * the same public key may appear in several updates of one request:
///   they apply in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerUpdate {
    /// The peer's static public key (`public_key=`), which selects it.
    pub public_key: [u8; 32],
    /// `remove=true` was given.
    pub remove: bool,
    /// `update_only=true` was given.
    pub update_only: bool,
    /// The changes in request order.
    pub ops: Vec<PeerOp>,
}

/// A whole, valid `set` request: device changes first (they must precede
/// the first `public_key`), then peer updates in request order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetRequest {
    /// Device-wide changes in request order.
    pub device: Vec<DeviceOp>,
    /// Peer updates in request order.
    pub peers: Vec<PeerUpdate>,
}

/// The state of one peer as reported by `get`.
#[derive(Debug, Clone)]
pub struct PeerSnapshot {
    /// The peer's static public key.
    pub public_key: [u8; 32],
    /// The preshared key, all zeros when there is none.
    pub preshared_key: Zeroizing<[u8; 32]>,
    /// The current endpoint, if known.
    pub endpoint: Option<SocketAddr>,
    /// Wall-clock time of the last completed handshake as a duration since
    /// `UNIX_EPOCH`; `None` if there has been none.
    pub last_handshake: Option<Duration>,
    /// WireGuard message bytes sent to this peer (UDP payload).
    pub tx_bytes: u64,
    /// WireGuard message bytes received from this peer (UDP payload).
    pub rx_bytes: u64,
    /// Persistent keepalive interval in seconds, 0 = off.
    pub persistent_keepalive: u16,
    /// The prefixes routed to this peer, masked, in the engine's order.
    pub allowed_ips: Vec<(IpAddr, u8)>,
}

/// The state of the device as reported by `get`.
#[derive(Debug, Clone, Default)]
pub struct DeviceSnapshot {
    /// The clamped static private key, if one is set.
    pub private_key: Option<Zeroizing<[u8; 32]>>,
    /// The UDP port actually bound, 0 if none.
    pub listen_port: u16,
    /// The socket mark, 0 = off.
    pub fwmark: u32,
    /// The peers in insertion order (`wg show` relies on it).
    pub peers: Vec<PeerSnapshot>,
}

/// What the engine provides to the configuration API.
pub trait UapiHandler {
    /// The current state of the device, for a `get` request.
    fn get(&mut self) -> DeviceSnapshot;

    /// Writes the whole answer to a `get` request (see [`write_get`]).
    /// The default formats [`UapiHandler::get`]; a handler of a large
    /// device streams its peers instead with a [`GetWriter`].
    fn answer_get(&mut self, mut out: &mut dyn io::Write) -> io::Result<()> {
        write_get(&self.get(), &mut out)
    }

    /// Applies a `set` request that parsed completely. On error the handler
    /// returns the (negative) errno to answer; how much of the request was
    /// applied before the error is up to the handler.
    fn set(&mut self, request: SetRequest) -> Result<(), Errno>;
}

impl PartialEq for DeviceOp {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (DeviceOp::PrivateKey(a), DeviceOp::PrivateKey(b)) => ct_eq(&a[..], &b[..]),
            (DeviceOp::ListenPort(a), DeviceOp::ListenPort(b)) => a == b,
            (DeviceOp::Fwmark(a), DeviceOp::Fwmark(b)) => a == b,
            (DeviceOp::ReplacePeers, DeviceOp::ReplacePeers) => true,
            _ => false,
        }
    }
}

impl Eq for DeviceOp {}

impl PartialEq for PeerOp {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (PeerOp::PresharedKey(a), PeerOp::PresharedKey(b)) => ct_eq(&a[..], &b[..]),
            (PeerOp::Endpoint(a), PeerOp::Endpoint(b)) => a == b,
            (PeerOp::PersistentKeepalive(a), PeerOp::PersistentKeepalive(b)) => a == b,
            (PeerOp::ReplaceAllowedIps, PeerOp::ReplaceAllowedIps) => true,
            (PeerOp::AddAllowedIp(a, x), PeerOp::AddAllowedIp(b, y)) => a == b && x == y,
            (PeerOp::RemoveAllowedIp(a, x), PeerOp::RemoveAllowedIp(b, y)) => a == b && x == y,
            _ => false,
        }
    }
}

impl Eq for PeerOp {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_value_is_always_negative() {
        assert_eq!(Errno::INVALID.wire_value(), -22);
        assert_eq!(Errno(22).wire_value(), -22);
        assert_eq!(Errno(0).wire_value(), ENOANO);
        assert_eq!(Errno(i32::MIN).wire_value(), i32::MIN);
    }

    #[test]
    fn io_errors_map_to_their_negated_number() {
        let in_use = io::Error::from_raw_os_error(98);
        assert_eq!(Errno::from_io_error(&in_use), Errno::ADDRESS_IN_USE);
        let custom = io::Error::other("no number");
        assert_eq!(Errno::from_io_error(&custom), Errno::IO);
    }

    #[test]
    fn debug_output_hides_secret_keys() {
        let key = Zeroizing::new([0xab; 32]);
        let text = format!(
            "{:?} {:?}",
            DeviceOp::PrivateKey(key.clone()),
            PeerOp::PresharedKey(key)
        );
        assert!(!text.contains("171"), "{text}");
        assert!(!text.to_lowercase().contains("ab, "), "{text}");
    }

    #[test]
    fn secret_ops_compare_by_value() {
        let a = DeviceOp::PrivateKey(Zeroizing::new([1; 32]));
        let b = DeviceOp::PrivateKey(Zeroizing::new([1; 32]));
        let c = DeviceOp::PrivateKey(Zeroizing::new([2; 32]));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, DeviceOp::ReplacePeers);
    }
}
