//! Full sessions between two engines over a simulated network, driven by a
//! fake clock.

use super::*;
use crate::constants::{
    KEEPALIVE_TIMEOUT, REJECT_AFTER_TIME, REKEY_ATTEMPT_TIME, ZERO_KEY_MATERIAL_AFTER,
};
use crate::crypto::SecretKey;

use crate::testing::{ipv4_packet as ipv4, sock, Pair, A_ADDR, A_TUN, B_ADDR, B_TUN};

struct Net {
    a: Device,
    b: Device,
    a_peer: PeerId, // B as seen by A
    b_peer: PeerId, // A as seen by B
    now: Now,
    delivered_a: Vec<Vec<u8>>,
    delivered_b: Vec<Vec<u8>>,
    /// Every datagram that crossed the network, (from_a, bytes).
    wire: Vec<(bool, Vec<u8>)>,
}

impl Net {
    fn new(psk: [u8; 32]) -> Net {
        let Pair {
            mut a,
            mut b,
            a_peer,
            b_peer,
            now,
            ..
        } = Pair::configured(Now::system());
        a.set_preshared_key(a_peer, SymmetricKey(psk));
        b.set_preshared_key(b_peer, SymmetricKey(psk));
        Net {
            a,
            b,
            a_peer,
            b_peer,
            now,
            delivered_a: vec![],
            delivered_b: vec![],
            wire: vec![],
        }
    }

    /// Moves datagrams between the two engines until both are quiet.
    fn pump(&mut self) {
        for _ in 0..1000 {
            let mut moved = false;
            while let Some(t) = self.a.poll_transmit() {
                moved = true;
                self.deliver(true, t.data);
            }
            while let Some(t) = self.b.poll_transmit() {
                moved = true;
                self.deliver(false, t.data);
            }
            if !moved {
                return;
            }
        }
        panic!("the engines never went quiet");
    }

    fn deliver(&mut self, from_a: bool, mut data: Vec<u8>) {
        self.wire.push((from_a, data.clone()));
        let now = self.now;
        let (dev, src, sink) = if from_a {
            (&mut self.b, A_ADDR, &mut self.delivered_b)
        } else {
            (&mut self.a, B_ADDR, &mut self.delivered_a)
        };
        if let ReceiveOutcome::Deliver { len, .. } =
            dev.receive(now, Endpoint::from(sock(src)), &mut data)
        {
            sink.push(data[16..16 + len].to_vec());
        }
    }

    /// Sends an IP packet from A's tunnel (or B's) and pumps the network.
    fn send(&mut self, from_a: bool, packet: &[u8]) -> SendOutcome {
        let mut out = vec![0u8; packet.len() + 64];
        let now = self.now;
        let dev = if from_a { &mut self.a } else { &mut self.b };
        let outcome = dev.send(now, packet, &mut out);
        if let SendOutcome::Sent { len, .. } = outcome {
            self.deliver(from_a, out[..len].to_vec());
        }
        self.pump();
        outcome
    }

    /// Encrypts a `len`-byte packet from A to B over the existing session
    /// without delivering it: the transport message, for tests to tamper with.
    fn seal_a_to_b(&mut self, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len + 64];
        let outcome = self.a.send(self.now, &ipv4(A_TUN, B_TUN, len), &mut out);
        let SendOutcome::Sent { len, .. } = outcome else {
            panic!("a session was expected, got {outcome:?}")
        };
        out.truncate(len);
        out
    }

    fn ping_a_to_b(&mut self, len: usize) -> SendOutcome {
        self.send(true, &ipv4(A_TUN, B_TUN, len))
    }

    /// Advances the clock, firing timers on both sides at their deadlines.
    fn advance(&mut self, d: Duration) {
        let end = self.now.mono + d;
        loop {
            let next = [self.a.poll_timeout(), self.b.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            match next {
                Some(t) if t <= end => {
                    let step = t.saturating_duration_since(self.now.mono);
                    self.now = self.now.advance(step);
                    self.a.handle_timeout(self.now);
                    self.b.handle_timeout(self.now);
                    self.pump();
                }
                _ => break,
            }
        }
        let rest = end.saturating_duration_since(self.now.mono);
        self.now = self.now.advance(rest);
    }

    fn count_wire(&mut self, from_a: bool, msg_type: u8) -> usize {
        self.wire
            .iter()
            .filter(|(a, d)| *a == from_a && d[0] == msg_type)
            .count()
    }
}

#[test]
fn handshake_then_data_both_ways() {
    let mut net = Net::new([0; 32]);
    let packet = ipv4(A_TUN, B_TUN, 84);
    assert_eq!(net.ping_a_to_b(84), SendOutcome::Queued(net.a_peer));
    assert_eq!(
        net.delivered_b,
        vec![packet.clone()],
        "staged packet flushed"
    );
    // Now a session exists: the fast path encrypts straight into the buffer.
    assert!(matches!(net.ping_a_to_b(84), SendOutcome::Sent { .. }));
    let reply = ipv4(B_TUN, A_TUN, 84);
    assert!(matches!(net.send(false, &reply), SendOutcome::Sent { .. }));
    assert_eq!(net.delivered_b.len(), 2);
    assert_eq!(net.delivered_a, vec![reply]);
    let pa = net.a.peer(net.a_peer).unwrap();
    assert!(pa.last_handshake.is_some());
    assert_eq!(pa.endpoint.unwrap().addr, sock(B_ADDR));
}

/// The kernel's netns.sh counter check: after a handshake and ten 84-byte
/// pings each way, the initiator has received 92 + 10 × 128 = 1372 bytes and
/// sent 148 + 10 × 128 = 1428.
#[test]
fn byte_counters_match_the_kernel() {
    let mut net = Net::new([7; 32]);
    for _ in 0..10 {
        net.ping_a_to_b(84);
        net.send(false, &ipv4(B_TUN, A_TUN, 84));
    }
    let pa = net.a.peer(net.a_peer).unwrap();
    assert_eq!(pa.rx_bytes, 1372);
    assert_eq!(pa.tx_bytes, 1428);
    let pb = net.b.peer(net.b_peer).unwrap();
    assert_eq!(pb.rx_bytes, 1428);
    assert_eq!(pb.tx_bytes, 1372);
}

#[test]
fn responder_confirms_with_first_data_packet_only() {
    let mut net = Net::new([0; 32]);
    net.send(false, &ipv4(B_TUN, A_TUN, 60));
    // A responded; its new keypair waits in `next` until data arrives.
    let pa = net.a.peer(net.a_peer).unwrap();
    assert!(
        pa.keypairs.current.is_some(),
        "confirmed by B's staged packet"
    );
    assert_eq!(net.delivered_a.len(), 1);
}

#[test]
fn every_replayed_message_is_rejected() {
    let mut net = Net::new([0; 32]);
    net.ping_a_to_b(84);
    net.ping_a_to_b(84);
    let wire = net.wire.clone();
    for (from_a, data) in wire {
        let mut copy = data.clone();
        let now = net.now;
        let (dev, src) = if from_a {
            (&mut net.b, A_ADDR)
        } else {
            (&mut net.a, B_ADDR)
        };
        let outcome = dev.receive(now, Endpoint::from(sock(src)), &mut copy);
        let expected = match data[0] {
            1 => DropReason::TimestampReplay,
            2 => DropReason::UnknownIndex,
            _ => DropReason::Replay,
        };
        assert_eq!(
            outcome,
            ReceiveOutcome::Dropped(expected),
            "type {}",
            data[0]
        );
    }
}

