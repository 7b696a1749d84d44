//! Tests of the metrics assembly: what a scrape of a real engine shows.

use super::*;
use ferroguard_proto::device::{ReceiveOutcome, SendOutcome};
use ferroguard_proto::peer::Endpoint;
use ferroguard_proto::testing::{ipv4_packet, sock, Pair, A_TUN, B_ADDR, B_TUN};

#[test]
fn base64_matches_rfc_4648_and_wg() {
    let vectors = [
        ("", ""),
        ("f", "Zg=="),
        ("fo", "Zm8="),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg=="),
        ("fooba", "Zm9vYmE="),
        ("foobar", "Zm9vYmFy"),
    ];
    for (plain, encoded) in vectors {
        assert_eq!(base64(plain.as_bytes()), encoded);
    }
    assert_eq!(
        base64(&[0xff; 32]),
        "//////////////////////////////////////////8="
    );
    assert_eq!(base64(&[0; 32]).len(), 44);
}

/// Two engines, A and B, after a handshake and one packet each way.
fn pair() -> (Device, Device, Now) {
    let mut pair = Pair::connected(Now::system());
    let reply = ipv4_packet(B_TUN, A_TUN, 84);
    let mut out = vec![0u8; 200];
    let SendOutcome::Sent { len, .. } = pair.b.send(pair.now, &reply, &mut out) else {
        panic!("B has a session")
    };
    let from_b = Endpoint::from(sock(B_ADDR));
    assert!(matches!(
        pair.a.receive(pair.now, from_b, &mut out[..len]),
        ReceiveOutcome::Deliver { .. }
    ));
    (pair.a, pair.b, pair.now)
}

