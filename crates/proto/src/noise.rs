//! Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s exactly as WireGuard uses it.
//!
//! Pure functions over keys and messages: the session state machine that
//! decides *when* to call them lives in [`crate::device`] (handshake
//! creation, consumption and the timers' rekeys), and what a peer keeps
//! between the messages in [`crate::peer`]. Step numbers refer to the
//! whitepaper's section 5.4.2 and 5.4.3.
//!
//! The responder looks the initiator up only after decrypting its static key,
//! so consuming an initiation is split in two: [`open_initiation_static`]
//! then, with the peer's precomputed static-static secret,
//! [`finish_initiation`].

use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::crypto::{
    aead_open, aead_seal, hash, kdf1, kdf2, kdf3, CryptoError, PublicKey, SecretKey, SharedSecret,
    SymmetricKey, KEY_LEN, TAG_LEN,
};
use crate::messages::{Initiation, Response};
use crate::tai64n::{Tai64n, TAI64N_LEN};

/// The Noise protocol name.
pub const CONSTRUCTION: &[u8] = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s";
/// WireGuard's identifier, mixed in as the Noise prologue.
pub const IDENTIFIER: &[u8] = b"WireGuard v1 zx2c4 Jason@zx2c4.com";

/// C0 = HASH(CONSTRUCTION): the initial chaining key.
pub const INITIAL_CHAIN_KEY: [u8; KEY_LEN] = [
    0x60, 0xe2, 0x6d, 0xae, 0xf3, 0x27, 0xef, 0xc0, 0x2e, 0xc3, 0x35, 0xe2, 0xa0, 0x25, 0xd2, 0xd0,
    0x16, 0xeb, 0x42, 0x06, 0xf8, 0x72, 0x77, 0xf5, 0x2d, 0x38, 0xd1, 0x98, 0x8b, 0x78, 0xcd, 0x36,
];
/// H0 = HASH(C0 || IDENTIFIER): the initial handshake hash.
pub const INITIAL_HASH: [u8; KEY_LEN] = [
    0x22, 0x11, 0xb3, 0x61, 0x08, 0x1a, 0xc5, 0x66, 0x69, 0x12, 0x43, 0xdb, 0x45, 0x8a, 0xd5, 0x32,
    0x2d, 0x9c, 0x6c, 0x66, 0x22, 0x93, 0xe8, 0xb7, 0x0e, 0xe1, 0x9c, 0x65, 0xba, 0x07, 0x9e, 0xf3,
];

/// Why a handshake message could not be created or consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeError {
    /// A Diffie-Hellman result was zero: low-order or invalid public key.
    LowOrderPoint,
    /// An AEAD tag did not verify.
    Decryption,
}

impl From<CryptoError> for HandshakeError {
    fn from(e: CryptoError) -> Self {
        match e {
            CryptoError::LowOrderPoint => HandshakeError::LowOrderPoint,
            _ => HandshakeError::Decryption,
        }
    }
}

impl core::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            HandshakeError::LowOrderPoint => "low-order public key",
            HandshakeError::Decryption => "handshake authentication failed",
        })
    }
}

impl std::error::Error for HandshakeError {}

/// Chaining key and handshake hash, wiped on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
struct SymmetricState {
    chaining_key: [u8; KEY_LEN],
    hash: [u8; KEY_LEN],
}

impl SymmetricState {
    /// Step 1: `h = HASH(H0 || S_R.pub)`, `c = C0`.
    fn new(responder_static: &PublicKey) -> Self {
        SymmetricState {
            chaining_key: INITIAL_CHAIN_KEY,
            hash: hash(&[&INITIAL_HASH, responder_static.as_bytes()]),
        }
    }

    fn mix_hash(&mut self, data: &[u8]) {
        self.hash = hash(&[&self.hash, data]);
    }

    fn mix_key(&mut self, input: &[u8]) {
        self.chaining_key = kdf1(&self.chaining_key, input);
    }

    /// `(c, k) = KDF2(c, DH)`; returns the AEAD key.
    fn mix_dh(&mut self, shared: &SharedSecret) -> Zeroizing<[u8; KEY_LEN]> {
        let (ck, key) = kdf2(&self.chaining_key, shared.as_bytes());
        self.chaining_key = ck;
        Zeroizing::new(key)
    }

