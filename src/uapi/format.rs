//! Writing the answer to a `get` request.

use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use zeroize::Zeroizing;

use super::{DeviceSnapshot, PeerSnapshot};

/// Bytes gathered before they are written to the output. Large enough that
/// a big answer costs few system calls, small enough to fit the socket's
/// buffer (the next one is formatted while the client reads: 256 KiB made
/// `get` of 2^20 peers slower).
const FLUSH_THRESHOLD: usize = 64 * 1024;

/// The buffer's room beyond [`FLUSH_THRESHOLD`]: more than any one line,
/// so that it never grows (a grown buffer would leave a copy of keys
/// behind in the memory it gave up).
const LINE_ROOM: usize = 256;

/// Writes the whole answer to a `get` request, `errno=0` and the final blank
/// line included, then flushes `out`.
///
/// Order (wireguard-go's; `wg(8)` only needs device keys before the first
/// `public_key`): `private_key` (only if set and not all zeros, lowercase
/// hex), `listen_port` (if non-zero), `fwmark` (if non-zero), then for every
/// peer in the snapshot's order: `public_key`, `preshared_key` (zeros when
/// none), `protocol_version=1`, `endpoint` (if known; IPv6 as
/// `[addr%scope]:port`, the scope id only when non-zero, which `wg(8)`'s
/// `getaddrinfo` accepts), `last_handshake_time_sec`,
/// `last_handshake_time_nsec` (0 and 0 if never), `tx_bytes`, `rx_bytes`,
/// `persistent_keepalive_interval`, and one `allowed_ip` per prefix, printed
/// as given.
///
/// The output is gathered in a buffer of its own (written out every 64 KiB)
/// that is wiped when done, since it holds the private and preshared keys.
pub fn write_get(snapshot: &DeviceSnapshot, out: &mut impl Write) -> io::Result<()> {
    let private_key = snapshot.private_key.as_deref();
    let mut answer = GetWriter::start(out, private_key, snapshot.listen_port, snapshot.fwmark)?;
    for peer in &snapshot.peers {
        answer.peer(peer)?;
    }
    answer.finish()
}

/// Writes a `get` answer piece by piece, in the order and format of
/// [`write_get`]: the device lines first, then each peer as it comes, then
/// `errno=0`. Lets a caller stream the peers of a large device a slice at
/// a time instead of gathering them all first.
pub struct GetWriter<'a, W: Write + ?Sized> {
    answer: AnswerBuffer<'a, W>,
}

impl<'a, W: Write + ?Sized> GetWriter<'a, W> {
    /// Starts the answer with the device's lines.
    pub fn start(
        out: &'a mut W,
        private_key: Option<&[u8; 32]>,
        listen_port: u16,
        fwmark: u32,
    ) -> io::Result<Self> {
        let mut answer = AnswerBuffer::new(out);
        if let Some(private_key) = private_key {
            if private_key.iter().any(|&byte| byte != 0) {
                answer.hex_line(b"private_key", private_key)?;
            }
        }
        if listen_port != 0 {
            answer.number_line(b"listen_port", u64::from(listen_port))?;
        }
        if fwmark != 0 {
            answer.number_line(b"fwmark", u64::from(fwmark))?;
        }
        Ok(GetWriter { answer })
    }

    /// Appends one peer (written out whenever 64 KiB have gathered).
    pub fn peer(&mut self, peer: &PeerSnapshot) -> io::Result<()> {
        write_peer(&mut self.answer, &PeerLines::from(peer))
    }

    /// Appends one peer given by borrowed values, as [`GetWriter::peer`]
    /// does: a caller that stages peers in buffers of its own writes them
    /// without building a snapshot (and its lists) per peer.
    pub fn peer_lines(&mut self, peer: &PeerLines<'_>) -> io::Result<()> {
        write_peer(&mut self.answer, peer)
    }

    /// Ends the answer with `errno=0` and the blank line, and flushes.
    pub fn finish(mut self) -> io::Result<()> {
        self.answer.raw(b"errno=0\n\n")?;
        self.answer.finish()
    }
}