#[test]
fn tampered_datagrams_are_dropped_and_change_nothing() {
    let mut net = Net::new([0; 32]);
    net.ping_a_to_b(100);
    let now = net.now;
    let good = net.seal_a_to_b(100);
    for i in 0..good.len() {
        let mut bad = good.clone();
        bad[i] ^= 0x04;
        let before = net.b.peer(net.b_peer).unwrap().rx_bytes;
        let outcome = net
            .b
            .receive(now, Endpoint::from(sock("203.0.113.9:9")), &mut bad);
        assert!(matches!(outcome, ReceiveOutcome::Dropped(_)), "byte {i}");
        let pb = net.b.peer(net.b_peer).unwrap();
        assert_eq!(pb.rx_bytes, before);
        assert_eq!(
            pb.endpoint.unwrap().addr,
            sock(A_ADDR),
            "no roaming on forgeries"
        );
    }
    let mut good = good;
    assert!(matches!(
        net.b.receive(now, Endpoint::from(sock(A_ADDR)), &mut good),
        ReceiveOutcome::Deliver { .. }
    ));
}

#[test]
fn roaming_follows_the_latest_authenticated_packet() {
    let mut net = Net::new([0; 32]);
    net.ping_a_to_b(84);
    let now = net.now;
    let mut out = net.seal_a_to_b(84);
    let len = out.len();
    let roamed = sock("198.51.100.7:4000");
    let outcome = net.b.receive(now, Endpoint::from(roamed), &mut out[..len]);
    assert!(matches!(outcome, ReceiveOutcome::Deliver { .. }));
    assert_eq!(
        net.b.peer(net.b_peer).unwrap().endpoint.unwrap().addr,
        roamed
    );
}

#[test]
fn inner_source_must_belong_to_the_sending_peer() {
    let mut net = Net::new([0; 32]);
    net.ping_a_to_b(84);
    let spoofed = ipv4([10, 9, 9, 9], B_TUN, 84);
    net.send(true, &spoofed);
    assert_eq!(net.delivered_b.len(), 1, "only the honest packet");
    assert_eq!(net.b.drop_count(DropReason::SourceNotAllowed), 1);
}

#[test]
fn no_route_and_no_endpoint() {
    let mut net = Net::new([0; 32]);
    let mut out = [0u8; 200];
    let now = net.now;
    assert_eq!(
        net.a.send(now, &ipv4(A_TUN, [10, 0, 0, 1], 40), &mut out),
        SendOutcome::NoRoute
    );
    let c = net.a.add_peer(PublicKey([5; 32])).unwrap();
    net.a
        .add_allowed_ip(c, "10.0.0.0".parse().unwrap(), 8)
        .unwrap();
    assert_eq!(
        net.a.send(now, &ipv4(A_TUN, [10, 0, 0, 1], 40), &mut out),
        SendOutcome::NoEndpoint(c)
    );
    assert_eq!(
        net.a.send(now, &[0x45, 0, 0], &mut out),
        SendOutcome::Invalid
    );
}

#[test]
fn low_order_peer_keys_never_send_anything() {
    let mut d = Device::new([3; 32]);
    d.set_private_key(Some(SecretKey::from_bytes([9; 32])));
    let mut one = [0u8; 32];
    one[0] = 1;
    for key in [[0u8; 32], one] {
        let id = d.add_peer(PublicKey(key)).unwrap();
        d.set_endpoint(id, sock("127.0.0.1:1111"));
        d.add_allowed_ip(id, "10.0.0.1".parse().unwrap(), 32)
            .unwrap();
        d.set_persistent_keepalive(Now::system(), id, 1);
        let mut out = [0u8; 200];
        d.send(Now::system(), &ipv4(A_TUN, [10, 0, 0, 1], 40), &mut out);
        d.remove_peer(id);
    }
    assert_eq!(d.poll_transmit(), None);
}

#[test]
fn a_taken_peer_is_gone_from_every_table_before_it_is_dropped() {
    let mut d = Device::new([3; 32]);
    let key = PublicKey([7; 32]);
    let id = d.add_peer(key).unwrap();
    d.add_allowed_ip(id, "10.0.0.1".parse().unwrap(), 32)
        .unwrap();
    let taken = d.take_peer(id);
    assert!(taken.is_some());
    assert!(d.peer(id).is_none());
    assert_eq!(d.peer_id(&key), None);
    assert_eq!(d.peer_count(), 0);
    assert!(d.take_peer(id).is_none(), "a peer is taken once");
    drop(taken);
    // The key and the prefix are free again.
    let again = d.add_peer(key).unwrap();
    d.add_allowed_ip(again, "10.0.0.1".parse().unwrap(), 32)
        .unwrap();
    assert_eq!(d.peer_count(), 1);
}

#[test]
fn our_own_key_is_not_a_peer_and_taking_a_peers_key_removes_it() {
    let mut d = Device::new([3; 32]);
    let key = SecretKey::from_bytes([9; 32]);
    let public = key.public_key();
    let other = SecretKey::from_bytes([8; 32]);
    d.set_private_key(Some(key));
    assert_eq!(d.add_peer(public), None);
    let id = d.add_peer(other.public_key()).unwrap();
    d.set_private_key(Some(other));
    assert!(d.peer(id).is_none());
    assert_eq!(d.peer_count(), 0);
}

#[test]
fn keepalive_after_receiving_data_and_sending_nothing() {
    let mut net = Net::new([0; 32]);
    net.ping_a_to_b(84);
    let before = net.count_wire(false, 4);
    net.advance(KEEPALIVE_TIMEOUT + Duration::from_millis(1));
    let keepalives = net
        .wire
        .iter()
        .filter(|(a, d)| !*a && d[0] == 4 && d.len() == 32)
        .count();
    assert_eq!(keepalives, 1, "B sent exactly one keepalive");
    assert_eq!(net.count_wire(false, 4), before + 1);
}

#[test]
fn rekey_after_time_is_done_by_the_initiator_on_send() {
    let mut net = Net::new([0; 32]);
    net.ping_a_to_b(84);
    assert_eq!(net.count_wire(true, 1), 1);
    net.advance(REKEY_AFTER_TIME + Duration::from_secs(1));
    let before = net.count_wire(true, 1);
    net.ping_a_to_b(84);
    assert_eq!(net.count_wire(true, 1), before + 1, "a new initiation");
    let current = net
        .a
        .peer(net.a_peer)
        .unwrap()
        .keypairs
        .current
        .as_ref()
        .unwrap();
    assert_eq!(current.created, net.now.mono, "the new session is current");
    assert!(net.delivered_b.len() >= 2);
}

#[test]
fn rekey_after_messages() {
    let mut net = Net::new([0; 32]);
    net.ping_a_to_b(84);
    let initiations = net.count_wire(true, 1);
    let peer = net.a.peers.get_mut(net.a_peer).unwrap();
    let keypair = peer.keypairs.current.as_mut().unwrap();
    keypair.set_send_counter_for_test(REKEY_AFTER_MESSAGES + 1);
    net.advance(REKEY_TIMEOUT);
    net.ping_a_to_b(84);
    assert_eq!(net.count_wire(true, 1), initiations + 1);
}

#[test]
fn expired_keys_are_refused() {
    let mut net = Net::new([0; 32]);
    net.ping_a_to_b(84);
    let now = net.now;
    let mut out = net.seal_a_to_b(84);
    let len = out.len();
    let later = now.advance(REJECT_AFTER_TIME);
    let outcome = net
        .b
        .receive(later, Endpoint::from(sock(A_ADDR)), &mut out[..len]);
    assert_eq!(outcome, ReceiveOutcome::Dropped(DropReason::KeypairExpired));
}

