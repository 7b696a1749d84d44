//! Transport data: keypairs, nonce counters, padding and in-place AEAD.
//!
//! A [`Keypair`] is the result of one handshake. Sending takes the next
//! counter as the nonce; receiving decrypts first and only then, on success,
//! moves the replay window, so forged packets cannot disturb it.

use std::time::Instant;

use crate::constants::{REJECT_AFTER_MESSAGES, REJECT_AFTER_TIME};
use crate::crypto::{AeadKey, TAG_LEN};
use crate::messages::{TransportHeader, TRANSPORT_HEADER_LEN, TRANSPORT_MIN_LEN};
use crate::noise::SessionKeys;
use crate::replay::ReplayWindow;

/// Plaintext is padded to a multiple of this many bytes.
pub const PADDING_MULTIPLE: usize = 16;

/// Why a transport message could not be built or opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportError {
    /// The keypair reached REJECT_AFTER_MESSAGES or REJECT_AFTER_TIME.
    KeypairExpired,
    /// The output buffer is too small.
    BufferTooSmall,
    /// The tag did not verify.
    Decryption,
    /// The counter was seen before or is too old.
    Replay,
    /// The datagram is shorter than a keepalive.
    Truncated,
}

impl core::fmt::Display for TransportError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            TransportError::KeypairExpired => "keypair expired",
            TransportError::BufferTooSmall => "buffer too small",
            TransportError::Decryption => "decryption failed",
            TransportError::Replay => "replayed or too old counter",
            TransportError::Truncated => "truncated transport message",
        })
    }
}

impl std::error::Error for TransportError {}

/// The transport keys of one session and their counters.
pub struct Keypair {
    /// Our session index for this keypair (what the peer puts in `receiver`).
    pub local_index: u32,
    /// The peer's session index (what we put in `receiver`).
    pub remote_index: u32,
    /// When the handshake that made it completed.
    pub created: Instant,
    /// True if we initiated the handshake (only the initiator rekeys by age).
    pub is_initiator: bool,
    send_key: AeadKey,
    receive_key: AeadKey,
    send_counter: u64,
    replay: ReplayWindow,
}

impl core::fmt::Debug for Keypair {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Keypair")
            .field("local_index", &self.local_index)
            .field("remote_index", &self.remote_index)
            .field("is_initiator", &self.is_initiator)
            .field("send_counter", &self.send_counter)
            .finish_non_exhaustive()
    }
}

impl Keypair {
    /// A keypair from a completed handshake.
    pub fn new(
        keys: &SessionKeys,
        local_index: u32,
        remote_index: u32,
        created: Instant,
        is_initiator: bool,
    ) -> Self {
        Keypair {
            local_index,
            remote_index,
            created,
            is_initiator,
            send_key: AeadKey::new(keys.send.as_bytes()),
            receive_key: AeadKey::new(keys.receive.as_bytes()),
            send_counter: 0,
            replay: ReplayWindow::new(),
        }
    }

    /// How many messages were sent with this keypair.
    pub fn send_counter(&self) -> u64 {
        self.send_counter
    }

    /// True once the keypair must not be used at all.
    pub fn is_expired(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.created) >= REJECT_AFTER_TIME
    }

    /// Test hook: jump the send counter (e.g. to REKEY_AFTER_MESSAGES).
    #[cfg(test)]
    pub(crate) fn set_send_counter_for_test(&mut self, counter: u64) {
        self.send_counter = counter;
    }

    /// Marks the keypair unusable for sending (after a private key change).
    pub fn retire_for_sending(&mut self) {
        self.send_counter = REJECT_AFTER_MESSAGES;
    }

    /// True if sending is still allowed.
    pub fn can_send(&self, now: Instant) -> bool {
        self.send_counter < REJECT_AFTER_MESSAGES && !self.is_expired(now)
    }

    /// Encrypts `packet` (possibly empty: a keepalive) into `out` as a full
    /// transport message and returns its length.
    pub fn seal(
        &mut self,
        now: Instant,
        packet: &[u8],
        mtu: usize,
        out: &mut [u8],
    ) -> Result<usize, TransportError> {
        if !self.can_send(now) {
            return Err(TransportError::KeypairExpired);
        }
        let padded = padded_len(packet.len(), mtu);
        let total = TRANSPORT_HEADER_LEN + padded + TAG_LEN;
        if out.len() < total {
            return Err(TransportError::BufferTooSmall);
        }
        let counter = self.send_counter;
        self.send_counter += 1;
        let (header, rest) = out.split_at_mut(TRANSPORT_HEADER_LEN);
        let header: &mut [u8; TRANSPORT_HEADER_LEN] =
            header.try_into().expect("split at the header length");
        TransportHeader {
            receiver: self.remote_index,
            counter,
        }
        .write(header);
        let (body, rest) = rest.split_at_mut(padded);
        body[..packet.len()].copy_from_slice(packet);
        body[packet.len()..].fill(0);
        let tag = self.send_key.seal(counter, &[], body);
        rest[..TAG_LEN].copy_from_slice(&tag);
        Ok(total)
    }

    /// Decrypts the transport message `datagram` in place, then checks and
    /// updates the replay window. On success the plaintext (with padding) is
    /// `datagram[16..16 + n]` and `n` is returned.
    pub fn open(
        &mut self,
        now: Instant,
        counter: u64,
        datagram: &mut [u8],
    ) -> Result<usize, TransportError> {
        if datagram.len() < TRANSPORT_MIN_LEN {
            return Err(TransportError::Truncated);
        }
        if self.is_expired(now) {
            return Err(TransportError::KeypairExpired);
        }
        // Cheap read-only pre-check: no need to decrypt what would be refused.
        if !self.replay.check(counter) {
            return Err(TransportError::Replay);
        }
        let body_len = datagram.len() - TRANSPORT_MIN_LEN;
        let (body, tag) = datagram[TRANSPORT_HEADER_LEN..].split_at_mut(body_len);
        let tag: &[u8; TAG_LEN] = (&*tag).try_into().map_err(|_| TransportError::Truncated)?;
        self.receive_key
            .open(counter, &[], body, tag)
            .map_err(|_| TransportError::Decryption)?;
        if !self.replay.update(counter) {
            return Err(TransportError::Replay);
        }
        Ok(body_len)
    }
}

