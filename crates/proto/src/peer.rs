//! One peer: its configuration, handshake, keypairs, timers and counters.
//!
//! The rules that need device-wide state (indices, the outbox, our static
//! key) live in [`crate::device`]; this module holds what belongs to a single
//! peer and the keypair rotation of section 1.3 of the design notes.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use crate::constants::MAX_STAGED_PACKETS;
use crate::cookie::CookieGenerator;
use crate::crypto::{PublicKey, SecretKey, SharedSecret, SymmetricKey};
pub use crate::drops::DropCounts;
use crate::noise::InitiatorState;
use crate::tai64n::Tai64n;
use crate::timers::Timers;
use crate::transport::Keypair;

/// A device-local handle to a peer: opaque, it names the peer's slot in the
/// device's store and that slot's generation, so an id of a removed peer
/// never finds the peer that later takes its slot. The order of ids means
/// nothing (the device's order of peers is that of `Device::peer_ids`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub u64);

/// The local side of a received datagram, kept so that replies leave from
/// the address the peer wrote to ("sticky source"). Opaque to the core.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LocalAddr {
    /// The local address the datagram was sent to.
    pub ip: IpAddr,
    /// The interface it arrived on.
    pub ifindex: u32,
}

/// Where to send a peer's datagrams.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// The peer's address and port.
    pub addr: SocketAddr,
    /// The local source to use, if known.
    pub local: Option<LocalAddr>,
}

impl From<SocketAddr> for Endpoint {
    fn from(addr: SocketAddr) -> Self {
        Endpoint { addr, local: None }
    }
}

/// A peer's counters for monitoring, beside `rx_bytes`/`tx_bytes` (which
/// `wg show` reads). Plain integers: they change only under the engine's
/// lock, next to the byte counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerStats {
    /// WireGuard messages received and counted in `rx_bytes` (handshake,
    /// keepalive and data messages).
    pub rx_packets: u64,
    /// WireGuard messages sent and counted in `tx_bytes`.
    pub tx_packets: u64,
    /// Handshakes completed (a new session in use), as initiator or responder.
    pub handshakes_completed: u64,
    /// Datagrams from this peer dropped after it was identified (by
    /// receiver index or by the static key of an initiation).
    pub drops: DropCounts,
}

/// The three keypair slots of a peer.
///
/// Each keypair is boxed: with its replay window it takes about 1 KiB, and
/// most peers of a large device never hold one, so an empty slot costs a
/// pointer rather than the keypair's size (a peer took 4 KiB before).
#[derive(Default, Debug)]
pub struct Keypairs {
    /// The keypair we send with.
    pub current: Option<Box<Keypair>>,
    /// The one before it (still accepted on receive).
    pub previous: Option<Box<Keypair>>,
    /// A responder's new keypair, awaiting the first data packet.
    pub next: Option<Box<Keypair>>,
}

impl Keypairs {
    /// Installs a new keypair; returns the local indices of keypairs dropped.
    pub fn install(&mut self, new: Keypair) -> Vec<u32> {
        let mut dropped = Vec::new();
        let new = Box::new(new);
        let mut drop = |k: Option<Box<Keypair>>| {
            if let Some(k) = k {
                dropped.push(k.local_index);
            }
        };
        if new.is_initiator {
            if let Some(next) = self.next.take() {
                drop(self.previous.replace(next));
                drop(self.current.replace(new));
            } else {
                let old_current = self.current.replace(new);
                drop(std::mem::replace(&mut self.previous, old_current));
            }
        } else {
            drop(self.next.replace(new));
            drop(self.previous.take());
        }
        dropped
    }

    /// Key confirmation: data arrived with `next`, which becomes current.
    /// Returns the local index of the keypair dropped, if any.
    pub fn confirm_next(&mut self) -> Option<u32> {
        let next = self.next.take()?;
        let old_current = self.current.replace(next);
        std::mem::replace(&mut self.previous, old_current).map(|k| k.local_index)
    }

    /// The slot holding the keypair with this local index.
    pub fn by_index_mut(&mut self, index: u32) -> Option<(&mut Keypair, Slot)> {
        [
            (self.current.as_deref_mut(), Slot::Current),
            (self.previous.as_deref_mut(), Slot::Previous),
            (self.next.as_deref_mut(), Slot::Next),
        ]
        .into_iter()
        .find_map(|(k, slot)| k.filter(|k| k.local_index == index).map(|k| (k, slot)))
    }

    /// Drops every keypair; returns their local indices.
    pub fn clear(&mut self) -> Vec<u32> {
        [self.current.take(), self.previous.take(), self.next.take()]
            .into_iter()
            .flatten()
            .map(|k| k.local_index)
            .collect()
    }

    /// Local indices of all keypairs held.
    pub fn indices(&self) -> impl Iterator<Item = u32> + '_ {
        [&self.current, &self.previous, &self.next]
            .into_iter()
            .flatten()
            .map(|k| k.local_index)
    }
}

