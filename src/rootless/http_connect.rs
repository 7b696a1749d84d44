//! The HTTP proxy's request parser: the request line and headers up to the
//! blank line, at most [`MAX_HEAD_LEN`] bytes. Two kinds are served:
//! CONNECT (RFC 9110 section 9.3.6), and plain HTTP requests in absolute
//! form (`GET http://host/path HTTP/1.1`, RFC 9112 section 3.2.2), which are
//! rewritten to origin form for the server, one request per connection
//! (`Connection: close`). Anything else is answered with 405.

use base64::Engine as _;

use super::socks5::Target;

/// The largest request head accepted (line and headers).
pub const MAX_HEAD_LEN: usize = 8192;

/// A parsed request.
#[derive(Debug, PartialEq, Eq)]
pub struct ConnectRequest {
    /// Where to connect.
    pub target: Target,
    /// For a plain HTTP request: the head to send the server (origin form,
    /// without the proxy's own headers, with `Connection: close`); None
    /// for CONNECT.
    pub forward: Option<Vec<u8>>,
    /// The decoded `Proxy-Authorization: Basic` user and password, if sent.
    pub credentials: Option<(String, String)>,
    /// Bytes of the head (through the blank line).
    pub head_len: usize,
}

/// Why a request head was refused, with the status to answer.
#[derive(Debug, PartialEq, Eq)]
pub enum HttpError {
    /// Longer than [`MAX_HEAD_LEN`] without a blank line: 431.
    TooLong,
    /// Not a well-formed request: 400.
    Malformed,
    /// Neither CONNECT nor a request for an `http://` URI: 405.
    Method,
}

impl HttpError {
    /// The status line and headers to answer with.
    pub fn response(&self) -> &'static [u8] {
        match self {
            HttpError::TooLong => {
                b"HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\n\r\n"
            }
            HttpError::Malformed => b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n",
            HttpError::Method => b"HTTP/1.1 405 Method Not Allowed\r\nConnection: close\r\n\r\n",
        }
    }
}

/// The answer once the tunnel connection is up.
pub const ESTABLISHED: &[u8] = b"HTTP/1.1 200 Connection established\r\n\r\n";
/// The answer when credentials are missing or wrong.
pub const AUTH_REQUIRED: &[u8] = b"HTTP/1.1 407 Proxy Authentication Required\r\n\
Proxy-Authenticate: Basic realm=\"ferroguard\"\r\nConnection: close\r\n\r\n";
/// The answer when a limit refuses the connection.
pub const UNAVAILABLE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n\r\n";
/// The answer when the target cannot be reached or resolved.
pub const BAD_GATEWAY: &[u8] = b"HTTP/1.1 502 Bad Gateway\r\nConnection: close\r\n\r\n";
/// The answer when the target did not answer in time.
pub const GATEWAY_TIMEOUT: &[u8] = b"HTTP/1.1 504 Gateway Timeout\r\nConnection: close\r\n\r\n";

/// Parses the head received so far: `Ok(None)` while the blank line is
/// still missing.
pub fn parse(input: &[u8]) -> Result<Option<ConnectRequest>, HttpError> {
    let Some(end) = find_blank_line(input) else {
        return if input.len() >= MAX_HEAD_LEN {
            Err(HttpError::TooLong)
        } else {
            Ok(None)
        };
    };
    if end > MAX_HEAD_LEN {
        return Err(HttpError::TooLong);
    }
    let head = std::str::from_utf8(&input[..end]).map_err(|_| HttpError::Malformed)?;
    let mut lines = head.split("\r\n").filter(|l| !l.is_empty());
    let request_line = lines.next().ok_or(HttpError::Malformed)?;
    let mut parts = request_line.split(' ');
    let (Some(method), Some(authority), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HttpError::Malformed);
    };
    if !version.starts_with("HTTP/1.") {
        return Err(HttpError::Malformed);
    }
    let (target, mut forward) = if method == "CONNECT" {
        let target = parse_authority(authority).ok_or(HttpError::Malformed)?;
        (target, None)
    } else {
        if method.is_empty() || !method.bytes().all(|c| c.is_ascii_uppercase()) {
            return Err(HttpError::Malformed);
        }
        let (target, path) = parse_http_uri(authority)?;
        (
            target,
            Some(format!("{method} {path} {version}\r\n").into_bytes()),
        )
    };
    let mut credentials = None;
    for line in lines {
        let (name, value) = line.split_once(':').ok_or(HttpError::Malformed)?;
        let name = name.trim();
        if name.eq_ignore_ascii_case("proxy-authorization") {
            credentials = Some(parse_basic(value.trim()).ok_or(HttpError::Malformed)?);
        } else if let Some(head) = forward.as_mut() {
            if !HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h)) {
                head.extend_from_slice(line.as_bytes());
                head.extend_from_slice(b"\r\n");
            }
        }
    }
    if let Some(head) = forward.as_mut() {
        head.extend_from_slice(b"Connection: close\r\n\r\n");
    }
    Ok(Some(ConnectRequest {
        target,
        forward,
        credentials,
        head_len: end,
    }))
}

