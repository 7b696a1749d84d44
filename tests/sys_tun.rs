//! Integration tests of `sys::tun` against the real kernel. They need root
//! (they create TUN interfaces and network namespaces) and are skipped with a
//! message otherwise. Every interface and namespace is removed by a guard,
//! also when a test fails, and every wait is bounded.

#[path = "sys_common.rs"]
mod common;

use common::*;
use ferroguard::sys::poll_readable;
use ferroguard::sys::tun::{
    Tun, TunOffloads, TunOptions, VnetHeader, DEFAULT_MTU, MAX_OFFLOAD_READ, VNET_GSO_NONE,
    VNET_GSO_TCPV4, VNET_GSO_UDP_L4, VNET_HDR_LEN,
};
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a test waits for any single event.
const WAIT: Duration = Duration::from_secs(5);

/// Reads packets until `wanted` accepts one or `WAIT` passes.
fn read_until(tun: &Tun, wanted: impl Fn(&[u8]) -> bool) -> Option<Vec<u8>> {
    let deadline = Instant::now() + WAIT;
    let mut buf = vec![0u8; 2048];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        if poll_readable(&[tun.as_raw_fd()], Some(left)).unwrap() != [true] {
            return None;
        }
        let n = tun.read(&mut buf).expect("read from TUN");
        if wanted(&buf[..n]) {
            return Some(buf[..n].to_vec());
        }
    }
    None
}

/// The Internet checksum of `data`.
fn internet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Whether `packet` is an IPv4 ICMP echo request (header without options).
fn is_icmp_echo_request(packet: &[u8]) -> bool {
    packet.len() >= 28 && packet[0] == 0x45 && packet[9] == 1 && packet[20] == 8
}

/// The echo reply to an echo request: addresses swapped, type 0, both
/// checksums recomputed.
fn echo_reply(request: &[u8]) -> Vec<u8> {
    let mut reply = request.to_vec();
    reply[12..16].copy_from_slice(&request[16..20]);
    reply[16..20].copy_from_slice(&request[12..16]);
    reply[8] = 64;
    reply[10..12].fill(0);
    let header_sum = internet_checksum(&reply[..20]);
    reply[10..12].copy_from_slice(&header_sum.to_be_bytes());
    reply[20] = 0;
    reply[22..24].fill(0);
    let icmp_sum = internet_checksum(&reply[20..]);
    reply[22..24].copy_from_slice(&icmp_sum.to_be_bytes());
    reply
}

