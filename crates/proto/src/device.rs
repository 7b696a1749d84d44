//! The engine: a whole WireGuard interface without I/O and without a clock.
//!
//! The caller feeds it IP packets from the tunnel ([`Device::send`]),
//! datagrams from the network ([`Device::receive`]) and the passage of time
//! ([`Device::handle_timeout`]); it takes datagrams to send from
//! [`Device::poll_transmit`] and sleeps until [`Device::poll_timeout`].
//! Time is always passed in as [`Now`], randomness comes from a generator
//! seeded by the caller, so two engines driven the same way behave the same.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

use crate::allowedips::{AllowedIps, AllowedIpsError};
use crate::constants::{
    DEFAULT_MTU, MAX_TIMER_HANDSHAKES, REKEY_AFTER_MESSAGES, REKEY_AFTER_TIME,
    REKEY_ON_RECEIVE_AGE, REKEY_TIMEOUT, REKEY_TIMEOUT_JITTER_MAX,
};
use crate::cookie::CookieChecker;
use crate::crypto::{PublicKey, SecretKey, SymmetricKey};
pub use crate::drops::DropReason;
use crate::messages::{
    self, Message, COOKIE_REPLY_LEN, INITIATION_LEN, RESPONSE_LEN, TRANSPORT_HEADER_LEN,
};
use crate::noise;
use crate::packet;
use crate::peer::{
    DropCounts, Endpoint, HandshakeState, Peer, PeerId, PeerStats, Slot, StaticStatic,
};
use crate::peerlookup::{IndexTable, PublicKeyTable};
use crate::peerstore::PeerStore;
use crate::ratelimiter::{LoadDetector, RateLimiter, DEFAULT_MAX_ENTRIES};
use crate::send_holds::{Holder, SendHolds};
use crate::tai64n::Tai64n;
use crate::timers::TimerEvent;
use crate::transport::{Keypair, OpenJob, SealJob, TransportError};

/// The current time, monotonic (for every timer) and wall-clock (for TAI64N
/// timestamps and the last-handshake time that `wg show` prints).
#[derive(Clone, Copy, Debug)]
pub struct Now {
    /// Monotonic time.
    pub mono: Instant,
    /// Wall-clock time.
    pub wall: SystemTime,
}

impl Now {
    /// Reads both clocks; a convenience for callers (the engine never calls it).
    pub fn system() -> Self {
        Now {
            mono: Instant::now(),
            wall: SystemTime::now(),
        }
    }

    /// The same instant moved forward by `d` on both clocks (for tests and simulations).
    pub fn advance(self, d: Duration) -> Self {
        Now {
            mono: self.mono + d,
            wall: self.wall + d,
        }
    }
}

/// A peer taken out of a device by [`Device::take_peer`]. Nothing can be
/// done with it but dropping it, which zeroes its keys and frees its state.
pub struct RemovedPeer(#[allow(dead_code)] Box<Peer>);

impl core::fmt::Debug for RemovedPeer {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("RemovedPeer")
    }
}

/// A datagram the engine wants sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// The peer it is for (None for cookie replies to unknown sources).
    pub peer: Option<PeerId>,
    /// Where to send it.
    pub endpoint: Endpoint,
    /// The UDP payload.
    pub data: Vec<u8>,
}

/// What became of an IP packet handed to [`Device::send`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendOutcome {
    /// Encrypted into the output buffer: send `len` bytes to `endpoint`.
    Sent {
        /// The peer.
        peer: PeerId,
        /// Length of the transport message written to the output buffer.
        len: usize,
        /// Where to send it.
        endpoint: Endpoint,
    },
    /// Queued until a session exists (or sent through the outbox).
    Queued(PeerId),
    /// No peer's allowed IPs contain the destination (answer with ICMP).
    NoRoute,
    /// The peer has no endpoint yet (answer with ICMP).
    NoEndpoint(PeerId),
    /// Not an IPv4 or IPv6 packet, or too big for the output buffer.
    Invalid,
}

/// What became of a datagram handed to [`Device::receive`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiveOutcome {
    /// A packet to write to the tunnel: `datagram[16..16 + len]`.
    Deliver {
        /// The peer it came from.
        peer: PeerId,
        /// Length of the IP packet (padding removed).
        len: usize,
    },
    /// A handshake, cookie or keepalive, fully handled (answers, if any,
    /// wait in [`Device::poll_transmit`]).
    Handled,
    /// Dropped, for this reason.
    Dropped(DropReason),
}

/// What [`Device::prepare_send`] made of an IP packet.
#[derive(Debug)]
pub enum SendPrepared {
    /// A session exists and a counter is reserved: seal the packet with the
    /// job (on any thread), send it, and report it to
    /// [`Device::complete_sends`] through a [`SendTally`].
    Seal(SendJob),
    /// Nothing to seal: `Queued`, `NoRoute`, `NoEndpoint` or `Invalid`, as
    /// [`Device::send`] would have answered.
    Done(SendOutcome),
    /// Only from [`Device::prepare_send_held`]: the peer's next counter
    /// would run too far ahead of a counter another holder (or this one)
    /// reserved and has not released. Nothing was reserved or queued: send
    /// and release what this holder has, wait until
    /// [`Device::send_must_wait`] is false, then prepare the packet again.
    Wait(PeerId),
}

/// A packet bound for a peer's current session, ready to be sealed without
/// the engine.
#[derive(Debug)]
pub struct SendJob {
    /// The peer.
    pub peer: PeerId,
    /// Where to send the transport message.
    pub endpoint: Endpoint,
    seal: SealJob,
}

impl SendJob {
    /// The length of the transport message (what `out` needs at least).
    pub fn wire_len(&self) -> usize {
        self.seal.wire_len()
    }

    /// The counter reserved for the message.
    pub fn counter(&self) -> u64 {
        self.seal.counter()
    }

    /// Writes the transport message for `packet` (the one the job was
    /// prepared for) into `out`; returns its length.
    pub fn seal(&self, packet: &[u8], out: &mut [u8]) -> Result<usize, TransportError> {
        self.seal.seal(packet, out)
    }
}

/// The transport messages of one batch that were sealed and handed to the
/// network, summed per peer for [`Device::complete_sends`]: byte counters,
/// timers and rekey checks are then done once per peer and batch.
#[derive(Debug, Default)]
pub struct SendTally {
    /// (peer, bytes on the wire, messages), in the order peers first appeared.
    per_peer: Vec<(PeerId, u64, u64)>,
}

impl SendTally {
    /// An empty tally.
    pub fn new() -> Self {
        SendTally::default()
    }

    /// Counts one transport message of `wire_len` bytes sent to `peer`.
    pub fn record(&mut self, peer: PeerId, wire_len: usize) {
        // A batch nearly always goes to one peer or a few: the last entry
        // is the likely one, and a linear search beats hashing.
        match self.per_peer.iter_mut().rev().find(|(p, _, _)| *p == peer) {
            Some((_, bytes, messages)) => {
                *bytes += wire_len as u64;
                *messages += 1;
            }
            None => self.per_peer.push((peer, wire_len as u64, 1)),
        }
    }

    /// True if nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.per_peer.is_empty()
    }
}

