//! SOCKS5 (RFC 1928) with no authentication or username/password
//! (RFC 1929): the parsers of what a client sends and the replies, and
//! the header of UDP ASSOCIATE datagrams (section 7).
//!
//! Each parser takes the bytes received so far and answers
//! [`Parse::Incomplete`] (wait for more), [`Parse::Done`] with the value and
//! the bytes it used, or an error. They never allocate more than the input
//! and never panic, whatever the input.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

/// The protocol version byte.
const VERSION: u8 = 5;
/// The version of the username/password sub-negotiation (RFC 1929).
const AUTH_VERSION: u8 = 1;

/// Method: no authentication required.
pub const METHOD_NONE: u8 = 0x00;
/// Method: username/password (RFC 1929).
pub const METHOD_PASSWORD: u8 = 0x02;
/// Method: none of the offered methods is acceptable.
pub const METHOD_UNACCEPTABLE: u8 = 0xff;

/// The outcome of parsing a prefix of a client's bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Parse<T> {
    /// More bytes are needed.
    Incomplete,
    /// Parsed; the value and how many bytes it took.
    Done(T, usize),
}

/// A client's input that breaks the protocol.
#[derive(Debug, PartialEq, Eq)]
pub enum Socks5Error {
    /// Not SOCKS version 5 (or not version 1 of the password exchange).
    Version(u8),
    /// A greeting offering no method at all.
    NoMethods,
    /// The reserved byte of a request was not zero.
    Reserved,
    /// An address type other than IPv4, domain name or IPv6.
    AddressType(u8),
    /// A domain name that is empty or not printable ASCII.
    BadName,
    /// A UDP datagram shorter than its header.
    Truncated,
}

impl std::fmt::Display for Socks5Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Socks5Error::Version(v) => write!(f, "unsupported version {v}"),
            Socks5Error::NoMethods => f.write_str("no authentication method offered"),
            Socks5Error::Reserved => f.write_str("reserved byte not zero"),
            Socks5Error::AddressType(t) => write!(f, "unknown address type {t}"),
            Socks5Error::BadName => f.write_str("invalid domain name"),
            Socks5Error::Truncated => f.write_str("datagram shorter than its header"),
        }
    }
}

/// Parses the greeting: version, method count, methods. Returns whether
/// the client offers `wanted`.
pub fn parse_greeting(input: &[u8], wanted: u8) -> Result<Parse<bool>, Socks5Error> {
    let [version, count, rest @ ..] = input else {
        return Ok(Parse::Incomplete);
    };
    if *version != VERSION {
        return Err(Socks5Error::Version(*version));
    }
    let count = usize::from(*count);
    if count == 0 {
        return Err(Socks5Error::NoMethods);
    }
    let Some(methods) = rest.get(..count) else {
        return Ok(Parse::Incomplete);
    };
    Ok(Parse::Done(methods.contains(&wanted), 2 + count))
}

/// A username and password as sent (RFC 1929: each 1 to 255 bytes).
#[derive(Debug, PartialEq, Eq)]
pub struct Credentials<'a> {
    /// The username.
    pub username: &'a [u8],
    /// The password.
    pub password: &'a [u8],
}

/// Parses the username/password request.
pub fn parse_credentials(input: &[u8]) -> Result<Parse<Credentials<'_>>, Socks5Error> {
    let [version, user_len, rest @ ..] = input else {
        return Ok(Parse::Incomplete);
    };
    if *version != AUTH_VERSION {
        return Err(Socks5Error::Version(*version));
    }
    let user_len = usize::from(*user_len);
    let Some((&pass_len, after_user)) = rest.get(user_len..).and_then(<[u8]>::split_first) else {
        return Ok(Parse::Incomplete);
    };
    let pass_len = usize::from(pass_len);
    let Some(password) = after_user.get(..pass_len) else {
        return Ok(Parse::Incomplete);
    };
    let credentials = Credentials {
        username: &rest[..user_len],
        password,
    };
    Ok(Parse::Done(credentials, 3 + user_len + pass_len))
}

/// The answer to a username/password request.
pub fn credentials_reply(accepted: bool) -> [u8; 2] {
    [AUTH_VERSION, if accepted { 0 } else { 1 }]
}

/// The command of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// CONNECT (1).
    Connect,
    /// BIND (2): not supported.
    Bind,
    /// UDP ASSOCIATE (3).
    UdpAssociate,
    /// Anything else.
    Other(u8),
}

