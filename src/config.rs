//! Applies configuration requests to the engine and reports its state: the
//! daemon's equivalent of the kernel's netlink handlers.
//!
//! Decisions (the kernel's semantics where the text protocol is silent):
//! * a request is parsed whole before anything is applied (see `uapi`);
//!   an error while applying (a port in use, a refused fwmark) stops there,
//!   and what came before stays applied, as with the kernel;
//! * `listen_port` equal to the bound port and `fwmark` equal to the current
//!   mark are no-ops, so `wg setconf` works without privileges;
//! * a peer equal to our own public key is ignored;
//! * turning persistent keepalive on sends a keepalive once the peer's
//!   other settings of the same request are applied;
//! * requests are applied one at a time (several clients may be connected:
//!   each request waits for the one being applied), but a large request is
//!   applied in slices of about [`SLICE_TIME`], the engine lock released
//!   between them so that the data path keeps running (2^20 peers take
//!   seconds). Each peer's update is applied whole within one slice, so no
//!   reader (the data path, `get`, a metrics scrape) sees a half-built peer;
//!   a `get` during a large `set` may see part of the request applied, as a
//!   kernel dump across netlink messages may. `replace_peers` removes the
//!   peers in slices too.

use std::io;
use std::net::IpAddr;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};

use ferroguard_proto::crypto::{PublicKey, SecretKey, SymmetricKey};
use ferroguard_proto::device::{Device, Now};
use ferroguard_proto::peer::PeerId;
use zeroize::Zeroizing;

use crate::bulk::{at_normal_priority, lock_hold, lower_this_thread};
use crate::clock;
use crate::holds::LockHolds;
use crate::runtime::Shared;
use crate::uapi::{
    DeviceOp, DeviceSnapshot, Errno, GetWriter, PeerLines, PeerOp, PeerSnapshot, PeerUpdate,
    SetRequest, UapiHandler,
};

/// The longest the engine lock is held by one slice of a large request.
/// Half a millisecond: a packet that arrives during a slice waits for its
/// end, and the slice itself overruns when its thread is preempted.
pub const SLICE_TIME: Duration = Duration::from_micros(500);

/// The pause between two slices. The engine lock is not fair: a thread
/// that releases it and takes it again at once usually gets it before a
/// waiting data-path thread has been scheduled, so the applier steps aside
/// for a moment (a fifth of a slice).
const SLICE_PAUSE: Duration = Duration::from_micros(100);

/// Peer updates (or removals) between two looks at the clock.
const CLOCK_EVERY: usize = 16;

/// Serves `get` and `set` for one device. Clones (one per configuration
/// connection) share the device and apply their requests one at a time.
#[derive(Clone)]
pub struct ConfigHandler {
    shared: Arc<Shared>,
    /// Held while a `set` is applied.
    applying: Arc<Mutex<()>>,
}

impl ConfigHandler {
    /// A handler for the device behind `shared`.
    pub fn new(shared: Arc<Shared>) -> Self {
        ConfigHandler {
            shared,
            applying: Arc::new(Mutex::new(())),
        }
    }

    fn apply_device_op(&self, op: &DeviceOp, holds: &mut LockHolds) -> Result<(), Errno> {
        match op {
            DeviceOp::PrivateKey(bytes) => {
                let key = (**bytes != [0u8; 32]).then(|| SecretKey::from_bytes(**bytes));
                self.shared.engine().device.set_private_key(key);
            }
            DeviceOp::ListenPort(port) => {
                if *port != self.shared.sockets().port() {
                    let fwmark = self.shared.engine().fwmark;
                    self.shared
                        .rebind(*port, fwmark)
                        .map_err(|e| Errno::from_io_error(&e))?;
                    self.shared.engine().device.clear_sticky_sources();
                }
            }
            DeviceOp::Fwmark(mark) => {
                if *mark != self.shared.engine().fwmark {
                    self.shared
                        .sockets()
                        .set_fwmark(*mark)
                        .map_err(|e| Errno::from_io_error(&e))?;
                    let mut engine = self.shared.engine();
                    engine.fwmark = *mark;
                    engine.device.clear_sticky_sources();
                }
            }
            DeviceOp::ReplacePeers => self.remove_all_peers(holds),
        }
        Ok(())
    }

