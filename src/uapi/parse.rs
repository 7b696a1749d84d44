//! Reading requests: bounded line reading and the `set` body parser.

use std::fs;
use std::io::{self, BufRead};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use zeroize::Zeroizing;

use super::{DeviceOp, Errno, PeerOp, PeerUpdate, SetRequest};

/// The longest line accepted, without its `\n`. The longest valid line is
/// an `endpoint` with an IPv6 address and a zone name, under 100 bytes.
pub const MAX_LINE_LEN: usize = 4096;

/// The largest request accepted, in bytes from its op line to its blank
/// line. `wg setconf` of the kernel's 2^20 peers, each with a preshared key,
/// an endpoint, a keepalive and two allowed IPs, sends about 350 MiB (without
/// them about 150 MiB); the limit only stops a client from making the daemon
/// read and store forever (the parsed form of a request takes at most a few
/// times its text: a 40-byte op per line of 16 bytes or more, in vectors
/// that grow by doubling).
pub const MAX_REQUEST_LEN: u64 = 512 << 20;

/// Parses the body of a `set=1` request (the lines after the op line) up to
/// and including its terminating blank line.
///
/// Project decisions (they follow wireguard-go except where noted):
/// * The whole request is parsed before anything is applied, so a request
///   with any invalid line changes nothing (wireguard-go applies lines as it
///   reads them). After the first error the rest of the request, up to its
///   blank line, is still read (without being parsed) so that a connection
///   stays in step; the first error is returned.
/// * Lines end with `\n` only; nothing is trimmed. A line is split at its
///   first `=`; a line without `=` is [`Errno::PROTOCOL`] (`-EPROTO`).
///   Keys are case-sensitive; an unknown key is [`Errno::INVALID`].
/// * Device keys (`private_key`, `listen_port`, `fwmark`, `replace_peers`)
///   are valid only before the first `public_key`; afterwards they, like any
///   peer key before the first `public_key`, are `-EINVAL`.
/// * `replace_peers`, `replace_allowed_ips`, `update_only` and `remove`
///   accept only `true`; `protocol_version` accepts only `1` (and records
///   nothing).
/// * Keys are exactly 64 hex digits of either case. All zeros is valid: a
///   zero `private_key` removes the key, a zero `preshared_key` means none.
/// * Numbers are decimal digits only (no sign, no space, leading zeros
///   allowed) and must fit the field: port and keepalive `0..=65535`,
///   fwmark `0..=4294967295`.
/// * `endpoint` is numeric: `a.b.c.d:port` or `[v6]:port`, the IPv6 form
///   optionally with `%zone` before `]`, the zone being a numeric scope id
///   or an interface name (what `wg(8)` sends for link-local addresses,
///   resolved through `/sys/class/net/<name>/ifindex`). Host names are
///   rejected: `wg(8)` resolves them before sending.
/// * `allowed_ip` is `addr/cidr` with `cidr <= 32` (IPv4) or `<= 128`
///   (IPv6); host bits may be set (the engine masks them). A leading `-`
///   asks to remove the prefix.
/// * A line longer than [`MAX_LINE_LEN`] is `-EINVAL`. A request larger than
///   [`MAX_REQUEST_LEN`], one that ends before its blank line (EOF) or a
///   read error is [`Errno::IO`] (`-EIO`); the connection cannot continue
///   after those (wireguard-go applies a request cut short by EOF).
pub fn parse_set(body: impl BufRead) -> Result<SetRequest, Errno> {
    read_set_body(&mut LineReader::new(body)).result
}

/// How a line read ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LineKind {
    /// A whole line; its content (without `\n`) is in [`LineReader::line`].
    Complete,
    /// A line longer than [`MAX_LINE_LEN`]; it was consumed and dropped.
    TooLong,
}

/// Why no line could be read: the connection is out of step afterwards.
#[derive(Debug)]
pub(super) enum ReadError {
    /// End of input; `mid_line` tells whether part of a line had been read.
    Eof { mid_line: bool },
    /// The current request passed [`MAX_REQUEST_LEN`].
    RequestTooLarge,
    /// The underlying reader failed.
    Io(io::Error),
}

impl ReadError {
    /// The error to hand back to whoever serves the connection.
    pub(super) fn into_io_error(self) -> io::Error {
        match self {
            ReadError::Eof { .. } => io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "UAPI request ended before its blank line",
            ),
            ReadError::RequestTooLarge => io::Error::new(
                io::ErrorKind::InvalidData,
                "UAPI request larger than the limit",
            ),
            ReadError::Io(error) => error,
        }
    }
}

/// Reads `\n`-terminated lines with bounded memory: at most
/// [`MAX_LINE_LEN`] bytes are kept per line and at most a request limit is
/// read per request.
pub(super) struct LineReader<R> {
    inner: R,
    /// The current line without its `\n`; it may hold key material, so its
    /// whole capacity is wiped on drop.
    line: Zeroizing<Vec<u8>>,
    request_bytes: u64,
    request_limit: u64,
}

