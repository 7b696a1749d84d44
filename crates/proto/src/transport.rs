//! Transport data: keypairs, nonce counters, padding and in-place AEAD.
//!
//! A [`Keypair`] is the result of one handshake. Sending takes the next
//! counter as the nonce; receiving decrypts first and only then, on success,
//! moves the replay window, so forged packets cannot disturb it.
//!
//! Both directions come in two halves, so that the AEAD can run outside
//! whatever lock guards the keypair (the kernel's split between its serial
//! per-peer stage and its crypto workers):
//!
//! * sending: [`Keypair::reserve`] takes the next counter and returns a
//!   [`SealJob`], which holds a shared handle to the immutable sending key
//!   and seals on its own ([`SealJob::seal`]);
//! * receiving: [`Keypair::precheck_open`] refuses expired keys and counters
//!   already outside the replay window and returns an [`OpenJob`];
//!   [`OpenJob::open`] decrypts; [`Keypair::accept_counter`] then makes the
//!   authoritative replay-window update, which refuses a counter that another
//!   copy of the packet claimed in the meantime.
//!
//! [`Keypair::seal`] and [`Keypair::open`] chain the halves in one call.

use std::sync::Arc;
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
    /// Shared with the [`SealJob`]s in flight; immutable.
    send_key: Arc<AeadKey>,
    /// Shared with the [`OpenJob`]s in flight; immutable.
    receive_key: Arc<AeadKey>,
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
            send_key: Arc::new(AeadKey::new(keys.send.as_bytes())),
            receive_key: Arc::new(AeadKey::new(keys.receive.as_bytes())),
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
    /// transport message and returns its length. A buffer that is too
    /// small costs no counter.
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
        if out.len() < wire_len(packet.len(), mtu) {
            return Err(TransportError::BufferTooSmall);
        }
        self.reserve(now, packet.len(), mtu)?.seal(packet, out)
    }

    /// Takes the next send counter for a packet of `packet_len` bytes and
    /// returns the job that seals it, which needs the keypair no more.
    pub fn reserve(
        &mut self,
        now: Instant,
        packet_len: usize,
        mtu: usize,
    ) -> Result<SealJob, TransportError> {
        if !self.can_send(now) {
            return Err(TransportError::KeypairExpired);
        }
        let counter = self.send_counter;
        self.send_counter += 1;
        Ok(SealJob {
            key: Arc::clone(&self.send_key),
            receiver: self.remote_index,
            counter,
            packet_len,
            mtu,
        })
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
        let job = self.precheck_open(now, counter)?;
        let plain_len = job.open(datagram)?;
        self.accept_counter(now, counter)?;
        Ok(plain_len)
    }

    /// The cheap checks before decrypting a message with `counter`: the key
    /// is not expired and the counter is not already outside the replay
    /// window. Read-only: nothing is recorded until [`Keypair::accept_counter`].
    pub fn precheck_open(&self, now: Instant, counter: u64) -> Result<OpenJob, TransportError> {
        if self.is_expired(now) {
            return Err(TransportError::KeypairExpired);
        }
        if !self.replay.check(counter) {
            return Err(TransportError::Replay);
        }
        Ok(OpenJob {
            key: Arc::clone(&self.receive_key),
            counter,
        })
    }

    /// Records `counter` after its message decrypted: the authoritative
    /// replay check, which also refuses a counter accepted since the
    /// pre-check (two copies of a packet decrypted side by side), and a key
    /// that expired meanwhile.
    pub fn accept_counter(&mut self, now: Instant, counter: u64) -> Result<(), TransportError> {
        if self.is_expired(now) {
            return Err(TransportError::KeypairExpired);
        }
        if !self.replay.update(counter) {
            return Err(TransportError::Replay);
        }
        Ok(())
    }

    /// True if `job` was made by this keypair (and not by an older one that
    /// happened to have the same index).
    pub fn made(&self, job: &OpenJob) -> bool {
        Arc::ptr_eq(&self.receive_key, &job.key)
    }
}

/// One transport message to seal: the sending key, the receiver index and
/// the counter reserved for it. Sealing needs nothing else, so it can run on
/// any thread, outside the lock that guards the keypair.
pub struct SealJob {
    key: Arc<AeadKey>,
    receiver: u32,
    counter: u64,
    packet_len: usize,
    mtu: usize,
}

impl core::fmt::Debug for SealJob {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SealJob")
            .field("receiver", &self.receiver)
            .field("counter", &self.counter)
            .field("packet_len", &self.packet_len)
            .finish_non_exhaustive()
    }
}

