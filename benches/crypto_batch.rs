//! The split data path on a batch of 64 × 1420-byte packets: sealing and
//! opening on the calling thread alone against the crypto pool, the cost of
//! the engine steps around the AEAD (prepare and complete, measured on
//! 20-byte packets whose AEAD is next to nothing), the pool's own
//! fork-join cost on an empty batch, and the ceiling: as many threads as the
//! pool has, each sealing its own batches with no coordination.

use std::cell::RefCell;
use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ferroguard::crypto_pool::CryptoPool;
use ferroguard_proto::device::{
    Now, ReceiveJob, ReceiveOutcome, ReceivePrepared, SendJob, SendPrepared, SendTally,
};
use ferroguard_proto::peer::Endpoint;
use ferroguard_proto::testing::{ipv4_packet, sock, Pair, A_ADDR, A_TUN, B_TUN};

const BATCH: usize = 64;
const PACKET: usize = 1420;
/// An IPv4 packet of `len` bytes from A's tunnel address to B's.
fn ipv4(len: usize) -> Vec<u8> {
    ipv4_packet(A_TUN, B_TUN, len)
}

/// Prepares a batch of sends from A to B (a session must exist).
fn prepare_sends(pair: &mut Pair, now: Now, packet: &[u8]) -> Vec<SendJob> {
    (0..BATCH)
        .map(|_| match pair.a.prepare_send(now, packet) {
            SendPrepared::Seal(job) => job,
            other => panic!("no session: {other:?}"),
        })
        .collect()
}

/// A batch of transport messages from A, sealed on one thread.
fn sealed_batch(pair: &mut Pair, len: usize) -> Vec<Vec<u8>> {
    let now = Now::system();
    let packet = ipv4(len);
    let mut tally = SendTally::new();
    let messages = prepare_sends(pair, now, &packet)
        .iter()
        .map(|job| {
            let mut out = vec![0u8; job.wire_len()];
            let n = job.seal(&packet, &mut out).expect("sized");
            tally.record(job.peer, n);
            out
        })
        .collect();
    pair.a.complete_sends(now, &mut tally);
    messages
}
struct Seal<'a> {
    job: SendJob,
    out: &'a mut [u8],
}

/// Prepares, seals (shared out or not) and completes one batch.
fn send_batch(pair: &mut Pair, pool: Option<&CryptoPool>, packet: &[u8], buf: &mut [u8]) {
    let now = Now::system();
    let jobs = prepare_sends(pair, now, packet);
    let mut regions = buf.chunks_mut(packet.len() + 64);
    let mut work: Vec<Seal<'_>> = jobs
        .into_iter()
        .map(|job| Seal {
            job,
            out: regions.next().expect("room for the batch"),
        })
        .collect();
    let seal = |w: &mut Seal<'_>| {
        black_box(w.job.seal(packet, w.out).expect("sized"));
    };
    match pool {
        Some(pool) => pool.run(&mut work, seal),
        None => work.iter_mut().for_each(seal),
    }
    let mut tally = SendTally::new();
    for w in &work {
        tally.record(w.job.peer, w.job.wire_len());
    }
    pair.a.complete_sends(now, &mut tally);
}

struct Open {
    job: Option<ReceiveJob>,
    data: Vec<u8>,
}

/// Prepares, opens (shared out or not) and completes one batch at B.
fn receive_batch(pair: &mut Pair, pool: Option<&CryptoPool>, messages: Vec<Vec<u8>>) -> usize {
    let now = Now::system();
    let from = Endpoint::from(sock(A_ADDR));
    let mut work: Vec<Open> = messages
        .into_iter()
        .map(|data| match pair.b.prepare_receive(now, from, &data) {
            ReceivePrepared::Open(job) => Open {
                job: Some(job),
                data,
            },
            other => panic!("not a good message: {other:?}"),
        })
        .collect();
    let open = |w: &mut Open| {
        if let Some(job) = w.job.as_mut() {
            job.open(&mut w.data);
        }
    };
    match pool {
        Some(pool) => pool.run(&mut work, open),
        None => work.iter_mut().for_each(open),
    }
    work.into_iter()
        .filter_map(|w| Some(pair.b.complete_receive(now, w.job?, &w.data)))
        .filter(|o| matches!(o, ReceiveOutcome::Deliver { .. }))
        .count()
}

/// A pool with helpers even where the daemon's default has none.
fn pool_with_helpers() -> CryptoPool {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    CryptoPool::new(cores.max(2))
}

