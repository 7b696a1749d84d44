//! Differential test against an independent Noise implementation: the
//! `snow` crate configured as WireGuard's Noise_IKpsk2 (prologue = the
//! WireGuard identifier, PSK at position 2, payloads = TAI64N / empty). It
//! must complete a handshake against ours in both roles, and the transport
//! keys must agree (checked by exchanging transport messages both ways).

use std::time::{Duration, Instant};

use ferroguard_proto::crypto::{PublicKey, SecretKey, SymmetricKey};
use ferroguard_proto::messages::{Initiation, Response, TransportHeader, TRANSPORT_HEADER_LEN};
use ferroguard_proto::noise::{
    consume_response, create_initiation, create_response, finish_initiation,
    open_initiation_static, IDENTIFIER,
};
use ferroguard_proto::tai64n::Tai64n;
use ferroguard_proto::transport::Keypair;
use rand_core::SeedableRng;

const PATTERN: &str = "Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s";

fn keys(seed: u8) -> (SecretKey, PublicKey) {
    let secret = SecretKey::from_bytes([seed; 32]);
    let public = secret.public_key();
    (secret, public)
}

fn snow_builder<'a>(private: &'a [u8; 32], psk: &'a [u8; 32]) -> snow::Builder<'a> {
    snow::Builder::new(PATTERN.parse().unwrap())
        .local_private_key(private)
        .unwrap()
        .prologue(IDENTIFIER)
        .unwrap()
        .psk(2, psk)
        .unwrap()
}

/// Lets snow write the first handshake message (e, s, payload = TAI64N)
/// and frames it as a WireGuard initiation (macs left zero).
fn initiation_from_snow(
    snow: &mut snow::HandshakeState,
    payload: &[u8],
    sender: u32,
) -> Initiation {
    let mut msg = [0u8; 108];
    assert_eq!(snow.write_message(payload, &mut msg).unwrap(), 108);
    Initiation {
        sender,
        ephemeral: msg[..32].try_into().unwrap(),
        encrypted_static: msg[32..80].try_into().unwrap(),
        encrypted_timestamp: msg[80..108].try_into().unwrap(),
        mac1: [0; 16],
        mac2: [0; 16],
    }
}

/// Wraps a snow transport ciphertext (nonce 0) as a WireGuard transport message.
fn transport_message(receiver: u32, counter: u64, ciphertext: &[u8]) -> Vec<u8> {
    let mut header = [0u8; TRANSPORT_HEADER_LEN];
    TransportHeader { receiver, counter }.write(&mut header);
    [&header[..], ciphertext].concat()
}

fn check_keys_agree(ours: &mut Keypair, mut theirs: snow::TransportState) {
    let now = Instant::now();
    // snow → us.
    let mut ciphertext = vec![0u8; 64];
    let n = theirs.write_message(b"from snow", &mut ciphertext).unwrap();
    let mut datagram = transport_message(ours.local_index, 0, &ciphertext[..n]);
    let len = ours
        .open(now, 0, &mut datagram)
        .expect("snow's message opens");
    assert_eq!(&datagram[16..16 + len], b"from snow");
    // us → snow (our padding is part of the plaintext snow sees).
    let mut out = vec![0u8; 128];
    let n = ours.seal(now, b"from ferroguard", 1420, &mut out).unwrap();
    let mut plain = vec![0u8; 128];
    let m = theirs
        .read_message(&out[16..n], &mut plain)
        .expect("ours opens in snow");
    assert_eq!(&plain[..15], b"from ferroguard");
    assert!(plain[15..m].iter().all(|&b| b == 0));
}