/// Where a request wants to go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A numeric address.
    Addr(SocketAddr),
    /// A domain name (printable ASCII, 1 to 255 bytes) and port, to be
    /// resolved through the tunnel.
    Name(String, u16),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Addr(addr) => write!(f, "{addr}"),
            Target::Name(name, port) => write!(f, "{name}:{port}"),
        }
    }
}

/// A parsed request.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    /// What the client asks for.
    pub command: Command,
    /// The destination.
    pub target: Target,
}

/// Parses a request: version, command, reserved, address, port.
pub fn parse_request(input: &[u8]) -> Result<Parse<Request>, Socks5Error> {
    let [version, command, reserved, address_type, rest @ ..] = input else {
        return Ok(Parse::Incomplete);
    };
    if *version != VERSION {
        return Err(Socks5Error::Version(*version));
    }
    if *reserved != 0 {
        return Err(Socks5Error::Reserved);
    }
    let command = match command {
        1 => Command::Connect,
        2 => Command::Bind,
        3 => Command::UdpAssociate,
        other => Command::Other(*other),
    };
    let (target, address_len) = match parse_address(*address_type, rest)? {
        Parse::Incomplete => return Ok(Parse::Incomplete),
        Parse::Done(target, len) => (target, len),
    };
    Ok(Parse::Done(Request { command, target }, 4 + address_len))
}

/// Parses an address of type `address_type` (1 IPv4, 3 domain name, 4
/// IPv6) and its port from the start of `input`.
fn parse_address(address_type: u8, input: &[u8]) -> Result<Parse<Target>, Socks5Error> {
    match address_type {
        1 => Ok(match input.get(..6) {
            None => Parse::Incomplete,
            Some(b) => {
                let ip = Ipv4Addr::new(b[0], b[1], b[2], b[3]);
                let port = u16::from_be_bytes([b[4], b[5]]);
                Parse::Done(Target::Addr(SocketAddr::from((ip, port))), 6)
            }
        }),
        4 => Ok(match input.get(..18) {
            None => Parse::Incomplete,
            Some(b) => {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&b[..16]);
                let port = u16::from_be_bytes([b[16], b[17]]);
                let addr = SocketAddr::from((Ipv6Addr::from(octets), port));
                Parse::Done(Target::Addr(addr), 18)
            }
        }),
        3 => {
            let Some((&len, after)) = input.split_first() else {
                return Ok(Parse::Incomplete);
            };
            let len = usize::from(len);
            let Some(b) = after.get(..len + 2) else {
                return Ok(Parse::Incomplete);
            };
            let name = &b[..len];
            if name.is_empty() || !name.iter().all(|c| c.is_ascii_graphic()) {
                return Err(Socks5Error::BadName);
            }
            let port = u16::from_be_bytes([b[len], b[len + 1]]);
            let name = String::from_utf8_lossy(name).into_owned();
            Ok(Parse::Done(Target::Name(name, port), 1 + len + 2))
        }
        other => Err(Socks5Error::AddressType(other)),
    }
}

/// Appends the address type, address and port of `addr`.
fn push_address(out: &mut Vec<u8>, addr: SocketAddr) {
    match addr {
        SocketAddr::V4(a) => {
            out.push(1);
            out.extend_from_slice(&a.ip().octets());
        }
        SocketAddr::V6(a) => {
            out.push(4);
            out.extend_from_slice(&a.ip().octets());
        }
    }
    out.extend_from_slice(&addr.port().to_be_bytes());
}

/// The header of a UDP ASSOCIATE datagram (RFC 1928 section 7).
#[derive(Debug, PartialEq, Eq)]
pub struct UdpHeader {
    /// The fragment number; anything but 0 (a whole datagram) is dropped,
    /// as fragmentation is optional and we do not reassemble.
    pub frag: u8,
    /// Where the payload goes.
    pub target: Target,
    /// Where the payload starts in the datagram.
    pub payload_offset: usize,
}

/// Parses the header of a datagram a client sends to its UDP relay:
/// RSV (2 bytes, 0), FRAG, address type, address, port, then the payload.
/// A datagram too short for its header is an error (it cannot grow).
pub fn parse_udp_header(datagram: &[u8]) -> Result<UdpHeader, Socks5Error> {
    let [reserved0, reserved1, frag, address_type, rest @ ..] = datagram else {
        return Err(Socks5Error::Truncated);
    };
    if *reserved0 != 0 || *reserved1 != 0 {
        return Err(Socks5Error::Reserved);
    }
    match parse_address(*address_type, rest)? {
        Parse::Incomplete => Err(Socks5Error::Truncated),
        Parse::Done(target, len) => Ok(UdpHeader {
            frag: *frag,
            target,
            payload_offset: 4 + len,
        }),
    }
}

