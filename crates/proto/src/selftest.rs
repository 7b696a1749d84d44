//! Start-up self-tests of the security-sensitive code (feature `selftest`).
//!
//! The daemon runs these before it opens anything (or alone with
//! `ferroguard --selftest`) and refuses to start if one fails: a miscompiled
//! or mislinked crypto library, or a broken build of this crate, is caught
//! before a single packet is handled. Each check compares against a known
//! answer or a naive model; none reads the clock or the network.

use std::fmt;
use std::time::{Duration, Instant, SystemTime};

use crate::crypto::{hash, kdf1, kdf2, kdf3, mac, PublicKey, SecretKey, SymmetricKey, KEY_LEN};
use crate::device::{Device, Now, ReceiveOutcome, SendOutcome};
use crate::noise::{CONSTRUCTION, IDENTIFIER, INITIAL_CHAIN_KEY, INITIAL_HASH};
use crate::peer::Endpoint;

/// A failed self-test: which one, and what went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelftestError {
    /// The self-test's name.
    pub test: &'static str,
    /// What did not match.
    pub detail: String,
}

impl fmt::Display for SelftestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.test, self.detail)
    }
}

impl std::error::Error for SelftestError {}

/// What ran and how long it took.
#[derive(Debug, Clone)]
pub struct Report {
    /// Names of the self-tests that passed, in order.
    pub passed: Vec<&'static str>,
    /// Total time.
    pub elapsed: Duration,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "self-tests passed ({}) in {:.1} ms: {}",
            self.passed.len(),
            self.elapsed.as_secs_f64() * 1e3,
            self.passed.join(", ")
        )
    }
}

type Check = (&'static str, fn() -> Result<(), String>);

/// Every self-test, in the order they run.
pub const CHECKS: &[Check] = &[
    ("noise-constants", check_constants),
    ("hkdf", check_kdf),
    ("mac1", check_mac1),
    ("handshake", check_handshake),
    ("replay-window", crate::replay::run_kernel_selftest),
    ("ratelimiter", check_ratelimiter),
    ("allowed-ips", crate::allowedips::selftest),
];

/// Runs every self-test; stops at the first failure.
pub fn run() -> Result<Report, SelftestError> {
    run_checks(CHECKS)
}

/// Runs the given checks (lets tests prove that a wrong answer is caught).
pub fn run_checks(checks: &[Check]) -> Result<Report, SelftestError> {
    let start = Instant::now();
    let mut passed = Vec::new();
    for (test, check) in checks {
        check().map_err(|detail| SelftestError { test, detail })?;
        passed.push(*test);
    }
    Ok(Report {
        passed,
        elapsed: start.elapsed(),
    })
}

fn expect_eq(what: &str, got: &[u8], want: &str) -> Result<(), String> {
    let got_hex: String = got.iter().map(|b| format!("{b:02x}")).collect();
    if got_hex == want {
        Ok(())
    } else {
        Err(format!("{what}: got {got_hex}, want {want}"))
    }
}

fn check_constants() -> Result<(), String> {
    if hash(&[CONSTRUCTION]) != INITIAL_CHAIN_KEY {
        return Err("C0 != HASH(construction)".into());
    }
    if hash(&[&INITIAL_CHAIN_KEY, IDENTIFIER]) != INITIAL_HASH {
        return Err("H0 != HASH(C0 || identifier)".into());
    }
    expect_eq(
        "C0",
        &INITIAL_CHAIN_KEY,
        "60e26daef327efc02ec335e2a025d2d016eb4206f87277f52d38d1988b78cd36",
    )
}

/// wireguard-go's kdf_test.go vector ("test-key", "test-input").
fn check_kdf() -> Result<(), String> {
    let mut key = [0u8; KEY_LEN];
    key[..8].copy_from_slice(b"test-key");
    let (t0, t1, t2) = kdf3(&key, b"test-input");
    expect_eq(
        "t0",
        &t0,
        "6f0e5ad38daba1bea8a0d213688736f19763239305e0f58aba697f9ffc41c633",
    )?;
    expect_eq(
        "t1",
        &t1,
        "df1194df20802a4fe594cde27e92991c8cae66c366e8106aaa937a55fa371e8a",
    )?;
    expect_eq(
        "t2",
        &t2,
        "fac6e2745a325f5dc5d11a5b165aad08b0ada28e7b4e666b7c077934a4d76c24",
    )?;
    if kdf2(&key, b"test-input") != (t0, t1) || kdf1(&key, b"test-input") != t0 {
        return Err("KDF1/KDF2 are not prefixes of KDF3".into());
    }
    Ok(())
}

/// mac1 over a fixed message, computed independently with Python's hashlib.
fn check_mac1() -> Result<(), String> {
    let public = [0x42u8; KEY_LEN];
    let key = hash(&[b"mac1----", &public]);
    let message: Vec<u8> = (0..116u8).collect();
    expect_eq(
        "mac1",
        &mac(&key, &[&message]),
        "5f482220eac57889e922c176d202190b",
    )
}

/// The kernel's timing script for an IPv4 and an IPv6 source (the IPv6
/// source changes its host part at every step: one /64, one bucket).
fn check_ratelimiter() -> Result<(), String> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    crate::ratelimiter::timing_script_result(&|_| IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), &|i| {
        IpAddr::V4(Ipv4Addr::new(198, 51, 100, i as u8))
    })?;
    crate::ratelimiter::timing_script_result(
        &|i| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, i as u16)),
        &|i| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 2 + i as u16, 0, 0, 0, 1)),
    )
}