/// One peer's values for [`GetWriter::peer_lines`], as in [`PeerSnapshot`]
/// (see there), borrowed.
#[derive(Debug, Clone, Copy)]
pub struct PeerLines<'a> {
    /// The peer's static public key.
    pub public_key: &'a [u8; 32],
    /// The preshared key, all zeros when there is none.
    pub preshared_key: &'a [u8; 32],
    /// The current endpoint, if known.
    pub endpoint: Option<SocketAddr>,
    /// The last completed handshake since `UNIX_EPOCH`, if any.
    pub last_handshake: Option<Duration>,
    /// WireGuard message bytes sent to this peer.
    pub tx_bytes: u64,
    /// WireGuard message bytes received from this peer.
    pub rx_bytes: u64,
    /// Persistent keepalive interval in seconds, 0 = off.
    pub persistent_keepalive: u16,
    /// The prefixes routed to this peer, in the engine's order.
    pub allowed_ips: &'a [(IpAddr, u8)],
}

impl<'a> From<&'a PeerSnapshot> for PeerLines<'a> {
    fn from(peer: &'a PeerSnapshot) -> Self {
        PeerLines {
            public_key: &peer.public_key,
            preshared_key: &peer.preshared_key,
            endpoint: peer.endpoint,
            last_handshake: peer.last_handshake,
            tx_bytes: peer.tx_bytes,
            rx_bytes: peer.rx_bytes,
            persistent_keepalive: peer.persistent_keepalive,
            allowed_ips: &peer.allowed_ips,
        }
    }
}

fn write_peer<W: Write + ?Sized>(
    answer: &mut AnswerBuffer<'_, W>,
    peer: &PeerLines<'_>,
) -> io::Result<()> {
    answer.hex_line(b"public_key", peer.public_key)?;
    answer.hex_line(b"preshared_key", peer.preshared_key)?;
    answer.raw(b"protocol_version=1\n")?;
    if let Some(endpoint) = peer.endpoint {
        answer.endpoint_line(endpoint)?;
    }
    let (seconds, nanoseconds) = peer.last_handshake.map_or((0, 0), |since_epoch| {
        (since_epoch.as_secs(), since_epoch.subsec_nanos())
    });
    answer.number_line(b"last_handshake_time_sec", seconds)?;
    answer.number_line(b"last_handshake_time_nsec", u64::from(nanoseconds))?;
    answer.number_line(b"tx_bytes", peer.tx_bytes)?;
    answer.number_line(b"rx_bytes", peer.rx_bytes)?;
    let keepalive = u64::from(peer.persistent_keepalive);
    answer.number_line(b"persistent_keepalive_interval", keepalive)?;
    for &(address, cidr) in peer.allowed_ips {
        answer.allowed_ip_line(address, cidr)?;
    }
    Ok(())
}

/// A write buffer that is wiped on drop, written out in large chunks.
struct AnswerBuffer<'a, W: Write + ?Sized> {
    pending: Zeroizing<Vec<u8>>,
    out: &'a mut W,
}

impl<'a, W: Write + ?Sized> AnswerBuffer<'a, W> {
    fn new(out: &'a mut W) -> Self {
        AnswerBuffer {
            pending: Zeroizing::new(Vec::with_capacity(FLUSH_THRESHOLD + LINE_ROOM)),
            out,
        }
    }

