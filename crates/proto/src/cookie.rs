//! mac1, mac2 and cookie replies: WireGuard's defence against handshake
//! floods (whitepaper §5.4.4 and §5.4.7).
//!
//! Every handshake message (initiation, 148 bytes; response, 92 bytes) ends
//! with two 16-byte MACs:
//!
//! ```text
//! | body ........................ | mac1 (16) | mac2 (16) |
//!   mac1 covers msg[..len-32]       mac2 covers msg[..len-16]
//! ```
//!
//! * `mac1 = MAC(HASH("mac1----" || receiver's static public key), body)`.
//!   Anyone who knows the receiver's public key can compute it, so it only
//!   proves that the sender knows whom it is talking to; the receiver checks
//!   it before doing any Diffie-Hellman work.
//! * `mac2 = MAC(cookie, body || mac1)` when the sender holds a fresh cookie
//!   from the receiver, otherwise 16 zero bytes. A valid mac2 proves that the
//!   sender can receive packets at its claimed source address and port.
//!
//! A responder under load answers a handshake message without a valid mac2
//! with a cookie reply (64 bytes):
//!
//! ```text
//! | 3,0,0,0 | receiver index (u32 LE) | nonce (24) | encrypted cookie (16 + 16 tag) |
//! ```
//!
//! The cookie is `MAC(secret, source address bytes || source port)`, where
//! the secret is 32 random bytes replaced once older than
//! [`COOKIE_SECRET_MAX_AGE`]. It is sealed with XChaCha20-Poly1305 under
//! `HASH("cookie--" || responder's static public key)` with the mac1 of the
//! message it answers as associated data, so only the peer that sent that
//! message can use the reply, and an old reply cannot be replayed.
//!
//! The responder side is [`CookieChecker`] (one per device); the initiator
//! side is [`CookieGenerator`] (one per peer). Both work on raw message bytes
//! and never panic, whatever their length or content.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use blake2::digest::consts::U16;
use blake2::digest::{KeyInit, Mac};
use blake2::Blake2sMac;
use rand_core::CryptoRng;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::constants::{COOKIE_SECRET_LATENCY, COOKIE_SECRET_MAX_AGE};
use crate::crypto::{
    ct_eq, hash, mac, xaead_open, xaead_seal, PublicKey, KEY_LEN, MAC_LEN, TAG_LEN, XNONCE_LEN,
};

/// Length of a cookie reply message.
pub const COOKIE_REPLY_LEN: usize = 64;
/// The message type of a cookie reply.
pub const COOKIE_REPLY_TYPE: u32 = 3;
/// Length of the two MACs (mac1 then mac2) at the end of a handshake message.
pub const MACS_LEN: usize = 2 * MAC_LEN;

const LABEL_MAC1: &[u8; 8] = b"mac1----";
const LABEL_COOKIE: &[u8; 8] = b"cookie--";

const REPLY_INDEX_AT: usize = 4;
const REPLY_NONCE_AT: usize = 8;
const REPLY_COOKIE_AT: usize = REPLY_NONCE_AT + XNONCE_LEN;

/// Why a cookie reply was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CookieError {
    /// We have no outstanding mac1: nothing was sent since the last accepted
    /// reply, so the reply is unsolicited or a replay.
    NoMac1Sent,
    /// The encrypted cookie did not authenticate (wrong key, wrong mac1 as
    /// associated data, or tampering).
    Decryption,
    /// The first four bytes are not the cookie reply type (3, 0, 0, 0).
    NotACookieReply,
}

impl core::fmt::Display for CookieError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            CookieError::NoMac1Sent => "cookie reply without an outstanding mac1",
            CookieError::Decryption => "cookie reply did not decrypt",
            CookieError::NotACookieReply => "not a cookie reply message",
        })
    }
}

impl std::error::Error for CookieError {}

/// The positions of the MACs in a handshake message of `len` bytes:
/// `(start of mac1, start of mac2)`, or `None` if it cannot hold them.
fn mac_offsets(len: usize) -> Option<(usize, usize)> {
    let mac1_at = len.checked_sub(MACS_LEN)?;
    Some((mac1_at, mac1_at + MAC_LEN))
}

/// The mac1 field of `msg`, if `msg` is long enough to have one.
fn mac1_field(msg: &[u8]) -> Option<&[u8]> {
    let (mac1_at, mac2_at) = mac_offsets(msg.len())?;
    msg.get(mac1_at..mac2_at)
}

