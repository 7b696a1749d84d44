//! Why the engine drops a datagram or a packet, and the per-reason counts
//! kept for the device and for each peer (both `device.rs` and `peer.rs`
//! use them, so they live apart from either).

/// Why a datagram or packet was dropped (counted per reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Not a WireGuard message.
    Malformed,
    /// No session or handshake with that receiver index.
    UnknownIndex,
    /// mac1 did not verify.
    BadMac1,
    /// Under load without a valid cookie: a cookie reply was sent instead.
    CookieRequired,
    /// Under load, valid cookie, but the source exceeded its handshake rate.
    RateLimited,
    /// The handshake failed to authenticate or used a low-order key.
    HandshakeFailed,
    /// The initiation's static key is not one of our peers.
    UnknownPeer,
    /// The initiation's timestamp is not newer than the last one accepted.
    TimestampReplay,
    /// An initiation arrived less than 20 ms after the previous one.
    InitiationFlood,
    /// We have no private key.
    NoPrivateKey,
    /// A transport counter was replayed or too old.
    Replay,
    /// A transport message did not authenticate.
    Decryption,
    /// The keypair is too old or used up.
    KeypairExpired,
    /// The decrypted packet is not a valid IPv4/IPv6 packet.
    InvalidInnerPacket,
    /// The inner source address is not in this peer's allowed IPs.
    SourceNotAllowed,
    /// A cookie reply that we did not ask for or that did not decrypt.
    BadCookieReply,
}

impl DropReason {
    /// Every reason, for counters and metrics.
    pub const ALL: [DropReason; 16] = [
        DropReason::Malformed,
        DropReason::UnknownIndex,
        DropReason::BadMac1,
        DropReason::CookieRequired,
        DropReason::RateLimited,
        DropReason::HandshakeFailed,
        DropReason::UnknownPeer,
        DropReason::TimestampReplay,
        DropReason::InitiationFlood,
        DropReason::NoPrivateKey,
        DropReason::Replay,
        DropReason::Decryption,
        DropReason::KeypairExpired,
        DropReason::InvalidInnerPacket,
        DropReason::SourceNotAllowed,
        DropReason::BadCookieReply,
    ];

    /// A short snake_case name.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::UnknownIndex => "unknown_index",
            DropReason::BadMac1 => "bad_mac1",
            DropReason::CookieRequired => "cookie_required",
            DropReason::RateLimited => "rate_limited",
            DropReason::HandshakeFailed => "handshake_failed",
            DropReason::UnknownPeer => "unknown_peer",
            DropReason::TimestampReplay => "timestamp_replay",
            DropReason::InitiationFlood => "initiation_flood",
            DropReason::NoPrivateKey => "no_private_key",
            DropReason::Replay => "replay",
            DropReason::Decryption => "decryption",
            DropReason::KeypairExpired => "keypair_expired",
            DropReason::InvalidInnerPacket => "invalid_inner_packet",
            DropReason::SourceNotAllowed => "source_not_allowed",
            DropReason::BadCookieReply => "bad_cookie_reply",
        }
    }

    /// Its index in [`ALL`](Self::ALL) and in a count array.
    pub(crate) fn slot(self) -> usize {
        self as usize
    }
}

/// Drop counts, one per [`DropReason`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropCounts([u64; DropReason::ALL.len()]);

impl DropCounts {
    /// Counts one drop for `reason`.
    pub fn add(&mut self, reason: DropReason) {
        self.0[reason.slot()] += 1;
    }

    /// How many drops were counted for `reason`.
    pub fn get(&self, reason: DropReason) -> u64 {
        self.0[reason.slot()]
    }
}