    fn raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.pending.extend_from_slice(bytes);
        self.line_done()
    }

    fn hex_line(&mut self, key: &[u8], value: &[u8; 32]) -> io::Result<()> {
        self.start_line(key);
        // Written in place (2^20 peers make two keys each): no copy of a
        // key anywhere but the buffer, which is wiped. Two digits per
        // byte from one table look-up.
        let start = self.pending.len();
        self.pending.resize(start + 64, 0);
        for (pair, &byte) in self.pending[start..].chunks_exact_mut(2).zip(value) {
            pair.copy_from_slice(&HEX_PAIRS[usize::from(byte)]);
        }
        self.end_line()
    }

    fn number_line(&mut self, key: &[u8], value: u64) -> io::Result<()> {
        self.start_line(key);
        push_decimal(&mut self.pending, value);
        self.end_line()
    }

    /// `endpoint=`, as `SocketAddr`'s `Display` writes it (IPv6 as
    /// `[addr%scope]:port`, the scope only when non-zero).
    fn endpoint_line(&mut self, endpoint: SocketAddr) -> io::Result<()> {
        self.start_line(b"endpoint");
        match endpoint {
            SocketAddr::V4(v4) => push_ipv4(&mut self.pending, *v4.ip()),
            SocketAddr::V6(v6) => {
                self.pending.push(b'[');
                push_ipv6(&mut self.pending, *v6.ip());
                if v6.scope_id() != 0 {
                    self.pending.push(b'%');
                    push_decimal(&mut self.pending, u64::from(v6.scope_id()));
                }
                self.pending.push(b']');
            }
        }
        self.pending.push(b':');
        push_decimal(&mut self.pending, u64::from(endpoint.port()));
        self.end_line()
    }

    fn allowed_ip_line(&mut self, address: IpAddr, cidr: u8) -> io::Result<()> {
        self.start_line(b"allowed_ip");
        match address {
            IpAddr::V4(v4) => push_ipv4(&mut self.pending, v4),
            IpAddr::V6(v6) => push_ipv6(&mut self.pending, v6),
        }
        self.pending.push(b'/');
        push_decimal(&mut self.pending, u64::from(cidr));
        self.end_line()
    }

    fn start_line(&mut self, key: &[u8]) {
        self.pending.extend_from_slice(key);
        self.pending.push(b'=');
    }

    fn end_line(&mut self) -> io::Result<()> {
        self.pending.push(b'\n');
        self.line_done()
    }

    fn line_done(&mut self) -> io::Result<()> {
        if self.pending.len() >= FLUSH_THRESHOLD {
            self.write_pending()?;
        }
        Ok(())
    }

    fn write_pending(&mut self) -> io::Result<()> {
        self.out.write_all(&self.pending)?;
        self.pending.clear();
        Ok(())
    }

    fn finish(mut self) -> io::Result<()> {
        self.write_pending()?;
        self.out.flush()
    }
}

/// Appends `address` as `Ipv4Addr`'s `Display` writes it.
fn push_ipv4(buffer: &mut Vec<u8>, address: std::net::Ipv4Addr) {
    for (index, octet) in address.octets().into_iter().enumerate() {
        if index > 0 {
            buffer.push(b'.');
        }
        push_decimal(buffer, u64::from(octet));
    }
}

/// Appends `address` as `Ipv6Addr`'s `Display` writes it (RFC 5952: the
/// first longest run of two or more zero groups as `::`, lowercase hex
/// without leading zeros, IPv4-mapped addresses as `::ffff:a.b.c.d`),
/// without the formatting machinery: half the peers of a large device
/// have an IPv6 prefix, and `Display` was most of their line's cost.
fn push_ipv6(buffer: &mut Vec<u8>, address: std::net::Ipv6Addr) {
    if let Some(v4) = address.to_ipv4_mapped() {
        buffer.extend_from_slice(b"::ffff:");
        push_ipv4(buffer, v4);
        return;
    }
    let groups = address.segments();
    let (zeros_start, zeros_len) = longest_zero_run(&groups);
    if zeros_len > 1 {
        push_hex_groups(buffer, &groups[..zeros_start]);
        buffer.extend_from_slice(b"::");
        push_hex_groups(buffer, &groups[zeros_start + zeros_len..]);
    } else {
        push_hex_groups(buffer, &groups);
    }
}

/// The start and length of the first longest run of zero groups.
fn longest_zero_run(groups: &[u16; 8]) -> (usize, usize) {
    let (mut longest, mut current) = ((0, 0), (0, 0));
    for (index, &group) in groups.iter().enumerate() {
        if group != 0 {
            current = (0, 0);
            continue;
        }
        if current.1 == 0 {
            current.0 = index;
        }
        current.1 += 1;
        if current.1 > longest.1 {
            longest = current;
        }
    }
    longest
}

