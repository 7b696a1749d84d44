//! Integration tests of `sys::tun` against the real kernel. They need root
//! (they create TUN interfaces and network namespaces) and are skipped with a
//! message otherwise. Every interface and namespace is removed by a guard,
//! also when a test fails, and every wait is bounded.

#[path = "sys_common.rs"]
mod common;

use common::*;
use ferroguard::sys::poll_readable;
use ferroguard::sys::tun::{Tun, DEFAULT_MTU};
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

    let mut ping = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
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
        .unwrap();
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
