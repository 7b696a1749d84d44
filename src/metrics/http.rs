//! The smallest HTTP/1.x server that Prometheus needs: `GET /metrics` and
//! nothing else, one request per connection.
//!
//! Bounded in every direction, since anyone who can reach the port can
//! connect: the request head must arrive within [`CONNECTION_BUDGET`] (a
//! client trickling bytes cannot hold it longer), it may be at most
//! [`MAX_REQUEST`] bytes, and at most [`MAX_CONNECTIONS`] connections are
//! served at once (others are closed at once). The answer is streamed as it
//! is rendered, without a `Content-Length` (the connection's end delimits
//! it), so its memory stays bounded with 2^20 peers (about 2 GB of text);
//! while it is written the client must accept some of it every
//! [`CONNECTION_BUDGET`], never all of it within one.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use super::text::CONTENT_TYPE;

/// The longest request head (request line and headers) accepted.
pub const MAX_REQUEST: usize = 8 * 1024;
/// How long the request head may take to arrive, and how long the client
/// may go without accepting any of the answer.
pub const CONNECTION_BUDGET: Duration = Duration::from_secs(5);
/// Connections served at the same time.
pub const MAX_CONNECTIONS: usize = 4;

/// Writes the exposition for a `GET /metrics` to the client as it renders.
pub type Render = Arc<dyn Fn(&mut dyn Write) -> io::Result<()> + Send + Sync>;

/// Reads one request from `stream` and writes the answer; returns the
/// status code sent, or the I/O error (a timeout, a closed connection) that
/// ended the exchange before a complete request was read.
pub fn handle<S: Read + Write>(
    stream: &mut S,
    render: &dyn Fn(&mut dyn Write) -> io::Result<()>,
) -> io::Result<u16> {
    let refusal = match read_head(stream)? {
        None => Some((400, "request too large or malformed\n".to_string())),
        Some(head) => route(&head)
            .err()
            .map(|(status, reason)| (status, format!("{reason}\n"))),
    };
    let Some((status, body)) = refusal else {
        let head = format!(
            "HTTP/1.1 200 {}\r\nContent-Type: {CONTENT_TYPE}\r\nConnection: close\r\n\r\n",
            reason_phrase(200)
        );
        stream.write_all(head.as_bytes())?;
        render(stream)?;
        stream.flush()?;
        return Ok(200);
    };
    let mut response = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n",
        reason_phrase(status),
        body.len()
    );
    if status == 405 {
        response.push_str("Allow: GET\r\n");
    }
    response.push_str("Connection: close\r\n\r\n");
    response.push_str(&body);
    stream.write_all(response.as_bytes())?;
    stream.flush()?;
    Ok(status)
}

/// Reads up to the blank line that ends the request head. `None` when the
/// head exceeds [`MAX_REQUEST`] or the client closed mid-request.
fn read_head<S: Read>(stream: &mut S) -> io::Result<Option<String>> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(None);
        }
        head.extend_from_slice(&chunk[..n]);
        if let Some(end) = find_head_end(&head) {
            if end > MAX_REQUEST {
                return Ok(None);
            }
            head.truncate(end);
            return Ok(String::from_utf8(head).ok());
        }
        if head.len() > MAX_REQUEST {
            return Ok(None);
        }
    }
}

/// The length of the head including its final blank line (CRLF CRLF, or
/// LF LF from lenient clients).
fn find_head_end(data: &[u8]) -> Option<usize> {
    let crlf = data
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4);
    let lf = data.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Checks the request line: `GET /metrics HTTP/1.x` (a query string is
/// ignored). Anything else is an error status with a reason.
fn route(head: &str) -> Result<(), (u16, &'static str)> {
    let line = head.lines().next().unwrap_or("");
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err((400, "malformed request line"));
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return Err((400, "malformed request line"));
    }
    let path = target.split('?').next().unwrap_or(target);
    if path != "/metrics" {
        return Err((404, "not found: only /metrics is served"));
    }
    if method != "GET" {
        return Err((405, "only GET is allowed"));
    }
    Ok(())
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Error",
    }
}

/// A TCP stream whose reads fail with `TimedOut` once the connection's
/// budget is spent, and whose writes fail when the client accepts nothing
/// for [`CONNECTION_BUDGET`].
struct DeadlineStream {
    stream: TcpStream,
    deadline: Instant,
}

impl DeadlineStream {
    fn remaining(&self) -> io::Result<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        Ok(left)
    }
}

impl Read for DeadlineStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.set_read_timeout(Some(self.remaining()?))?;
        self.stream.read(buf)
    }
}

impl Write for DeadlineStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.set_write_timeout(Some(CONNECTION_BUDGET))?;
        self.stream.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

