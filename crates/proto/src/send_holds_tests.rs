//! The per-peer send bound ([`crate::send_holds`]) end to end: several
//! holders (the daemon's lanes) reserve counters of one peer, seal and send
//! in their own time, and the receiver must accept every message that
//! arrived once however the holders were scheduled.

use proptest::prelude::*;

use super::*;
use crate::send_holds::SEND_LEAD_LIMIT;
use crate::testing::{ipv4_packet, sock, Pair, A_ADDR};

/// A with a session to B and a few holders sending A's packets to B.
struct Lanes {
    pair: Pair,
    packet: Vec<u8>,
    /// Per holder: messages sealed and not yet sent, in reservation order.
    pending: Vec<Vec<Vec<u8>>>,
    /// Per holder: true while it was told to wait and has not been let go.
    waiting: Vec<bool>,
    /// Times a holder was told to wait.
    waits: usize,
    /// Messages B refused as replays, and messages B delivered.
    replays: usize,
    delivered: usize,
}

impl Lanes {
    fn new(holders: usize) -> Lanes {
        let pair = Pair::connected(Now::system());
        let packet = ipv4_packet(pair.a_tun, pair.b_tun, 20);
        Lanes {
            pair,
            packet,
            pending: vec![Vec::new(); holders],
            waiting: vec![false; holders],
            waits: 0,
            replays: 0,
            delivered: 0,
        }
    }

    /// Holder `h` reserves and seals up to `count` packets as one batch
    /// (`held`: with the send bound; else the unbounded `prepare_send`).
    /// Told to wait, it does what the daemon's lane does: sends and
    /// releases what it has, and reserves no more until
    /// [`Lanes::may_go`] lets it.
    fn reserve(&mut self, h: usize, count: usize, held: bool) {
        if self.waiting[h] && !self.may_go(h) {
            return;
        }
        let now = self.pair.now;
        let mut tally = SendTally::new();
        for _ in 0..count {
            let prepared = if held {
                self.pair.a.prepare_send_held(now, &self.packet, h)
            } else {
                self.pair.a.prepare_send(now, &self.packet)
            };
            match prepared {
                SendPrepared::Seal(job) => {
                    let mut out = vec![0u8; job.wire_len()];
                    let n = job.seal(&self.packet, &mut out).expect("room");
                    tally.record(job.peer, n);
                    self.pending[h].push(out);
                }
                SendPrepared::Wait(peer) => {
                    assert_eq!(peer, self.pair.a_peer);
                    self.waits += 1;
                    self.waiting[h] = true;
                    break;
                }
                SendPrepared::Done(outcome) => panic!("a session was expected: {outcome:?}"),
            }
        }
        self.pair.a.complete_sends(now, &mut tally);
        if self.waiting[h] {
            self.flush(h);
        }
    }

    /// True (and `h` no longer waiting) once A would let it reserve.
    fn may_go(&mut self, h: usize) -> bool {
        self.waiting[h] = self.pair.a.send_must_wait(self.pair.a_peer);
        !self.waiting[h]
    }

    /// Holder `h` hands what it sealed to the network (B receives it in
    /// that order) and releases its holds.
    fn flush(&mut self, h: usize) {
        for mut message in std::mem::take(&mut self.pending[h]) {
            let outcome =
                self.pair
                    .b
                    .receive(self.pair.now, Endpoint::from(sock(A_ADDR)), &mut message);
            match outcome {
                ReceiveOutcome::Deliver { .. } => self.delivered += 1,
                ReceiveOutcome::Dropped(DropReason::Replay) => self.replays += 1,
                other => panic!("unexpected outcome at B: {other:?}"),
            }
        }
        self.pair.a.release_sends(h);
    }
}

/// The hazard itself, without the bound: holder 0 reserves one counter and
/// stalls while holder 1 sends more than the window; B then refuses holder
/// 0's message although it arrived once. (Shows that the tests below can
/// fail: they run the same schedules with the bound.)
#[test]
fn without_the_bound_a_stalled_batch_is_refused_as_a_replay() {
    let mut lanes = Lanes::new(2);
    lanes.reserve(0, 1, false);
    for _ in 0..20 {
        lanes.reserve(1, 500, false);
        lanes.flush(1);
    }
    lanes.flush(0);
    assert_eq!(lanes.replays, 1);
}

