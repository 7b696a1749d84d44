//! The runtime: threads that connect the protocol engine to the TUN device,
//! the UDP sockets, the clock and the configuration socket.
//!
//! * the I/O threads (`io_loop`) read the TUN device and encrypt, and
//!   receive datagrams in batches and decrypt: one thread for all of it, or
//!   one for the TUN and one per address family (`io_threads`);
//! * large batches are encrypted or decrypted outside the engine lock by
//!   the reading thread and the crypto workers together (`crypto_pool`);
//! * one thread sleeps until the engine's next deadline (`timer_loop`);
//! * the configuration socket is served by `daemon::uapi_loop`: one `uapi` thread accepts,
//!   each connection gets a `uapi-conn` thread of its own (`uapi::serve_concurrently`);
//! * the main thread waits for signals and watches the socket file.
//!
//! The engine sits behind one mutex; it is held only for the protocol work,
//! never across a system call. Shutdown is by process exit after cleanup:
//! threads blocked in `read` need no waking, and closing the TUN descriptor
//! is what deletes the interface.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use ferroguard_proto::device::{
    Device, Event, Now, ReceiveJob, ReceiveOutcome, ReceivePrepared, SendJob, SendOutcome,
    SendPrepared, SendTally, Transmit,
};
use ferroguard_proto::peer::{Endpoint, LocalAddr, PeerId};
use ferroguard_proto::transport::TransportError;

use crate::clock;
use crate::crypto_pool::CryptoPool;
use crate::icmp;
use crate::offload::virtio::{
    VirtioNetHdr, VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_LEN as VNET_HDR_LEN,
};
use crate::offload::{self, Coalescer, SegmentBatch};
use crate::sys::tun::Tun;
use crate::sys::udp::{
    Datagram, DatagramOutcome, Family, LocalSource, RecvMeta, SegmentRun, SendError, UdpSockets,
};
use crate::sys::EventFd;

/// Largest datagram or packet handled (UDP's limit).
pub const MAX_PACKET: usize = 65536;
/// Room for the transport header, tag and padding.
const OVERHEAD: usize = 64;
/// Buffers per receive system call (each up to 64 KiB: with UDP GRO one
/// buffer holds up to 64 datagrams).
const RECV_BATCH: usize = 16;

/// The engine and the settings that live beside it.
pub struct Engine {
    /// The protocol engine.
    pub device: Device,
    /// The configured fwmark (0 = none).
    pub fwmark: u32,
}

/// State shared by every thread.
pub struct Shared {
    engine: Mutex<Engine>,
    sockets: RwLock<Arc<UdpSockets>>,
    tun: Arc<Tun>,
    /// One wake-up per receiver thread, notified when the sockets change.
    receiver_wakers: [EventFd; 2],
    timer: TimerKick,
    handshakes: HandshakeQueue,
    tun_reader: Mutex<TunReader>,
    /// Serialises rebinds so two configuration changes cannot interleave.
    rebind_lock: Mutex<()>,
    /// The crypto workers for large batches.
    crypto: CryptoPool,
}

/// Handshake messages wait here for the handshake thread, so that a flood
/// of them costs the data path one copy each and never a Diffie-Hellman.
/// Bounded: when full, new handshake messages are dropped (the sender
/// retries after REKEY_TIMEOUT); its length is the backlog that switches the
/// engine to cookie replies ("under load"), as the kernel's queue does.
struct HandshakeQueue {
    sender: SyncSender<QueuedHandshake>,
    /// Taken by the one handshake thread.
    receiver: Mutex<Option<Receiver<QueuedHandshake>>>,
    len: AtomicUsize,
    /// Messages dropped because the queue was full (for metrics).
    full_drops: AtomicU64,
}

/// A handshake datagram and where it came from.
type QueuedHandshake = (Endpoint, Vec<u8>);

/// Handshake messages queued at most (the kernel allows 4096; wireguard-go 1024).
const HANDSHAKE_QUEUE: usize = 1024;

impl HandshakeQueue {
    fn new() -> Self {
        let (sender, receiver) = sync_channel(HANDSHAKE_QUEUE);
        HandshakeQueue {
            sender,
            receiver: Mutex::new(Some(receiver)),
            len: AtomicUsize::new(0),
            full_drops: AtomicU64::new(0),
        }
    }

    /// Queues a copy of a handshake datagram; false if the queue is full.
    fn push(&self, from: Endpoint, datagram: &[u8]) -> bool {
        match self.sender.try_send((from, datagram.to_vec())) {
            Ok(()) => {
                self.len.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.full_drops.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }
}

/// Lets other threads wake the timer thread when a deadline moved earlier.
struct TimerKick {
    base: Instant,
    /// Nanoseconds after `base` at which the timer thread plans to wake.
    planned: AtomicU64,
    lock: Mutex<bool>,
    cond: Condvar,
}

impl TimerKick {
    fn nanos(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.base).as_nanos() as u64
    }

    fn kick_if_earlier(&self, deadline: Option<Instant>) {
        let Some(deadline) = deadline else { return };
        if self.nanos(deadline) < self.planned.load(Ordering::Relaxed) {
            let mut kicked = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            *kicked = true;
            self.cond.notify_one();
        }
    }
}

impl Shared {
    /// Builds the shared state around an engine, a TUN device and sockets.
    pub fn new(device: Device, tun: Tun, sockets: UdpSockets) -> std::io::Result<Arc<Shared>> {
        Ok(Arc::new(Shared {
            engine: Mutex::new(Engine { device, fwmark: 0 }),
            sockets: RwLock::new(Arc::new(sockets)),
            tun: Arc::new(tun),
            receiver_wakers: [EventFd::new()?, EventFd::new()?],
            timer: TimerKick {
                base: Instant::now(),
                planned: AtomicU64::new(u64::MAX),
                lock: Mutex::new(false),
                cond: Condvar::new(),
            },
            handshakes: HandshakeQueue::new(),
            tun_reader: Mutex::new(TunReader::new()),
            rebind_lock: Mutex::new(()),
            crypto: CryptoPool::from_env(),
        }))
    }

