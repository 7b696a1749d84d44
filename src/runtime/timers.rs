//! The timer thread: sleeps until the engine's next deadline and fires its
//! timers. Other threads wake it early when a deadline moves earlier.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::events::drain;
use super::Shared;
use crate::clock;

/// Lets other threads wake the timer thread when a deadline moved earlier.
pub(super) struct TimerKick {
    base: Instant,
    /// Nanoseconds after `base` at which the timer thread plans to wake.
    planned: AtomicU64,
    lock: Mutex<bool>,
    cond: Condvar,
}

impl TimerKick {
    pub(super) fn new() -> Self {
        TimerKick {
            base: Instant::now(),
            planned: AtomicU64::new(u64::MAX),
            lock: Mutex::new(false),
            cond: Condvar::new(),
        }
    }

    fn nanos(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.base).as_nanos() as u64
    }

    /// Wakes the timer thread if `deadline` is earlier than its plan.
    pub(super) fn kick_if_earlier(&self, deadline: Option<Instant>) {
        let Some(deadline) = deadline else { return };
        if self.nanos(deadline) < self.planned.load(Ordering::Relaxed) {
            let mut kicked = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            *kicked = true;
            self.cond.notify_one();
        }
    }

    /// Sleeps until `deadline` (an hour when there is none) or a kick.
    fn sleep_until(&self, deadline: Option<Instant>) {
        let planned = deadline.map_or(u64::MAX, |d| self.nanos(d));
        self.planned.store(planned, Ordering::Relaxed);
        let mut kicked = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        // Checked under the lock, so a kick between the store and the wait
        // is not lost.
        let wait = match deadline {
            Some(d) => clock::real_deadline(d).saturating_duration_since(Instant::now()),
            None => Duration::from_secs(3600),
        };
        if !*kicked && !wait.is_zero() {
            kicked = self
                .cond
                .wait_timeout(kicked, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        *kicked = false;
    }
}

/// Sleeps until the engine's next deadline and fires its timers, forever.
pub fn timer_loop(shared: Arc<Shared>) {
    loop {
        let deadline = shared.engine().device.poll_timeout();
        shared.timer.sleep_until(deadline);
        // Not `with_engine`: this thread needs no kick of its own; it reads
        // the next deadline at the top of the loop.
        let pending = {
            let mut engine = shared.engine();
            engine.device.handle_timeout(clock::now());
            drain(&mut engine.device)
        };
        shared.send_all(pending);
    }
}
