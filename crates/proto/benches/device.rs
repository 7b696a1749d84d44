//! `Device::send` and `Device::receive` of transport data over an
//! established session: the engine's per-packet cost, lookups, counters
//! and timers included (what the metrics counters add to is measured here,
//! main against a branch).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ferroguard_proto::device::{Now, ReceiveOutcome, SendOutcome};
use ferroguard_proto::peer::Endpoint;
use ferroguard_proto::testing::{ipv4_packet, sock, Pair, A_ADDR, A_TUN, B_TUN};

const SIZES: [usize; 2] = [64, 1420];
/// Datagrams sealed ahead of each timed receive run (a receiver refuses
/// replays, so every timed call needs a fresh one).
const BATCH: usize = 1024;

fn send_receive(c: &mut Criterion) {
    let now = Now::system();
    let mut group = c.benchmark_group("device");
    for size in SIZES {
        group.throughput(Throughput::Bytes(size as u64));
        let packet = ipv4_packet(A_TUN, B_TUN, size);
        group.bench_with_input(BenchmarkId::new("send", size), &size, |bench, _| {
            let Pair { mut a, .. } = Pair::connected(now);
            let mut out = vec![0u8; size + 64];
            bench.iter(|| {
                let outcome = a.send(now, black_box(&packet), &mut out);
                debug_assert!(matches!(outcome, SendOutcome::Sent { .. }));
                black_box(outcome);
            });
        });
        group.bench_with_input(BenchmarkId::new("receive", size), &size, |bench, _| {
            let Pair { mut a, mut b, .. } = Pair::connected(now);
            let from = Endpoint::from(sock(A_ADDR));
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