#[test]
fn unanswered_handshake_retries_with_jitter_then_gives_up() {
    let mut net = Net::new([0; 32]);
    // B is unreachable: drop everything A sends.
    let mut out = vec![0u8; 200];
    net.a.send(net.now, &ipv4(A_TUN, B_TUN, 84), &mut out);
    let mut times = vec![];
    let start = net.now.mono;
    for _ in 0..200 {
        if let Some(t) = net.a.poll_transmit() {
            assert_eq!(t.data[0], 1);
            times.push(net.now.mono.saturating_duration_since(start));
            continue;
        }
        let Some(deadline) = net.a.poll_timeout() else {
            break;
        };
        let step = deadline.saturating_duration_since(net.now.mono);
        net.now = net.now.advance(step);
        net.a.handle_timeout(net.now);
    }
    assert_eq!(times.len(), 20, "1 initiation + 19 retries, as the kernel");
    for pair in times.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(gap >= REKEY_TIMEOUT && gap < REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX);
    }
    assert!(times[19] >= REKEY_ATTEMPT_TIME, "gives up after about 90 s");
    let peer = net.a.peer(net.a_peer).unwrap();
    assert!(peer.staged.is_empty(), "staged packets purged on give-up");
    // After giving up, the key-zeroing timer ran and nothing stays armed.
    assert_eq!(net.a.poll_timeout(), None);
}

#[test]
fn keys_are_zeroed_after_540_seconds_without_a_handshake() {
    let mut net = Net::new([0; 32]);
    net.ping_a_to_b(84);
    // Cut the link so no new handshake can complete.
    let mut t = 0;
    while net.a.peer(net.a_peer).unwrap().keypairs.current.is_some() && t < 700 {
        net.now = net.now.advance(Duration::from_secs(1));
        net.a.handle_timeout(net.now);
        while net.a.poll_transmit().is_some() {}
        t += 1;
    }
    assert!(
        (ZERO_KEY_MATERIAL_AFTER.as_secs()..ZERO_KEY_MATERIAL_AFTER.as_secs() + 2).contains(&t),
        "zeroed at {t} s"
    );
    assert!(net.a.peer(net.a_peer).unwrap().keypairs.previous.is_none());
    assert_eq!(net.a.indices.len(), 0, "no index left behind");
}

#[test]
fn persistent_keepalive_starts_a_handshake_and_keeps_sending() {
    let mut net = Net::new([0; 32]);
    let now = net.now;
    net.a.set_persistent_keepalive(now, net.a_peer, 25);
    net.pump();
    assert_eq!(net.count_wire(true, 1), 1, "turning it on sent at once");
    let before = net.count_wire(true, 4);
    net.advance(Duration::from_secs(26));
    assert!(net.count_wire(true, 4) > before, "a keepalive after 25 s");
}

#[test]
fn cookie_reply_under_load_then_handshake_with_mac2() {
    let mut net = Net::new([0; 32]);
    net.b.set_handshake_backlog(10_000);
    net.ping_a_to_b(84);
    assert_eq!(net.count_wire(false, 3), 1, "B answered with a cookie");
    assert_eq!(net.count_wire(false, 2), 0, "and did no handshake work");
    assert!(net.delivered_b.is_empty());
    net.advance(REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX);
    assert_eq!(net.count_wire(false, 2), 1, "retry with mac2 was accepted");
    assert_eq!(net.delivered_b.len(), 1);
    let ea = net.a.peer(net.a_peer).unwrap().endpoint.unwrap();
    assert_eq!(ea.addr, sock(B_ADDR));
}

#[test]
fn initiation_flood_guard_and_timestamp_order() {
    let mut net = Net::new([0; 32]);
    net.ping_a_to_b(84);
    // A second initiation within 20 ms is refused even with a newer
    // timestamp (17 ms > one 2^24 ns whitening step).
    net.a.peers.get_mut(net.a_peer).unwrap().last_sent_handshake = None;
    net.now = net.now.advance(Duration::from_millis(17));
    let (now, id) = (net.now, net.a_peer);
    net.a.send_initiation(now, id, false);
    net.pump();
    assert_eq!(net.b.drop_count(DropReason::InitiationFlood), 1);
    // The first (accepted) initiation replayed later is refused by its timestamp.
    let replay = net
        .wire
        .iter()
        .find(|(a, d)| *a && d[0] == 1)
        .unwrap()
        .1
        .clone();
    net.now = net.now.advance(Duration::from_millis(50));
    let mut copy = replay.clone();
    let outcome = net
        .b
        .receive(net.now, Endpoint::from(sock(A_ADDR)), &mut copy);
    assert_eq!(
        outcome,
        ReceiveOutcome::Dropped(DropReason::TimestampReplay)
    );
    // A fresh one after 20 ms is accepted.
    net.a.peers.get_mut(net.a_peer).unwrap().last_sent_handshake = None;
    let (now, id) = (net.now, net.a_peer);
    net.a.send_initiation(now, id, false);
    let before = net.count_wire(false, 2);
    net.pump();
    assert_eq!(net.count_wire(false, 2), before + 1);
}

#[test]
fn private_key_change_retires_sessions() {
    let mut net = Net::new([0; 32]);
    net.ping_a_to_b(84);
    net.a
        .set_private_key(Some(SecretKey::from_bytes([0x33; 32])));
    let peer = net.a.peer(net.a_peer).unwrap();
    assert!(!peer
        .keypairs
        .current
        .as_ref()
        .unwrap()
        .can_send(net.now.mono));
    assert!(peer.last_sent_handshake.is_none());
}

#[test]
fn invariants_hold_through_a_session_and_a_broken_one_is_caught() {
    let mut net = Net::new([0; 32]);
    net.ping_a_to_b(84);
    net.advance(Duration::from_secs(200));
    net.a.check_invariants();
    net.b.check_invariants();
    // Test-only sabotage: an index that no peer owns.
    net.a.indices.allocate(&mut net.a.rng, net.a_peer);
    let caught =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| net.a.check_invariants()));
    let message = caught.unwrap_err();
    let text = message
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| message.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap();
    assert!(
        text.contains("index table holds indices no peer owns"),
        "{text}"
    );
}

#[test]
fn events_tell_what_happened() {
    let mut net = Net::new([0; 32]);
    net.ping_a_to_b(84);
    let a_events: Vec<Event> = std::iter::from_fn(|| net.a.poll_event()).collect();
    assert_eq!(
        a_events,
        vec![
            Event::HandshakeInitiated {
                peer: net.a_peer,
                retry: false
            },
            Event::HandshakeCompleted { peer: net.a_peer },
        ]
    );
    let b_events: Vec<Event> = std::iter::from_fn(|| net.b.poll_event()).collect();
    assert_eq!(
        b_events,
        vec![
            Event::HandshakeAnswered { peer: net.b_peer },
            Event::HandshakeCompleted { peer: net.b_peer },
        ]
    );
}

