//! The engine behind a C handle, in safe Rust: the caller's clock mapped to
//! the engine's [`Now`], datagrams waiting to be taken, the outcome of each
//! call as a plain value. `lib.rs` only moves bytes across the boundary.
#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use ferroguard_proto::crypto::{PublicKey, SecretKey, SymmetricKey};
use ferroguard_proto::device::{Device, Now, ReceiveOutcome, SendOutcome, Transmit};
use ferroguard_proto::peer::{Endpoint, PeerId};

/// The caller's monotonic clock (nanoseconds from any origin it likes)
/// mapped onto the engine's `Instant` and wall clock. The first reading
/// anchors both: caller time T is `Instant` I₀ + (T − T₀) and wall time
/// W₀ + (T − T₀), so a caller that runs its clock faster (tests, the C
/// example) runs the whole protocol faster, timestamps included.
#[derive(Debug, Default)]
pub struct CallerClock {
    anchor: Option<(u64, Instant, SystemTime)>,
}

impl CallerClock {
    /// The engine's `Now` for caller time `ns`. Earlier than the anchor is
    /// clamped to the anchor: the engine's clock never runs backwards
    /// past where it started.
    pub fn now(&mut self, ns: u64) -> Now {
        let (base, mono, wall) = *self
            .anchor
            .get_or_insert_with(|| (ns, Instant::now(), SystemTime::now()));
        let since = Duration::from_nanos(ns.saturating_sub(base));
        Now {
            mono: mono + since,
            wall: wall + since,
        }
    }

    /// Caller time of an engine instant (saturating at both ends).
    pub fn caller_ns(&self, instant: Instant) -> u64 {
        let Some((base, mono, _)) = self.anchor else {
            return 0;
        };
        match instant.checked_duration_since(mono) {
            Some(after) => base.saturating_add(after.as_nanos().min(u64::MAX as u128) as u64),
            None => base.saturating_sub(mono.duration_since(instant).as_nanos() as u64),
        }
    }
}

/// What became of an outgoing IP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Encrypted: a datagram waits in [`Engine::poll_transmit`].
    Ready,
    /// Held until a handshake completes (which has started).
    Queued,
    /// No peer's allowed IPs contain the destination.
    NoRoute,
    /// The peer has no endpoint yet.
    NoEndpoint,
}

/// What became of a received datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// An IP packet of this length for the tunnel.
    Deliver(usize),
    /// A handshake, cookie or keepalive, handled.
    Handled,
    /// Dropped (counted in the statistics).
    Dropped,
}

/// One engine with everything the C handle needs besides the engine.
pub struct Engine {
    /// The protocol engine.
    pub device: Device,
    /// The caller's clock.
    pub clock: CallerClock,
    /// Datagrams taken from the engine or sealed by [`Engine::send`], in
    /// order, waiting for the caller.
    pending: VecDeque<Transmit>,
    /// `listen_port` of the UAPI: stored for `get=1`, the sockets are the caller's.
    pub listen_port: u16,
    /// `fwmark` of the UAPI: stored for `get=1` only.
    pub fwmark: u32,
}

impl Engine {
    /// An engine with this private key, seeded with `seed`.
    pub fn new(private_key: [u8; 32], seed: [u8; 32]) -> Engine {
        let mut device = Device::new(seed);
        device.set_private_key(Some(SecretKey::from_bytes(private_key)));
        Engine {
            device,
            clock: CallerClock::default(),
            pending: VecDeque::new(),
            listen_port: 0,
            fwmark: 0,
        }
    }

    /// Adds a peer (or finds it); None for our own public key.
    pub fn add_peer(&mut self, public_key: [u8; 32]) -> Option<PeerId> {
        self.device.add_peer(PublicKey(public_key))
    }

    /// The peer with this id, if it exists.
    pub fn peer(&self, id: u64) -> Option<PeerId> {
        let id = PeerId(id);
        self.device.peer(id).map(|_| id)
    }

    /// Sets the preshared key (None or all zeros: none).
    pub fn set_preshared_key(&mut self, id: PeerId, key: Option<[u8; 32]>) {
        self.device
            .set_preshared_key(id, SymmetricKey(key.unwrap_or_default()));
    }

    /// Routes `addr/cidr` to the peer.
    pub fn add_allowed_ip(&mut self, id: PeerId, prefix: &str) -> Result<(), String> {
        let (addr, cidr) = parse_prefix(prefix)?;
        self.device
            .add_allowed_ip(id, addr, cidr)
            .map_err(|e| e.to_string())
    }

    /// Removes `addr/cidr` from the peer; false if it was not the peer's.
    pub fn remove_allowed_ip(&mut self, id: PeerId, prefix: &str) -> Result<bool, String> {
        let (addr, cidr) = parse_prefix(prefix)?;
        self.device
            .remove_allowed_ip(id, addr, cidr)
            .map_err(|e| e.to_string())
    }