    /// Removes every peer, a slice at a time.
    ///
    /// Each slice goes on after the last peer the previous one removed:
    /// starting from the first slot every time walked the empty slots left
    /// behind, and made `wg setconf` of 2^20 peers quadratic (50 s, with
    /// 0.4 s holds). Once the walk is through, the removal ends if the
    /// device has no peer left (requests are applied one at a time, so
    /// nothing is added meanwhile), else it starts over from the first
    /// slot. Looking for a peer left from the first slot instead was one
    /// hold that walked every empty slot: 64–89 ms at 2^20 peers.
    fn remove_all_peers(&self, holds: &mut LockHolds) {
        let mut after = None;
        loop {
            // The removed peers are dropped (zeroed and freed) after the
            // hold: freeing the last of many peers can make the allocator
            // return hundreds of MB to the system in one call.
            let (taken, last) = lock_hold(|| {
                let mut engine = self.shared.engine();
                let device = &mut engine.device;
                let started = Instant::now();
                let (mut taken, mut last) = (Vec::with_capacity(SLICE_PEERS_MAX), None);
                for id in device.peer_ids_after(after, SLICE_PEERS_MAX) {
                    taken.extend(device.take_peer(id));
                    last = Some(id);
                    if taken.len() % CLOCK_EVERY == 0 && started.elapsed() >= SLICE_TIME {
                        break;
                    }
                }
                drop(engine);
                holds.note("remove", started.elapsed());
                (taken, last)
            });
            let removed = taken.len();
            drop(taken);
            if removed == 0 {
                if after.is_none() || lock_hold(|| self.shared.engine().device.peer_count()) == 0 {
                    return;
                }
                after = None;
                continue;
            }
            after = last;
            std::thread::sleep(SLICE_PAUSE);
        }
    }

    /// Reserves room in the engine's tables for the peers that `updates`
    /// add (counted a slice at a time under the lock), so that they do not
    /// grow step by step while the request is applied: each step of a
    /// table of 2^20 peers held the engine lock for up to 110 ms.
    fn reserve_for(&self, updates: &[PeerUpdate], holds: &mut LockHolds) {
        let (mut peers, mut v4_prefixes, mut v6_prefixes) = (0, 0, 0);
        for slice in updates.chunks(COUNT_SLICE) {
            lock_hold(|| {
                let engine = self.shared.engine();
                let started = Instant::now();
                for update in slice {
                    let adds = !update.remove && !update.update_only;
                    if adds
                        && engine
                            .device
                            .peer_id(&PublicKey(update.public_key))
                            .is_none()
                    {
                        peers += 1;
                        for op in &update.ops {
                            match op {
                                PeerOp::AddAllowedIp(IpAddr::V4(_), _) => v4_prefixes += 1,
                                PeerOp::AddAllowedIp(IpAddr::V6(_), _) => v6_prefixes += 1,
                                _ => {}
                            }
                        }
                    }
                }
                drop(engine);
                holds.note("count", started.elapsed());
            });
        }
        if peers > 0 {
            lock_hold(|| {
                let mut engine = self.shared.engine();
                let started = Instant::now();
                engine.device.reserve_peers(peers, v4_prefixes, v6_prefixes);
                drop(engine);
                holds.note("reserve", started.elapsed());
            });
        }
    }

    /// Applies peer updates from the start of `updates` for at most about
    /// [`SLICE_TIME`] under one hold of the engine lock; returns how many.
    fn apply_peer_slice(&self, updates: &[PeerUpdate], holds: &mut LockHolds) -> usize {
        let now = clock::now();
        let mut started = Instant::now();
        let (applied, pending) = lock_hold(|| {
            let result = self.shared.with_engine(|engine| {
                started = Instant::now();
                let mut applied = 0;
                for update in updates {
                    apply_peer_update(&mut engine.device, update, now);
                    applied += 1;
                    if applied % CLOCK_EVERY == 0 && started.elapsed() >= SLICE_TIME {
                        break;
                    }
                }
                applied
            });
            holds.note("apply", started.elapsed());
            result
        });
        self.shared.send_all(pending);
        applied
    }
}

/// The nice value of a thread that parses a request or streams the whole
/// device (`get`, a metrics scrape): formatting 2^20 peers takes a CPU for
/// a second or more, and on a small machine the data path must not queue
/// behind it. A configuration connection's thread holds the engine lock
/// at its normal priority (see [`crate::bulk`]); a scrape does not (see
/// `metrics::scrape`).
pub const BULK_NICE: i32 = 10;

/// Peer updates looked up per hold of the lock when counting new peers.
const COUNT_SLICE: usize = 2048;

