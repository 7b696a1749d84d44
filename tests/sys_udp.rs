//! Integration tests of `sys::udp` over loopback. Tests that need root
//! (marks, namespaces) are skipped with a message otherwise; the namespace
//! test runs a helper test of this binary inside a namespace it creates and
//! deletes (also on failure). Every wait is bounded.

#[path = "sys_common.rs"]
mod common;

use common::*;
use ferroguard::sys::poll_readable;
use ferroguard::sys::process::if_nametoindex;
use ferroguard::sys::udp::{
    Family, LocalSource, RecvMeta, SendOutcome, Transmit, UdpSockets, GRO_BUFFER_BYTES,
    MAX_GSO_SEGMENTS,
};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long a test waits for any single event.
const WAIT: Duration = Duration::from_secs(5);

/// The environment variable that turns the namespace helper on.
const HELPER_ENV: &str = "FERROGUARD_SYS_UDP_HELPER";

/// Receives `count` datagrams on `family` (bounded by `WAIT`), returning
/// their payloads and metadata.
fn receive(sockets: &UdpSockets, family: Family, count: usize) -> Vec<(Vec<u8>, RecvMeta)> {
    let fd = match family {
        Family::V4 => sockets.raw_fds().0,
        Family::V6 => sockets.raw_fds().1,
    }
    .expect("family open");
    let deadline = Instant::now() + WAIT;
    let mut received = Vec::new();
    let mut bufs = vec![vec![0u8; 2048]; 8];
    let mut meta = vec![RecvMeta::default(); 8];
    while received.len() < count {
        let left = deadline
            .checked_duration_since(Instant::now())
            .expect("datagrams did not arrive in time");
        if poll_readable(&[fd], Some(left)).unwrap() != [true] {
            continue;
        }
        match sockets.recv_batch(family, &mut bufs, &mut meta) {
            Ok(n) => {
                for i in 0..n {
                    received.push((bufs[i][..meta[i].len].to_vec(), meta[i]));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => panic!("recv_batch: {e}"),
        }
    }
    received
}

/// Sends `transmits` and asserts that every one was sent as asked.
fn send_ok(sockets: &UdpSockets, transmits: &[Transmit<'_>]) {
    let outcomes = sockets.send(transmits);
    assert_eq!(outcomes.len(), transmits.len());
    for (i, outcome) in outcomes.iter().enumerate() {
        assert!(
            matches!(outcome, SendOutcome::Sent),
            "transmit {i}: {outcome:?}"
        );
    }
}

/// Sends one transmit and returns its outcome.
fn send_one(sockets: &UdpSockets, transmit: Transmit<'_>) -> SendOutcome {
    let mut outcomes = sockets.send(&[transmit]);
    assert_eq!(outcomes.len(), 1);
    outcomes.remove(0)
}

/// One single-datagram transmit to `dst` per packet.
fn datagrams_to<'a>(dst: SocketAddr, packets: &[&'a [u8]]) -> Vec<Transmit<'a>> {
    packets.iter().map(|p| Transmit::datagram(dst, p)).collect()
}

/// Sends a batch from `a` to `b` over `loopback`, checks what `b` sees, and
/// answers from the local address `b` saw.
fn exchange(a: &UdpSockets, b: &UdpSockets, loopback: IpAddr, family: Family) {
    let packets: Vec<Vec<u8>> = (0u8..5).map(|i| vec![i; 100 + usize::from(i)]).collect();
    let slices: Vec<&[u8]> = packets.iter().map(Vec::as_slice).collect();
    let to_b = SocketAddr::new(loopback, b.port());
    send_ok(a, &datagrams_to(to_b, &slices));

    let got = receive(b, family, 5);
    let lo_index = if_nametoindex("lo").expect("lo");
    for ((payload, meta), expected) in got.iter().zip(&packets) {
        assert_eq!(payload, expected);
        assert_eq!(meta.src, Some(SocketAddr::new(loopback, a.port())));
        let local = meta.local.expect("pktinfo");
        assert_eq!(local.addr, loopback);
        assert_eq!(local.ifindex, lo_index);
    }

    let reply_src = got[0].1.local;
    let to_a = got[0].1.src.unwrap();
    send_ok(
        b,
        &[Transmit::datagram(to_a, b"reply").from_source(reply_src)],
    );
    let back = receive(a, family, 1);
    assert_eq!(back[0].0, b"reply");
    assert_eq!(back[0].1.src, Some(SocketAddr::new(loopback, b.port())));
}

fn has_ipv6(sockets: &UdpSockets) -> bool {
    let v6 = sockets.raw_fds().1.is_some();
    if !v6 {
        println!("no IPv6 on this system: IPv6 part skipped");
    }
    v6
}