/// `HASH(label || public key)`: the mac1 key and the cookie key.
fn derive_key(label: &[u8; 8], public: &PublicKey) -> [u8; KEY_LEN] {
    hash(&[label, public.as_bytes()])
}

/// MAC keyed by a 16-byte cookie. BLAKE2s mixes the key length into its
/// parameter block, so a 16-byte key is not the same as that key padded to
/// 32 bytes: [`crate::crypto::mac`] (32-byte keys) cannot be used here.
fn mac_keyed_by_cookie(cookie: &[u8; MAC_LEN], data: &[u8]) -> [u8; MAC_LEN] {
    let mut m = <Blake2sMac<U16> as KeyInit>::new_from_slice(cookie)
        .expect("a 16-byte BLAKE2s key is valid");
    m.update(data);
    m.finalize().into_bytes().into()
}

/// Computes mac1 of `msg` (whose mac1 starts at `mac1_at`).
fn compute_mac1(mac1_key: &[u8; KEY_LEN], msg: &[u8], mac1_at: usize) -> [u8; MAC_LEN] {
    mac(mac1_key, &[msg.get(..mac1_at).unwrap_or_default()])
}

/// Computes mac2 of `msg` (whose mac2 starts at `mac2_at`).
fn compute_mac2(cookie: &[u8; MAC_LEN], msg: &[u8], mac2_at: usize) -> [u8; MAC_LEN] {
    mac_keyed_by_cookie(cookie, msg.get(..mac2_at).unwrap_or_default())
}

/// The keys a responder derives from its own static public key.
#[derive(Zeroize, ZeroizeOnDrop)]
struct ResponderKeys {
    mac1_key: [u8; KEY_LEN],
    cookie_key: [u8; KEY_LEN],
}

impl ResponderKeys {
    fn new(our_public: &PublicKey) -> Self {
        ResponderKeys {
            mac1_key: derive_key(LABEL_MAC1, our_public),
            cookie_key: derive_key(LABEL_COOKIE, our_public),
        }
    }
}

/// The responder's random cookie secret and when it was drawn.
#[derive(Zeroize, ZeroizeOnDrop)]
struct CookieSecret {
    bytes: [u8; KEY_LEN],
    #[zeroize(skip)]
    born: Instant,
}

impl CookieSecret {
    fn generate(now: Instant, rng: &mut impl CryptoRng) -> Self {
        let mut bytes = [0u8; KEY_LEN];
        rng.fill_bytes(&mut bytes);
        CookieSecret { bytes, born: now }
    }

    /// Expired once `COOKIE_SECRET_MAX_AGE` has passed (as the kernel's
    /// `wg_birthdate_has_expired`). An earlier `now` counts as age zero.
    fn has_expired(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.born) >= COOKIE_SECRET_MAX_AGE
    }
}

/// Responder side, one per device: validates mac1/mac2 of handshake messages
/// sent to us and issues cookie replies.
#[derive(Default, Zeroize, ZeroizeOnDrop)]
pub struct CookieChecker {
    /// `None` while the device has no private key.
    keys: Option<ResponderKeys>,
    /// Drawn on first use and replaced on use once expired (no timer).
    secret: Option<CookieSecret>,
}

impl CookieChecker {
    /// A checker for a device whose static public key is `our_public`
    /// (`None` until the device has a private key; every check then fails).
    pub fn new(our_public: Option<&PublicKey>) -> Self {
        CookieChecker {
            keys: our_public.map(ResponderKeys::new),
            secret: None,
        }
    }

    /// Recomputes the mac1 and cookie keys after the device's key changed.
    /// The cookie secret is kept: it does not depend on the key.
    pub fn set_public_key(&mut self, our_public: Option<&PublicKey>) {
        self.keys = our_public.map(ResponderKeys::new);
    }

    /// True if `msg` carries a valid mac1 for our public key. Constant time
    /// in the MAC comparison; false for messages shorter than 32 bytes or
    /// while we have no key.
    pub fn check_mac1(&self, msg: &[u8]) -> bool {
        let (Some(keys), Some((mac1_at, mac2_at))) = (&self.keys, mac_offsets(msg.len())) else {
            return false;
        };
        let expected = compute_mac1(&keys.mac1_key, msg, mac1_at);
        let received = msg.get(mac1_at..mac2_at).unwrap_or_default();
        ct_eq(&expected, received)
    }

