//! How encrypted datagrams leave: the batch the TUN side fills
//! ([`TxBatch`]) and the engine's own messages ([`Shared::send_all`]), both
//! through the socket layer's one send call, which hides GSO, its fallback
//! and the retry without a refused source.

use ferroguard_proto::device::Transmit;
use ferroguard_proto::peer::{Endpoint, PeerId};

use super::{Shared, MAX_PACKET, OVERHEAD};
use crate::sys::udp::{self, LocalSource, SendOutcome};

impl Shared {
    /// Sends the engine's queued datagrams, outside the engine lock, with
    /// one `sendmmsg` per address family.
    pub fn send_all(&self, transmits: Vec<Transmit>) {
        self.send_all_on(0, transmits);
    }

    /// [`send_all`](Self::send_all) on the socket pair of `lane`.
    pub(super) fn send_all_on(&self, lane: usize, transmits: Vec<Transmit>) {
        // An empty payload has no datagram to send.
        let nonempty: Vec<&Transmit> = transmits.iter().filter(|t| !t.data.is_empty()).collect();
        let sends: Vec<udp::Transmit<'_>> = nonempty
            .iter()
            .map(|t| {
                udp::Transmit::datagram(t.endpoint.addr, &t.data)
                    .from_source(local_source(&t.endpoint))
            })
            .collect();
        self.send_and_settle(lane, &sends, |i| nonempty[i].peer);
    }

    /// Sends `sends` on `lane`'s current sockets and deals with each outcome: a
    /// refused source is forgotten for the peer that had it
    /// (`peer_of(index)`), failures are logged.
    fn send_and_settle(
        &self,
        lane: usize,
        sends: &[udp::Transmit<'_>],
        peer_of: impl Fn(usize) -> Option<PeerId>,
    ) {
        if sends.is_empty() {
            return;
        }
        let outcomes = self.sockets().member(lane).send(sends);
        for (i, (send, outcome)) in sends.iter().zip(outcomes).enumerate() {
            match outcome {
                SendOutcome::Sent => {}
                SendOutcome::SourceDropped { refused, retry } => {
                    log::debug!(
                        "source {:?} unusable ({refused}); sending without it",
                        send.source
                    );
                    if let Some(peer) = peer_of(i) {
                        self.engine().device.clear_sticky_source(peer);
                    }
                    if let Err(e) = retry {
                        log::debug!("send to {} failed: {e}", send.destination);
                    }
                }
                SendOutcome::Failed(e) => log::debug!("send to {} failed: {e}", send.destination),
            }
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

/// Encrypted datagrams waiting to be sent, back to back in one buffer, so
/// that a run of equal-sized datagrams to one endpoint leaves in a single
/// UDP GSO send.
pub(super) struct TxBatch {
    /// The socket pair it leaves through (the I/O thread's own).
    lane: usize,
    data: Vec<u8>,
    used: usize,
    items: Vec<TxItem>,
    /// Counters reserved with a hold (several lanes) and not yet released
    /// (`send_room.rs`): they are released once the batch is sent.
    pub(super) unreleased: bool,
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
    pub(super) fn new(lane: usize) -> Self {
        TxBatch {
            lane,
            data: vec![0u8; TX_BATCH_BYTES],
            used: 0,
            items: Vec::with_capacity(64),
            unreleased: false,
        }
    }

    /// The free space, if it can hold the encryption of `packet_len` bytes.
    pub(super) fn space_for(&mut self, packet_len: usize) -> Option<&mut [u8]> {
        let need = packet_len + OVERHEAD;
        (self.data.len() - self.used >= need).then(|| &mut self.data[self.used..self.used + need])
    }

    /// The regions of the items from `first` on, in order, for sealing in
    /// place.
    pub(super) fn regions_from(&mut self, first: usize) -> Vec<&mut [u8]> {
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
    pub(super) fn forget(&mut self, failed: &[usize]) {
        let mut index = 0;
        self.items.retain(|_| {
            let keep = !failed.contains(&index);
            index += 1;
            keep
        });
    }

    /// The socket pair (lane) the batch leaves through.
    pub(super) fn lane(&self) -> usize {
        self.lane
    }

    /// Datagrams in the batch.
    pub(super) fn len(&self) -> usize {
        self.items.len()
    }

    pub(super) fn push(&mut self, len: usize, endpoint: Endpoint, peer: PeerId) {
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
    pub(super) fn flush(&mut self, shared: &Shared) {
        let runs = self.runs();
        let sends: Vec<udp::Transmit<'_>> = runs
            .iter()
            .map(|run| {
                udp::Transmit::segments(
                    run.endpoint.addr,
                    &self.data[run.bytes.clone()],
                    run.segment_size,
                )
                .from_source(local_source(&run.endpoint))
            })
            .collect();
        shared.send_and_settle(self.lane, &sends, |i| Some(runs[i].peer));
        self.items.clear();
        self.used = 0; // also the bytes of forgotten items
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

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(port: u16) -> Endpoint {
        Endpoint::from(std::net::SocketAddr::from(([192, 0, 2, 1], port)))
    }

    /// A batch holding items of these (length, port) in order.
    fn batch(items: &[(usize, u16)]) -> TxBatch {
        let mut tx = TxBatch::new(0);
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
}