    /// Locks the engine (a poisoned lock is taken over: the engine's state
    /// is consistent between calls).
    pub fn engine(&self) -> MutexGuard<'_, Engine> {
        self.engine.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current sockets.
    pub fn sockets(&self) -> Arc<UdpSockets> {
        self.sockets
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The TUN device.
    pub fn tun(&self) -> &Tun {
        &self.tun
    }

    /// Handshake messages waiting for the handshake thread (for metrics).
    pub fn handshake_queue_len(&self) -> usize {
        self.handshakes.len.load(Ordering::Relaxed)
    }

    /// Handshake messages dropped because their queue was full (for metrics).
    pub fn handshake_queue_full_drops(&self) -> u64 {
        self.handshakes.full_drops.load(Ordering::Relaxed)
    }

    /// Rebinds the UDP sockets to `port` with `fwmark`, waking the receivers.
    pub fn rebind(&self, port: u16, fwmark: u32) -> std::io::Result<()> {
        let _guard = self.rebind_lock.lock().unwrap_or_else(|e| e.into_inner());
        let fresh = Arc::new(UdpSockets::bind(port, fwmark)?);
        *self.sockets.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        for waker in &self.receiver_wakers {
            let _ = waker.notify();
        }
        Ok(())
    }

    /// Wakes the timer thread if the engine's next deadline is earlier than
    /// its plan. Call after any engine operation that may arm a timer.
    pub fn after_engine_change(&self, engine: &mut Engine) {
        self.timer.kick_if_earlier(engine.device.poll_timeout());
    }

    /// Sends queued datagrams, outside the engine lock: all of them with one
    /// `sendmmsg` per address family (see [`UdpSockets::send_datagrams`]).
    pub fn send_all(&self, transmits: Vec<Transmit>) {
        // An empty payload has no datagram to send.
        let nonempty: Vec<&Transmit> = transmits.iter().filter(|t| !t.data.is_empty()).collect();
        if nonempty.is_empty() {
            return;
        }
        let datagrams: Vec<Datagram<'_>> = nonempty
            .iter()
            .map(|t| Datagram {
                data: &t.data,
                dst: t.endpoint.addr,
                src: local_source(&t.endpoint),
            })
            .collect();
        let outcomes = self.sockets().send_datagrams(&datagrams);
        for (t, outcome) in nonempty.iter().zip(outcomes) {
            match outcome {
                DatagramOutcome::Sent => {}
                DatagramOutcome::SourceDropped { refused, retry } => {
                    self.forget_refused_source(&t.endpoint, t.peer, &refused);
                    if let Err(e) = retry {
                        log::debug!("send to {} failed: {e}", t.endpoint.addr);
                    }
                }
                DatagramOutcome::Failed(e) => {
                    log::debug!("send to {} failed: {e}", t.endpoint.addr)
                }
            }
        }
    }

    /// Sends `runs` to `endpoint`, together (one `sendmmsg` as far as it
    /// holds them), each run datagrams of its `segment_size` back to back
    /// (the last may be shorter), with UDP GSO where the socket has it.
    fn send_runs(
        &self,
        sockets: &UdpSockets,
        runs: &[SegmentRun<'_>],
        endpoint: Endpoint,
        peer: Option<PeerId>,
    ) {
        let source = local_source(&endpoint);
        match sockets.send_segment_runs(runs, endpoint.addr, source.as_ref()) {
            Ok(()) => {}
            Err(SendError::SourceUnusable(e)) => {
                // Every datagram has this source, so a refused source fails
                // the first one and the retry duplicates nothing. (A later
                // refusal is of the datagram itself, e.g. its size; a copy
                // sent twice then is dropped by the receiver's replay window.)
                self.forget_refused_source(&endpoint, peer, &e);
                if let Err(SendError::Other(e) | SendError::SourceUnusable(e)) =
                    sockets.send_segment_runs(runs, endpoint.addr, None)
                {
                    log::debug!("send to {} failed: {e}", endpoint.addr);
                }
            }
            Err(SendError::Other(e)) => log::debug!("send to {} failed: {e}", endpoint.addr),
        }
    }

    /// Forgets `peer`'s sticky source after the kernel refused to send from
    /// it (the datagram itself goes again without a source).
    fn forget_refused_source(
        &self,
        endpoint: &Endpoint,
        peer: Option<PeerId>,
        why: &std::io::Error,
    ) {
        let source = local_source(endpoint);
        log::debug!("source {source:?} unusable ({why}); sending without it");
        if let Some(peer) = peer {
            self.engine().device.clear_sticky_source(peer);
        }
    }
}

/// The sticky source of `endpoint` as the socket layer takes it.
fn local_source(endpoint: &Endpoint) -> Option<LocalSource> {
    endpoint.local.map(|l| LocalSource {
        addr: l.ip,
        ifindex: l.ifindex,
    })
}

/// Takes every datagram waiting in the engine's outbox, and logs the
/// engine's events when debug logging is on.
pub fn drain(device: &mut Device) -> Vec<Transmit> {
    if log::log_enabled!(log::Level::Debug) {
        log_events(device);
    }
    std::iter::from_fn(|| device.poll_transmit()).collect()
}

/// Logs engine events, naming peers by a short public-key id.
fn log_events(device: &mut Device) {
    while let Some(event) = device.poll_event() {
        let peer = match event {
            Event::HandshakeInitiated { peer, .. }
            | Event::HandshakeCompleted { peer }
            | Event::HandshakeAnswered { peer }
            | Event::HandshakeGaveUp { peer }
            | Event::KeysZeroed { peer } => peer,
        };
        let id = device
            .peer(peer)
            .map_or_else(|| "?".to_string(), |p| p.public_key.short_id());
        let endpoint = device.peer(peer).and_then(|p| p.endpoint).map(|e| e.addr);
        match event {
            Event::HandshakeInitiated { retry, .. } => log::debug!(
                "peer {id}: sending handshake initiation{} to {endpoint:?}",
                if retry { " (retry)" } else { "" }
            ),
            Event::HandshakeCompleted { .. } => {
                log::debug!("peer {id}: handshake complete, endpoint {endpoint:?}")
            }
            Event::HandshakeAnswered { .. } => {
                log::debug!("peer {id}: answered a handshake initiation from {endpoint:?}")
            }
            Event::HandshakeGaveUp { .. } => {
                log::info!("peer {id}: no handshake response after 20 attempts, giving up")
            }
            Event::KeysZeroed { .. } => log::debug!("peer {id}: session keys zeroed"),
        }
    }
}

/// Encrypted datagrams waiting to be sent, back to back in one buffer, so
/// that a run of equal-sized datagrams to one endpoint leaves in a single
/// UDP GSO send.
struct TxBatch {
    data: Vec<u8>,
    used: usize,
    items: Vec<TxItem>,
}

struct TxItem {
    offset: usize,
    len: usize,
    endpoint: Endpoint,
    peer: PeerId,
}

/// Room for a full GSO run of MTU-sized datagrams plus one maximal packet.
const TX_BATCH_BYTES: usize = 64 * 2048 + MAX_PACKET + OVERHEAD;

impl TxBatch {
    fn new() -> Self {
        TxBatch {
            data: vec![0u8; TX_BATCH_BYTES],
            used: 0,
            items: Vec::with_capacity(64),
        }
    }

    /// The free space, if it can hold the encryption of `packet_len` bytes.
    fn space_for(&mut self, packet_len: usize) -> Option<&mut [u8]> {
        let need = packet_len + OVERHEAD;
        (self.data.len() - self.used >= need).then(|| &mut self.data[self.used..self.used + need])
    }

    /// The regions of the items from `first` on, in order, for sealing in
    /// place.
    fn regions_from(&mut self, first: usize) -> Vec<&mut [u8]> {
        let start = self.items.get(first).map_or(self.used, |item| item.offset);
        let mut rest = &mut self.data[start..self.used];
        let mut regions = Vec::with_capacity(self.items.len() - first);
        for item in &self.items[first..] {
            let (region, tail) = std::mem::take(&mut rest).split_at_mut(item.len);
            regions.push(region);
            rest = tail;
        }
        regions
    }

    /// Drops the items at these indices (their bytes stay, unsent: `flush`
    /// only joins contiguous items into a run). For a seal that failed,
    /// which the sizing of the regions rules out.
    fn forget(&mut self, failed: &[usize]) {
        let mut index = 0;
        self.items.retain(|_| {
            let keep = !failed.contains(&index);
            index += 1;
            keep
        });
    }

    fn push(&mut self, len: usize, endpoint: Endpoint, peer: PeerId) {
        self.items.push(TxItem {
            offset: self.used,
            len,
            endpoint,
            peer,
        });
        self.used += len;
    }

    /// Sends everything. Each run of datagrams to one endpoint, all of one
    /// size but a shorter last one, is one GSO message; the consecutive runs
    /// to one endpoint leave together, in one `sendmmsg`.
    fn flush(&mut self, shared: &Shared) {
        if self.items.is_empty() {
            self.used = 0; // bytes of forgotten items only
            return;
        }
        let sockets = shared.sockets();
        let runs = self.runs();
        for group in runs.chunk_by(|a, b| a.endpoint == b.endpoint) {
            let segment_runs: Vec<SegmentRun<'_>> = group
                .iter()
                .map(|run| SegmentRun {
                    data: &self.data[run.bytes.clone()],
                    segment_size: run.segment_size,
                })
                .collect();
            let first = &group[0];
            shared.send_runs(&sockets, &segment_runs, first.endpoint, Some(first.peer));
        }
        self.items.clear();
        self.used = 0;
    }

    /// The items cut into GSO runs: contiguous items to one endpoint, all of
    /// the first one's length but a shorter last one, at most
    /// `MAX_GSO_SEGMENTS` each.
    fn runs(&self) -> Vec<TxRun> {
        let mut runs = Vec::new();
        let mut i = 0;
        while i < self.items.len() {
            let first = &self.items[i];
            let mut end = i + 1;
            while end < self.items.len()
                && end - i < crate::sys::udp::MAX_GSO_SEGMENTS
                && self.items[end].endpoint == first.endpoint
                && self.items[end].offset == self.items[end - 1].offset + self.items[end - 1].len
                && self.items[end - 1].len == first.len
                && self.items[end].len <= first.len
            {
                end += 1;
            }
            let last = &self.items[end - 1];
            runs.push(TxRun {
                bytes: first.offset..last.offset + last.len,
                segment_size: first.len,
                endpoint: first.endpoint,
                peer: first.peer,
            });
            i = end;
        }
        runs
    }
}

/// One GSO run of a [`TxBatch`]: where its bytes are and where they go.
struct TxRun {
    bytes: std::ops::Range<usize>,
    segment_size: usize,
    endpoint: Endpoint,
    peer: PeerId,
}

/// What reading the TUN device needs: the read buffer, the segments of a
/// split super-packet and the batch of encrypted datagrams. Behind one
/// mutex, so that whichever thread holds it reads, encrypts and sends in
/// order: the TUN thread, or a receiving thread that just wrote to the TUN
/// (the host often answers within that write, and taking the answer at once
/// saves a thread wake-up on the round trip).
pub struct TunReader {
    read_buf: Vec<u8>,
    segments: SegmentBatch,
    tx: TxBatch,
    /// Packets the previous drain read: tells a burst from a lone packet.
    last_drain_reads: usize,
}

impl TunReader {
    fn new() -> Self {
        TunReader {
            read_buf: vec![0u8; MAX_PACKET + VNET_HDR_LEN],
            segments: SegmentBatch::new(),
            tx: TxBatch::new(),
            last_drain_reads: 0,
        }
    }
}

/// When a drain sends what it has encrypted.
///
/// Datagrams wait in the batch until the queue is empty, the batch buffer
/// is full or `limit` reads are done, so that a burst leaves in one
/// `sendmmsg` with GSO instead of one system call per packet. The
/// exception is a lone packet (a ping, a request): when the previous drain
/// read at most one packet, the first packet goes out at once, before the
/// read that would only find the queue empty. Latency stays that of
/// unbatched sending when traffic is sparse; batching starts with the
/// second packet of a burst.
fn send_first_at_once(last_drain_reads: usize) -> bool {
    last_drain_reads <= 1
}

/// Reads queued packets from the (non-blocking) TUN device, at most `limit`
/// reads: split super-packets, route, encrypt, send (see
/// [`send_first_at_once`] for when). Returns the error that ended it,
/// `WouldBlock` once the queue is empty.
fn drain_tun(shared: &Shared, reader: &mut TunReader, limit: usize) -> std::io::Error {
    let header_len = shared.tun().header_len();
    let TunReader {
        read_buf,
        segments,
        tx,
        last_drain_reads,
    } = reader;
    let eager = send_first_at_once(*last_drain_reads);
    let mut reads = 0;
    let error = loop {
        if reads == limit {
            break std::io::ErrorKind::WouldBlock.into();
        }
        let n = match shared.tun().read(read_buf) {
            Ok(n) => n,
            Err(e) => break e,
        };
        reads += 1;
        encrypt_read(shared, &read_buf[..n], header_len, segments, tx);
        if eager && reads == 1 {
            tx.flush(shared);
        }
    };
    tx.flush(shared);
    *last_drain_reads = reads;
    error
}

/// Encrypts what one TUN read returned (a packet, or a super-packet to
/// split first) into the batch.
fn encrypt_read(
    shared: &Shared,
    read: &[u8],
    header_len: usize,
    segments: &mut SegmentBatch,
    tx: &mut TxBatch,
) {
    if header_len == 0 {
        return encrypt_into_batch(shared, &[read], tx);
    }
    let Ok(header) = VirtioNetHdr::decode(read) else {
        return;
    };
    let packet = &read[VNET_HDR_LEN..];
    if header.gso_type == VIRTIO_NET_HDR_GSO_NONE && !header.needs_csum() {
        return encrypt_into_batch(shared, &[packet], tx);
    }
    match offload::split(&header, packet, segments) {
        Ok(_) => {
            let packets: Vec<&[u8]> = segments.packets().collect();
            encrypt_into_batch(shared, &packets, tx);
        }
        Err(e) => log::trace!(
            "dropped a {}-byte super-packet from the TUN: {e}",
            packet.len()
        ),
    }
}

/// Routes and encrypts `packets` into the batch `tx`, sending the batch
/// first whenever it is too full for the next packet. The packets are
/// prepared (routed, counters reserved) under one engine lock, releasing it
/// only when the batch buffer is full. A small batch is sealed under that
/// same lock, as one call each; a large one is sealed outside it by the
/// crypto threads together, and its bookkeeping done under a second lock.
/// Either way the datagrams leave in the order of `packets`; messages the
/// engine queued meanwhile (a handshake initiation, say) go out after the
/// data sealed before them.
fn encrypt_into_batch(shared: &Shared, packets: &[&[u8]], tx: &mut TxBatch) {
    let mut next = 0;
    while next < packets.len() {
        if tx.space_for(packets[next].len()).is_none() {
            tx.flush(shared);
            if tx.space_for(packets[next].len()).is_none() {
                // Larger than the empty batch: cannot happen (it holds
                // MAX_PACKET), but must not loop.
                next += 1;
                continue;
            }
        }
        let mut unreachable = Vec::new();
        let mut jobs: Vec<(usize, SendJob)> = Vec::new();
        let mut tally = SendTally::new();
        let (now, mut pending, shared_out) = {
            let mut engine = shared.engine();
            let now = clock::now();
            let mut bytes = 0;
            while let Some(packet) = packets.get(next) {
                if tx.space_for(packet.len()).is_none() {
                    break;
                }
                match engine.device.prepare_send(now, packet) {
                    SendPrepared::Seal(job) => {
                        bytes += job.wire_len();
                        tx.push(job.wire_len(), job.endpoint, job.peer);
                        jobs.push((next, job));
                    }
                    SendPrepared::Done(SendOutcome::NoRoute | SendOutcome::NoEndpoint(_)) => {
                        unreachable.push(next)
                    }
                    SendPrepared::Done(_) => {}
                }
                next += 1;
            }
            let shared_out = shared.crypto.worth_sharing(jobs.len(), bytes);
            if !shared_out {
                seal_batch(&shared.crypto, false, packets, &jobs, tx, &mut tally);
                engine.device.complete_sends(now, &mut tally);
            }
            let pending = drain(&mut engine.device);
            shared.after_engine_change(&mut engine);
            (now, pending, shared_out)
        };
        if shared_out {
            seal_batch(&shared.crypto, true, packets, &jobs, tx, &mut tally);
            let mut engine = shared.engine();
            engine.device.complete_sends(now, &mut tally);
            pending.extend(drain(&mut engine.device));
            shared.after_engine_change(&mut engine);
        }
        if !pending.is_empty() {
            tx.flush(shared);
            shared.send_all(pending);
        }
        for index in unreachable {
            log::trace!("no peer or no endpoint for a packet: ICMP unreachable");
            answer_unreachable(shared, packets[index]);
        }
    }
}

/// One packet to seal into its region of the batch buffer.
struct SealWork<'a> {
    job: &'a SendJob,
    packet: &'a [u8],
    out: &'a mut [u8],
    result: Result<usize, TransportError>,
}

/// Seals the prepared `jobs` (the last items of `tx`, one each, in order)
/// into their regions of the batch buffer, on the crypto threads when
/// `share`, and counts them in `tally`.
fn seal_batch(
    crypto: &CryptoPool,
    share: bool,
    packets: &[&[u8]],
    jobs: &[(usize, SendJob)],
    tx: &mut TxBatch,
    tally: &mut SendTally,
) {
    let first = tx.items.len() - jobs.len();
    let mut work: Vec<SealWork<'_>> = jobs
        .iter()
        .zip(tx.regions_from(first))
        .map(|((index, job), out)| SealWork {
            job,
            packet: packets[*index],
            out,
            result: Err(TransportError::BufferTooSmall),
        })
        .collect();
    let seal = |w: &mut SealWork<'_>| w.result = w.job.seal(w.packet, w.out);
    if share {
        crypto.run(&mut work, seal);
    } else {
        work.iter_mut().for_each(seal);
    }
    let mut failed = Vec::new();
    for (k, w) in work.iter().enumerate() {
        match w.result {
            Ok(len) => tally.record(w.job.peer, len),
            Err(e) => {
                log::debug!("sealing a {}-byte packet failed: {e}", w.packet.len());
                failed.push(first + k);
            }
        }
    }
    drop(work);
    if !failed.is_empty() {
        tx.forget(&failed);
    }
}

/// Writes an ICMP unreachable into the tunnel, as the kernel does for a
/// packet with no peer or a peer without endpoint. The error claims to come
/// from the unreachable destination itself: the interface's own address
/// would be a martian source on arrival (the error travels to that very
/// address when the host itself sent the packet) and be dropped.
fn answer_unreachable(shared: &Shared, packet: &[u8]) {
    if let Some(reply) = icmp::unreachable_for(packet, None) {
        let _ = shared.tun().write_packet(&reply);
    }
}

/// Which of the data path's descriptors one I/O thread serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoRole {
    /// Reads the TUN device (and encrypts what it reads).
    pub tun: bool,
    /// Receives (and decrypts) on these families' sockets.
    pub v4: bool,
    /// See `v4`.
    pub v6: bool,
}

impl IoRole {
    /// Everything: the one I/O thread of
    /// [`IoThreads::One`](crate::io_threads::IoThreads::One).
    pub const ALL: IoRole = IoRole {
        tun: true,
        v4: true,
        v6: true,
    };
    /// Only the TUN device.
    pub const TUN: IoRole = IoRole {
        tun: true,
        v4: false,
        v6: false,
    };