/// What [`Device::prepare_receive`] made of a datagram.
#[derive(Debug)]
pub enum ReceivePrepared {
    /// A transport message that passed the pre-checks: decrypt it with
    /// [`ReceiveJob::open`] (on any thread), then finish with
    /// [`Device::complete_receive`].
    Open(ReceiveJob),
    /// A handshake or cookie message: hand it to [`Device::receive`].
    NotTransport,
    /// Dropped (and counted) for this reason.
    Dropped(DropReason),
}

/// A received transport message to decrypt without the engine.
#[derive(Debug)]
pub struct ReceiveJob {
    /// The peer whose session the message names.
    pub peer: PeerId,
    /// Where the datagram came from.
    pub from: Endpoint,
    local_index: u32,
    open: OpenJob,
    /// Set by [`ReceiveJob::open`]: the padded plaintext length or the error.
    opened: Option<Result<usize, TransportError>>,
}

impl ReceiveJob {
    /// The message's counter.
    pub fn counter(&self) -> u64 {
        self.open.counter()
    }

    /// Decrypts the datagram (the one the job was prepared for) in place.
    /// The outcome is kept in the job for [`Device::complete_receive`].
    pub fn open(&mut self, datagram: &mut [u8]) {
        self.opened = Some(self.open.open(datagram));
    }
}

/// A datagram the receive path refused: why, and the peer it had already
/// been tied to, if any (by the receiver index of one of the peer's sessions
/// or handshakes, or by the static key of its initiation).
///
/// Each step that can fail names the peer at the point of failure, and the
/// refusal travels back with the error: a drop is charged to a peer only if
/// the very datagram that failed was tied to it, never through state left
/// behind by an earlier one. [`Device::charge_drop`] counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Refusal {
    reason: DropReason,
    peer: Option<PeerId>,
}

impl Refusal {
    /// Refused before the datagram could be tied to a peer: counted for the
    /// device only.
    fn untied(reason: DropReason) -> Refusal {
        Refusal { reason, peer: None }
    }

    /// Refused after the datagram was tied to `peer`: charged to it too.
    fn tied(peer: PeerId, reason: DropReason) -> Refusal {
        Refusal {
            reason,
            peer: Some(peer),
        }
    }
}

struct Identity {
    secret: SecretKey,
    public: PublicKey,
}

/// A WireGuard interface: identity, peers, routing and sessions.
pub struct Device {
    identity: Option<Identity>,
    /// Looked up several times per packet by id (a slot index), and
    /// walked in slot order by readers of the whole device.
    peers: PeerStore,
    by_public_key: PublicKeyTable,
    indices: IndexTable,
    allowed_ips: AllowedIps<PeerId>,
    cookie_checker: CookieChecker,
    rate_limiter: RateLimiter,
    load: LoadDetector,
    handshake_backlog: usize,
    rng: ChaCha20Rng,
    mtu: usize,
    outbox: VecDeque<Transmit>,
    timer_heap: BinaryHeap<Reverse<(Instant, PeerId)>>,
    drops: [u64; DropReason::ALL.len()],
    /// The part of `drops` also counted in a peer's [`PeerStats::drops`].
    peer_drops: DropCounts,
    events: VecDeque<Event>,
    /// Counters reserved by [`Device::prepare_send_held`] and not yet
    /// released: the per-peer send bound of several sending threads.
    send_holds: SendHolds,
}

/// Events kept for [`Device::poll_event`] before the oldest are dropped.
const MAX_EVENTS: usize = 1024;

/// Something notable that happened to a peer, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// We sent a handshake initiation (`retry` when the timer re-sent it).
    HandshakeInitiated {
        /// The peer.
        peer: PeerId,
        /// True for a retransmission.
        retry: bool,
    },
    /// A handshake completed and a new session is in use.
    HandshakeCompleted {
        /// The peer.
        peer: PeerId,
    },
    /// We answered an initiation.
    HandshakeAnswered {
        /// The peer.
        peer: PeerId,
    },
    /// No response after all retries: staged packets were dropped.
    HandshakeGaveUp {
        /// The peer.
        peer: PeerId,
    },
    /// Every key of the peer was wiped (540 s without a new session).
    KeysZeroed {
        /// The peer.
        peer: PeerId,
    },
}

impl core::fmt::Debug for Device {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Device")
            .field("public_key", &self.public_key())
            .field("peers", &self.peers.len())
            .finish_non_exhaustive()
    }
}

impl Device {
    /// A device with no key and no peers. `seed` seeds the generator of
    /// ephemeral keys, indices, cookie secrets and jitter: it must come from
    /// a cryptographically secure source (tests may fix it).
    pub fn new(seed: [u8; 32]) -> Self {
        Device {
            identity: None,
            peers: PeerStore::default(),
            by_public_key: PublicKeyTable::default(),
            indices: IndexTable::new(),
            allowed_ips: AllowedIps::new(),
            cookie_checker: CookieChecker::new(None),
            rate_limiter: RateLimiter::new(DEFAULT_MAX_ENTRIES),
            load: LoadDetector::new(),
            handshake_backlog: 0,
            rng: ChaCha20Rng::from_seed(seed),
            mtu: DEFAULT_MTU,
            outbox: VecDeque::new(),
            timer_heap: BinaryHeap::new(),
            drops: [0; DropReason::ALL.len()],
            peer_drops: DropCounts::default(),
            events: VecDeque::new(),
            send_holds: SendHolds::new(),
        }
    }

    // ----- configuration -------------------------------------------------

    /// The tunnel MTU, used for padding.
    pub fn set_mtu(&mut self, mtu: usize) {
        self.mtu = mtu;
    }

    /// Our public key, if a private key is set.
    pub fn public_key(&self) -> Option<PublicKey> {
        self.identity.as_ref().map(|i| i.public)
    }

    /// Our private key (clamped), if set.
    pub fn private_key(&self) -> Option<&SecretKey> {
        self.identity.as_ref().map(|i| &i.secret)
    }

    /// Sets or clears our private key. A peer with the matching public key is
    /// removed; every session is retired for sending and handshakes restart.
    pub fn set_private_key(&mut self, key: Option<SecretKey>) {
        if self.identity.as_ref().map(|i| &i.secret) == key.as_ref() {
            return;
        }
        self.identity = key.map(|secret| Identity {
            public: secret.public_key(),
            secret,
        });
        let public = self.public_key();
        if let Some(own) = public.and_then(|p| self.by_public_key.get(&p)) {
            self.remove_peer(own);
        }
        self.cookie_checker.set_public_key(public.as_ref());
        for id in self.peer_ids() {
            let peer = self.peers.get_mut(id).expect("id from the map");
            peer.static_static = StaticStatic::Pending;
            for keypair in [&mut peer.keypairs.current, &mut peer.keypairs.next]
                .into_iter()
                .flatten()
            {
                keypair.retire_for_sending();
            }
            peer.last_sent_handshake = None;
            self.clear_handshake(id);
        }
    }

    /// Adds a peer (or finds the existing one). Returns None, and adds
    /// nothing, for our own public key.
    pub fn add_peer(&mut self, public_key: PublicKey) -> Option<PeerId> {
        if self.public_key() == Some(public_key) {
            return None;
        }
        if let Some(id) = self.by_public_key.get(&public_key) {
            return Some(id);
        }
        let id = self.peers.insert(Box::new(Peer::new(public_key)));
        self.by_public_key.insert(public_key, id);
        Some(id)
    }

