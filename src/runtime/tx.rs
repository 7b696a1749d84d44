//! TUN → UDP: packets the host sends into the tunnel.
//!
//! Outbound flow, in the order the functions run:
//! 1. [`serve_tun`]: the TUN device is readable (`io_loop`), or a receiving
//!    thread just wrote to it ([`read_answers`]); take the [`TunReader`].
//! 2. [`drain_tun`]: read packets until the queue is empty or the limit.
//! 3. [`encrypt_read`]: strip the virtio-net header, split a super-packet
//!    into segments (`offload::split`).
//! 4. [`encrypt_into_batch`]: the three phases of [`run_batch`] over
//!    [`SendBatch`]: `Device::prepare_send` routes and reserves a counter,
//!    [`seal_batch`] encrypts into the [`TxBatch`], `Device::complete_sends`
//!    counts; a packet without a route gets an ICMP unreachable
//!    ([`answer_unreachable`]).
//! 5. `TxBatch::flush` (transmit.rs): runs of equal-sized datagrams to one
//!    endpoint leave as one UDP GSO message each, in one `sendmmsg`.

use ferroguard_proto::device::{Device, Now, SendJob, SendOutcome, SendPrepared, SendTally};
use ferroguard_proto::peer::PeerId;
use ferroguard_proto::transport::TransportError;

use super::batch::{run_batch, BatchWork, Workload};
use super::send_room::SEND_ROOM_WAIT;
use super::transmit::TxBatch;
use super::{Shared, MAX_PACKET};
use crate::crypto_pool::CryptoPool;
use crate::icmp;
use crate::offload::virtio::{
    VirtioNetHdr, VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_LEN as VNET_HDR_LEN,
};
use crate::offload::{self, SegmentBatch};

/// Reads a receiving thread may take from the TUN after writing to it.
const OPPORTUNISTIC_TUN_READS: usize = 8;

/// What reading the TUN device needs: the read buffer, the segments of a
/// split super-packet and the batch of encrypted datagrams. Behind one
/// mutex, so that whichever thread holds it reads, encrypts and sends in
/// order: the TUN thread, or a receiving thread that just wrote to the TUN
/// (the host often answers within that write, and taking the answer at once
/// saves a thread wake-up on the round trip).
pub(super) struct TunReader {
    /// The TUN queue (and socket pair) this reader serves.
    lane: usize,
    read_buf: Vec<u8>,
    segments: SegmentBatch,
    tx: TxBatch,
    /// Packets the previous drain read: tells a burst from a lone packet.
    last_drain_reads: usize,
}

impl TunReader {
    pub(super) fn new(lane: usize) -> Self {
        TunReader {
            lane,
            read_buf: vec![0u8; MAX_PACKET + VNET_HDR_LEN],
            segments: SegmentBatch::new(),
            tx: TxBatch::new(lane),
            last_drain_reads: 0,
        }
    }
}

/// Reads up to `limit` packets from TUN queue `lane` and sends them on.
/// Returns the error that shows the device is gone, if one ended the reads.
pub(super) fn serve_tun(shared: &Shared, lane: usize, limit: usize) -> Option<std::io::Error> {
    let mut reader = shared.tun_readers[lane]
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let error = drain_tun(shared, &mut reader, limit);
    match error.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => None,
        _ => Some(error),
    }
}

/// After a write to the TUN: the host may have answered within the write,
/// so send the answer now. With one I/O thread this is that thread's turn
/// at the TUN anyway; with a TUN thread, it saves waiting for that thread
/// to wake (unless it is already at it: then this does nothing). The
/// kernel queues the answer on the queue the request was written to (its
/// flow table follows writes), so `lane`'s queue is the one to read.
pub(super) fn read_answers(shared: &Shared, lane: usize) {
    if let Ok(mut reader) = shared.tun_readers[lane].try_lock() {
        let _ = drain_tun(shared, &mut reader, OPPORTUNISTIC_TUN_READS);
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
        lane,
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
        let n = match shared.tun().queue(*lane).read(read_buf) {
            Ok(n) => n,
            Err(e) => break e,
        };
        reads += 1;
        encrypt_read(shared, &read_buf[..n], header_len, segments, tx);
        if eager && reads == 1 {
            tx.flush(shared);
        }
    };
    send_and_release(shared, tx);
    shared.count_lane(*lane, false, reads);
    *last_drain_reads = reads;
    error
}