#[test]
fn port_zero_gives_both_families_the_same_port() {
    let sockets = UdpSockets::bind(0, 0).unwrap();
    let port = sockets.port();
    assert_ne!(port, 0);
    let (v4, v6) = sockets.raw_fds();
    assert!(v4.is_some());
    let taken = UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).unwrap_err();
    assert_eq!(taken.kind(), io::ErrorKind::AddrInUse);
    if v6.is_some() {
        let taken = UdpSocket::bind((Ipv6Addr::LOCALHOST, port)).unwrap_err();
        assert_eq!(taken.kind(), io::ErrorKind::AddrInUse);
    }
}

#[test]
fn a_taken_port_is_an_error_and_a_free_one_is_used() {
    let first = UdpSockets::bind(0, 0).unwrap();
    let err = UdpSockets::bind(first.port(), 0).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    let port = first.port();
    drop(first);
    let again = UdpSockets::bind(port, 0).unwrap();
    assert_eq!(again.port(), port);
}

#[test]
fn batches_flow_both_ways_over_ipv4_and_ipv6() {
    let a = UdpSockets::bind(0, 0).unwrap();
    let b = UdpSockets::bind(0, 0).unwrap();
    exchange(&a, &b, IpAddr::V4(Ipv4Addr::LOCALHOST), Family::V4);
    exchange(&b, &a, IpAddr::V4(Ipv4Addr::LOCALHOST), Family::V4);
    if has_ipv6(&a) {
        exchange(&a, &b, IpAddr::V6(Ipv6Addr::LOCALHOST), Family::V6);
        exchange(&b, &a, IpAddr::V6(Ipv6Addr::LOCALHOST), Family::V6);
    }
}

#[test]
fn large_batches_are_split_and_all_sent() {
    let a = UdpSockets::bind(0, 0).unwrap();
    let b = UdpSockets::bind(0, 0).unwrap();
    let packets: Vec<Vec<u8>> = (0..300u32).map(|i| i.to_be_bytes().to_vec()).collect();
    let slices: Vec<&[u8]> = packets.iter().map(Vec::as_slice).collect();
    let to_b = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), b.port());
    send_ok(&a, &datagrams_to(to_b, &slices));
    let got = receive(&b, Family::V4, 300);
    let payloads: Vec<Vec<u8>> = got.into_iter().map(|(p, _)| p).collect();
    assert_eq!(payloads, packets);
}

#[test]
fn mapped_destination_goes_out_over_ipv4() {
    let a = UdpSockets::bind(0, 0).unwrap();
    let b = UdpSockets::bind(0, 0).unwrap();
    let mapped = SocketAddr::new(IpAddr::V6(Ipv4Addr::LOCALHOST.to_ipv6_mapped()), b.port());
    send_ok(&a, &[Transmit::datagram(mapped, b"mapped")]);
    let got = receive(&b, Family::V4, 1);
    assert_eq!(got[0].0, b"mapped");
    assert_eq!(
        got[0].1.src,
        Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), a.port()))
    );
}

#[test]
fn nothing_queued_would_block() {
    let sockets = UdpSockets::bind(0, 0).unwrap();
    let mut bufs = vec![vec![0u8; 64]; 2];
    let mut meta = vec![RecvMeta::default(); 2];
    let err = sockets
        .recv_batch(Family::V4, &mut bufs, &mut meta)
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    assert_eq!(
        sockets.recv_batch(Family::V4, &mut [], &mut meta).unwrap(),
        0
    );
}

