//! The per-peer send bound between lanes (ARCHITECTURE.md, "Parallel data
//! path"): what a lane does when the engine answers
//! [`SendPrepared::Wait`](ferroguard_proto::device::SendPrepared::Wait).
//!
//! With several lanes every counter a lane reserves is *held* in the engine
//! (`Device::prepare_send_held`) until the lane has handed its batch to the
//! socket and released it (`Device::release_sends`). A lane whose next
//! packet would run too far ahead of another lane's held counter of the same
//! peer sends and releases what it has (so a waiting lane never holds
//! anything, and lanes cannot wait on each other in a circle), then waits on
//! [`Shared`]'s condition variable, paired with the engine lock, until the
//! holder releases, at most [`SEND_ROOM_WAIT`]. After that the packet is
//! dropped and counted (`ferroguard_send_room_drops_total`): a lane stalled
//! that long has lost its packets' timeliness anyway, and sending ahead
//! would only make the receiver refuse the stalled batch instead.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ferroguard_proto::device::Device;
use ferroguard_proto::peer::PeerId;

use super::Shared;

/// The longest a lane waits for another lane to release a peer's counters:
/// longer than a scheduler time slice on a loaded machine (a descheduled
/// holder gets the CPU back within it), well short of TCP's minimum
/// retransmission timeout (200 ms).
pub(super) const SEND_ROOM_WAIT: Duration = Duration::from_millis(50);

/// The environment variable that lowers the lead a peer's counters may
/// run ahead of a held one (default and maximum
/// [`SEND_LEAD_LIMIT`](ferroguard_proto::send_holds::SEND_LEAD_LIMIT)):
/// a test knob that makes lanes wait often (the netns scenario
/// `multiqueue_tight` sets it to exercise the waiting).
pub(super) const LEAD_LIMIT_ENV: &str = "FERROGUARD_SEND_LEAD_LIMIT";

/// Applies [`LEAD_LIMIT_ENV`] if it is set; a value that is not a number
/// is logged and ignored.
pub(super) fn apply_lead_limit_from_env(device: &mut Device) {
    let Ok(text) = std::env::var(LEAD_LIMIT_ENV) else {
        return;
    };
    match text.trim().parse::<u64>() {
        Ok(limit) => {
            device.set_send_lead_limit(limit);
            log::info!("{LEAD_LIMIT_ENV}={limit}: lanes wait when a peer's counters run {limit} ahead of a held one");
        }
        Err(_) => log::warn!("{LEAD_LIMIT_ENV}={text:?} is not a number: ignored"),
    }
}

impl Shared {
    /// Ends `lane`'s holds (everything it reserved has been sent) and wakes
    /// the lanes waiting for room, if any.
    pub(super) fn release_lane_sends(&self, lane: usize) {
        let released = self.engine().device.release_sends(lane);
        if released {
            self.wake_send_waiters();
        }
    }

    /// Wakes the lanes waiting for room (after a release).
    pub(super) fn wake_send_waiters(&self) {
        // A waiter counts itself under the engine lock before it waits, and
        // every release is made under that lock before this call: a waiter
        // that is not counted yet will see the release when it checks.
        if self.send_room_waiters.load(Ordering::Relaxed) > 0 {
            self.send_room.notify_all();
        }
    }

    /// For a lane whose batch was sent: releases its holds, then waits until
    /// a packet to `peer` may be prepared again or `deadline` passes.
    /// Returns false if the deadline passed (the caller drops the packet
    /// and counts it with [`count_send_room_drop`](Self::count_send_room_drop)).
    pub(super) fn wait_for_send_room(&self, lane: usize, peer: PeerId, deadline: Instant) -> bool {
        let mut engine = self.engine();
        if engine.device.release_sends(lane) {
            self.send_room.notify_all();
        }
        self.send_room_waits.fetch_add(1, Ordering::Relaxed);
        self.send_room_waiters.fetch_add(1, Ordering::Relaxed);
        let room = loop {
            if !engine.device.send_must_wait(peer) {
                break true;
            }
            let now = Instant::now();
            if now >= deadline {
                break false;
            }
            engine = match self.send_room.wait_timeout(engine, deadline - now) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        };
        self.send_room_waiters.fetch_sub(1, Ordering::Relaxed);
        room
    }

    /// Counts a packet dropped because its lane waited [`SEND_ROOM_WAIT`]
    /// in vain.
    pub(super) fn count_send_room_drop(&self) {
        self.send_room_drops.fetch_add(1, Ordering::Relaxed);
    }

    /// (Times a lane waited for another lane to release a peer's counters,
    /// packets dropped after waiting [`SEND_ROOM_WAIT`] in vain), for
    /// metrics.
    pub fn send_room_counts(&self) -> (u64, u64) {
        (
            self.send_room_waits.load(Ordering::Relaxed),
            self.send_room_drops.load(Ordering::Relaxed),
        )
    }
}
