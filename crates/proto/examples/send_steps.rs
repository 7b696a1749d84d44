//! The engine's send steps alone, a fixed number of times, for counting
//! instructions (`scripts/send-steps-instructions.sh` runs it under
//! cachegrind, whose counts do not depend on the machine's load):
//! `ROUNDS` batches of 64 tiny packets, each prepared (route, keypair,
//! counter) and completed (bytes, timers, rekey checks), as the daemon's
//! lanes do. No AEAD: that is the same in every mode.
//!
//! `send_steps ROUNDS plain`: `Device::prepare_send`, the one-lane path.
//! `send_steps ROUNDS held`: `Device::prepare_send_held` and one
//! `Device::release_sends` per batch, the path of several lanes.

use ferroguard_proto::device::{Now, SendPrepared, SendTally};
use ferroguard_proto::testing::{ipv4_packet, Pair};

/// Packets per batch (as in `benches/crypto_batch.rs`).
const BATCH: usize = 64;

fn main() {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let held = args.next().as_deref() == Some("held");
    let mut pair = Pair::connected(Now::system());
    let packet = ipv4_packet(pair.a_tun, pair.b_tun, 20);
    let now = pair.now;
    let mut sealed = 0usize;
    let mut jobs = Vec::with_capacity(BATCH);
    for _ in 0..rounds {
        let mut tally = SendTally::new();
        for _ in 0..BATCH {
            let prepared = if held {
                prepare_held(&mut pair, now, &packet)
            } else {
                pair.a.prepare_send(now, &packet)
            };
            if let SendPrepared::Seal(job) = prepared {
                tally.record(job.peer, job.wire_len());
                jobs.push(job);
            }
        }
        pair.a.complete_sends(now, &mut tally);
        if held {
            release(&mut pair);
        }
        sealed += jobs.len();
        jobs.clear();
    }
    println!(
        "{sealed} packets prepared in {rounds} batches ({})",
        if held { "held" } else { "plain" }
    );
}

// held-begin (removed when the script builds a revision without holds)
fn prepare_held(pair: &mut Pair, now: Now, packet: &[u8]) -> SendPrepared {
    pair.a.prepare_send_held(now, packet, 0)
}

fn release(pair: &mut Pair) {
    pair.a.release_sends(0);
}
// held-end

#[cfg(any())]
fn prepare_held(pair: &mut Pair, now: Now, packet: &[u8]) -> SendPrepared {
    pair.a.prepare_send(now, packet)
}

#[cfg(any())]
fn release(_pair: &mut Pair) {}