    /// True if `msg` carries a valid mac2 for a cookie we would give to
    /// `src` now. Check mac1 first: this does not. May draw a new secret
    /// (hence `rng` and `&mut self`), after which older cookies are invalid.
    pub fn check_mac2(
        &mut self,
        now: Instant,
        rng: &mut impl CryptoRng,
        msg: &[u8],
        src: SocketAddr,
    ) -> bool {
        let Some((_, mac2_at)) = mac_offsets(msg.len()) else {
            return false;
        };
        let cookie = self.make_cookie(now, rng, src);
        let expected = compute_mac2(&cookie, msg, mac2_at);
        let received = msg.get(mac2_at..).unwrap_or_default();
        ct_eq(&expected, received)
    }

    /// Builds the cookie reply to handshake message `msg`, received from
    /// `src` with sender index `sender_index` (which becomes the reply's
    /// receiver index). `None` if we have no key or `msg` is shorter than 32
    /// bytes. Does not check mac1: the caller does that first.
    pub fn create_reply(
        &mut self,
        now: Instant,
        rng: &mut impl CryptoRng,
        msg: &[u8],
        sender_index: u32,
        src: SocketAddr,
    ) -> Option<[u8; COOKIE_REPLY_LEN]> {
        self.keys.as_ref()?;
        let their_mac1 = mac1_field(msg)?;
        let cookie = self.make_cookie(now, rng, src);
        let mut nonce = [0u8; XNONCE_LEN];
        rng.fill_bytes(&mut nonce);
        let keys = self.keys.as_ref()?;
        let sealed = xaead_seal(&keys.cookie_key, &nonce, &cookie, their_mac1);

        let mut reply = [0u8; COOKIE_REPLY_LEN];
        reply[..REPLY_INDEX_AT].copy_from_slice(&COOKIE_REPLY_TYPE.to_le_bytes());
        reply[REPLY_INDEX_AT..REPLY_NONCE_AT].copy_from_slice(&sender_index.to_le_bytes());
        reply[REPLY_NONCE_AT..REPLY_COOKIE_AT].copy_from_slice(&nonce);
        reply[REPLY_COOKIE_AT..].copy_from_slice(&sealed);
        Some(reply)
    }

    /// The current secret, replaced first if missing or expired.
    fn current_secret(&mut self, now: Instant, rng: &mut impl CryptoRng) -> &[u8; KEY_LEN] {
        let secret = match self.secret.take() {
            Some(secret) if !secret.has_expired(now) => secret,
            _ => CookieSecret::generate(now, rng),
        };
        &self.secret.insert(secret).bytes
    }

    /// `MAC(secret, address bytes || port)`, as the kernel's `make_cookie`:
    /// the source address as it appears in the IP header (4 bytes for IPv4,
    /// 16 for IPv6), then the UDP source port as it appears in the UDP
    /// header (big-endian). An IPv4-mapped IPv6 address counts as the IPv4
    /// address, so a peer gets the same cookie whether the daemon receives
    /// on a dual-stack or an IPv4 socket. Scope id and flow label are not
    /// part of the address on the wire and are ignored.
    fn make_cookie(
        &mut self,
        now: Instant,
        rng: &mut impl CryptoRng,
        src: SocketAddr,
    ) -> Zeroizing<[u8; MAC_LEN]> {
        let port = src.port().to_be_bytes();
        let secret = self.current_secret(now, rng);
        Zeroizing::new(match src.ip().to_canonical() {
            IpAddr::V4(ip) => mac(secret, &[&ip.octets(), &port]),
            IpAddr::V6(ip) => mac(secret, &[&ip.octets(), &port]),
        })
    }
}

impl core::fmt::Debug for CookieChecker {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("CookieChecker")
            .field("has_key", &self.keys.is_some())
            .field("has_secret", &self.secret.is_some())
            .finish_non_exhaustive()
    }
}

/// A cookie received from the peer and when it arrived.
#[derive(Zeroize, ZeroizeOnDrop)]
struct ReceivedCookie {
    bytes: [u8; MAC_LEN],
    #[zeroize(skip)]
    received: Instant,
}

impl ReceivedCookie {
    /// Usable while younger than `COOKIE_SECRET_MAX_AGE − COOKIE_SECRET_LATENCY`
    /// (115 s): the responder may replace its secret at 120 s, and the
    /// margin covers the message's time in flight (kernel behaviour;
    /// wireguard-go uses the full 120 s).
    fn is_fresh(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.received) < COOKIE_SECRET_MAX_AGE - COOKIE_SECRET_LATENCY
    }
}

