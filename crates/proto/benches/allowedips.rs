//! Benchmarks of the allowed-IPs table: per-packet lookups in large tables,
//! and bulk inserts (a whole `setconf`).
//!
//! Run with `cargo bench -p ferroguard-proto --bench allowedips`.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ferroguard_proto::allowedips::AllowedIps;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Number of prefixes per family in the lookup tables.
const PREFIXES: u32 = 100_000;
/// Number of pre-computed lookup addresses cycled through by a benchmark.
const LOOKUP_POOL: usize = 1 << 16;

fn rng() -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(0xa110_3ed1)
}

fn random_u128(rng: &mut ChaCha8Rng) -> u128 {
    u128::from(rng.next_u64()) << 64 | u128::from(rng.next_u64())
}

/// Half host routes, half prefixes of random length: a random address
/// table where lookups walk deep paths.
fn random_cidr(rng: &mut ChaCha8Rng, width: u32, shortest: u32) -> u8 {
    let cidr = if rng.next_u32() % 2 == 0 {
        width
    } else {
        shortest + rng.next_u32() % (width - shortest)
    };
    u8::try_from(cidr).expect("prefix length fits in u8")
}

/// An address inside `key/cidr` with random host bits.
fn inside_v4(rng: &mut ChaCha8Rng, key: u32, cidr: u8) -> [u8; 4] {
    let host = u32::MAX.checked_shr(u32::from(cidr)).unwrap_or(0);
    ((key & !host) | (rng.next_u32() & host)).to_be_bytes()
}

fn inside_v6(rng: &mut ChaCha8Rng, key: u128, cidr: u8) -> [u8; 16] {
    let host = u128::MAX.checked_shr(u32::from(cidr)).unwrap_or(0);
    ((key & !host) | (random_u128(rng) & host)).to_be_bytes()
}

/// 100 000 random IPv4 and IPv6 prefixes (values 0..100 000), and for each
/// family a pool of addresses that fall inside inserted prefixes.
struct LookupFixture {
    table: AllowedIps<u32>,
    v4: Vec<[u8; 4]>,
    v6: Vec<[u8; 16]>,
}

fn lookup_fixture() -> LookupFixture {
    let mut rng = rng();
    let mut table = AllowedIps::new();
    let mut v4_prefixes = Vec::new();
    let mut v6_prefixes = Vec::new();
    for value in 0..PREFIXES {
        let key = rng.next_u32();
        let cidr = random_cidr(&mut rng, 32, 8);
        table
            .insert(IpAddr::V4(Ipv4Addr::from(key)), cidr, value)
            .expect("valid v4 prefix");
        v4_prefixes.push((key, cidr));
        let key = random_u128(&mut rng);
        let cidr = random_cidr(&mut rng, 128, 16);
        table
            .insert(IpAddr::V6(Ipv6Addr::from(key)), cidr, value)
            .expect("valid v6 prefix");
        v6_prefixes.push((key, cidr));
    }
    let pick = |rng: &mut ChaCha8Rng| rng.next_u32() as usize % PREFIXES as usize;
    let v4 = (0..LOOKUP_POOL)
        .map(|_| {
            let (key, cidr) = v4_prefixes[pick(&mut rng)];
            inside_v4(&mut rng, key, cidr)
        })
        .collect();
    let v6 = (0..LOOKUP_POOL)
        .map(|_| {
            let (key, cidr) = v6_prefixes[pick(&mut rng)];
            inside_v6(&mut rng, key, cidr)
        })
        .collect();
    LookupFixture { table, v4, v6 }
}

/// A typical VPN server: one host route per peer in 10.0.0.0/8 and
/// fd00::/8.
fn host_routes(peers: u32) -> impl Iterator<Item = (IpAddr, IpAddr, u32)> {
    (0..peers).map(|peer| {
        let v4 = Ipv4Addr::from(0x0a00_0000 | peer);
        let v6 = Ipv6Addr::from(0xfd00_u128 << 112 | u128::from(peer));
        (IpAddr::V4(v4), IpAddr::V6(v6), peer)
    })
}

