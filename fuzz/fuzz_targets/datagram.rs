//! The receive path of two engines with a real session between them, driven
//! by a fuzzed sequence of network events: genuine transport messages
//! delivered, replayed, reordered or with bytes changed; arbitrary datagrams
//! (optionally with a valid mac1, so the handshake code behind the mac1 gate
//! is reached); time passing past the rekey and expiry deadlines; a rekey
//! started by either side, answered normally or, with the responder under
//! load, by a cookie reply, and its messages changed in flight.
//!
//! So decryption, the replay window, the completion of a transport message,
//! handshake initiations and responses (both roles) and cookie replies are
//! all reached, not only the "unknown index" exit. Nothing may panic, and
//! the engines' own invariants (feature `debug-checks`) must hold; a genuine
//! datagram delivered once must be delivered, and its replay must not be.
#![no_main]

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use arbitrary::{Arbitrary, Unstructured};
use ferroguard_proto::crypto::{hash, mac};
use ferroguard_proto::device::{Device, Now, ReceiveOutcome, SendOutcome};
use ferroguard_proto::peer::Endpoint;
use ferroguard_proto::testing::{ipv4_packet, sock, Pair, A_ADDR, B_ADDR};
use libfuzzer_sys::fuzz_target;

/// At most this many events per input.
const MAX_EVENTS: usize = 48;
/// Genuine datagrams kept for replays.
const HISTORY: usize = 8;

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Side {
    A,
    B,
}

#[derive(Arbitrary, Debug)]
enum Event {
    /// The sender encrypts a packet of `len` bytes; the other side receives it.
    Genuine { from: Side, len: u8 },
    /// Like `Genuine`, with byte `at` (modulo the length) XORed with `mask`.
    Changed {
        from: Side,
        len: u8,
        at: u16,
        mask: u8,
    },
    /// A datagram from the history, delivered again to `to`.
    Replay { to: Side, which: u8 },
    /// Arbitrary bytes to `to`, from the peer's endpoint or another one;
    /// with `fix_mac1` a valid mac1 for the receiver is written in.
    Raw {
        to: Side,
        bytes: Vec<u8>,
        other_source: bool,
        fix_mac1: bool,
    },
    /// Time passes for both engines (timers run).
    Advance { seconds: u8, millis: u16 },
    /// The initiator's session gets old (REKEY_AFTER_TIME) and it sends: a
    /// new handshake. The responder is under load (cookie replies) when
    /// `under_load`; message `change` (if any) of the exchange has one byte
    /// changed in flight.
    Rekey {
        initiator: Side,
        under_load: bool,
        change: Option<(u8, u16, u8)>,
    },
}

struct Harness {
    pair: Pair,
    /// (to A?, datagram) of genuine traffic, newest last.
    history: Vec<(bool, Vec<u8>)>,
}

fn start() -> Now {
    static START: OnceLock<Instant> = OnceLock::new();
    Now {
        mono: *START.get_or_init(Instant::now),
        wall: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
    }
}

impl Harness {
    fn new() -> Self {
        Harness {
            pair: Pair::connected(start()),
            history: Vec::new(),
        }
    }

    fn engine(&mut self, side: &Side) -> &mut Device {
        match side {
            Side::A => &mut self.pair.a,
            Side::B => &mut self.pair.b,
        }
    }

    /// Where datagrams to `to` come from.
    fn source_of_peer(to: &Side) -> Endpoint {
        Endpoint::from(sock(match to {
            Side::A => B_ADDR,
            Side::B => A_ADDR,
        }))
    }

    fn receive(&mut self, to: &Side, from: Endpoint, datagram: &mut [u8]) -> ReceiveOutcome {
        let outcome = self.receive_only(to, from, datagram);
        self.drain_both();
        outcome
    }

    /// One datagram to one engine, its outcome recorded for the report.
    fn receive_only(&mut self, to: &Side, from: Endpoint, datagram: &mut [u8]) -> ReceiveOutcome {
        let kind = datagram.first().copied();
        let now = self.pair.now;
        let outcome = self.engine(to).receive(now, from, datagram);
        report(to, kind, &outcome);
        outcome
    }

    /// Answers (handshake responses, cookie replies, keepalives) are
    /// dropped: the events decide what the network delivers.
    fn drain_both(&mut self) {
        while self.pair.a.poll_transmit().is_some() {}
        while self.pair.b.poll_transmit().is_some() {}
    }

    /// A transport message from `from` to the other side, if it has a session.
    fn seal(&mut self, from: &Side, len: u8) -> Option<Vec<u8>> {
        let (src, dst) = match from {
            Side::A => (self.pair.a_tun, self.pair.b_tun),
            Side::B => (self.pair.b_tun, self.pair.a_tun),
        };
        let packet = ipv4_packet(src, dst, 20 + usize::from(len));
        let mut out = vec![0u8; packet.len() + 64];
        let now = self.pair.now;
        match self.engine(from).send(now, &packet, &mut out) {
            SendOutcome::Sent { len, .. } => {
                out.truncate(len);
                Some(out)
            }
            _ => {
                self.drain_both();
                None
            }
        }
    }

    fn remember(&mut self, to_a: bool, datagram: &[u8]) {
        if self.history.len() == HISTORY {
            self.history.remove(0);
        }
        self.history.push((to_a, datagram.to_vec()));
    }

