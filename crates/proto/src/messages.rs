//! The four WireGuard messages on the wire, with their exact sizes.
//!
//! Every message starts with its type as a little-endian `u32`, so the three
//! bytes after the type byte are zero; a datagram whose first four bytes are
//! anything else is of unknown type. Handshake and cookie messages must have
//! exactly their size; a transport message has at least the 16-byte header
//! and a 16-byte tag. Parsing never panics and never allocates.

/// Type of a handshake initiation.
pub const TYPE_INITIATION: u32 = 1;
/// Type of a handshake response.
pub const TYPE_RESPONSE: u32 = 2;
/// Type of a cookie reply.
pub const TYPE_COOKIE_REPLY: u32 = 3;
/// Type of a transport data message.
pub const TYPE_TRANSPORT: u32 = 4;

/// Size of a handshake initiation.
pub const INITIATION_LEN: usize = 148;
/// Size of a handshake response.
pub const RESPONSE_LEN: usize = 92;
/// Size of a cookie reply.
pub const COOKIE_REPLY_LEN: usize = 64;
/// Size of the transport header (type, receiver index, counter).
pub const TRANSPORT_HEADER_LEN: usize = 16;
/// Smallest transport message: a keepalive (header and tag only).
pub const TRANSPORT_MIN_LEN: usize = TRANSPORT_HEADER_LEN + crate::crypto::TAG_LEN;

/// Why a datagram is not a well-formed WireGuard message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// Shorter than four bytes, or the type's reserved bytes are not zero,
    /// or the type is not one of the four.
    UnknownType,
    /// The length does not match the type.
    WrongLength,
}

impl core::fmt::Display for ParseError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            ParseError::UnknownType => "unknown message type",
            ParseError::WrongLength => "wrong message length",
        })
    }
}

impl std::error::Error for ParseError {}

/// Handshake initiation (type 1, 148 bytes).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Initiation {
    /// The initiator's session index.
    pub sender: u32,
    /// The initiator's ephemeral public key.
    pub ephemeral: [u8; 32],
    /// The initiator's static public key, encrypted (32 + 16).
    pub encrypted_static: [u8; 48],
    /// The TAI64N timestamp, encrypted (12 + 16).
    pub encrypted_timestamp: [u8; 28],
    /// MAC over everything before it, keyed by the responder's public key.
    pub mac1: [u8; 16],
    /// MAC keyed by a cookie, or zeros.
    pub mac2: [u8; 16],
}

/// Handshake response (type 2, 92 bytes).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Response {
    /// The responder's session index.
    pub sender: u32,
    /// The initiator's session index, echoed.
    pub receiver: u32,
    /// The responder's ephemeral public key.
    pub ephemeral: [u8; 32],
    /// The authentication tag of the empty payload.
    pub encrypted_nothing: [u8; 16],
    /// MAC over everything before it, keyed by the initiator's public key.
    pub mac1: [u8; 16],
    /// MAC keyed by a cookie, or zeros.
    pub mac2: [u8; 16],
}

/// Cookie reply (type 3, 64 bytes).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct CookieReply {
    /// The sender index of the message this answers.
    pub receiver: u32,
    /// XChaCha20 nonce.
    pub nonce: [u8; 24],
    /// The cookie, encrypted (16 + 16).
    pub encrypted_cookie: [u8; 32],
}

/// A transport data message, borrowed from the datagram.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct TransportHeader {
    /// The receiver's session index.
    pub receiver: u32,
    /// The nonce counter.
    pub counter: u64,
}

/// A parsed datagram.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Message {
    /// Type 1.
    Initiation(Initiation),
    /// Type 2.
    Response(Response),
    /// Type 3.
    CookieReply(CookieReply),
    /// Type 4: the header; the ciphertext is `datagram[16..]`.
    Transport(TransportHeader),
}

fn read_u32(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

fn read_array<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[at..at + N]);
    a
}