/// Initiator side, one per peer: adds the MACs to the handshake messages we
/// send to that peer and consumes the cookie replies it sends us.
///
/// Its two keys are derived from the peer's public key when first needed
/// (two BLAKE2s each): most peers of a large device never handshake, and
/// deriving them when the peer was configured took 7 % of loading 2^20
/// peers.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct CookieGenerator {
    peer_public: [u8; KEY_LEN],
    keys: Option<PeerKeys>,
    /// The mac1 of our last handshake message, while no reply to it has been
    /// accepted: the associated data a genuine reply must carry.
    last_mac1_sent: Option<[u8; MAC_LEN]>,
    cookie: Option<ReceivedCookie>,
}

/// The keys derived from the peer's public key.
#[derive(Zeroize)]
struct PeerKeys {
    mac1_key: [u8; KEY_LEN],
    cookie_key: [u8; KEY_LEN],
}

impl CookieGenerator {
    /// A generator for messages sent to the peer with static key `peer_public`.
    pub fn new(peer_public: &PublicKey) -> Self {
        CookieGenerator {
            peer_public: peer_public.0,
            keys: None,
            last_mac1_sent: None,
            cookie: None,
        }
    }

    /// The derived keys, computed on first use.
    fn keys(&mut self) -> &PeerKeys {
        let public = PublicKey(self.peer_public);
        self.keys.get_or_insert_with(|| PeerKeys {
            mac1_key: derive_key(LABEL_MAC1, &public),
            cookie_key: derive_key(LABEL_COOKIE, &public),
        })
    }

    /// Writes mac1 and mac2 into the last 32 bytes of the handshake message
    /// `msg`. mac2 is computed with the peer's cookie if we hold one younger
    /// than 115 s, otherwise it is 16 zero bytes. Remembers the mac1 so that
    /// a cookie reply to this message can be accepted. Does nothing to a
    /// message shorter than 32 bytes.
    pub fn add_macs(&mut self, now: Instant, msg: &mut [u8]) {
        let Some((mac1_at, mac2_at)) = mac_offsets(msg.len()) else {
            return;
        };
        let mac1 = compute_mac1(&self.keys().mac1_key, msg, mac1_at);
        msg[mac1_at..mac2_at].copy_from_slice(&mac1);
        self.last_mac1_sent = Some(mac1);

        let mac2 = match &self.cookie {
            Some(cookie) if cookie.is_fresh(now) => compute_mac2(&cookie.bytes, msg, mac2_at),
            _ => [0u8; MAC_LEN],
        };
        msg[mac2_at..].copy_from_slice(&mac2);
    }

    /// Accepts a cookie reply from the peer (the caller has matched its
    /// receiver index to this peer). It must answer our last handshake
    /// message: it is decrypted with that message's mac1 as associated data,
    /// and at most one reply is accepted per message sent. On success the
    /// cookie is stored with `now` as its birth time. A failed reply changes
    /// nothing, so a forged one cannot block the genuine one.
    pub fn consume_reply(
        &mut self,
        now: Instant,
        reply: &[u8; COOKIE_REPLY_LEN],
    ) -> Result<(), CookieError> {
        if reply[..REPLY_INDEX_AT] != COOKIE_REPLY_TYPE.to_le_bytes() {
            return Err(CookieError::NotACookieReply);
        }
        let Some(last_mac1) = self.last_mac1_sent else {
            return Err(CookieError::NoMac1Sent);
        };
        let mut nonce = [0u8; XNONCE_LEN];
        nonce.copy_from_slice(&reply[REPLY_NONCE_AT..REPLY_COOKIE_AT]);
        let mut sealed = [0u8; MAC_LEN + TAG_LEN];
        sealed.copy_from_slice(&reply[REPLY_COOKIE_AT..]);

        let cookie = xaead_open(&self.keys().cookie_key, &nonce, &sealed, &last_mac1)
            .map_err(|_| CookieError::Decryption)?;
        self.cookie = Some(ReceivedCookie {
            bytes: cookie,
            received: now,
        });
        self.last_mac1_sent = None;
        Ok(())
    }
}

impl core::fmt::Debug for CookieGenerator {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("CookieGenerator")
            .field("awaiting_reply", &self.last_mac1_sent.is_some())
            .field("has_cookie", &self.cookie.is_some())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::SecretKey;
    use proptest::prelude::*;
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha20Rng;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::time::Duration;

    const INITIATION_LEN: usize = 148;
    const RESPONSE_LEN: usize = 92;

    fn rng() -> ChaCha20Rng {
        ChaCha20Rng::seed_from_u64(0x5eed)
    }

