//! How the data path's I/O is spread over threads: one thread for the TUN
//! device and both sockets, one thread per descriptor, or N lanes of the
//! parallel data path (a TUN queue and a socket pair each, see
//! ARCHITECTURE.md, "Parallel data path").
//!
//! What decides it is the cost of a wake-up. A ping through the tunnel
//! crosses two daemons; with a thread per descriptor, the thread that
//! writes the decrypted request to the TUN wakes the TUN reader, because
//! the host's answer lands on the TUN within that write. That wake-up is
//! wasted (the writer reads the answer itself, see `runtime::tx::read_answers`)
//! but it makes the reader runnable on the writer's CPU just before the
//! writer sends the answer to the other daemon. The kernel then no longer
//! places the other daemon's receiver on the sender's CPU (a synchronous
//! wake-up is only kept local when the waker is alone on its CPU) and wakes
//! it on the idle CPU instead, with an inter-processor interrupt. On a
//! virtual machine a halted vCPU takes 40–80 µs to run again (measured with
//! ftrace on the 2-vCPU test machine; BENCHMARKS.md, "Round-trip time").
//! With one I/O thread nobody else waits on the TUN, the answer stays on
//! the CPU that has it, and the round trip needs no remote wake-up at all.
//!
//! On 2 cores the single thread measured as fast or faster for bulk TCP too
//! (the second thread's wake-ups cost more than its parallelism gave), so it
//! is the default below [`crate::crypto_pool::MIN_CORES_FOR_HELPERS`] cores.
//! From 3 cores on, where the crypto pool spreads the AEAD and a spare core
//! can take the other direction's system calls and GSO/GRO work, the
//! default stays one thread per descriptor on 3 cores. From 4 cores on the
//! default is `queues:N` with N half the cores (at most 16): every stage of
//! the data path then runs on N threads at once for different flows and
//! peers, and the other half of the cores is left to the crypto pool's
//! helpers and the kernel's own network work (softirq: the UDP and TUN
//! stacks' halves that do not run in our threads). This follows from the
//! stage model (BENCHMARKS.md, "Stage costs and the scaling model": about
//! 59 % of a packet's cost is I/O that one thread per direction caps), and
//! is NOT measured: the machines here have 2 cores. `FERROGUARD_IO_THREADS`
//! lets an operator choose.

use crate::runtime::IoRole;
use crate::sys::udp::Family;

/// The environment variable that chooses the I/O threads.
pub const ENV: &str = "FERROGUARD_IO_THREADS";

/// How the TUN device and the UDP sockets are served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoThreads {
    /// One thread waits for the TUN device and both sockets (`one`).
    One,
    /// One thread for the TUN device and one per socket (`per-source`).
    PerSource,
    /// N threads, thread `i` serving TUN queue `i` and socket pair `i`
    /// (`queues:N`, or a bare `N` from 2 on). One queue is the same data
    /// path as [`IoThreads::One`].
    Queues(usize),
}

impl IoThreads {
    /// The choice `FERROGUARD_IO_THREADS` makes (`one` or `per-source`);
    /// unset or unreadable (reported), the default for this machine.
    pub fn from_env() -> Self {
        let chosen = match std::env::var(ENV) {
            Ok(value) => parse(&value).or_else(|| {
                log::warn!(
                    "{ENV}={value:?} is not 'one', 'per-source' or 'queues:N' \
                     (N from 1 to {MAX_QUEUES}); using the default"
                );
                None
            }),
            Err(_) => None,
        };
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = chosen.unwrap_or_else(|| default_for(cores));
        log::debug!("I/O threads: {threads:?}");
        threads
    }

    /// How many lanes (TUN queues, socket pairs) this choice needs.
    pub fn lanes(self) -> usize {
        match self {
            IoThreads::One | IoThreads::PerSource => 1,
            IoThreads::Queues(n) => n,
        }
    }

    /// This choice on a device of `lanes` lanes: `queues:N` needs N TUN
    /// queues, and a handed-in TUN descriptor or the rootless packet socket
    /// has one, so there it becomes `one` (logged).
    pub fn fit(self, lanes: usize) -> IoThreads {
        match self {
            IoThreads::Queues(n) if n != lanes => {
                log::info!("{ENV}: queues:{n} asked for, the TUN device has {lanes} queue(s); using {lanes} lane(s)");
                if lanes <= 1 {
                    IoThreads::One
                } else {
                    IoThreads::Queues(lanes)
                }
            }
            other => other,
        }
    }