/// Packet counters follow the byte counters message by message: after the
/// handshake and ten pings each way the initiator sent an initiation, a
/// first data packet and nine more (11 messages with the replies' 10) and
/// received the response and ten replies.
#[test]
fn packet_and_handshake_counters_follow_the_byte_counters() {
    let mut net = Net::new([7; 32]);
    for _ in 0..10 {
        net.ping_a_to_b(84);
        net.send(false, &ipv4(B_TUN, A_TUN, 84));
    }
    let sa = net.a.peer_stats(net.a_peer).unwrap();
    let sb = net.b.peer_stats(net.b_peer).unwrap();
    assert_eq!((sa.tx_packets, sa.rx_packets), (11, 11));
    assert_eq!((sb.tx_packets, sb.rx_packets), (11, 11));
    assert_eq!(sa.tx_packets, sb.rx_packets);
    assert_eq!(sa.handshakes_completed, 1);
    assert_eq!(sb.handshakes_completed, 1, "confirmed by the first data");
    assert_eq!(sa.drops, DropCounts::default());
    // A rekey later completes a second handshake on both sides.
    net.advance(REKEY_AFTER_TIME);
    net.ping_a_to_b(84);
    net.send(false, &ipv4(B_TUN, A_TUN, 84));
    assert_eq!(
        net.a.peer_stats(net.a_peer).unwrap().handshakes_completed,
        2
    );
    assert_eq!(
        net.b.peer_stats(net.b_peer).unwrap().handshakes_completed,
        2
    );
}

/// A drop is charged to a peer once the datagram is tied to it (here by its
/// receiver index); garbage and unknown indices stay device-wide.
#[test]
fn drops_are_charged_to_the_peer_they_were_tied_to() {
    let mut net = Net::new([0; 32]);
    net.ping_a_to_b(84);
    let now = net.now;
    let from = Endpoint::from(sock(A_ADDR));
    let good = net.seal_a_to_b(84);
    let mut replayed = good.clone();
    assert!(matches!(
        net.b.receive(now, from, &mut replayed),
        ReceiveOutcome::Deliver { .. }
    ));
    let mut replayed = good.clone();
    assert_eq!(
        net.b.receive(now, from, &mut replayed),
        ReceiveOutcome::Dropped(DropReason::Replay)
    );
    let mut bad_tag = net.seal_a_to_b(84);
    let last = bad_tag.len() - 1;
    bad_tag[last] ^= 1;
    assert_eq!(
        net.b.receive(now, from, &mut bad_tag),
        ReceiveOutcome::Dropped(DropReason::Decryption)
    );
    let mut unknown = good.clone();
    unknown[4..8].copy_from_slice(&0xdead_beef_u32.to_le_bytes());
    net.b.receive(now, from, &mut unknown);
    net.b.receive(now, from, &mut [9u8; 3]);

    let stats = net.b.peer_stats(net.b_peer).unwrap();
    assert_eq!(stats.drops.get(DropReason::Replay), 1);
    assert_eq!(stats.drops.get(DropReason::Decryption), 1);
    assert_eq!(stats.drops.get(DropReason::UnknownIndex), 0);
    for reason in [DropReason::Replay, DropReason::Decryption] {
        assert_eq!(net.b.drop_count(reason), 1);
        assert_eq!(net.b.drop_count_without_peer(reason), 0);
    }
    for reason in [DropReason::UnknownIndex, DropReason::Malformed] {
        assert_eq!(net.b.drop_count(reason), 1);
        assert_eq!(net.b.drop_count_without_peer(reason), 1);
    }
    // A successful receive after a drop does not leave the peer tied to
    // the next, unrelated drop.
    net.b.receive(now, from, &mut [9u8; 3]);
    assert_eq!(net.b.drop_count_without_peer(DropReason::Malformed), 2);
    // Removing the peer keeps the device-wide split consistent.
    net.b.remove_peer(net.b_peer);
    assert_eq!(net.b.drop_count_without_peer(DropReason::Replay), 0);
}

#[test]
fn staged_packets_and_load_are_visible() {
    let mut net = Net::new([0; 32]);
    net.a.set_endpoint(net.a_peer, sock("192.0.2.99:1"));
    let mut out = vec![0u8; 200];
    for _ in 0..3 {
        net.a.send(net.now, &ipv4(A_TUN, B_TUN, 84), &mut out);
    }
    assert_eq!(net.a.staged_packet_count(), 3);
    assert!(!net.b.is_under_load(net.now));
    net.b
        .set_handshake_backlog(crate::ratelimiter::UNDER_LOAD_BACKLOG);
    let init = net.a.poll_transmit().unwrap();
    let mut data = init.data;
    net.b
        .receive(net.now, Endpoint::from(sock(A_ADDR)), &mut data);
    assert!(net.b.is_under_load(net.now));
    assert!(!net.b.is_under_load(net.now.advance(Duration::from_secs(2))));
}

// ----- the split data path: prepare, seal/open anywhere, complete ----------

impl Net {
    /// Prepares and seals `count` packets of `len` bytes from A to B as one
    /// batch, records them in a tally and completes it: the transport
    /// messages, in preparation order.
    fn seal_batch_a_to_b(&mut self, count: usize, len: usize) -> Vec<Vec<u8>> {
        let packet = ipv4(A_TUN, B_TUN, len);
        let jobs: Vec<SendJob> = (0..count)
            .map(|_| match self.a.prepare_send(self.now, &packet) {
                SendPrepared::Seal(job) => job,
                other => panic!("a session was expected, got {other:?}"),
            })
            .collect();
        let mut tally = SendTally::new();
        let messages = jobs
            .iter()
            .map(|job| {
                let mut out = vec![0u8; job.wire_len()];
                let n = job.seal(&packet, &mut out).unwrap();
                assert_eq!(n, job.wire_len());
                tally.record(job.peer, n);
                out
            })
            .collect();
        self.a.complete_sends(self.now, &mut tally);
        assert!(tally.is_empty(), "complete_sends clears the tally");
        messages
    }

    /// B's receive job for a transport message from A.
    fn prepare_at_b(&mut self, datagram: &[u8]) -> ReceiveJob {
        match self
            .b
            .prepare_receive(self.now, Endpoint::from(sock(A_ADDR)), datagram)
        {
            ReceivePrepared::Open(job) => job,
            other => panic!("a receive job was expected, got {other:?}"),
        }
    }
}

#[test]
fn split_path_opens_in_any_order_and_completes_in_order() {
    let mut net = Net::new([0; 32]);
    net.ping_a_to_b(84); // handshake
    let tx_before = net.a.peer(net.a_peer).unwrap().tx_bytes;
    let rx_before = net.b.peer(net.b_peer).unwrap().rx_bytes;
    let mut messages = net.seal_batch_a_to_b(8, 1000);
    let counters: Vec<u64> = messages
        .iter()
        .map(|m| u64::from_le_bytes(m[8..16].try_into().unwrap()))
        .collect();
    assert_eq!(counters, (1..9).collect::<Vec<u64>>(), "consecutive nonces");
    let mut jobs: Vec<ReceiveJob> = messages.iter().map(|m| net.prepare_at_b(m)).collect();
    // The workers may finish in any order.
    for (job, message) in jobs.iter_mut().zip(messages.iter_mut()).rev() {
        job.open(message);
    }
    let now = net.now;
    for (job, message) in jobs.into_iter().zip(&messages) {
        let outcome = net.b.complete_receive(now, job, message);
        let ReceiveOutcome::Deliver { len, .. } = outcome else {
            panic!("expected a delivery, got {outcome:?}")
        };
        assert_eq!(message[16..16 + len], ipv4(A_TUN, B_TUN, 1000)[..]);
    }
    let wire: u64 = messages.iter().map(|m| m.len() as u64).sum();
    assert_eq!(wire, 8 * (16 + 1008 + 16));
    assert_eq!(net.a.peer(net.a_peer).unwrap().tx_bytes, tx_before + wire);
    assert_eq!(net.b.peer(net.b_peer).unwrap().rx_bytes, rx_before + wire);
    for reason in DropReason::ALL {
        assert_eq!(net.b.drop_count(reason), 0, "{reason:?}");
    }
}