    fn responder_public() -> PublicKey {
        SecretKey::from_bytes([0x42; 32]).public_key()
    }

    /// A message of `len` bytes with a recognisable body and empty MACs.
    fn message(len: usize, seed: u8) -> Vec<u8> {
        let mut msg: Vec<u8> = (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect();
        let mac1_at = len - MACS_LEN;
        msg[mac1_at..].fill(0);
        msg
    }

    fn src_v4() -> SocketAddr {
        SocketAddr::new(Ipv4Addr::new(192, 168, 13, 37).into(), 51820)
    }

    struct Pair {
        checker: CookieChecker,
        generator: CookieGenerator,
        rng: ChaCha20Rng,
        t0: Instant,
    }

    fn pair() -> Pair {
        let public = responder_public();
        Pair {
            checker: CookieChecker::new(Some(&public)),
            generator: CookieGenerator::new(&public),
            rng: rng(),
            t0: Instant::now(),
        }
    }

    impl Pair {
        /// Sends `msg` at `at`, has the responder answer it with a cookie for
        /// `src`, and has the generator consume the answer.
        fn obtain_cookie(&mut self, at: Instant, src: SocketAddr) {
            let mut msg = message(INITIATION_LEN, 9);
            self.generator.add_macs(at, &mut msg);
            let reply = self
                .checker
                .create_reply(at, &mut self.rng, &msg, 77, src)
                .expect("responder has a key");
            self.generator
                .consume_reply(at, &reply)
                .expect("genuine reply");
        }

        /// A fresh message with MACs added at `at`.
        fn macced(&mut self, at: Instant, len: usize) -> Vec<u8> {
            let mut msg = message(len, 1);
            self.generator.add_macs(at, &mut msg);
            msg
        }

        fn mac2_ok(&mut self, at: Instant, msg: &[u8], src: SocketAddr) -> bool {
            self.checker.check_mac2(at, &mut self.rng, msg, src)
        }
    }

    #[test]
    fn mac1_accepts_what_add_macs_writes_and_rejects_every_bit_flip() {
        let mut p = pair();
        for len in [INITIATION_LEN, RESPONSE_LEN] {
            let msg = p.macced(p.t0, len);
            assert!(p.checker.check_mac1(&msg));
            // mac2 is not covered by mac1: flipping it must not matter.
            for bit in 0..(len - MAC_LEN) * 8 {
                let mut bad = msg.clone();
                bad[bit / 8] ^= 1 << (bit % 8);
                assert!(!p.checker.check_mac1(&bad), "len {len}, bit {bit}");
            }
            let mut mac2_flipped = msg.clone();
            mac2_flipped[len - 1] ^= 1;
            assert!(p.checker.check_mac1(&mac2_flipped));
        }
    }

    #[test]
    fn mac1_fails_for_another_key_no_key_and_short_messages() {
        let mut p = pair();
        let msg = p.macced(p.t0, INITIATION_LEN);
        let other = SecretKey::from_bytes([7; 32]).public_key();
        assert!(!CookieChecker::new(Some(&other)).check_mac1(&msg));
        assert!(!CookieChecker::new(None).check_mac1(&msg));

        let mut checker = CookieChecker::new(None);
        checker.set_public_key(Some(&responder_public()));
        assert!(checker.check_mac1(&msg));
        checker.set_public_key(None);
        assert!(!checker.check_mac1(&msg));

        for len in 0..MACS_LEN {
            assert!(!p.checker.check_mac1(&msg[..len]));
        }
    }

    #[test]
    fn without_a_cookie_mac2_is_zero_and_invalid() {
        let mut p = pair();
        let msg = p.macced(p.t0, INITIATION_LEN);
        assert_eq!(&msg[INITIATION_LEN - MAC_LEN..], &[0u8; MAC_LEN]);
        assert!(!p.mac2_ok(p.t0, &msg, src_v4()));
    }

    #[test]
    fn round_trip_then_mac2_is_accepted() {
        let mut p = pair();
        let src = src_v4();
        let t0 = p.t0;
        let mut initiation = message(INITIATION_LEN, 3);
        p.generator.add_macs(t0, &mut initiation);
        assert!(p.checker.check_mac1(&initiation));
        assert!(!p.mac2_ok(t0, &initiation, src));

        let reply = p
            .checker
            .create_reply(t0, &mut p.rng, &initiation, 0xdead_beef, src)
            .unwrap();
        assert_eq!(&reply[..4], &[3, 0, 0, 0]);
        assert_eq!(&reply[4..8], &0xdead_beef_u32.to_le_bytes());
        p.generator.consume_reply(t0, &reply).unwrap();

        for len in [INITIATION_LEN, RESPONSE_LEN] {
            let next = p.macced(t0 + Duration::from_secs(1), len);
            assert_ne!(&next[len - MAC_LEN..], &[0u8; MAC_LEN]);
            assert!(p.checker.check_mac1(&next));
            assert!(p.mac2_ok(t0 + Duration::from_secs(1), &next, src));
            // Tampering with the body breaks mac2 as well.
            let mut bad = next.clone();
            bad[5] ^= 0x20;
            assert!(!p.mac2_ok(t0 + Duration::from_secs(1), &bad, src));
        }
    }

    #[test]
    fn mac2_is_bound_to_source_address_and_port() {
        for src in [
            src_v4(),
            SocketAddr::new(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1).into(), 4000),
        ] {
            let mut p = pair();
            let t = p.t0;
            p.obtain_cookie(t, src);
            let msg = p.macced(t, INITIATION_LEN);
            assert!(p.mac2_ok(t, &msg, src));

            let other_port = SocketAddr::new(src.ip(), src.port() + 1);
            assert!(!p.mac2_ok(t, &msg, other_port));
            let other_ip = match src.ip() {
                IpAddr::V4(ip) => IpAddr::V4(Ipv4Addr::from(u32::from(ip) + 1)),
                IpAddr::V6(ip) => IpAddr::V6(Ipv6Addr::from(u128::from(ip) + 1)),
            };
            assert!(!p.mac2_ok(t, &msg, SocketAddr::new(other_ip, src.port())));
            // Port swapped into the other byte order must not collide.
            let swapped = SocketAddr::new(src.ip(), src.port().swap_bytes());
            assert!(!p.mac2_ok(t, &msg, swapped));
        }
    }

