//! Per-peer costs of the engine: one peer's data path and the timer calls
//! with 1 peer against many configured peers (issue #5: "100 000 peers
//! within 10 % of one").
//!
//! The extra peers have random public keys, one /32 each packed right next
//! to the measured peer's address (so the routing lookup walks the dense
//! part of the trie), and every fourth has an endpoint. `idle` peers have no
//! session and no timer armed; in the `armed` case every extra peer with an
//! endpoint sent an initiation, so it has a retransmit deadline in the timer
//! heap (fewer peers by default: every initiation costs three
//! Diffie-Hellman operations).
//!
//! `FG_BENCH_PEERS=1,1000,100000` and `FG_BENCH_ARMED_PEERS=1,10000`
//! change the sizes.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};
use ferroguard_proto::crypto::PublicKey;
use ferroguard_proto::device::{Device, Now, ReceiveOutcome, SendOutcome};
use ferroguard_proto::peer::{Endpoint, PeerId};
use ferroguard_proto::testing::{ipv4_packet, sock, Pair, A_ADDR};
use rand_core::{RngCore, SeedableRng};

/// A's tunnel address (routed to A by B).
const A_TUN: Ipv4Addr = Ipv4Addr::new(10, 63, 255, 255);
/// B's tunnel address: the first of a block the extra peers fill.
const B_TUN: Ipv4Addr = Ipv4Addr::new(10, 64, 0, 0);
const PACKET_LEN: usize = 1420;

fn peer_counts(var: &str, default: &[usize]) -> Vec<usize> {
    std::env::var(var)
        .ok()
        .map(|list| {
            list.split(',')
                .filter_map(|n| n.trim().parse().ok())
                .collect()
        })
        .filter(|counts: &Vec<usize>| !counts.is_empty())
        .unwrap_or_else(|| default.to_vec())
}

/// Adds `count` peers with random keys and one /32 each after `B_TUN`;
/// every fourth gets an endpoint. Returns their ids.
fn add_extra_peers(device: &mut Device, count: usize, seed: u64) -> Vec<PeerId> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let base = u32::from(B_TUN);
    (1..=count as u32)
        .map(|i| {
            let mut key = [0u8; 32];
            rng.fill_bytes(&mut key);
            let id = device.add_peer(PublicKey(key)).expect("a fresh key");
            let addr = IpAddr::V4(Ipv4Addr::from(base + i));
            device.add_allowed_ip(id, addr, 32).expect("a valid prefix");
            if i % 4 == 0 {
                let port = 1024 + (i % 60000) as u16;
                device.set_endpoint(id, SocketAddr::new(IpAddr::from([198, 51, 100, 1]), port));
            }
            id
        })
        .collect()
}

/// Two engines with a session between them, each with `extra` more peers
/// whose /32s follow `B_TUN` (so the routing lookup walks the dense part of
/// the trie).
fn pair_with_extra_peers(extra: usize) -> Pair {
    let mut pair = Pair::configured_with(Now::system(), A_TUN.octets(), B_TUN.octets());
    add_extra_peers(&mut pair.a, extra, 1);
    add_extra_peers(&mut pair.b, extra, 2);
    pair.connect();
    let mut out = vec![0u8; PACKET_LEN + 64];
    let reply = ipv4(B_TUN, A_TUN, 100);
    let outcome = pair.b.send(pair.now, &reply, &mut out);
    assert!(matches!(outcome, SendOutcome::Sent { .. }), "{outcome:?}");
    pair
}

/// An IPv4 packet of `len` bytes from `src` to `dst`.
fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, len: usize) -> Vec<u8> {
    ipv4_packet(src.octets(), dst.octets(), len)
}

/// `Device::send` and `Device::receive` of one 1420-byte packet of the one
/// active peer.
fn data_path(c: &mut Criterion) {
    let mut group = c.benchmark_group("device");
    group.sample_size(30);
    for peers in peer_counts("FG_BENCH_PEERS", &[1, 100_000]) {
        let mut pair = pair_with_extra_peers(peers - 1);
        let packet = ipv4(A_TUN, B_TUN, PACKET_LEN);
        let mut out = vec![0u8; PACKET_LEN + 64];
        let now = pair.now;
        group.bench_with_input(BenchmarkId::new("send", peers), &peers, |bench, _| {
            bench.iter(|| {
                let outcome = pair.a.send(now, black_box(&packet), &mut out);
                assert!(matches!(outcome, SendOutcome::Sent { .. }));
            })
        });
        // Receiving needs fresh counters: A seals ahead, B opens in order.
        let from = Endpoint::from(sock(A_ADDR));
        group.bench_with_input(BenchmarkId::new("receive", peers), &peers, |bench, _| {
            bench.iter_batched_ref(
                || match pair.a.send(now, &packet, &mut out) {
                    SendOutcome::Sent { len, .. } => out[..len].to_vec(),
                    other => panic!("not sent: {other:?}"),
                },
                |datagram| {
                    let outcome = pair.b.receive(now, from, datagram);
                    assert!(matches!(outcome, ReceiveOutcome::Deliver { .. }));
                },
                BatchSize::SmallInput,
            )
        });
        // The routing lookup alone, for the one active peer's address.
        group.bench_with_input(BenchmarkId::new("route", peers), &peers, |bench, _| {
            bench.iter(|| black_box(pair.a.allowed_ips().lookup(IpAddr::V4(black_box(B_TUN)))))
        });
    }
    group.finish();
}

/// The timer thread's calls when nothing is due: `poll_timeout` and
/// `handle_timeout`, with idle peers (no timer armed) and with peers that
/// each have a retransmit deadline pending.
fn timers(c: &mut Criterion) {
    let mut group = c.benchmark_group("device_timers");
    group.sample_size(30);
    for peers in peer_counts("FG_BENCH_PEERS", &[1, 100_000]) {
        let mut pair = pair_with_extra_peers(peers - 1);
        let now = pair.now.advance(Duration::from_millis(1));
        group.bench_with_input(BenchmarkId::new("idle", peers), &peers, |bench, _| {
            bench.iter(|| {
                pair.a.handle_timeout(now);
                black_box(pair.a.poll_timeout())
            })
        });
    }
    for peers in peer_counts("FG_BENCH_ARMED_PEERS", &[1, 10_000]) {
        let mut pair = pair_with_extra_peers(0);
        let extra = add_extra_peers(&mut pair.a, peers - 1, 3);
        // Data for every peer with an endpoint starts its handshake.
        let mut out = vec![0u8; 128];
        let base = u32::from(B_TUN);
        for i in 1..=extra.len() as u32 {
            let packet = ipv4(A_TUN, Ipv4Addr::from(base + i), 60);
            pair.a.send(pair.now, &packet, &mut out);
        }
        while pair.a.poll_transmit().is_some() {}
        let now = pair.now.advance(Duration::from_millis(1));
        group.bench_with_input(BenchmarkId::new("armed", peers), &peers, |bench, _| {
            bench.iter(|| {
                pair.a.handle_timeout(now);
                black_box(pair.a.poll_timeout())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, data_path, timers);
criterion_main!(benches);
