//! UDP → TUN: datagrams from peers.
//!
//! Inbound flow, in the order the functions run:
//! 1. [`receive`]: a socket is readable (`io_loop`); one `recvmmsg` fills
//!    the I/O thread's buffers, with UDP GRO several datagrams each.
//! 2. [`handle_batch`] cuts the buffers into datagrams
//!    (`RecvMeta::datagrams`) and runs the three phases of [`run_batch`]
//!    over [`ReceiveBatch`]:
//!    - prepare: handshake messages are screened (MAC1) and queued for the
//!      handshake thread (`handshakes.rs`); transport messages are
//!      pre-checked by `Device::prepare_receive` (index, key, counter not
//!      yet seen);
//!    - crypto: [`open`] decrypts in place;
//!    - complete: `Device::complete_receive` checks the replay window,
//!      routes the inner source (cryptokey routing) and notes what to
//!      deliver.
//! 3. [`write_to_tun`]: the packets go to the TUN, coalesced into
//!    super-packets when the device takes virtio-net headers (GRO).
//! 4. The engine's answers (a handshake response, a keepalive) leave with
//!    `Shared::send_all`, and the host's own answer, often already queued
//!    during the write, is read at once (`tx::read_answers`).

use ferroguard_proto::device::{Device, Now, ReceiveJob, ReceiveOutcome, ReceivePrepared};
use ferroguard_proto::peer::{Endpoint, LocalAddr};

use super::batch::{run_batch, BatchWork, Workload};
use super::handshakes::is_handshake;
use super::tx::read_answers;
use super::Shared;
use crate::crypto_pool::CryptoPool;
use crate::offload::Coalescer;
use crate::sys::udp::{Family, RecvMeta, UdpSockets};

/// The receive buffers and offload state of one I/O thread.
pub(super) struct RxState {
    pub(super) bufs: Vec<Vec<u8>>,
    pub(super) meta: Vec<RecvMeta>,
    pub(super) coalescer: Option<Coalescer>,
}

/// Receives one batch from the socket of `family` (of `lane`'s pair) and
/// handles it.
pub(super) fn receive(
    shared: &Shared,
    lane: usize,
    sockets: &UdpSockets,
    family: Family,
    state: &mut RxState,
) {
    let RxState {
        bufs,
        meta,
        coalescer,
    } = state;
    if let Ok(n) = sockets.recv_batch(family, bufs, meta) {
        handle_batch(shared, lane, &mut bufs[..n], &meta[..n], coalescer.as_mut());
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

/// A decrypted packet to write to the TUN: (buffer, offset of the IP
/// packet, its length).
type Delivery = (usize, usize, usize);

/// Cuts received buffers into their datagrams, where the socket layer
/// says they lie ([`RecvMeta::datagram_ranges`]): one each, or with UDP GRO
/// several back to back.
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
        // The ranges are consecutive from 0, so each is the head of the rest.
        let mut rest = buf.as_mut_slice();
        for range in meta.datagram_ranges(rest.len()) {
            let (data, tail) = std::mem::take(&mut rest).split_at_mut(range.len());
            rest = tail;
            if data.is_empty() {
                continue; // no message at all: not even a drop to count
            }
            datagrams.push(RxDatagram {
                buf: i,
                offset: range.start,
                from,
                data,
                job: None,
            });
        }
    }
    datagrams
}

/// Decrypts a batch of received buffers in place (see the flow above), then
/// writes the packets to the tunnel and sends any answers.
fn handle_batch(
    shared: &Shared,
    lane: usize,
    bufs: &mut [Vec<u8>],
    meta: &[RecvMeta],
    coalescer: Option<&mut Coalescer>,
) {
    let deliveries = Vec::with_capacity(bufs.len());
    let datagrams = datagrams(bufs, meta);
    shared.count_lane(lane, true, datagrams.len());
    let mut batch = ReceiveBatch {
        shared,
        datagrams,
        deliveries,
    };
    let pending = run_batch(shared, &mut batch);
    let ReceiveBatch {
        datagrams,
        deliveries,
        ..
    } = batch;
    drop(datagrams); // gives the buffers back
    let wrote = !deliveries.is_empty();
    write_to_tun(shared, lane, coalescer, bufs, &deliveries);
    shared.send_all_on(lane, pending);
    if wrote {
        read_answers(shared, lane);
    }
}