    #[test]
    fn ipv4_mapped_source_gets_the_ipv4_cookie() {
        let mut p = pair();
        let t = p.t0;
        let v4 = src_v4();
        let IpAddr::V4(ip) = v4.ip() else {
            unreachable!()
        };
        let mapped = SocketAddr::new(ip.to_ipv6_mapped().into(), v4.port());
        p.obtain_cookie(t, v4);
        let msg = p.macced(t, INITIATION_LEN);
        assert!(p.mac2_ok(t, &msg, mapped));
    }

    #[test]
    fn cookie_hashes_address_then_big_endian_port() {
        let mut p = pair();
        let t = p.t0;
        let src = SocketAddr::new(Ipv4Addr::new(10, 1, 2, 3).into(), 0x1234);
        let cookie = p.checker.make_cookie(t, &mut p.rng, src);
        let secret = p.checker.secret.as_ref().unwrap().bytes;
        let expected = mac(&secret, &[&[10, 1, 2, 3, 0x12, 0x34]]);
        assert_eq!(*cookie, expected);
    }

    #[test]
    fn mac2_is_invalid_after_the_secret_rotates() {
        let mut p = pair();
        let src = src_v4();
        let t0 = p.t0;
        p.obtain_cookie(t0, src);
        let msg = p.macced(t0 + Duration::from_secs(1), INITIATION_LEN);
        assert!(p.mac2_ok(t0 + Duration::from_secs(119), &msg, src));
        assert!(!p.mac2_ok(t0 + Duration::from_secs(121), &msg, src));
        // The secret is not rotated back: still invalid.
        assert!(!p.mac2_ok(t0 + Duration::from_secs(122), &msg, src));
    }

    #[test]
    fn secret_is_replaced_only_when_older_than_max_age() {
        let mut p = pair();
        let t0 = p.t0;
        let first = *p.checker.current_secret(t0, &mut p.rng);
        let later = *p.checker.current_secret(
            t0 + COOKIE_SECRET_MAX_AGE - Duration::from_millis(1),
            &mut p.rng,
        );
        assert_eq!(first, later);
        let rotated = *p
            .checker
            .current_secret(t0 + COOKIE_SECRET_MAX_AGE, &mut p.rng);
        assert_ne!(first, rotated);
    }