    /// Makes room for `peers` more peers owning `v4_prefixes` IPv4 and
    /// `v6_prefixes` IPv6 allowed IPs more in all. Growing a table copies all of it at once (tens of
    /// milliseconds at 2^20 peers, a stall for whoever waits on the engine),
    /// so a caller about to add many peers reserves first: on a small
    /// device the reservation itself costs little, the memory being touched
    /// only as it fills.
    pub fn reserve_peers(&mut self, peers: usize, v4_prefixes: usize, v6_prefixes: usize) {
        self.peers.reserve(peers);
        self.by_public_key.reserve(peers);
        self.allowed_ips.reserve(peers, v4_prefixes, v6_prefixes);
    }

    /// The peer with this public key.
    pub fn peer_id(&self, public_key: &PublicKey) -> Option<PeerId> {
        self.by_public_key.get(public_key)
    }

    /// Removes a peer with its sessions and allowed IPs.
    pub fn remove_peer(&mut self, id: PeerId) {
        drop(self.take_peer(id));
    }

    /// Removes a peer like [`Device::remove_peer`], and hands its state to
    /// the caller to drop (which zeroes its keys and frees it) rather than
    /// dropping it here. A caller that holds a lock around the device drops
    /// it after releasing the lock: freeing many peers' memory can make the
    /// allocator hand a large region back to the system in one call, and
    /// that need not happen while others wait on the lock.
    pub fn take_peer(&mut self, id: PeerId) -> Option<RemovedPeer> {
        let mut peer = self.peers.remove(id)?;
        self.by_public_key.remove(&peer.public_key);
        self.allowed_ips.remove_by_value(id);
        for index in peer.keypairs.clear() {
            self.indices.remove(index);
        }
        if let Some(index) = peer.handshake_index() {
            self.indices.remove(index);
        }
        self.outbox.retain(|t| t.peer != Some(id));
        self.after_operation();
        Some(RemovedPeer(peer))
    }

    /// Removes every peer.
    pub fn remove_all_peers(&mut self) {
        for id in self.peer_ids() {
            self.remove_peer(id);
        }
    }

    /// A peer's state.
    pub fn peer(&self, id: PeerId) -> Option<&Peer> {
        self.peers.get(id)
    }

    /// All peers, in the device's order: the order of their slots in the
    /// peer store, which is the order of addition until peers are removed
    /// (a new peer then takes the lowest slot a removed one left free).
    pub fn peer_ids(&self) -> Vec<PeerId> {
        self.peers.iter().map(|(id, _)| id).collect()
    }

    /// Up to `limit` peers after `after` (from the first peer when `None`)
    /// in the device's order (see [`Device::peer_ids`]): a reader walks a
    /// large device a slice at a time, releasing its lock in between, by
    /// passing the last id of one slice to get the next. `after` need not
    /// be a peer any more: a peer present for the whole walk is seen
    /// exactly once, one added or removed meanwhile may or may not be.
    pub fn peer_ids_after(&self, after: Option<PeerId>, limit: usize) -> Vec<PeerId> {
        self.peers_after(after)
            .take(limit)
            .map(|(id, _)| id)
            .collect()
    }

    /// The peers after `after` with their ids, in the order and with the
    /// guarantees of [`Device::peer_ids_after`], read in storage order
    /// without a lookup per peer.
    pub fn peers_after(&self, after: Option<PeerId>) -> impl Iterator<Item = (PeerId, &Peer)> {
        self.peers.iter_after(after)
    }

    /// Number of peers.
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// Sets a peer's preshared key (zeros = none); used from the next handshake.
    pub fn set_preshared_key(&mut self, id: PeerId, key: SymmetricKey) {
        if let Some(peer) = self.peers.get_mut(id) {
            peer.preshared_key = key;
        }
    }

    /// Sets a peer's endpoint (clears the sticky source).
    pub fn set_endpoint(&mut self, id: PeerId, addr: SocketAddr) {
        if let Some(peer) = self.peers.get_mut(id) {
            peer.endpoint = Some(Endpoint::from(addr));
        }
    }

    /// Forgets the sticky source address of every peer (after the listen
    /// port, the fwmark or the routes changed).
    pub fn clear_sticky_sources(&mut self) {
        for peer in self.peers.values_mut() {
            if let Some(endpoint) = &mut peer.endpoint {
                endpoint.local = None;
            }
        }
    }

    /// Forgets one peer's sticky source address (the address became
    /// unusable for sending).
    pub fn clear_sticky_source(&mut self, id: PeerId) {
        if let Some(peer) = self.peers.get_mut(id) {
            clear_sticky_source(peer);
        }
    }

    /// Tells the engine that the network changed under it (Wi-Fi to mobile,
    /// resume from sleep, a new address or port): the old sticky sources,
    /// NAT mappings and the peers' idea of our endpoint may all be gone.
    ///
    /// Every peer's sticky source is forgotten. Every peer that has a
    /// session (any keypair) or a handshake in flight gets, at once:
    /// - a keepalive on its current session, if one can send: any
    ///   authenticated packet makes the peer roam to our new address, so
    ///   its traffic comes back after one trip;
    /// - a fresh handshake initiation, so that new keys (and a new NAT
    ///   mapping on the way) follow without waiting for the keepalive and
    ///   rekey timers (up to KEEPALIVE_TIMEOUT + REKEY_TIMEOUT).
    ///
    /// The protocol's rate rule holds: no initiation within REKEY_TIMEOUT of
    /// the last one (the peer's flood guard and CPU rely on initiators
    /// keeping it, and a caller told of many changes in a row must not turn
    /// them into a handshake storm). An initiation held back by that rule
    /// is not lost: the one in flight is retransmitted by its timer, at the
    /// latest REKEY_TIMEOUT (+ jitter) after it was sent, to the endpoint
    /// without its sticky source. Rebinding sockets is the caller's part.
    pub fn network_changed(&mut self, now: Now) {
        self.clear_sticky_sources();
        for id in self.peer_ids() {
            let peer = self.peers.get(id).expect("id from the map");
            let had_session = peer.keypairs.indices().next().is_some();
            if !had_session && peer.handshake_index().is_none() {
                continue;
            }
            let can_send = peer
                .keypairs
                .current
                .as_ref()
                .is_some_and(|k| k.can_send(now.mono));
            if can_send {
                self.send_keepalive(now, id);
            }
            self.send_initiation(now, id, false);
            self.reschedule(id);
        }
        self.after_operation();
    }

    /// Sets the persistent keepalive interval in seconds (0 = off). Turning
    /// it on sends a keepalive at once, as the kernel does.
    pub fn set_persistent_keepalive(&mut self, now: Now, id: PeerId, seconds: u16) {
        let Some(peer) = self.peers.get_mut(id) else {
            return;
        };
        let was_off = peer.timers.persistent_keepalive_interval.is_zero();
        peer.timers
            .set_persistent_keepalive(Duration::from_secs(u64::from(seconds)));
        if was_off && seconds > 0 {
            self.send_keepalive(now, id);
        }
        self.reschedule(id);
    }

    /// The cryptokey routing table.
    pub fn allowed_ips(&self) -> &AllowedIps<PeerId> {
        &self.allowed_ips
    }

