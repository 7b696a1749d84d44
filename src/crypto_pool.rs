//! The crypto workers: the AEAD of a large batch of packets is shared out
//! between the thread that read the batch and a pool of helper threads, and
//! joined before anything is sent.
//!
//! Fork-join per batch, not the kernel's queues. The kernel hands each packet
//! to a per-CPU worker and keeps a per-peer queue in arrival order; the
//! peer's serial stage only takes a packet from the head of that queue once
//! its crypto is done, so packets leave in order whatever the workers do.
//! Here the reading thread prepares a whole batch under one engine lock
//! (counters are reserved in batch order), the batch is encrypted or
//! decrypted by all threads at once, and only after the join does the
//! reading thread send (or write to the TUN, or complete under the lock)
//! the batch in its original order. The batch is the per-peer queue: every
//! peer's packets in it are in order by construction, and batches of one
//! direction are handled one after another by the thread that reads them.
//! What this gives up against the kernel is overlap between batches: the
//! reading thread does not read the next batch while the workers finish this
//! one. On few cores that costs little, and it keeps the whole data path free
//! of queues, reordering buffers and their drop policies.
//!
//! Small batches (a ping, a handful of packets) never leave the calling
//! thread: waking a helper costs more than their AEAD, and the round-trip
//! time is what matters for them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// The environment variable that sets the number of crypto threads.
pub const THREADS_ENV: &str = "FERROGUARD_CRYPTO_THREADS";

/// Below this many packets a batch is sealed or opened by the calling thread.
pub const MIN_PARALLEL_PACKETS: usize = 8;
/// Below this many bytes a batch is sealed or opened by the calling thread:
/// about 8 µs of ChaCha20-Poly1305 on one core, more than waking a helper.
pub const MIN_PARALLEL_BYTES: usize = 16 * 1024;
/// With fewer cores than this, the default is no helpers at all: the I/O
/// threads of a busy tunnel (the TUN reader, a UDP receiver, and on a test
/// machine the traffic source) already use both cores of a 2-core machine,
/// and there the pool measured slower than none (ARCHITECTURE.md, "Parallel
/// crypto").
pub const MIN_CORES_FOR_HELPERS: usize = 3;
/// Items handed out at a time: small enough to share a 64-packet batch
/// fairly between threads, large enough that claiming costs nothing.
const CHUNK: usize = 4;

/// The helper threads (the caller is always one of the crypto threads).
pub struct CryptoPool {
    /// None with one crypto thread: everything runs on the caller.
    pool: Option<rayon_core::ThreadPool>,
    threads: usize,
}

impl CryptoPool {
    /// A pool with `threads` crypto threads in all, the calling thread
    /// included (so `threads - 1` helpers). 0 means the default: one per
    /// core, or just the caller below [`MIN_CORES_FOR_HELPERS`] cores.
    /// Falls back to one thread if the helpers cannot be started.
    pub fn new(threads: usize) -> Self {
        let threads = if threads == 0 {
            default_threads()
        } else {
            threads
        };
        if threads <= 1 {
            return CryptoPool {
                pool: None,
                threads: 1,
            };
        }
        let built = rayon_core::ThreadPoolBuilder::new()
            .num_threads(threads - 1)
            .thread_name(|i| format!("crypto-{i}"))
            .build();
        match built {
            Ok(pool) => CryptoPool {
                pool: Some(pool),
                threads,
            },
            Err(e) => {
                log::warn!("cannot start crypto threads ({e}): encrypting on one thread");
                CryptoPool {
                    pool: None,
                    threads: 1,
                }
            }
        }
    }

    /// The pool `FERROGUARD_CRYPTO_THREADS` asks for (unset or 0: the
    /// default; an unreadable value is reported and the default used).
    pub fn from_env() -> Self {
        let threads = match std::env::var(THREADS_ENV) {
            Ok(value) => parse_threads(&value).unwrap_or_else(|| {
                log::warn!("{THREADS_ENV}={value:?} is not a number of threads; using the default");
                0
            }),
            Err(_) => 0,
        };
        let pool = CryptoPool::new(threads);
        log::debug!("crypto threads: {}", pool.threads());
        pool
    }