#[test]
fn a_replay_that_passes_the_precheck_is_dropped_at_completion() {
    let mut net = Net::new([0; 32]);
    net.ping_a_to_b(84);
    let original = net.seal_a_to_b(84);
    let mut first = original.clone();
    let mut copy = original.clone();
    // Both copies are prepared before either completes: the pre-check
    // cannot tell them apart.
    let mut job1 = net.prepare_at_b(&first);
    let mut job2 = net.prepare_at_b(&copy);
    job1.open(&mut first);
    job2.open(&mut copy);
    let rx_before = net.b.peer(net.b_peer).unwrap().rx_bytes;
    let now = net.now;
    assert!(matches!(
        net.b.complete_receive(now, job1, &first),
        ReceiveOutcome::Deliver { .. }
    ));
    assert_eq!(
        net.b.complete_receive(now, job2, &copy),
        ReceiveOutcome::Dropped(DropReason::Replay)
    );
    assert_eq!(net.b.drop_count(DropReason::Replay), 1);
    assert_eq!(
        net.b.peer(net.b_peer).unwrap().rx_bytes,
        rx_before + first.len() as u64,
        "the replay is not counted"
    );
    // Once completed, the pre-check itself refuses the counter.
    assert!(matches!(
        net.b
            .prepare_receive(now, Endpoint::from(sock(A_ADDR)), &original),
        ReceivePrepared::Dropped(DropReason::Replay)
    ));
    assert_eq!(net.b.drop_count(DropReason::Replay), 2);
    // Both replay drops were tied to the peer by its receiver index, one at
    // completion and one at the pre-check.
    let stats = net.b.peer_stats(net.b_peer).unwrap();
    assert_eq!(stats.drops.get(DropReason::Replay), 2);
    assert_eq!(net.b.drop_count_without_peer(DropReason::Replay), 0);
    // A successful prepare leaves no tie behind for an unrelated drop.
    let fresh = net.seal_a_to_b(84);
    assert!(matches!(
        net.b
            .prepare_receive(now, Endpoint::from(sock(A_ADDR)), &fresh),
        ReceivePrepared::Open(_)
    ));
    net.b
        .receive(now, Endpoint::from(sock(A_ADDR)), &mut [9u8; 3]);
    assert_eq!(net.b.drop_count_without_peer(DropReason::Malformed), 1);
    assert_eq!(
        net.b
            .peer_stats(net.b_peer)
            .unwrap()
            .drops
            .get(DropReason::Malformed),
        0
    );
}

#[test]
fn a_key_that_expires_or_goes_between_prepare_and_complete_delivers_nothing() {
    let mut net = Net::new([0; 32]);
    net.ping_a_to_b(84);
    let mut message = net.seal_a_to_b(84);
    let mut job = net.prepare_at_b(&message);
    job.open(&mut message);
    let later = net.now.advance(REJECT_AFTER_TIME);
    assert_eq!(
        net.b.complete_receive(later, job, &message),
        ReceiveOutcome::Dropped(DropReason::KeypairExpired)
    );

    // The session is wiped while the message is being decrypted.
    let mut message = net.seal_a_to_b(84);
    let mut job = net.prepare_at_b(&message);
    job.open(&mut message);
    let peer = net.b.peers.get_mut(net.b_peer).unwrap();
    for index in peer.keypairs.clear() {
        net.b.indices.remove(index);
    }
    let now = net.now;
    assert_eq!(
        net.b.complete_receive(now, job, &message),
        ReceiveOutcome::Dropped(DropReason::UnknownIndex)
    );
    assert_eq!(net.b.drop_count(DropReason::KeypairExpired), 1);
    assert_eq!(net.b.drop_count(DropReason::UnknownIndex), 1);
}

#[test]
fn a_job_that_was_not_opened_or_did_not_open_is_a_decryption_drop() {
    let mut net = Net::new([0; 32]);
    net.ping_a_to_b(84);
    let message = net.seal_a_to_b(84);
    let job = net.prepare_at_b(&message);
    let now = net.now;
    assert_eq!(
        net.b.complete_receive(now, job, &message),
        ReceiveOutcome::Dropped(DropReason::Decryption)
    );
    let mut forged = net.seal_a_to_b(84);
    let mut job = net.prepare_at_b(&forged);
    forged[40] ^= 1;
    job.open(&mut forged);
    assert_eq!(
        net.b.complete_receive(now, job, &forged),
        ReceiveOutcome::Dropped(DropReason::Decryption)
    );
    assert_eq!(net.b.drop_count(DropReason::Decryption), 2);
    let stats = net.b.peer_stats(net.b_peer).unwrap();
    assert_eq!(
        stats.drops.get(DropReason::Decryption),
        2,
        "charged to the peer"
    );
    // Neither burnt its counter: the genuine message still goes through.
    let mut genuine = message;
    let outcome = net
        .b
        .receive(now, Endpoint::from(sock(A_ADDR)), &mut genuine);
    assert!(matches!(outcome, ReceiveOutcome::Deliver { .. }));
}

#[test]
fn a_batch_sums_bytes_per_peer_and_rekeys_once() {
    let mut net = Net::new([0; 32]);
    net.ping_a_to_b(84);
    let initiations = net.count_wire(true, 1);
    net.advance(REKEY_TIMEOUT);
    let peer = net.a.peers.get_mut(net.a_peer).unwrap();
    let keypair = peer.keypairs.current.as_mut().unwrap();
    keypair.set_send_counter_for_test(REKEY_AFTER_MESSAGES - 2);
    let tx_before = net.a.peer(net.a_peer).unwrap().tx_bytes;
    let messages = net.seal_batch_a_to_b(5, 84);
    assert_eq!(
        net.a
            .peer(net.a_peer)
            .unwrap()
            .keypairs
            .current
            .as_ref()
            .unwrap()
            .send_counter(),
        REKEY_AFTER_MESSAGES + 3,
        "one counter per job"
    );
    assert_eq!(
        net.a.peer(net.a_peer).unwrap().tx_bytes,
        tx_before + 5 * 128 + INITIATION_LEN as u64,
        "five data messages and one rekey initiation"
    );
    assert_eq!(messages.len(), 5);
    net.pump();
    assert_eq!(
        net.count_wire(true, 1),
        initiations + 1,
        "one initiation for the whole batch"
    );
}

#[test]
fn prepare_send_answers_like_send_without_a_session() {
    let mut net = Net::new([0; 32]);
    let now = net.now;
    let packet = ipv4(A_TUN, B_TUN, 84);
    let a_peer = net.a_peer;
    assert!(matches!(
        net.a.prepare_send(now, &packet),
        SendPrepared::Done(SendOutcome::Queued(p)) if p == a_peer
    ));
    assert!(matches!(
        net.a.prepare_send(now, &ipv4(A_TUN, [10, 9, 9, 9], 84)),
        SendPrepared::Done(SendOutcome::NoRoute)
    ));
    assert!(matches!(
        net.a.prepare_send(now, &[0x45]),
        SendPrepared::Done(SendOutcome::Invalid)
    ));
    assert!(matches!(
        net.a
            .prepare_receive(now, Endpoint::from(sock(B_ADDR)), &initiation_shaped()),
        ReceivePrepared::NotTransport
    ));
    // The staged packet went out with the handshake; the split path and the
    // one-call path share the counters.
    net.pump();
    assert_eq!(net.delivered_b, vec![packet]);
    let messages = net.seal_batch_a_to_b(2, 84);
    let out = net.seal_a_to_b(84);
    let counter = |m: &[u8]| u64::from_le_bytes(m[8..16].try_into().unwrap());
    assert_eq!(
        [counter(&messages[0]), counter(&messages[1]), counter(&out)],
        [1, 2, 3]
    );
}