fn value(text: &str, series: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn a_scrape_shows_the_engine_counters() {
    let (_a, mut b, now) = pair();
    // One garbage datagram (no peer) and one replay-free forgery with B's
    // session index (charged to A as seen by B).
    b.receive(
        now,
        Endpoint::from("192.0.2.9:9".parse::<SocketAddr>().unwrap()),
        &mut [7u8; 5],
    );
    let id = b.peer_ids()[0];
    let peer = b.peer(id).unwrap();
    let (rx, tx, key) = (
        peer.rx_bytes(),
        peer.tx_bytes(),
        base64(&peer.public_key().0),
    );
    let index = peer.current_session_index().unwrap();
    let mut forged = vec![0u8; 32 + 16];
    forged[0] = 4;
    forged[4..8].copy_from_slice(&index.to_le_bytes());
    forged[8] = 200;
    assert_eq!(
        b.receive(
            now,
            Endpoint::from("192.0.2.9:9".parse::<SocketAddr>().unwrap()),
            &mut forged
        ),
        ReceiveOutcome::Dropped(DropReason::Decryption)
    );
    let sample = sample_device(&b, now);
    let daemon = DaemonSample {
        lane_packets: vec![(7, 0), (0, 9)],
        send_room: (4, 2),
        handshake_queue_len: 3,
        handshake_queue_full_drops: 5,
        resident_bytes: resident_bytes(),
        open_fds: open_fds(),
    };
    let text = render("wg\"0", &sample, &daemon);
    let lane = |lane: u32, direction: &str| {
        let labels = format!("interface=\"wg\\\"0\",lane=\"{lane}\",direction=\"{direction}\"");
        value(&text, &format!("ferroguard_lane_packets_total{{{labels}}}"))
    };
    assert_eq!(lane(0, "tun"), Some(7));
    assert_eq!(lane(1, "udp"), Some(9));
    assert_eq!(lane(1, "tun"), Some(0));
    let device_labels = "{interface=\"wg\\\"0\"}";
    assert_eq!(
        value(
            &text,
            &format!("ferroguard_send_room_waits_total{device_labels}")
        ),
        Some(4)
    );
    assert_eq!(
        value(
            &text,
            &format!("ferroguard_send_room_drops_total{device_labels}")
        ),
        Some(2)
    );
    let labels = format!("{{interface=\"wg\\\"0\",peer=\"{key}\"}}");
    assert!(rx > 0 && tx > 0);
    assert_eq!(
        value(&text, &format!("ferroguard_peer_rx_bytes_total{labels}")),
        Some(rx)
    );
    assert_eq!(
        value(&text, &format!("ferroguard_peer_tx_bytes_total{labels}")),
        Some(tx)
    );
    assert_eq!(
        value(&text, &format!("ferroguard_peer_handshakes_total{labels}")),
        Some(1)
    );
    assert_eq!(
        value(&text, &format!("ferroguard_peer_rx_packets_total{labels}")),
        Some(2)
    );
    let last = b.peer(id).unwrap().last_handshake().unwrap();
    let secs = last.duration_since(UNIX_EPOCH).unwrap().as_secs();
    assert_eq!(
        value(
            &text,
            &format!("ferroguard_peer_last_handshake_seconds{labels}")
        ),
        Some(secs)
    );
    let peer_drop = |reason: &str| {
        let series = format!(
            "ferroguard_peer_drops_total{{interface=\"wg\\\"0\",peer=\"{key}\",reason=\"{reason}\"}}"
        );
        value(&text, &series)
    };
    assert_eq!(peer_drop("decryption"), Some(1));
    assert_eq!(peer_drop("replay"), Some(0), "listed while zero");
    assert_eq!(
        peer_drop("malformed"),
        None,
        "not chargeable, zero: omitted"
    );
    let dev_drop = |reason: &str| {
        value(
            &text,
            &format!("ferroguard_drops_total{{interface=\"wg\\\"0\",reason=\"{reason}\"}}"),
        )
    };
    assert_eq!(dev_drop("malformed"), Some(1));
    assert_eq!(
        dev_drop("decryption"),
        Some(0),
        "charged to the peer instead"
    );
    assert_eq!(dev_drop(HANDSHAKE_QUEUE_FULL), Some(5));
    assert_eq!(
        value(
            &text,
            "ferroguard_handshake_queue_length{interface=\"wg\\\"0\"}"
        ),
        Some(3)
    );
    assert_eq!(
        value(&text, "ferroguard_peers{interface=\"wg\\\"0\"}"),
        Some(1)
    );
    assert_eq!(
        value(&text, "ferroguard_under_load{interface=\"wg\\\"0\"}"),
        Some(0)
    );
    assert!(value(&text, "ferroguard_process_open_fds{interface=\"wg\\\"0\"}").unwrap() >= 3);
    assert!(
        value(
            &text,
            "ferroguard_process_resident_memory_bytes{interface=\"wg\\\"0\"}"
        )
        .unwrap()
            > 0
    );
    // Every family has HELP and TYPE before its samples, once.
    let types = text.lines().filter(|l| l.starts_with("# TYPE ")).count();
    let helps = text.lines().filter(|l| l.starts_with("# HELP ")).count();
    assert_eq!(types, helps);
    assert_eq!(
        types, 18,
        "1 + 7 per-peer + 2 drops + 3 device + 2 process + 1 lanes + 2 send room"
    );
}

/// A device with `count` peers and no sessions.
fn device_with_peers(count: u32) -> Device {
    let mut device = Device::new([3; 32]);
    for i in 0..count {
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(&i.to_le_bytes());
        device.add_peer(PublicKey(key)).unwrap();
    }
    device
}

/// What a scrape costs the engine lock with 1 000 peers: copying their
/// numbers out. The bound is loose (a loaded 2-core machine); the figure
/// is measured in `benches/metrics.rs`.
#[test]
fn sampling_a_thousand_peers_is_quick() {
    let device = device_with_peers(1000);
    let now = Now::system();
    let started = std::time::Instant::now();
    let sample = sample_device(&device, now);
    let held = started.elapsed();
    assert_eq!(sample.peers.len(), 1000);
    assert!(held < std::time::Duration::from_millis(50), "{held:?}");
    let text = render("wg0", &sample, &DaemonSample::default());
    assert_eq!(
        text.matches("ferroguard_peer_rx_bytes_total{").count(),
        1000
    );
}

/// Peers handed out one at a time, as a live scrape hands them out in
/// chunks, and a writer that counts what it holds at most between writes.
struct OneByOne(Vec<PeerSample>);

impl PeerChunks for OneByOne {
    fn count(&self) -> usize {
        self.0.len()
    }

    fn for_each_chunk(
        &self,
        each: &mut dyn FnMut(&[PeerSample]) -> io::Result<()>,
    ) -> io::Result<()> {
        self.0.chunks(1).try_for_each(each)
    }
}

/// Rendering chunk by chunk gives the same text as rendering all peers at
/// once, and is written out in pieces of bounded size.
#[test]
fn a_chunked_scrape_equals_a_whole_one_and_streams() {
    let device = device_with_peers(3000);
    let sample = sample_device(&device, Now::system());
    let daemon = DaemonSample::default();
    let whole = render("wg0", &sample, &daemon);
    struct Pieces(Vec<usize>, Vec<u8>);
    impl Write for Pieces {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.push(bytes.len());
            self.1.extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut out = Pieces(Vec::new(), Vec::new());
    let totals = DeviceTotals {
        drops_without_peer: sample.drops_without_peer,
        under_load: sample.under_load,
    };
    render_to("wg0", &totals, &OneByOne(sample.peers), &daemon, &mut out).unwrap();
    assert_eq!(String::from_utf8(out.1).unwrap(), whole);
    assert!(out.0.len() > 10, "written in pieces: {:?}", out.0.len());
    assert!(out.0.iter().all(|&len| len < WRITE_THRESHOLD + 4096));
}