/// Two engines with fixed keys complete a handshake and exchange a packet
/// in each direction; tampering with the packet is detected.
fn check_handshake() -> Result<(), String> {
    let now = Now {
        mono: Instant::now(),
        wall: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
    };
    let (ka, kb) = (
        SecretKey::from_bytes([1; 32]),
        SecretKey::from_bytes([2; 32]),
    );
    let (pa, pb) = (ka.public_key(), kb.public_key());
    let (mut a, mut b) = (Device::new([3; 32]), Device::new([4; 32]));
    a.set_private_key(Some(ka));
    b.set_private_key(Some(kb));
    let ea: Endpoint = "127.0.0.1:1"
        .parse::<std::net::SocketAddr>()
        .unwrap()
        .into();
    let eb: Endpoint = "127.0.0.1:2"
        .parse::<std::net::SocketAddr>()
        .unwrap()
        .into();
    let (ia, ib) = wire_peer(&mut a, pb, eb, [10, 0, 0, 2])
        .zip(wire_peer(&mut b, pa, ea, [10, 0, 0, 1]))
        .ok_or("peers could not be added")?;
    let packet = ipv4_packet([10, 0, 0, 1], [10, 0, 0, 2]);
    let mut out = [0u8; 128];
    if a.send(now, &packet, &mut out) != SendOutcome::Queued(ia) {
        return Err("the first packet should wait for a handshake".into());
    }
    let mut delivered_at_b = Vec::new();
    for _ in 0..8 {
        while let Some(t) = a.poll_transmit() {
            let mut data = t.data;
            if let ReceiveOutcome::Deliver { len, .. } = b.receive(now, ea, &mut data) {
                delivered_at_b.push(data[16..16 + len].to_vec());
            }
        }
        while let Some(t) = b.poll_transmit() {
            let mut data = t.data;
            let _ = a.receive(now, eb, &mut data);
        }
    }
    if delivered_at_b != [packet.clone()] {
        return Err("the staged packet did not arrive intact".into());
    }
    let reply = ipv4_packet([10, 0, 0, 2], [10, 0, 0, 1]);
    let SendOutcome::Sent { len, .. } = b.send(now, &reply, &mut out) else {
        return Err(format!("no session at the responder ({:?})", ib));
    };
    let mut forged = out;
    forged[len - 1] ^= 1;
    if !matches!(
        a.receive(now, eb, &mut forged[..len]),
        ReceiveOutcome::Dropped(_)
    ) {
        return Err("a forged transport message was accepted".into());
    }
    match a.receive(now, eb, &mut out[..len]) {
        ReceiveOutcome::Deliver { len: n, .. } if out[16..16 + n] == reply[..] => Ok(()),
        other => Err(format!("reply not delivered: {other:?}")),
    }
}

fn wire_peer(
    device: &mut Device,
    peer: PublicKey,
    endpoint: Endpoint,
    address: [u8; 4],
) -> Option<crate::peer::PeerId> {
    let id = device.add_peer(peer)?;
    device.set_preshared_key(id, SymmetricKey([5; 32]));
    device.set_endpoint(id, endpoint.addr);
    device.add_allowed_ip(id, address.into(), 32).ok()?;
    Some(id)
}

fn ipv4_packet(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let mut p = vec![0u8; 40];
    p[0] = 0x45;
    p[3] = 40;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_self_tests_pass() {
        let report = run().unwrap();
        assert_eq!(report.passed.len(), CHECKS.len());
    }

    #[test]
    fn a_wrong_answer_fails_loudly() {
        fn wrong() -> Result<(), String> {
            expect_eq("mac1", &[0u8; 16], "5f482220eac57889e922c176d202190b")
        }
        let err = run_checks(&[("hkdf", check_kdf), ("broken", wrong)]).unwrap_err();
        assert_eq!(err.test, "broken");
        assert!(err.to_string().contains("want 5f48"), "{err}");
    }
}