    /// Encrypts (or queues) an IP packet from the tunnel.
    pub fn send(&mut self, ns: u64, packet: &[u8]) -> Option<Sent> {
        let now = self.clock.now(ns);
        let mut out = vec![0u8; packet.len() + 64];
        Some(match self.device.send(now, packet, &mut out) {
            SendOutcome::Sent {
                peer,
                len,
                endpoint,
            } => {
                out.truncate(len);
                self.take_transmits();
                self.pending.push_back(Transmit {
                    peer: Some(peer),
                    endpoint,
                    data: out,
                });
                Sent::Ready
            }
            SendOutcome::Queued(_) => Sent::Queued,
            SendOutcome::NoRoute => Sent::NoRoute,
            SendOutcome::NoEndpoint(_) => Sent::NoEndpoint,
            SendOutcome::Invalid => return None,
        })
    }

    /// Handles a datagram from `from`, decrypting in place: on
    /// [`Received::Deliver`] the IP packet is at the start of `datagram`.
    pub fn receive(&mut self, ns: u64, from: SocketAddr, datagram: &mut [u8]) -> Received {
        let now = self.clock.now(ns);
        match self.device.receive(now, Endpoint::from(from), datagram) {
            ReceiveOutcome::Deliver { len, .. } => {
                datagram.copy_within(16..16 + len, 0);
                Received::Deliver(len)
            }
            ReceiveOutcome::Handled => Received::Handled,
            ReceiveOutcome::Dropped(_) => Received::Dropped,
        }
    }

    /// Moves the engine's outbox behind what is already pending, keeping
    /// the order in which datagrams were made.
    fn take_transmits(&mut self) {
        while let Some(t) = self.device.poll_transmit() {
            self.pending.push_back(t);
        }
    }

    /// The next datagram to send, left in place (the caller's buffer may be
    /// too small for it).
    pub fn peek_transmit(&mut self) -> Option<&Transmit> {
        self.take_transmits();
        self.pending.front()
    }

    /// Drops the datagram [`Engine::peek_transmit`] showed.
    pub fn pop_transmit(&mut self) {
        self.pending.pop_front();
    }

    /// The next deadline in caller time.
    pub fn poll_timeout(&mut self) -> Option<u64> {
        let deadline = self.device.poll_timeout()?;
        Some(self.clock.caller_ns(deadline))
    }

    /// Fires the timers due at caller time `ns`.
    pub fn handle_timeout(&mut self, ns: u64) {
        let now = self.clock.now(ns);
        self.device.handle_timeout(now);
    }

    /// See [`Device::network_changed`].
    pub fn network_changed(&mut self, ns: u64) {
        let now = self.clock.now(ns);
        self.device.network_changed(now);
    }
}

/// `addr/cidr`, or a bare address (a host route).
pub fn parse_prefix(text: &str) -> Result<(IpAddr, u8), String> {
    let bad = || format!("not an address/prefix-length: {text:?}");
    let (addr, cidr) = match text.split_once('/') {
        Some((addr, cidr)) => (addr, Some(cidr)),
        None => (text, None),
    };
    let addr: IpAddr = addr.trim().parse().map_err(|_| bad())?;
    let width = if addr.is_ipv4() { 32 } else { 128 };
    let cidr = match cidr {
        Some(c) => c.trim().parse::<u8>().map_err(|_| bad())?,
        None => width,
    };
    if cidr > width {
        return Err(bad());
    }
    Ok((addr, cidr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_caller_clock_anchors_on_first_use_and_maps_back() {
        let mut clock = CallerClock::default();
        let t0 = clock.now(5_000);
        let t1 = clock.now(5_000 + 2_000_000_000);
        assert_eq!(t1.mono - t0.mono, Duration::from_secs(2));
        assert_eq!(
            t1.wall.duration_since(t0.wall).unwrap(),
            Duration::from_secs(2)
        );
        assert_eq!(clock.caller_ns(t1.mono), 5_000 + 2_000_000_000);
        assert_eq!(
            clock.now(1).mono,
            t0.mono,
            "earlier than the anchor: clamped"
        );
        assert_eq!(clock.caller_ns(t0.mono - Duration::from_nanos(10_000)), 0);
    }

    #[test]
    fn prefixes() {
        assert_eq!(
            parse_prefix("10.0.0.0/8"),
            Ok(("10.0.0.0".parse().unwrap(), 8))
        );
        assert_eq!(
            parse_prefix("fd00::1"),
            Ok(("fd00::1".parse().unwrap(), 128))
        );
        assert!(parse_prefix("10.0.0.0/33").is_err());
        assert!(parse_prefix("10.0.0/8").is_err());
        assert!(parse_prefix("").is_err());
    }
}