    /// Routes `addr/cidr` to the peer (moving it from any other peer).
    pub fn add_allowed_ip(
        &mut self,
        id: PeerId,
        addr: IpAddr,
        cidr: u8,
    ) -> Result<(), AllowedIpsError> {
        if !self.peers.contains(id) {
            return Ok(());
        }
        self.allowed_ips.insert(addr, cidr, id)
    }

    /// Removes `addr/cidr` if it belongs to the peer.
    pub fn remove_allowed_ip(
        &mut self,
        id: PeerId,
        addr: IpAddr,
        cidr: u8,
    ) -> Result<bool, AllowedIpsError> {
        self.allowed_ips.remove(addr, cidr, id)
    }

    /// Removes all of a peer's allowed IPs.
    pub fn clear_allowed_ips(&mut self, id: PeerId) {
        self.allowed_ips.remove_by_value(id);
    }

    /// Tells the engine how many handshake messages are waiting to be
    /// processed, which feeds the "under load" decision.
    pub fn set_handshake_backlog(&mut self, backlog: usize) {
        self.handshake_backlog = backlog;
    }

    /// How many packets were dropped for `reason`, in all.
    pub fn drop_count(&self, reason: DropReason) -> u64 {
        self.drops[reason.slot()]
    }

    /// How many packets were dropped for `reason` before they could be tied
    /// to a peer (the rest is in each peer's [`PeerStats::drops`], including
    /// peers since removed).
    pub fn drop_count_without_peer(&self, reason: DropReason) -> u64 {
        self.drops[reason.slot()] - self.peer_drops.get(reason)
    }

    /// A peer's packet, handshake and drop counters.
    pub fn peer_stats(&self, id: PeerId) -> Option<PeerStats> {
        self.peers.get(id).map(|p| p.stats)
    }

    /// Whether handshakes currently need a cookie ("under load"), as decided
    /// by the last handshake message seen and held for a second after.
    pub fn is_under_load(&self, now: Now) -> bool {
        self.load.is_under_load(now.mono)
    }

    /// A cheap gate for handshake messages (types 1–3) that a caller may run
    /// before queueing them for [`Device::receive`] on another thread: the
    /// length must be the message's, and initiations and responses must
    /// carry a valid mac1 for our key. A message that fails is dropped and
    /// counted here (as [`Device::receive`] would), so that a flood of
    /// forgeries costs one MAC each instead of a queue slot and a hand-off.
    /// [`Device::receive`] checks everything again.
    pub fn screen_handshake(&mut self, datagram: &[u8]) -> Result<(), DropReason> {
        let verdict = match messages::parse(datagram) {
            Err(_) => Err(DropReason::Malformed),
            Ok(Message::Initiation(_) | Message::Response(_)) => {
                if self.cookie_checker.check_mac1(datagram) {
                    Ok(())
                } else {
                    Err(DropReason::BadMac1)
                }
            }
            Ok(_) => Ok(()),
        };
        if let Err(reason) = verdict {
            self.charge_drop(Refusal::untied(reason));
        }
        verdict
    }

    /// Packets waiting for a session, summed over all peers.
    pub fn staged_packet_count(&self) -> usize {
        self.peers.iter().map(|(_, p)| p.staged.len()).sum()
    }

    // ----- the data path: tunnel → network -------------------------------

    /// Handles an IP packet read from the tunnel. When a session exists the
    /// transport message is written to `out` (which needs the packet length
    /// plus 32 bytes and 15 bytes of padding room); otherwise the packet is
    /// queued and a handshake started.
    ///
    /// The one-call form of [`Device::prepare_send`], [`SendJob::seal`] and
    /// [`Device::complete_sends`].
    pub fn send(&mut self, now: Now, packet: &[u8], out: &mut [u8]) -> SendOutcome {
        let Some(destination) = packet::destination_address(packet) else {
            return SendOutcome::Invalid;
        };
        let job = match self.prepare_send_to::<false>(now, destination, packet, out.len(), 0) {
            SendPrepared::Seal(job) => job,
            SendPrepared::Done(outcome) => return outcome,
            SendPrepared::Wait(_) => unreachable!("only held preparations wait"),
        };
        let Ok(len) = job.seal(packet, out) else {
            return SendOutcome::Invalid; // unreachable: the length was checked
        };
        self.after_data_sent(now, job.peer, len as u64, 1, false);
        SendOutcome::Sent {
            peer: job.peer,
            len,
            endpoint: job.endpoint,
        }
    }

    /// Routes an IP packet read from the tunnel and, when its peer has a
    /// usable session, reserves the nonce counter for it and returns the job
    /// that seals it; otherwise the packet is queued and a handshake started
    /// as in [`Device::send`]. Jobs must be sent in the order they were
    /// prepared to keep a peer's packets in order (the receiver tolerates
    /// reordering within its replay window, but TCP does not like it).
    pub fn prepare_send(&mut self, now: Now, packet: &[u8]) -> SendPrepared {
        match packet::destination_address(packet) {
            Some(destination) => {
                self.prepare_send_to::<false>(now, destination, packet, usize::MAX, 0)
            }
            None => SendPrepared::Done(SendOutcome::Invalid),
        }
    }

    /// [`Device::prepare_send`] for one of several threads that reserve
    /// counters of the same peers and send on their own (the daemon's
    /// lanes). The counter is recorded as held by `holder` until
    /// [`Device::release_sends`]; if the peer's next counter would be
    /// [`SEND_LEAD_LIMIT`](crate::send_holds::SEND_LEAD_LIMIT) or more ahead
    /// of the oldest held counter of its keypair, nothing is reserved and
    /// the answer is [`SendPrepared::Wait`]. This keeps every counter within
    /// the receiver's replay window of the others however the threads are
    /// scheduled (see [`crate::send_holds`]).
    pub fn prepare_send_held(&mut self, now: Now, packet: &[u8], holder: Holder) -> SendPrepared {
        match packet::destination_address(packet) {
            Some(destination) => {
                self.prepare_send_to::<true>(now, destination, packet, usize::MAX, holder)
            }
            None => SendPrepared::Done(SendOutcome::Invalid),
        }
    }

    /// Ends the holds of `holder`: everything it reserved with
    /// [`Device::prepare_send_held`] was handed to the network (or given
    /// up). Returns true if it held anything (others may wait for it).
    pub fn release_sends(&mut self, holder: Holder) -> bool {
        self.send_holds.release(holder) > 0
    }

    /// True while a [`Device::prepare_send_held`] of a packet to `peer`
    /// would answer [`SendPrepared::Wait`].
    pub fn send_must_wait(&self, peer: PeerId) -> bool {
        let Some(keypair) = self
            .peers
            .get(peer)
            .and_then(|p| p.keypairs.current.as_ref())
        else {
            return false;
        };
        self.send_holds
            .must_wait(peer, keypair.local_index, keypair.send_counter())
    }

    /// Lowers the lead [`Device::prepare_send_held`] allows (at least 1, at
    /// most [`SEND_LEAD_LIMIT`](crate::send_holds::SEND_LEAD_LIMIT), the
    /// default): for tests that make the holders wait often.
    pub fn set_send_lead_limit(&mut self, limit: u64) {
        self.send_holds.set_limit(limit);
    }

