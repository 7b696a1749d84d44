//! Handshake flood protection: the per-source rate limiter and the
//! "under load" detector.
//!
//! A handshake initiation costs the responder several Diffie-Hellman
//! operations, so a flood of them can exhaust the CPU. WireGuard answers in
//! two steps. While the device is *under load* ([`LoadDetector`]) a handshake
//! must carry a valid cookie (mac2), which proves the sender can receive at
//! its source address. Such senders are then held to a token bucket each
//! ([`RateLimiter`]): 20 handshakes per second with a burst of 5, as in the
//! Linux driver and wireguard-go.
//!
//! Neither type reads a clock: every call takes `now`. All time arithmetic
//! saturates, so an `Instant` that goes backwards never panics.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Default bound on the number of sources tracked at once.
pub const DEFAULT_MAX_ENTRIES: usize = 8192;
/// Sustained rate allowed per source, in handshake packets per second.
pub const PACKETS_PER_SECOND: u64 = 20;
/// Packets a source may send back to back after being idle.
pub const PACKETS_BURSTABLE: u64 = 5;

/// How long a source's entry lives without traffic, and the spacing of
/// garbage-collection passes.
const ENTRY_IDLE_LIFETIME: Duration = Duration::from_secs(1);
/// Tokens are nanoseconds of credit; one packet costs this many.
const PACKET_COST: u64 = 1_000_000_000 / PACKETS_PER_SECOND;
/// A full bucket: the credit for a burst of [`PACKETS_BURSTABLE`] packets.
const TOKEN_MAX: u64 = PACKET_COST * PACKETS_BURSTABLE;

/// The identity that shares one bucket.
///
/// IPv6 sources are keyed by their /64 because one host usually owns a whole
/// /64 and could otherwise rotate addresses to get fresh buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum SourceKey {
    V4(u32),
    V6Prefix64(u64),
}

impl SourceKey {
    fn of(source: IpAddr) -> Self {
        match source {
            IpAddr::V4(v4) => SourceKey::V4(u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                // A dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d.
                Some(v4) => SourceKey::V4(u32::from(v4)),
                // The upper half of the address; the shift leaves 64 bits.
                None => SourceKey::V6Prefix64((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

/// One source's token bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Credit in nanoseconds, at most [`TOKEN_MAX`].
    tokens: u64,
    /// When the bucket was last refilled (the latest `now` seen for it).
    last_seen: Instant,
}

impl Bucket {
    /// A new source's bucket, already charged for its first packet.
    fn first_packet(now: Instant) -> Self {
        Self {
            tokens: TOKEN_MAX - PACKET_COST,
            last_seen: now,
        }
    }

    /// Refills for the time elapsed since the last packet, then tries to pay
    /// for one packet.
    fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last_seen);
        // Anything beyond TOKEN_MAX nanoseconds fills the bucket anyway.
        let credit = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.tokens = self.tokens.saturating_add(credit).min(TOKEN_MAX);
        // Never move backwards: an earlier `now` would earn the credit twice.
        self.last_seen = self.last_seen.max(now);
        if self.tokens >= PACKET_COST {
            self.tokens -= PACKET_COST;
            true
        } else {
            false
        }
    }

    fn is_idle(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.last_seen) > ENTRY_IDLE_LIFETIME
    }
}

/// Per-source token buckets for handshake messages.
///
/// The table is bounded: when it holds `max_entries` sources, packets from
/// new sources are denied until idle entries are collected (known sources
/// keep their buckets). Entries idle for more than a second are dropped by a
/// pass that runs inside [`allow`](Self::allow) at most once per second.
///
/// The table is a `BTreeMap`, so an attacker choosing source addresses cannot
/// provoke hash collisions, and behaviour does not depend on a random seed.
#[derive(Clone)]
pub struct RateLimiter {
    buckets: BTreeMap<SourceKey, Bucket>,
    max_entries: usize,
    /// When idle entries were last collected; `None` before the first packet.
    last_collection: Option<Instant>,
}

impl core::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // The table can hold thousands of addresses: print its size only.
        f.debug_struct("RateLimiter")
            .field("entries", &self.buckets.len())
            .field("max_entries", &self.max_entries)
            .finish_non_exhaustive()
    }
}