impl<R: BufRead> LineReader<R> {
    /// A reader with the default request limit.
    pub(super) fn new(inner: R) -> Self {
        Self::with_request_limit(inner, MAX_REQUEST_LEN)
    }

    /// A reader that stops a request after `request_limit` bytes.
    pub(super) fn with_request_limit(inner: R, request_limit: u64) -> Self {
        LineReader {
            inner,
            line: Zeroizing::new(Vec::new()),
            request_bytes: 0,
            request_limit,
        }
    }

    /// The wrapped reader (to write answers on the same stream).
    pub(super) fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// Starts counting the bytes of a new request.
    pub(super) fn start_request(&mut self) {
        self.request_bytes = 0;
    }

    /// The content of the last [`LineKind::Complete`] line.
    pub(super) fn line(&self) -> &[u8] {
        &self.line
    }

    /// Reads the next line.
    pub(super) fn next_line(&mut self) -> Result<LineKind, ReadError> {
        self.line.clear();
        let mut too_long = false;
        loop {
            let available = match self.inner.fill_buf() {
                Ok(available) => available,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(ReadError::Io(error)),
            };
            if available.is_empty() {
                let mid_line = too_long || !self.line.is_empty();
                return Err(ReadError::Eof { mid_line });
            }
            let newline = available.iter().position(|&byte| byte == b'\n');
            let (content, consumed) = match newline {
                Some(index) => (&available[..index], index + 1),
                None => (available, available.len()),
            };
            if !too_long && self.line.len() + content.len() > MAX_LINE_LEN {
                too_long = true;
                self.line.clear();
            }
            if !too_long {
                self.line.extend_from_slice(content);
            }
            self.inner.consume(consumed);
            self.request_bytes = self.request_bytes.saturating_add(consumed as u64);
            if self.request_bytes > self.request_limit {
                return Err(ReadError::RequestTooLarge);
            }
            if newline.is_some() {
                return Ok(if too_long {
                    LineKind::TooLong
                } else {
                    LineKind::Complete
                });
            }
        }
    }

    /// Reads and drops lines up to and including the next blank line.
    pub(super) fn skip_to_blank_line(&mut self) -> Result<(), ReadError> {
        loop {
            if self.next_line()? == LineKind::Complete && self.line.is_empty() {
                return Ok(());
            }
        }
    }
}

/// The result of reading a request body.
pub(super) struct BodyOutcome<T> {
    /// What the body meant, or the errno to answer.
    pub(super) result: Result<T, Errno>,
    /// Set when the body could not be read to its blank line: the
    /// connection is out of step and must end after the answer.
    pub(super) out_of_step: Option<io::Error>,
}

impl<T> BodyOutcome<T> {
    fn in_step(result: Result<T, Errno>) -> Self {
        BodyOutcome {
            result,
            out_of_step: None,
        }
    }

    fn out_of_step(error: ReadError) -> Self {
        BodyOutcome {
            result: Err(Errno::IO),
            out_of_step: Some(error.into_io_error()),
        }
    }
}

/// Reads and parses a `set` body; see [`parse_set`] for the rules.
pub(super) fn read_set_body<R: BufRead>(lines: &mut LineReader<R>) -> BodyOutcome<SetRequest> {
    // Once a line is invalid the partial request is dropped and the rest of
    // the body is only read, not parsed.
    let mut state: Result<SetBuilder, Errno> = Ok(SetBuilder::default());
    loop {
        let kind = match lines.next_line() {
            Ok(kind) => kind,
            Err(error) => return BodyOutcome::out_of_step(error),
        };
        let line = lines.line();
        if kind == LineKind::Complete && line.is_empty() {
            return BodyOutcome::in_step(state.map(SetBuilder::finish));
        }
        if let Ok(builder) = &mut state {
            let applied = match kind {
                LineKind::Complete => builder.apply_line(line),
                LineKind::TooLong => Err(Errno::INVALID),
            };
            if let Err(errno) = applied {
                state = Err(errno);
            }
        }
    }
}

/// Reads the body of a `get=1` request, which must be a single blank line;
/// anything else is `-EINVAL` (after reading up to the next blank line).
pub(super) fn read_get_body<R: BufRead>(lines: &mut LineReader<R>) -> BodyOutcome<()> {
    match lines.next_line() {
        Ok(LineKind::Complete) if lines.line().is_empty() => BodyOutcome::in_step(Ok(())),
        Ok(_) => match lines.skip_to_blank_line() {
            Ok(()) => BodyOutcome::in_step(Err(Errno::INVALID)),
            Err(error) => BodyOutcome::out_of_step(error),
        },
        Err(error) => BodyOutcome::out_of_step(error),
    }
}

