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
use ferroguard_proto::crypto::{PublicKey, SecretKey};
use ferroguard_proto::device::{Device, Now, ReceiveOutcome, SendOutcome};
use ferroguard_proto::peer::{Endpoint, PeerId};
use rand_core::{RngCore, SeedableRng};

const A_ADDR: &str = "192.0.2.1:51820";
const B_ADDR: &str = "192.0.2.2:51820";
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

fn sock(s: &str) -> SocketAddr {
    s.parse().expect("a valid socket address")
}

/// An IPv4 packet of `len` bytes from `src` to `dst`.
fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, len: usize) -> Vec<u8> {
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    p
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

/// Two engines with a session between them, each with `extra` more peers.
struct Pair {
    a: Device,
    b: Device,
    now: Now,
}

impl Pair {
    fn new(extra: usize) -> Pair {
        let ka = SecretKey::from_bytes([0x11; 32]);
        let kb = SecretKey::from_bytes([0x22; 32]);
        let (pa, pb) = (ka.public_key(), kb.public_key());
        let mut a = Device::new([1; 32]);
        let mut b = Device::new([2; 32]);
        a.set_private_key(Some(ka));
        b.set_private_key(Some(kb));
        add_extra_peers(&mut a, extra, 1);
        add_extra_peers(&mut b, extra, 2);
        let a_peer = a.add_peer(pb).expect("B's key");
        let b_peer = b.add_peer(pa).expect("A's key");
        a.set_endpoint(a_peer, sock(B_ADDR));
        b.set_endpoint(b_peer, sock(A_ADDR));
        a.add_allowed_ip(a_peer, IpAddr::V4(B_TUN), 32)
            .expect("prefix");
        b.add_allowed_ip(b_peer, IpAddr::V4(A_TUN), 32)
            .expect("prefix");
        let mut pair = Pair {
            a,
            b,
            now: Now::system(),
        };
        pair.handshake();
        pair
    }

    /// Completes a handshake (A initiates) and confirms the session both ways.
    fn handshake(&mut self) {
        let mut out = vec![0u8; PACKET_LEN + 64];
        let packet = ipv4(A_TUN, B_TUN, 100);
        let outcome = self.a.send(self.now, &packet, &mut out);
        assert!(matches!(outcome, SendOutcome::Queued(_)), "{outcome:?}");
        for _ in 0..10 {
            let mut moved = false;
            while let Some(mut t) = self.a.poll_transmit() {
                moved = true;
                self.b
                    .receive(self.now, Endpoint::from(sock(A_ADDR)), &mut t.data);
            }
            while let Some(mut t) = self.b.poll_transmit() {
                moved = true;
                self.a
                    .receive(self.now, Endpoint::from(sock(B_ADDR)), &mut t.data);
            }
            if !moved {
                break;
            }
        }
        let reply = ipv4(B_TUN, A_TUN, 100);
        let outcome = self.b.send(self.now, &reply, &mut out);
        assert!(matches!(outcome, SendOutcome::Sent { .. }), "{outcome:?}");
    }
}

/// `Device::send` and `Device::receive` of one 1420-byte packet of the one
/// active peer.
fn data_path(c: &mut Criterion) {
    let mut group = c.benchmark_group("device");
    group.sample_size(30);
    for peers in peer_counts("FG_BENCH_PEERS", &[1, 100_000]) {
        let mut pair = Pair::new(peers - 1);
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
        let mut pair = Pair::new(peers - 1);
        let now = pair.now.advance(Duration::from_millis(1));
        group.bench_with_input(BenchmarkId::new("idle", peers), &peers, |bench, _| {
            bench.iter(|| {
                pair.a.handle_timeout(now);
                black_box(pair.a.poll_timeout())
            })
        });
    }
    for peers in peer_counts("FG_BENCH_ARMED_PEERS", &[1, 10_000]) {
        let mut pair = Pair::new(0);
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