fn batches(c: &mut Criterion) {
    let pool = pool_with_helpers();
    let threads = pool.threads();
    let mut group = c.benchmark_group("batch_64x1420");
    group.throughput(Throughput::Bytes((BATCH * PACKET) as u64));
    let packet = ipv4(PACKET);
    let mut buf = vec![0u8; BATCH * (PACKET + 64)];
    for (name, pool) in [("sequential", None), ("pool", Some(&pool))] {
        let mut pair = Pair::connected(Now::system());
        group.bench_function(format!("seal/{name}"), |b| {
            b.iter(|| send_batch(&mut pair, pool, &packet, &mut buf))
        });
        // The setup seals at A what the routine opens at B.
        let pair = RefCell::new(Pair::connected(Now::system()));
        group.bench_function(format!("open/{name}"), |b| {
            b.iter_batched(
                || sealed_batch(&mut pair.borrow_mut(), PACKET),
                |messages| {
                    let delivered = receive_batch(&mut pair.borrow_mut(), pool, messages);
                    assert_eq!(delivered, BATCH);
                },
                BatchSize::SmallInput,
            )
        });
    }
    bench_independent_sealers(&mut group, threads, &packet);
    group.finish();
    println!("(the pool has {threads} crypto threads, the caller included)");
}

/// The machine's ceiling for the pool: `threads` threads that each seal
/// their own batches on their own pair, with no coordination at all. The
/// time reported is per batch of the group (wall time divided by the
/// batches all threads sealed), so `seal/sequential` divided by this is the
/// speed-up any way of sharing one batch out could reach at best, measured
/// in the same run as the pool.
fn bench_independent_sealers(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    threads: usize,
    packet: &[u8],
) {
    group.bench_function(format!("seal/independent_x{threads}"), |b| {
        b.iter_custom(|iters| {
            let per_thread = iters.div_ceil(threads as u64);
            let barrier = std::sync::Barrier::new(threads);
            let started = std::thread::scope(|scope| {
                let workers: Vec<_> = (0..threads)
                    .map(|_| {
                        scope.spawn(|| {
                            let mut pair = Pair::connected(Now::system());
                            let mut buf = vec![0u8; BATCH * (PACKET + 64)];
                            barrier.wait();
                            let began = std::time::Instant::now();
                            for _ in 0..per_thread {
                                send_batch(&mut pair, None, packet, &mut buf);
                            }
                            (began, std::time::Instant::now())
                        })
                    })
                    .collect();
                let spans: Vec<_> = workers
                    .into_iter()
                    .map(|w| w.join().expect("sealer"))
                    .collect();
                let first = spans.iter().map(|s| s.0).min().expect("threads");
                let last = spans.iter().map(|s| s.1).max().expect("threads");
                last - first
            });
            started.mul_f64(iters as f64 / (per_thread * threads as u64) as f64)
        })
    });
}

/// The engine steps alone: 64 tiny packets, whose AEAD costs next to
/// nothing, prepared and completed on one thread. Divide by 64 for the cost
/// per packet.
fn steps(c: &mut Criterion) {
    let mut group = c.benchmark_group("steps_64x20");
    group.throughput(Throughput::Elements(BATCH as u64));
    let tiny = ipv4(20);
    let mut pair = Pair::connected(Now::system());
    group.bench_function("prepare_send_and_complete", |b| {
        b.iter(|| {
            let now = Now::system();
            let jobs = prepare_sends(&mut pair, now, &tiny);
            let mut tally = SendTally::new();
            for job in &jobs {
                tally.record(job.peer, job.wire_len());
            }
            pair.a.complete_sends(now, &mut tally);
            black_box(jobs);
        })
    });
    let mut buf = vec![0u8; BATCH * 128];
    group.bench_function("send_one_call_each", |b| {
        b.iter(|| {
            let now = Now::system();
            for out in buf.chunks_mut(128) {
                black_box(pair.a.send(now, &tiny, out));
            }
        })
    });
    let pair = RefCell::new(Pair::connected(Now::system()));
    group.bench_function("receive_prepare_open_complete", |b| {
        b.iter_batched(
            || sealed_batch(&mut pair.borrow_mut(), 20),
            |messages| {
                let delivered = receive_batch(&mut pair.borrow_mut(), None, messages);
                assert_eq!(delivered, BATCH);
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

/// What sharing out costs by itself: a batch of 64 items with no work.
fn pool_overhead(c: &mut Criterion) {
    let pool = pool_with_helpers();
    let mut items = vec![0u64; BATCH];
    c.bench_function("pool/fork_join_64_empty", |b| {
        b.iter(|| pool.run(&mut items, |x| *x = black_box(*x + 1)))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    targets = batches, steps, pool_overhead
}
criterion_main!(benches);
