//! [`Device::network_changed`]: a client whose address, port and NAT mapping
//! all change gets traffic back within one handshake after the call, where
//! the protocol's timers alone take KEEPALIVE_TIMEOUT + REKEY_TIMEOUT.

use super::*;
use crate::constants::{KEEPALIVE_TIMEOUT, REKEY_TIMEOUT, REKEY_TIMEOUT_JITTER_MAX};
use crate::peer::LocalAddr;
use crate::testing::{ipv4_packet, sock, Pair, A_ADDR, B_ADDR};

/// A's address after the change (another network, another port).
const A_MOVED: &str = "198.51.100.7:40001";

/// Engine A (the client) and B (the server) over a network on which A's
/// address can change: afterwards, datagrams A sends from its old sticky
/// source are lost (that address is gone), and so are datagrams B sends to
/// A's old address (the NAT mapping is gone).
struct Sim {
    pair: Pair,
    a_addr: SocketAddr,
    moved: bool,
    /// IP packets A's tunnel received from B.
    delivered_to_a: usize,
}

impl Sim {
    /// A and B with a session, A's sticky source learnt from B's packets.
    fn connected() -> Sim {
        let mut sim = Sim {
            pair: Pair::connected(Now::system()),
            a_addr: sock(A_ADDR),
            moved: false,
            delivered_to_a: 0,
        };
        sim.round_trip();
        let endpoint = sim.pair.a.peer(sim.pair.a_peer).unwrap().endpoint.unwrap();
        assert!(endpoint.local.is_some(), "A keeps a sticky source");
        assert_eq!(sim.delivered_to_a, 1);
        // Later on: the handshake that made the session is long past.
        sim.idle(REKEY_TIMEOUT * 4);
        sim
    }