    /// The number of holds (holder, peer, keypair) not yet released.
    pub fn send_hold_count(&self) -> usize {
        self.send_holds.len()
    }

    /// [`Device::prepare_send`] for a packet already parsed, whose
    /// transport message must fit in `room` bytes (else `Invalid`, and no
    /// counter is taken). `HELD`: the counter is recorded as `holder`'s and
    /// bounded by the other holds ([`Device::prepare_send_held`]); without
    /// it the hold bookkeeping is compiled out.
    fn prepare_send_to<const HELD: bool>(
        &mut self,
        now: Now,
        destination: IpAddr,
        packet: &[u8],
        room: usize,
        holder: Holder,
    ) -> SendPrepared {
        let Some(id) = self.allowed_ips.lookup(destination) else {
            return SendPrepared::Done(SendOutcome::NoRoute);
        };
        let mtu = self.mtu;
        let peer = self.peers.get_mut(id).expect("routes point to live peers");
        let Some(endpoint) = peer.endpoint else {
            return SendPrepared::Done(SendOutcome::NoEndpoint(id));
        };
        let usable = peer
            .keypairs
            .current
            .as_mut()
            .filter(|k| k.can_send(now.mono));
        if let Some(keypair) = usable.filter(|_| peer.staged.is_empty()) {
            if room < crate::transport::wire_len(packet.len(), mtu) {
                return SendPrepared::Done(SendOutcome::Invalid);
            }
            // The counter `reserve` takes is the keypair's next one (it
            // cannot fail here: `usable` checked `can_send`).
            if HELD
                && !self.send_holds.try_hold(
                    holder,
                    id,
                    keypair.local_index,
                    keypair.send_counter(),
                )
            {
                return SendPrepared::Wait(id);
            }
            if let Ok(seal) = keypair.reserve(now.mono, packet.len(), mtu) {
                return SendPrepared::Seal(SendJob {
                    peer: id,
                    endpoint,
                    seal,
                });
            }
        }
        peer.stage(packet.to_vec());
        self.flush_staged(now, id);
        self.after_operation();
        SendPrepared::Done(SendOutcome::Queued(id))
    }

    /// The bookkeeping for a batch of sealed and sent transport messages:
    /// byte counters, timers and the rekey checks, once per peer. Clears
    /// the tally.
    pub fn complete_sends(&mut self, now: Now, tally: &mut SendTally) {
        for (id, bytes, packets) in tally.per_peer.drain(..) {
            if self.peers.contains(id) {
                self.after_data_sent(now, id, bytes, packets, false);
            }
        }
        self.after_operation();
    }

    /// Bookkeeping after a transport message left: counters, timers, and the
    /// rekey checks of `keep_key_fresh`.
    fn after_data_sent(
        &mut self,
        now: Now,
        id: PeerId,
        wire_bytes: u64,
        packets: u64,
        keepalive: bool,
    ) {
        let jitter = self.jitter();
        let peer = self.peers.get_mut(id).expect("caller checked");
        peer.count_sent(now.mono, wire_bytes, packets);
        if !keepalive {
            peer.timers.data_sent(now.mono, jitter);
        }
        let needs_rekey = peer.keypairs.current.as_ref().is_some_and(|k| {
            k.send_counter() > REKEY_AFTER_MESSAGES
                || (k.is_initiator
                    && now.mono.saturating_duration_since(k.created) >= REKEY_AFTER_TIME)
        });
        if needs_rekey {
            self.send_initiation(now, id, false);
        }
        self.reschedule(id);
    }

    /// Sends every staged packet if a usable session exists, else starts a
    /// handshake (the packets stay staged).
    fn flush_staged(&mut self, now: Now, id: PeerId) {
        let mtu = self.mtu;
        let Some(peer) = self.peers.get_mut(id) else {
            return;
        };
        let usable = peer.endpoint.is_some()
            && peer
                .keypairs
                .current
                .as_ref()
                .is_some_and(|k| k.can_send(now.mono));
        if !usable {
            self.send_initiation(now, id, false);
            return;
        }
        while let Some(packet) = self.peers.get_mut(id).and_then(|p| p.staged.pop_front()) {
            let peer = self.peers.get_mut(id).expect("checked above");
            let keypair = peer.keypairs.current.as_mut().expect("checked above");
            let mut data = vec![0u8; packet.len() + 64];
            let Ok(len) = keypair.seal(now.mono, &packet, mtu, &mut data) else {
                peer.staged.push_front(packet);
                self.send_initiation(now, id, false);
                return;
            };
            data.truncate(len);
            let endpoint = peer.endpoint.expect("checked above");
            self.outbox.push_back(Transmit {
                peer: Some(id),
                endpoint,
                data,
            });
            self.after_data_sent(now, id, len as u64, 1, packet.is_empty());
        }
    }

    /// Sends a keepalive (an empty packet), or the staged packets instead.
    fn send_keepalive(&mut self, now: Now, id: PeerId) {
        let Some(peer) = self.peers.get_mut(id) else {
            return;
        };
        if peer.staged.is_empty() {
            peer.staged.push_back(Vec::new());
        }
        self.flush_staged(now, id);
    }

    /// Creates and queues a handshake initiation, at most one per
    /// REKEY_TIMEOUT, and only with a private key, a usable static-static
    /// secret (not a low-order peer key) and an endpoint.
    fn send_initiation(&mut self, now: Now, id: PeerId, is_retry: bool) {
        let jitter = self.jitter();
        let Some(identity) = &self.identity else {
            return;
        };
        let Some(peer) = self.peers.get_mut(id) else {
            return;
        };
        if !is_retry {
            peer.timers.handshake_attempts = 0;
        }
        let too_soon = peer
            .last_sent_handshake
            .is_some_and(|last| now.mono.saturating_duration_since(last) < REKEY_TIMEOUT);
        let Some(endpoint) = peer.endpoint else {
            return;
        };
        if too_soon || peer.static_static(&identity.secret).is_none() {
            return;
        }
        let StaticStatic::Ready(static_static) = &peer.static_static else {
            return;
        };
        if let Some(old) = peer.handshake_index() {
            self.indices.remove(old);
        }
        let local_index = self.indices.allocate(&mut self.rng, id);
        let created = noise::create_initiation(
            &identity.public,
            &peer.public_key,
            static_static,
            &mut self.rng,
            Tai64n::from_system_time(now.wall),
            local_index,
        );
        let Ok((message, state)) = created else {
            self.indices.remove(local_index);
            peer.handshake = HandshakeState::None;
            return;
        };
        let mut bytes = message.to_bytes();
        peer.cookie.add_macs(now.mono, &mut bytes);
        peer.handshake = HandshakeState::InitiationSent(state);
        self.events.push_back(Event::HandshakeInitiated {
            peer: id,
            retry: is_retry,
        });
        peer.last_sent_handshake = Some(now.mono);
        peer.count_sent(now.mono, bytes.len() as u64, 1);
        peer.timers.handshake_initiated(now.mono, jitter);
        self.outbox.push_back(Transmit {
            peer: Some(id),
            endpoint,
            data: bytes.to_vec(),
        });
        self.reschedule(id);
    }

