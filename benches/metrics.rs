//! What a metrics scrape costs with 1 000 peers: the part under the engine
//! lock (`sample_device`: copying numbers out) and the formatting done
//! after the lock is released (`render`).

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use ferroguard::metrics::{render, sample_device, DaemonSample};
use ferroguard_proto::crypto::PublicKey;
use ferroguard_proto::device::{Device, Now};

const PEERS: u32 = 1000;

fn device_with_peers() -> Device {
    let mut device = Device::new([5; 32]);
    for i in 0..PEERS {
        let mut key = [0x42u8; 32];
        key[..4].copy_from_slice(&i.to_le_bytes());
        device.add_peer(PublicKey(key)).expect("a new key");
    }
    device
}

fn scrape(c: &mut Criterion) {
    let device = device_with_peers();
    let now = Now::system();
    c.bench_function("metrics/sample_under_lock_1000_peers", |b| {
        b.iter(|| black_box(sample_device(black_box(&device), now)))
    });
    let sample = sample_device(&device, now);
    let daemon = DaemonSample::default();
    let size = render("wg0", &sample, &daemon).len();
    eprintln!("metrics: {PEERS} peers render to {size} bytes");
    c.bench_function("metrics/render_after_lock_1000_peers", |b| {
        b.iter(|| black_box(render("wg0", black_box(&sample), &daemon)))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = scrape
}
criterion_main!(benches);