/// Which slot a keypair was found in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// `current`.
    Current,
    /// `previous`.
    Previous,
    /// `next`.
    Next,
}

/// The cached static-static Diffie-Hellman result of a peer.
#[derive(Debug, Default)]
pub enum StaticStatic {
    /// Not computed yet (new peer, or our private key changed).
    #[default]
    Pending,
    /// Computed.
    Ready(SharedSecret),
    /// The result was zero: a low-order or invalid peer key.
    Unusable,
}

/// A handshake in progress, from our side.
#[derive(Debug, Default)]
pub enum HandshakeState {
    /// Nothing in flight.
    #[default]
    None,
    /// We sent an initiation and wait for the response.
    InitiationSent(InitiatorState),
}

/// Everything the device knows about one peer.
///
/// The fields are private to the engine: outside it a peer is read through
/// the methods below ([`Device::peer`](crate::device::Device::peer)) and
/// changed only through the device, which keeps a peer's sessions, indices
/// and routes in step (its invariants are checked by
/// `Device::check_invariants`).
pub struct Peer {
    /// The peer's static public key.
    pub(crate) public_key: PublicKey,
    /// The preshared key (all zeros when unset).
    pub(crate) preshared_key: SymmetricKey,
    /// DH(our static, peer static), computed on first use (so configuring
    /// 100 000 peers costs no Diffie-Hellman at all).
    pub(crate) static_static: StaticStatic,
    /// Where to send, if known.
    pub(crate) endpoint: Option<Endpoint>,
    /// Handshake in flight.
    pub(crate) handshake: HandshakeState,
    /// Session keys.
    pub(crate) keypairs: Keypairs,
    /// mac1/mac2 and received cookies for messages we send to this peer.
    pub(crate) cookie: CookieGenerator,
    /// Timers.
    pub(crate) timers: Timers,
    /// Packets waiting for a session (oldest dropped beyond 128).
    pub(crate) staged: VecDeque<Vec<u8>>,
    /// The greatest timestamp of an initiation accepted from the peer.
    pub(crate) latest_timestamp: Option<Tai64n>,
    /// When we last accepted an initiation from the peer (flood guard).
    pub(crate) last_initiation_consumed: Option<Instant>,
    /// When we last sent an initiation (one per REKEY_TIMEOUT).
    pub(crate) last_sent_handshake: Option<Instant>,
    /// Wall-clock time of the last completed handshake.
    pub(crate) last_handshake: Option<SystemTime>,
    /// Bytes received from the peer, as WireGuard messages on the wire.
    pub(crate) rx_bytes: u64,
    /// Bytes sent to the peer, as WireGuard messages on the wire.
    pub(crate) tx_bytes: u64,
    /// Packet, handshake and drop counters (for metrics).
    pub(crate) stats: PeerStats,
    /// The deadline currently registered in the device's timer heap.
    pub(crate) scheduled: Option<Instant>,
}

impl core::fmt::Debug for Peer {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Peer")
            .field("public_key", &self.public_key)
            .field("endpoint", &self.endpoint)
            .field("rx_bytes", &self.rx_bytes)
            .field("tx_bytes", &self.tx_bytes)
            .finish_non_exhaustive()
    }
}

impl Peer {
    /// A new peer with no session.
    pub fn new(public_key: PublicKey) -> Self {
        Peer {
            public_key,
            preshared_key: SymmetricKey::default(),
            static_static: StaticStatic::Pending,
            endpoint: None,
            handshake: HandshakeState::None,
            keypairs: Keypairs::default(),
            cookie: CookieGenerator::new(&public_key),
            timers: Timers::default(),
            staged: VecDeque::new(),
            latest_timestamp: None,
            last_initiation_consumed: None,
            last_sent_handshake: None,
            last_handshake: None,
            rx_bytes: 0,
            tx_bytes: 0,
            stats: PeerStats::default(),
            scheduled: None,
        }
    }

    /// The peer's static public key.
    pub fn public_key(&self) -> PublicKey {
        self.public_key
    }

    /// The preshared key (all zeros when unset).
    pub fn preshared_key(&self) -> &SymmetricKey {
        &self.preshared_key
    }

    /// Where datagrams to the peer go, if known.
    pub fn endpoint(&self) -> Option<Endpoint> {
        self.endpoint
    }

    /// Wall-clock time of the last completed handshake.
    pub fn last_handshake(&self) -> Option<SystemTime> {
        self.last_handshake
    }

    /// Bytes received from the peer, as WireGuard messages on the wire.
    pub fn rx_bytes(&self) -> u64 {
        self.rx_bytes
    }

    /// Bytes sent to the peer, as WireGuard messages on the wire.
    pub fn tx_bytes(&self) -> u64 {
        self.tx_bytes
    }

    /// Packet, handshake and drop counters (for metrics).
    pub fn stats(&self) -> PeerStats {
        self.stats
    }

    /// The persistent-keepalive interval (zero: off).
    pub fn persistent_keepalive(&self) -> Duration {
        self.timers.persistent_keepalive_interval
    }