/// The datagrams of one receive batch on their way through the engine.
struct ReceiveBatch<'s, 'b> {
    shared: &'s Shared,
    datagrams: Vec<RxDatagram<'b>>,
    deliveries: Vec<Delivery>,
}

impl BatchWork for ReceiveBatch<'_, '_> {
    fn prepare(&mut self, device: &mut Device, now: Now) -> Workload {
        let mut load = Workload::default();
        for d in &mut self.datagrams {
            if is_handshake(d.data) {
                queue_handshake(self.shared, device, d);
                continue;
            }
            match device.prepare_receive(now, d.from, d.data) {
                ReceivePrepared::Open(job) => {
                    d.job = Some(job);
                    load.items += 1;
                    load.bytes += d.data.len();
                }
                ReceivePrepared::NotTransport => {
                    let outcome = device.receive(now, d.from, d.data);
                    note_outcome(&mut self.deliveries, d, outcome);
                }
                ReceivePrepared::Dropped(reason) => {
                    log::trace!("dropped a datagram from {}: {}", d.from.addr, reason.name())
                }
            }
        }
        load
    }

    fn crypto(&mut self, pool: &CryptoPool, share: bool) {
        if share {
            pool.run(&mut self.datagrams, open);
        } else {
            self.datagrams.iter_mut().for_each(open);
        }
    }

    fn complete(&mut self, device: &mut Device, now: Now) {
        for d in &mut self.datagrams {
            if let Some(job) = d.job.take() {
                let outcome = device.complete_receive(now, job, d.data);
                note_outcome(&mut self.deliveries, d, outcome);
            }
        }
    }
}

/// Screens a handshake message and queues it for the handshake thread.
/// Forgeries stop here, under the lock this thread holds anyway, instead of
/// costing a copy, a queue slot and a wake-up of the handshake thread each.
fn queue_handshake(shared: &Shared, device: &mut Device, d: &RxDatagram<'_>) {
    if let Err(reason) = device.screen_handshake(d.data) {
        log::trace!("dropped a datagram from {}: {}", d.from.addr, reason.name());
    } else if !shared.handshakes.push(d.from, d.data) {
        log::trace!(
            "handshake queue full: dropped a message from {}",
            d.from.addr
        );
    }
}

/// Decrypts a prepared datagram in place (no engine needed).
fn open(d: &mut RxDatagram<'_>) {
    if let Some(job) = d.job.as_mut() {
        job.open(d.data);
    }
}

fn note_outcome(deliveries: &mut Vec<Delivery>, d: &RxDatagram<'_>, outcome: ReceiveOutcome) {
    match outcome {
        ReceiveOutcome::Deliver { len, .. } => deliveries.push((d.buf, d.offset + 16, len)),
        ReceiveOutcome::Dropped(reason) => {
            log::trace!("dropped a datagram from {}: {}", d.from.addr, reason.name())
        }
        ReceiveOutcome::Handled => {}
    }
}

/// Writes decrypted packets to the TUN: coalesced into super-packets when
/// the device takes virtio-net headers (GRO), else one by one.
fn write_to_tun(
    shared: &Shared,
    lane: usize,
    coalescer: Option<&mut Coalescer>,
    bufs: &[Vec<u8>],
    deliveries: &[Delivery],
) {
    let queue = shared.tun().queue(lane);
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
                let _ = queue.write(framed);
            }
        }
        None => {
            for packet in packets {
                let _ = queue.write_packet(packet);
            }
        }
    }
}