    /// Only the socket of `family`.
    pub fn socket(family: Family) -> IoRole {
        IoRole {
            tun: false,
            v4: family == Family::V4,
            v6: family == Family::V6,
        }
    }

    fn families(self) -> impl Iterator<Item = Family> {
        [(self.v4, Family::V4), (self.v6, Family::V6)]
            .into_iter()
            .filter_map(|(served, family)| served.then_some(family))
    }
}

/// TUN reads per turn of a thread that also serves sockets, so that a
/// stream read from the TUN cannot starve the receive side (and the
/// reverse: a socket turn is one receive batch).
const TUN_READS_PER_TURN: usize = 64;

/// The I/O buffers and offload state of one I/O thread.
struct IoThreadState {
    bufs: Vec<Vec<u8>>,
    meta: Vec<RecvMeta>,
    coalescer: Option<Coalescer>,
}

/// One descriptor an I/O thread waits for (its epoll token).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    /// The sockets of this family were replaced.
    Rebound(Family),
    Tun,
    Socket(Family),
}

impl Source {
    const ALL: [Source; 5] = [
        Source::Rebound(Family::V4),
        Source::Rebound(Family::V6),
        Source::Tun,
        Source::Socket(Family::V4),
        Source::Socket(Family::V6),
    ];

    fn token(self) -> u64 {
        Source::ALL.iter().position(|&s| s == self).unwrap_or(0) as u64
    }

