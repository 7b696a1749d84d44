//! Test support: two engines configured as each other's peer, a way to
//! bring a session up between them, and IP packets to send through it.
//!
//! Compiled for this crate's own tests and, with the `test-support`
//! feature, for benchmarks and for other crates' tests, so that each of them
//! does not build its own pair of engines. Not part of the protocol API.

use std::net::{IpAddr, SocketAddr};

use crate::crypto::SecretKey;
use crate::device::{Device, Now, SendOutcome};
use crate::peer::{Endpoint, PeerId};

/// A's UDP endpoint.
pub const A_ADDR: &str = "192.0.2.1:51820";
/// B's UDP endpoint.
pub const B_ADDR: &str = "192.0.2.2:51821";
/// A's tunnel address (B's allowed IP for A).
pub const A_TUN: [u8; 4] = [192, 168, 241, 1];
/// B's tunnel address (A's allowed IP for B).
pub const B_TUN: [u8; 4] = [192, 168, 241, 2];

/// An IPv4 packet (protocol ICMP, TTL 64) of `len` bytes (at least 20) from
/// `src` to `dst`, its payload a counting pattern so that corruption shows.
pub fn ipv4_packet(src: [u8; 4], dst: [u8; 4], len: usize) -> Vec<u8> {
    let len = len.max(20);
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 1;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    for (i, b) in p[20..].iter_mut().enumerate() {
        *b = i as u8;
    }
    p
}

/// A literal socket address.
pub fn sock(text: &str) -> SocketAddr {
    text.parse().expect("a literal socket address")
}

/// Two engines, A and B, each configured with the other as its one peer
/// (fixed keys and seeds, endpoints [`A_ADDR`]/[`B_ADDR`], allowed IPs
/// [`A_TUN`]/[`B_TUN`] unless [`Pair::configured_with`] says otherwise).
pub struct Pair {
    /// Engine A (initiates in [`Pair::connect`]).
    pub a: Device,
    /// Engine B.
    pub b: Device,
    /// B as seen by A.
    pub a_peer: PeerId,
    /// A as seen by B.
    pub b_peer: PeerId,
    /// The time both engines are driven at.
    pub now: Now,
    /// A's tunnel address.
    pub a_tun: [u8; 4],
    /// B's tunnel address.
    pub b_tun: [u8; 4],
}

impl Pair {
    /// The two engines, configured but without a session.
    pub fn configured(now: Now) -> Pair {
        Pair::configured_with(now, A_TUN, B_TUN)
    }

    /// [`Pair::configured`] with other tunnel addresses.
    pub fn configured_with(now: Now, a_tun: [u8; 4], b_tun: [u8; 4]) -> Pair {
        let (ka, kb) = (
            SecretKey::from_bytes([0x11; 32]),
            SecretKey::from_bytes([0x22; 32]),
        );
        let (pa, pb) = (ka.public_key(), kb.public_key());
        let mut a = Device::new([1; 32]);
        let mut b = Device::new([2; 32]);
        a.set_private_key(Some(ka));
        b.set_private_key(Some(kb));
        let a_peer = a.add_peer(pb).expect("B's key differs from A's");
        let b_peer = b.add_peer(pa).expect("A's key differs from B's");
        a.set_endpoint(a_peer, sock(B_ADDR));
        b.set_endpoint(b_peer, sock(A_ADDR));
        a.add_allowed_ip(a_peer, IpAddr::from(b_tun), 32)
            .expect("a valid prefix");
        b.add_allowed_ip(b_peer, IpAddr::from(a_tun), 32)
            .expect("a valid prefix");
        Pair {
            a,
            b,
            a_peer,
            b_peer,
            now,
            a_tun,
            b_tun,
        }
    }

    /// The two engines with a confirmed session: A sends a packet (which
    /// starts the handshake), the datagrams are moved until both are quiet.
    /// Panics if A cannot then send straight away.
    pub fn connected(now: Now) -> Pair {
        let mut pair = Pair::configured(now);
        pair.connect();
        pair
    }

    /// Brings the session up (see [`Pair::connected`]).
    pub fn connect(&mut self) {
        let packet = ipv4_packet(self.a_tun, self.b_tun, 84);
        let mut out = vec![0u8; 256];
        self.a.send(self.now, &packet, &mut out);
        self.pump();
        let outcome = self.a.send(self.now, &packet, &mut out);
        assert!(
            matches!(outcome, SendOutcome::Sent { .. }),
            "no session after the handshake: {outcome:?}"
        );
    }

    /// Moves every pending datagram to the other engine until both are
    /// quiet; panics if they never are.
    pub fn pump(&mut self) {
        for _ in 0..1000 {
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
                return;
            }
        }
        panic!("the engines never went quiet");
    }
}