/// The message type of a datagram, checking that the reserved bytes are zero.
pub fn message_type(datagram: &[u8]) -> Result<u32, ParseError> {
    if datagram.len() < 4 {
        return Err(ParseError::UnknownType);
    }
    match read_u32(datagram, 0) {
        t @ (TYPE_INITIATION | TYPE_RESPONSE | TYPE_COOKIE_REPLY | TYPE_TRANSPORT) => Ok(t),
        _ => Err(ParseError::UnknownType),
    }
}

/// Parses a datagram into one of the four messages.
pub fn parse(datagram: &[u8]) -> Result<Message, ParseError> {
    let b = datagram;
    let expect = |len: usize| {
        if b.len() == len {
            Ok(())
        } else {
            Err(ParseError::WrongLength)
        }
    };
    match message_type(b)? {
        TYPE_INITIATION => {
            expect(INITIATION_LEN)?;
            Ok(Message::Initiation(Initiation {
                sender: read_u32(b, 4),
                ephemeral: read_array(b, 8),
                encrypted_static: read_array(b, 40),
                encrypted_timestamp: read_array(b, 88),
                mac1: read_array(b, 116),
                mac2: read_array(b, 132),
            }))
        }
        TYPE_RESPONSE => {
            expect(RESPONSE_LEN)?;
            Ok(Message::Response(Response {
                sender: read_u32(b, 4),
                receiver: read_u32(b, 8),
                ephemeral: read_array(b, 12),
                encrypted_nothing: read_array(b, 44),
                mac1: read_array(b, 60),
                mac2: read_array(b, 76),
            }))
        }
        TYPE_COOKIE_REPLY => {
            expect(COOKIE_REPLY_LEN)?;
            Ok(Message::CookieReply(CookieReply {
                receiver: read_u32(b, 4),
                nonce: read_array(b, 8),
                encrypted_cookie: read_array(b, 32),
            }))
        }
        _ => {
            if b.len() < TRANSPORT_MIN_LEN {
                return Err(ParseError::WrongLength);
            }
            Ok(Message::Transport(parse_transport_header(b)))
        }
    }
}

fn parse_transport_header(b: &[u8]) -> TransportHeader {
    TransportHeader {
        receiver: read_u32(b, 4),
        counter: u64::from_le_bytes(read_array(b, 8)),
    }
}

impl Initiation {
    /// The 148 bytes on the wire.
    pub fn to_bytes(&self) -> [u8; INITIATION_LEN] {
        let mut b = [0u8; INITIATION_LEN];
        b[0..4].copy_from_slice(&TYPE_INITIATION.to_le_bytes());
        b[4..8].copy_from_slice(&self.sender.to_le_bytes());
        b[8..40].copy_from_slice(&self.ephemeral);
        b[40..88].copy_from_slice(&self.encrypted_static);
        b[88..116].copy_from_slice(&self.encrypted_timestamp);
        b[116..132].copy_from_slice(&self.mac1);
        b[132..148].copy_from_slice(&self.mac2);
        b
    }
}

impl Response {
    /// The 92 bytes on the wire.
    pub fn to_bytes(&self) -> [u8; RESPONSE_LEN] {
        let mut b = [0u8; RESPONSE_LEN];
        b[0..4].copy_from_slice(&TYPE_RESPONSE.to_le_bytes());
        b[4..8].copy_from_slice(&self.sender.to_le_bytes());
        b[8..12].copy_from_slice(&self.receiver.to_le_bytes());
        b[12..44].copy_from_slice(&self.ephemeral);
        b[44..60].copy_from_slice(&self.encrypted_nothing);
        b[60..76].copy_from_slice(&self.mac1);
        b[76..92].copy_from_slice(&self.mac2);
        b
    }
}

impl CookieReply {
    /// The 64 bytes on the wire.
    pub fn to_bytes(&self) -> [u8; COOKIE_REPLY_LEN] {
        let mut b = [0u8; COOKIE_REPLY_LEN];
        b[0..4].copy_from_slice(&TYPE_COOKIE_REPLY.to_le_bytes());
        b[4..8].copy_from_slice(&self.receiver.to_le_bytes());
        b[8..32].copy_from_slice(&self.nonce);
        b[32..64].copy_from_slice(&self.encrypted_cookie);
        b
    }
}