    fn from_token(token: u64) -> Option<Source> {
        Source::ALL.get(usize::try_from(token).ok()?).copied()
    }
}

/// Serves the descriptors of `role` forever: drains the TUN device
/// (route, encrypt, send) and receives datagrams in batches (decrypt,
/// write to the TUN). Returns when the TUN device is gone, or with the
/// error that keeps the thread from waiting at all.
pub fn io_loop(shared: Arc<Shared>, role: IoRole) -> std::io::Error {
    if role.tun {
        if let Err(e) = shared.tun().set_nonblocking(true) {
            return e;
        }
    }
    let offloads = shared.tun().offloads();
    let mut state = IoThreadState {
        bufs: Vec::new(),
        meta: Vec::new(),
        coalescer: offloads.vnet_hdr.then(|| Coalescer::new(offloads.uso)),
    };
    let receives = role.v4 || role.v6;
    if receives {
        state.bufs = (0..RECV_BATCH).map(|_| vec![0u8; MAX_PACKET]).collect();
        state.meta = vec![RecvMeta::default(); RECV_BATCH];
    }
    // A thread that also receives takes the TUN in turns; alone, it drains it.
    let tun_reads = if receives {
        TUN_READS_PER_TURN
    } else {
        usize::MAX
    };
    let mut sockets = shared.sockets();
    let epoll = match watch(&shared, &sockets, role) {
        Ok(epoll) => epoll,
        Err(e) => return e,
    };
    let mut ready = Vec::new();
    loop {
        if let Err(e) = epoll.wait(&mut ready, None) {
            return e;
        }
        for source in ready.iter().filter_map(|&t| Source::from_token(t)) {
            match source {
                Source::Rebound(family) => {
                    let _ = shared.receiver_wakers[family as usize].drain();
                    let fresh = shared.sockets();
                    if !Arc::ptr_eq(&fresh, &sockets) {
                        rewatch_sockets(&epoll, &sockets, &fresh, role);
                        sockets = fresh;
                    }
                }
                Source::Tun => {
                    if let Some(error) = serve_tun(&shared, tun_reads) {
                        return error;
                    }
                }
                Source::Socket(family) => receive(&shared, &sockets, family, &mut state),
            }
        }
    }
}

