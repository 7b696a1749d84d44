//! How the data path's I/O is spread over threads: one thread for the TUN
//! device and both sockets, or one thread per descriptor.
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
//! default stays one thread per descriptor; not measured here (this
//! machine has 2 cores), so `FERROGUARD_IO_THREADS` lets an operator choose.

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
}

impl IoThreads {
    /// The choice `FERROGUARD_IO_THREADS` makes (`one` or `per-source`);
    /// unset or unreadable (reported), the default for this machine.
    pub fn from_env() -> Self {
        let chosen = match std::env::var(ENV) {
            Ok(value) => parse(&value).or_else(|| {
                log::warn!("{ENV}={value:?} is neither 'one' nor 'per-source'; using the default");
                None
            }),
            Err(_) => None,
        };
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = chosen.unwrap_or_else(|| default_for(cores));
        log::debug!("I/O threads: {threads:?}");
        threads
    }

    /// The threads to start: a name and what each serves. Together they
    /// cover the TUN device and both families exactly once.
    pub fn roles(self) -> Vec<(&'static str, IoRole)> {
        match self {
            IoThreads::One => vec![("io", IoRole::ALL)],
            IoThreads::PerSource => vec![
                ("tun", IoRole::TUN),
                ("udp-V4", IoRole::socket(Family::V4)),
                ("udp-V6", IoRole::socket(Family::V6)),
            ],
        }
    }
}

/// The default on a machine with `cores` cores (see the module comment).
fn default_for(cores: usize) -> IoThreads {
    if cores < crate::crypto_pool::MIN_CORES_FOR_HELPERS {
        IoThreads::One
    } else {
        IoThreads::PerSource
    }
}

fn parse(value: &str) -> Option<IoThreads> {
    match value.trim() {
        "one" | "1" => Some(IoThreads::One),
        "per-source" => Some(IoThreads::PerSource),
        _ => None,
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
        assert_eq!(parse("3"), None);
        assert_eq!(parse("split"), None);
        assert_eq!(parse(""), None);
    }

    #[test]
    fn default_follows_the_core_count() {
        assert_eq!(default_for(1), IoThreads::One);
        assert_eq!(default_for(2), IoThreads::One);
        assert_eq!(default_for(3), IoThreads::PerSource);
        assert_eq!(default_for(64), IoThreads::PerSource);
    }

    #[test]
    fn every_descriptor_is_served_exactly_once() {
        for threads in [IoThreads::One, IoThreads::PerSource] {
            let roles: Vec<IoRole> = threads.roles().into_iter().map(|(_, r)| r).collect();
            let count = |f: fn(&IoRole) -> bool| roles.iter().filter(|r| f(r)).count();
            assert_eq!(count(|r| r.tun), 1, "{threads:?}: TUN");
            assert_eq!(count(|r| r.v4), 1, "{threads:?}: IPv4");
            assert_eq!(count(|r| r.v6), 1, "{threads:?}: IPv6");
        }
    }
}