    /// The threads to start: a name and what each serves. Together they
    /// cover each lane's TUN queue and both families exactly once.
    pub fn roles(self) -> Vec<(String, IoRole)> {
        match self {
            IoThreads::One | IoThreads::Queues(1) => vec![("io".into(), IoRole::ALL)],
            IoThreads::PerSource => vec![
                ("tun".into(), IoRole::TUN),
                ("udp-V4".into(), IoRole::socket(Family::V4)),
                ("udp-V6".into(), IoRole::socket(Family::V6)),
            ],
            IoThreads::Queues(n) => (0..n)
                .map(|lane| (format!("io-{lane}"), IoRole::lane(lane)))
                .collect(),
        }
    }
}

/// The default on a machine with `cores` cores (see the module comment).
fn default_for(cores: usize) -> IoThreads {
    if cores < crate::crypto_pool::MIN_CORES_FOR_HELPERS {
        IoThreads::One
    } else if cores < MIN_CORES_FOR_QUEUES {
        IoThreads::PerSource
    } else {
        IoThreads::Queues((cores / 2).min(MAX_DEFAULT_QUEUES))
    }
}

/// From this many cores on, the default is `queues:N` (see the module
/// comment; not measured).
const MIN_CORES_FOR_QUEUES: usize = 4;
/// The most lanes the default takes.
const MAX_DEFAULT_QUEUES: usize = 16;
/// The most lanes `queues:N` may ask for.
const MAX_QUEUES: usize = crate::sys::tun::MAX_QUEUES;

fn parse(value: &str) -> Option<IoThreads> {
    let value = value.trim();
    let lanes = |n: &str| {
        n.parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_QUEUES).contains(n))
    };
    match value {
        "one" | "1" => Some(IoThreads::One),
        "per-source" => Some(IoThreads::PerSource),
        _ => match value.strip_prefix("queues:") {
            Some(n) => lanes(n).map(IoThreads::Queues),
            None => lanes(value).map(IoThreads::Queues),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_parsed_strictly() {
        assert_eq!(parse("one"), Some(IoThreads::One));
        assert_eq!(parse(" 1\n"), Some(IoThreads::One));
        assert_eq!(parse("per-source"), Some(IoThreads::PerSource));
        assert_eq!(parse("3"), Some(IoThreads::Queues(3)));
        assert_eq!(parse("queues:2"), Some(IoThreads::Queues(2)));
        assert_eq!(parse("queues:1"), Some(IoThreads::Queues(1)));
        assert_eq!(parse("queues:0"), None);
        assert_eq!(parse("0"), None);
        assert_eq!(parse("queues:65"), None);
        assert_eq!(parse("queues:"), None);
        assert_eq!(parse("queues:-2"), None);
        assert_eq!(parse("split"), None);
        assert_eq!(parse(""), None);
    }

    #[test]
    fn default_follows_the_core_count() {
        assert_eq!(default_for(1), IoThreads::One);
        assert_eq!(default_for(2), IoThreads::One);
        assert_eq!(default_for(3), IoThreads::PerSource);
        assert_eq!(default_for(4), IoThreads::Queues(2));
        assert_eq!(default_for(16), IoThreads::Queues(8));
        assert_eq!(default_for(64), IoThreads::Queues(16));
    }

    #[test]
    fn queues_fit_the_device() {
        assert_eq!(IoThreads::Queues(4).fit(1), IoThreads::One);
        assert_eq!(IoThreads::Queues(4).fit(4), IoThreads::Queues(4));
        assert_eq!(IoThreads::Queues(4).fit(2), IoThreads::Queues(2));
        assert_eq!(IoThreads::PerSource.fit(1), IoThreads::PerSource);
        assert_eq!(IoThreads::Queues(3).lanes(), 3);
        assert_eq!(IoThreads::One.lanes(), 1);
    }

    #[test]
    fn every_descriptor_is_served_exactly_once() {
        let choices = [
            IoThreads::One,
            IoThreads::PerSource,
            IoThreads::Queues(1),
            IoThreads::Queues(4),
        ];
        for threads in choices {
            let roles: Vec<IoRole> = threads.roles().into_iter().map(|(_, r)| r).collect();
            for lane in 0..threads.lanes() {
                let count = |f: fn(&IoRole) -> bool| {
                    roles.iter().filter(|r| r.lane == lane && f(r)).count()
                };
                assert_eq!(count(|r| r.tun), 1, "{threads:?} lane {lane}: TUN");
                assert_eq!(count(|r| r.v4), 1, "{threads:?} lane {lane}: IPv4");
                assert_eq!(count(|r| r.v6), 1, "{threads:?} lane {lane}: IPv6");
            }
            assert!(roles.iter().all(|r| r.lane < threads.lanes()));
        }
    }
}