    fn encrypt_and_hash(&mut self, key: &[u8; KEY_LEN], plain: &[u8], out: &mut [u8]) {
        aead_seal(key, 0, plain, &self.hash, out).expect("output sized by the caller");
        self.mix_hash(out);
    }

    fn decrypt_and_hash(
        &mut self,
        key: &[u8; KEY_LEN],
        sealed: &[u8],
        out: &mut [u8],
    ) -> Result<(), HandshakeError> {
        aead_open(key, 0, sealed, &self.hash, out)?;
        self.mix_hash(sealed);
        Ok(())
    }

    /// Step 6: `(c, τ, k) = KDF3(c, psk)`, `h = HASH(h || τ)`; returns k.
    fn mix_psk(&mut self, psk: &SymmetricKey) -> Zeroizing<[u8; KEY_LEN]> {
        let (ck, mut tau, key) = kdf3(&self.chaining_key, psk.as_bytes());
        self.chaining_key = ck;
        self.mix_hash(&tau);
        tau.zeroize();
        Zeroizing::new(key)
    }

    /// Step 7: the transport keys `(T_i→r, T_r→i) = KDF2(c, ε)`.
    fn split(&self) -> (SymmetricKey, SymmetricKey) {
        let (a, b) = kdf2(&self.chaining_key, &[]);
        (SymmetricKey(a), SymmetricKey(b))
    }
}

/// The two transport keys of a new session, from our point of view.
#[derive(Debug)]
pub struct SessionKeys {
    /// Key for messages we send.
    pub send: SymmetricKey,
    /// Key for messages we receive.
    pub receive: SymmetricKey,
}

/// What the initiator keeps between sending an initiation and the response.
#[derive(Clone)]
pub struct InitiatorState {
    /// The session index we put in the initiation.
    pub local_index: u32,
    ephemeral: SecretKey,
    symmetric: SymmetricState,
}

impl core::fmt::Debug for InitiatorState {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "InitiatorState {{ local_index: {} }}", self.local_index)
    }
}

/// Builds an initiation (macs left zero for [`crate::cookie`] to fill).
///
/// `static_static` is DH(S_I, S_R), precomputed per peer; it must not be the
/// all-zero value (the caller refuses such peers before anything is sent).
pub fn create_initiation(
    our_public: &PublicKey,
    peer_public: &PublicKey,
    static_static: &SharedSecret,
    rng: &mut impl rand_core::CryptoRng,
    timestamp: Tai64n,
    local_index: u32,
) -> Result<(Initiation, InitiatorState), HandshakeError> {
    let mut sym = SymmetricState::new(peer_public);
    // Step 2: ephemeral.
    let ephemeral = SecretKey::generate(rng);
    let ephemeral_public = ephemeral.public_key();
    sym.mix_key(ephemeral_public.as_bytes());
    sym.mix_hash(ephemeral_public.as_bytes());
    // Step 3: es, encrypted static.
    let key = sym.mix_dh(&ephemeral.dh(peer_public)?);
    let mut encrypted_static = [0u8; KEY_LEN + TAG_LEN];
    sym.encrypt_and_hash(&key, our_public.as_bytes(), &mut encrypted_static);
    // Step 4: ss, encrypted timestamp.
    let key = sym.mix_dh(static_static);
    let mut encrypted_timestamp = [0u8; TAI64N_LEN + TAG_LEN];
    sym.encrypt_and_hash(&key, &timestamp.0, &mut encrypted_timestamp);
    let message = Initiation {
        sender: local_index,
        ephemeral: ephemeral_public.0,
        encrypted_static,
        encrypted_timestamp,
        mac1: [0; 16],
        mac2: [0; 16],
    };
    Ok((
        message,
        InitiatorState {
            local_index,
            ephemeral,
            symmetric: sym,
        },
    ))
}

/// An initiation whose static key has been decrypted but not yet verified
/// against a configured peer.
pub struct InitiationInProgress {
    /// The initiator's static public key, as it claims.
    pub peer_public: PublicKey,
    symmetric: SymmetricState,
}