/// A datagram with the type and length of an initiation.
fn initiation_shaped() -> [u8; 148] {
    let mut datagram = [0u8; 148];
    datagram[0] = 1;
    datagram
}

#[test]
fn screening_drops_forged_handshakes_and_passes_genuine_ones() {
    let mut net = Net::new([0; 32]);
    let mut out = vec![0u8; 200];
    net.a.send(net.now, &ipv4(A_TUN, B_TUN, 84), &mut out);
    let initiation = net.a.poll_transmit().expect("an initiation").data;
    assert_eq!(net.b.screen_handshake(&initiation), Ok(()));
    let mut forged = initiation.clone();
    forged[20] ^= 1; // inside the part mac1 covers
    assert_eq!(net.b.screen_handshake(&forged), Err(DropReason::BadMac1));
    assert_eq!(
        net.b.screen_handshake(&initiation_shaped()),
        Err(DropReason::BadMac1)
    );
    assert_eq!(
        net.b.screen_handshake(&initiation[..100]),
        Err(DropReason::Malformed)
    );
    // Cookie replies have no mac1: only their length is checked here.
    let mut cookie_reply = [0u8; 64];
    cookie_reply[0] = 3;
    assert_eq!(net.b.screen_handshake(&cookie_reply), Ok(()));
    assert_eq!(net.b.drop_count(DropReason::BadMac1), 2);
    assert_eq!(net.b.drop_count(DropReason::Malformed), 1);
    // Screening changes nothing else: the genuine initiation still works.
    let mut genuine = initiation;
    let from = Endpoint::from(sock(A_ADDR));
    assert_eq!(
        net.b.receive(net.now, from, &mut genuine),
        ReceiveOutcome::Handled
    );
}

// ----- drop attribution: which peer, if any, each drop is charged to --------
//
// A drop is charged to a peer only if the datagram that failed was tied to
// it. These tests alternate drops tied to a peer with drops that cannot be
// tied, through every step that ties a datagram, so that a tie left over
// from one datagram (the bug class of a hidden "receiving from" field that
// an early return forgets to clear) would show as a misplaced charge.

/// A device's drops by where they were charged: (reason, the peer or `None`
/// for device-wide) → count; zero counts are left out.
type Charges = std::collections::BTreeMap<(&'static str, Option<PeerId>), u64>;

/// Where `dev`'s drops were charged. Also checks that the parts add up to
/// [`Device::drop_count`] (true as long as no peer was removed).
fn charges(dev: &Device) -> Charges {
    let mut found = Charges::new();
    for reason in DropReason::ALL {
        let mut parts = vec![(None, dev.drop_count_without_peer(reason))];
        for id in dev.peer_ids() {
            let stats = dev.peer_stats(id).expect("a listed peer");
            parts.push((Some(id), stats.drops.get(reason)));
        }
        let total: u64 = parts.iter().map(|(_, n)| n).sum();
        assert_eq!(total, dev.drop_count(reason), "{reason:?}: parts and total");
        for (peer, n) in parts.into_iter().filter(|(_, n)| *n > 0) {
            found.insert((reason.name(), peer), n);
        }
    }
    found
}

/// The charges that a list of (reason, peer charged) drops should leave.
fn expected_charges(drops: &[(DropReason, Option<PeerId>)]) -> Charges {
    let mut expected = Charges::new();
    for &(reason, peer) in drops {
        *expected.entry((reason.name(), peer)).or_insert(0) += 1;
    }
    expected
}

/// A copy of a transport message or cookie reply naming receiver `index`.
fn with_receiver(message: &[u8], index: u32) -> Vec<u8> {
    let mut copy = message.to_vec();
    copy[4..8].copy_from_slice(&index.to_le_bytes());
    copy
}

/// An index no session of these tests has (fixed seeds make this certain).
const UNKNOWN_INDEX: u32 = 0xdead_beef;

/// A cookie reply naming receiver `index`, with contents that cannot
/// decrypt.
fn cookie_reply_to(index: u32) -> Vec<u8> {
    let mut reply = vec![0x5a; COOKIE_REPLY_LEN];
    reply[..4].copy_from_slice(&3u32.to_le_bytes());
    with_receiver(&reply, index)
}

/// A copy of handshake message `message` with byte `at` flipped and mac1
/// made valid again by `sender`'s peer `peer` (so it passes admission and
/// fails in the handshake itself).
fn tampered_handshake(
    sender: &mut Device,
    peer: PeerId,
    now: Now,
    message: &[u8],
    at: usize,
) -> Vec<u8> {
    let mut copy = message.to_vec();
    copy[at] ^= 1;
    let peer = sender.peers.get_mut(peer).expect("the sender's peer");
    peer.cookie.add_macs(now.mono, &mut copy);
    copy
}

impl Net {
    /// Hands `datagram` to B as coming from A's endpoint.
    fn receive_at_b(&mut self, mut datagram: Vec<u8>) -> ReceiveOutcome {
        self.b
            .receive(self.now, Endpoint::from(sock(A_ADDR)), &mut datagram)
    }

    /// Like [`Net::seal_a_to_b`] for a given IP packet.
    fn seal_packet_a_to_b(&mut self, packet: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; packet.len() + 64];
        let outcome = self.a.send(self.now, packet, &mut out);
        let SendOutcome::Sent { len, .. } = outcome else {
            panic!("a session was expected, got {outcome:?}")
        };
        out.truncate(len);
        out
    }

    /// The first initiation A sent to B.
    fn first_initiation_a_to_b(&self) -> Vec<u8> {
        let (_, initiation) = self
            .wire
            .iter()
            .find(|(from_a, d)| *from_a && d[0] == 1)
            .expect("A sent an initiation");
        initiation.clone()
    }

    /// Hands datagrams to B the way the daemon does: each is prepared (one
    /// that is not a transport message goes to `receive` at once), then
    /// every job is opened, then the jobs are completed in order. The
    /// outcomes, in datagram order.
    fn receive_split_at_b(&mut self, datagrams: Vec<Vec<u8>>) -> Vec<ReceiveOutcome> {
        let (now, from) = (self.now, Endpoint::from(sock(A_ADDR)));
        let mut slots = Vec::new();
        for mut datagram in datagrams {
            let slot = match self.b.prepare_receive(now, from, &datagram) {
                ReceivePrepared::Open(job) => Ok(job),
                ReceivePrepared::NotTransport => Err(self.b.receive(now, from, &mut datagram)),
                ReceivePrepared::Dropped(reason) => Err(ReceiveOutcome::Dropped(reason)),
            };
            slots.push((datagram, slot));
        }
        for (datagram, slot) in &mut slots {
            if let Ok(job) = slot {
                job.open(datagram);
            }
        }
        slots
            .into_iter()
            .map(|(datagram, slot)| match slot {
                Ok(job) => self.b.complete_receive(now, job, &datagram),
                Err(outcome) => outcome,
            })
            .collect()
    }
}

