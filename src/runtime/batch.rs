//! The engine-call skeleton both directions share.
//!
//! A batch (packets read from the TUN, datagrams received) goes through the
//! engine in three phases:
//! 1. **prepare**, under the engine lock: route or pre-check each item and
//!    reserve what must be exact (a send counter, a receive index);
//! 2. **crypto**, no engine needed: seal or open each prepared item;
//! 3. **complete**, under the engine lock, in the batch's order: count,
//!    update timers and the replay window, note what to deliver.
//!
//! A small batch does all three under one lock acquisition; a large one
//! releases the lock for phase 2 and runs it on the crypto workers together
//! ([`CryptoPool::worth_sharing`](crate::crypto_pool::CryptoPool::worth_sharing)
//! decides).

use ferroguard_proto::device::{Device, Now, Transmit};

use super::Shared;
use crate::clock;
use crate::crypto_pool::CryptoPool;

/// How much crypto work a prepared batch holds.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Workload {
    /// Items to seal or open.
    pub(super) items: usize,
    /// Their bytes.
    pub(super) bytes: usize,
}

/// One direction's three phases (see the module documentation).
pub(super) trait BatchWork {
    /// Phase 1, under the engine lock.
    fn prepare(&mut self, device: &mut Device, now: Now) -> Workload;
    /// Phase 2: on the crypto workers together when `share`, else inline.
    fn crypto(&mut self, pool: &CryptoPool, share: bool);
    /// Phase 3, under the engine lock.
    fn complete(&mut self, device: &mut Device, now: Now);
}

/// Runs `work` through its three phases; returns what the engine queued to
/// send meanwhile (to be sent after the batch's own output).
pub(super) fn run_batch(shared: &Shared, work: &mut impl BatchWork) -> Vec<Transmit> {
    let ((now, share), mut pending) = shared.with_engine(|engine| {
        let now = clock::now();
        let load = work.prepare(&mut engine.device, now);
        let share = shared.crypto.worth_sharing(load.items, load.bytes);
        if !share {
            work.crypto(&shared.crypto, false);
            work.complete(&mut engine.device, now);
        }
        (now, share)
    });
    if share {
        work.crypto(&shared.crypto, true);
        let ((), more) = shared.with_engine(|engine| work.complete(&mut engine.device, now));
        pending.extend(more);
    }
    pending
}