/// An epoll instance watching what a thread of `role` serves.
fn watch(
    shared: &Shared,
    sockets: &UdpSockets,
    role: IoRole,
) -> std::io::Result<crate::sys::epoll::Epoll> {
    let epoll = crate::sys::epoll::Epoll::new()?;
    for family in role.families() {
        let waker = &shared.receiver_wakers[family as usize];
        epoll.add(waker.as_raw_fd(), Source::Rebound(family).token())?;
    }
    if role.tun {
        epoll.add(shared.tun().as_raw_fd(), Source::Tun.token())?;
    }
    for (family, fd) in socket_fds(sockets, role) {
        epoll.add(fd, Source::Socket(family).token())?;
    }
    Ok(epoll)
}

/// Moves the watch from the replaced sockets to the fresh ones (the old
/// ones are still open: the caller holds them until this returns).
fn rewatch_sockets(
    epoll: &crate::sys::epoll::Epoll,
    old: &UdpSockets,
    fresh: &UdpSockets,
    role: IoRole,
) {
    for (_, fd) in socket_fds(old, role) {
        let _ = epoll.remove(fd);
    }
    for (family, fd) in socket_fds(fresh, role) {
        if let Err(e) = epoll.add(fd, Source::Socket(family).token()) {
            log::warn!("cannot wait on the new {family:?} socket: {e}");
        }
    }
}