#[test]
fn a_transport_drop_tied_to_a_peer_leaves_no_tie_for_the_next_datagram() {
    let mut net = Net::new([0; 32]);
    net.ping_a_to_b(84);
    let peer = Some(net.b_peer);
    let genuine = net.seal_a_to_b(84);
    assert!(matches!(
        net.receive_at_b(genuine.clone()),
        ReceiveOutcome::Deliver { .. }
    ));
    let mut bad_tag = net.seal_a_to_b(84);
    let last = bad_tag.len() - 1;
    bad_tag[last] ^= 1;
    let spoofed = net.seal_packet_a_to_b(&ipv4([10, 9, 9, 9], B_TUN, 84));
    let unknown = with_receiver(&genuine, UNKNOWN_INDEX);
    let steps = [
        // Refused by the pre-check, after the index named the session.
        (genuine, DropReason::Replay, peer),
        (unknown.clone(), DropReason::UnknownIndex, None),
        // Refused at completion: the tag does not verify.
        (bad_tag, DropReason::Decryption, peer),
        (vec![9u8; 3], DropReason::Malformed, None),
        // Refused after decryption: the inner source is not A's.
        (spoofed, DropReason::SourceNotAllowed, peer),
        (unknown, DropReason::UnknownIndex, None),
    ];
    for (datagram, reason, _) in steps.clone() {
        assert_eq!(net.receive_at_b(datagram), ReceiveOutcome::Dropped(reason));
    }
    let drops = steps.map(|(_, reason, peer)| (reason, peer));
    assert_eq!(charges(&net.b), expected_charges(&drops));
}

#[test]
fn a_handshake_drop_tied_to_a_peer_leaves_no_tie_for_the_next_datagram() {
    let mut net = Net::new([0; 32]);
    net.ping_a_to_b(84);
    net.now = net.now.advance(Duration::from_millis(50)); // past the flood guard
    let now = net.now;
    let (a_peer, b_peer) = (net.a_peer, net.b_peer);
    let initiation = net.first_initiation_a_to_b();
    // The index B gave its session with A, as A's transport messages name it.
    let b_session_index = u32::from_le_bytes(net.seal_a_to_b(84)[4..8].try_into().unwrap());
    // Both fail to authenticate: the first before its static key names A,
    // the second (its timestamp broken) after.
    let bad_static = tampered_handshake(&mut net.a, a_peer, now, &initiation, 50);
    let bad_timestamp = tampered_handshake(&mut net.a, a_peer, now, &initiation, 100);
    let steps = [
        (initiation, DropReason::TimestampReplay, Some(b_peer)),
        (initiation_shaped().to_vec(), DropReason::BadMac1, None),
        (bad_timestamp, DropReason::HandshakeFailed, Some(b_peer)),
        (bad_static, DropReason::HandshakeFailed, None),
        (
            cookie_reply_to(b_session_index),
            DropReason::BadCookieReply,
            Some(b_peer),
        ),
        (
            cookie_reply_to(UNKNOWN_INDEX),
            DropReason::UnknownIndex,
            None,
        ),
    ];
    for (datagram, reason, _) in steps.clone() {
        assert_eq!(net.receive_at_b(datagram), ReceiveOutcome::Dropped(reason));
    }
    let mut drops = steps.map(|(_, reason, peer)| (reason, peer)).to_vec();
    assert_eq!(charges(&net.b), expected_charges(&drops));

    // Responses, at A: one naming A's handshake in flight but failing to
    // authenticate is A's peer's; one naming no handshake is not.
    net.a.peers.get_mut(a_peer).unwrap().last_sent_handshake = None;
    net.a.send_initiation(now, a_peer, false);
    let fresh = net.a.poll_transmit().expect("an initiation").data;
    assert_eq!(net.receive_at_b(fresh), ReceiveOutcome::Handled);
    let response = net.b.poll_transmit().expect("a response").data;
    let bad_response = tampered_handshake(&mut net.b, b_peer, now, &response, 50);
    let mut stray_response = response.clone();
    stray_response[8..12].copy_from_slice(&UNKNOWN_INDEX.to_le_bytes());
    let stray_response = tampered_handshake(&mut net.b, b_peer, now, &stray_response, 50);
    let from = Endpoint::from(sock(B_ADDR));
    for (mut datagram, reason) in [
        (bad_response, DropReason::HandshakeFailed),
        (stray_response, DropReason::UnknownIndex),
    ] {
        assert_eq!(
            net.a.receive(now, from, &mut datagram),
            ReceiveOutcome::Dropped(reason)
        );
    }
    assert_eq!(
        charges(&net.a),
        expected_charges(&[
            (DropReason::HandshakeFailed, Some(a_peer)),
            (DropReason::UnknownIndex, None),
        ])
    );

    // Back at B: a genuine initiation too soon after the one B just took
    // (newer timestamp, 17 ms later) is A's flood.
    net.now = net.now.advance(Duration::from_millis(17));
    net.a.peers.get_mut(a_peer).unwrap().last_sent_handshake = None;
    let later = net.now;
    net.a.send_initiation(later, a_peer, false);
    let too_soon = net.a.poll_transmit().expect("an initiation").data;
    for (datagram, reason, peer) in [
        (too_soon, DropReason::InitiationFlood, Some(b_peer)),
        (initiation_shaped().to_vec(), DropReason::BadMac1, None),
    ] {
        assert_eq!(net.receive_at_b(datagram), ReceiveOutcome::Dropped(reason));
        drops.push((reason, peer));
    }
    assert_eq!(charges(&net.b), expected_charges(&drops));
}

/// C's UDP endpoint, for tests with a third engine.
const C_ADDR: &str = "192.0.2.3:51822";
/// C's tunnel address (B's allowed IP for C).
const C_TUN: [u8; 4] = [192, 168, 241, 3];

/// A third engine, C, added to B as its second peer, with a session to B.
struct Third {
    c: Device,
    /// C as seen by B.
    at_b: PeerId,
}

impl Third {
    fn connect(net: &mut Net) -> Third {
        let key = SecretKey::from_bytes([0x33; 32]);
        let mut c = Device::new([3; 32]);
        let at_b = net.b.add_peer(key.public_key()).expect("a new key");
        c.set_private_key(Some(key));
        let b_at_c = c.add_peer(net.b.public_key().unwrap()).expect("B's key");
        c.set_endpoint(b_at_c, sock(B_ADDR));
        c.add_allowed_ip(b_at_c, IpAddr::from(B_TUN), 32).unwrap();
        net.b.set_endpoint(at_b, sock(C_ADDR));
        net.b.add_allowed_ip(at_b, IpAddr::from(C_TUN), 32).unwrap();
        let mut third = Third { c, at_b };
        third.seal_to_b(net.now); // queued: starts the handshake
        for _ in 0..100 {
            let mut moved = false;
            while let Some(mut t) = third.c.poll_transmit() {
                moved = true;
                net.b
                    .receive(net.now, Endpoint::from(sock(C_ADDR)), &mut t.data);
            }
            while let Some(mut t) = net.b.poll_transmit() {
                moved = true;
                assert_eq!(t.endpoint.addr, sock(C_ADDR), "B talks only to C here");
                third
                    .c
                    .receive(net.now, Endpoint::from(sock(B_ADDR)), &mut t.data);
            }
            if !moved {
                return third;
            }
        }
        panic!("B and C never went quiet");
    }

