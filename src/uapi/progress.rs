//! A connection that ends when its client stops making progress.
//!
//! Decision: the configuration socket limits how long a client may go
//! without progress, never how long a request takes. A `set` of 2^20 peers
//! is about 200 MB and takes longer than any fixed budget a busy machine
//! can promise (the old 30-second budget for the whole connection reported
//! a request that had been applied as failed); what a stalled or trickling
//! client must not do is hold a connection (and with it one of the bounded
//! connection slots) for ever. Progress is:
//! * [`PROGRESS_BYTES`] bytes read since the last progress, so that a
//!   client trickling a byte now and then is dropped like a silent one
//!   (an honest client sends a request at memory speed);
//! * any bytes of an answer accepted by the client (a slow reader of a
//!   large `get` answer holds no lock while it reads).
//!
//! The time spent applying a request counts for nothing: the daemon is
//! not reading then.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// Bytes a client must send between two progress marks: more than a
/// whole `get=1` request, less than two peers of a `set`.
pub const PROGRESS_BYTES: usize = 256;

/// A unix stream whose reads and writes fail with
/// [`io::ErrorKind::TimedOut`] once the client has made no progress (see
/// the module documentation) for its idle limit.
#[derive(Debug)]
pub struct ProgressStream {
    stream: UnixStream,
    idle_limit: Duration,
    deadline: Instant,
    /// Bytes read since the last progress mark.
    unmarked: usize,
}

impl ProgressStream {
    /// Wraps an accepted connection; the client has `idle_limit` from now
    /// to make progress.
    pub fn new(stream: UnixStream, idle_limit: Duration) -> Self {
        ProgressStream {
            stream,
            idle_limit,
            deadline: Instant::now() + idle_limit,
            unmarked: 0,
        }
    }

    fn mark_progress(&mut self) {
        self.unmarked = 0;
        self.deadline = Instant::now() + self.idle_limit;
    }

    /// Time left before the deadline, or `TimedOut` if it has passed.
    fn time_left(&self) -> io::Result<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(no_progress());
        }
        Ok(left)
    }
}

impl Read for ProgressStream {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        self.stream.set_read_timeout(Some(self.time_left()?))?;
        let count = self.stream.read(buffer).map_err(timeout_as_no_progress)?;
        self.unmarked += count;
        if self.unmarked >= PROGRESS_BYTES {
            self.mark_progress();
        }
        Ok(count)
    }
}

impl Write for ProgressStream {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.stream.set_write_timeout(Some(self.idle_limit))?;
        let count = self.stream.write(bytes).map_err(timeout_as_no_progress)?;
        if count > 0 {
            self.mark_progress();
        }
        Ok(count)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

/// A socket timeout shows as `WouldBlock` (or `TimedOut`): both mean the
/// client made no progress.
fn timeout_as_no_progress(error: io::Error) -> io::Error {
    match error.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => no_progress(),
        _ => error,
    }
}

fn no_progress() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "configuration client made no progress",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_millis(300);

    #[test]
    fn a_silent_client_times_out_after_the_idle_limit() {
        let (_client, server) = UnixStream::pair().unwrap();
        let mut stream = ProgressStream::new(server, LIMIT);
        let started = Instant::now();
        let error = stream.read(&mut [0; 16]).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        let waited = started.elapsed();
        assert!(waited >= LIMIT, "gave up after {waited:?}");
    }

    #[test]
    fn a_trickling_client_times_out_too() {
        let (mut client, server) = UnixStream::pair().unwrap();
        let mut stream = ProgressStream::new(server, LIMIT);
        let trickler = std::thread::spawn(move || {
            // A byte every 50 ms: never PROGRESS_BYTES within the limit.
            for _ in 0..40 {
                if client.write_all(b"x").is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let started = Instant::now();
        let mut received = 0;
        let error = loop {
            match stream.read(&mut [0; 16]) {
                Ok(count) => received += count,
                Err(error) => break error,
            }
        };
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(received > 0 && received < PROGRESS_BYTES);
        assert!(started.elapsed() < LIMIT * 3, "{:?}", started.elapsed());
        drop(stream);
        trickler.join().unwrap();
    }

    #[test]
    fn a_client_that_keeps_sending_is_never_cut() {
        let (mut client, server) = UnixStream::pair().unwrap();
        let mut stream = ProgressStream::new(server, LIMIT);
        // Four limits long in all, PROGRESS_BYTES every 100 ms.
        let sender = std::thread::spawn(move || {
            for _ in 0..12 {
                client.write_all(&[b'y'; PROGRESS_BYTES]).unwrap();
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let mut received = 0;
        loop {
            match stream.read(&mut [0; 4096]) {
                Ok(0) => break,
                Ok(count) => received += count,
                Err(error) => panic!("cut off after {received} bytes: {error}"),
            }
        }
        assert_eq!(received, 12 * PROGRESS_BYTES);
        sender.join().unwrap();
    }
}
