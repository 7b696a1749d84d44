//! How much of its send buffer (`SendBuffer`) a connection may fill: all of
//! it while its data is acknowledged, half as much after each stall, and
//! back up step by step while none follows.
//!
//! Why: smoltcp has no SACK, resends everything from the first lost byte,
//! and waits at least one second before a retransmission timeout. What is
//! in flight sits, in the worst case, in the peer's UDP receive buffer; a
//! peer that reads its socket slowly and keeps the kernel's default buffer
//! (208 KiB of socket memory, some 90 datagrams; Debian's wireguard-go
//! does) drops datagrams when a full 128 KiB window arrives at once, and the
//! connection then stalls for seconds at a time. Faster peers take the full
//! window without a loss. A stall of [`STALL`] without any acknowledged
//! byte while data waits is that timeout (no round trip through a tunnel
//! is that long), so it is the signal: the connection keeps less in flight
//! from then on (measured in BENCHMARKS.md, "Rootless mode").

use std::time::{Duration, Instant};

/// No acknowledged byte for this long while data waits: a retransmission
/// timeout (smoltcp's is at least 1 s), or a peer that takes nothing.
const STALL: Duration = Duration::from_millis(800);

/// The least a connection may keep in flight after stalls.
const FLOOR: usize = 16 * 1024;

/// How often the limit grows back, by an eighth of the buffer, while the
/// connection does not stall.
const GROW_EVERY: Duration = Duration::from_secs(1);

/// One connection's in-flight limit and what it needs to see progress.
pub(super) struct InFlight {
    capacity: usize,
    limit: usize,
    /// Bytes handed to the stack socket, ever.
    queued_total: u64,
    /// Bytes acknowledged (left the send queue), ever, at the last look.
    acked_total: u64,
    progress_at: Instant,
    changed_at: Instant,
}

impl InFlight {
    /// The limit of a connection whose send buffer holds `capacity` bytes:
    /// all of them, to begin with.
    pub(super) fn new(capacity: usize, now: Instant) -> InFlight {
        InFlight {
            capacity,
            limit: capacity,
            queued_total: 0,
            acked_total: 0,
            progress_at: now,
            changed_at: now,
        }
    }

    /// How many more bytes may be queued while `queued` wait in the socket.
    pub(super) fn room(&self, queued: usize) -> usize {
        self.limit.saturating_sub(queued)
    }

    /// Counts `n` bytes handed to the socket.
    pub(super) fn queued(&mut self, n: usize) {
        self.queued_total += n as u64;
    }

    /// Looks at the socket's send queue (`queued` bytes now): halves the
    /// limit after a stall, grows it back while there is none.
    pub(super) fn observe(&mut self, queued: usize, now: Instant) {
        let acked = self.queued_total.saturating_sub(queued as u64);
        if queued == 0 || acked > self.acked_total {
            self.acked_total = acked;
            self.progress_at = now;
            if self.limit < self.capacity && now.duration_since(self.changed_at) >= GROW_EVERY {
                self.limit = (self.limit + self.capacity / 8).min(self.capacity);
                self.changed_at = now;
            }
        } else if now.duration_since(self.progress_at) >= STALL {
            self.limit = (self.limit / 2).max(FLOOR.min(self.capacity));
            self.progress_at = now;
            self.changed_at = now;
            log::debug!(
                "a connection stalled with {queued} bytes unacknowledged: in flight at most {} from now",
                self.limit
            );
        }
    }

    /// The current limit.
    #[cfg(test)]
    fn limit(&self) -> usize {
        self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: usize = 1024;

    #[test]
    fn a_stall_halves_the_limit_down_to_the_floor_and_progress_grows_it_back() {
        let start = Instant::now();
        let mut flight = InFlight::new(128 * K, start);
        assert_eq!(flight.room(0), 128 * K);
        flight.queued(100 * K);
        // Acknowledged bytes: progress, no change.
        flight.observe(60 * K, start + Duration::from_millis(500));
        assert_eq!(flight.limit(), 128 * K);
        // Nothing acknowledged for less than STALL: no change.
        flight.observe(60 * K, start + Duration::from_millis(1200));
        assert_eq!(flight.limit(), 128 * K);
        // For STALL: halved.
        flight.observe(60 * K, start + Duration::from_millis(1300));
        assert_eq!(flight.limit(), 64 * K);
        assert_eq!(flight.room(60 * K), 4 * K);
        // Halved again and again, never below the floor.
        let mut t = start + Duration::from_millis(1300);
        for _ in 0..10 {
            t += STALL;
            flight.observe(60 * K, t);
        }
        assert_eq!(flight.limit(), FLOOR);
        // Progress within GROW_EVERY of the last change: no growth yet.
        flight.observe(0, t + Duration::from_millis(500));
        assert_eq!(flight.limit(), FLOOR);
        // Then an eighth of the buffer per GROW_EVERY, up to the buffer.
        flight.observe(0, t + GROW_EVERY);
        assert_eq!(flight.limit(), FLOOR + 16 * K);
        for k in 2..20 {
            flight.observe(0, t + GROW_EVERY * k);
        }
        assert_eq!(flight.limit(), 128 * K);
    }

    #[test]
    fn an_idle_connection_never_stalls() {
        let start = Instant::now();
        let mut flight = InFlight::new(64 * K, start);
        flight.queued(10 * K);
        flight.observe(0, start + Duration::from_secs(5));
        flight.observe(0, start + Duration::from_secs(10));
        assert_eq!(flight.limit(), 64 * K);
    }

    #[test]
    fn a_small_buffer_keeps_its_size_as_the_floor() {
        let start = Instant::now();
        let mut flight = InFlight::new(8 * K, start);
        flight.queued(8 * K);
        flight.observe(8 * K, start + STALL);
        assert_eq!(flight.limit(), 8 * K);
    }
}