/// Removed peers per slice at most (the id list is taken under the lock).
const SLICE_PEERS_MAX: usize = 4096;

/// Applies one peer's update whole (see `uapi::PeerUpdate` for the rules).
fn apply_peer_update(device: &mut Device, update: &PeerUpdate, now: Now) {
    let public = PublicKey(update.public_key);
    if device.public_key() == Some(public) {
        return;
    }
    let existing = device.peer_id(&public);
    if update.remove {
        if let Some(id) = existing {
            device.remove_peer(id);
        }
        return;
    }
    if update.update_only && existing.is_none() {
        return;
    }
    let Some(id) = device.add_peer(public) else {
        return;
    };
    let mut keepalive = None;
    // A peer created by this update owns no prefix until it adds one: then
    // `replace_allowed_ips` (which `wg setconf` sends for every peer) has
    // nothing to clear, and skipping it saves a table lookup per peer.
    let mut may_own_prefixes = existing.is_some();
    for op in &update.ops {
        match op {
            PeerOp::PresharedKey(k) => device.set_preshared_key(id, SymmetricKey(**k)),
            PeerOp::Endpoint(addr) => device.set_endpoint(id, *addr),
            PeerOp::PersistentKeepalive(secs) => keepalive = Some(*secs),
            PeerOp::ReplaceAllowedIps => {
                if may_own_prefixes {
                    device.clear_allowed_ips(id);
                }
            }
            PeerOp::AddAllowedIp(ip, cidr) => {
                may_own_prefixes = true;
                // The parser checked the prefix length, so this cannot fail.
                let _ = device.add_allowed_ip(id, *ip, *cidr);
            }
            PeerOp::RemoveAllowedIp(ip, cidr) => {
                let _ = device.remove_allowed_ip(id, *ip, *cidr);
            }
        }
    }
    if let Some(secs) = keepalive {
        device.set_persistent_keepalive(now, id, secs);
    }
}

impl UapiHandler for ConfigHandler {
    /// The device's state, read in chunks of `GET_CHUNK` peers with the
    /// engine lock released in between (see [`ConfigHandler::answer_get`]).
    fn get(&mut self) -> DeviceSnapshot {
        let (private_key, listen_port, fwmark) = self.device_settings();
        let mut peers = Vec::new();
        let mut staged = StagedPeers::new();
        let mut after = None;
        let mut holds = LockHolds::new();
        while self.stage_next_chunk(&mut staged, &mut after, &mut holds) {
            staged.snapshots_into(&mut peers);
        }
        DeviceSnapshot {
            private_key,
            listen_port,
            fwmark,
            peers,
        }
    }

    /// Streams the answer: `GET_CHUNK` peers are copied out under the
    /// engine lock, then formatted and written with the lock released, so
    /// that `wg show` of 2^20 peers neither stalls the data path nor holds
    /// more than a chunk in memory (it took the lock for up to 0.46 s at
    /// 100 000 peers when done in one go). The peers come in the engine's
    /// storage order (`Device::peers_after`: the order of addition until
    /// peers are removed); `wg` sorts them itself, and wireguard-go lists
    /// them in its map's random order. A peer present for the whole `get`
    /// is listed exactly once; one added or removed meanwhile may or may
    /// not be; each peer is read whole, as the kernel's netlink dump does
    /// across its messages.
    ///
    /// The copying and the formatting overlap: a thread of the request's
    /// own copies the next chunk while this one formats the previous (two
    /// chunks' buffers, handed back and forth), so that on two idle CPUs
    /// a `get` takes the longer of the two rather than their sum (the copy
    /// was three tenths of a `get` of 2^20 peers: BENCHMARKS.md).
    fn answer_get(&mut self, out: &mut dyn io::Write) -> io::Result<()> {
        // The connection's own thread (already lowered when served by
        // `serve_concurrently`): it ends with the connection.
        lower_this_thread();
        let (private_key, listen_port, fwmark) = self.device_settings();
        let mut answer = GetWriter::start(out, private_key.as_deref(), listen_port, fwmark)?;
        let this = &*self;
        std::thread::scope(|scope| {
            let (full_sender, full) = mpsc::sync_channel::<StagedPeers>(1);
            let (empty_sender, empty) = mpsc::channel::<StagedPeers>();
            for _ in 0..2 {
                let _ = empty_sender.send(StagedPeers::new());
            }
            let copier = std::thread::Builder::new()
                .name("uapi-get".into())
                .spawn_scoped(scope, move || this.copy_chunks(&empty, &full_sender));
            if let Err(error) = copier {
                // The two channels' ends it would have had are dropped: copy here.
                log::debug!("no thread for a get's copies: {error}");
                return this.answer_get_unpipelined(&mut answer);
            }
            // Ends when the copier is through; returning early (the client
            // gone) drops the channels' ends, which ends the copier.
            for staged in full {
                for peer in staged.lines() {
                    answer.peer_lines(&peer)?;
                }
                let _ = empty_sender.send(staged);
            }
            Ok(())
        })?;
        answer.finish()
    }