    fn clear_handshake(&mut self, id: PeerId) {
        if let Some(peer) = self.peers.get_mut(id) {
            if let Some(index) = peer.handshake_index() {
                self.indices.remove(index);
            }
            peer.handshake = HandshakeState::None;
        }
    }

    fn jitter(&mut self) -> Duration {
        let max = REKEY_TIMEOUT_JITTER_MAX.as_millis() as u32;
        Duration::from_millis(u64::from(self.rng.next_u32() % max))
    }

    // ----- the data path: network → tunnel -------------------------------

    /// Handles a datagram received from `from`. Transport messages are
    /// decrypted in place: on [`ReceiveOutcome::Deliver`] the IP packet is
    /// `datagram[16..16 + len]`.
    ///
    /// For transport messages, the one-call form of
    /// [`Device::prepare_receive`], [`ReceiveJob::open`] and
    /// [`Device::complete_receive`].
    ///
    /// A drop is counted for the device ([`Device::drop_count`]) and, once
    /// the datagram was tied to a peer (by the receiver index of one of its
    /// sessions or handshakes, or by the static key of its initiation), in
    /// that peer's [`PeerStats::drops`] too.
    pub fn receive(&mut self, now: Now, from: Endpoint, datagram: &mut [u8]) -> ReceiveOutcome {
        let outcome = match messages::parse(datagram) {
            Err(_) => Err(Refusal::untied(DropReason::Malformed)),
            Ok(Message::Transport(header)) => self
                .prepare_transport(now, from, header.receiver, header.counter)
                .and_then(|mut job| {
                    job.open(datagram);
                    self.complete_transport(now, job, datagram)
                }),
            Ok(Message::CookieReply(reply)) => self.receive_cookie_reply(now, reply, datagram),
            Ok(message) => self.receive_handshake(now, from, message, datagram),
        };
        self.after_operation();
        self.count_drop(outcome)
    }

    /// Turns a refusal into [`ReceiveOutcome::Dropped`], counting it.
    fn count_drop(&mut self, outcome: Result<ReceiveOutcome, Refusal>) -> ReceiveOutcome {
        outcome.unwrap_or_else(|refusal| ReceiveOutcome::Dropped(self.charge_drop(refusal)))
    }

    /// Counts a drop for the device and, if the datagram was tied to a peer
    /// that still exists, for that peer; returns the reason. Every drop of
    /// the receive path is counted here and only here.
    fn charge_drop(&mut self, refusal: Refusal) -> DropReason {
        let Refusal { reason, peer } = refusal;
        self.drops[reason.slot()] += 1;
        if let Some(peer) = peer.and_then(|id| self.peers.get_mut(id)) {
            peer.stats.drops.add(reason);
            self.peer_drops.add(reason);
        }
        reason
    }

    /// The first, cheap step for a datagram received from `from`: a
    /// transport message is matched to its session by receiver index, and
    /// refused if that session expired or the counter is already outside
    /// its replay window. Otherwise the job that decrypts it is returned;
    /// nothing else changes until [`Device::complete_receive`].
    pub fn prepare_receive(
        &mut self,
        now: Now,
        from: Endpoint,
        datagram: &[u8],
    ) -> ReceivePrepared {
        let header = match messages::parse(datagram) {
            Ok(Message::Transport(header)) => Ok(header),
            Ok(_) => return ReceivePrepared::NotTransport,
            Err(_) => Err(Refusal::untied(DropReason::Malformed)),
        };
        let prepared =
            header.and_then(|h| self.prepare_transport(now, from, h.receiver, h.counter));
        match prepared {
            Ok(job) => ReceivePrepared::Open(job),
            Err(refusal) => ReceivePrepared::Dropped(self.charge_drop(refusal)),
        }
    }

    fn prepare_transport(
        &mut self,
        now: Now,
        from: Endpoint,
        receiver: u32,
        counter: u64,
    ) -> Result<ReceiveJob, Refusal> {
        let unknown_index = Refusal::untied(DropReason::UnknownIndex);
        let id = self.indices.get(receiver).ok_or(unknown_index)?;
        let peer = self.peers.get_mut(id).ok_or(unknown_index)?;
        // Tied to the peer once the index names one of its sessions.
        let (keypair, _) = peer.keypairs.by_index_mut(receiver).ok_or(unknown_index)?;
        let open = keypair
            .precheck_open(now.mono, counter)
            .map_err(|error| Refusal::tied(id, transport_drop_reason(error)))?;
        Ok(ReceiveJob {
            peer: id,
            from,
            local_index: receiver,
            open,
            opened: None,
        })
    }

    /// The last step for a transport message, after [`ReceiveJob::open`]
    /// on `datagram`: the authoritative replay check (a copy of the message
    /// that completed first wins; this one is dropped), then roaming, key
    /// confirmation, timers, the allowed-IPs check of the inner source and
    /// the counters. Complete a peer's jobs in the order they were prepared.
    pub fn complete_receive(
        &mut self,
        now: Now,
        job: ReceiveJob,
        datagram: &[u8],
    ) -> ReceiveOutcome {
        let outcome = self.complete_transport(now, job, datagram);
        self.after_operation();
        self.count_drop(outcome)
    }

    /// [`Device::finish_transport`], whose every failure is charged to the
    /// job's peer: the job was tied to it when it was prepared.
    fn complete_transport(
        &mut self,
        now: Now,
        job: ReceiveJob,
        datagram: &[u8],
    ) -> Result<ReceiveOutcome, Refusal> {
        let id = job.peer;
        self.finish_transport(now, job, datagram)
            .map_err(|reason| Refusal::tied(id, reason))
    }

    fn finish_transport(
        &mut self,
        now: Now,
        job: ReceiveJob,
        datagram: &[u8],
    ) -> Result<ReceiveOutcome, DropReason> {
        let id = job.peer;
        let padded_len = job
            .opened
            .unwrap_or(Err(TransportError::Decryption))
            .map_err(transport_drop_reason)?;
        let peer = self.peers.get_mut(id).ok_or(DropReason::UnknownIndex)?;
        // The session may have gone since the job was prepared (keys
        // zeroed, rotated out, the peer removed): then the index names
        // nothing, or another session whose key did not open this message.
        let (keypair, slot) = peer
            .keypairs
            .by_index_mut(job.local_index)
            .filter(|(k, _)| k.made(&job.open))
            .ok_or(DropReason::UnknownIndex)?;
        keypair
            .accept_counter(now.mono, job.open.counter())
            .map_err(transport_drop_reason)?;
        // Authenticated: roam to where it came from, before any other check
        // (the kernel's order, which its crypto-RP filter test relies on).
        peer.endpoint = Some(job.from);
        if slot == Slot::Next {
            if let Some(dropped) = peer.keypairs.confirm_next() {
                self.indices.remove(dropped);
            }
            peer.timers.handshake_complete();
            peer.last_handshake = Some(now.wall);
            peer.stats.handshakes_completed += 1;
            self.events
                .push_back(Event::HandshakeCompleted { peer: id });
            self.flush_staged(now, id);
        }
        self.keep_key_fresh_on_receive(now, id);
        let peer = self.peers.get_mut(id).expect("still there");
        peer.authenticated_receipt(now.mono);
        if padded_len == 0 {
            peer.count_received(datagram.len() as u64);
            self.reschedule(id);
            return Ok(ReceiveOutcome::Handled);
        }
        peer.timers.data_received(now.mono);
        self.reschedule(id);
        let plaintext = datagram
            .get(TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + padded_len)
            .ok_or(DropReason::Malformed)?;
        let (len, source) =
            packet::length_and_source(plaintext).ok_or(DropReason::InvalidInnerPacket)?;
        if self.allowed_ips.lookup(source) != Some(id) {
            return Err(DropReason::SourceNotAllowed);
        }
        let peer = self.peers.get_mut(id).expect("still there");
        peer.count_received(datagram.len() as u64);
        Ok(ReceiveOutcome::Deliver { peer: id, len })
    }