#[test]
fn a_source_not_on_the_host_is_dropped_and_the_datagram_still_sent() {
    let a = UdpSockets::bind(0, 0).unwrap();
    let b = UdpSockets::bind(0, 0).unwrap();
    let mut cases = vec![(
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        "192.0.2.77".parse::<IpAddr>().unwrap(),
        Family::V4,
    )];
    if has_ipv6(&a) {
        cases.push((
            IpAddr::V6(Ipv6Addr::LOCALHOST),
            "2001:db8::77".parse().unwrap(),
            Family::V6,
        ));
    }
    for (loopback, foreign, family) in cases {
        let dst = SocketAddr::new(loopback, b.port());
        let gone = LocalSource {
            addr: foreign,
            ifindex: 1,
        };
        match send_one(&a, Transmit::datagram(dst, b"x").from_source(Some(gone))) {
            SendOutcome::SourceDropped { refused, retry } => {
                println!("send from {foreign}: {refused}");
                retry.unwrap();
            }
            other => panic!("expected SourceDropped for {foreign}, got {other:?}"),
        }
        let got = receive(&b, family, 1);
        assert_eq!(got[0].0, b"x");
        assert_eq!(got[0].1.src, Some(SocketAddr::new(loopback, a.port())));
        let segmented = Transmit::segments(dst, b"yz", 1).from_source(Some(gone));
        match send_one(&a, segmented) {
            SendOutcome::SourceDropped { retry: Ok(()), .. } => {}
            other => panic!("expected SourceDropped for segments from {foreign}, got {other:?}"),
        }
        let got: Vec<Vec<u8>> = receive(&b, family, 2).into_iter().map(|(p, _)| p).collect();
        assert_eq!(got, [b"y".to_vec(), b"z".to_vec()]);
    }
    // A source of the other family can never be used for this destination.
    let v6_src = LocalSource {
        addr: IpAddr::V6(Ipv6Addr::LOCALHOST),
        ifindex: 1,
    };
    let v4_dst = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), b.port());
    assert!(matches!(
        send_one(
            &a,
            Transmit::datagram(v4_dst, b"w").from_source(Some(v6_src))
        ),
        SendOutcome::SourceDropped { retry: Ok(()), .. }
    ));
    assert_eq!(receive(&b, Family::V4, 1)[0].0, b"w");
}

#[test]
fn fwmark_is_set_and_read_back() {
    if !root_or_skip("fwmark_is_set_and_read_back") {
        return;
    }
    let sockets = UdpSockets::bind(0, 0x1234).unwrap();
    assert_eq!(sockets.fwmark().unwrap(), 0x1234);
    sockets.set_fwmark(0xdead_beef).unwrap();
    assert_eq!(sockets.fwmark().unwrap(), 0xdead_beef);
    sockets.set_fwmark(0).unwrap();
    assert_eq!(sockets.fwmark().unwrap(), 0);
    let unmarked = UdpSockets::bind(0, 0).unwrap();
    assert_eq!(unmarked.fwmark().unwrap(), 0);
}

#[test]
fn sticky_source_removed_from_the_host_is_reported_unusable() {
    if !root_or_skip("sticky_source_removed_from_the_host_is_reported_unusable") {
        return;
    }
    let ns = TestNetns::create();
    let exe = std::env::current_exe().unwrap();
    let output_path = std::env::temp_dir().join(format!("{}.out", ns.name));
    let output = std::fs::File::create(&output_path).unwrap();
    let mut helper = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(exe)
        .args([
            "--exact",
            "sticky_source_helper",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HELPER_ENV, "1")
        .stdin(Stdio::null())
        .stdout(output.try_clone().unwrap())
        .stderr(output)
        .spawn()
        .unwrap();
    let ok = wait_bounded(&mut helper, Duration::from_secs(30));
    let log = std::fs::read_to_string(&output_path).unwrap_or_default();
    let _ = std::fs::remove_file(&output_path);
    assert!(ok, "helper failed inside the namespace:\n{log}");
    assert!(
        log.contains("sticky source helper passed"),
        "helper did not run:\n{log}"
    );
    for line in log.lines().filter(|line| line.contains("send from")) {
        println!("{line}");
    }
}

/// Runs inside the test namespace (see the test above): learns a source
/// address from a received datagram, uses it, removes it from the host and
/// checks the next send reports it unusable.
#[test]
#[ignore = "helper run by sticky_source_removed_from_the_host_is_reported_unusable"]
fn sticky_source_helper() {
    if std::env::var_os(HELPER_ENV).is_none() {
        return;
    }
    let local_ip = "198.51.100.1";
    ip(&["addr", "add", &format!("{local_ip}/32"), "dev", "lo"]);
    let device = UdpSockets::bind(0, 0).unwrap();
    let peer = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    peer.set_read_timeout(Some(WAIT)).unwrap();
    peer.send_to(b"hello", (local_ip, device.port())).unwrap();

    let got = receive(&device, Family::V4, 1);
    let meta = got[0].1;
    let sticky = meta.local.expect("pktinfo");
    assert_eq!(sticky.addr, local_ip.parse::<IpAddr>().unwrap());
    let peer_addr = meta.src.unwrap();

    send_ok(
        &device,
        &[Transmit::datagram(peer_addr, b"from sticky").from_source(Some(sticky))],
    );
    let mut buf = [0u8; 64];
    let (n, from) = peer.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"from sticky");
    assert_eq!(
        from,
        SocketAddr::new(sticky.addr, device.port()),
        "reply left from the sticky source"
    );

    ip(&["addr", "del", &format!("{local_ip}/32"), "dev", "lo"]);
    let stale = Transmit::datagram(peer_addr, b"stale").from_source(Some(sticky));
    match send_one(&device, stale) {
        SendOutcome::SourceDropped { refused, retry } => {
            println!("send from a removed address: {refused}");
            retry.unwrap();
        }
        other => panic!("expected SourceDropped after the address was removed, got {other:?}"),
    }
    let (n, from) = peer.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"stale", "sent again without the source");
    assert_eq!(from.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
    println!("sticky source helper passed");
}