    /// Applies the request at the thread's normal priority: it was parsed
    /// at bulk priority, but every step from here holds the engine lock.
    fn set(&mut self, request: SetRequest) -> Result<(), Errno> {
        at_normal_priority(|| self.apply(&request))
    }
}

impl ConfigHandler {
    /// Applies a parsed request (see the module documentation).
    fn apply(&self, request: &SetRequest) -> Result<(), Errno> {
        let _applying = self.applying.lock().unwrap_or_else(|e| e.into_inner());
        let mut holds = LockHolds::new();
        for op in &request.device {
            self.apply_device_op(op, &mut holds)?;
        }
        self.reserve_for(&request.peers, &mut holds);
        let mut rest = &request.peers[..];
        while !rest.is_empty() {
            let applied = self.apply_peer_slice(rest, &mut holds);
            rest = &rest[applied..];
            if !rest.is_empty() {
                std::thread::sleep(SLICE_PAUSE);
            }
        }
        holds.log(&format!("set of {} peers", request.peers.len()));
        Ok(())
    }

    /// The private key, the bound port and the fwmark.
    fn device_settings(&self) -> (Option<Zeroizing<[u8; 32]>>, u16, u32) {
        let listen_port = self.shared.sockets().port();
        lock_hold(|| {
            let engine = self.shared.engine();
            let private_key = engine.device.private_key().map(|k| k.to_bytes());
            (private_key, listen_port, engine.fwmark)
        })
    }

    /// A `get`'s copier (see [`ConfigHandler::answer_get`]): takes an
    /// empty buffer from `empty`, copies the next chunk into it and hands it
    /// to `full`, until the device is through or the formatter is gone.
    fn copy_chunks(
        &self,
        empty: &mpsc::Receiver<StagedPeers>,
        full: &mpsc::SyncSender<StagedPeers>,
    ) {
        lower_this_thread();
        let mut after = None;
        let mut holds = LockHolds::new();
        while let Ok(mut staged) = empty.recv() {
            if !self.stage_next_chunk(&mut staged, &mut after, &mut holds)
                || full.send(staged).is_err()
            {
                break;
            }
        }
        holds.log("get");
    }

    /// The peers of a `get`, copied and formatted in turn on this thread
    /// (where no copier thread could be started).
    fn answer_get_unpipelined<W: io::Write + ?Sized>(
        &self,
        answer: &mut GetWriter<'_, W>,
    ) -> io::Result<()> {
        let mut staged = StagedPeers::new();
        let mut after = None;
        let mut holds = LockHolds::new();
        while self.stage_next_chunk(&mut staged, &mut after, &mut holds) {
            for peer in staged.lines() {
                answer.peer_lines(&peer)?;
            }
        }
        holds.log("get");
        Ok(())
    }

    /// Copies the `GET_CHUNK` peers after `after` into `staged` under one
    /// hold of the engine lock and moves `after` past them; false when
    /// there were none left.
    fn stage_next_chunk(
        &self,
        staged: &mut StagedPeers,
        after: &mut Option<PeerId>,
        holds: &mut LockHolds,
    ) -> bool {
        lock_hold(|| {
            let engine = self.shared.engine();
            let started = Instant::now();
            staged.copy_from(&engine.device, *after);
            drop(engine);
            holds.note("copy", started.elapsed());
            let Some(last) = staged.last else {
                return false;
            };
            *after = Some(last);
            true
        })
    }
}

/// Peers read per acquisition of the engine lock by a `get` (well under a
/// millisecond).
const GET_CHUNK: usize = 512;