    fn run(&mut self, event: Event) {
        match event {
            Event::Genuine { from, len } => self.genuine(from, len),
            Event::Changed {
                from,
                len,
                at,
                mask,
            } => {
                if let Some(mut datagram) = self.seal(&from, len) {
                    let at = usize::from(at) % datagram.len();
                    datagram[at] ^= mask;
                    let to = other(&from);
                    let outcome = self.receive(&to, Self::source_of_peer(&to), &mut datagram);
                    if mask != 0 {
                        assert!(
                            !matches!(outcome, ReceiveOutcome::Deliver { .. }),
                            "a changed transport message was delivered"
                        );
                    }
                }
            }
            Event::Replay { to, which } => {
                let matching: Vec<Vec<u8>> = self
                    .history
                    .iter()
                    .filter(|(to_a, _)| *to_a == matches!(to, Side::A))
                    .map(|(_, d)| d.clone())
                    .collect();
                if let Some(datagram) = matching.get(usize::from(which) % matching.len().max(1)) {
                    let mut datagram = datagram.clone();
                    let outcome = self.receive(&to, Self::source_of_peer(&to), &mut datagram);
                    assert!(
                        !matches!(outcome, ReceiveOutcome::Deliver { .. }),
                        "a replayed transport message was delivered"
                    );
                }
            }
            Event::Raw {
                to,
                mut bytes,
                other_source,
                fix_mac1,
            } => {
                if fix_mac1 && bytes.len() >= 32 {
                    // mac1 is keyed with the receiver's own public key.
                    if let Some(own) = self.engine(&to).public_key() {
                        let at = bytes.len() - 32;
                        let key = hash(&[b"mac1----", &own.0]);
                        let m = mac(&key, &[&bytes[..at]]);
                        bytes[at..at + 16].copy_from_slice(&m);
                    }
                }
                let from = if other_source {
                    Endpoint::from("198.51.100.7:4444".parse::<SocketAddr>().unwrap())
                } else {
                    Self::source_of_peer(&to)
                };
                let _ = self.receive(&to, from, &mut bytes);
            }
            Event::Advance { seconds, millis } => {
                let step = Duration::from_secs(u64::from(seconds))
                    + Duration::from_millis(u64::from(millis));
                self.pair.now = self.pair.now.advance(step);
                let now = self.pair.now;
                self.pair.a.handle_timeout(now);
                self.pair.b.handle_timeout(now);
                self.drain_both();
            }
            Event::Rekey {
                initiator,
                under_load,
                change,
            } => self.rekey(initiator, under_load, change),
        }
    }

    fn genuine(&mut self, from: Side, len: u8) {
        if let Some(mut datagram) = self.seal(&from, len) {
            let to = other(&from);
            self.remember(matches!(to, Side::A), &datagram);
            let outcome = self.receive(&to, Self::source_of_peer(&to), &mut datagram);
            assert!(
                matches!(outcome, ReceiveOutcome::Deliver { .. }),
                "a genuine transport message was not delivered: {outcome:?}"
            );
        }
    }

    /// A new handshake through the network, one message at a time, message
    /// `change.0` (counted from 0) altered.
    fn rekey(&mut self, initiator: Side, under_load: bool, change: Option<(u8, u16, u8)>) {
        self.pair.now = self.pair.now.advance(Duration::from_secs(121));
        let responder = other(&initiator);
        self.engine(&responder)
            .set_handshake_backlog(if under_load { 10_000 } else { 0 });
        // Sending after REKEY_AFTER_TIME queues an initiation.
        let _ = self.seal(&initiator, 64);
        let now = self.pair.now;
        self.engine(&initiator).handle_timeout(now);
        let mut message_index = 0u8;
        for _ in 0..8 {
            let mut moved = false;
            for side in [Side::A, Side::B] {
                let to = other(&side);
                while let Some(mut t) = self.engine(&side).poll_transmit() {
                    moved = true;
                    if let Some((which, at, mask)) = change {
                        if which == message_index && !t.data.is_empty() {
                            let at = usize::from(at) % t.data.len();
                            t.data[at] ^= mask;
                        }
                    }
                    message_index = message_index.wrapping_add(1);
                    let from = Self::source_of_peer(&to);
                    let _ = self.receive_only(&to, from, &mut t.data);
                }
            }
            if !moved {
                break;
            }
        }
        self.engine(&responder).set_handshake_backlog(0);
    }
}

/// With `FERROGUARD_FUZZ_REPORT=FILE`, one line per received datagram:
/// the receiving side, the message type byte and the outcome (with the drop
/// reason). `scripts/fuzz-report.sh` replays a corpus this way and counts
/// the lines: which receive paths the corpus reaches (LLVM's source coverage
/// needs an `llvm-cov` of the toolchain's LLVM version, which this machine
/// cannot install).
fn report(to: &Side, kind: Option<u8>, outcome: &ReceiveOutcome) {
    static FILE: OnceLock<Option<Mutex<std::fs::File>>> = OnceLock::new();
    let file = FILE.get_or_init(|| {
        let path = std::env::var_os("FERROGUARD_FUZZ_REPORT")?;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .ok()
            .map(Mutex::new)
    });
    if let Some(file) = file {
        let outcome = match outcome {
            ReceiveOutcome::Deliver { .. } => "Deliver".to_string(),
            other => format!("{other:?}"),
        };
        let kind = kind.map_or("empty".to_string(), |k| format!("type {k}"));
        let mut file = file.lock().unwrap();
        let _ = writeln!(file, "to {to:?}, {kind}: {outcome}");
    }
}

fn other(side: &Side) -> Side {
    match side {
        Side::A => Side::B,
        Side::B => Side::A,
    }
}

fuzz_target!(|input: &[u8]| {
    let mut harness = Harness::new();
    let mut u = Unstructured::new(input);
    for _ in 0..MAX_EVENTS {
        let Ok(event) = Event::arbitrary(&mut u) else {
            break;
        };
        harness.run(event);
    }
});