/// Appends `groups` in lowercase hex without leading zeros, `:` between.
fn push_hex_groups(buffer: &mut Vec<u8>, groups: &[u16]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (index, &group) in groups.iter().enumerate() {
        if index > 0 {
            buffer.push(b':');
        }
        let mut started = false;
        for shift in [12, 8, 4, 0] {
            let digit = (group >> shift) & 0xf;
            if digit != 0 || started || shift == 0 {
                buffer.push(DIGITS[usize::from(digit)]);
                started = true;
            }
        }
    }
}

/// The two lowercase hex digits of every byte.
const HEX_PAIRS: [[u8; 2]; 256] = {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut pairs = [[0u8; 2]; 256];
    let mut byte = 0;
    while byte < 256 {
        pairs[byte] = [DIGITS[byte >> 4], DIGITS[byte & 0x0f]];
        byte += 1;
    }
    pairs
};

/// Appends `value` in decimal.
#[inline]
fn push_decimal(buffer: &mut Vec<u8>, value: u64) {
    // Most counters of a large device are 0 (no handshake, no traffic).
    if value < 10 {
        buffer.push(b'0' + value as u8);
        return;
    }
    push_decimal_digits(buffer, value);
}

fn push_decimal_digits(buffer: &mut Vec<u8>, mut value: u64) {
    let mut digits = [0u8; 20]; // u64::MAX has 20 digits
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    buffer.extend_from_slice(&digits[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
    use std::time::{Duration, Instant};

    fn hex(byte: u8) -> String {
        format!("{byte:02x}").repeat(32)
    }

    fn sample_snapshot() -> DeviceSnapshot {
        DeviceSnapshot {
            private_key: Some(Zeroizing::new([0xe8; 32])),
            listen_port: 12912,
            fwmark: 7,
            peers: vec![
                PeerSnapshot {
                    public_key: [0xb8; 32],
                    preshared_key: Zeroizing::new([0x18; 32]),
                    endpoint: Some(SocketAddr::V6(SocketAddrV6::new(
                        "abcd:23::33".parse().unwrap(),
                        51820,
                        0,
                        2,
                    ))),
                    last_handshake: Some(Duration::new(1_590_459_201, 283_546_000)),
                    tx_bytes: 38333,
                    rx_bytes: u64::MAX,
                    persistent_keepalive: 25,
                    allowed_ips: vec![
                        (IpAddr::V4(Ipv4Addr::new(192, 168, 4, 4)), 32),
                        ("fd00::".parse().unwrap(), 64),
                    ],
                },
                PeerSnapshot {
                    public_key: [0x58; 32],
                    preshared_key: Zeroizing::new([0; 32]),
                    endpoint: Some("182.122.22.19:3233".parse().unwrap()),
                    last_handshake: None,
                    tx_bytes: 0,
                    rx_bytes: 2224,
                    persistent_keepalive: 0,
                    allowed_ips: vec![],
                },
                PeerSnapshot {
                    public_key: [0x66; 32],
                    preshared_key: Zeroizing::new([0; 32]),
                    endpoint: None,
                    last_handshake: None,
                    tx_bytes: 1,
                    rx_bytes: 2,
                    persistent_keepalive: 65535,
                    allowed_ips: vec![(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0)],
                },
            ],
        }
    }

    fn render(snapshot: &DeviceSnapshot) -> String {
        let mut out = Vec::new();
        write_get(snapshot, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn get_answer_matches_golden_text() {
        let expected = [
            format!("private_key={}", hex(0xe8)),
            "listen_port=12912".to_string(),
            "fwmark=7".to_string(),
            format!("public_key={}", hex(0xb8)),
            format!("preshared_key={}", hex(0x18)),
            "protocol_version=1".to_string(),
            "endpoint=[abcd:23::33%2]:51820".to_string(),
            "last_handshake_time_sec=1590459201".to_string(),
            "last_handshake_time_nsec=283546000".to_string(),
            "tx_bytes=38333".to_string(),
            "rx_bytes=18446744073709551615".to_string(),
            "persistent_keepalive_interval=25".to_string(),
            "allowed_ip=192.168.4.4/32".to_string(),
            "allowed_ip=fd00::/64".to_string(),
            format!("public_key={}", hex(0x58)),
            format!("preshared_key={}", hex(0)),
            "protocol_version=1".to_string(),
            "endpoint=182.122.22.19:3233".to_string(),
            "last_handshake_time_sec=0".to_string(),
            "last_handshake_time_nsec=0".to_string(),
            "tx_bytes=0".to_string(),
            "rx_bytes=2224".to_string(),
            "persistent_keepalive_interval=0".to_string(),
            format!("public_key={}", hex(0x66)),
            format!("preshared_key={}", hex(0)),
            "protocol_version=1".to_string(),
            "last_handshake_time_sec=0".to_string(),
            "last_handshake_time_nsec=0".to_string(),
            "tx_bytes=1".to_string(),
            "rx_bytes=2".to_string(),
            "persistent_keepalive_interval=65535".to_string(),
            "allowed_ip=::/0".to_string(),
            "errno=0".to_string(),
        ]
        .join("\n")
            + "\n\n";
        assert_eq!(render(&sample_snapshot()), expected);
    }

    #[test]
    fn unset_device_values_are_omitted() {
        let empty = DeviceSnapshot::default();
        assert_eq!(render(&empty), "errno=0\n\n");
        let zero_key = DeviceSnapshot {
            private_key: Some(Zeroizing::new([0; 32])),
            ..DeviceSnapshot::default()
        };
        assert_eq!(render(&zero_key), "errno=0\n\n");
    }

    #[test]
    fn scope_id_is_printed_only_when_set() {
        let mut snapshot = sample_snapshot();
        snapshot.peers.truncate(1);
        snapshot.peers[0].endpoint = Some("[fe80::1]:1".parse().unwrap());
        assert!(render(&snapshot).contains("\nendpoint=[fe80::1]:1\n"));
    }

    #[test]
    fn decimal_formatting_covers_the_extremes() {
        for value in [0, 1, 9, 10, 99, 100, 12912, u64::from(u32::MAX), u64::MAX] {
            let mut buffer = Vec::new();
            push_decimal(&mut buffer, value);
            assert_eq!(buffer, value.to_string().into_bytes());
        }
    }

    /// Addresses and endpoints are written exactly as `Display` writes
    /// them (the text `get` printed before they were written by hand):
    /// the edge cases of RFC 5952's zero runs, IPv4-mapped and -compatible
    /// addresses, scope ids, and many pseudo-random addresses with zeros.
    #[test]
    fn addresses_are_written_as_display_writes_them() {
        let mut addresses: Vec<Ipv6Addr> = [
            "::",
            "::1",
            "1::",
            "::ffff:1.2.3.4",
            "::1.2.3.4",
            "64:ff9b::1.2.3.4",
            "1:0:0:2:0:0:0:3",
            "1:0:0:2:0:0:3:4",
            "0:1:0:1:0:1:0:1",
            "1:0:1:0:1:0:1:0",
            "fe80::1",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "fd00::",
            "0:0:1::",
            "abcd:23::33",
            "1:2:3:4:5:6:7:0",
            "0:2:3:4:5:6:7:8",
            "::ffff:0:0",
        ]
        .iter()
        .map(|text| text.parse().unwrap())
        .collect();
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        for _ in 0..20_000 {
            let mut groups = [0u16; 8];
            for group in &mut groups {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                let bits = (state >> 33) as u16;
                // Mostly zeros, and short and long values.
                *group = match bits % 4 {
                    0 | 1 => 0,
                    2 => bits >> 12,
                    _ => bits,
                };
            }
            addresses.push(Ipv6Addr::from(groups));
        }
        for address in addresses {
            let mut written = Vec::new();
            push_ipv6(&mut written, address);
            assert_eq!(String::from_utf8(written).unwrap(), address.to_string());
            for scope in [0, 3, u32::MAX] {
                let endpoint = SocketAddr::V6(SocketAddrV6::new(address, 65535, 0, scope));
                let mut sink = Vec::new();
                let mut answer = AnswerBuffer::new(&mut sink);
                answer.endpoint_line(endpoint).unwrap();
                let line = String::from_utf8(answer.pending.to_vec()).unwrap();
                assert_eq!(line, format!("endpoint={endpoint}\n"));
            }
        }
        for (octets, port) in [
            ([0, 0, 0, 0], 0),
            ([255, 255, 255, 255], 65535),
            ([10, 9, 100, 1], 80),
        ] {
            let endpoint = SocketAddr::from((octets, port));
            let mut sink = Vec::new();
            let mut answer = AnswerBuffer::new(&mut sink);
            answer.endpoint_line(endpoint).unwrap();
            let line = String::from_utf8(answer.pending.to_vec()).unwrap();
            assert_eq!(line, format!("endpoint={endpoint}\n"));
        }
    }

    /// A writer that accepts at most a few bytes per call, to check that
    /// partial writes are completed.
    struct Trickle(Vec<u8>);

    impl Write for Trickle {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            let taken = bytes.len().min(7);
            self.0.extend_from_slice(&bytes[..taken]);
            Ok(taken)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn partial_writes_are_completed() {
        let mut trickle = Trickle(Vec::new());
        write_get(&sample_snapshot(), &mut trickle).unwrap();
        assert_eq!(
            String::from_utf8(trickle.0).unwrap(),
            render(&sample_snapshot())
        );
    }

    fn large_snapshot(peer_count: usize, allowed_ips_on_first: usize) -> DeviceSnapshot {
        let peer = |index: usize| PeerSnapshot {
            public_key: [(index % 251) as u8; 32],
            preshared_key: Zeroizing::new([0; 32]),
            endpoint: Some(SocketAddr::from(([10, 0, 0, 1], 51820))),
            last_handshake: Some(Duration::new(1_700_000_000, 5)),
            tx_bytes: index as u64 * 1000,
            rx_bytes: index as u64 * 999,
            persistent_keepalive: 25,
            allowed_ips: vec![(IpAddr::V4(Ipv4Addr::from(index as u32)), 32)],
        };
        let mut peers: Vec<PeerSnapshot> = (0..peer_count).map(peer).collect();
        if let Some(first) = peers.first_mut() {
            first.allowed_ips = (0..allowed_ips_on_first)
                .map(|index| {
                    let address = Ipv6Addr::from(0xfd00_u128 << 112 | index as u128);
                    (IpAddr::V6(address), 128)
                })
                .collect();
        }
        DeviceSnapshot {
            private_key: Some(Zeroizing::new([1; 32])),
            listen_port: 51820,
            fwmark: 0,
            peers,
        }
    }

    /// Debug builds are several times slower, hence their looser budget; the
    /// figure that matters is the release one (`--release --nocapture`).
    #[test]
    fn large_answer_formats_quickly() {
        let snapshot = large_snapshot(100_000, 130_561);
        let mut out = io::sink();
        let started = Instant::now();
        write_get(&snapshot, &mut out).unwrap();
        let elapsed = started.elapsed();
        let budget = if cfg!(debug_assertions) {
            Duration::from_secs(10)
        } else {
            Duration::from_millis(500)
        };
        assert!(elapsed < budget, "formatting took {elapsed:?}");
        let mut counted = Vec::new();
        write_get(&snapshot, &mut counted).unwrap();
        let lines = counted.iter().filter(|&&byte| byte == b'\n').count();
        // 9 lines per peer plus its allowed IPs, 2 device lines, errno and
        // the blank line.
        assert_eq!(lines, 100_000 * 9 + 99_999 + 130_561 + 2 + 2);
        eprintln!(
            "write_get: 100000 peers + 130561 allowed IPs, {} bytes in {elapsed:?}",
            counted.len()
        );
    }
}