impl Default for RateLimiter {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_ENTRIES)
    }
}

impl RateLimiter {
    /// A limiter that tracks at most `max_entries` sources at once.
    pub fn new(max_entries: usize) -> Self {
        Self {
            buckets: BTreeMap::new(),
            max_entries,
            last_collection: None,
        }
    }

    /// Whether a handshake message from `source`, received at `now`, may be
    /// processed; charges the source's bucket if so.
    pub fn allow(&mut self, now: Instant, source: IpAddr) -> bool {
        self.collect_idle_entries_if_due(now);
        let key = SourceKey::of(source);
        if let Some(bucket) = self.buckets.get_mut(&key) {
            return bucket.try_take(now);
        }
        if self.buckets.len() >= self.max_entries {
            return false;
        }
        self.buckets.insert(key, Bucket::first_packet(now));
        true
    }

    /// Number of sources currently tracked.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Whether no source is tracked.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// Drops idle entries, at most once per [`ENTRY_IDLE_LIFETIME`].
    fn collect_idle_entries_if_due(&mut self, now: Instant) {
        let due = match self.last_collection {
            None => true,
            Some(last) => now.saturating_duration_since(last) >= ENTRY_IDLE_LIFETIME,
        };
        if due {
            self.buckets.retain(|_, bucket| !bucket.is_idle(now));
            self.last_collection = Some(now);
        }
    }
}

/// Handshake messages still waiting to be processed at which the device
/// counts as under load (wireguard-go: 1/8 of its 1024-entry queue).
pub const UNDER_LOAD_BACKLOG: usize = 128;
/// Handshake messages per second above which the device counts as under
/// load, whatever the backlog.
pub const UNDER_LOAD_RATE: usize = 512;
/// How long the device stays under load after the condition last held.
pub const UNDER_LOAD_HOLD: Duration = Duration::from_secs(1);
/// The span over which [`UNDER_LOAD_RATE`] is counted.
const RATE_WINDOW: Duration = Duration::from_secs(1);

/// Decides whether the device is "under load", i.e. whether handshakes must
/// carry a cookie.
///
/// The device is under load while the handshake backlog is at least
/// [`UNDER_LOAD_BACKLOG`], or more than [`UNDER_LOAD_RATE`] handshake
/// messages arrived within the last second, and for [`UNDER_LOAD_HOLD`] after
/// either last held.
#[derive(Clone)]
pub struct LoadDetector {
    /// Arrival times of the latest `UNDER_LOAD_RATE + 1` messages, as a ring.
    arrivals: Vec<Instant>,
    /// Once the ring is full: the index of the oldest arrival, which the next
    /// arrival overwrites.
    oldest: usize,
    /// When the load condition last held.
    last_under_load: Option<Instant>,
}

impl core::fmt::Debug for LoadDetector {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("LoadDetector")
            .field("last_under_load", &self.last_under_load)
            .finish_non_exhaustive()
    }
}

impl Default for LoadDetector {
    fn default() -> Self {
        Self::new()
    }
}

impl LoadDetector {
    /// A detector that has seen no traffic: not under load.
    pub fn new() -> Self {
        Self {
            arrivals: Vec::with_capacity(UNDER_LOAD_RATE + 1),
            oldest: 0,
            last_under_load: None,
        }
    }