/// Measures loopback throughput of a `send` of 64 datagrams and
/// `recv_batch` against a `send` per datagram. Run it in release mode:
/// `cargo test --release -p ferroguard --test sys_udp -- --ignored --nocapture loopback_throughput`.
#[test]
#[ignore = "measurement; run by hand in release mode"]
fn loopback_throughput() {
    const TOTAL: usize = 200_000;
    const SIZE: usize = 1420;
    for batch in [1usize, 64] {
        let a = UdpSockets::bind(0, 0).unwrap();
        let b = UdpSockets::bind(0, 0).unwrap();
        let to_b = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), b.port());
        let started = Instant::now();
        let sender = std::thread::spawn(move || {
            let payload = vec![0x5au8; SIZE];
            let packets: Vec<&[u8]> = vec![payload.as_slice(); batch];
            let mut sent = 0;
            while sent < TOTAL {
                send_ok(&a, &datagrams_to(to_b, &packets));
                sent += packets.len();
            }
            sent
        });
        let fd = b.raw_fds().0.unwrap();
        let mut bufs = vec![vec![0u8; 2048]; 64];
        let mut meta = vec![RecvMeta::default(); 64];
        let mut received = 0;
        let mut bytes = 0;
        loop {
            let ready = poll_readable(&[fd], Some(Duration::from_millis(200))).unwrap();
            if ready != [true] {
                break; // the sender is done and the queue is empty
            }
            match b.recv_batch(Family::V4, &mut bufs, &mut meta) {
                Ok(n) => {
                    received += n;
                    bytes += meta[..n].iter().map(|m| m.len).sum::<usize>();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
        }
        let sent = sender.join().unwrap();
        let elapsed = started.elapsed().saturating_sub(Duration::from_millis(200));
        let secs = elapsed.as_secs_f64();
        println!(
            "batch {batch:>2}: sent {sent}, received {received} ({:.0} kpps, {:.2} Gbit/s) in {secs:.3}s",
            received as f64 / secs / 1e3,
            bytes as f64 * 8.0 / secs / 1e9
        );
        assert!(received > 0 && received <= sent);
        assert_eq!(bytes, received * SIZE);
    }
}

/// `count` datagrams of `size` bytes end to end, datagram `i` filled with
/// `i` and its index in the first two bytes, then a `tail`-byte one.
fn segments(count: usize, size: usize, tail: usize) -> Vec<u8> {
    let mut data = Vec::new();
    for (i, len) in (0..count)
        .map(|i| (i, size))
        .chain((tail > 0).then_some((count, tail)))
    {
        let mut datagram = vec![i as u8; len];
        let index = (i as u16).to_be_bytes();
        for (dst, src) in datagram.iter_mut().zip(index) {
            *dst = src;
        }
        data.extend_from_slice(&datagram);
    }
    data
}

/// Receives on `family` until the datagrams (split with
/// [`RecvMeta::datagrams`]) add up to `count`, with `buf_len`-byte buffers;
/// returns the datagrams and the metadata of every buffer.
fn receive_datagrams(
    sockets: &UdpSockets,
    family: Family,
    count: usize,
    buf_len: usize,
) -> (Vec<Vec<u8>>, Vec<RecvMeta>) {
    let fd = match family {
        Family::V4 => sockets.raw_fds().0,
        Family::V6 => sockets.raw_fds().1,
    }
    .expect("family open");
    let deadline = Instant::now() + WAIT;
    let mut datagrams = Vec::new();
    let mut metas = Vec::new();
    let mut bufs = vec![vec![0u8; buf_len]; 4];
    let mut meta = vec![RecvMeta::default(); 4];
    while datagrams.len() < count {
        let left = deadline
            .checked_duration_since(Instant::now())
            .unwrap_or_else(|| panic!("only {} of {count} datagrams", datagrams.len()));
        if poll_readable(&[fd], Some(left)).unwrap() != [true] {
            continue;
        }
        match sockets.recv_batch(family, &mut bufs, &mut meta) {
            Ok(n) => {
                for (buf, meta) in bufs.iter().zip(&meta).take(n) {
                    datagrams.extend(meta.datagrams(buf).map(<[u8]>::to_vec));
                    metas.push(*meta);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => panic!("recv_batch: {e}"),
        }
    }
    (datagrams, metas)
}

/// The loopback address of `family`.
fn loopback(family: Family) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::LOCALHOST),
        Family::V6 => IpAddr::V6(Ipv6Addr::LOCALHOST),
    }
}