/// With the bound: holder 1 is stopped at `SEND_LEAD_LIMIT` counters
/// ahead of holder 0's stalled one, goes on once holder 0 has sent, and B
/// refuses nothing.
#[test]
fn a_stalled_batch_stops_the_others_at_the_lead_limit() {
    let mut lanes = Lanes::new(2);
    lanes.reserve(0, 1, true);
    for _ in 0..20 {
        lanes.reserve(1, 500, true);
    }
    assert!(lanes.waiting[1], "holder 1 must wait for the stalled one");
    assert_eq!(lanes.delivered as u64, SEND_LEAD_LIMIT - 1);
    assert!(lanes.pair.a.send_must_wait(lanes.pair.a_peer));
    lanes.flush(0);
    assert!(!lanes.pair.a.send_must_wait(lanes.pair.a_peer));
    for _ in 0..20 {
        lanes.reserve(1, 500, true);
        lanes.flush(1);
    }
    assert!(!lanes.waiting[1]);
    assert_eq!(lanes.replays, 0);
    assert_eq!(lanes.delivered as u64, SEND_LEAD_LIMIT + 10_000);
    assert_eq!(lanes.pair.a.send_hold_count(), 0);
}

/// A new keypair starts its own counters and its own window at the
/// receiver: a hold on the old keypair does not stop sends on the new one.
#[test]
fn a_hold_bounds_only_its_own_keypair() {
    let mut lanes = Lanes::new(2);
    lanes.reserve(0, 1, true);
    let mut other = crate::send_holds::SendHolds::new();
    other.note(0, lanes.pair.a_peer, 1, 0);
    assert!(other.must_wait(lanes.pair.a_peer, 1, SEND_LEAD_LIMIT));
    assert!(!other.must_wait(lanes.pair.a_peer, 2, SEND_LEAD_LIMIT));
    lanes.flush(0);
    assert_eq!(lanes.replays, 0);
}

/// One step of a schedule: holder `holder` reserves `count` packets, or
/// sends what it has.
#[derive(Debug, Clone)]
enum Step {
    Reserve { holder: usize, count: usize },
    Flush { holder: usize },
}

fn step(holders: usize) -> impl Strategy<Value = Step> {
    // Holder 0 is the one that stalls: it reserves as often as the others
    // but sends rarely, so that the others run far ahead of what it holds.
    prop_oneof![
        10 => (0..holders, 1usize..900).prop_map(|(holder, count)| Step::Reserve { holder, count }),
        8 => (1..holders).prop_map(|holder| Step::Flush { holder }),
        1 => Just(Step::Flush { holder: 0 }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Any interleaving of three holders' reservations and sends (each
    /// holder's messages leave in its own reservation order, as a lane's
    /// batch does): B never refuses a message that arrived once, and every
    /// reserved counter is delivered once all holders have sent.
    #[test]
    fn no_schedule_makes_the_receiver_refuse_a_message(
        steps in proptest::collection::vec(step(3), 1..100)
    ) {
        let mut lanes = Lanes::new(3);
        let counter = |lanes: &Lanes| lanes.pair.a.peer(lanes.pair.a_peer).unwrap()
            .keypairs.current.as_ref().unwrap().send_counter();
        let first = counter(&lanes);
        for step in &steps {
            match *step {
                Step::Reserve { holder, count } => lanes.reserve(holder, count, true),
                Step::Flush { holder } => lanes.flush(holder),
            }
            lanes.pair.a.check_invariants();
            prop_assert_eq!(lanes.replays, 0);
        }
        for h in 0..3 {
            lanes.flush(h);
        }
        prop_assert_eq!(lanes.replays, 0);
        prop_assert_eq!(lanes.pair.a.send_hold_count(), 0);
        prop_assert_eq!(lanes.delivered as u64, counter(&lanes) - first);
    }
}