    /// Records one received handshake message, with `backlog` handshake
    /// messages still waiting, and returns whether the device is under load.
    pub fn observe(&mut self, now: Instant, backlog: usize) -> bool {
        let rate_exceeded = self.record_arrival(now);
        if backlog >= UNDER_LOAD_BACKLOG || rate_exceeded {
            self.last_under_load = Some(now);
            return true;
        }
        match self.last_under_load {
            None => false,
            Some(last) => match last.checked_add(UNDER_LOAD_HOLD) {
                Some(hold_end) if now >= hold_end => {
                    // Forget it so later calls skip the comparison.
                    self.last_under_load = None;
                    false
                }
                // Also when the deadline is not representable: still holding.
                _ => true,
            },
        }
    }

    /// Whether the device is still under load at `now` (within
    /// [`UNDER_LOAD_HOLD`] of the condition last holding), without recording
    /// an arrival: for monitoring.
    pub fn is_under_load(&self, now: Instant) -> bool {
        self.last_under_load
            .is_some_and(|last| now.saturating_duration_since(last) < UNDER_LOAD_HOLD)
    }

    /// Stores the arrival and returns whether more than [`UNDER_LOAD_RATE`]
    /// arrivals, this one included, fall within the last [`RATE_WINDOW`].
    ///
    /// The ring holds the last `UNDER_LOAD_RATE + 1` arrivals, so the rate is
    /// exceeded exactly when the oldest of them is recent.
    fn record_arrival(&mut self, now: Instant) -> bool {
        if self.arrivals.len() <= UNDER_LOAD_RATE {
            self.arrivals.push(now);
            if self.arrivals.len() <= UNDER_LOAD_RATE {
                return false;
            }
        } else if let Some(slot) = self.arrivals.get_mut(self.oldest) {
            *slot = now;
            self.oldest = (self.oldest + 1) % self.arrivals.len();
        }
        match self.arrivals.get(self.oldest) {
            Some(&oldest) => now.saturating_duration_since(oldest) < RATE_WINDOW,
            None => false,
        }
    }
}

/// The timing script: `(wait, expect allowed, what)` steps.
#[cfg(any(test, feature = "selftest"))]
pub(crate) fn timing_script() -> Vec<(Duration, bool, &'static str)> {
    let interval = Duration::from_nanos(1_000_000_000 / PACKETS_PER_SECOND);
    let mut script: Vec<(Duration, bool, &str)> = (0..PACKETS_BURSTABLE)
        .map(|_| (Duration::ZERO, true, "initial burst"))
        .collect();
    script.extend([
        (Duration::ZERO, false, "after burst"),
        (interval, true, "refilled for one packet"),
        (Duration::ZERO, false, "not refilled enough"),
        (2 * interval, true, "refilled for two packets"),
        (Duration::ZERO, true, "second of two"),
        (Duration::ZERO, false, "after the two"),
    ]);
    script
}