/// The families to test: IPv4, and IPv6 when the system has it.
fn families(sockets: &UdpSockets) -> Vec<Family> {
    let mut families = vec![Family::V4];
    if has_ipv6(sockets) {
        families.push(Family::V6);
    }
    families
}

#[test]
fn offloads_are_probed_at_bind() {
    let sockets = UdpSockets::bind(0, 0).unwrap();
    // Linux 4.18+ has UDP_SEGMENT and 5.12+ a readable UDP_GRO; the test
    // machines run far newer kernels, so both must be on.
    assert!(sockets.gso_supported());
    assert!(sockets.gso_enabled(Family::V4));
    assert!(sockets.gro_enabled(Family::V4));
    sockets.disable_gso();
    assert!(!sockets.gso_supported());
    assert!(!sockets.gso_enabled(Family::V4));
    sockets.disable_gro().unwrap();
    assert!(!sockets.gro_enabled(Family::V4));
    assert_eq!(MAX_GSO_SEGMENTS, 64);
}

#[test]
fn gso_send_arrives_as_separate_datagrams_without_gro() {
    let a = UdpSockets::bind(0, 0).unwrap();
    let b = UdpSockets::bind(0, 0).unwrap();
    b.disable_gro().unwrap();
    assert!(a.gso_supported());
    for family in families(&a) {
        let data = segments(10, 1200, 0);
        let to_b = SocketAddr::new(loopback(family), b.port());
        send_ok(&a, &[Transmit::segments(to_b, &data, 1200)]);
        let (datagrams, metas) = receive_datagrams(&b, family, 10, 2048);
        assert_eq!(datagrams.len(), 10);
        assert_eq!(metas.len(), 10, "one datagram per buffer");
        assert!(metas
            .iter()
            .all(|m| m.segment_size.is_none() && m.len == 1200));
        assert_eq!(datagrams.concat(), data);
        assert!(a.gso_enabled(family), "loopback takes GSO sends");
    }
}

#[test]
fn gso_send_arrives_as_one_buffer_with_gro() {
    let a = UdpSockets::bind(0, 0).unwrap();
    let b = UdpSockets::bind(0, 0).unwrap();
    for family in families(&a) {
        assert!(b.gro_enabled(family));
        let data = segments(10, 1200, 0);
        let to_b = SocketAddr::new(loopback(family), b.port());
        send_ok(&a, &[Transmit::segments(to_b, &data, 1200)]);
        let (datagrams, metas) = receive_datagrams(&b, family, 10, GRO_BUFFER_BYTES);
        assert_eq!(metas.len(), 1, "one coalesced buffer: {metas:?}");
        assert_eq!(metas[0].segment_size, Some(1200));
        assert_eq!(metas[0].len, 12_000);
        assert_eq!(
            metas[0].src,
            Some(SocketAddr::new(loopback(family), a.port()))
        );
        assert!(metas[0].local.is_some(), "pktinfo still reported");
        assert_eq!(datagrams.len(), 10);
        assert_eq!(datagrams.concat(), data);
        assert!(b.gro_enabled(family), "large buffers keep GRO on");
    }
}

#[test]
fn a_short_tail_and_long_input_are_delivered_in_order() {
    let a = UdpSockets::bind(0, 0).unwrap();
    let b = UdpSockets::bind(0, 0).unwrap();
    let to_b = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), b.port());
    // 9 full segments and a 500-byte tail.
    let data = segments(9, 1200, 500);
    send_ok(&a, &[Transmit::segments(to_b, &data, 1200)]);
    let (datagrams, metas) = receive_datagrams(&b, Family::V4, 10, GRO_BUFFER_BYTES);
    assert_eq!(datagrams.len(), 10);
    assert_eq!(datagrams[9].len(), 500);
    assert_eq!(datagrams.concat(), data);
    assert_eq!(metas.len(), 1);

    // 300 datagrams of 1420 bytes: more than 64 segments and 65507 bytes
    // per message, so several GSO messages in one sendmmsg.
    let data = segments(299, 1420, 77);
    send_ok(&a, &[Transmit::segments(to_b, &data, 1420)]);
    let (datagrams, metas) = receive_datagrams(&b, Family::V4, 300, GRO_BUFFER_BYTES);
    assert_eq!(datagrams.len(), 300);
    assert_eq!(datagrams.concat(), data);
    assert!(
        metas.len() >= 300usize.div_ceil(46),
        "{} buffers",
        metas.len()
    );
    assert!(metas.iter().all(|m| m.len <= 46 * 1420));

    // Several runs with different sizes in one call.
    let first = segments(3, 1000, 10);
    let second = segments(5, 600, 0);
    let runs = [
        Transmit::segments(to_b, &first, 1000),
        Transmit::segments(to_b, &second, 600),
    ];
    send_ok(&a, &runs);
    let (datagrams, _) = receive_datagrams(&b, Family::V4, 9, GRO_BUFFER_BYTES);
    assert_eq!(datagrams.len(), 9);
    assert_eq!(datagrams[..4].concat(), first);
    assert_eq!(datagrams[4..].concat(), second);
}