/// Blocks a thread in `read` on `tun`, runs `delete`, and returns what the
/// blocked read returned.
fn blocked_read_result(tun: &Arc<Tun>, delete: impl FnOnce()) -> io::Result<usize> {
    let reader_tun = tun.clone();
    let reader = std::thread::spawn(move || reader_tun.read(&mut [0u8; 2048]));
    std::thread::sleep(Duration::from_millis(100));
    delete();
    let deadline = Instant::now() + WAIT;
    while !reader.is_finished() {
        assert!(
            Instant::now() < deadline,
            "read still blocked after the link was deleted"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    reader.join().unwrap()
}

/// Checks that every use of a TUN whose interface is gone reports it.
fn assert_gone_everywhere(tun: &Tun) {
    let ready = poll_readable(&[tun.as_raw_fd()], Some(WAIT)).unwrap();
    assert_eq!(ready, [true], "poll must wake up for a deleted interface");
    let read_err = tun.read(&mut [0u8; 2048]).unwrap_err();
    assert!(Tun::is_gone(&read_err), "read after deletion: {read_err:?}");
    let write_err = tun.write(&[0x45, 0, 0, 20]).unwrap_err();
    assert!(
        Tun::is_gone(&write_err),
        "write after deletion: {write_err:?}"
    );
    assert!(tun.mtu().is_err());
}

/// Starts one ping (5 s limit) to 192.0.2.2 from inside namespace `ns`.
fn spawn_ping(ns: &str) -> std::process::Child {
    Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "ping",
            "-n",
            "-c",
            "1",
            "-W",
            "5",
            "192.0.2.2",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn invalid_names_are_refused_before_any_system_call() {
    for name in ["", ".", "..", "a/b", "has space", "1234567890123456", "a:b"] {
        let err = Tun::create(name).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{name:?}");
    }
}

#[test]
fn create_sets_name_and_default_mtu_and_set_mtu_works() {
    if !root_or_skip("create_sets_name_and_default_mtu_and_set_mtu_works") {
        return;
    }
    let name = unique_name("fgt");
    let tun = Tun::create(&name).unwrap();
    assert_eq!(tun.name(), name);
    assert_eq!(tun.mtu().unwrap(), DEFAULT_MTU);
    assert_eq!(link_mtu(None, &name), 1420);
    assert!(ip(&["-d", "-o", "link", "show", "dev", &name]).contains("tun"));

    tun.set_mtu(1380).unwrap();
    assert_eq!(tun.mtu().unwrap(), 1380);
    assert_eq!(link_mtu(None, &name), 1380);
    assert!(
        tun.ipv4_address().is_none(),
        "a new interface has no address"
    );

    // Queries follow a rename; name() keeps the creation name.
    let renamed = format!("{name}r");
    ip(&["link", "set", "dev", &name, "name", &renamed]);
    tun.set_mtu(1360).unwrap();
    assert_eq!(link_mtu(None, &renamed), 1360);
    assert_eq!(tun.mtu().unwrap(), 1360);
    assert_eq!(tun.name(), name);

    drop(tun);
    assert!(
        !ip_output(&["link", "show", "dev", &renamed])
            .status
            .success(),
        "drop deletes the interface"
    );
}

#[test]
fn name_template_is_completed_by_the_kernel() {
    if !root_or_skip("name_template_is_completed_by_the_kernel") {
        return;
    }
    let prefix = unique_name("fgp");
    let tun = Tun::create(&format!("{prefix}%d")).unwrap();
    assert!(tun.name().starts_with(&prefix), "{}", tun.name());
    assert!(!tun.name().contains('%'));
    assert_eq!(link_mtu(None, tun.name()), 1420);
}

#[test]
fn name_in_use_gives_a_clear_error() {
    if !root_or_skip("name_in_use_gives_a_clear_error") {
        return;
    }
    let name = unique_name("fgt");
    let _first = Tun::create(&name).unwrap();
    let err = Tun::create(&name).unwrap_err();
    assert!(err.to_string().contains("in use"), "{err}");
    assert!(err.to_string().contains(&name), "{err}");

    let veth = TestLink {
        name: unique_name("fgv"),
    };
    let peer = unique_name("fgw");
    ip(&[
        "link", "add", &veth.name, "type", "veth", "peer", "name", &peer,
    ]);
    let err = Tun::create(&veth.name).unwrap_err();
    assert!(err.to_string().contains("not a TUN"), "{err}");
}

#[test]
fn ping_through_tun_moved_into_a_namespace() {
    if !root_or_skip("ping_through_tun_moved_into_a_namespace") {
        return;
    }
    let ns = TestNetns::create();
    let name = unique_name("fgt");
    let tun = Arc::new(Tun::create(&name).unwrap());
    ip(&["link", "set", &name, "netns", &ns.name]);
    ns.exec(&["ip", "addr", "add", "192.0.2.1/24", "dev", &name]);
    ns.exec(&["ip", "link", "set", &name, "up"]);

    // Queries follow the interface into its namespace.
    assert_eq!(tun.mtu().unwrap(), 1420);
    assert_eq!(tun.ipv4_address(), Some(Ipv4Addr::new(192, 0, 2, 1)));
    tun.set_mtu(1300).unwrap();
    assert_eq!(link_mtu(Some(&ns), &name), 1300);
    ns.exec(&["ip", "link", "set", &name, "mtu", "1280"]);
    assert_eq!(tun.mtu().unwrap(), 1280);

    // An unrelated interface taking the old name here must not confuse them.
    let namesake = Tun::create(&name).unwrap();
    namesake.set_mtu(1400).unwrap();
    assert_eq!(tun.mtu().unwrap(), 1280);
    assert_eq!(namesake.mtu().unwrap(), 1400);
    drop(namesake);

    let mut ping = spawn_ping(&ns.name);
    let request = read_until(&tun, is_icmp_echo_request);
    let Some(request) = request else {
        let _ = ping.kill();
        let _ = ping.wait();
        panic!("no ICMP echo request came out of the TUN");
    };
    assert_eq!(request[12..16], [192, 0, 2, 1], "source");
    assert_eq!(request[16..20], [192, 0, 2, 2], "destination");
    assert_eq!(internet_checksum(&request[..20]), 0, "IPv4 header checksum");
    let reply = echo_reply(&request);
    assert_eq!(tun.write(&reply).unwrap(), reply.len());
    assert!(wait_bounded(&mut ping, WAIT), "ping did not see the reply");

    let result = blocked_read_result(&tun, || {
        ns.exec(&["ip", "link", "del", &name]);
    });
    let err = result.unwrap_err();
    assert!(Tun::is_gone(&err), "blocked read after deletion: {err:?}");
    assert_gone_everywhere(&tun);
}

#[test]
fn deleting_the_link_here_is_detected() {
    if !root_or_skip("deleting_the_link_here_is_detected") {
        return;
    }
    let name = unique_name("fgt");
    let tun = Arc::new(Tun::create(&name).unwrap());
    let result = blocked_read_result(&tun, || {
        ip(&["link", "del", &name]);
    });
    let err = result.unwrap_err();
    assert!(Tun::is_gone(&err), "blocked read after deletion: {err:?}");
    assert_gone_everywhere(&tun);
}

#[test]
fn deleting_the_namespace_deletes_the_interface() {
    if !root_or_skip("deleting_the_namespace_deletes_the_interface") {
        return;
    }
    let ns = TestNetns::create();
    let name = unique_name("fgt");
    let tun = Arc::new(Tun::create(&name).unwrap());
    ip(&["link", "set", &name, "netns", &ns.name]);
    let result = blocked_read_result(&tun, || {
        ip(&["netns", "del", &ns.name]);
    });
    let err = result.unwrap_err();
    assert!(
        Tun::is_gone(&err),
        "blocked read after namespace deletion: {err:?}"
    );
    assert_gone_everywhere(&tun);
}

/// Reads (header, packet) pairs from a header-mode TUN until `wanted`
/// accepts one or `WAIT` passes; returns every accepted pair once `done`
/// says the collection is complete.
fn read_vnet_until(
    tun: &Tun,
    wanted: impl Fn(&VnetHeader, &[u8]) -> bool,
    done: impl Fn(&[(VnetHeader, Vec<u8>)]) -> bool,
) -> Vec<(VnetHeader, Vec<u8>)> {
    let deadline = Instant::now() + WAIT;
    let mut buf = vec![0u8; MAX_OFFLOAD_READ];
    let mut accepted = Vec::new();
    while !done(&accepted) {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            break;
        };
        if poll_readable(&[tun.as_raw_fd()], Some(left)).unwrap() != [true] {
            break;
        }
        let n = tun.read(&mut buf).expect("read from TUN");
        let header = VnetHeader::decode(&buf[..n]).expect("a virtio-net header");
        let packet = &buf[VNET_HDR_LEN..n];
        if wanted(&header, packet) {
            accepted.push((header, packet.to_vec()));
        }
    }
    accepted
}

/// Whether `packet` is IPv4 (no options) with protocol `proto` to `dst`.
fn is_ipv4_to(packet: &[u8], proto: u8, dst: [u8; 4]) -> bool {
    packet.len() >= 20 && packet[0] == 0x45 && packet[9] == proto && packet[16..20] == dst
}

/// A header-mode TUN (with offloads if `offloads`), moved into `ns` with
/// 192.0.2.1/24.
fn vnet_tun_in(ns: &TestNetns, offloads: bool) -> (Tun, String) {
    let name = unique_name("fgo");
    let options = TunOptions {
        vnet_hdr: true,
        offloads,
    };
    let tun = Tun::create_with(&name, options).unwrap();
    ip(&["link", "set", &name, "netns", &ns.name]);
    ns.exec(&["ip", "addr", "add", "192.0.2.1/24", "dev", &name]);
    ns.exec(&["ip", "link", "set", &name, "up"]);
    (tun, name)
}

#[test]
fn offload_tun_reports_its_mode() {
    if !root_or_skip("offload_tun_reports_its_mode") {
        return;
    }
    let plain = Tun::create(&unique_name("fgt")).unwrap();
    assert_eq!(plain.offloads(), TunOffloads::default());
    assert_eq!(plain.header_len(), 0);
    let header_only = TunOptions {
        vnet_hdr: true,
        offloads: false,
    };
    let tun = Tun::create_with(&unique_name("fgt"), header_only).unwrap();
    let expected = TunOffloads {
        vnet_hdr: true,
        tso: false,
        uso: false,
    };
    assert_eq!(tun.offloads(), expected);
    assert_eq!(tun.header_len(), VNET_HDR_LEN);
    let all = TunOptions {
        vnet_hdr: true,
        offloads: true,
    };
    let tun = Tun::create_with(&unique_name("fgt"), all).unwrap();
    let offloads = tun.offloads();
    assert!(offloads.vnet_hdr && offloads.tso, "{offloads:?}");
    // USO exists since Linux 6.2; the test machines run newer kernels.
    assert!(offloads.uso, "{offloads:?}");
    assert_eq!(tun.mtu().unwrap(), DEFAULT_MTU);
}

#[test]
fn udp_gso_send_arrives_as_one_super_packet() {
    if !root_or_skip("udp_gso_send_arrives_as_one_super_packet") {
        return;
    }
    udp_gso_send_into_vnet_tun(true);
}

#[test]
fn udp_gso_send_without_offloads_arrives_as_datagrams() {
    if !root_or_skip("udp_gso_send_without_offloads_arrives_as_datagrams") {
        return;
    }
    udp_gso_send_into_vnet_tun(false);
}

/// Sends 10 × 1200 bytes with UDP GSO from inside a namespace into a
/// header-mode TUN and checks how they come out: one read with
/// `VNET_GSO_UDP_L4` when USO is on, else ten plain reads.
fn udp_gso_send_into_vnet_tun(offloads: bool) {
    let ns = TestNetns::create();
    let (tun, _name) = vnet_tun_in(&ns, offloads);
    let uso = tun.offloads().uso;
    assert_eq!(
        uso, offloads,
        "USO is on exactly when offloads are asked for"
    );
    ns.exec(&[
        "python3",
        "-c",
        "import socket\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         s.setsockopt(17, 103, 1200)  # SOL_UDP, UDP_SEGMENT\n\
         s.sendto(bytes(range(200)) * 60, ('192.0.2.2', 9))",
    ]);
    let expected_reads = if uso { 1 } else { 10 };
    let reads = read_vnet_until(
        &tun,
        |_, packet| is_ipv4_to(packet, 17, [192, 0, 2, 2]),
        |got| got.len() >= expected_reads,
    );
    assert_eq!(reads.len(), expected_reads, "USO {uso}");
    let payload: Vec<u8> = reads.iter().flat_map(|(_, p)| p[28..].to_vec()).collect();
    let sent: Vec<u8> = (0..200u8).cycle().take(12_000).collect();
    assert_eq!(payload, sent);
    let (header, packet) = &reads[0];
    println!("USO {uso}: first read {header:?}, {} bytes", packet.len());
    if uso {
        assert_eq!(header.gso_type, VNET_GSO_UDP_L4);
        assert_eq!(header.gso_size, 1200);
        assert_eq!(packet.len(), 28 + 12_000);
    } else {
        assert!(reads
            .iter()
            .all(|(h, p)| h.gso_type == VNET_GSO_NONE && p.len() == 1228));
    }
}

/// The IPv4 TCP SYN-ACK answering `syn` (addresses and ports swapped, our
/// sequence number 1000, MSS option 1380), checksums computed.
fn syn_ack(syn: &[u8]) -> Vec<u8> {
    let mut packet = vec![0u8; 44];
    packet[0] = 0x45;
    packet[2..4].copy_from_slice(&44u16.to_be_bytes());
    packet[6] = 0x40; // don't fragment
    packet[8] = 64;
    packet[9] = 6;
    packet[12..16].copy_from_slice(&syn[16..20]);
    packet[16..20].copy_from_slice(&syn[12..16]);
    let header_sum = internet_checksum(&packet[..20]);
    packet[10..12].copy_from_slice(&header_sum.to_be_bytes());
    let client_seq = u32::from_be_bytes(syn[24..28].try_into().unwrap());
    let tcp = &mut packet[20..];
    tcp[0..2].copy_from_slice(&syn[22..24]);
    tcp[2..4].copy_from_slice(&syn[20..22]);
    tcp[4..8].copy_from_slice(&1000u32.to_be_bytes());
    tcp[8..12].copy_from_slice(&client_seq.wrapping_add(1).to_be_bytes());
    tcp[12] = 6 << 4; // 24-byte header
    tcp[13] = 0x12; // SYN, ACK
    tcp[14..16].copy_from_slice(&65535u16.to_be_bytes());
    tcp[20..24].copy_from_slice(&[2, 4, 0x05, 0x64]); // MSS 1380
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&syn[16..20]);
    pseudo.extend_from_slice(&syn[12..16]);
    pseudo.extend_from_slice(&[0, 6, 0, 24]);
    pseudo.extend_from_slice(&packet[20..]);
    let tcp_sum = internet_checksum(&pseudo);
    packet[36..38].copy_from_slice(&tcp_sum.to_be_bytes());
    packet
}

#[test]
fn tcp_through_an_offload_tun_arrives_as_super_packets() {
    if !root_or_skip("tcp_through_an_offload_tun_arrives_as_super_packets") {
        return;
    }
    let ns = TestNetns::create();
    let (tun, _name) = vnet_tun_in(&ns, true);
    let mut client = Command::new("ip")
        .args(["netns", "exec", &ns.name, "python3", "-c"])
        .arg(
            "import socket\n\
             s = socket.create_connection(('192.0.2.2', 5001), timeout=5)\n\
             s.sendall(b'z' * 100000)",
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let is_tcp = |packet: &[u8]| is_ipv4_to(packet, 6, [192, 0, 2, 2]) && packet.len() >= 40;
    let syns = read_vnet_until(
        &tun,
        |_, packet| is_tcp(packet) && packet[33] & 0x12 == 0x02,
        |got| !got.is_empty(),
    );
    let Some((_, syn)) = syns.first() else {
        let _ = client.kill();
        let _ = client.wait();
        panic!("no SYN came out of the TUN");
    };
    let answer = syn_ack(syn);
    assert_eq!(tun.write_packet(&answer).unwrap(), answer.len());
    // The client may send up to its initial window (10 segments) at once:
    // with TSO that is one super-packet larger than the MTU.
    let data = read_vnet_until(
        &tun,
        |header, packet| is_tcp(packet) && header.gso_type & 0x7f == VNET_GSO_TCPV4,
        |got| !got.is_empty(),
    );
    let _ = client.kill();
    let _ = client.wait();
    let (header, packet) = data
        .first()
        .expect("no TCP super-packet came out of the TUN");
    println!("TCP super-packet: {header:?}, {} bytes", packet.len());
    assert!(header.gso_size > 0 && header.gso_size <= 1380);
    assert!(packet.len() > DEFAULT_MTU as usize);
    let payload = &packet[40..];
    assert!(payload.len() > usize::from(header.gso_size));
    assert!(payload.iter().all(|&b| b == b'z'));
}

#[test]
fn ping_through_a_header_mode_tun() {
    if !root_or_skip("ping_through_a_header_mode_tun") {
        return;
    }
    let ns = TestNetns::create();
    let (tun, _name) = vnet_tun_in(&ns, true);
    for use_write_packet in [false, true] {
        let mut ping = spawn_ping(&ns.name);
        let requests = read_vnet_until(
            &tun,
            |_, packet| is_icmp_echo_request(packet),
            |got| !got.is_empty(),
        );
        let Some((header, request)) = requests.first() else {
            let _ = ping.kill();
            let _ = ping.wait();
            panic!("no ICMP echo request came out of the TUN");
        };
        assert_eq!(header.gso_type, VNET_GSO_NONE);
        let reply = echo_reply(request);
        if use_write_packet {
            assert_eq!(tun.write_packet(&reply).unwrap(), reply.len());
        } else {
            // An all-zero header: an ordinary packet with its checksums done.
            let mut framed = vec![0u8; VNET_HDR_LEN];
            framed.extend_from_slice(&reply);
            assert_eq!(tun.write(&framed).unwrap(), framed.len());
        }
        assert!(
            wait_bounded(&mut ping, WAIT),
            "ping did not see the reply (write_packet: {use_write_packet})"
        );
    }
}

/// A multi-queue device: N queue descriptors on one interface (the kernel
/// shows N queues), the header mode on every queue, and the host's flows
/// spread over the queues with each flow on one queue, in order.
#[test]
fn multi_queue_spreads_flows_and_keeps_each_on_one_queue() {
    if !root_or_skip("multi_queue_spreads_flows_and_keeps_each_on_one_queue") {
        return;
    }
    const QUEUES: usize = 4;
    const FLOWS: u16 = 16;
    const PER_FLOW: u8 = 10;
    let ns = TestNetns::create();
    let name = unique_name("fgq");
    let all = TunOptions {
        vnet_hdr: true,
        offloads: true,
    };
    let tun = Tun::create_queues(&name, all, QUEUES).unwrap();
    assert_eq!(tun.queue_count(), QUEUES);
    assert!(tun.offloads().vnet_hdr && tun.offloads().tso);
    let tx_queues = std::fs::read_dir(format!("/sys/class/net/{name}/queues"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("tx-")
        })
        .count();
    assert_eq!(tx_queues, QUEUES, "the kernel's view of the queues");
    assert_eq!(
        Tun::create_queues(&name, all, 0).unwrap_err().kind(),
        io::ErrorKind::InvalidInput
    );
    ip(&["link", "set", &name, "netns", &ns.name]);
    ns.exec(&["ip", "addr", "add", "192.0.2.1/24", "dev", &name]);
    ns.exec(&["ip", "link", "set", &name, "up"]);
    // Flow k: UDP from source port 40000+k, datagrams numbered 0..PER_FLOW.
    let script = format!(
        "import socket\n\
         socks = []\n\
         for k in range({FLOWS}):\n\
         \x20   s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         \x20   s.bind(('192.0.2.1', 40000 + k))\n\
         \x20   socks.append(s)\n\
         for n in range({PER_FLOW}):\n\
         \x20   for k, s in enumerate(socks):\n\
         \x20       s.sendto(bytes([k, n]), ('192.0.2.2', 9))\n"
    );
    ns.exec(&["python3", "-c", &script]);
    // flow -> (queues it was read from, sequence numbers in read order)
    let mut flows = vec![(std::collections::BTreeSet::new(), Vec::new()); FLOWS.into()];
    let fds: Vec<_> = (0..QUEUES).map(|q| tun.queue(q).as_raw_fd()).collect();
    let deadline = Instant::now() + WAIT;
    let mut buf = vec![0u8; MAX_OFFLOAD_READ];
    while flows.iter().map(|f| f.1.len()).sum::<usize>()
        < usize::from(FLOWS) * usize::from(PER_FLOW)
    {
        let left = deadline
            .checked_duration_since(Instant::now())
            .expect("packets missing");
        let ready = poll_readable(&fds, Some(left)).unwrap();
        for (q, _) in ready.iter().enumerate().filter(|(_, r)| **r) {
            let n = tun.queue(q).read(&mut buf).unwrap();
            let packet = &buf[VNET_HDR_LEN..n];
            if is_ipv4_to(packet, 17, [192, 0, 2, 2]) && packet.len() == 30 {
                let (k, seq) = (usize::from(packet[28]), packet[29]);
                flows[k].0.insert(q);
                flows[k].1.push(seq);
            }
        }
    }
    for (k, (queues, seqs)) in flows.iter().enumerate() {
        assert_eq!(queues.len(), 1, "flow {k} was read from queues {queues:?}");
        assert_eq!(*seqs, (0..PER_FLOW).collect::<Vec<_>>(), "flow {k}");
    }
    let used: std::collections::BTreeSet<usize> =
        flows.iter().flat_map(|f| f.0.iter().copied()).collect();
    println!("16 flows over {QUEUES} queues: queues used {used:?}");
    assert!(used.len() > 1, "all 16 flows on one queue: {used:?}");
}