    /// A transport message from C to B, not delivered (`None` while C has
    /// no session: the packet is queued).
    fn seal_to_b(&mut self, now: Now) -> Option<Vec<u8>> {
        let mut out = vec![0u8; 256];
        match self.c.send(now, &ipv4(C_TUN, B_TUN, 84), &mut out) {
            SendOutcome::Sent { len, .. } => Some(out[..len].to_vec()),
            _ => None,
        }
    }

    fn seal_with_bad_tag(&mut self, now: Now) -> Vec<u8> {
        let mut message = self.seal_to_b(now).expect("a session with B");
        let last = message.len() - 1;
        message[last] ^= 1;
        message
    }
}

#[test]
fn drops_from_two_peers_are_charged_each_to_its_own() {
    let mut net = Net::new([0; 32]);
    net.ping_a_to_b(84);
    let mut third = Third::connect(&mut net);
    let now = net.now;
    let (a, c) = (Some(net.b_peer), Some(third.at_b));
    let a_genuine = net.seal_a_to_b(84);
    let c_genuine = third.seal_to_b(now).expect("a session with B");
    assert!(matches!(
        net.receive_at_b(a_genuine.clone()),
        ReceiveOutcome::Deliver { .. }
    ));
    assert!(matches!(
        net.receive_at_b(c_genuine.clone()),
        ReceiveOutcome::Deliver { .. }
    ));
    let mut a_bad_tag = net.seal_a_to_b(84);
    let last = a_bad_tag.len() - 1;
    a_bad_tag[last] ^= 1;
    // One datagram at a time (the endpoint only matters for roaming).
    let mut drops = vec![];
    for (datagram, reason, peer) in [
        (a_genuine, DropReason::Replay, a),
        (third.seal_with_bad_tag(now), DropReason::Decryption, c),
        (
            with_receiver(&c_genuine, UNKNOWN_INDEX),
            DropReason::UnknownIndex,
            None,
        ),
        (c_genuine, DropReason::Replay, c),
        (a_bad_tag, DropReason::Decryption, a),
    ] {
        assert_eq!(net.receive_at_b(datagram), ReceiveOutcome::Dropped(reason));
        drops.push((reason, peer));
    }
    assert_eq!(charges(&net.b), expected_charges(&drops));
    // And in one batch through the split path, the two peers' jobs
    // interleaved: each completion is charged to its own job's peer.
    let mut a_bad_tag = net.seal_a_to_b(84);
    a_bad_tag[20] ^= 1;
    let batch = vec![
        a_bad_tag,
        third.seal_to_b(now).unwrap(),
        third.seal_with_bad_tag(now),
        vec![9u8; 3],
        net.seal_a_to_b(84),
        third.seal_with_bad_tag(now),
    ];
    let outcomes = net.receive_split_at_b(batch);
    let dropped: Vec<_> = outcomes
        .iter()
        .map(|o| matches!(o, ReceiveOutcome::Dropped(_)))
        .collect();
    assert_eq!(
        dropped,
        [true, false, true, true, false, true],
        "{outcomes:?}"
    );
    drops.extend([
        (DropReason::Decryption, a),
        (DropReason::Decryption, c),
        (DropReason::Malformed, None),
        (DropReason::Decryption, c),
    ]);
    assert_eq!(charges(&net.b), expected_charges(&drops));
}

/// One mix of good and bad datagrams from A to B, made with `net`'s keys.
fn mixed_datagrams(net: &mut Net) -> Vec<Vec<u8>> {
    let genuine = net.seal_a_to_b(84);
    let mut bad_tag = net.seal_a_to_b(84);
    let last = bad_tag.len() - 1;
    bad_tag[last] ^= 1;
    vec![
        genuine.clone(),
        genuine.clone(), // a replay
        with_receiver(&genuine, UNKNOWN_INDEX),
        bad_tag,
        vec![9u8; 3],
        net.seal_packet_a_to_b(&ipv4([10, 9, 9, 9], B_TUN, 84)),
        initiation_shaped().to_vec(),
        net.first_initiation_a_to_b(), // a timestamp replay
        cookie_reply_to(UNKNOWN_INDEX),
        net.seal_a_to_b(100),
    ]
}

#[test]
fn the_split_path_charges_every_drop_like_receive() {
    let mut one_call = Net::new([0; 32]);
    let mut split = Net::new([0; 32]);
    for net in [&mut one_call, &mut split] {
        net.ping_a_to_b(84);
    }
    let datagrams = mixed_datagrams(&mut one_call);
    let one_call_outcomes: Vec<ReceiveOutcome> = datagrams
        .into_iter()
        .map(|d| one_call.receive_at_b(d))
        .collect();
    let datagrams = mixed_datagrams(&mut split);
    let split_outcomes = split.receive_split_at_b(datagrams);

    let reasons = |outcomes: &[ReceiveOutcome]| -> Vec<Option<DropReason>> {
        outcomes
            .iter()
            .map(|o| match o {
                ReceiveOutcome::Dropped(reason) => Some(*reason),
                _ => None,
            })
            .collect()
    };
    assert_eq!(reasons(&split_outcomes), reasons(&one_call_outcomes));
    let peer = Some(one_call.b_peer);
    assert_eq!(split.b_peer, one_call.b_peer, "same set-up, same ids");
    let expected = expected_charges(&[
        (DropReason::Replay, peer),
        (DropReason::UnknownIndex, None),
        (DropReason::Decryption, peer),
        (DropReason::Malformed, None),
        (DropReason::SourceNotAllowed, peer),
        (DropReason::BadMac1, None),
        (DropReason::TimestampReplay, peer),
        (DropReason::UnknownIndex, None),
    ]);
    assert_eq!(charges(&one_call.b), expected);
    assert_eq!(charges(&split.b), expected);
    assert!(matches!(
        one_call_outcomes[0],
        ReceiveOutcome::Deliver { .. }
    ));
    assert!(matches!(
        one_call_outcomes[9],
        ReceiveOutcome::Deliver { .. }
    ));
}

#[test]
fn peer_slices_walk_every_peer_once_in_storage_order() {
    let mut device = Device::new([3; 32]);
    let ids: Vec<PeerId> = (0u8..10)
        .map(|i| device.add_peer(PublicKey([i + 1; 32])).expect("a new peer"))
        .collect();
    device.remove_peer(ids[4]);
    let mut walked = Vec::new();
    let mut after = None;
    loop {
        let slice = device.peer_ids_after(after, 3);
        assert!(slice.len() <= 3);
        let Some(&last) = slice.last() else { break };
        walked.extend_from_slice(&slice);
        after = Some(last);
    }
    let expected: Vec<PeerId> = ids.iter().copied().filter(|&id| id != ids[4]).collect();
    assert_eq!(walked, expected);
    assert_eq!(device.peer_ids(), expected);
    // A peer added during the walk takes the lowest free slot: the one the
    // removed peer left, behind the cursor, so this walk does not see it;
    // the next one added goes at the end, after the cursor.
    let reused = device.add_peer(PublicKey([99; 32])).expect("a new peer");
    assert_eq!(device.peer_ids_after(after, 3), Vec::<PeerId>::new());
    let late = device.add_peer(PublicKey([100; 32])).expect("a new peer");
    assert_eq!(device.peer_ids_after(after, 3), vec![late]);
    assert_eq!(device.peer_ids()[4], reused);
    // The cursor stays valid after its own peer is removed.
    let last_but_one = device.peer_ids()[8];
    device.remove_peer(last_but_one);
    assert_eq!(
        device.peer_ids_after(Some(last_but_one), 3),
        vec![ids[9], late]
    );
    assert!(device.peer(last_but_one).is_none());
}