#[test]
fn forced_fallback_still_delivers() {
    let a = UdpSockets::bind(0, 0).unwrap();
    let b = UdpSockets::bind(0, 0).unwrap();
    a.disable_gso();
    assert!(!a.gso_supported());
    for family in families(&a) {
        let data = segments(10, 1200, 333);
        let to_b = SocketAddr::new(loopback(family), b.port());
        send_ok(&a, &[Transmit::segments(to_b, &data, 1200)]);
        let (datagrams, metas) = receive_datagrams(&b, family, 11, GRO_BUFFER_BYTES);
        assert_eq!(datagrams.len(), 11);
        assert_eq!(datagrams.concat(), data);
        // Loopback does not coalesce separately sent datagrams.
        assert!(metas.iter().all(|m| m.segment_size.is_none()), "{metas:?}");
    }
}

#[test]
fn small_buffers_turn_gro_off() {
    let a = UdpSockets::bind(0, 0).unwrap();
    let b = UdpSockets::bind(0, 0).unwrap();
    assert!(b.gro_enabled(Family::V4));
    let mut bufs = vec![vec![0u8; 2048]; 2];
    let mut meta = vec![RecvMeta::default(); 2];
    let idle = b.recv_batch(Family::V4, &mut bufs, &mut meta);
    assert_eq!(idle.unwrap_err().kind(), io::ErrorKind::WouldBlock);
    assert!(!b.gro_enabled(Family::V4));
    let data = segments(4, 1200, 0);
    let to_b = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), b.port());
    send_ok(&a, &[Transmit::segments(to_b, &data, 1200)]);
    let (datagrams, metas) = receive_datagrams(&b, Family::V4, 4, 2048);
    assert_eq!(metas.len(), 4);
    assert_eq!(datagrams.concat(), data);
}

#[test]
fn segment_sends_check_their_input_and_source() {
    let a = UdpSockets::bind(0, 0).unwrap();
    let b = UdpSockets::bind(0, 0).unwrap();
    let to_b = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), b.port());
    match send_one(&a, Transmit::segments(to_b, b"abc", 0)) {
        SendOutcome::Failed(e) => assert_eq!(e.kind(), io::ErrorKind::InvalidInput),
        other => panic!("segment size 0 accepted: {other:?}"),
    }
    send_ok(&a, &[Transmit::segments(to_b, &[], 1200)]);
    let gone = LocalSource {
        addr: "192.0.2.77".parse().unwrap(),
        ifindex: 1,
    };
    let data = segments(3, 1000, 0);
    assert!(matches!(
        send_one(
            &a,
            Transmit::segments(to_b, &data, 1000).from_source(Some(gone))
        ),
        SendOutcome::SourceDropped { retry: Ok(()), .. }
    ));
    let (datagrams, _) = receive_datagrams(&b, Family::V4, 3, GRO_BUFFER_BYTES);
    assert_eq!(datagrams.concat(), data, "sent again without the source");
    let here = LocalSource {
        addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
        ifindex: 1,
    };
    send_ok(
        &a,
        &[Transmit::segments(to_b, &data, 1000).from_source(Some(here))],
    );
    let (datagrams, metas) = receive_datagrams(&b, Family::V4, 3, GRO_BUFFER_BYTES);
    assert_eq!(datagrams.concat(), data);
    assert_eq!(metas[0].src, Some(SocketAddr::new(here.addr, a.port())));
}

/// Asserts that nothing more is queued on `family` of `sockets` (loopback
/// delivers during the send, so whatever was sent is queued already).
fn assert_nothing_queued(sockets: &UdpSockets, family: Family) {
    let mut bufs = vec![vec![0u8; 2048]; 4];
    let mut meta = vec![RecvMeta::default(); 4];
    match sockets.recv_batch(family, &mut bufs, &mut meta) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        other => panic!("unexpected datagrams on {family:?}: {other:?}"),
    }
}

/// A pktinfo source on `addr`.
fn source(addr: IpAddr) -> LocalSource {
    LocalSource { addr, ifindex: 1 }
}

