//! Serving the configuration socket: several clients at once, each on its
//! own thread, so that a client that connects and says nothing never makes
//! `wg` or `wg-quick` wait.
//!
//! Decision: a thread per connection, at most [`MAX_CONNECTIONS`] at once.
//! Configuration clients are few and short-lived (`wg` opens one
//! connection per command), so a pool would only add code; the bound keeps
//! a local client that opens connections in a loop from creating threads
//! without end. When every slot is taken the acceptor waits for one to
//! free, which happens within the idle limit (see [`super::progress`]) even
//! when every holder is hostile. Only root can connect (mode 0600), so the
//! bound is against mistakes more than attacks.

use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

use super::progress::ProgressStream;
use super::{serve_connection, UapiHandler};

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 8;

/// Serves the connections that `accept` returns (a listener's, whether the
/// daemon bound it or it was handed in), for ever: each gets a fresh
/// handler from `make_handler` and a thread of its own, and ends when its
/// client closes it, breaks the protocol or makes no progress for
/// `idle_limit`. Handlers must serialise whatever must not run twice at
/// once (a `set` is only handed over once its request is read whole).
pub fn serve_concurrently<A, H, F>(accept: A, idle_limit: Duration, make_handler: F)
where
    A: Fn() -> std::io::Result<UnixStream>,
    H: UapiHandler + Send + 'static,
    F: Fn() -> H,
{
    let slots = Slots::new(MAX_CONNECTIONS);
    loop {
        let slot = slots.take();
        let stream = match accept() {
            Ok(stream) => stream,
            Err(error) => {
                log::error!("configuration socket accept failed: {error}");
                thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let mut handler = make_handler();
        let spawned = thread::Builder::new()
            .name("uapi-conn".into())
            .spawn(move || {
                let _slot = slot;
                // Reading and parsing a request of 2^20 peers, or writing
                // the answer of a `get`, takes a CPU for seconds: at bulk
                // priority, the handler holding the engine lock at its
                // normal one (see `crate::bulk`).
                crate::bulk::lower_this_thread();
                let stream = ProgressStream::new(stream, idle_limit);
                if let Err(error) = serve_connection(stream, &mut handler) {
                    log::debug!("configuration connection ended: {error}");
                }
            });
        if let Err(error) = spawned {
            // The closure, with the connection and the slot, was dropped.
            log::error!("no thread for a configuration connection: {error}");
        }
    }
}

/// A counting semaphore: [`Slots::take`] waits while all are taken.
#[derive(Clone)]
struct Slots(Arc<(Mutex<usize>, Condvar)>);

/// A taken slot, given back when dropped (also when its thread panics).
struct Slot(Slots);

impl Slots {
    fn new(count: usize) -> Self {
        Slots(Arc::new((Mutex::new(count), Condvar::new())))
    }

    fn take(&self) -> Slot {
        let (free, freed) = &*self.0;
        let mut free = free.lock().unwrap_or_else(|e| e.into_inner());
        while *free == 0 {
            free = freed.wait(free).unwrap_or_else(|e| e.into_inner());
        }
        *free -= 1;
        Slot(self.clone())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let (free, freed) = &*(self.0).0;
        *free.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::super::{DeviceSnapshot, Errno, SetRequest, UapiListener, EIO};
    use super::*;
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Instant;

    /// Answers `get` with a fixed port; accepts every `set`.
    struct PortHandler;

    impl UapiHandler for PortHandler {
        fn get(&mut self) -> DeviceSnapshot {
            DeviceSnapshot {
                listen_port: 4343,
                ..DeviceSnapshot::default()
            }
        }
        fn set(&mut self, _: SetRequest) -> Result<(), Errno> {
            Ok(())
        }
    }

    fn temp_dir() -> std::path::PathBuf {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let serial = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "fg-uapi-concurrent-{}-{serial}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn get(path: &std::path::Path) -> String {
        let mut client = UnixStream::connect(path).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        client.write_all(b"get=1\n\n").unwrap();
        let mut answer = String::new();
        let mut buffer = [0; 256];
        while !answer.ends_with("\n\n") {
            let count = client.read(&mut buffer).unwrap();
            assert!(count > 0, "closed after {answer:?}");
            answer.push_str(std::str::from_utf8(&buffer[..count]).unwrap());
        }
        answer
    }

    /// Silent clients (one per slot but one, some mid-request) do not delay
    /// another client's request, and are dropped after the idle limit.
    #[test]
    fn silent_clients_never_block_another() {
        const IDLE: Duration = Duration::from_secs(5);
        let dir = temp_dir();
        let listener = UapiListener::bind_in(&dir, "wgc0").unwrap();
        let path = listener.path().to_path_buf();
        thread::spawn(move || serve_concurrently(|| listener.accept(), IDLE, || PortHandler));
        let mut silent: Vec<UnixStream> = (0..MAX_CONNECTIONS - 1)
            .map(|_| UnixStream::connect(&path).unwrap())
            .collect();
        silent[0].write_all(b"set=1\nlisten_port=1").unwrap();
        let started = Instant::now();
        assert_eq!(get(&path), "listen_port=4343\nerrno=0\n\n");
        let answered_in = started.elapsed();
        assert!(
            answered_in < IDLE / 2,
            "a get beside silent clients took {answered_in:?}"
        );
        // The one mid-request is answered -EIO (nothing of it applied) and
        // dropped once the idle limit passes.
        silent[0].set_read_timeout(Some(IDLE * 4)).unwrap();
        let mut rest = String::new();
        let dropped = silent[0].read_to_string(&mut rest);
        assert!(dropped.is_ok(), "{dropped:?}");
        assert_eq!(rest, format!("errno={EIO}\n\n"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
