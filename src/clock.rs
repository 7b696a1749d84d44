//! The daemon's clock: the one place where the engine's [`Now`] is read and
//! where the engine's deadlines are turned back into instants to sleep until.
//!
//! The protocol core never reads a clock; everything it knows about time
//! comes through here, so a test build can change how time passes without
//! touching the engine.
//!
//! With the cargo feature `test-clock` (off by default, for soak tests
//! only), `FERROGUARD_TEST_CLOCK_SPEED=K` makes the engine's monotonic time
//! run K times faster than real time: at K = 40 a session is rekeyed every
//! 3 s instead of every 120 s. Wall-clock time stays real, so TAI64N
//! timestamps and `latest-handshake` keep their meaning.

use std::time::Instant;

use ferroguard_proto::device::Now;

/// The current time as the engine sees it.
pub fn now() -> Now {
    #[cfg(feature = "test-clock")]
    if let Some(scale) = test_clock::scale() {
        let mut now = Now::system();
        now.mono = scale.engine_instant(now.mono);
        return now;
    }
    Now::system()
}

/// The real instant at which an engine deadline falls.
pub fn real_deadline(engine_deadline: Instant) -> Instant {
    #[cfg(feature = "test-clock")]
    if let Some(scale) = test_clock::scale() {
        return scale.real_instant(engine_deadline);
    }
    engine_deadline
}

/// The sped-up clock of the `test-clock` feature.
#[cfg(any(feature = "test-clock", test))]
pub mod test_clock {
    #[cfg(feature = "test-clock")]
    use std::sync::OnceLock;
    use std::time::{Duration, Instant};

    /// The environment variable holding the speed factor.
    pub const SPEED_VARIABLE: &str = "FERROGUARD_TEST_CLOCK_SPEED";

    /// The largest accepted speed factor: beyond it the 20 ms initiation
    /// flood guard would be shorter than a scheduler tick.
    pub const MAX_SPEED: u32 = 1000;

    /// A linear map between real and engine time around a common origin:
    /// `engine = origin + (real − origin) × speed`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Scale {
        origin: Instant,
        speed: u32,
    }

    impl Scale {
        /// A map with the given origin and speed (at least 1).
        pub fn new(origin: Instant, speed: u32) -> Scale {
            Scale {
                origin,
                speed: speed.max(1),
            }
        }

        /// The engine's instant for a real one. Real instants before the
        /// origin map to the origin; an overflow keeps the real instant.
        pub fn engine_instant(&self, real: Instant) -> Instant {
            let elapsed = real.saturating_duration_since(self.origin);
            elapsed
                .checked_mul(self.speed)
                .and_then(|scaled| self.origin.checked_add(scaled))
                .unwrap_or(real)
        }

        /// The real instant for an engine one (the inverse map). Engine
        /// instants before the origin map to the origin.
        pub fn real_instant(&self, engine: Instant) -> Instant {
            let elapsed = engine.saturating_duration_since(self.origin);
            self.origin + div_ceil(elapsed, self.speed)
        }
    }

    /// `d / k`, rounded up to the nanosecond, so that sleeping until the
    /// real instant never wakes before the engine deadline has passed.
    fn div_ceil(d: Duration, k: u32) -> Duration {
        let nanos = d.as_nanos();
        let k = u128::from(k.max(1));
        let q = nanos.div_ceil(k);
        Duration::new((q / 1_000_000_000) as u64, (q % 1_000_000_000) as u32)
    }

    /// Parses the speed factor: an integer from 1 to [`MAX_SPEED`].
    pub fn parse_speed(value: &str) -> Result<u32, String> {
        match value.trim().parse::<u32>() {
            Ok(k) if (1..=MAX_SPEED).contains(&k) => Ok(k),
            _ => Err(format!(
                "{SPEED_VARIABLE}={value:?} is not an integer from 1 to {MAX_SPEED}"
            )),
        }
    }

    /// The map in force, read once from the environment; `None` (real
    /// time) when the variable is unset, 1 or invalid (an invalid value is
    /// logged as an error).
    #[cfg(feature = "test-clock")]
    pub(super) fn scale() -> Option<Scale> {
        static SCALE: OnceLock<Option<Scale>> = OnceLock::new();
        *SCALE.get_or_init(|| {
            let value = std::env::var(SPEED_VARIABLE).ok()?;
            match parse_speed(&value) {
                Ok(1) => None,
                Ok(speed) => {
                    log::warn!("test clock: engine time runs {speed} times faster than real time");
                    Some(Scale::new(Instant::now(), speed))
                }
                Err(e) => {
                    log::error!("test clock ignored: {e}");
                    None
                }
            }
        })
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn engine_time_runs_speed_times_faster() {
            let origin = Instant::now();
            let scale = Scale::new(origin, 40);
            let real = origin + Duration::from_secs(3);
            assert_eq!(
                scale.engine_instant(real),
                origin + Duration::from_secs(120)
            );
            assert_eq!(scale.engine_instant(origin), origin);
        }

        #[test]
        fn rekey_deadline_falls_three_real_seconds_later_at_speed_40() {
            let origin = Instant::now();
            let scale = Scale::new(origin, 40);
            let engine_now = scale.engine_instant(origin + Duration::from_secs(10));
            let deadline = engine_now + Duration::from_secs(120);
            assert_eq!(
                scale.real_instant(deadline),
                origin + Duration::from_secs(13)
            );
        }

        #[test]
        fn real_instant_inverts_engine_instant() {
            let origin = Instant::now();
            for speed in [1, 2, 7, 40, MAX_SPEED] {
                let scale = Scale::new(origin, speed);
                for nanos in [0u64, 1, 999, 1_000_000_007, 123_456_789_012] {
                    let real = origin + Duration::from_nanos(nanos);
                    assert_eq!(scale.real_instant(scale.engine_instant(real)), real);
                }
            }
        }

        #[test]
        fn real_instant_never_wakes_before_the_engine_deadline() {
            let origin = Instant::now();
            let scale = Scale::new(origin, 40);
            for nanos in [1u64, 39, 41, 1_000_000_001] {
                let deadline = origin + Duration::from_nanos(nanos);
                let wake = scale.real_instant(deadline);
                assert!(scale.engine_instant(wake) >= deadline, "{nanos} ns");
                assert!(wake - origin < Duration::from_nanos(nanos / 40 + 2));
            }
        }

        #[test]
        fn instants_before_the_origin_map_to_it() {
            let origin = Instant::now() + Duration::from_secs(5);
            let scale = Scale::new(origin, 40);
            assert_eq!(scale.engine_instant(Instant::now()), origin);
            assert_eq!(scale.real_instant(Instant::now()), origin);
        }

        #[test]
        fn speed_one_is_the_identity_and_zero_counts_as_one() {
            let origin = Instant::now();
            let real = origin + Duration::from_millis(1234);
            for speed in [0, 1] {
                let scale = Scale::new(origin, speed);
                assert_eq!(scale.engine_instant(real), real);
                assert_eq!(scale.real_instant(real), real);
            }
        }

        #[test]
        fn speed_is_parsed_within_bounds() {
            assert_eq!(parse_speed("40"), Ok(40));
            assert_eq!(parse_speed(" 1\n"), Ok(1));
            assert_eq!(parse_speed("1000"), Ok(MAX_SPEED));
            for bad in ["0", "1001", "-3", "2.5", "", "fast"] {
                let err = parse_speed(bad).unwrap_err();
                assert!(err.contains(SPEED_VARIABLE), "{bad}: {err}");
            }
        }
    }
}