/// Gives a connection slot back when the connection ends.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Accepts connections forever, each served on its own short-lived thread,
/// at most [`MAX_CONNECTIONS`] at a time.
pub fn serve(listener: TcpListener, render: Render) {
    let active = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(stream) => stream,
            Err(e) => {
                // Out of descriptors, for instance: do not spin.
                log::debug!("metrics: accept failed: {e}");
                thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if active.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::AcqRel);
            log::debug!("metrics: too many connections, closing one");
            continue;
        }
        let slot = Slot(active.clone());
        let render = render.clone();
        let spawned = thread::Builder::new()
            .name("metrics-conn".into())
            .spawn(move || {
                let _slot = slot;
                let mut stream = DeadlineStream {
                    stream,
                    deadline: Instant::now() + CONNECTION_BUDGET,
                };
                if let Err(e) = handle(&mut stream, &*render) {
                    log::debug!("metrics: connection ended: {e}");
                }
            });
        if let Err(e) = spawned {
            log::debug!("metrics: cannot spawn a connection thread: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;
    use std::net::Shutdown;

    /// An in-memory connection: reads from `input`, collects the output.
    struct Fake {
        input: Cursor<Vec<u8>>,
        output: Vec<u8>,
    }

    fn exchange(request: &[u8]) -> (io::Result<u16>, String) {
        let mut fake = Fake {
            input: Cursor::new(request.to_vec()),
            output: Vec::new(),
        };
        let result = handle(&mut fake, &|out: &mut dyn Write| out.write_all(b"m 1\n"));
        (result, String::from_utf8(fake.output).unwrap())
    }

    impl Read for Fake {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.input.read(buf)
        }
    }

    impl Write for Fake {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.output.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn get_metrics_is_served() {
        let (status, out) = exchange(b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n");
        assert_eq!(status.unwrap(), 200);
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(out.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"));
        assert!(
            !out.contains("Content-Length"),
            "streamed: the close delimits it"
        );
        assert!(out.ends_with("\r\n\r\nm 1\n"));
        let (status, _) = exchange(b"GET /metrics?name[]=x HTTP/1.0\n\n");
        assert_eq!(status.unwrap(), 200, "query strings and bare LF accepted");
    }

    #[test]
    fn other_paths_methods_and_garbage_are_refused() {
        let cases: [(&[u8], u16); 8] = [
            (b"GET / HTTP/1.1\r\n\r\n", 404),
            (b"GET /metricsx HTTP/1.1\r\n\r\n", 404),
            (b"GET /metrics/../x HTTP/1.1\r\n\r\n", 404),
            (b"POST /metrics HTTP/1.1\r\n\r\n", 405),
            (b"GET /metrics\r\n\r\n", 400),
            (b"GET /metrics HTTP/2.0\r\n\r\n", 400),
            (b"GET  /metrics HTTP/1.1\r\n\r\n", 400),
            (b"\xff\xfe /metrics HTTP/1.1\r\n\r\n", 400),
        ];
        for (request, expected) in cases {
            let (status, out) = exchange(request);
            assert_eq!(
                status.unwrap(),
                expected,
                "{:?}",
                String::from_utf8_lossy(request)
            );
            assert!(!out.contains("m 1"), "no metrics in an error");
        }
        let (_, out) = exchange(b"PUT /metrics HTTP/1.1\r\n\r\n");
        assert!(out.contains("Allow: GET\r\n"));
    }

    #[test]
    fn oversized_or_truncated_requests_get_400() {
        let mut big = b"GET /metrics HTTP/1.1\r\n".to_vec();
        while big.len() <= MAX_REQUEST {
            big.extend_from_slice(b"X-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        let (status, _) = exchange(&big);
        assert_eq!(status.unwrap(), 400, "no end in sight");
        big.extend_from_slice(b"\r\n");
        let (status, _) = exchange(&big);
        assert_eq!(status.unwrap(), 400, "ends, but too late");
        let (status, _) = exchange(b"GET /metrics HTTP/1.1\r\n");
        assert_eq!(status.unwrap(), 400, "closed mid-request");
    }

    /// Over real sockets: a silent client is cut off by the budget, and the
    /// connections beyond the cap are closed without an answer.
    #[test]
    fn server_bounds_connections() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let render: Render = Arc::new(|out: &mut dyn Write| out.write_all(b"m 2\n"));
        thread::spawn(move || serve(listener, render));
        // Fill every slot with silent clients.
        let silent: Vec<TcpStream> = (0..MAX_CONNECTIONS)
            .map(|_| TcpStream::connect(addr).unwrap())
            .collect();
        thread::sleep(Duration::from_millis(300));
        let mut refused = TcpStream::connect(addr).unwrap();
        refused
            .set_read_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        let _ = refused.write_all(b"GET /metrics HTTP/1.1\r\n\r\n");
        let mut answer = Vec::new();
        let _ = refused.read_to_end(&mut answer);
        assert!(answer.is_empty(), "over the cap: closed without an answer");
        // The budget frees the slots; then a request is answered.
        let started = Instant::now();
        for mut s in silent {
            s.set_read_timeout(Some(CONNECTION_BUDGET * 2)).unwrap();
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest);
            assert!(rest.is_empty());
        }
        assert!(started.elapsed() < CONNECTION_BUDGET + Duration::from_secs(2));
        thread::sleep(Duration::from_millis(100));
        let mut client = TcpStream::connect(addr).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        client.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        let mut answer = String::new();
        client.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
        assert!(answer.ends_with("m 2\n"));
    }
}
