//! Protocol constants, with the whitepaper's names (section 6.1).

use std::time::Duration;

/// Initiate a new handshake after this many messages on one keypair (2^60).
pub const REKEY_AFTER_MESSAGES: u64 = 1 << 60;
/// Never use a keypair for more messages than this (2^64 − 2^13 − 1).
pub const REJECT_AFTER_MESSAGES: u64 = u64::MAX - (1 << 13);
/// The initiator starts a new handshake when its keypair is this old.
pub const REKEY_AFTER_TIME: Duration = Duration::from_secs(120);
/// A keypair older than this is never used to send or receive.
pub const REJECT_AFTER_TIME: Duration = Duration::from_secs(180);
/// Give up retrying a handshake after this long.
pub const REKEY_ATTEMPT_TIME: Duration = Duration::from_secs(90);
/// Retry an unanswered handshake after this long (plus jitter).
pub const REKEY_TIMEOUT: Duration = Duration::from_secs(5);
/// Upper bound of the random jitter added to handshake timers (≈ HZ/3).
pub const REKEY_TIMEOUT_JITTER_MAX: Duration = Duration::from_millis(334);
/// Send a keepalive if data was received but nothing sent for this long.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Number of handshake retries before giving up (90 s / 5 s).
pub const MAX_TIMER_HANDSHAKES: u32 = 18;
/// The initiator rekeys on receive when its keypair is this old (165 s).
pub const REKEY_ON_RECEIVE_AGE: Duration = Duration::from_secs(165);
/// All key material is wiped after this long without a new handshake.
pub const ZERO_KEY_MATERIAL_AFTER: Duration = Duration::from_secs(540);
/// The responder's cookie secret is replaced when older than this.
pub const COOKIE_SECRET_MAX_AGE: Duration = Duration::from_secs(120);
/// The initiator stops using a cookie this much before it would expire.
pub const COOKIE_SECRET_LATENCY: Duration = Duration::from_secs(5);
/// Minimum spacing of accepted initiations from one peer (1 s / 50).
pub const MIN_INITIATION_INTERVAL: Duration = Duration::from_millis(20);
/// Packets queued per peer while waiting for a session; the oldest is dropped.
pub const MAX_STAGED_PACKETS: usize = 128;
/// Transport overhead inside the UDP payload: header (16) + tag (16).
pub const TRANSPORT_OVERHEAD: usize = 32;
/// Default MTU of the tunnel interface (1500 − 80).
pub const DEFAULT_MTU: usize = 1420;