#[test]
fn datagrams_to_many_destinations_arrive_in_order_per_destination() {
    let a = UdpSockets::bind(0, 0).unwrap();
    let receivers = [
        UdpSockets::bind(0, 0).unwrap(),
        UdpSockets::bind(0, 0).unwrap(),
    ];
    // 127.0.0.2 is on lo as well (all of 127/8 is), and shows that each
    // datagram leaves from its own source.
    let second_v4 = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    let mut routes = Vec::new(); // (receiver, family, source of odd datagrams)
    for family in families(&a) {
        let odd_source = match family {
            Family::V4 => second_v4,
            Family::V6 => loopback(family),
        };
        for receiver in 0..receivers.len() {
            routes.push((receiver, family, odd_source));
        }
    }
    // More than MAX_BATCH (128) per family: the sends take several calls.
    let count = 150 * routes.len();
    let payloads: Vec<Vec<u8>> = (0..count as u32)
        .map(|i| i.to_be_bytes().to_vec())
        .collect();
    let datagrams: Vec<Transmit<'_>> = payloads
        .iter()
        .enumerate()
        .map(|(i, payload)| {
            let (receiver, family, odd_source) = routes[i % routes.len()];
            let dst = SocketAddr::new(loopback(family), receivers[receiver].port());
            Transmit::datagram(dst, payload).from_source((i % 2 == 1).then(|| source(odd_source)))
        })
        .collect();
    send_ok(&a, &datagrams);
    for (route, &(receiver, family, odd_source)) in routes.iter().enumerate() {
        let expected: Vec<usize> = (route..count).step_by(routes.len()).collect();
        let got = receive(&receivers[receiver], family, expected.len());
        for ((payload, meta), &i) in got.iter().zip(&expected) {
            assert_eq!(
                payload, &payloads[i],
                "to receiver {receiver} over {family:?}"
            );
            let from = if i % 2 == 1 {
                odd_source
            } else {
                loopback(family)
            };
            assert_eq!(meta.src, Some(SocketAddr::new(from, a.port())));
        }
        assert_nothing_queued(&receivers[receiver], family);
    }
}

#[test]
fn a_refused_datagram_does_not_stop_the_batch() {
    let a = UdpSockets::bind(0, 0).unwrap();
    let b = UdpSockets::bind(0, 0).unwrap();
    let oversized = vec![0u8; 70_000]; // above UDP's 65 535: EMSGSIZE
    let mut cases: Vec<(Family, IpAddr, IpAddr)> = vec![(
        Family::V4,
        "192.0.2.77".parse().unwrap(),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    )];
    if has_ipv6(&a) {
        cases.push((
            Family::V6,
            "2001:db8::77".parse().unwrap(),
            IpAddr::V4(Ipv4Addr::LOCALHOST),
        ));
    }
    // Per family: sent; source not on the host (the kernel refuses it);
    // usable source; oversized with a usable source (not the source's
    // fault: not retried); source of the other family (refused before any
    // system call); sent. The families interleave in the batch.
    let labels = [
        "plain",
        "foreign",
        "here",
        "oversized",
        "other-family",
        "last",
    ];
    let mut payloads = Vec::new();
    let mut datagrams = Vec::new();
    for (step, label) in labels.iter().enumerate() {
        for &(family, foreign, other_family) in &cases {
            let here = loopback(family);
            let (data, src) = match step {
                0 | 5 => (format!("{family:?} {label}").into_bytes(), None),
                1 => (format!("{family:?} {label}").into_bytes(), Some(foreign)),
                2 => (format!("{family:?} {label}").into_bytes(), Some(here)),
                3 => (oversized.clone(), Some(here)),
                _ => (
                    format!("{family:?} {label}").into_bytes(),
                    Some(other_family),
                ),
            };
            payloads.push((family, step, data, src));
        }
    }
    for (family, _, data, src) in &payloads {
        let dst = SocketAddr::new(loopback(*family), b.port());
        datagrams.push(Transmit::datagram(dst, data).from_source(src.map(source)));
    }

    let outcomes = a.send(&datagrams);
    assert_eq!(outcomes.len(), datagrams.len());
    for ((family, step, _, _), outcome) in payloads.iter().zip(&outcomes) {
        let what = format!("{family:?} {}: {outcome:?}", labels[*step]);
        match (step, outcome) {
            (0 | 2 | 5, SendOutcome::Sent) => {}
            (1 | 4, SendOutcome::SourceDropped { retry: Ok(()), .. }) => println!("{what}"),
            (3, SendOutcome::Failed(e)) => {
                assert_eq!(e.raw_os_error(), Some(libc::EMSGSIZE), "{what}")
            }
            _ => panic!("unexpected outcome for {what}"),
        }
    }
    for &(family, _, _) in &cases {
        let expected: Vec<&Vec<u8>> = payloads
            .iter()
            .filter(|(f, step, _, _)| *f == family && *step != 3)
            .map(|(_, _, data, _)| data)
            .collect();
        let got = receive(&b, family, expected.len());
        let got: Vec<&Vec<u8>> = got.iter().map(|(payload, _)| payload).collect();
        // In order: a dropped source's datagram went again at once.
        assert_eq!(got, expected);
        assert_nothing_queued(&b, family);
    }
}