/// The open sockets among the families `role` serves.
fn socket_fds(
    sockets: &UdpSockets,
    role: IoRole,
) -> impl Iterator<Item = (Family, std::os::fd::RawFd)> {
    let (v4, v6) = sockets.raw_fds();
    role.families().filter_map(move |family| match family {
        Family::V4 => v4.map(|fd| (family, fd)),
        Family::V6 => v6.map(|fd| (family, fd)),
    })
}

/// Reads up to `limit` packets from the TUN device and sends them on.
/// Returns the error that shows the device is gone, if one ended the reads.
fn serve_tun(shared: &Shared, limit: usize) -> Option<std::io::Error> {
    let mut reader = shared.tun_reader.lock().unwrap_or_else(|e| e.into_inner());
    let error = drain_tun(shared, &mut reader, limit);
    match error.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => None,
        _ => Some(error),
    }
}

/// Receives one batch from the socket of `family` and handles it.
fn receive(shared: &Shared, sockets: &UdpSockets, family: Family, state: &mut IoThreadState) {
    let IoThreadState {
        bufs,
        meta,
        coalescer,
    } = state;
    if let Ok(n) = sockets.recv_batch(family, bufs, meta) {
        handle_batch(shared, &mut bufs[..n], &meta[..n], coalescer.as_mut());
    }
}

/// One received datagram of a batch, cut out of its receive buffer.
struct RxDatagram<'a> {
    /// Which buffer, and where in it the datagram starts.
    buf: usize,
    offset: usize,
    from: Endpoint,
    data: &'a mut [u8],
    /// The decryption job of a transport message that passed the pre-checks.
    job: Option<ReceiveJob>,
}

/// Cuts received buffers into their datagrams: one each, or with UDP GRO
/// several of `segment_size` bytes back to back.
fn datagrams<'a>(bufs: &'a mut [Vec<u8>], meta: &[RecvMeta]) -> Vec<RxDatagram<'a>> {
    let mut datagrams = Vec::with_capacity(bufs.len());
    for (i, (buf, meta)) in bufs.iter_mut().zip(meta).enumerate() {
        let Some(src) = meta.src else { continue };
        let from = Endpoint {
            // `sys::udp` already reports IPv4-mapped sources as IPv4.
            addr: src,
            local: meta.local.map(|l| LocalAddr {
                ip: l.addr,
                ifindex: l.ifindex,
            }),
        };
        let len = meta.len.min(buf.len());
        let step = meta.segment_size.filter(|&s| s > 0).unwrap_or(len.max(1));
        let mut rest = &mut buf[..len];
        let mut offset = 0;
        while !rest.is_empty() {
            let (data, tail) = std::mem::take(&mut rest).split_at_mut(step.min(len - offset));
            datagrams.push(RxDatagram {
                buf: i,
                offset,
                from,
                data,
                job: None,
            });
            offset += step;
            rest = tail;
        }
    }
    datagrams
}