/// Accumulates a `set` request line by line.
#[derive(Default)]
struct SetBuilder {
    request: SetRequest,
    current_peer: Option<PeerUpdate>,
}

impl SetBuilder {
    fn apply_line(&mut self, line: &[u8]) -> Result<(), Errno> {
        let separator = line
            .iter()
            .position(|&byte| byte == b'=')
            .ok_or(Errno::PROTOCOL)?;
        let (key, rest) = line.split_at(separator);
        let value = rest.get(1..).unwrap_or_default();
        let value = std::str::from_utf8(value).map_err(|_| Errno::INVALID)?;
        if key == b"public_key" {
            let public_key = *parse_key(value)?;
            self.start_peer(public_key);
            return Ok(());
        }
        match &mut self.current_peer {
            None => {
                let op = parse_device_line(key, value)?;
                self.request.device.push(op);
            }
            Some(peer) => apply_peer_line(peer, key, value)?,
        }
        Ok(())
    }

    fn start_peer(&mut self, public_key: [u8; 32]) {
        let next = PeerUpdate {
            public_key,
            remove: false,
            update_only: false,
            ops: Vec::new(),
        };
        if let Some(finished) = self.current_peer.replace(next) {
            self.request.peers.push(finished);
        }
    }

    fn finish(mut self) -> SetRequest {
        if let Some(last) = self.current_peer.take() {
            self.request.peers.push(last);
        }
        self.request
    }
}

fn parse_device_line(key: &[u8], value: &str) -> Result<DeviceOp, Errno> {
    match key {
        b"private_key" => Ok(DeviceOp::PrivateKey(parse_key(value)?)),
        b"listen_port" => Ok(DeviceOp::ListenPort(parse_decimal(value)?)),
        b"fwmark" => Ok(DeviceOp::Fwmark(parse_decimal(value)?)),
        b"replace_peers" => parse_true(value).map(|()| DeviceOp::ReplacePeers),
        _ => Err(Errno::INVALID),
    }
}

fn apply_peer_line(peer: &mut PeerUpdate, key: &[u8], value: &str) -> Result<(), Errno> {
    match key {
        b"update_only" => {
            parse_true(value)?;
            peer.update_only = true;
        }
        b"remove" => {
            parse_true(value)?;
            peer.remove = true;
        }
        b"preshared_key" => peer.ops.push(PeerOp::PresharedKey(parse_key(value)?)),
        b"endpoint" => peer.ops.push(PeerOp::Endpoint(parse_endpoint(value)?)),
        b"persistent_keepalive_interval" => {
            let seconds = parse_decimal(value)?;
            peer.ops.push(PeerOp::PersistentKeepalive(seconds));
        }
        b"replace_allowed_ips" => {
            parse_true(value)?;
            peer.ops.push(PeerOp::ReplaceAllowedIps);
        }
        b"allowed_ip" => peer.ops.push(parse_allowed_ip(value)?),
        b"protocol_version" if value == "1" => {}
        _ => return Err(Errno::INVALID),
    }
    Ok(())
}

fn parse_true(value: &str) -> Result<(), Errno> {
    if value == "true" {
        Ok(())
    } else {
        Err(Errno::INVALID)
    }
}

/// Exactly 64 hex digits of either case.
fn parse_key(value: &str) -> Result<Zeroizing<[u8; 32]>, Errno> {
    let digits = value.as_bytes();
    if digits.len() != 64 {
        return Err(Errno::INVALID);
    }
    let mut key = Zeroizing::new([0u8; 32]);
    for (byte, pair) in key.iter_mut().zip(digits.chunks_exact(2)) {
        let (high, low) = match pair {
            [high, low] => (hex_value(*high)?, hex_value(*low)?),
            _ => return Err(Errno::INVALID),
        };
        *byte = (high << 4) | low;
    }
    Ok(key)
}

fn hex_value(digit: u8) -> Result<u8, Errno> {
    match digit {
        b'0'..=b'9' => Ok(digit - b'0'),
        b'a'..=b'f' => Ok(digit - b'a' + 10),
        b'A'..=b'F' => Ok(digit - b'A' + 10),
        _ => Err(Errno::INVALID),
    }
}

/// Decimal digits only, fitting `T`.
fn parse_decimal<T: TryFrom<u64>>(value: &str) -> Result<T, Errno> {
    if value.is_empty() {
        return Err(Errno::INVALID);
    }
    let mut number: u64 = 0;
    for digit in value.bytes() {
        if !digit.is_ascii_digit() {
            return Err(Errno::INVALID);
        }
        number = number
            .checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(digit - b'0')))
            .ok_or(Errno::INVALID)?;
    }
    T::try_from(number).map_err(|_| Errno::INVALID)
}