/// Length of `len` bytes of plaintext once padded to 16 without exceeding
/// the MTU (the kernel's rule, including its care for oversized packets).
pub fn padded_len(len: usize, mtu: usize) -> usize {
    if mtu == 0 {
        return len.next_multiple_of(PADDING_MULTIPLE);
    }
    let last_unit = if len > mtu { len % mtu } else { len };
    let padded_unit = mtu.min(last_unit.next_multiple_of(PADDING_MULTIPLE));
    len + padded_unit.saturating_sub(last_unit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::SymmetricKey;

    fn pair(now: Instant) -> (Keypair, Keypair) {
        let a = SessionKeys {
            send: SymmetricKey([1; 32]),
            receive: SymmetricKey([2; 32]),
        };
        let b = SessionKeys {
            send: SymmetricKey([2; 32]),
            receive: SymmetricKey([1; 32]),
        };
        (
            Keypair::new(&a, 10, 20, now, true),
            Keypair::new(&b, 20, 10, now, false),
        )
    }

    #[test]
    fn padding_rule() {
        assert_eq!(padded_len(0, 1420), 0);
        assert_eq!(padded_len(1, 1420), 16);
        assert_eq!(padded_len(84, 1420), 96);
        assert_eq!(padded_len(1419, 1420), 1420);
        assert_eq!(padded_len(1420, 1420), 1420);
        assert_eq!(padded_len(1415, 1418), 1418, "never beyond the MTU");
        assert_eq!(
            padded_len(1500, 1420),
            1500,
            "1500 % 1420 = 80 is already aligned"
        );
        assert_eq!(padded_len(1501, 1420), 1501 + 15);
        assert_eq!(padded_len(5, 0), 16);
    }

    #[test]
    fn seal_open_round_trip_with_padding() {
        let now = Instant::now();
        let (mut a, mut b) = pair(now);
        let mut buf = [0u8; 200];
        let n = a.seal(now, &[7u8; 84], 1420, &mut buf).unwrap();
        assert_eq!(n, 16 + 96 + 16, "84-byte ping → 128 bytes on the wire");
        assert_eq!(&buf[4..8], &20u32.to_le_bytes());
        let plain = b.open(now, 0, &mut buf[..n]).unwrap();
        assert_eq!(plain, 96);
        assert_eq!(&buf[16..100], &[7u8; 84]);
        assert!(buf[100..112].iter().all(|&x| x == 0));
    }

    #[test]
    fn replay_and_tamper_rejected_without_moving_the_window() {
        let now = Instant::now();
        let (mut a, mut b) = pair(now);
        let mut first = [0u8; 64];
        let n = a.seal(now, b"hello", 1420, &mut first).unwrap();
        let mut copy = first;
        b.open(now, 0, &mut first[..n]).unwrap();
        assert_eq!(b.open(now, 0, &mut copy[..n]), Err(TransportError::Replay));
        let mut second = [0u8; 64];
        let n2 = a.seal(now, b"again", 1420, &mut second).unwrap();
        let mut forged = second;
        forged[20] ^= 1;
        assert_eq!(
            b.open(now, 1, &mut forged[..n2]),
            Err(TransportError::Decryption)
        );
        // The forged copy did not burn counter 1.
        assert!(b.open(now, 1, &mut second[..n2]).is_ok());
    }

    #[test]
    fn expiry_by_time_and_by_count() {
        let now = Instant::now();
        let (mut a, mut b) = pair(now);
        let later = now + REJECT_AFTER_TIME;
        let mut buf = [0u8; 64];
        assert_eq!(
            a.seal(later, b"x", 1420, &mut buf),
            Err(TransportError::KeypairExpired)
        );
        let n = a.seal(now, b"x", 1420, &mut buf).unwrap();
        assert_eq!(
            b.open(later, 0, &mut buf[..n]),
            Err(TransportError::KeypairExpired)
        );
        a.retire_for_sending();
        assert_eq!(
            a.seal(now, b"x", 1420, &mut buf),
            Err(TransportError::KeypairExpired)
        );
    }

    #[test]
    fn short_buffers_are_errors_not_panics() {
        let now = Instant::now();
        let (mut a, mut b) = pair(now);
        let mut small = [0u8; 40];
        assert_eq!(
            a.seal(now, &[0; 30], 1420, &mut small),
            Err(TransportError::BufferTooSmall)
        );
        assert_eq!(
            b.open(now, 0, &mut small[..31]),
            Err(TransportError::Truncated)
        );
    }
}
