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
    let peer = net.a.peers.get_mut(&net.a_peer).unwrap();
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
    net.a
        .peers
        .get_mut(&net.a_peer)
        .unwrap()
        .last_sent_handshake = None;
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
    net.a
        .peers
        .get_mut(&net.a_peer)
        .unwrap()
        .last_sent_handshake = None;
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
    let peer = net.b.peers.get_mut(&net.b_peer).unwrap();
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
    let peer = net.a.peers.get_mut(&net.a_peer).unwrap();
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