    /// The local index of the session we send with, if there is one.
    pub fn current_session_index(&self) -> Option<u32> {
        self.keypairs.current.as_ref().map(|k| k.local_index)
    }

    /// Packets waiting for a session.
    pub fn staged_len(&self) -> usize {
        self.staged.len()
    }

    /// Queues a packet until a session exists, dropping the oldest beyond
    /// the limit. Returns true if an old packet was dropped.
    pub fn stage(&mut self, packet: Vec<u8>) -> bool {
        let full = self.staged.len() >= MAX_STAGED_PACKETS;
        if full {
            self.staged.pop_front();
        }
        self.staged.push_back(packet);
        full
    }

    /// DH(our static, this peer's static), computing it on first use. None
    /// without a private key, or for a low-order peer key: then no
    /// handshake is ever attempted with the peer.
    pub fn static_static(&mut self, ours: &SecretKey) -> Option<&SharedSecret> {
        if matches!(self.static_static, StaticStatic::Pending) {
            self.static_static = match ours.dh(&self.public_key) {
                Ok(shared) => StaticStatic::Ready(shared),
                Err(_) => StaticStatic::Unusable,
            };
        }
        match &self.static_static {
            StaticStatic::Ready(shared) => Some(shared),
            _ => None,
        }
    }

    /// Counts an authenticated message sent to the peer (`packets` data
    /// packets, a keepalive or a handshake message, `wire_bytes` on the
    /// wire) and arms the timers every authenticated send arms.
    pub(crate) fn count_sent(&mut self, now: Instant, wire_bytes: u64, packets: u64) {
        self.tx_bytes += wire_bytes;
        self.stats.tx_packets += packets;
        self.timers.any_authenticated_packet_traversal(now);
        self.timers.any_authenticated_packet_sent();
    }

    /// Counts a message received from the peer that was accepted whole
    /// (`wire_bytes` on the wire).
    pub(crate) fn count_received(&mut self, wire_bytes: u64) {
        self.rx_bytes += wire_bytes;
        self.stats.rx_packets += 1;
    }

    /// The timers every authenticated message from the peer arms (also one
    /// whose inner packet is then refused).
    pub(crate) fn authenticated_receipt(&mut self, now: Instant) {
        self.timers.any_authenticated_packet_received();
        self.timers.any_authenticated_packet_traversal(now);
    }

    /// The local index of the handshake in flight, if any.
    pub fn handshake_index(&self) -> Option<u32> {
        match &self.handshake {
            HandshakeState::InitiationSent(s) => Some(s.local_index),
            HandshakeState::None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::SymmetricKey;
    use crate::noise::SessionKeys;

    fn keypair(index: u32, initiator: bool) -> Keypair {
        let keys = SessionKeys {
            send: SymmetricKey([1; 32]),
            receive: SymmetricKey([2; 32]),
        };
        Keypair::new(&keys, index, 0, Instant::now(), initiator)
    }

    fn slots(k: &Keypairs) -> [Option<u32>; 3] {
        [
            k.current.as_ref().map(|k| k.local_index),
            k.previous.as_ref().map(|k| k.local_index),
            k.next.as_ref().map(|k| k.local_index),
        ]
    }

    #[test]
    fn initiator_rotation() {
        let mut k = Keypairs::default();
        assert!(k.install(keypair(1, true)).is_empty());
        assert!(k.install(keypair(2, true)).is_empty());
        assert_eq!(slots(&k), [Some(2), Some(1), None]);
        assert_eq!(k.install(keypair(3, true)), vec![1]);
        assert_eq!(slots(&k), [Some(3), Some(2), None]);
    }

    #[test]
    fn responder_waits_for_confirmation() {
        let mut k = Keypairs::default();
        k.install(keypair(1, true));
        k.install(keypair(2, true));
        assert_eq!(k.install(keypair(3, false)), vec![1], "previous dropped");
        assert_eq!(slots(&k), [Some(2), None, Some(3)]);
        assert_eq!(k.install(keypair(4, false)), vec![3], "old next dropped");
        assert_eq!(k.confirm_next(), None);
        assert_eq!(slots(&k), [Some(4), Some(2), None]);
    }

    #[test]
    fn initiator_after_unconfirmed_next_demotes_next() {
        let mut k = Keypairs::default();
        k.install(keypair(1, true));
        k.install(keypair(2, false));
        assert_eq!(k.install(keypair(3, true)), vec![1]);
        assert_eq!(slots(&k), [Some(3), Some(2), None]);
    }

    #[test]
    fn staging_drops_oldest() {
        let mut p = Peer::new(PublicKey([9; 32]));
        for i in 0..MAX_STAGED_PACKETS {
            assert!(!p.stage(vec![i as u8]));
        }
        assert!(p.stage(vec![255]));
        assert_eq!(p.staged.len(), MAX_STAGED_PACKETS);
        assert_eq!(p.staged.front(), Some(&vec![1]));
        assert_eq!(p.staged.back(), Some(&vec![255]));
    }
}
