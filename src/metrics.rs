//! The opt-in Prometheus endpoint (`--metrics-listen ADDR:PORT`).
//!
//! A scrape pulls from the engine: it takes the engine lock for a chunk of
//! peers at a time, copies their numbers out (no formatting, no
//! allocation), releases the lock, and only then formats and writes the
//! text, so that neither the lock hold nor the scrape's memory grows with
//! the peer count.
//! Nothing is counted for the endpoint's sake on the data path: the counters
//! are the engine's own plain integers (see `PeerStats`).
//!
//! Every metric is labelled with `interface`; per-peer metrics also with
//! `peer`, the peer's public key in base64 as `wg show` prints it (public,
//! not a secret). Byte counters are exactly what `wg show transfer` prints.

pub mod http;
pub mod text;

use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use ferroguard_proto::crypto::PublicKey;
use ferroguard_proto::device::{Device, DropReason, Now};
use ferroguard_proto::peer::{Peer, PeerStats};

use crate::runtime::Shared;
use text::{Kind, TextEncoder};

/// One peer's numbers, copied out under the engine lock.
#[derive(Debug, Clone)]
pub struct PeerSample {
    /// The peer's public key.
    pub public_key: PublicKey,
    /// Bytes received (as `wg show transfer`).
    pub rx_bytes: u64,
    /// Bytes sent (as `wg show transfer`).
    pub tx_bytes: u64,
    /// Packet, handshake and drop counters.
    pub stats: PeerStats,
    /// The last handshake in whole seconds since the epoch, 0 for never
    /// (as `wg show latest-handshakes`).
    pub last_handshake_secs: u64,
    /// Packets waiting for a session.
    pub staged: usize,
}

/// The engine's numbers, copied out under the engine lock.
#[derive(Debug, Clone)]
pub struct DeviceSample {
    /// Every peer, in insertion order.
    pub peers: Vec<PeerSample>,
    /// Drops that could not be tied to a peer, per [`DropReason::ALL`].
    pub drops_without_peer: [u64; DropReason::ALL.len()],
    /// Whether handshakes currently need a cookie.
    pub under_load: bool,
}

/// What the daemon around the engine adds.
#[derive(Debug, Clone, Default)]
pub struct DaemonSample {
    /// Per lane of the data path (TUN queue and socket pair, one I/O
    /// thread in `queues:N` mode): packets read from its TUN queue and
    /// datagrams received on its sockets.
    pub lane_packets: Vec<(u64, u64)>,
    /// Times a lane waited for another lane to send a peer's older
    /// counters, and packets dropped after waiting in vain
    /// (`runtime/send_room.rs`).
    pub send_room: (u64, u64),
    /// Handshake messages waiting for the handshake thread.
    pub handshake_queue_len: usize,
    /// Handshake messages dropped because that queue was full.
    pub handshake_queue_full_drops: u64,
    /// Resident memory of the process, if readable.
    pub resident_bytes: Option<u64>,
    /// Open file descriptors of the process, if readable.
    pub open_fds: Option<u64>,
}

/// Copies the numbers a scrape needs out of the engine: the only part of a
/// scrape done under the engine lock.
pub fn sample_device(device: &Device, now: Now) -> DeviceSample {
    let peers = device
        .peer_ids()
        .into_iter()
        .filter_map(|id| device.peer(id))
        .map(PeerSample::of)
        .collect();
    DeviceSample {
        peers,
        drops_without_peer: DropReason::ALL.map(|r| device.drop_count_without_peer(r)),
        under_load: device.is_under_load(now),
    }
}

impl PeerSample {
    /// The numbers of one peer.
    pub fn of(peer: &Peer) -> Self {
        PeerSample {
            public_key: peer.public_key(),
            rx_bytes: peer.rx_bytes(),
            tx_bytes: peer.tx_bytes(),
            stats: peer.stats(),
            last_handshake_secs: peer
                .last_handshake()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs()),
            staged: peer.staged_len(),
        }
    }
}

