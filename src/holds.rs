//! How long a request held the engine lock: the longest single hold, where
//! it happened, and the sum, logged at debug level when the request ends.
//!
//! Every hold of the engine lock by a configuration request, a `get` or a
//! metrics scrape stalls the data path for as long as it lasts, so the
//! longest hold is the number to watch when pings stall during one of them
//! (`LOG_LEVEL=debug`).

use std::time::{Duration, Instant};

/// The engine-lock holds of one request (see the module documentation).
#[derive(Debug)]
pub struct LockHolds {
    started: Instant,
    count: u64,
    total: Duration,
    longest: Duration,
    longest_at: &'static str,
}

impl Default for LockHolds {
    fn default() -> Self {
        Self::new()
    }
}

impl LockHolds {
    /// A request starting now, with no hold yet.
    pub fn new() -> Self {
        LockHolds {
            started: Instant::now(),
            count: 0,
            total: Duration::ZERO,
            longest: Duration::ZERO,
            longest_at: "-",
        }
    }

    /// Counts one hold of `held`, done by the step called `step`.
    pub fn note(&mut self, step: &'static str, held: Duration) {
        self.count += 1;
        self.total += held;
        if held > self.longest {
            self.longest = held;
            self.longest_at = step;
        }
    }

    /// Runs `work` and counts the time it took as a hold by `step`: for a
    /// closure that takes the lock and releases it before returning.
    pub fn time<R>(&mut self, step: &'static str, work: impl FnOnce() -> R) -> R {
        let started = Instant::now();
        let result = work();
        self.note(step, started.elapsed());
        result
    }

    /// The longest hold so far.
    pub fn longest(&self) -> Duration {
        self.longest
    }

    /// Writes the summary at debug level: `what` names the request.
    pub fn log(&self, what: &str) {
        log::debug!(
            "{what}: {:.3} s, {} engine-lock holds, {:.3} s held in all, the longest {} us ({})",
            self.started.elapsed().as_secs_f64(),
            self.count,
            self.total.as_secs_f64(),
            self.longest.as_micros(),
            self.longest_at,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_hold_and_its_step_are_kept() {
        let mut holds = LockHolds::new();
        holds.note("short", Duration::from_micros(10));
        holds.note("long", Duration::from_micros(900));
        holds.note("middle", Duration::from_micros(300));
        assert_eq!(holds.longest(), Duration::from_micros(900));
        assert_eq!(holds.longest_at, "long");
        assert_eq!(holds.count, 3);
        assert_eq!(holds.total, Duration::from_micros(1210));
    }
}