#[test]
fn snow_initiator_against_our_responder() {
    let (i_secret, i_public) = keys(0x31);
    let (r_secret, r_public) = keys(0x42);
    let psk = [0x77u8; 32];
    let i_bytes = i_secret.to_bytes();
    let mut snow_i = snow_builder(&i_bytes, &psk)
        .remote_public_key(r_public.as_bytes())
        .unwrap()
        .build_initiator()
        .unwrap();
    let timestamp = Tai64n::from_unix(Duration::from_secs(1_700_000_000));
    let initiation = initiation_from_snow(&mut snow_i, &timestamp.0, 0xdead_beef);
    let progress = open_initiation_static(&r_secret, &r_public, &initiation).unwrap();
    assert_eq!(progress.peer_public, i_public);
    let static_static = r_secret.dh(&i_public).unwrap();
    let consumed = finish_initiation(progress, &static_static, &initiation).unwrap();
    assert_eq!(consumed.timestamp, timestamp);
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(3);
    let (response, session) = create_response(&consumed, &SymmetricKey(psk), &mut rng, 99).unwrap();
    let wire = [&response.ephemeral[..], &response.encrypted_nothing[..]].concat();
    let mut empty = [0u8; 0];
    assert_eq!(snow_i.read_message(&wire, &mut empty).unwrap(), 0);
    let mut ours = Keypair::new(&session, 99, 0xdead_beef, Instant::now(), false);
    check_keys_agree(&mut ours, snow_i.into_transport_mode().unwrap());
}

#[test]
fn our_initiator_against_snow_responder() {
    let (i_secret, i_public) = keys(0x51);
    let (r_secret, r_public) = keys(0x62);
    let psk = [0u8; 32]; // no preshared key: 32 zero bytes
    let r_bytes = r_secret.to_bytes();
    let mut snow_r = snow_builder(&r_bytes, &psk).build_responder().unwrap();
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(4);
    let static_static = i_secret.dh(&r_public).unwrap();
    let timestamp = Tai64n::from_unix(Duration::from_secs(1_800_000_000));
    let (initiation, state) =
        create_initiation(&i_public, &r_public, &static_static, &mut rng, timestamp, 7).unwrap();
    let wire = [
        &initiation.ephemeral[..],
        &initiation.encrypted_static[..],
        &initiation.encrypted_timestamp[..],
    ]
    .concat();
    let mut payload = [0u8; 64];
    let n = snow_r.read_message(&wire, &mut payload).unwrap();
    assert_eq!(&payload[..n], &timestamp.0);
    assert_eq!(snow_r.get_remote_static().unwrap(), i_public.as_bytes());
    let mut msg = [0u8; 48];
    assert_eq!(snow_r.write_message(&[], &mut msg).unwrap(), 48);
    let response = Response {
        sender: 1234,
        receiver: 7,
        ephemeral: msg[..32].try_into().unwrap(),
        encrypted_nothing: msg[32..48].try_into().unwrap(),
        mac1: [0; 16],
        mac2: [0; 16],
    };
    let session = consume_response(&state, &i_secret, &SymmetricKey(psk), &response).unwrap();
    let mut ours = Keypair::new(&session, 7, 1234, Instant::now(), true);
    check_keys_agree(&mut ours, snow_r.into_transport_mode().unwrap());
}

#[test]
fn snow_with_a_different_psk_does_not_complete() {
    let (i_secret, _) = keys(0x71);
    let (r_secret, r_public) = keys(0x72);
    let i_bytes = i_secret.to_bytes();
    let mut snow_i = snow_builder(&i_bytes, &[1u8; 32])
        .remote_public_key(r_public.as_bytes())
        .unwrap()
        .build_initiator()
        .unwrap();
    let initiation = initiation_from_snow(&mut snow_i, &[0u8; 12], 1);
    let progress = open_initiation_static(&r_secret, &r_public, &initiation).unwrap();
    let ss = r_secret.dh(&progress.peer_public).unwrap();
    let consumed = finish_initiation(progress, &ss, &initiation).unwrap();
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(5);
    let (response, _) = create_response(&consumed, &SymmetricKey([2u8; 32]), &mut rng, 9).unwrap();
    let wire = [&response.ephemeral[..], &response.encrypted_nothing[..]].concat();
    let mut empty = [0u8; 0];
    assert!(snow_i.read_message(&wire, &mut empty).is_err());
}