impl TransportHeader {
    /// Writes the 16-byte header into the start of `out`.
    pub fn write(&self, out: &mut [u8; TRANSPORT_HEADER_LEN]) {
        out[0..4].copy_from_slice(&TYPE_TRANSPORT.to_le_bytes());
        out[4..8].copy_from_slice(&self.receiver.to_le_bytes());
        out[8..16].copy_from_slice(&self.counter.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample_initiation() -> Initiation {
        Initiation {
            sender: 0x01020304,
            ephemeral: [1; 32],
            encrypted_static: [2; 48],
            encrypted_timestamp: [3; 28],
            mac1: [4; 16],
            mac2: [5; 16],
        }
    }

    #[test]
    fn round_trips() {
        let i = sample_initiation();
        assert_eq!(parse(&i.to_bytes()), Ok(Message::Initiation(i.clone())));
        let r = Response {
            sender: 7,
            receiver: 9,
            ephemeral: [6; 32],
            encrypted_nothing: [7; 16],
            mac1: [8; 16],
            mac2: [9; 16],
        };
        assert_eq!(parse(&r.to_bytes()), Ok(Message::Response(r.clone())));
        let c = CookieReply {
            receiver: 11,
            nonce: [1; 24],
            encrypted_cookie: [2; 32],
        };
        assert_eq!(parse(&c.to_bytes()), Ok(Message::CookieReply(c.clone())));
        let mut t = [0u8; 40];
        let mut h = [0u8; 16];
        TransportHeader {
            receiver: 5,
            counter: 1 << 40,
        }
        .write(&mut h);
        t[..16].copy_from_slice(&h);
        assert_eq!(
            parse(&t),
            Ok(Message::Transport(TransportHeader {
                receiver: 5,
                counter: 1 << 40
            }))
        );
    }

    #[test]
    fn layout_offsets() {
        let b = sample_initiation().to_bytes();
        assert_eq!(&b[..4], &[1, 0, 0, 0]);
        assert_eq!(&b[4..8], &[4, 3, 2, 1], "sender is little endian");
        assert_eq!(b[116], 4, "mac1 at 116");
        assert_eq!(b[132], 5, "mac2 at 132");
    }

    #[test]
    fn rejects_wrong_sizes_and_types() {
        let b = sample_initiation().to_bytes();
        assert_eq!(parse(&b[..147]), Err(ParseError::WrongLength));
        let mut long = b.to_vec();
        long.push(0);
        assert_eq!(parse(&long), Err(ParseError::WrongLength));
        let mut reserved = b;
        reserved[1] = 1;
        assert_eq!(parse(&reserved), Err(ParseError::UnknownType));
        assert_eq!(parse(&[5, 0, 0, 0]), Err(ParseError::UnknownType));
        assert_eq!(parse(&[1, 0, 0]), Err(ParseError::UnknownType));
        assert_eq!(parse(&[4, 0, 0, 0, 0]), Err(ParseError::WrongLength));
        assert_eq!(parse(&[4; 31]), Err(ParseError::UnknownType));
        let mut short_transport = [0u8; 31];
        short_transport[0] = 4;
        assert_eq!(parse(&short_transport), Err(ParseError::WrongLength));
    }

    proptest! {
        #[test]
        fn parse_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse(&data);
        }

        #[test]
        fn parsed_lengths_are_exact(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            match parse(&data) {
                Ok(Message::Initiation(_)) => prop_assert_eq!(data.len(), INITIATION_LEN),
                Ok(Message::Response(_)) => prop_assert_eq!(data.len(), RESPONSE_LEN),
                Ok(Message::CookieReply(_)) => prop_assert_eq!(data.len(), COOKIE_REPLY_LEN),
                Ok(Message::Transport(_)) => prop_assert!(data.len() >= TRANSPORT_MIN_LEN),
                Err(_) => {}
            }
        }
    }
}