/// One chunk of peers as copied out under the engine lock, into buffers
/// that are reused from chunk to chunk.
///
/// Only copies into memory already touched happen under the lock; every
/// allocation (the per-peer lists, the growing snapshot) happens after it
/// is released. With 100 000 peers the snapshot's first touches alone are
/// thousands of page faults, each far slower on a virtual machine, and a
/// thread that holds the engine lock while it faults, or is preempted
/// meanwhile, stalls the data path: pings during `wg show` peaked at
/// 40 ms before (BENCHMARKS.md, "wg show with 100 000 peers").
struct StagedPeers {
    peers: Vec<StagedPeer>,
    /// The preshared keys, apart so that they are zeroed when this is
    /// dropped (a `Zeroizing<Vec>` clears its whole capacity).
    preshared_keys: Zeroizing<Vec<[u8; 32]>>,
    allowed_ips: Vec<(std::net::IpAddr, u8)>,
    /// The last peer staged, the cursor for the next chunk.
    last: Option<PeerId>,
}

/// A peer's plain values; its prefixes are `allowed_ips[prefixes]`.
struct StagedPeer {
    public_key: [u8; 32],
    endpoint: Option<std::net::SocketAddr>,
    last_handshake: Option<std::time::Duration>,
    tx_bytes: u64,
    rx_bytes: u64,
    persistent_keepalive: u16,
    prefixes: std::ops::Range<usize>,
}

impl StagedPeers {
    fn new() -> Self {
        StagedPeers {
            peers: Vec::with_capacity(GET_CHUNK),
            // Sized once: a growing buffer would leave copies of keys behind
            // in the memory it gave up.
            preshared_keys: Zeroizing::new(Vec::with_capacity(GET_CHUNK)),
            allowed_ips: Vec::new(),
            last: None,
        }
    }