impl SealJob {
    /// The counter (nonce) reserved for this message.
    pub fn counter(&self) -> u64 {
        self.counter
    }

    /// The length of the transport message for the packet it was reserved for.
    pub fn wire_len(&self) -> usize {
        wire_len(self.packet_len, self.mtu)
    }

    /// Writes the transport message for `packet` into `out` and returns its
    /// length.
    pub fn seal(&self, packet: &[u8], out: &mut [u8]) -> Result<usize, TransportError> {
        let padded = padded_len(packet.len(), self.mtu);
        let total = TRANSPORT_HEADER_LEN + padded + TAG_LEN;
        if out.len() < total {
            return Err(TransportError::BufferTooSmall);
        }
        let (header, rest) = out.split_at_mut(TRANSPORT_HEADER_LEN);
        let header: &mut [u8; TRANSPORT_HEADER_LEN] =
            header.try_into().expect("split at the header length");
        TransportHeader {
            receiver: self.receiver,
            counter: self.counter,
        }
        .write(header);
        let (body, rest) = rest.split_at_mut(padded);
        body[..packet.len()].copy_from_slice(packet);
        body[packet.len()..].fill(0);
        let tag = self.key.seal(self.counter, &[], body);
        rest[..TAG_LEN].copy_from_slice(&tag);
        Ok(total)
    }
}

/// One received transport message to decrypt: the receiving key and the
/// message's counter, which passed the pre-check. Decrypting needs nothing
/// else, so it can run on any thread.
pub struct OpenJob {
    key: Arc<AeadKey>,
    counter: u64,
}

impl core::fmt::Debug for OpenJob {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("OpenJob")
            .field("counter", &self.counter)
            .finish_non_exhaustive()
    }
}

impl OpenJob {
    /// The message's counter.
    pub fn counter(&self) -> u64 {
        self.counter
    }

    /// Decrypts the whole transport message `datagram` in place; on success
    /// the plaintext (with padding) is `datagram[16..16 + n]`. The replay
    /// window is not touched: that is [`Keypair::accept_counter`]'s job.
    pub fn open(&self, datagram: &mut [u8]) -> Result<usize, TransportError> {
        if datagram.len() < TRANSPORT_MIN_LEN {
            return Err(TransportError::Truncated);
        }
        let body_len = datagram.len() - TRANSPORT_MIN_LEN;
        let (body, tag) = datagram[TRANSPORT_HEADER_LEN..].split_at_mut(body_len);
        let tag: &[u8; TAG_LEN] = (&*tag).try_into().map_err(|_| TransportError::Truncated)?;
        self.key
            .open(self.counter, &[], body, tag)
            .map_err(|_| TransportError::Decryption)?;
        Ok(body_len)
    }
}

/// Length of the transport message that carries `packet_len` bytes.
pub fn wire_len(packet_len: usize, mtu: usize) -> usize {
    TRANSPORT_HEADER_LEN + padded_len(packet_len, mtu) + TAG_LEN
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

    #[test]
    fn split_halves_reserve_counters_and_claim_them_once() {
        let now = Instant::now();
        let (mut a, mut b) = pair(now);
        let jobs: Vec<SealJob> = (0..3).map(|_| a.reserve(now, 5, 1420).unwrap()).collect();
        assert_eq!(a.send_counter(), 3);
        let mut messages: Vec<[u8; 64]> = jobs
            .iter()
            .rev()
            .map(|job| {
                let mut out = [0u8; 64];
                assert_eq!(job.seal(b"hello", &mut out), Ok(job.wire_len()));
                out
            })
            .collect();
        messages.reverse();
        let n = jobs[0].wire_len();
        for (counter, message) in (0u64..).zip(messages.iter_mut()) {
            assert_eq!(message[8..16], counter.to_le_bytes());
            let mut twin = *message;
            let first = b.precheck_open(now, counter).unwrap();
            let second = b.precheck_open(now, counter).unwrap();
            assert!(b.made(&first));
            assert_eq!(first.open(&mut message[..n]), Ok(16));
            assert_eq!(second.open(&mut twin[..n]), Ok(16));
            assert_eq!(b.accept_counter(now, counter), Ok(()));
            assert_eq!(b.accept_counter(now, counter), Err(TransportError::Replay));
            assert_eq!(&message[16..21], b"hello");
        }
        let (_, other) = pair(now);
        assert!(!other.made(&b.precheck_open(now, 9).unwrap()));
    }
}