    #[test]
    fn generator_stops_using_a_cookie_at_115_seconds() {
        let mut p = pair();
        let src = src_v4();
        let t0 = p.t0;
        p.obtain_cookie(t0, src);
        let limit = COOKIE_SECRET_MAX_AGE - COOKIE_SECRET_LATENCY;
        assert_eq!(limit, Duration::from_secs(115));

        let young = p.macced(t0 + limit - Duration::from_millis(1), INITIATION_LEN);
        assert_ne!(&young[INITIATION_LEN - MAC_LEN..], &[0u8; MAC_LEN]);
        assert!(p.mac2_ok(t0 + limit, &young, src));

        let old = p.macced(t0 + limit, INITIATION_LEN);
        assert_eq!(&old[INITIATION_LEN - MAC_LEN..], &[0u8; MAC_LEN]);
        assert!(!p.mac2_ok(t0 + limit, &old, src));
    }

    #[test]
    fn consume_reply_rejects_a_wrong_ad() {
        let mut p = pair();
        let t = p.t0;
        let sent = p.macced(t, INITIATION_LEN);
        // A reply made for a different message (different mac1 = AD).
        let mut other = message(INITIATION_LEN, 0x77);
        CookieGenerator::new(&responder_public()).add_macs(t, &mut other);
        assert_ne!(mac1_field(&sent), mac1_field(&other));
        let reply = p
            .checker
            .create_reply(t, &mut p.rng, &other, 1, src_v4())
            .unwrap();
        assert_eq!(
            p.generator.consume_reply(t, &reply),
            Err(CookieError::Decryption)
        );
        // The failure left the outstanding mac1 in place: the genuine reply works.
        let genuine = p
            .checker
            .create_reply(t, &mut p.rng, &sent, 1, src_v4())
            .unwrap();
        assert_eq!(p.generator.consume_reply(t, &genuine), Ok(()));
    }

    #[test]
    fn consume_reply_rejects_tampering_and_wrong_type() {
        let mut p = pair();
        let t = p.t0;
        let sent = p.macced(t, RESPONSE_LEN);
        let reply = p
            .checker
            .create_reply(t, &mut p.rng, &sent, 1, src_v4())
            .unwrap();
        for byte in REPLY_NONCE_AT..COOKIE_REPLY_LEN {
            let mut bad = reply;
            bad[byte] ^= 0x01;
            assert_eq!(
                p.generator.consume_reply(t, &bad),
                Err(CookieError::Decryption)
            );
        }
        let mut wrong_type = reply;
        wrong_type[0] = 2;
        assert_eq!(
            p.generator.consume_reply(t, &wrong_type),
            Err(CookieError::NotACookieReply)
        );
        assert_eq!(p.generator.consume_reply(t, &reply), Ok(()));
    }

    #[test]
    fn consume_reply_needs_a_sent_mac1_and_accepts_one_reply_per_mac1() {
        let mut p = pair();
        let t = p.t0;
        let msg = message(INITIATION_LEN, 5);
        let reply = p
            .checker
            .create_reply(t, &mut p.rng, &msg, 1, src_v4())
            .unwrap();
        assert_eq!(
            p.generator.consume_reply(t, &reply),
            Err(CookieError::NoMac1Sent)
        );

        let sent = p.macced(t, INITIATION_LEN);
        let reply = p
            .checker
            .create_reply(t, &mut p.rng, &sent, 1, src_v4())
            .unwrap();
        assert_eq!(p.generator.consume_reply(t, &reply), Ok(()));
        assert_eq!(
            p.generator.consume_reply(t, &reply),
            Err(CookieError::NoMac1Sent)
        );
    }

    #[test]
    fn create_reply_needs_a_key_and_a_long_enough_message() {
        let mut rng = rng();
        let t = Instant::now();
        let msg = message(INITIATION_LEN, 0);
        let mut keyless = CookieChecker::new(None);
        assert!(keyless
            .create_reply(t, &mut rng, &msg, 1, src_v4())
            .is_none());
        let mut p = pair();
        for len in 0..MACS_LEN {
            assert!(p
                .checker
                .create_reply(t, &mut p.rng, &msg[..len], 1, src_v4())
                .is_none());
        }
        assert!(p
            .checker
            .create_reply(t, &mut p.rng, &msg[..MACS_LEN], 1, src_v4())
            .is_some());
    }

    #[test]
    fn reply_nonces_are_random() {
        let mut p = pair();
        let t = p.t0;
        let sent = p.macced(t, INITIATION_LEN);
        let a = p
            .checker
            .create_reply(t, &mut p.rng, &sent, 1, src_v4())
            .unwrap();
        let b = p
            .checker
            .create_reply(t, &mut p.rng, &sent, 1, src_v4())
            .unwrap();
        assert_ne!(
            a[REPLY_NONCE_AT..REPLY_COOKIE_AT],
            b[REPLY_NONCE_AT..REPLY_COOKIE_AT]
        );
    }