    /// The initiator rekeys once when its session nears REJECT_AFTER_TIME.
    fn keep_key_fresh_on_receive(&mut self, now: Now, id: PeerId) {
        let peer = self.peers.get_mut(id).expect("caller checked");
        let old = peer.keypairs.current.as_ref().is_some_and(|k| {
            k.is_initiator && now.mono.saturating_duration_since(k.created) >= REKEY_ON_RECEIVE_AGE
        });
        if old && !peer.timers.sent_lastminute_handshake {
            peer.timers.sent_lastminute_handshake = true;
            self.send_initiation(now, id, false);
        }
    }

    fn receive_cookie_reply(
        &mut self,
        now: Now,
        reply: messages::CookieReply,
        datagram: &[u8],
    ) -> Result<ReceiveOutcome, Refusal> {
        let unknown_index = Refusal::untied(DropReason::UnknownIndex);
        let id = self.indices.get(reply.receiver).ok_or(unknown_index)?;
        let peer = self.peers.get_mut(id).ok_or(unknown_index)?;
        // Tied to the peer whose index it names.
        let bytes: &[u8; COOKIE_REPLY_LEN] = datagram
            .try_into()
            .map_err(|_| Refusal::tied(id, DropReason::Malformed))?;
        peer.cookie
            .consume_reply(now.mono, bytes)
            .map_err(|_| Refusal::tied(id, DropReason::BadCookieReply))?;
        Ok(ReceiveOutcome::Handled)
    }

    /// mac1, then the under-load rules: a cookie reply instead of work for
    /// sources without a valid mac2, a per-source rate limit for the rest.
    fn admit_handshake(
        &mut self,
        now: Now,
        from: Endpoint,
        sender_index: u32,
        datagram: &[u8],
    ) -> Result<(), DropReason> {
        if !self.cookie_checker.check_mac1(datagram) {
            return Err(DropReason::BadMac1);
        }
        if !self.load.observe(now.mono, self.handshake_backlog) {
            return Ok(());
        }
        if !self
            .cookie_checker
            .check_mac2(now.mono, &mut self.rng, datagram, from.addr)
        {
            let reply = self.cookie_checker.create_reply(
                now.mono,
                &mut self.rng,
                datagram,
                sender_index,
                from.addr,
            );
            if let Some(reply) = reply {
                self.outbox.push_back(Transmit {
                    peer: None,
                    endpoint: from,
                    data: reply.to_vec(),
                });
            }
            return Err(DropReason::CookieRequired);
        }
        if !self.rate_limiter.allow(now.mono, from.addr.ip()) {
            return Err(DropReason::RateLimited);
        }
        Ok(())
    }

    fn receive_handshake(
        &mut self,
        now: Now,
        from: Endpoint,
        message: Message,
        datagram: &[u8],
    ) -> Result<ReceiveOutcome, Refusal> {
        // Admission comes before any peer is known.
        match message {
            Message::Initiation(init) => {
                self.admit_handshake(now, from, init.sender, datagram)
                    .map_err(Refusal::untied)?;
                self.consume_initiation(now, from, &init)
            }
            Message::Response(response) => {
                self.admit_handshake(now, from, response.sender, datagram)
                    .map_err(Refusal::untied)?;
                self.consume_response(now, from, &response)
            }
            _ => Err(Refusal::untied(DropReason::Malformed)),
        }
    }

    fn consume_initiation(
        &mut self,
        now: Now,
        from: Endpoint,
        init: &messages::Initiation,
    ) -> Result<ReceiveOutcome, Refusal> {
        let identity = self
            .identity
            .as_ref()
            .ok_or(Refusal::untied(DropReason::NoPrivateKey))?;
        let progress = noise::open_initiation_static(&identity.secret, &identity.public, init)
            .map_err(|_| Refusal::untied(DropReason::HandshakeFailed))?;
        let unknown_peer = Refusal::untied(DropReason::UnknownPeer);
        let id = self
            .by_public_key
            .get(&progress.peer_public)
            .ok_or(unknown_peer)?;
        let peer = self.peers.get_mut(id).ok_or(unknown_peer)?;
        // Tied to the peer by the static key it claims.
        let failed = Refusal::tied(id, DropReason::HandshakeFailed);
        let static_static = peer.static_static(&identity.secret).ok_or(failed)?;
        let consumed =
            noise::finish_initiation(progress, static_static, init).map_err(|_| failed)?;
        if peer
            .latest_timestamp
            .is_some_and(|t| consumed.timestamp <= t)
        {
            return Err(Refusal::tied(id, DropReason::TimestampReplay));
        }
        let flood = peer.last_initiation_consumed.is_some_and(|last| {
            now.mono.saturating_duration_since(last) < crate::constants::MIN_INITIATION_INTERVAL
        });
        if flood {
            return Err(Refusal::tied(id, DropReason::InitiationFlood));
        }
        let local_index = self.indices.allocate(&mut self.rng, id);
        let created =
            noise::create_response(&consumed, &peer.preshared_key, &mut self.rng, local_index);
        let Ok((response, keys)) = created else {
            self.indices.remove(local_index);
            return Err(failed);
        };
        peer.latest_timestamp = Some(consumed.timestamp);
        peer.last_initiation_consumed = Some(now.mono);
        peer.endpoint = Some(from);
        peer.count_received(INITIATION_LEN as u64);
        peer.authenticated_receipt(now.mono);
        // A handshake we had in flight is superseded (as in the kernel,
        // one handshake state per peer).
        if let Some(old) = peer.handshake_index() {
            self.indices.remove(old);
        }
        peer.handshake = HandshakeState::None;
        let keypair = Keypair::new(&keys, local_index, consumed.remote_index, now.mono, false);
        for dropped in peer.keypairs.install(keypair) {
            self.indices.remove(dropped);
        }
        let mut bytes = response.to_bytes();
        peer.cookie.add_macs(now.mono, &mut bytes);
        peer.last_sent_handshake = Some(now.mono);
        peer.count_sent(now.mono, RESPONSE_LEN as u64, 1);
        peer.timers.session_derived(now.mono);
        self.outbox.push_back(Transmit {
            peer: Some(id),
            endpoint: from,
            data: bytes.to_vec(),
        });
        self.events.push_back(Event::HandshakeAnswered { peer: id });
        self.reschedule(id);
        Ok(ReceiveOutcome::Handled)
    }