/// A datagram for the client from `source`: the header, then `payload`.
pub fn encode_udp_datagram(source: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(22 + payload.len());
    out.extend_from_slice(&[0, 0, 0]);
    push_address(&mut out, source);
    out.extend_from_slice(payload);
    out
}

/// Reply codes (RFC 1928 section 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Reply {
    /// Succeeded.
    Succeeded = 0,
    /// General SOCKS server failure (also: a limit was reached).
    GeneralFailure = 1,
    /// Connection not allowed by ruleset.
    NotAllowed = 2,
    /// Network unreachable.
    NetworkUnreachable = 3,
    /// Host unreachable (also: the name did not resolve).
    HostUnreachable = 4,
    /// Connection refused.
    ConnectionRefused = 5,
    /// TTL expired (also: timed out).
    TtlExpired = 6,
    /// Command not supported.
    CommandNotSupported = 7,
    /// Address type not supported.
    AddressTypeNotSupported = 8,
}

/// The reply to a request, with `bound` as the server's address.
pub fn reply(code: Reply, bound: SocketAddr) -> Vec<u8> {
    let mut out = vec![VERSION, code as u8, 0];
    push_address(&mut out, bound);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The next number of a xorshift32 sequence (deterministic test input).
    fn xorshift(state: &mut u32) -> u32 {
        *state ^= *state << 13;
        *state ^= *state >> 17;
        *state ^= *state << 5;
        *state
    }

    #[test]
    fn greeting_reports_whether_the_method_is_offered() {
        assert_eq!(parse_greeting(&[5], 0), Ok(Parse::Incomplete));
        assert_eq!(parse_greeting(&[5, 2, 0], 0), Ok(Parse::Incomplete));
        assert_eq!(parse_greeting(&[5, 2, 0, 2], 2), Ok(Parse::Done(true, 4)));
        assert_eq!(parse_greeting(&[5, 1, 0, 9], 2), Ok(Parse::Done(false, 3)));
        assert_eq!(parse_greeting(&[4, 1, 0], 0), Err(Socks5Error::Version(4)));
        assert_eq!(parse_greeting(&[5, 0], 0), Err(Socks5Error::NoMethods));
    }

    #[test]
    fn credentials_are_split_by_their_lengths() {
        let input = [1, 3, b'b', b'o', b'b', 2, b'p', b'w', 0xaa];
        let expected = Credentials {
            username: b"bob",
            password: b"pw",
        };
        assert_eq!(parse_credentials(&input), Ok(Parse::Done(expected, 8)));
        for cut in 0..8 {
            assert_eq!(parse_credentials(&input[..cut]), Ok(Parse::Incomplete));
        }
        assert_eq!(parse_credentials(&[5, 0, 0]), Err(Socks5Error::Version(5)));
        let empty = Credentials {
            username: b"",
            password: b"",
        };
        assert_eq!(parse_credentials(&[1, 0, 0]), Ok(Parse::Done(empty, 3)));
    }

    #[test]
    fn requests_parse_every_address_type() {
        let v4 = [5, 1, 0, 1, 10, 0, 0, 2, 0, 80];
        let want = Request {
            command: Command::Connect,
            target: Target::Addr("10.0.0.2:80".parse().unwrap()),
        };
        assert_eq!(parse_request(&v4), Ok(Parse::Done(want, 10)));
        let mut v6 = vec![5, 1, 0, 4];
        v6.extend_from_slice(&"fd00::2".parse::<Ipv6Addr>().unwrap().octets());
        v6.extend_from_slice(&[0x1f, 0x90]);
        let Ok(Parse::Done(req, 22)) = parse_request(&v6) else {
            panic!("v6 request not parsed")
        };
        assert_eq!(req.target, Target::Addr("[fd00::2]:8080".parse().unwrap()));
        let mut name = vec![5, 1, 0, 3, 7];
        name.extend_from_slice(b"example");
        name.extend_from_slice(&[1, 187]);
        let Ok(Parse::Done(req, 14)) = parse_request(&name) else {
            panic!("name request not parsed")
        };
        assert_eq!(req.target, Target::Name("example".into(), 443));
        for cut in 0..name.len() {
            assert_eq!(parse_request(&name[..cut]), Ok(Parse::Incomplete));
        }
    }

    #[test]
    fn hostile_requests_are_errors_not_panics() {
        assert_eq!(
            parse_request(&[5, 1, 1, 1, 0, 0, 0, 0, 0, 0]),
            Err(Socks5Error::Reserved)
        );
        assert_eq!(
            parse_request(&[5, 1, 0, 9, 0]),
            Err(Socks5Error::AddressType(9))
        );
        assert_eq!(
            parse_request(&[5, 1, 0, 3, 0, 0, 80]),
            Err(Socks5Error::BadName)
        );
        assert_eq!(
            parse_request(&[5, 1, 0, 3, 2, b'a', b' ', 0, 80]),
            Err(Socks5Error::BadName)
        );
        let Ok(Parse::Done(req, _)) = parse_request(&[5, 3, 0, 1, 1, 2, 3, 4, 0, 53]) else {
            panic!("udp associate not parsed")
        };
        assert_eq!(req.command, Command::UdpAssociate);
        // Every input of up to 3 bytes, and random longer ones, parse without panicking.
        let mut state = 0x1234_5678_u32;
        for len in 0..300 {
            let bytes: Vec<u8> = (0..len).map(|_| (xorshift(&mut state) % 7) as u8).collect();
            let _ = parse_request(&bytes);
            let _ = parse_greeting(&bytes, 0);
            let _ = parse_credentials(&bytes);
        }
    }

    #[test]
    fn replies_carry_the_bound_address() {
        assert_eq!(
            reply(Reply::Succeeded, "10.0.0.1:4000".parse().unwrap()),
            vec![5, 0, 0, 1, 10, 0, 0, 1, 0x0f, 0xa0]
        );
        assert_eq!(
            reply(Reply::HostUnreachable, "[::1]:1".parse().unwrap()).len(),
            22
        );
        assert_eq!(credentials_reply(false), [1, 1]);
    }

    #[test]
    fn udp_headers_parse_every_address_type() {
        let v4 = [0, 0, 0, 1, 10, 0, 0, 2, 0, 53, b'h', b'i'];
        let header = parse_udp_header(&v4).unwrap();
        assert_eq!(header.frag, 0);
        assert_eq!(header.target, Target::Addr("10.0.0.2:53".parse().unwrap()));
        assert_eq!(&v4[header.payload_offset..], b"hi");
        let mut name = vec![0, 0, 0, 3, 4];
        name.extend_from_slice(b"dns1");
        name.extend_from_slice(&[0, 53]);
        let header = parse_udp_header(&name).unwrap();
        assert_eq!(header.target, Target::Name("dns1".into(), 53));
        assert_eq!(
            header.payload_offset,
            name.len(),
            "an empty payload is allowed"
        );
        let source: SocketAddr = "[fd00::1]:4000".parse().unwrap();
        let encoded = encode_udp_datagram(source, b"xyz");
        assert_eq!(encoded.len(), 3 + 1 + 16 + 2 + 3);
        let header = parse_udp_header(&encoded).unwrap();
        assert_eq!(header.target, Target::Addr(source));
        assert_eq!(&encoded[header.payload_offset..], b"xyz");
        let fragment = [0, 0, 1, 1, 10, 0, 0, 2, 0, 53];
        assert_eq!(parse_udp_header(&fragment).unwrap().frag, 1);
    }

    #[test]
    fn hostile_udp_headers_are_errors_not_panics() {
        assert_eq!(parse_udp_header(&[]), Err(Socks5Error::Truncated));
        assert_eq!(parse_udp_header(&[0, 0, 0]), Err(Socks5Error::Truncated));
        assert_eq!(
            parse_udp_header(&[0, 0, 0, 1, 10, 0, 0, 2, 0]),
            Err(Socks5Error::Truncated)
        );
        assert_eq!(
            parse_udp_header(&[0, 0, 0, 3, 200, b'a', b'b']),
            Err(Socks5Error::Truncated),
            "a name longer than the datagram"
        );
        assert_eq!(
            parse_udp_header(&[0, 1, 0, 1, 10, 0, 0, 2, 0, 53]),
            Err(Socks5Error::Reserved)
        );
        assert_eq!(
            parse_udp_header(&[0, 0, 0, 7, 1, 2, 3, 4, 5, 6]),
            Err(Socks5Error::AddressType(7))
        );
        assert_eq!(
            parse_udp_header(&[0, 0, 0, 3, 0, 0, 53]),
            Err(Socks5Error::BadName)
        );
        let mut state = 0x9e37_79b9_u32;
        for len in 0..400 {
            let bytes: Vec<u8> = (0..len)
                .map(|i| {
                    let r = xorshift(&mut state);
                    // Small values first, so that valid prefixes come up often.
                    if i < 4 {
                        (r % 5) as u8
                    } else {
                        r as u8
                    }
                })
                .collect();
            if let Ok(header) = parse_udp_header(&bytes) {
                assert!(header.payload_offset <= bytes.len());
            }
        }
    }
}