fn bench_lookup(c: &mut Criterion) {
    let fixture = lookup_fixture();
    let mut group = c.benchmark_group("allowedips_lookup");
    group.throughput(Throughput::Elements(1));

    let mut next = 0usize;
    group.bench_function("v4_100k_random_prefixes", |b| {
        b.iter(|| {
            next = (next + 1) % LOOKUP_POOL;
            fixture.table.lookup_v4(black_box(fixture.v4[next]))
        })
    });
    group.bench_function("v6_100k_random_prefixes", |b| {
        b.iter(|| {
            next = (next + 1) % LOOKUP_POOL;
            fixture.table.lookup_v6(black_box(fixture.v6[next]))
        })
    });
    let mut rng = rng();
    let misses: Vec<[u8; 4]> = (0..LOOKUP_POOL)
        .map(|_| rng.next_u32().to_be_bytes())
        .collect();
    group.bench_function("v4_100k_random_prefixes_uniform_addresses", |b| {
        b.iter(|| {
            next = (next + 1) % LOOKUP_POOL;
            fixture.table.lookup_v4(black_box(misses[next]))
        })
    });

    let mut hosts = AllowedIps::new();
    for (v4, v6, peer) in host_routes(PREFIXES) {
        hosts.insert(v4, 32, peer).expect("valid prefix");
        hosts.insert(v6, 128, peer).expect("valid prefix");
    }
    let host_addrs: Vec<[u8; 4]> = (0..LOOKUP_POOL)
        .map(|_| (0x0a00_0000 | (rng.next_u32() % PREFIXES)).to_be_bytes())
        .collect();
    group.bench_function("v4_100k_host_routes", |b| {
        b.iter(|| {
            next = (next + 1) % LOOKUP_POOL;
            hosts.lookup_v4(black_box(host_addrs[next]))
        })
    });
    group.finish();
}

fn bench_insert(c: &mut Criterion) {
    let mut group = c.benchmark_group("allowedips_insert");
    group.sample_size(10);

    group.throughput(Throughput::Elements(2 * u64::from(PREFIXES)));
    group.bench_function("setconf_100k_peers_v4_and_v6_host_routes", |b| {
        b.iter_batched(
            AllowedIps::new,
            |mut table| {
                for (v4, v6, peer) in host_routes(PREFIXES) {
                    table.insert(v4, 32, peer).expect("valid prefix");
                    table.insert(v6, 128, peer).expect("valid prefix");
                }
                table
            },
            BatchSize::PerIteration,
        )
    });

    const ONE_PEER_PREFIXES: usize = 130_561;
    let mut rng = rng();
    let prefixes: Vec<(IpAddr, u8)> = (0..ONE_PEER_PREFIXES)
        .map(|_| {
            let addr = IpAddr::V4(Ipv4Addr::from(rng.next_u32()));
            (addr, random_cidr(&mut rng, 32, 8))
        })
        .collect();
    group.throughput(Throughput::Elements(ONE_PEER_PREFIXES as u64));
    group.bench_function("one_peer_130561_v4_prefixes", |b| {
        b.iter_batched(
            AllowedIps::new,
            |mut table| {
                for &(addr, cidr) in &prefixes {
                    table.insert(addr, cidr, 0u32).expect("valid prefix");
                }
                table
            },
            BatchSize::PerIteration,
        )
    });
    group.bench_function("remove_peer_with_130561_v4_prefixes", |b| {
        b.iter_batched(
            || {
                let mut table = AllowedIps::new();
                for &(addr, cidr) in &prefixes {
                    table.insert(addr, cidr, 0u32).expect("valid prefix");
                }
                table.insert(prefixes[0].0, 0, 1).expect("valid prefix");
                table
            },
            |mut table| {
                table.remove_by_value(0);
                table
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, bench_lookup, bench_insert);
criterion_main!(benches);
