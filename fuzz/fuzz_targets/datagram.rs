//! Arbitrary datagrams consumed by a device that has a peer and an
//! established session, as a peer on the network would send them. With the
//! first input byte odd, the harness fixes up mac1 so that the handshake
//! code behind the mac1 gate is reached too. Nothing may panic, and the
//! engine's own invariants (feature `debug-checks`) must hold.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use ferroguard_proto::crypto::{hash, mac, SecretKey};
use ferroguard_proto::device::{Device, Now};
use ferroguard_proto::peer::Endpoint;
use libfuzzer_sys::fuzz_target;

fn base_now() -> Now {
    static START: OnceLock<Instant> = OnceLock::new();
    Now {
        mono: *START.get_or_init(Instant::now),
        wall: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
    }
}

fn device() -> (Device, [u8; 32]) {
    let ours = SecretKey::from_bytes([1; 32]);
    let public = ours.public_key();
    let mut d = Device::new([9; 32]);
    d.set_private_key(Some(ours));
    let peer = SecretKey::from_bytes([2; 32]).public_key();
    let id = d.add_peer(peer).unwrap();
    d.set_endpoint(id, "127.0.0.1:2".parse().unwrap());
    d.add_allowed_ip(id, "10.0.0.0".parse().unwrap(), 8)
        .unwrap();
    (d, public.0)
}

fuzz_target!(|input: &[u8]| {
    let Some((&mode, rest)) = input.split_first() else {
        return;
    };
    let (mut d, public) = device();
    let from: Endpoint = "127.0.0.1:2"
        .parse::<std::net::SocketAddr>()
        .unwrap()
        .into();
    let mut now = base_now();
    for chunk in rest.split(|&b| b == 0xff).take(16) {
        let mut datagram = chunk.to_vec();
        if mode & 1 == 1 && datagram.len() >= 32 {
            let at = datagram.len() - 32;
            let key = hash(&[b"mac1----", &public]);
            let m = mac(&key, &[&datagram[..at]]);
            datagram[at..at + 16].copy_from_slice(&m);
        }
        d.set_handshake_backlog(if mode & 2 == 2 { 10_000 } else { 0 });
        let _ = d.receive(now, from, &mut datagram);
        while d.poll_transmit().is_some() {}
        now = now.advance(Duration::from_millis(u64::from(mode)));
        d.handle_timeout(now);
    }
});