/// Measures loopback throughput with 1420-byte datagrams: sendmmsg of 64
/// datagrams vs GSO sends (46 datagrams per message: one run per call, or 4
/// runs per `sendmmsg`), received with and without GRO. The sender runs
/// for one second; the sender rate and the delivered rate are reported
/// (loopback drops what the receiver cannot take). Run it in release mode:
/// `cargo test --release -p ferroguard --test sys_udp -- --ignored --nocapture gso_throughput`.
#[test]
#[ignore = "measurement; run by hand in release mode"]
fn gso_throughput() {
    const SIZE: usize = 1420;
    const SEND_TIME: Duration = Duration::from_secs(1);
    #[derive(Clone, Copy, Debug)]
    enum Send {
        Sendmmsg64,
        Gso46,
        Gso4x46,
    }
    for (send, gro) in [
        (Send::Sendmmsg64, false),
        (Send::Sendmmsg64, true),
        (Send::Gso46, false),
        (Send::Gso46, true),
        (Send::Gso4x46, false),
        (Send::Gso4x46, true),
    ] {
        let a = UdpSockets::bind(0, 0).unwrap();
        let b = UdpSockets::bind(0, 0).unwrap();
        if !gro {
            b.disable_gro().unwrap();
        }
        let to_b = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), b.port());
        let sender = std::thread::spawn(move || {
            let payload = vec![0x5au8; SIZE * 46];
            let packets: Vec<&[u8]> = payload.chunks(SIZE).cycle().take(64).collect();
            let run = Transmit::segments(to_b, &payload, SIZE);
            let runs = [run; 4];
            let started = Instant::now();
            let mut sent = 0;
            while started.elapsed() < SEND_TIME {
                match send {
                    Send::Sendmmsg64 => {
                        send_ok(&a, &datagrams_to(to_b, &packets));
                        sent += packets.len();
                    }
                    Send::Gso46 => {
                        send_ok(&a, &runs[..1]);
                        sent += 46;
                    }
                    Send::Gso4x46 => {
                        send_ok(&a, &runs);
                        sent += 4 * 46;
                    }
                }
            }
            (sent, started.elapsed())
        });
        let started = Instant::now();
        let fd = b.raw_fds().0.unwrap();
        let buf_len = if gro { GRO_BUFFER_BYTES } else { 2048 };
        let slots = if gro { 8 } else { 64 };
        let mut bufs = vec![vec![0u8; buf_len]; slots];
        let mut meta = vec![RecvMeta::default(); slots];
        let (mut received, mut bytes, mut calls) = (0usize, 0usize, 0usize);
        loop {
            let ready = poll_readable(&[fd], Some(Duration::from_millis(200))).unwrap();
            if ready != [true] {
                break; // the sender is done and the queue is empty
            }
            match b.recv_batch(Family::V4, &mut bufs, &mut meta) {
                Ok(n) => {
                    calls += 1;
                    for (buf, meta) in bufs.iter().zip(&meta).take(n) {
                        for datagram in meta.datagrams(buf) {
                            received += 1;
                            bytes += datagram.len();
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
        }
        let (sent, send_time) = sender.join().unwrap();
        let recv_secs = started
            .elapsed()
            .saturating_sub(Duration::from_millis(200))
            .as_secs_f64();
        let send_secs = send_time.as_secs_f64();
        println!(
            "{send:?} -> {}: sent {:.0} kpps ({:.2} Gbit/s); delivered {:.0} kpps ({:.2} Gbit/s), {:.1}% of sent, {:.1} datagrams per recv call",
            if gro { "GRO   " } else { "no GRO" },
            sent as f64 / send_secs / 1e3,
            (sent * SIZE) as f64 * 8.0 / send_secs / 1e9,
            received as f64 / recv_secs / 1e3,
            bytes as f64 * 8.0 / recv_secs / 1e9,
            received as f64 * 100.0 / sent as f64,
            received as f64 / calls.max(1) as f64,
        );
        assert!(received > 0 && received <= sent);
        assert_eq!(bytes, received * SIZE);
    }
}