    /// Lets `d` pass without traffic, firing timers at their deadlines.
    fn idle(&mut self, d: Duration) {
        let end = self.pair.now.mono + d;
        while let Some(t) = [self.pair.a.poll_timeout(), self.pair.b.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
            .filter(|t| *t <= end)
        {
            self.pair.now = self.pair.now.advance(t - self.pair.now.mono);
            self.pair.a.handle_timeout(self.pair.now);
            self.pair.b.handle_timeout(self.pair.now);
            self.pump();
        }
        self.pair.now = self.pair.now.advance(end - self.pair.now.mono);
    }

    fn local_of(addr: SocketAddr) -> LocalAddr {
        LocalAddr {
            ip: addr.ip(),
            ifindex: 1,
        }
    }

    /// A's address and port change; the old ones stop working.
    fn move_a(&mut self) {
        self.a_addr = sock(A_MOVED);
        self.moved = true;
    }

    /// Moves datagrams both ways, by the network's rules, until quiet.
    fn pump(&mut self) {
        let now = self.pair.now;
        let old_local = Self::local_of(sock(A_ADDR));
        for _ in 0..100 {
            let mut moved = false;
            while let Some(mut t) = self.pair.a.poll_transmit() {
                moved = true;
                if self.moved && t.endpoint.local == Some(old_local) {
                    continue; // sent from an address A no longer has
                }
                self.pair
                    .b
                    .receive(now, Endpoint::from(self.a_addr), &mut t.data);
            }
            while let Some(mut t) = self.pair.b.poll_transmit() {
                moved = true;
                if t.endpoint.addr != self.a_addr {
                    continue; // to the old address: no mapping any more
                }
                let from = Endpoint {
                    addr: sock(B_ADDR),
                    local: Some(Self::local_of(self.a_addr)),
                };
                if let ReceiveOutcome::Deliver { .. } = self.pair.a.receive(now, from, &mut t.data)
                {
                    self.delivered_to_a += 1;
                }
            }
            if !moved {
                return;
            }
        }
        panic!("the engines never went quiet");
    }

    /// A sends a request; B, if it got it, answers.
    fn round_trip(&mut self) {
        let (a_tun, b_tun, now) = (self.pair.a_tun, self.pair.b_tun, self.pair.now);
        send_through_outbox(&mut self.pair.a, now, &ipv4_packet(a_tun, b_tun, 84));
        let received_before = self.pair.b.peer(self.pair.b_peer).unwrap().stats.rx_packets;
        self.pump();
        let got_it = self.pair.b.peer(self.pair.b_peer).unwrap().stats.rx_packets > received_before;
        if got_it {
            send_through_outbox(&mut self.pair.b, now, &ipv4_packet(b_tun, a_tun, 84));
            self.pump();
        }
    }

    /// [`Sim::time_to_delivery`] of answers to A's requests.
    fn time_to_answer(&mut self, d: Duration, step: Duration) -> Option<Duration> {
        self.time_to_delivery(d, step, Sim::round_trip)
    }

    /// B pushes a packet to A without being asked (A sends nothing).
    fn push_from_b(&mut self) {
        let (a_tun, b_tun, now) = (self.pair.a_tun, self.pair.b_tun, self.pair.now);
        send_through_outbox(&mut self.pair.b, now, &ipv4_packet(b_tun, a_tun, 84));
        self.pump();
    }

    /// Lets up to `d` pass in steps of `step`, firing timers and making
    /// `traffic` once per step, until A's tunnel gets a packet. Returns the
    /// time that took, or None if none came within `d`.
    fn time_to_delivery(
        &mut self,
        d: Duration,
        step: Duration,
        traffic: fn(&mut Sim),
    ) -> Option<Duration> {
        let start = self.pair.now.mono;
        let answers = self.delivered_to_a;
        while self.pair.now.mono - start <= d {
            self.pair.a.handle_timeout(self.pair.now);
            self.pair.b.handle_timeout(self.pair.now);
            self.pump();
            traffic(self);
            if self.delivered_to_a > answers {
                return Some(self.pair.now.mono - start);
            }
            self.pair.now = self.pair.now.advance(step);
        }
        None
    }
}

/// Encrypts an IP packet and, if it went out at once, queues the datagram
/// in the engine's outbox, so that [`Sim::pump`] carries it with the rest.
fn send_through_outbox(device: &mut Device, now: Now, packet: &[u8]) {
    let mut out = vec![0u8; packet.len() + 64];
    if let SendOutcome::Sent { len, endpoint, .. } = device.send(now, packet, &mut out) {
        out.truncate(len);
        device.outbox.push_back(Transmit {
            peer: None,
            endpoint,
            data: out,
        });
    }
}

const STEP: Duration = Duration::from_millis(100);

#[test]
fn without_the_call_only_the_timers_bring_traffic_back() {
    let mut sim = Sim::connected();
    sim.move_a();
    let worst = KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX + STEP;
    let took = sim
        .time_to_answer(worst, STEP)
        .expect("the rekey timer recovers");
    assert!(
        took >= KEEPALIVE_TIMEOUT + REKEY_TIMEOUT,
        "no answer before the new-handshake timer, took {took:?}"
    );
}

#[test]
fn after_the_call_traffic_is_back_within_one_handshake() {
    let mut sim = Sim::connected();
    sim.move_a();
    let handshakes = sim
        .pair
        .a
        .peer(sim.pair.a_peer)
        .unwrap()
        .stats
        .handshakes_completed;
    sim.pair.a.network_changed(sim.pair.now);
    let endpoint = sim.pair.a.peer(sim.pair.a_peer).unwrap().endpoint.unwrap();
    assert_eq!(endpoint.local, None, "sticky source forgotten");
    let took = sim.time_to_answer(STEP, STEP).expect("an answer at once");
    assert_eq!(took, Duration::ZERO, "no timer had to fire");
    let stats = sim.pair.a.peer(sim.pair.a_peer).unwrap().stats;
    assert_eq!(
        stats.handshakes_completed,
        handshakes + 1,
        "one fresh handshake"
    );
    let b_sees = sim.pair.b.peer(sim.pair.b_peer).unwrap().endpoint.unwrap();
    assert_eq!(b_sees.addr, sock(A_MOVED), "B roamed to A's new address");
}

/// A client that only receives (B pushes, A sends nothing) never gets
/// traffic back by the timers alone; after the call, at once: the keepalive
/// makes B roam to A's new address.
#[test]
fn a_client_that_only_receives_is_found_again_after_the_call() {
    let mut sim = Sim::connected();
    sim.move_a();
    let long = (KEEPALIVE_TIMEOUT + REKEY_TIMEOUT) * 2;
    assert_eq!(sim.time_to_delivery(long, STEP, Sim::push_from_b), None);
    sim.pair.a.network_changed(sim.pair.now);
    let took = sim.time_to_delivery(STEP, STEP, Sim::push_from_b);
    assert_eq!(took, Some(Duration::ZERO));
}

#[test]
fn the_call_keeps_the_initiation_rate_rule() {
    let mut sim = Sim::connected();
    let initiations = |sim: &mut Sim| {
        let mut n = 0;
        while let Some(e) = sim.pair.a.poll_event() {
            n += usize::from(matches!(e, Event::HandshakeInitiated { .. }));
        }
        n
    };
    initiations(&mut sim);
    sim.pair.a.network_changed(sim.pair.now);
    sim.pair.a.network_changed(sim.pair.now);
    assert_eq!(initiations(&mut sim), 1, "one initiation per REKEY_TIMEOUT");
    sim.pair.now = sim.pair.now.advance(REKEY_TIMEOUT);
    sim.pair.a.network_changed(sim.pair.now);
    assert_eq!(initiations(&mut sim), 1, "and another once it passed");
}

#[test]
fn peers_that_never_had_a_session_are_left_alone() {
    let mut pair = Pair::configured(Now::system());
    pair.a.network_changed(pair.now);
    assert_eq!(pair.a.poll_transmit(), None);
    assert_eq!(pair.a.poll_timeout(), None);
}
