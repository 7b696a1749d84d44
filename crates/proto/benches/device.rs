//! `Device::send` and `Device::receive` of transport data over an
//! established session: the engine's per-packet cost, lookups, counters
//! and timers included (what the metrics counters add to is measured here,
//! main against a branch).

use std::hint::black_box;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ferroguard_proto::crypto::SecretKey;
use ferroguard_proto::device::{Device, Now, ReceiveOutcome, SendOutcome};
use ferroguard_proto::peer::Endpoint;

const SIZES: [usize; 2] = [64, 1420];
const A: [u8; 4] = [10, 0, 0, 1];
const B: [u8; 4] = [10, 0, 0, 2];
/// Datagrams sealed ahead of each timed receive run (a receiver refuses
/// replays, so every timed call needs a fresh one).
const BATCH: usize = 1024;

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("literal address")
}

/// An IPv4 packet of `len` bytes from `src` to `dst`.
fn ipv4(src: [u8; 4], dst: [u8; 4], len: usize) -> Vec<u8> {
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    p
}

/// Two devices with a confirmed session between them.
fn session(now: Now) -> (Device, Device) {
    let (ka, kb) = (
        SecretKey::from_bytes([1; 32]),
        SecretKey::from_bytes([2; 32]),
    );
    let (pa, pb) = (ka.public_key(), kb.public_key());
    let mut a = Device::new([3; 32]);
    let mut b = Device::new([4; 32]);
    a.set_private_key(Some(ka));
    b.set_private_key(Some(kb));
    let ap = a.add_peer(pb).expect("peer");
    let bp = b.add_peer(pa).expect("peer");
    a.set_endpoint(ap, addr("192.0.2.2:2"));
    b.set_endpoint(bp, addr("192.0.2.1:1"));
    a.add_allowed_ip(ap, IpAddr::from(B), 32).expect("prefix");
    b.add_allowed_ip(bp, IpAddr::from(A), 32).expect("prefix");
    let mut out = vec![0u8; 256];
    a.send(now, &ipv4(A, B, 84), &mut out);
    for _ in 0..8 {
        let from_a: Vec<_> = std::iter::from_fn(|| a.poll_transmit()).collect();
        let from_b: Vec<_> = std::iter::from_fn(|| b.poll_transmit()).collect();
        for mut t in from_a {
            b.receive(now, Endpoint::from(addr("192.0.2.1:1")), &mut t.data);
        }
        for mut t in from_b {
            a.receive(now, Endpoint::from(addr("192.0.2.2:2")), &mut t.data);
        }
    }
    assert!(matches!(
        a.send(now, &ipv4(A, B, 84), &mut out),
        SendOutcome::Sent { .. }
    ));
    (a, b)
}

fn send_receive(c: &mut Criterion) {
    let now = Now::system();
    let mut group = c.benchmark_group("device");
    for size in SIZES {
        group.throughput(Throughput::Bytes(size as u64));
        let packet = ipv4(A, B, size);
        group.bench_with_input(BenchmarkId::new("send", size), &size, |bench, _| {
            let (mut a, _b) = session(now);
            let mut out = vec![0u8; size + 64];
            bench.iter(|| {
                let outcome = a.send(now, black_box(&packet), &mut out);
                debug_assert!(matches!(outcome, SendOutcome::Sent { .. }));
                black_box(outcome);
            });
        });
        group.bench_with_input(BenchmarkId::new("receive", size), &size, |bench, _| {
            let (mut a, mut b) = session(now);
            let from = Endpoint::from(addr("192.0.2.1:1"));
            let mut sealed: Vec<Vec<u8>> = vec![vec![0u8; size + 64]; BATCH];
            bench.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let n = left.min(BATCH as u64) as usize;
                    let lens: Vec<usize> = sealed[..n]
                        .iter_mut()
                        .map(|buf| match a.send(now, &packet, buf) {
                            SendOutcome::Sent { len, .. } => len,
                            other => panic!("no session: {other:?}"),
                        })
                        .collect();
                    let started = Instant::now();
                    for (buf, &len) in sealed[..n].iter_mut().zip(&lens) {
                        let outcome = b.receive(now, from, &mut buf[..len]);
                        debug_assert!(matches!(outcome, ReceiveOutcome::Deliver { .. }));
                        black_box(outcome);
                    }
                    total += started.elapsed();
                    left -= n as u64;
                }
                total
            });
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = send_receive
}
criterion_main!(benches);