/// The runtime's entrance for an in-process TCP/IP stack (the rootless
/// mode, docs/ROOTLESS.md): the packets the stack sends are routed,
/// encrypted and sent exactly as packets read from the TUN device are
/// (`encrypt_into_batch`, then one flush), but by the stack's own thread,
/// without a trip through a descriptor and an I/O thread's wake-up.
pub struct StackSender {
    tx: TxBatch,
}

impl StackSender {
    /// A sender with its own batch buffer. It sends on lane 0's sockets:
    /// the rootless mode has one lane (its packet socket has one queue).
    pub fn new() -> Self {
        StackSender {
            tx: TxBatch::new(0),
        }
    }

    /// Routes, encrypts and sends `packets` (whole IP packets, checksums
    /// complete), in order; a packet without a route is answered with an
    /// ICMP unreachable written to the TUN, as for a TUN read.
    pub fn send(&mut self, shared: &Shared, packets: &[&[u8]]) {
        encrypt_into_batch(shared, packets, &mut self.tx);
        send_and_release(shared, &mut self.tx);
    }
}

impl Default for StackSender {
    fn default() -> Self {
        Self::new()
    }
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

/// Sends the batch and, with several lanes, releases the counters it held
/// (`send_room.rs`).
fn send_and_release(shared: &Shared, tx: &mut TxBatch) {
    tx.flush(shared);
    if tx.unreleased {
        tx.unreleased = false;
        shared.release_lane_sends(tx.lane());
    }
}

/// Routes and encrypts `packets` into the batch `tx`, sending the batch
/// first whenever it is too full for the next packet: each turn prepares
/// as many packets as the batch buffer holds (see [`run_batch`]). The
/// datagrams leave in the order of `packets`; messages the engine queued
/// meanwhile (a handshake initiation, say) go out after the data sealed
/// before them. With several lanes, a packet whose peer has counters held
/// too far behind by another lane waits for them (see [`wait_for_room`]).
fn encrypt_into_batch(shared: &Shared, packets: &[&[u8]], tx: &mut TxBatch) {
    let held = shared.lanes() > 1;
    let mut waits = RoomWaits::default();
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
        let mut batch = SendBatch::new(packets, next, tx, held);
        let pending = run_batch(shared, &mut batch);
        next = batch.next;
        let unreachable = batch.unreachable;
        let wait_for = batch.wait_for;
        if batch.released {
            shared.wake_send_waiters();
        }
        if !pending.is_empty() {
            tx.flush(shared);
            shared.send_all_on(tx.lane(), pending);
        }
        for index in unreachable {
            log::trace!("no peer or no endpoint for a packet: ICMP unreachable");
            answer_unreachable(shared, tx.lane(), packets[index]);
        }
        if let Some(peer) = wait_for {
            if !wait_for_room(shared, tx, peer, next, &mut waits) {
                next += 1; // dropped and counted
            }
        }
    }
}

/// The waits of one [`encrypt_into_batch`] call: the packet waited for
/// and since when, and the peer whose wait ran out (its further packets in
/// this call are dropped at once rather than waited for again).
#[derive(Default)]
struct RoomWaits {
    current: Option<(usize, std::time::Instant)>,
    gave_up_on: Option<PeerId>,
}

/// The engine answered `Wait` for packet `index`, to `peer`: sends the
/// batch, releases this lane's counters and waits for the lane holding the
/// peer's oldest counters to send them, at most `SEND_ROOM_WAIT` per
/// packet. Returns false if the packet is to be dropped (counted).
fn wait_for_room(
    shared: &Shared,
    tx: &mut TxBatch,
    peer: PeerId,
    index: usize,
    waits: &mut RoomWaits,
) -> bool {
    tx.flush(shared);
    tx.unreleased = false; // released by the wait, under the engine lock
    if waits.gave_up_on == Some(peer) {
        shared.release_lane_sends(tx.lane());
        shared.count_send_room_drop();
        return false;
    }
    let since = match waits.current {
        Some((waited, since)) if waited == index => since,
        _ => std::time::Instant::now(),
    };
    waits.current = Some((index, since));
    let room = shared.wait_for_send_room(tx.lane(), peer, since + SEND_ROOM_WAIT);
    if !room {
        log::debug!("a lane waited {SEND_ROOM_WAIT:?} for room to send to a peer: packet dropped");
        shared.count_send_room_drop();
        waits.gave_up_on = Some(peer);
    }
    room
}