/// Peers copied out per hold of the engine lock by a live scrape.
const SCRAPE_CHUNK: usize = 256;

/// Bytes of text gathered before they are written to the client.
const WRITE_THRESHOLD: usize = 64 * 1024;

/// The peers of a scrape, handed out a chunk at a time in insertion order.
trait PeerChunks {
    /// How many peers there are (as the first line of the scrape says).
    fn count(&self) -> usize;
    /// Calls `each` with every peer, a chunk at a time.
    fn for_each_chunk(
        &self,
        each: &mut dyn FnMut(&[PeerSample]) -> io::Result<()>,
    ) -> io::Result<()>;
}

impl PeerChunks for Vec<PeerSample> {
    fn count(&self) -> usize {
        self.len()
    }

    fn for_each_chunk(
        &self,
        each: &mut dyn FnMut(&[PeerSample]) -> io::Result<()>,
    ) -> io::Result<()> {
        each(self)
    }
}

/// The peers of the running engine, copied out [`SCRAPE_CHUNK`] at a time
/// under the engine lock and formatted with it released. Each walk sees the
/// peers of that moment: a family may list a peer added or miss one
/// removed since the previous family was written.
struct LivePeers<'a> {
    shared: &'a Shared,
    count: usize,
}

impl PeerChunks for LivePeers<'_> {
    fn count(&self) -> usize {
        self.count
    }

    fn for_each_chunk(
        &self,
        each: &mut dyn FnMut(&[PeerSample]) -> io::Result<()>,
    ) -> io::Result<()> {
        let mut chunk = Vec::with_capacity(SCRAPE_CHUNK);
        let mut after = None;
        let mut holds = crate::holds::LockHolds::new();
        loop {
            chunk.clear();
            // Real-time for the hold only (see `crate::bulk::lock_hold`).
            crate::bulk::lock_hold(|| {
                let engine = self.shared.engine();
                let started = std::time::Instant::now();
                let device = &engine.device;
                // In storage order, with no lookup per peer (see
                // `Device::peers_after`).
                for (id, peer) in device.peers_after(after).take(SCRAPE_CHUNK) {
                    chunk.push(PeerSample::of(peer));
                    after = Some(id);
                }
                drop(engine);
                holds.note("scrape", started.elapsed());
            });
            if chunk.is_empty() {
                holds.log("metrics walk");
                return Ok(());
            }
            each(&chunk)?;
        }
    }
}

/// The drop reasons a peer can be charged with (see `Device::receive`):
/// always listed per peer, so that their series exist from the start; any
/// other reason appears once non-zero.
const PEER_DROP_REASONS: [DropReason; 9] = [
    DropReason::Replay,
    DropReason::Decryption,
    DropReason::KeypairExpired,
    DropReason::InvalidInnerPacket,
    DropReason::SourceNotAllowed,
    DropReason::HandshakeFailed,
    DropReason::TimestampReplay,
    DropReason::InitiationFlood,
    DropReason::BadCookieReply,
];

/// The `reason` label of the daemon's own drop: the handshake queue was full.
pub const HANDSHAKE_QUEUE_FULL: &str = "handshake_queue_full";

/// Formats a scrape in the Prometheus text format (outside the lock).
pub fn render(interface: &str, device: &DeviceSample, daemon: &DaemonSample) -> String {
    let totals = DeviceTotals {
        drops_without_peer: device.drops_without_peer,
        under_load: device.under_load,
    };
    let mut out = Vec::new();
    render_to(interface, &totals, &device.peers, daemon, &mut out)
        .expect("writing to memory cannot fail");
    String::from_utf8(out).expect("the exposition is UTF-8")
}

/// The device-wide numbers of a scrape.
struct DeviceTotals {
    drops_without_peer: [u64; DropReason::ALL.len()],
    under_load: bool,
}