/// Responder, first half: decrypts the initiator's static public key.
pub fn open_initiation_static(
    our_static: &SecretKey,
    our_public: &PublicKey,
    message: &Initiation,
) -> Result<InitiationInProgress, HandshakeError> {
    let mut sym = SymmetricState::new(our_public);
    sym.mix_key(&message.ephemeral);
    sym.mix_hash(&message.ephemeral);
    let key = sym.mix_dh(&our_static.dh(&PublicKey(message.ephemeral))?);
    let mut peer_public = [0u8; KEY_LEN];
    sym.decrypt_and_hash(&key, &message.encrypted_static, &mut peer_public)?;
    Ok(InitiationInProgress {
        peer_public: PublicKey(peer_public),
        symmetric: sym,
    })
}

/// A fully verified initiation, ready to be answered.
#[derive(Clone)]
pub struct ConsumedInitiation {
    /// The initiator's static public key.
    pub peer_public: PublicKey,
    /// The initiator's session index.
    pub remote_index: u32,
    /// The decrypted timestamp (the caller checks it is newer than the last).
    pub timestamp: Tai64n,
    remote_ephemeral: PublicKey,
    symmetric: SymmetricState,
}

impl core::fmt::Debug for ConsumedInitiation {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "ConsumedInitiation {{ peer: {:?} }}", self.peer_public)
    }
}

/// Responder, second half: with DH(S_R, S_I) of the configured peer, decrypts
/// and authenticates the timestamp.
pub fn finish_initiation(
    progress: InitiationInProgress,
    static_static: &SharedSecret,
    message: &Initiation,
) -> Result<ConsumedInitiation, HandshakeError> {
    let mut sym = progress.symmetric.clone();
    let key = sym.mix_dh(static_static);
    let mut timestamp = [0u8; TAI64N_LEN];
    sym.decrypt_and_hash(&key, &message.encrypted_timestamp, &mut timestamp)?;
    Ok(ConsumedInitiation {
        peer_public: progress.peer_public,
        remote_index: message.sender,
        timestamp: Tai64n(timestamp),
        remote_ephemeral: PublicKey(message.ephemeral),
        symmetric: sym,
    })
}

/// Responder: builds the response (macs zero) and the session keys.
pub fn create_response(
    consumed: &ConsumedInitiation,
    preshared_key: &SymmetricKey,
    rng: &mut impl rand_core::CryptoRng,
    local_index: u32,
) -> Result<(Response, SessionKeys), HandshakeError> {
    let mut sym = consumed.symmetric.clone();
    let ephemeral = SecretKey::generate(rng);
    let ephemeral_public = ephemeral.public_key();
    sym.mix_key(ephemeral_public.as_bytes());
    sym.mix_hash(ephemeral_public.as_bytes());
    sym.mix_key(ephemeral.dh(&consumed.remote_ephemeral)?.as_bytes());
    sym.mix_key(ephemeral.dh(&consumed.peer_public)?.as_bytes());
    let key = sym.mix_psk(preshared_key);
    let mut encrypted_nothing = [0u8; TAG_LEN];
    sym.encrypt_and_hash(&key, &[], &mut encrypted_nothing);
    let (initiator_to_responder, responder_to_initiator) = sym.split();
    let response = Response {
        sender: local_index,
        receiver: consumed.remote_index,
        ephemeral: ephemeral_public.0,
        encrypted_nothing,
        mac1: [0; 16],
        mac2: [0; 16],
    };
    Ok((
        response,
        SessionKeys {
            send: responder_to_initiator,
            receive: initiator_to_responder,
        },
    ))
}