    /// Replaces the staged chunk with the next `GET_CHUNK` peers after
    /// `after` in the device's order (read in storage order, with no
    /// lookup per peer), and sets `last` to the last of them.
    fn copy_from(&mut self, device: &Device, after: Option<PeerId>) {
        self.peers.clear();
        self.preshared_keys.clear();
        self.allowed_ips.clear();
        self.last = None;
        // Finding a peer's prefixes is a hash lookup, a cache miss on a
        // large device, and it was four fifths of this copy's time: done
        // first for the whole chunk, in a loop that does nothing else, the
        // CPU waits for many misses at once.
        let chunk: Vec<_> = device
            .peers_after(after)
            .take(GET_CHUNK)
            .map(|(id, peer)| (id, peer, device.allowed_ips().prefixes_of(id)))
            .collect();
        for (id, peer, prefixes) in chunk {
            self.last = Some(id);
            let first = self.allowed_ips.len();
            self.allowed_ips.extend(prefixes);
            self.preshared_keys.push(*peer.preshared_key().as_bytes());
            self.peers.push(StagedPeer {
                public_key: peer.public_key().0,
                endpoint: peer.endpoint().map(|e| e.addr),
                last_handshake: peer
                    .last_handshake()
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok()),
                tx_bytes: peer.tx_bytes(),
                rx_bytes: peer.rx_bytes(),
                persistent_keepalive: peer.persistent_keepalive().as_secs() as u16,
                prefixes: first..self.allowed_ips.len(),
            });
        }
    }

    /// The staged chunk, borrowed, for writing out.
    fn lines(&self) -> impl Iterator<Item = PeerLines<'_>> {
        self.peers
            .iter()
            .zip(self.preshared_keys.iter())
            .map(|(peer, preshared_key)| PeerLines {
                public_key: &peer.public_key,
                preshared_key,
                endpoint: peer.endpoint,
                last_handshake: peer.last_handshake,
                tx_bytes: peer.tx_bytes,
                rx_bytes: peer.rx_bytes,
                persistent_keepalive: peer.persistent_keepalive,
                allowed_ips: &self.allowed_ips[peer.prefixes.clone()],
            })
    }

    /// Appends the staged chunk to `out` as snapshots.
    fn snapshots_into(&self, out: &mut Vec<PeerSnapshot>) {
        for (peer, preshared_key) in self.peers.iter().zip(self.preshared_keys.iter()) {
            out.push(PeerSnapshot {
                public_key: peer.public_key,
                preshared_key: Zeroizing::new(*preshared_key),
                endpoint: peer.endpoint,
                last_handshake: peer.last_handshake,
                tx_bytes: peer.tx_bytes,
                rx_bytes: peer.rx_bytes,
                persistent_keepalive: peer.persistent_keepalive,
                allowed_ips: self.allowed_ips[peer.prefixes.clone()].to_vec(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

    /// A device with `n` peers: peer i has i % 3 prefixes (so some have
    /// none), a preshared key on every other one, an endpoint on every
    /// fourth one.
    fn device_with_peers(n: u32) -> Device {
        let mut device = Device::new([7; 32]);
        for i in 0..n {
            let mut key = [0u8; 32];
            key[..4].copy_from_slice(&i.to_be_bytes());
            key[31] = 0x42;
            let id = device
                .add_peer(SecretKey::from_bytes(key).public_key())
                .expect("peer added");
            for p in 0..i % 3 {
                let addr = if p == 0 {
                    IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | i))
                } else {
                    IpAddr::V6(Ipv6Addr::from(0xfd00_u128 << 112 | u128::from(i)))
                };
                device
                    .add_allowed_ip(id, addr, 32 * (1 + 3 * p as u8))
                    .unwrap();
            }
            if i % 2 == 0 {
                device.set_preshared_key(id, SymmetricKey([i as u8 | 1; 32]));
            }
            if i % 4 == 0 {
                device.set_endpoint(id, SocketAddr::from(([192, 0, 2, 1], 1000 + i as u16)));
            }
        }
        device
    }

    #[test]
    fn staged_chunks_report_every_peer_whole_and_in_order() {
        let device = device_with_peers(GET_CHUNK as u32 * 2 + 7);
        let ids = device.peer_ids();
        let mut staged = StagedPeers::new();
        let mut peers = Vec::new();
        let mut chunks = 0;
        let mut after = None;
        loop {
            staged.copy_from(&device, after);
            let Some(last) = staged.last else { break };
            after = Some(last);
            chunks += 1;
            staged.snapshots_into(&mut peers);
        }
        assert_eq!(chunks, 3);
        assert_eq!(peers.len(), ids.len());
        for (snapshot, &id) in peers.iter().zip(&ids) {
            let peer = device.peer(id).expect("peer exists");
            assert_eq!(snapshot.public_key, peer.public_key().0);
            assert_eq!(*snapshot.preshared_key, *peer.preshared_key().as_bytes());
            assert_eq!(snapshot.endpoint, peer.endpoint().map(|e| e.addr));
            let prefixes: Vec<_> = device.allowed_ips().prefixes_of(id).collect();
            assert_eq!(snapshot.allowed_ips, prefixes);
        }
        assert!(peers.iter().any(|p| p.allowed_ips.is_empty()));
        assert!(peers.iter().any(|p| p.allowed_ips.len() == 2));
    }

    /// The streamed `get` (peers written from the staged chunks) is
    /// byte for byte the answer built from whole snapshots.
    #[test]
    fn streamed_lines_match_the_snapshots() {
        let device = device_with_peers(GET_CHUNK as u32 + 9);
        let mut staged = StagedPeers::new();
        let (mut streamed, mut snapshots) = (Vec::new(), Vec::new());
        let mut writer = GetWriter::start(&mut streamed, Some(&[3; 32]), 51820, 7).unwrap();
        let mut after = None;
        loop {
            staged.copy_from(&device, after);
            let Some(last) = staged.last else { break };
            after = Some(last);
            for peer in staged.lines() {
                writer.peer_lines(&peer).unwrap();
            }
            staged.snapshots_into(&mut snapshots);
        }
        writer.finish().unwrap();
        let whole_device = DeviceSnapshot {
            private_key: Some(Zeroizing::new([3; 32])),
            listen_port: 51820,
            fwmark: 7,
            peers: snapshots,
        };
        let mut whole = Vec::new();
        crate::uapi::write_get(&whole_device, &mut whole).unwrap();
        assert_eq!(
            String::from_utf8(streamed).unwrap(),
            String::from_utf8(whole).unwrap()
        );
    }

    /// A chunk resumes after the previous chunk's last peer even when
    /// that peer and the next one were removed in between.
    #[test]
    fn peers_gone_between_chunks_are_left_out() {
        let mut device = device_with_peers(6);
        let ids = device.peer_ids();
        device.remove_peer(ids[1]);
        device.remove_peer(ids[2]);
        let mut staged = StagedPeers::new();
        let mut peers = Vec::new();
        staged.copy_from(&device, Some(ids[1]));
        staged.snapshots_into(&mut peers);
        assert_eq!(staged.last, Some(ids[5]));
        let reported: Vec<[u8; 32]> = peers.iter().map(|p| p.public_key).collect();
        let expected: Vec<[u8; 32]> = [3, 4, 5]
            .iter()
            .map(|&i| device.peer(ids[i]).expect("kept").public_key().0)
            .collect();
        assert_eq!(reported, expected);
    }
}
