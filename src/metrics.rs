//! The opt-in Prometheus endpoint (`--metrics-listen ADDR:PORT`).
//!
//! A scrape pulls from the engine: it takes the engine lock once, copies the
//! numbers out ([`sample_device`]: no formatting, no allocation per peer
//! beyond one vector), releases the lock, and only then formats the text.
//! Nothing is counted for the endpoint's sake on the data path: the counters
//! are the engine's own plain integers (see `PeerStats`).
//!
//! Every metric is labelled with `interface`; per-peer metrics also with
//! `peer`, the peer's public key in base64 as `wg show` prints it (public,
//! not a secret). Byte counters are exactly what `wg show transfer` prints.

pub mod http;
pub mod text;

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use ferroguard_proto::crypto::PublicKey;
use ferroguard_proto::device::{Device, DropReason, Now};
use ferroguard_proto::peer::PeerStats;

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
#[derive(Debug, Clone, Copy, Default)]
pub struct DaemonSample {
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
        .map(|peer| PeerSample {
            public_key: peer.public_key,
            rx_bytes: peer.rx_bytes,
            tx_bytes: peer.tx_bytes,
            stats: peer.stats,
            last_handshake_secs: peer
                .last_handshake
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs()),
            staged: peer.staged.len(),
        })
        .collect();
    DeviceSample {
        peers,
        drops_without_peer: DropReason::ALL.map(|r| device.drop_count_without_peer(r)),
        under_load: device.is_under_load(now),
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
    let mut e = TextEncoder::new();
    let dev = [("interface", interface)];
    let keys: Vec<String> = device
        .peers
        .iter()
        .map(|p| base64(&p.public_key.0))
        .collect();
    let peer_labels = |i: usize| [("interface", interface), ("peer", keys[i].as_str())];

    e.family(
        "ferroguard_peers",
        "Number of configured peers.",
        Kind::Gauge,
    );
    e.sample("ferroguard_peers", &dev, device.peers.len() as u64);

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
    for (name, help, kind, field) in per_peer {
        e.family(name, help, kind);
        for (i, peer) in device.peers.iter().enumerate() {
            e.sample(name, &peer_labels(i), field(peer));
        }
    }

    let name = "ferroguard_peer_drops_total";
    e.family(
        name,
        "Datagrams dropped after they were tied to the peer, by reason.",
        Kind::Counter,
    );
    for (i, peer) in device.peers.iter().enumerate() {
        for reason in DropReason::ALL {
            let count = peer.stats.drops.get(reason);
            if count > 0 || PEER_DROP_REASONS.contains(&reason) {
                let [interface, peer] = peer_labels(i);
                e.sample(name, &[interface, peer, ("reason", reason.name())], count);
            }
        }
    }

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
            device.peers.iter().map(|p| p.staged as u64).sum(),
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
    e.finish()
}

/// One scrape: sample under the lock, format after.
pub fn scrape(shared: &Shared, interface: &str) -> String {
    let device = {
        let engine = shared.engine();
        sample_device(&engine.device, crate::clock::now())
    };
    let daemon = DaemonSample {
        handshake_queue_len: shared.handshake_queue_len(),
        handshake_queue_full_drops: shared.handshake_queue_full_drops(),
        resident_bytes: resident_bytes(),
        open_fds: open_fds(),
    };
    render(interface, &device, &daemon)
}

/// Binds the endpoint's socket (done before the daemon detaches, so that
/// an address in use is reported and fails the start).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
}

/// Serves `GET /metrics` on `listener` for the device behind `shared`,
/// forever (run it on its own thread).
pub fn serve(listener: TcpListener, shared: Arc<Shared>, interface: String) {
    http::serve(listener, Arc::new(move || scrape(&shared, &interface)));
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
