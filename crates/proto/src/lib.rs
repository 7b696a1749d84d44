//! Ferroguard's protocol core: WireGuard without I/O and without a clock.
//!
//! The caller owns sockets, the TUN device and time. It hands datagrams,
//! IP packets and "now" to a [`device::Device`] and gets back datagrams to
//! send, packets to deliver and the next instant at which the engine wants
//! to be woken. Nothing here blocks, sleeps, reads a clock or touches a file,
//! so the engine is deterministic, fuzzable and embeddable.
//!
//! One concern per module, as in the Linux driver.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod allowedips;
pub mod constants;
pub mod cookie;
pub mod crypto;
pub mod device;
pub mod messages;
pub mod noise;
pub mod peer;
pub mod peerlookup;
pub mod ratelimiter;
pub mod replay;
#[cfg(feature = "selftest")]
pub mod selftest;
pub mod tai64n;
pub mod timers;
pub mod transport;
