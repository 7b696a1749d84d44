//! TAI64N timestamps as WireGuard sends them in initiations.
//!
//! Twelve bytes: `0x400000000000000a + unix seconds` (big endian), then the
//! nanoseconds (big endian) rounded down to a multiple of 2^24 ns (≈16.8 ms)
//! so that an initiation does not reveal the sender's precise clock. The
//! kernel and wireguard-go use the `+10` base; only monotonicity per sender
//! matters to the responder, which compares timestamps byte-wise.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Length of a TAI64N label.
pub const TAI64N_LEN: usize = 12;

const TAI64_BASE: u64 = 0x4000_0000_0000_000a;
const WHITENING_MASK: u32 = (1 << 24) - 1;

/// A TAI64N timestamp; ordered as the responder compares them.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, Default)]
pub struct Tai64n(pub [u8; TAI64N_LEN]);

impl Tai64n {
    /// The whitened timestamp of `wall` (times before 1970 count as 1970).
    pub fn from_system_time(wall: SystemTime) -> Self {
        let since = wall.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        Self::from_unix(since)
    }

    /// The whitened timestamp of a duration since the Unix epoch.
    pub fn from_unix(since_epoch: Duration) -> Self {
        let secs = TAI64_BASE.wrapping_add(since_epoch.as_secs());
        let nanos = since_epoch.subsec_nanos() & !WHITENING_MASK;
        let mut out = [0u8; TAI64N_LEN];
        out[..8].copy_from_slice(&secs.to_be_bytes());
        out[8..].copy_from_slice(&nanos.to_be_bytes());
        Tai64n(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_and_whitening() {
        let t = Tai64n::from_unix(Duration::new(1, 0x1234_5678));
        assert_eq!(&t.0[..8], &0x4000_0000_0000_000bu64.to_be_bytes());
        assert_eq!(&t.0[8..], &0x1200_0000u32.to_be_bytes());
    }

    #[test]
    fn monotonic_across_whitening_steps() {
        let a = Tai64n::from_unix(Duration::new(100, 0));
        let b = Tai64n::from_unix(Duration::new(100, 1 << 24));
        let c = Tai64n::from_unix(Duration::new(100, (1 << 24) - 1));
        assert!(a < b);
        assert_eq!(a, c, "times within one 2^24 ns step are indistinguishable");
        assert!(b < Tai64n::from_unix(Duration::new(101, 0)));
    }
}