/// `a.b.c.d:port` or `[v6]:port` / `[v6%zone]:port`.
fn parse_endpoint(value: &str) -> Result<SocketAddr, Errno> {
    if let Some(bracketed) = value.strip_prefix('[') {
        let (host, port) = bracketed.split_once("]:").ok_or(Errno::INVALID)?;
        let (address, scope_id) = match host.split_once('%') {
            Some((address, zone)) => (address, parse_zone(zone)?),
            None => (host, 0),
        };
        let address: Ipv6Addr = address.parse().map_err(|_| Errno::INVALID)?;
        let port = parse_decimal(port)?;
        Ok(SocketAddr::V6(SocketAddrV6::new(
            address, port, 0, scope_id,
        )))
    } else {
        let (host, port) = value.rsplit_once(':').ok_or(Errno::INVALID)?;
        let address: Ipv4Addr = host.parse().map_err(|_| Errno::INVALID)?;
        let port = parse_decimal(port)?;
        Ok(SocketAddr::V4(SocketAddrV4::new(address, port)))
    }
}

/// A numeric scope id, or an interface name turned into its index.
fn parse_zone(zone: &str) -> Result<u32, Errno> {
    if zone.bytes().all(|byte| byte.is_ascii_digit()) {
        return parse_decimal(zone);
    }
    interface_index(zone).ok_or(Errno::INVALID)
}

/// The index of a network interface, read from sysfs (Linux). Names are
/// checked like the kernel's `dev_valid_name` so that the path cannot
/// leave `/sys/class/net`.
fn interface_index(name: &str) -> Option<u32> {
    const MAX_INTERFACE_NAME: usize = 15; // IFNAMSIZ - 1
    let valid = !name.is_empty()
        && name.len() <= MAX_INTERFACE_NAME
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|byte| matches!(byte, b'/' | b':' | b'\0') || byte.is_ascii_whitespace());
    if !valid {
        return None;
    }
    let text = fs::read_to_string(format!("/sys/class/net/{name}/ifindex")).ok()?;
    let index: u32 = parse_decimal(text.trim_end_matches('\n')).ok()?;
    (index != 0).then_some(index)
}