/// The packets of one turn of [`encrypt_into_batch`], from `next` on as
/// far as the batch buffer holds them.
struct SendBatch<'p, 't> {
    packets: &'p [&'p [u8]],
    /// The first packet not yet prepared.
    next: usize,
    tx: &'t mut TxBatch,
    /// The packets to seal (by index), in order.
    jobs: Vec<(usize, SendJob)>,
    tally: SendTally,
    /// Packets without a peer or an endpoint (by index).
    unreachable: Vec<usize>,
    /// Several lanes: counters are reserved with holds (`send_room.rs`).
    held: bool,
    /// The lane's earlier holds were released in this turn.
    released: bool,
    /// The engine answered `Wait` for packet `next`, to this peer.
    wait_for: Option<PeerId>,
}

impl<'p, 't> SendBatch<'p, 't> {
    fn new(packets: &'p [&'p [u8]], next: usize, tx: &'t mut TxBatch, held: bool) -> Self {
        SendBatch {
            packets,
            next,
            tx,
            jobs: Vec::new(),
            tally: SendTally::new(),
            unreachable: Vec::new(),
            held,
            released: false,
            wait_for: None,
        }
    }

    /// The engine's preparation of `packet`: held by this lane with
    /// several lanes. Releases the lane's earlier holds first when
    /// everything it reserved has been sent.
    fn prepare_one(&mut self, device: &mut Device, now: Now, packet: &[u8]) -> SendPrepared {
        if !self.held {
            return device.prepare_send(now, packet);
        }
        if self.tx.unreleased && self.tx.len() == 0 {
            self.released |= device.release_sends(self.tx.lane());
            self.tx.unreleased = false;
        }
        let prepared = device.prepare_send_held(now, packet, self.tx.lane());
        if matches!(prepared, SendPrepared::Seal(_)) {
            self.tx.unreleased = true;
        }
        prepared
    }
}

impl BatchWork for SendBatch<'_, '_> {
    fn prepare(&mut self, device: &mut Device, now: Now) -> Workload {
        let mut load = Workload::default();
        while let Some(packet) = self.packets.get(self.next) {
            if self.tx.space_for(packet.len()).is_none() {
                break;
            }
            match self.prepare_one(device, now, packet) {
                SendPrepared::Seal(job) => {
                    load.items += 1;
                    load.bytes += job.wire_len();
                    self.tx.push(job.wire_len(), job.endpoint, job.peer);
                    self.jobs.push((self.next, job));
                }
                SendPrepared::Done(SendOutcome::NoRoute | SendOutcome::NoEndpoint(_)) => {
                    self.unreachable.push(self.next)
                }
                SendPrepared::Done(_) => {}
                SendPrepared::Wait(peer) => {
                    self.wait_for = Some(peer);
                    break;
                }
            }
            self.next += 1;
        }
        load
    }

    fn crypto(&mut self, pool: &CryptoPool, share: bool) {
        seal_batch(
            pool,
            share,
            self.packets,
            &self.jobs,
            self.tx,
            &mut self.tally,
        );
    }

    fn complete(&mut self, device: &mut Device, now: Now) {
        device.complete_sends(now, &mut self.tally);
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
    let first = tx.len() - jobs.len();
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
fn answer_unreachable(shared: &Shared, lane: usize, packet: &[u8]) {
    if let Some(reply) = icmp::unreachable_for(packet, None) {
        let _ = shared.tun().queue(lane).write_packet(&reply);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_drain_after_a_lone_packet_sends_its_first_packet_at_once() {
        assert!(send_first_at_once(0));
        assert!(send_first_at_once(1));
        assert!(!send_first_at_once(2));
        assert!(!send_first_at_once(
            super::super::io_loop::TUN_READS_PER_TURN
        ));
    }
}