/// Decrypts a batch of received buffers in place, each holding one datagram
/// or, with UDP GRO, several of `segment_size` bytes back to back; then
/// writes the packets to the tunnel and sends any answers. Transport
/// messages are pre-checked under one engine lock; a small batch is then
/// decrypted and completed under that same lock, a large one decrypted
/// outside it by the crypto threads together and completed, in the order
/// received, under a second lock.
fn handle_batch(
    shared: &Shared,
    bufs: &mut [Vec<u8>],
    meta: &[RecvMeta],
    coalescer: Option<&mut Coalescer>,
) {
    // (buffer, offset of the IP packet, its length)
    let mut deliveries = Vec::with_capacity(bufs.len());
    let mut datagrams = datagrams(bufs, meta);
    let (now, mut pending, shared_out) = {
        let mut engine = shared.engine();
        let now = clock::now();
        let (mut jobs, mut bytes) = (0, 0);
        for d in &mut datagrams {
            if is_handshake(d.data) {
                // Forgeries stop here, under the lock this thread holds
                // anyway, instead of costing a copy, a queue slot and a
                // wake-up of the handshake thread each.
                if let Err(reason) = engine.device.screen_handshake(d.data) {
                    log::trace!("dropped a datagram from {}: {}", d.from.addr, reason.name());
                    continue;
                }
                if !shared.handshakes.push(d.from, d.data) {
                    log::trace!(
                        "handshake queue full: dropped a message from {}",
                        d.from.addr
                    );
                }
                continue;
            }
            match engine.device.prepare_receive(now, d.from, d.data) {
                ReceivePrepared::Open(job) => {
                    d.job = Some(job);
                    jobs += 1;
                    bytes += d.data.len();
                }
                ReceivePrepared::NotTransport => {
                    let outcome = engine.device.receive(now, d.from, d.data);
                    note_outcome(&mut deliveries, d, outcome);
                }
                ReceivePrepared::Dropped(reason) => {
                    log::trace!("dropped a datagram from {}: {}", d.from.addr, reason.name())
                }
            }
        }
        let shared_out = shared.crypto.worth_sharing(jobs, bytes);
        if !shared_out {
            datagrams.iter_mut().for_each(open);
            complete_batch(&mut engine.device, now, &mut datagrams, &mut deliveries);
        }
        let pending = drain(&mut engine.device);
        shared.after_engine_change(&mut engine);
        (now, pending, shared_out)
    };
    if shared_out {
        shared.crypto.run(&mut datagrams, open);
        let mut engine = shared.engine();
        complete_batch(&mut engine.device, now, &mut datagrams, &mut deliveries);
        pending.extend(drain(&mut engine.device));
        shared.after_engine_change(&mut engine);
    }
    drop(datagrams);
    let wrote = !deliveries.is_empty();
    write_to_tun(shared, coalescer, bufs, &deliveries);
    shared.send_all(pending);
    if wrote {
        // The host may have answered within the write: send the answer now.
        // With one I/O thread this is that thread's turn at the TUN anyway;
        // with a TUN thread, it saves waiting for that thread to wake
        // (unless it is already at it).
        if let Ok(mut reader) = shared.tun_reader.try_lock() {
            let _ = drain_tun(shared, &mut reader, OPPORTUNISTIC_TUN_READS);
        }
    }
}

/// Decrypts a prepared datagram in place (no engine needed).
fn open(d: &mut RxDatagram<'_>) {
    if let Some(job) = d.job.as_mut() {
        job.open(d.data);
    }
}