    fn consume_response(
        &mut self,
        now: Now,
        from: Endpoint,
        response: &messages::Response,
    ) -> Result<ReceiveOutcome, Refusal> {
        let identity = self
            .identity
            .as_ref()
            .ok_or(Refusal::untied(DropReason::NoPrivateKey))?;
        let unknown_index = Refusal::untied(DropReason::UnknownIndex);
        let id = self.indices.get(response.receiver).ok_or(unknown_index)?;
        let peer = self.peers.get_mut(id).ok_or(unknown_index)?;
        let HandshakeState::InitiationSent(state) = &peer.handshake else {
            return Err(unknown_index);
        };
        if state.local_index != response.receiver {
            return Err(unknown_index);
        }
        // Tied to the peer once the index names its handshake in flight.
        let keys = noise::consume_response(state, &identity.secret, &peer.preshared_key, response)
            .map_err(|_| Refusal::tied(id, DropReason::HandshakeFailed))?;
        let keypair = Keypair::new(&keys, state.local_index, response.sender, now.mono, true);
        // The handshake's index now names the keypair.
        peer.handshake = HandshakeState::None;
        for dropped in peer.keypairs.install(keypair) {
            self.indices.remove(dropped);
        }
        peer.endpoint = Some(from);
        peer.count_received(RESPONSE_LEN as u64);
        peer.last_handshake = Some(now.wall);
        peer.stats.handshakes_completed += 1;
        self.events
            .push_back(Event::HandshakeCompleted { peer: id });
        peer.timers.session_derived(now.mono);
        peer.timers.handshake_complete();
        peer.authenticated_receipt(now.mono);
        // Confirm the session at once: staged data, or else a keepalive.
        self.send_keepalive(now, id);
        self.reschedule(id);
        Ok(ReceiveOutcome::Handled)
    }

    // ----- time ----------------------------------------------------------

    /// The next notable event, if any. Events are kept until taken, up to
    /// a bound (the oldest are dropped), so a caller that never looks costs
    /// little.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The next datagram to send, if any.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.outbox.pop_front()
    }

    /// When [`Device::handle_timeout`] should next be called. May be a
    /// little early (a timer that was pushed back), never late.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        while let Some(Reverse((deadline, id))) = self.timer_heap.peek().copied() {
            let live = self
                .peers
                .get(id)
                .is_some_and(|p| p.scheduled == Some(deadline));
            if live {
                return Some(deadline);
            }
            self.timer_heap.pop();
        }
        None
    }

    /// Registers a peer's earliest deadline in the heap. Only an earlier
    /// deadline is pushed; a later one is found when the earlier fires.
    fn reschedule(&mut self, id: PeerId) {
        let Some(peer) = self.peers.get_mut(id) else {
            return;
        };
        let Some(deadline) = peer.timers.next_deadline() else {
            return;
        };
        if peer.scheduled.is_none_or(|s| deadline < s) {
            peer.scheduled = Some(deadline);
            self.timer_heap.push(Reverse((deadline, id)));
        }
    }

    /// Fires every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Now) {
        while let Some(Reverse((deadline, id))) = self.timer_heap.peek().copied() {
            if deadline > now.mono {
                break;
            }
            self.timer_heap.pop();
            let Some(peer) = self.peers.get_mut(id) else {
                continue;
            };
            if peer.scheduled != Some(deadline) {
                continue;
            }
            peer.scheduled = None;
            while let Some(event) = self
                .peers
                .get_mut(id)
                .and_then(|p| p.timers.take_expired(now.mono))
            {
                self.on_timer(now, id, event);
            }
            self.reschedule(id);
        }
        self.after_operation();
    }

    fn on_timer(&mut self, now: Now, id: PeerId, event: TimerEvent) {
        let Some(peer) = self.peers.get_mut(id) else {
            return;
        };
        match event {
            TimerEvent::RetransmitHandshake => {
                if peer.timers.handshake_attempts > MAX_TIMER_HANDSHAKES {
                    peer.timers.handshake_gave_up(now.mono);
                    self.events.push_back(Event::HandshakeGaveUp { peer: id });
                    peer.staged.clear();
                } else {
                    peer.timers.handshake_attempts += 1;
                    clear_sticky_source(peer);
                    self.send_initiation(now, id, true);
                }
            }
            TimerEvent::SendKeepalive => {
                self.send_keepalive(now, id);
                if let Some(peer) = self.peers.get_mut(id) {
                    peer.timers.keepalive_sent_by_timer(now.mono);
                }
            }
            TimerEvent::NewHandshake => {
                clear_sticky_source(peer);
                self.send_initiation(now, id, false);
            }
            TimerEvent::ZeroKeyMaterial => {
                self.events.push_back(Event::KeysZeroed { peer: id });
                for index in peer.keypairs.clear() {
                    self.indices.remove(index);
                }
                self.clear_handshake(id);
            }
            TimerEvent::PersistentKeepalive => {
                if !peer.timers.persistent_keepalive_interval.is_zero() {
                    self.send_keepalive(now, id);
                }
            }
        }
    }
}

impl Device {
    /// Checks the engine's cross-table invariants and panics with a clear
    /// message if one is broken: every session index in use names a
    /// handshake or keypair of the peer it points to and vice versa, every
    /// public key maps to its peer, and every route points to a live peer.
    /// Called after every operation with the `debug-checks` feature.
    pub fn check_invariants(&self) {
        let mut owned = 0usize;
        self.send_holds.assert_consistent();
        self.peers.check_invariants();
        for (id, peer) in self.peers.iter() {
            assert_eq!(
                self.by_public_key.get(&peer.public_key),
                Some(id),
                "invariant: public key table out of step for {id:?}"
            );
            for index in peer.keypairs.indices().chain(peer.handshake_index()) {
                assert_eq!(
                    self.indices.get(index),
                    Some(id),
                    "invariant: index {index:#x} of {id:?} missing from the index table"
                );
                owned += 1;
            }
            assert!(
                peer.staged.len() <= crate::constants::MAX_STAGED_PACKETS,
                "invariant: staged queue over its limit"
            );
        }
        assert_eq!(
            owned,
            self.indices.len(),
            "invariant: the index table holds indices no peer owns"
        );
        assert_eq!(
            self.by_public_key.len(),
            self.peers.len(),
            "invariant: key table size"
        );
        for (id, _) in self.peers.iter() {
            let _ = self.allowed_ips.prefixes_of(id).count();
        }
    }

    /// Bounds the event queue and, with `debug-checks`, checks invariants.
    fn after_operation(&mut self) {
        if self.events.len() > MAX_EVENTS {
            let excess = self.events.len() - MAX_EVENTS;
            self.events.drain(..excess);
        }
        #[cfg(feature = "debug-checks")]
        self.check_invariants();
    }
}

/// The drop reason for a transport error.
fn transport_drop_reason(error: TransportError) -> DropReason {
    match error {
        TransportError::Replay => DropReason::Replay,
        TransportError::KeypairExpired => DropReason::KeypairExpired,
        TransportError::Decryption | TransportError::Truncated | TransportError::BufferTooSmall => {
            DropReason::Decryption
        }
    }
}

fn clear_sticky_source(peer: &mut Peer) {
    if let Some(endpoint) = &mut peer.endpoint {
        endpoint.local = None;
    }
}

#[cfg(test)]
#[path = "device_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "network_change_tests.rs"]
mod network_change_tests;

#[cfg(test)]
#[path = "send_holds_tests.rs"]
mod send_holds_tests;