/// Headers of a plain request that are the proxy's, not the server's
/// (RFC 9110 section 7.6.1; `Connection` is replaced by `close`).
const HOP_BY_HOP: [&str; 4] = ["connection", "proxy-connection", "keep-alive", "te"];

/// `http://authority[/path]`: the target (port 80 by default) and the path
/// in origin form. Other schemes (https: goes through CONNECT) are 405.
fn parse_http_uri(uri: &str) -> Result<(Target, &str), HttpError> {
    let scheme_end = uri.find("://").ok_or(HttpError::Method)?;
    if !uri[..scheme_end].eq_ignore_ascii_case("http") {
        return Err(HttpError::Method);
    }
    let rest = &uri[scheme_end + 3..];
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], &rest[i..]),
        Some(_) => return Err(HttpError::Malformed), // a query needs a path first here
        None => (rest, "/"),
    };
    if authority.contains('@') {
        return Err(HttpError::Malformed); // no userinfo (RFC 9110 section 4.2.4)
    }
    let with_port = if authority.ends_with(']') || !authority.contains(':') {
        format!("{authority}:80")
    } else {
        authority.to_string()
    };
    let target = match parse_authority(&with_port) {
        Some(target) => target,
        None => {
            // `[v6]:port` parses as an address; a bare `[v6]` got its port above.
            return Err(HttpError::Malformed);
        }
    };
    Ok((target, path))
}

/// The end of the head: the index after the first CRLF CRLF.
fn find_blank_line(input: &[u8]) -> Option<usize> {
    input
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
}

/// `host:port`, `[v6]:port` or `v4:port`.
fn parse_authority(authority: &str) -> Option<Target> {
    if let Ok(addr) = authority.parse() {
        return Some(Target::Addr(addr));
    }
    let (host, port) = authority.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let valid = !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.' || c == b'_');
    valid.then(|| Target::Name(host.to_string(), port))
}