/// Initiator: verifies a response and derives the session keys.
pub fn consume_response(
    state: &InitiatorState,
    our_static: &SecretKey,
    preshared_key: &SymmetricKey,
    message: &Response,
) -> Result<SessionKeys, HandshakeError> {
    let mut sym = state.symmetric.clone();
    let responder_ephemeral = PublicKey(message.ephemeral);
    sym.mix_key(&message.ephemeral);
    sym.mix_hash(&message.ephemeral);
    sym.mix_key(state.ephemeral.dh(&responder_ephemeral)?.as_bytes());
    sym.mix_key(our_static.dh(&responder_ephemeral)?.as_bytes());
    let key = sym.mix_psk(preshared_key);
    let mut nothing = [0u8; 0];
    sym.decrypt_and_hash(&key, &message.encrypted_nothing, &mut nothing)?;
    let (initiator_to_responder, responder_to_initiator) = sym.split();
    Ok(SessionKeys {
        send: initiator_to_responder,
        receive: responder_to_initiator,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::SeedableRng;

    #[test]
    fn initial_constants_are_hashes_of_the_strings() {
        assert_eq!(hash(&[CONSTRUCTION]), INITIAL_CHAIN_KEY);
        assert_eq!(hash(&[&INITIAL_CHAIN_KEY, IDENTIFIER]), INITIAL_HASH);
    }

    struct Party {
        secret: SecretKey,
        public: PublicKey,
    }

    fn party(seed: u8) -> Party {
        let secret = SecretKey::from_bytes([seed; 32]);
        let public = secret.public_key();
        Party { secret, public }
    }

    fn handshake(
        psk_i: &SymmetricKey,
        psk_r: &SymmetricKey,
    ) -> Result<(SessionKeys, SessionKeys), HandshakeError> {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
        let (i, r) = (party(1), party(2));
        let ss = i.secret.dh(&r.public).unwrap();
        let ts = Tai64n::from_unix(std::time::Duration::from_secs(1000));
        let (init, state) = create_initiation(&i.public, &r.public, &ss, &mut rng, ts, 42)?;
        let progress = open_initiation_static(&r.secret, &r.public, &init)?;
        assert_eq!(progress.peer_public, i.public);
        let consumed = finish_initiation(progress, &r.secret.dh(&i.public).unwrap(), &init)?;
        assert_eq!(consumed.timestamp, ts);
        assert_eq!(consumed.remote_index, 42);
        let (response, responder_keys) = create_response(&consumed, psk_r, &mut rng, 77)?;
        assert_eq!(response.receiver, 42);
        let initiator_keys = consume_response(&state, &i.secret, psk_i, &response)?;
        Ok((initiator_keys, responder_keys))
    }

    #[test]
    fn both_sides_derive_crossed_keys() {
        let psk = SymmetricKey([9; 32]);
        let (i, r) = handshake(&psk, &psk).unwrap();
        assert_eq!(i.send, r.receive);
        assert_eq!(i.receive, r.send);
        assert_ne!(i.send, i.receive);
    }

    #[test]
    fn preshared_key_mismatch_fails_the_response() {
        let err = handshake(&SymmetricKey([1; 32]), &SymmetricKey([2; 32])).unwrap_err();
        assert_eq!(err, HandshakeError::Decryption);
    }

    #[test]
    fn tampered_initiation_is_rejected() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        let (i, r) = (party(1), party(2));
        let ss = i.secret.dh(&r.public).unwrap();
        let ts = Tai64n::default();
        let (init, _) = create_initiation(&i.public, &r.public, &ss, &mut rng, ts, 1).unwrap();
        for byte in [8usize, 40, 87, 88, 115] {
            let mut bytes = init.to_bytes();
            bytes[byte] ^= 0x20;
            let Ok(crate::messages::Message::Initiation(bad)) = crate::messages::parse(&bytes)
            else {
                panic!("still parses")
            };
            let result = open_initiation_static(&r.secret, &r.public, &bad).and_then(|p| {
                let ss = r.secret.dh(&p.peer_public)?;
                finish_initiation(p, &ss, &bad)
            });
            assert!(result.is_err(), "flipping byte {byte} must fail");
        }
    }

    #[test]
    fn low_order_ephemeral_is_rejected() {
        let r = party(2);
        let init = Initiation {
            sender: 1,
            ephemeral: [0; 32],
            encrypted_static: [0; 48],
            encrypted_timestamp: [0; 28],
            mac1: [0; 16],
            mac2: [0; 16],
        };
        assert_eq!(
            open_initiation_static(&r.secret, &r.public, &init).err(),
            Some(HandshakeError::LowOrderPoint)
        );
    }
}