/// Completes the decrypted datagrams under the engine lock, in the order
/// they were received, noting the packets to deliver.
fn complete_batch(
    device: &mut Device,
    now: Now,
    datagrams: &mut [RxDatagram<'_>],
    deliveries: &mut Vec<(usize, usize, usize)>,
) {
    for d in datagrams {
        if let Some(job) = d.job.take() {
            let outcome = device.complete_receive(now, job, d.data);
            note_outcome(deliveries, d, outcome);
        }
    }
}

fn note_outcome(
    deliveries: &mut Vec<(usize, usize, usize)>,
    d: &RxDatagram<'_>,
    outcome: ReceiveOutcome,
) {
    match outcome {
        ReceiveOutcome::Deliver { len, .. } => deliveries.push((d.buf, d.offset + 16, len)),
        ReceiveOutcome::Dropped(reason) => {
            log::trace!("dropped a datagram from {}: {}", d.from.addr, reason.name())
        }
        ReceiveOutcome::Handled => {}
    }
}

/// Reads a receiving thread may take from the TUN after writing to it.
const OPPORTUNISTIC_TUN_READS: usize = 8;

/// Writes decrypted packets to the TUN: coalesced into super-packets when
/// the device takes virtio-net headers (GRO), else one by one.
fn write_to_tun(
    shared: &Shared,
    coalescer: Option<&mut Coalescer>,
    bufs: &[Vec<u8>],
    deliveries: &[(usize, usize, usize)],
) {
    let packets = deliveries
        .iter()
        .map(|&(i, start, len)| &bufs[i][start..start + len]);
    match coalescer {
        Some(coalescer) => {
            coalescer.clear();
            for packet in packets {
                coalescer.push(packet);
            }
            for framed in coalescer.finish() {
                let _ = shared.tun().write(framed);
            }
        }
        None => {
            for packet in packets {
                let _ = shared.tun().write_packet(packet);
            }
        }
    }
}

/// Initiations, responses and cookie replies (types 1–3): the messages
/// that go to the handshake thread.
fn is_handshake(datagram: &[u8]) -> bool {
    matches!(datagram.first(), Some(1..=3))
}

/// Handshake messages handled under one acquisition of the engine lock at
/// most, and the time after which the thread lets the data path have the
/// lock again. Under a flood this takes one wake-up and one lock per batch
/// instead of per message; a valid initiation costs about 60 µs, so the time
/// bound keeps the data path from waiting much longer than one of them.
const HANDSHAKE_BATCH: usize = 32;
const HANDSHAKE_LOCK_BUDGET: Duration = Duration::from_micros(200);

/// Processes queued handshake messages forever, telling the engine the
/// backlog so that it switches to cookie replies under load.
pub fn handshake_loop(shared: Arc<Shared>) {
    let receiver = shared
        .handshakes
        .receiver
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    let Some(receiver) = receiver else {
        return; // only one handshake thread
    };
    while let Ok(first) = receiver.recv() {
        let mut next = Some(first);
        let pending = {
            let mut engine = shared.engine();
            let started = Instant::now();
            let mut handled = 0;
            while let Some((from, mut datagram)) = next.take() {
                let backlog = shared
                    .handshakes
                    .len
                    .fetch_sub(1, Ordering::Relaxed)
                    .saturating_sub(1);
                engine.device.set_handshake_backlog(backlog);
                if let ReceiveOutcome::Dropped(reason) =
                    engine.device.receive(clock::now(), from, &mut datagram)
                {
                    log::trace!("dropped a datagram from {}: {}", from.addr, reason.name());
                }
                handled += 1;
                if handled < HANDSHAKE_BATCH && started.elapsed() < HANDSHAKE_LOCK_BUDGET {
                    next = receiver.try_recv().ok();
                }
            }
            let pending = drain(&mut engine.device);
            shared.after_engine_change(&mut engine);
            pending
        };
        shared.send_all(pending);
    }
}

/// Sleeps until the engine's next deadline and fires its timers, forever.
pub fn timer_loop(shared: Arc<Shared>) {
    let kick = &shared.timer;
    loop {
        let deadline = shared.engine().device.poll_timeout();
        let planned = deadline.map_or(u64::MAX, |d| kick.nanos(d));
        kick.planned.store(planned, Ordering::Relaxed);
        {
            let mut kicked = kick.lock.lock().unwrap_or_else(|e| e.into_inner());
            // Re-check under the lock so a kick between the load and the
            // wait is not lost.
            let wait = match deadline {
                Some(d) => clock::real_deadline(d).saturating_duration_since(Instant::now()),
                None => Duration::from_secs(3600),
            };
            if !*kicked && !wait.is_zero() {
                kicked = kick
                    .cond
                    .wait_timeout(kicked, wait)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            *kicked = false;
        }
        let pending = {
            let mut engine = shared.engine();
            engine.device.handle_timeout(clock::now());
            drain(&mut engine.device)
        };
        shared.send_all(pending);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(port: u16) -> Endpoint {
        Endpoint::from(std::net::SocketAddr::from(([192, 0, 2, 1], port)))
    }

    /// A batch holding items of these (length, port) in order.
    fn batch(items: &[(usize, u16)]) -> TxBatch {
        let mut tx = TxBatch::new();
        for &(len, port) in items {
            assert!(tx.space_for(len - OVERHEAD).is_some());
            tx.push(len, endpoint(port), PeerId(u64::from(port)));
        }
        tx
    }

    fn shape(runs: &[TxRun]) -> Vec<(std::ops::Range<usize>, usize, u16)> {
        runs.iter()
            .map(|r| (r.bytes.clone(), r.segment_size, r.endpoint.addr.port()))
            .collect()
    }

    #[test]
    fn equal_datagrams_to_one_endpoint_are_one_run() {
        let tx = batch(&[(100, 1), (100, 1), (100, 1)]);
        assert_eq!(shape(&tx.runs()), vec![(0..300, 100, 1)]);
    }

    #[test]
    fn a_shorter_datagram_ends_its_run_and_a_longer_one_starts_the_next() {
        let tx = batch(&[(100, 1), (100, 1), (60, 1), (100, 1), (120, 1)]);
        assert_eq!(
            shape(&tx.runs()),
            vec![(0..260, 100, 1), (260..360, 100, 1), (360..480, 120, 1)]
        );
    }

    #[test]
    fn another_endpoint_starts_a_run_and_runs_keep_the_order() {
        let tx = batch(&[(100, 1), (100, 2), (100, 2), (100, 1)]);
        let runs = tx.runs();
        assert_eq!(
            shape(&runs),
            vec![(0..100, 100, 1), (100..300, 100, 2), (300..400, 100, 1)]
        );
        assert_eq!(runs[1].peer, PeerId(2));
    }

    #[test]
    fn a_run_holds_at_most_the_gso_segment_limit() {
        let max = crate::sys::udp::MAX_GSO_SEGMENTS;
        let tx = batch(&vec![(100, 1); max + 1]);
        let runs = tx.runs();
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[0].bytes, 0..max * 100);
        assert_eq!(runs[1].bytes, max * 100..(max + 1) * 100);
    }

    #[test]
    fn a_forgotten_item_splits_the_run_around_its_bytes() {
        let mut tx = batch(&[(100, 1), (100, 1), (100, 1)]);
        tx.forget(&[1]);
        assert_eq!(
            shape(&tx.runs()),
            vec![(0..100, 100, 1), (200..300, 100, 1)]
        );
    }

    #[test]
    fn only_a_drain_after_a_lone_packet_sends_its_first_packet_at_once() {
        assert!(send_first_at_once(0));
        assert!(send_first_at_once(1));
        assert!(!send_first_at_once(2));
        assert!(!send_first_at_once(TUN_READS_PER_TURN));
    }
}