/// `Basic base64(user:password)`.
fn parse_basic(value: &str) -> Option<(String, String)> {
    let (scheme, token) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(token.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_requests_parse_with_and_without_credentials() {
        let req = b"CONNECT 10.0.0.2:443 HTTP/1.1\r\nHost: 10.0.0.2:443\r\n\r\nextra";
        let parsed = parse(req).unwrap().unwrap();
        assert_eq!(parsed.target, Target::Addr("10.0.0.2:443".parse().unwrap()));
        assert_eq!(parsed.credentials, None);
        assert_eq!(parsed.head_len, req.len() - 5);
        // "bob:s3:cret" in base64
        let req = b"CONNECT example.org:80 HTTP/1.1\r\n\
proxy-authorization:  Basic Ym9iOnMzOmNyZXQ=\r\n\r\n";
        let parsed = parse(req).unwrap().unwrap();
        assert_eq!(parsed.target, Target::Name("example.org".into(), 80));
        assert_eq!(
            parsed.credentials,
            Some(("bob".to_string(), "s3:cret".to_string()))
        );
        let v6 = parse(b"CONNECT [fd00::2]:22 HTTP/1.0\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(v6.target, Target::Addr("[fd00::2]:22".parse().unwrap()));
    }

    #[test]
    fn plain_requests_are_rewritten_to_origin_form() {
        let req = b"GET http://files.test:8000/big.bin?x=1 HTTP/1.1\r\nHost: files.test:8000\r\n\
Proxy-Connection: Keep-Alive\r\nProxy-Authorization: Basic Ym9iOnB3\r\nAccept: */*\r\n\r\nbody";
        let parsed = parse(req).unwrap().unwrap();
        assert_eq!(parsed.target, Target::Name("files.test".into(), 8000));
        assert_eq!(parsed.credentials, Some(("bob".into(), "pw".into())));
        assert_eq!(parsed.head_len, req.len() - 4);
        assert_eq!(
            parsed.forward.unwrap(),
            b"GET /big.bin?x=1 HTTP/1.1\r\nHost: files.test:8000\r\nAccept: */*\r\n\
Connection: close\r\n\r\n"
        );
        let bare = parse(b"HEAD http://10.0.0.2 HTTP/1.0\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(bare.target, Target::Addr("10.0.0.2:80".parse().unwrap()));
        assert!(bare.forward.unwrap().starts_with(b"HEAD / HTTP/1.0\r\n"));
        let v6 = parse(b"GET http://[fd00::2]/x HTTP/1.1\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(v6.target, Target::Addr("[fd00::2]:80".parse().unwrap()));
        let v6 = parse(b"GET http://[fd00::2]:81/ HTTP/1.1\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(v6.target, Target::Addr("[fd00::2]:81".parse().unwrap()));
        let connect = parse(b"CONNECT a:1 HTTP/1.1\r\n\r\n").unwrap().unwrap();
        assert_eq!(connect.forward, None);
    }

    #[test]
    fn incomplete_heads_wait_and_hostile_ones_are_refused() {
        assert_eq!(parse(b"CONNECT a:1 HTTP/1.1\r\n"), Ok(None));
        assert_eq!(parse(b"GET / HTTP/1.1\r\n\r\n"), Err(HttpError::Method));
        assert_eq!(
            parse(b"GET https://a/ HTTP/1.1\r\n\r\n"),
            Err(HttpError::Method)
        );
        assert_eq!(
            parse(b"GET http://u@a/ HTTP/1.1\r\n\r\n"),
            Err(HttpError::Malformed)
        );
        assert_eq!(
            parse(b"get http://a/ HTTP/1.1\r\n\r\n"),
            Err(HttpError::Malformed)
        );
        assert_eq!(
            parse(b"GET http://a:x/ HTTP/1.1\r\n\r\n"),
            Err(HttpError::Malformed)
        );
        assert_eq!(
            parse(b"CONNECT a HTTP/1.1\r\n\r\n"),
            Err(HttpError::Malformed)
        );
        assert_eq!(
            parse(b"CONNECT a:99999 HTTP/1.1\r\n\r\n"),
            Err(HttpError::Malformed)
        );
        assert_eq!(
            parse(b"CONNECT a b:1 HTTP/1.1\r\n\r\n"),
            Err(HttpError::Malformed)
        );
        assert_eq!(
            parse(b"CONNECT a:1 SPDY\r\n\r\n"),
            Err(HttpError::Malformed)
        );
        assert_eq!(
            parse(b"CONNECT a:1 HTTP/1.1\r\nNoColon\r\n\r\n"),
            Err(HttpError::Malformed)
        );
        assert_eq!(
            parse(b"CONNECT a:1 HTTP/1.1\r\nProxy-Authorization: Basic !!\r\n\r\n"),
            Err(HttpError::Malformed)
        );
        assert_eq!(parse(b"\xff\xfe\r\n\r\n"), Err(HttpError::Malformed));
        assert_eq!(parse(&[b'a'; MAX_HEAD_LEN]), Err(HttpError::TooLong));
        let mut long = vec![b'a'; MAX_HEAD_LEN + 10];
        long.extend_from_slice(b"\r\n\r\n");
        assert_eq!(parse(&long), Err(HttpError::TooLong));
        assert!(HttpError::Method.response().starts_with(b"HTTP/1.1 405"));
    }
}