    /// The number of crypto threads, the calling thread included.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// True if a batch of `packets` packets and `bytes` bytes is worth
    /// sharing out; false means: do it on the calling thread.
    pub fn worth_sharing(&self, packets: usize, bytes: usize) -> bool {
        self.pool.is_some() && packets >= MIN_PARALLEL_PACKETS && bytes >= MIN_PARALLEL_BYTES
    }

    /// Runs `work` on every item, on the calling thread and the helpers
    /// together, and returns when all are done. Items are claimed a few at a
    /// time, so a helper that starts late (busy with the other direction)
    /// just finds less to do, and the caller never sits idle while work is
    /// left.
    pub fn run<T: Send>(&self, items: &mut [T], work: impl Fn(&mut T) + Sync) {
        let Some(pool) = self.pool.as_ref().filter(|_| items.len() > CHUNK) else {
            items.iter_mut().for_each(work);
            return;
        };
        let chunks: Vec<Mutex<&mut [T]>> = items.chunks_mut(CHUNK).map(Mutex::new).collect();
        let next = AtomicUsize::new(0);
        let drain = || {
            while let Some(chunk) = chunks.get(next.fetch_add(1, Ordering::Relaxed)) {
                // Each chunk is claimed once: the lock is never contended.
                let mut chunk = chunk.lock().unwrap_or_else(|e| e.into_inner());
                chunk.iter_mut().for_each(&work);
            }
        };
        let helpers = (self.threads - 1).min(chunks.len() - 1);
        pool.in_place_scope(|scope| {
            for _ in 0..helpers {
                scope.spawn(|_| drain());
            }
            drain();
        });
    }
}

/// The default number of crypto threads on this machine.
fn default_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores >= MIN_CORES_FOR_HELPERS {
        cores
    } else {
        1
    }
}

/// A thread count: a whole number, 0 for the default.
fn parse_threads(value: &str) -> Option<usize> {
    value.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_item_is_worked_on_exactly_once() {
        for threads in [1, 2, 3] {
            let pool = CryptoPool::new(threads);
            for len in [0, 1, CHUNK, CHUNK + 1, 64, 1000] {
                let mut items: Vec<(usize, u32)> = (0..len).map(|i| (i, 0)).collect();
                pool.run(&mut items, |(i, hits)| {
                    *hits += 1;
                    *i *= 2;
                });
                for (k, (i, hits)) in items.iter().enumerate() {
                    assert_eq!((*i, *hits), (2 * k, 1), "threads {threads}, len {len}");
                }
            }
        }
    }

    #[test]
    fn helpers_really_take_part() {
        let pool = CryptoPool::new(2);
        assert_eq!(pool.threads(), 2);
        let caller = std::thread::current().id();
        // Slow items, so that the helper surely wakes before the caller is
        // through them all.
        let mut items: Vec<Option<std::thread::ThreadId>> = vec![None; 64];
        pool.run(&mut items, |who| {
            std::thread::sleep(std::time::Duration::from_millis(2));
            *who = Some(std::thread::current().id());
        });
        assert!(items.iter().all(Option::is_some));
        assert!(
            items.iter().any(|who| *who != Some(caller)),
            "no item ran on a helper"
        );
    }

    #[test]
    fn one_thread_and_small_batches_stay_on_the_caller() {
        let single = CryptoPool::new(1);
        assert_eq!(single.threads(), 1);
        assert!(!single.worth_sharing(64, 64 * 1420));
        let pool = CryptoPool::new(2);
        assert!(!pool.worth_sharing(1, 100));
        assert!(!pool.worth_sharing(MIN_PARALLEL_PACKETS - 1, 1 << 20));
        assert!(!pool.worth_sharing(64, MIN_PARALLEL_BYTES - 1));
        assert!(pool.worth_sharing(64, 64 * 1420));
        assert!(CryptoPool::new(0).threads() >= 1);
    }

    #[test]
    fn thread_counts_are_parsed_strictly() {
        assert_eq!(parse_threads("1"), Some(1));
        assert_eq!(parse_threads(" 4\n"), Some(4));
        assert_eq!(parse_threads("0"), Some(0));
        assert_eq!(parse_threads("-1"), None);
        assert_eq!(parse_threads("many"), None);
    }
}