/// Writes a scrape to `out` as it is formatted, a chunk of peers at a
/// time, so that its memory stays bounded whatever the peer count (2^20
/// peers make about 2 GB of text).
fn render_to(
    interface: &str,
    device: &DeviceTotals,
    peers: &dyn PeerChunks,
    daemon: &DaemonSample,
    out: &mut dyn Write,
) -> io::Result<()> {
    let mut e = TextEncoder::new();
    let dev = [("interface", interface)];

    e.family(
        "ferroguard_peers",
        "Number of configured peers.",
        Kind::Gauge,
    );
    e.sample("ferroguard_peers", &dev, peers.count() as u64);

    type Field = fn(&PeerSample) -> u64;
    let per_peer: [(&str, &str, Kind, Field); 7] = [
        ("ferroguard_peer_rx_bytes_total", "Bytes received from the peer as WireGuard messages (wg show transfer).", Kind::Counter, |p| p.rx_bytes),
        ("ferroguard_peer_tx_bytes_total", "Bytes sent to the peer as WireGuard messages (wg show transfer).", Kind::Counter, |p| p.tx_bytes),
        ("ferroguard_peer_rx_packets_total", "WireGuard messages received from the peer and counted in rx bytes.", Kind::Counter, |p| p.stats.rx_packets),
        ("ferroguard_peer_tx_packets_total", "WireGuard messages sent to the peer and counted in tx bytes.", Kind::Counter, |p| p.stats.tx_packets),
        ("ferroguard_peer_handshakes_total", "Handshakes completed with the peer.", Kind::Counter, |p| p.stats.handshakes_completed),
        ("ferroguard_peer_last_handshake_seconds", "Time of the last completed handshake in seconds since the epoch, 0 for never (wg show latest-handshakes).", Kind::Gauge, |p| p.last_handshake_secs),
        ("ferroguard_peer_staged_packets", "Packets waiting for a session with the peer.", Kind::Gauge, |p| p.staged as u64),
    ];
    let mut staged_total = 0u64;
    for (name, help, kind, field) in per_peer {
        e.family(name, help, kind);
        peers.for_each_chunk(&mut |chunk| {
            for peer in chunk {
                let key = base64(&peer.public_key.0);
                e.sample(name, &[dev[0], ("peer", key.as_str())], field(peer));
            }
            e.write_out(out, WRITE_THRESHOLD)
        })?;
    }

    let name = "ferroguard_peer_drops_total";
    e.family(
        name,
        "Datagrams dropped after they were tied to the peer, by reason.",
        Kind::Counter,
    );
    peers.for_each_chunk(&mut |chunk| {
        for peer in chunk {
            staged_total += peer.staged as u64;
            let key = base64(&peer.public_key.0);
            for reason in DropReason::ALL {
                let count = peer.stats.drops.get(reason);
                if count > 0 || PEER_DROP_REASONS.contains(&reason) {
                    let labels = [dev[0], ("peer", key.as_str()), ("reason", reason.name())];
                    e.sample(name, &labels, count);
                }
            }
        }
        e.write_out(out, WRITE_THRESHOLD)
    })?;

    let name = "ferroguard_drops_total";
    e.family(
        name,
        "Datagrams dropped before they could be tied to a peer, by reason.",
        Kind::Counter,
    );
    for (reason, count) in DropReason::ALL.iter().zip(device.drops_without_peer) {
        e.sample(name, &[dev[0], ("reason", reason.name())], count);
    }
    e.sample(
        name,
        &[dev[0], ("reason", HANDSHAKE_QUEUE_FULL)],
        daemon.handshake_queue_full_drops,
    );

    let gauges: [(&str, &str, u64); 3] = [
        (
            "ferroguard_handshake_queue_length",
            "Handshake messages waiting for the handshake thread.",
            daemon.handshake_queue_len as u64,
        ),
        (
            "ferroguard_staged_packets",
            "Packets waiting for a session, all peers.",
            staged_total,
        ),
        (
            "ferroguard_under_load",
            "1 while handshakes need a cookie (under load), else 0.",
            u64::from(device.under_load),
        ),
    ];
    for (name, help, value) in gauges {
        e.family(name, help, Kind::Gauge);
        e.sample(name, &dev, value);
    }
    let process: [(&str, &str, Option<u64>); 2] = [
        (
            "ferroguard_process_resident_memory_bytes",
            "Resident memory of the daemon.",
            daemon.resident_bytes,
        ),
        (
            "ferroguard_process_open_fds",
            "Open file descriptors of the daemon.",
            daemon.open_fds,
        ),
    ];
    for (name, help, value) in process {
        if let Some(value) = value {
            e.family(name, help, Kind::Gauge);
            e.sample(name, &dev, value);
        }
    }
    let name = "ferroguard_lane_packets_total";
    e.family(
        name,
        "Packets per lane of the data path (TUN queue and socket pair): read from the TUN (direction tun) or received from peers (direction udp).",
        Kind::Counter,
    );
    for (lane, (tun, udp)) in daemon.lane_packets.iter().enumerate() {
        let lane = lane.to_string();
        for (direction, count) in [("tun", tun), ("udp", udp)] {
            let labels = [dev[0], ("lane", lane.as_str()), ("direction", direction)];
            e.sample(name, &labels, *count);
        }
    }
    let (waits, drops) = daemon.send_room;
    for (name, help, value) in [
        (
            "ferroguard_send_room_waits_total",
            "Times a lane waited for another lane to send a peer's older counters (the per-peer send bound).",
            waits,
        ),
        (
            "ferroguard_send_room_drops_total",
            "Packets dropped because their lane waited in vain for another lane to send a peer's older counters.",
            drops,
        ),
    ] {
        e.family(name, help, Kind::Counter);
        e.sample(name, &dev, value);
    }
    e.write_out(out, 0)?;
    out.flush()
}