/// The kernel's and wireguard-go's rate limiter timing script with an
/// injected clock: the burst of 5 passes, the 6th is refused; after one
/// packet interval (50 ms) one more passes; after two, two more. At every
/// step `stranger(i)`, a source never seen before, must pass. Shared by the
/// unit tests and the start-up self-tests.
#[cfg(any(test, feature = "selftest"))]
pub(crate) fn timing_script_result(
    scripted: &dyn Fn(usize) -> IpAddr,
    stranger: &dyn Fn(usize) -> IpAddr,
) -> Result<(), String> {
    let mut limiter = RateLimiter::new(DEFAULT_MAX_ENTRIES);
    let mut now = Instant::now();
    for (index, (wait, allowed, what)) in timing_script().into_iter().enumerate() {
        now += wait;
        let source = scripted(index);
        if limiter.allow(now, source) != allowed {
            return Err(format!("step {index} ({what}) for {source}"));
        }
        let other = stranger(index);
        if !limiter.allow(now, other) {
            return Err(format!("step {index}: fresh source {other} refused"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const PACKET_INTERVAL: Duration = Duration::from_nanos(1_000_000_000 / PACKETS_PER_SECOND);

    fn run_timing_script(scripted: impl Fn(usize) -> IpAddr, stranger: impl Fn(usize) -> IpAddr) {
        if let Err(e) = timing_script_result(&scripted, &stranger) {
            panic!("{e}");
        }
    }

    fn v4(bits: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(bits))
    }

    fn v6(bits: u128) -> IpAddr {
        IpAddr::V6(Ipv6Addr::from(bits))
    }

    #[test]
    fn timing_script_ipv4() {
        let base = 8182;
        run_timing_script(|_| v4(base), |i| v4(base + i as u32 + 1));
    }

    #[test]
    fn timing_script_ipv6_shares_bucket_within_slash_64() {
        // As in the kernel selftest: the interface identifier changes at
        // every step (same /64, same bucket), while changing the first 32
        // bits gives a fresh source.
        let prefix: u128 = (1212 << 96) | (289188 << 64);
        let host = |i: usize| ((i as u128) << 32) | i as u128;
        run_timing_script(
            |i| v6(prefix | host(i)),
            |i| v6((prefix + ((i as u128 + 1) << 96)) | host(i)),
        );
    }

    #[test]
    fn timing_script_holds_for_many_sources_at_once() {
        // wireguard-go's variant: the same script for 8 IPv4 and 6 IPv6
        // sources interleaved; none may disturb another.
        let sources: Vec<IpAddr> = [
            "127.0.0.1",
            "192.168.1.1",
            "172.167.2.3",
            "97.231.252.215",
            "248.97.91.167",
            "188.208.233.47",
            "104.2.183.179",
            "72.129.46.120",
            "2001:0db8:0a0b:12f0:0000:0000:0000:0001",
            "f5c2:818f:c052:655a:9860:b136:6894:25f0",
            "b2d7:15ab:48a7:b07c:a541:f144:a9fe:54fc",
            "a47b:786e:1671:a22b:d6f9:4ab0:abc7:c918",
            "ea1e:d155:7f7a:98fb:2bf5:9483:80f6:5445",
            "3f0e:54a2:f5b4:cd19:a21d:58e1:3746:84c4",
        ]
        .iter()
        .map(|text| text.parse().expect("test address"))
        .collect();
        let mut limiter = RateLimiter::new(DEFAULT_MAX_ENTRIES);
        let mut now = Instant::now();
        for (index, (wait, allowed, _)) in timing_script().into_iter().enumerate() {
            now += wait;
            for &source in &sources {
                assert_eq!(
                    limiter.allow(now, source),
                    allowed,
                    "step {index} for {source}"
                );
            }
        }
        assert_eq!(limiter.len(), sources.len());
    }

    #[test]
    fn ipv6_keyed_by_slash_64() {
        let mut limiter = RateLimiter::new(DEFAULT_MAX_ENTRIES);
        let now = Instant::now();
        let a: IpAddr = "2001:db8:1:2::1".parse().expect("test address");
        let same_64: IpAddr = "2001:db8:1:2:ffff:eeee:dddd:cccc"
            .parse()
            .expect("test address");
        let next_64: IpAddr = "2001:db8:1:3::1".parse().expect("test address");
        for i in 0..PACKETS_BURSTABLE {
            let source = if i % 2 == 0 { a } else { same_64 };
            assert!(limiter.allow(now, source), "burst packet {i}");
        }
        assert!(!limiter.allow(now, same_64));
        assert!(!limiter.allow(now, a));
        assert!(limiter.allow(now, next_64));
        assert_eq!(limiter.len(), 2);
    }

    #[test]
    fn ipv4_mapped_ipv6_shares_the_ipv4_bucket() {
        let mut limiter = RateLimiter::new(DEFAULT_MAX_ENTRIES);
        let now = Instant::now();
        let plain: IpAddr = "198.51.100.7".parse().expect("test address");
        let mapped: IpAddr = "::ffff:198.51.100.7".parse().expect("test address");
        let neighbour: IpAddr = "::ffff:198.51.100.8".parse().expect("test address");
        for i in 0..PACKETS_BURSTABLE {
            assert!(limiter.allow(now, if i < 3 { plain } else { mapped }));
        }
        assert!(!limiter.allow(now, mapped));
        assert!(!limiter.allow(now, plain));
        // Mapped addresses are not lumped into one IPv6 /64 either.
        assert!(limiter.allow(now, neighbour));
        assert_eq!(limiter.len(), 2);
    }

    #[test]
    fn sustained_rate_is_twenty_per_second() {
        let mut limiter = RateLimiter::new(DEFAULT_MAX_ENTRIES);
        let start = Instant::now();
        let source = v4(0x0a00_0001);
        // Offer 100 packets per second for 10 s.
        let offered = 1000u32;
        let allowed = (0..offered)
            .filter(|&i| limiter.allow(start + Duration::from_millis(10) * i, source))
            .count() as u64;
        // 20/s over 9.99 s plus the initial burst.
        let expected = PACKETS_PER_SECOND * 999 / 100 + PACKETS_BURSTABLE;
        assert!(
            allowed.abs_diff(expected) <= 1,
            "allowed {allowed}, expected ~{expected}"
        );
    }

    #[test]
    fn capacity_bound_then_gc_frees_room() {
        let max_entries = 1000;
        let mut limiter = RateLimiter::new(max_entries);
        let start = Instant::now();
        for i in 0..max_entries {
            assert!(limiter.allow(start, v4(i as u32)), "source {i}");
        }
        assert_eq!(limiter.len(), max_entries);
        let newcomer = v4(max_entries as u32);
        assert!(!limiter.allow(start, newcomer), "table full");
        // Known sources keep their buckets while the table is full.
        assert!(limiter.allow(start, v4(0)));
        // Half a second later no collection is due yet: still full.
        assert!(!limiter.allow(start + Duration::from_millis(500), newcomer));
        // Idle for more than a second, and a collection is due.
        let later = start + ENTRY_IDLE_LIFETIME + Duration::from_millis(1);
        assert!(limiter.allow(later, newcomer), "after gc");
        assert_eq!(limiter.len(), 1);
    }

    #[test]
    fn gc_runs_at_most_once_per_second_and_keeps_active_sources() {
        let mut limiter = RateLimiter::new(DEFAULT_MAX_ENTRIES);
        let start = Instant::now();
        let active = v4(1);
        let idle = v4(2);
        assert!(limiter.allow(start, idle));
        // First collection happened at `start`; the next is due at start + 1 s.
        for ms in (0..=1500).step_by(100) {
            limiter.allow(start + Duration::from_millis(ms), active);
        }
        // At 1.0 s the idle entry was not yet idle for *more* than 1 s; the
        // next collection is only due at 2.0 s.
        assert_eq!(limiter.len(), 2);
        limiter.allow(start + Duration::from_millis(2000), active);
        assert_eq!(limiter.len(), 1);
        assert!(!limiter.is_empty());
        limiter.allow(start + Duration::from_millis(3100), v4(3));
        assert_eq!(
            limiter.len(),
            1,
            "active went idle at 2.0 s, collected at 3.1 s"
        );
    }

    #[test]
    fn clock_going_backwards_neither_panics_nor_mints_tokens() {
        let mut limiter = RateLimiter::new(DEFAULT_MAX_ENTRIES);
        let later = Instant::now() + Duration::from_secs(10);
        let earlier = later - Duration::from_secs(5);
        let source = v4(7);
        for _ in 0..PACKETS_BURSTABLE {
            assert!(limiter.allow(later, source));
        }
        assert!(!limiter.allow(earlier, source));
        assert!(
            !limiter.allow(later, source),
            "going back then forward earns nothing"
        );
        assert!(limiter.allow(later + PACKET_INTERVAL, source));
    }

    #[test]
    fn zero_capacity_denies_everything() {
        let mut limiter = RateLimiter::new(0);
        assert!(!limiter.allow(Instant::now(), v4(1)));
        assert!(limiter.is_empty());
    }

    #[test]
    fn load_enters_at_backlog_threshold_and_holds_one_second() {
        let mut detector = LoadDetector::new();
        let start = Instant::now();
        assert!(!detector.observe(start, 0));
        assert!(!detector.observe(start, UNDER_LOAD_BACKLOG - 1));
        assert!(detector.observe(start, UNDER_LOAD_BACKLOG));
        let almost = start + UNDER_LOAD_HOLD - Duration::from_nanos(1);
        assert!(detector.observe(almost, 0), "holds just under 1 s");
        assert!(
            !detector.observe(start + UNDER_LOAD_HOLD, 0),
            "leaves at 1 s"
        );
        assert!(!detector.observe(start + UNDER_LOAD_HOLD * 2, 0));
    }

    #[test]
    fn load_hold_restarts_each_time_condition_holds() {
        let mut detector = LoadDetector::new();
        let start = Instant::now();
        assert!(detector.observe(start, UNDER_LOAD_BACKLOG));
        let renewed = start + Duration::from_millis(900);
        assert!(detector.observe(renewed, UNDER_LOAD_BACKLOG + 5));
        assert!(detector.observe(start + Duration::from_millis(1500), 0));
        assert!(!detector.observe(renewed + UNDER_LOAD_HOLD, 0));
    }

    #[test]
    fn load_enters_when_rate_exceeded() {
        let mut detector = LoadDetector::new();
        let start = Instant::now();
        // UNDER_LOAD_RATE arrivals spread over just under a second: not more
        // than the rate, so not under load.
        let spacing = Duration::from_millis(1);
        for i in 0..UNDER_LOAD_RATE as u32 {
            assert!(!detector.observe(start + spacing * i, 0), "arrival {i}");
        }
        // One more within the same second exceeds the rate.
        let last = start + spacing * (UNDER_LOAD_RATE as u32);
        assert!(detector.observe(last, 0));
        // Held for a second after the last time the rate was exceeded.
        assert!(detector.observe(last + Duration::from_millis(999), 0));
        assert!(!detector.observe(last + Duration::from_millis(1000), 0));
    }

    #[test]
    fn steady_rate_at_the_limit_is_not_load() {
        let mut detector = LoadDetector::new();
        let start = Instant::now();
        // Exactly UNDER_LOAD_RATE per second, evenly spaced, for 5 s.
        let spacing = Duration::from_nanos(1_000_000_000 / UNDER_LOAD_RATE as u64);
        for i in 0..5 * UNDER_LOAD_RATE as u32 {
            assert!(!detector.observe(start + spacing * i, 0), "arrival {i}");
        }
    }

    #[test]
    fn load_from_rate_holds_one_second_after_last_excess() {
        let mut detector = LoadDetector::new();
        let start = Instant::now();
        let mut under_load = false;
        for _ in 0..=UNDER_LOAD_RATE {
            under_load = detector.observe(start, 0);
        }
        assert!(
            under_load,
            "{} arrivals in one instant",
            UNDER_LOAD_RATE + 1
        );
        // Still inside the burst's second, this arrival makes 514 within a
        // second: the condition holds again and the hold restarts from here.
        let quiet = start + Duration::from_millis(999);
        assert!(detector.observe(quiet, 0));
        // Now the burst is over a second old, but the hold from `quiet` runs.
        let hold_end = quiet + UNDER_LOAD_HOLD;
        assert!(detector.observe(hold_end - Duration::from_nanos(1), 0));
        assert!(!detector.observe(hold_end, 0));
    }

    #[test]
    fn load_detector_survives_clock_going_backwards() {
        let mut detector = LoadDetector::default();
        let later = Instant::now() + Duration::from_secs(10);
        assert!(detector.observe(later, UNDER_LOAD_BACKLOG));
        assert!(detector.observe(later - Duration::from_secs(5), 0));
    }
}
