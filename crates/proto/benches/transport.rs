//! Transport seal/open against the bare AEAD call, and handshakes per second.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ferroguard_proto::crypto::{AeadKey, SecretKey, SymmetricKey};
use ferroguard_proto::noise::{self, SessionKeys};
use ferroguard_proto::tai64n::Tai64n;
use ferroguard_proto::transport::Keypair;
use rand_core::SeedableRng;

const SIZES: [usize; 3] = [64, 1420, 65535 - 32];

fn keypairs() -> (Keypair, Keypair) {
    let now = Instant::now();
    let a = SessionKeys {
        send: SymmetricKey([1; 32]),
        receive: SymmetricKey([2; 32]),
    };
    let b = SessionKeys {
        send: SymmetricKey([2; 32]),
        receive: SymmetricKey([1; 32]),
    };
    (
        Keypair::new(&a, 1, 2, now, true),
        Keypair::new(&b, 2, 1, now, false),
    )
}

fn seal_open(c: &mut Criterion) {
    let mut group = c.benchmark_group("transport");
    for size in SIZES {
        group.throughput(Throughput::Bytes(size as u64));
        let packet = vec![0x45u8; size];
        let mut out = vec![0u8; size + 64];
        let key = AeadKey::new(&[7; 32]);
        let mut raw = vec![0u8; size];
        group.bench_with_input(BenchmarkId::new("bare_aead_seal", size), &size, |b, _| {
            let mut n = 0u64;
            b.iter(|| {
                n += 1;
                black_box(key.seal(n, &[], &mut raw));
            })
        });
        let (mut a, _) = keypairs();
        let now = Instant::now();
        group.bench_with_input(BenchmarkId::new("seal", size), &size, |b, _| {
            b.iter(|| black_box(a.seal(now, &packet, 65535, &mut out).unwrap()))
        });
        // Open needs fresh counters: seal a batch ahead, open it in order.
        let (mut a, mut r) = keypairs();
        group.bench_with_input(BenchmarkId::new("open", size), &size, |b, _| {
            b.iter_batched(
                || {
                    let n = a.seal(now, &packet, 65535, &mut out).unwrap();
                    let counter = a.send_counter() - 1;
                    (out[..n].to_vec(), counter)
                },
                |(mut msg, counter)| black_box(r.open(now, counter, &mut msg).unwrap()),
                criterion::BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

/// The responder's work per initiation (decrypt static, DH with the
/// precomputed static-static secret, timestamp, response with 3 DH and a new
/// ephemeral), and the initiator's (initiation with 2 DH and an ephemeral,
/// then the response with 2 DH).
fn handshakes(c: &mut Criterion) {
    let (ki, kr) = (
        SecretKey::from_bytes([1; 32]),
        SecretKey::from_bytes([2; 32]),
    );
    let (pi, pr) = (ki.public_key(), kr.public_key());
    let ss_i = ki.dh(&pr).unwrap();
    let ss_r = kr.dh(&pi).unwrap();
    let psk = SymmetricKey([0; 32]);
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
    let mut setup_rng = rand_chacha::ChaCha20Rng::seed_from_u64(3);
    let ts = Tai64n::default();
    c.bench_function("handshake/responder", |b| {
        b.iter_batched(
            || {
                noise::create_initiation(&pi, &pr, &ss_i, &mut setup_rng, ts, 1)
                    .unwrap()
                    .0
            },
            |init| {
                let progress = noise::open_initiation_static(&kr, &pr, &init).unwrap();
                let consumed = noise::finish_initiation(progress, &ss_r, &init).unwrap();
                black_box(noise::create_response(&consumed, &psk, &mut rng, 2).unwrap())
            },
            criterion::BatchSize::SmallInput,
        )
    });
    let mut rng2 = rand_chacha::ChaCha20Rng::seed_from_u64(2);
    c.bench_function("handshake/initiator", |b| {
        b.iter_batched(
            || {
                let (init, state) =
                    noise::create_initiation(&pi, &pr, &ss_i, &mut rng2, ts, 1).unwrap();
                let progress = noise::open_initiation_static(&kr, &pr, &init).unwrap();
                let consumed = noise::finish_initiation(progress, &ss_r, &init).unwrap();
                let (response, _) = noise::create_response(&consumed, &psk, &mut rng2, 2).unwrap();
                (state, response)
            },
            |(state, response)| {
                let fresh = noise::create_initiation(&pi, &pr, &ss_i, &mut rng, ts, 1).unwrap();
                black_box(fresh);
                black_box(noise::consume_response(&state, &ki, &psk, &response).unwrap())
            },
            criterion::BatchSize::SmallInput,
        )
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = seal_open, handshakes
}
criterion_main!(benches);