/// One scrape written to `out`: the peers copied out a chunk at a time
/// under the engine lock, formatted and written with it released.
pub fn scrape(shared: &Shared, interface: &str, out: &mut dyn Write) -> io::Result<()> {
    // Each scrape runs on a connection thread of its own (see `http::serve`).
    // It formats at nice 10, and holds the engine lock real-time where the
    // process may (`crate::bulk::lock_hold`); elsewhere at nice 10 too,
    // unlike `get`: with a scrape's many holds at normal priority the pings
    // through the tunnel during scrapes of 2^20 peers were worse in three
    // runs of four (BENCHMARKS.md, "Many peers").
    if let Err(error) = crate::sys::process::lower_thread_priority(crate::config::BULK_NICE) {
        log::debug!("could not lower the priority of a scrape: {error}");
    }
    let (device, count) = {
        let engine = shared.engine();
        let device = &engine.device;
        let totals = DeviceTotals {
            drops_without_peer: DropReason::ALL.map(|r| device.drop_count_without_peer(r)),
            under_load: device.is_under_load(crate::clock::now()),
        };
        (totals, device.peer_count())
    };
    let peers = LivePeers { shared, count };
    let daemon = DaemonSample {
        lane_packets: shared.lane_packets(),
        send_room: shared.send_room_counts(),
        handshake_queue_len: shared.handshake_queue_len(),
        handshake_queue_full_drops: shared.handshake_queue_full_drops(),
        resident_bytes: resident_bytes(),
        open_fds: open_fds(),
    };
    render_to(interface, &device, &peers, &daemon, out)
}

/// Binds the endpoint's socket (done before the daemon detaches, so that
/// an address in use is reported and fails the start).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
}

/// Serves `GET /metrics` on `listener` for the device behind `shared`,
/// forever (run it on its own thread).
pub fn serve(listener: TcpListener, shared: Arc<Shared>, interface: String) {
    http::serve(
        listener,
        Arc::new(move |out: &mut dyn Write| scrape(&shared, &interface, out)),
    );
}

/// Resident set size, from the `VmRSS` line of `/proc/self/status` (kB).
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Entries of `/proc/self/fd` (one of them the directory being read).
fn open_fds() -> Option<u64> {
    let entries = std::fs::read_dir("/proc/self/fd").ok()?;
    Some(entries.count().saturating_sub(1) as u64)
}

/// Standard base64 with padding, as `wg` prints keys.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