/// `addr/cidr`, with a leading `-` for removal.
fn parse_allowed_ip(value: &str) -> Result<PeerOp, Errno> {
    let (remove, prefix) = match value.strip_prefix('-') {
        Some(prefix) => (true, prefix),
        None => (false, value),
    };
    let (address, cidr) = prefix.split_once('/').ok_or(Errno::INVALID)?;
    let address: IpAddr = address.parse().map_err(|_| Errno::INVALID)?;
    let cidr: u8 = parse_decimal(cidr)?;
    let max_cidr = if address.is_ipv4() { 32 } else { 128 };
    if cidr > max_cidr {
        return Err(Errno::INVALID);
    }
    Ok(if remove {
        PeerOp::RemoveAllowedIp(address, cidr)
    } else {
        PeerOp::AddAllowedIp(address, cidr)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::fmt::Write as _;
    use std::io::Cursor;

    fn parse_text(text: &str) -> Result<SetRequest, Errno> {
        parse_set(Cursor::new(text.as_bytes()))
    }

    fn key(hex: &str) -> [u8; 32] {
        *parse_key(hex).unwrap()
    }

    fn secret(hex: &str) -> Zeroizing<[u8; 32]> {
        parse_key(hex).unwrap()
    }

    fn v4(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    /// The `set` example of the xplatform page (the body after `set=1`).
    const XPLATFORM_SET_BODY: &str = "\
private_key=e84b5a6d2717c1003a13b431570353dbaca9146cf150c5f8575680feba52027a
fwmark=0
listen_port=12912
replace_peers=true
public_key=b85996fecc9c7f1fc6d2572a76eda11d59bcd20be8e543b15ce4bd85a8e75a33
preshared_key=188515093e952f5f22e865cef3012e72f8b5f0b598ac0309d5dacce3b70fcf52
replace_allowed_ips=true
allowed_ip=192.168.4.4/32
endpoint=[abcd:23::33%2]:51820
public_key=58402e695ba1772b1cc9309755f043251ea77fdcf10fbe63989ceb7e19321376
replace_allowed_ips=true
allowed_ip=192.168.4.6/32
persistent_keepalive_interval=111
endpoint=182.122.22.19:3233
public_key=662e14fd594556f522604703340351258903b64f35553763f19426ab2a515c58
endpoint=5.152.198.39:51820
replace_allowed_ips=true
allowed_ip=192.168.4.10/32
allowed_ip=192.168.4.11/32
public_key=e818b58db5274087fcc1be5dc728cf53d3b5726b4cef6b9bab8f8f8c2452c25c
remove=true

";

    fn peer(public_key: &str, ops: Vec<PeerOp>) -> PeerUpdate {
        PeerUpdate {
            public_key: key(public_key),
            remove: false,
            update_only: false,
            ops,
        }
    }

    #[test]
    fn xplatform_example_parses() {
        let expected = SetRequest {
            device: vec![
                DeviceOp::PrivateKey(secret(
                    "e84b5a6d2717c1003a13b431570353dbaca9146cf150c5f8575680feba52027a",
                )),
                DeviceOp::Fwmark(0),
                DeviceOp::ListenPort(12912),
                DeviceOp::ReplacePeers,
            ],
            peers: vec![
                peer(
                    "b85996fecc9c7f1fc6d2572a76eda11d59bcd20be8e543b15ce4bd85a8e75a33",
                    vec![
                        PeerOp::PresharedKey(secret(
                            "188515093e952f5f22e865cef3012e72f8b5f0b598ac0309d5dacce3b70fcf52",
                        )),
                        PeerOp::ReplaceAllowedIps,
                        PeerOp::AddAllowedIp(v4("192.168.4.4"), 32),
                        PeerOp::Endpoint(SocketAddr::V6(SocketAddrV6::new(
                            "abcd:23::33".parse().unwrap(),
                            51820,
                            0,
                            2,
                        ))),
                    ],
                ),
                peer(
                    "58402e695ba1772b1cc9309755f043251ea77fdcf10fbe63989ceb7e19321376",
                    vec![
                        PeerOp::ReplaceAllowedIps,
                        PeerOp::AddAllowedIp(v4("192.168.4.6"), 32),
                        PeerOp::PersistentKeepalive(111),
                        PeerOp::Endpoint("182.122.22.19:3233".parse().unwrap()),
                    ],
                ),
                peer(
                    "662e14fd594556f522604703340351258903b64f35553763f19426ab2a515c58",
                    vec![
                        PeerOp::Endpoint("5.152.198.39:51820".parse().unwrap()),
                        PeerOp::ReplaceAllowedIps,
                        PeerOp::AddAllowedIp(v4("192.168.4.10"), 32),
                        PeerOp::AddAllowedIp(v4("192.168.4.11"), 32),
                    ],
                ),
                PeerUpdate {
                    remove: true,
                    ..peer(
                        "e818b58db5274087fcc1be5dc728cf53d3b5726b4cef6b9bab8f8f8c2452c25c",
                        vec![],
                    )
                },
            ],
        };
        assert_eq!(parse_text(XPLATFORM_SET_BODY), Ok(expected));
    }

    /// Writes a request the way `wg(8)` would (test-only inverse of the
    /// parser).
    fn to_set_text(request: &SetRequest) -> String {
        fn hex(bytes: &[u8; 32]) -> String {
            bytes.iter().map(|byte| format!("{byte:02X}")).collect()
        }
        let mut text = String::new();
        for op in &request.device {
            let line = match op {
                DeviceOp::PrivateKey(key) => format!("private_key={}", hex(key)),
                DeviceOp::ListenPort(port) => format!("listen_port={port}"),
                DeviceOp::Fwmark(mark) => format!("fwmark={mark}"),
                DeviceOp::ReplacePeers => "replace_peers=true".to_string(),
            };
            writeln!(text, "{line}").unwrap();
        }
        for peer in &request.peers {
            writeln!(text, "public_key={}", hex(&peer.public_key)).unwrap();
            if peer.update_only {
                text.push_str("update_only=true\n");
            }
            if peer.remove {
                text.push_str("remove=true\n");
            }
            text.push_str("protocol_version=1\n");
            for op in &peer.ops {
                let line = match op {
                    PeerOp::PresharedKey(key) => format!("preshared_key={}", hex(key)),
                    PeerOp::Endpoint(endpoint) => format!("endpoint={endpoint}"),
                    PeerOp::PersistentKeepalive(seconds) => {
                        format!("persistent_keepalive_interval={seconds}")
                    }
                    PeerOp::ReplaceAllowedIps => "replace_allowed_ips=true".to_string(),
                    PeerOp::AddAllowedIp(address, cidr) => format!("allowed_ip={address}/{cidr}"),
                    PeerOp::RemoveAllowedIp(address, cidr) => {
                        format!("allowed_ip=-{address}/{cidr}")
                    }
                };
                writeln!(text, "{line}").unwrap();
            }
        }
        text.push('\n');
        text
    }

    #[test]
    fn every_key_round_trips() {
        let request = SetRequest {
            device: vec![
                DeviceOp::PrivateKey(Zeroizing::new([0xfe; 32])),
                DeviceOp::PrivateKey(Zeroizing::new([0; 32])),
                DeviceOp::ListenPort(65535),
                DeviceOp::ListenPort(0),
                DeviceOp::Fwmark(u32::MAX),
                DeviceOp::ReplacePeers,
            ],
            peers: vec![
                PeerUpdate {
                    public_key: [1; 32],
                    remove: false,
                    update_only: true,
                    ops: vec![
                        PeerOp::PresharedKey(Zeroizing::new([2; 32])),
                        PeerOp::Endpoint("[::ffff:1.2.3.4]:0".parse().unwrap()),
                        PeerOp::Endpoint("0.0.0.0:65535".parse().unwrap()),
                        PeerOp::PersistentKeepalive(65535),
                        PeerOp::ReplaceAllowedIps,
                        PeerOp::AddAllowedIp("10.1.2.3".parse().unwrap(), 8),
                        PeerOp::AddAllowedIp("::".parse().unwrap(), 0),
                        PeerOp::AddAllowedIp("fe80::1".parse().unwrap(), 128),
                        PeerOp::RemoveAllowedIp("10.0.0.0".parse().unwrap(), 32),
                        PeerOp::RemoveAllowedIp("2001:db8::".parse().unwrap(), 32),
                    ],
                },
                PeerUpdate {
                    public_key: [3; 32],
                    remove: true,
                    update_only: false,
                    ops: vec![],
                },
                PeerUpdate {
                    public_key: [1; 32],
                    remove: false,
                    update_only: false,
                    ops: vec![PeerOp::PresharedKey(Zeroizing::new([0; 32]))],
                },
            ],
        };
        assert_eq!(parse_text(&to_set_text(&request)), Ok(request));
    }

    #[test]
    fn empty_body_is_an_empty_request() {
        assert_eq!(parse_text("\n"), Ok(SetRequest::default()));
    }

    #[test]
    fn interface_zone_names_resolve_through_sysfs() {
        let Ok(index) = fs::read_to_string("/sys/class/net/lo/ifindex") else {
            return; // no sysfs here: nothing to compare with
        };
        let index: u32 = index.trim().parse().unwrap();
        let request = parse_text(&format!(
            "public_key={}\nendpoint=[fe80::1%lo]:9\n\n",
            "00".repeat(32)
        ));
        let expected = SocketAddrV6::new("fe80::1".parse().unwrap(), 9, 0, index);
        assert_eq!(
            request.unwrap().peers[0].ops,
            vec![PeerOp::Endpoint(SocketAddr::V6(expected))]
        );
    }

    const PEER: &str =
        "public_key=0000000000000000000000000000000000000000000000000000000000000001\n";

    #[test]
    fn malformed_requests_get_the_right_errno_and_no_request() {
        let long_value = "1".repeat(MAX_LINE_LEN);
        let cases: Vec<(String, Errno)> = vec![
            ("bogus=1\n\n".into(), Errno::INVALID),
            ("Listen_port=1\n\n".into(), Errno::INVALID),
            ("listen_port =1\n\n".into(), Errno::INVALID),
            ("=\n\n".into(), Errno::INVALID),
            ("listen_port\n\n".into(), Errno::PROTOCOL),
            ("private_key=zz4b5a6d2717c1003a13b431570353dbaca9146cf150c5f8575680feba52027a\n\n".into(), Errno::INVALID),
            ("private_key=e84b5a6d2717c1003a13b431570353dbaca9146cf150c5f8575680feba5202\n\n".into(), Errno::INVALID),
            ("private_key=e84b5a6d2717c1003a13b431570353dbaca9146cf150c5f8575680feba52027a00\n\n".into(), Errno::INVALID),
            ("private_key=\n\n".into(), Errno::INVALID),
            ("public_key=e84b\n\n".into(), Errno::INVALID),
            (format!("{PEER}listen_port=1\n\n"), Errno::INVALID),
            (format!("{PEER}private_key={}\n\n", "00".repeat(32)), Errno::INVALID),
            (format!("{PEER}fwmark=1\n\n"), Errno::INVALID),
            (format!("{PEER}replace_peers=true\n\n"), Errno::INVALID),
            ("endpoint=1.2.3.4:5\n\n".into(), Errno::INVALID),
            ("listen_port=65536\n\n".into(), Errno::INVALID),
            ("listen_port=-1\n\n".into(), Errno::INVALID),
            ("listen_port=+1\n\n".into(), Errno::INVALID),
            ("listen_port=\n\n".into(), Errno::INVALID),
            ("listen_port= 1\n\n".into(), Errno::INVALID),
            ("listen_port=1 \n\n".into(), Errno::INVALID),
            ("listen_port=1\r\n\n".into(), Errno::INVALID),
            ("listen_port=0x10\n\n".into(), Errno::INVALID),
            ("fwmark=4294967296\n\n".into(), Errno::INVALID),
            ("fwmark=99999999999999999999999\n\n".into(), Errno::INVALID),
            (format!("{PEER}persistent_keepalive_interval=65536\n\n"), Errno::INVALID),
            ("replace_peers=false\n\n".into(), Errno::INVALID),
            ("replace_peers=TRUE\n\n".into(), Errno::INVALID),
            (format!("{PEER}remove=false\n\n"), Errno::INVALID),
            (format!("{PEER}update_only=1\n\n"), Errno::INVALID),
            (format!("{PEER}replace_allowed_ips=yes\n\n"), Errno::INVALID),
            (format!("{PEER}protocol_version=2\n\n"), Errno::INVALID),
            (format!("{PEER}protocol_version=\n\n"), Errno::INVALID),
            (format!("{PEER}own_public_key=1\n\n"), Errno::INVALID),
            (format!("{PEER}preshared_key=00\n\n"), Errno::INVALID),
            (format!("{PEER}endpoint=example.com:51820\n\n"), Errno::INVALID),
            (format!("{PEER}endpoint=1.2.3.4\n\n"), Errno::INVALID),
            (format!("{PEER}endpoint=1.2.3.4:\n\n"), Errno::INVALID),
            (format!("{PEER}endpoint=1.2.3.4:65536\n\n"), Errno::INVALID),
            (format!("{PEER}endpoint=::1:51820\n\n"), Errno::INVALID),
            (format!("{PEER}endpoint=[::1]51820\n\n"), Errno::INVALID),
            (format!("{PEER}endpoint=[::1]\n\n"), Errno::INVALID),
            (format!("{PEER}endpoint=[1.2.3.4]:1\n\n"), Errno::INVALID),
            (format!("{PEER}endpoint=[fe80::1%]:1\n\n"), Errno::INVALID),
            (format!("{PEER}endpoint=[fe80::1%4294967296]:1\n\n"), Errno::INVALID),
            (format!("{PEER}endpoint=[fe80::1%../lo]:1\n\n"), Errno::INVALID),
            (format!("{PEER}endpoint=[fe80::1%no-such-if0]:1\n\n"), Errno::INVALID),
            (format!("{PEER}endpoint=1.2.3.4%2:1\n\n"), Errno::INVALID),
            (format!("{PEER}allowed_ip=10.0.0.0/33\n\n"), Errno::INVALID),
            (format!("{PEER}allowed_ip=::/129\n\n"), Errno::INVALID),
            (format!("{PEER}allowed_ip=10.0.0.0\n\n"), Errno::INVALID),
            (format!("{PEER}allowed_ip=10.0.0.0/\n\n"), Errno::INVALID),
            (format!("{PEER}allowed_ip=+10.0.0.0/8\n\n"), Errno::INVALID),
            (format!("{PEER}allowed_ip=--10.0.0.0/8\n\n"), Errno::INVALID),
            (format!("{PEER}allowed_ip=10.0.0.0/8,10.1.0.0/16\n\n"), Errno::INVALID),
            (format!("{PEER}allowed_ip=fe80::1%2/64\n\n"), Errno::INVALID),
            (format!("listen_port={long_value}\n\n"), Errno::INVALID),
            ("listen_port=1\0\n\n".into(), Errno::INVALID),
            ("\0=1\n\n".into(), Errno::INVALID),
            ("\0\n\n".into(), Errno::PROTOCOL),
            // The first error wins, later lines are not parsed.
            ("listen_port\nbogus=1\n\n".into(), Errno::PROTOCOL),
            ("bogus=1\nlisten_port\n\n".into(), Errno::INVALID),
            // Missing blank line: the request never ends.
            ("listen_port=1\n".into(), Errno::IO),
            ("listen_port=1".into(), Errno::IO),
            ("".into(), Errno::IO),
            ("bogus=1\n".into(), Errno::IO),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_text(&text), Err(expected), "request {text:?}");
        }
    }

    #[test]
    fn binary_junk_is_rejected() {
        let junk: &[u8] = b"\xff\xfe=\x80\x00\n\x01\x02=\xc3\x28\n\n";
        assert_eq!(parse_set(Cursor::new(junk)), Err(Errno::INVALID));
        let bad_utf8_value: &[u8] = b"listen_port=\xc3\x28\n\n";
        assert_eq!(parse_set(Cursor::new(bad_utf8_value)), Err(Errno::INVALID));
    }

    #[test]
    fn an_error_consumes_the_rest_of_its_request() {
        let text = "bogus=1\nlisten_port=1\n\nlisten_port=2\n\n";
        let mut lines = LineReader::new(Cursor::new(text.as_bytes()));
        assert_eq!(read_set_body(&mut lines).result, Err(Errno::INVALID));
        let next = read_set_body(&mut lines);
        assert!(next.out_of_step.is_none());
        assert_eq!(
            next.result,
            Ok(SetRequest {
                device: vec![DeviceOp::ListenPort(2)],
                peers: vec![],
            })
        );
    }

    #[test]
    fn lines_at_the_length_limit_are_accepted() {
        // A valid number padded with leading zeros to exactly the limit.
        let prefix = "listen_port=";
        let digits = "0".repeat(MAX_LINE_LEN - prefix.len() - 1) + "7";
        let text = format!("{prefix}{digits}\n\n");
        assert_eq!(
            parse_text(&text),
            Ok(SetRequest {
                device: vec![DeviceOp::ListenPort(7)],
                peers: vec![],
            })
        );
        let over = format!("{prefix}0{digits}\n\n");
        assert_eq!(parse_text(&over), Err(Errno::INVALID));
    }

    #[test]
    fn request_limit_stops_reading() {
        let text = "replace_peers=true\n".repeat(100) + "\n";
        let mut lines = LineReader::with_request_limit(Cursor::new(text.as_bytes()), 500);
        let outcome = read_set_body(&mut lines);
        assert_eq!(outcome.result, Err(Errno::IO));
        let reason = outcome.out_of_step.expect("the connection is out of step");
        assert_eq!(reason.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn get_body_must_be_one_blank_line() {
        let mut lines = LineReader::new(Cursor::new(&b"\nx\n\n"[..]));
        assert_eq!(read_get_body(&mut lines).result, Ok(()));
        let second = read_get_body(&mut lines);
        assert_eq!(second.result, Err(Errno::INVALID));
        assert!(second.out_of_step.is_none());
        let mut truncated = LineReader::new(Cursor::new(&b"x\n"[..]));
        assert!(read_get_body(&mut truncated).out_of_step.is_some());
    }

    /// Strategy for requests that exercise every op with arbitrary values.
    fn arbitrary_request() -> impl Strategy<Value = SetRequest> {
        let ip = prop_oneof![
            any::<[u8; 4]>().prop_map(|octets| (IpAddr::from(octets), 32u8)),
            any::<[u8; 16]>().prop_map(|octets| (IpAddr::from(octets), 128u8)),
        ];
        let prefix =
            (ip, any::<u8>()).prop_map(|((address, max), cidr)| (address, cidr % (max + 1)));
        let endpoint = prop_oneof![
            (any::<[u8; 4]>(), any::<u16>()).prop_map(|(a, port)| SocketAddr::from((a, port))),
            (any::<[u8; 16]>(), any::<u16>(), any::<u32>()).prop_map(|(a, port, scope)| {
                SocketAddr::V6(SocketAddrV6::new(a.into(), port, 0, scope))
            }),
        ];
        let peer_op = prop_oneof![
            any::<[u8; 32]>().prop_map(|k| PeerOp::PresharedKey(Zeroizing::new(k))),
            endpoint.prop_map(PeerOp::Endpoint),
            any::<u16>().prop_map(PeerOp::PersistentKeepalive),
            Just(PeerOp::ReplaceAllowedIps),
            prefix.clone().prop_map(|(a, c)| PeerOp::AddAllowedIp(a, c)),
            prefix.prop_map(|(a, c)| PeerOp::RemoveAllowedIp(a, c)),
        ];
        let peer = (
            any::<[u8; 32]>(),
            any::<bool>(),
            any::<bool>(),
            proptest::collection::vec(peer_op, 0..8),
        )
            .prop_map(|(public_key, remove, update_only, ops)| PeerUpdate {
                public_key,
                remove,
                update_only,
                ops,
            });
        let device_op = prop_oneof![
            any::<[u8; 32]>().prop_map(|k| DeviceOp::PrivateKey(Zeroizing::new(k))),
            any::<u16>().prop_map(DeviceOp::ListenPort),
            any::<u32>().prop_map(DeviceOp::Fwmark),
            Just(DeviceOp::ReplacePeers),
        ];
        (
            proptest::collection::vec(device_op, 0..6),
            proptest::collection::vec(peer, 0..5),
        )
            .prop_map(|(device, peers)| SetRequest { device, peers })
    }

    proptest! {
        #[test]
        fn parse_set_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = parse_set(Cursor::new(bytes));
        }

        #[test]
        fn parse_set_never_panics_on_plausible_lines(
            lines in proptest::collection::vec(
                (
                    prop_oneof![
                        Just("public_key"), Just("private_key"), Just("listen_port"),
                        Just("endpoint"), Just("allowed_ip"), Just("remove"),
                        Just("persistent_keepalive_interval"), Just("fwmark"),
                    ],
                    "[-0-9a-fA-F:.%/\\[\\]]{0,80}",
                ),
                0..20,
            )
        ) {
            let mut text: String = lines.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
            text.push('\n');
            let _ = parse_text(&text);
        }

        #[test]
        fn generated_requests_round_trip(request in arbitrary_request()) {
            prop_assert_eq!(parse_text(&to_set_text(&request)), Ok(request));
        }
    }
}