    #[test]
    fn debug_shows_no_secrets() {
        let mut p = pair();
        let t = p.t0;
        p.obtain_cookie(t, src_v4());
        let text = format!("{:?} {:?}", p.checker, p.generator);
        assert!(text.contains("has_key: true"), "{text}");
        assert!(text.contains("has_cookie: true"), "{text}");
        // Booleans only: no byte of any key, secret or cookie.
        assert!(!text.chars().any(|c| c.is_ascii_digit()), "{text}");
    }

    /// Keyed BLAKE2s-128 computed with the `blake2` crate directly, not
    /// through `crypto::mac`, for a known-answer comparison.
    fn blake2s_128(key: &[u8], data: &[u8]) -> [u8; 16] {
        let mut m = Blake2sMac::<U16>::new_with_salt_and_personal(Some(key), &[], &[]).unwrap();
        m.update(data);
        m.finalize().into_bytes().into()
    }

    fn blake2s_256(parts: &[&[u8]]) -> [u8; 32] {
        use blake2::digest::Digest;
        let mut h = blake2::Blake2s256::new();
        for part in parts {
            Digest::update(&mut h, part);
        }
        h.finalize().into()
    }

    #[test]
    fn mac1_and_mac2_known_answers() {
        let public = PublicKey([0xa5; 32]);
        let mut msg: Vec<u8> = (0..INITIATION_LEN as u8).collect();
        let mut generator = CookieGenerator::new(&public);
        let t = Instant::now();
        generator.add_macs(t, &mut msg);

        let mac1_key = blake2s_256(&[b"mac1----", &[0xa5; 32]]);
        let expected_mac1 = blake2s_128(&mac1_key, &msg[..116]);
        assert_eq!(&msg[116..132], &expected_mac1);
        // The same value computed with Python's hashlib:
        // blake2s(bytes(range(116)), key=blake2s(b"mac1----" + b"\xa5"*32).digest(), digest_size=16)
        assert_eq!(hex(&msg[116..132]), PYTHON_MAC1);

        // mac2 is keyed by the 16-byte cookie; install one directly.
        let cookie: [u8; 16] = core::array::from_fn(|i| 0xc0 + i as u8);
        generator.cookie = Some(ReceivedCookie {
            bytes: cookie,
            received: t,
        });
        generator.add_macs(t, &mut msg);
        assert_eq!(&msg[132..], &blake2s_128(&cookie, &msg[..132]));
        assert_eq!(hex(&msg[132..]), PYTHON_MAC2);
    }

    // Computed independently with Python 3 hashlib (see the test above).
    const PYTHON_MAC1: &str = "80950a83e3e0b5c0a8ce213460345836";
    const PYTHON_MAC2: &str = "cc82cd9fc4c9b11f6e89485533b1ce2d";

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    proptest! {
        #[test]
        fn arbitrary_messages_never_panic(
            msg in proptest::collection::vec(any::<u8>(), 0..300),
            port in any::<u16>(),
            ip in any::<[u8; 16]>(),
            secs in 0u64..400,
        ) {
            let mut p = pair();
            let t = p.t0 + Duration::from_secs(secs);
            let src = SocketAddr::new(Ipv6Addr::from(ip).into(), port);
            prop_assert!(!p.checker.check_mac1(&msg) || msg.len() >= MACS_LEN);
            let _ = p.mac2_ok(t, &msg, src);
            let reply = p.checker.create_reply(t, &mut p.rng, &msg, 9, src);
            prop_assert_eq!(reply.is_some(), msg.len() >= MACS_LEN);
            let mut copy = msg.clone();
            p.generator.add_macs(t, &mut copy);
            if msg.len() >= MACS_LEN {
                prop_assert!(p.checker.check_mac1(&copy));
            } else {
                prop_assert_eq!(&copy, &msg);
            }
        }

        #[test]
        fn arbitrary_replies_are_rejected(reply in any::<[u8; 32]>(), tail in any::<[u8; 32]>()) {
            let mut p = pair();
            let t = p.t0;
            let mut full = [0u8; COOKIE_REPLY_LEN];
            full[..32].copy_from_slice(&reply);
            full[32..].copy_from_slice(&tail);
            prop_assert!(p.generator.consume_reply(t, &full).is_err());
            let _ = p.macced(t, INITIATION_LEN);
            full[..4].copy_from_slice(&[3, 0, 0, 0]);
            prop_assert_eq!(p.generator.consume_reply(t, &full), Err(CookieError::Decryption));
        }
    }
}
