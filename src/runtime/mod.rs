//! The runtime: threads that connect the protocol engine to the TUN device,
//! the UDP sockets, the clock and the configuration socket.
//!
//! One concern per file, as the kernel driver splits `send.c`,
//! `receive.c`, `queueing.c` and `timers.c`:
//!
//! | file | concern |
//! |---|---|
//! | `shared.rs` | the state every thread shares; [`Shared::with_engine`], the one way to take a turn at the engine |
//! | `batch.rs` | the engine-call skeleton both directions use: prepare under the lock, crypto, complete under the lock |
//! | `tx.rs` | TUN → UDP: read, split, route, encrypt (numbered flow at its top) |
//! | `transmit.rs` | the batch of encrypted datagrams and how it leaves through [`crate::sys::udp`] |
//! | `rx.rs` | UDP → TUN: receive, decrypt, coalesce, write (numbered flow at its top) |
//! | `send_room.rs` | the per-peer send bound between lanes: a lane waits, bounded, for another to send a peer's older counters |
//! | `io_loop.rs` | the epoll loop of an I/O thread: which descriptors it serves and when |
//! | `handshakes.rs` | the handshake queue and the thread that empties it |
//! | `timers.rs` | the thread that sleeps until the engine's next deadline |
//! | `events.rs` | the engine's events as log lines |
//!
//! Threads:
//! * the I/O threads ([`io_loop`]) read the TUN device and encrypt, and
//!   receive datagrams in batches and decrypt: one thread for all of it,
//!   one for the TUN and one per address family, or one per lane (a TUN
//!   queue and a socket pair each, the parallel data path) (`io_threads`);
//! * large batches are encrypted or decrypted outside the engine lock by
//!   the reading thread and the crypto workers together (`crypto_pool`);
//! * one thread handles handshake messages ([`handshake_loop`]);
//! * one thread sleeps until the engine's next deadline ([`timer_loop`]);
//! * the configuration socket is served by `daemon::uapi_loop`: one `uapi` thread accepts,
//!   each connection gets a `uapi-conn` thread of its own (`uapi::serve_concurrently`);
//! * the main thread waits for signals and watches the socket file.
//!
//! The engine sits behind one mutex; it is held only for the protocol work,
//! never across a system call. Shutdown is by process exit after cleanup:
//! threads blocked in `read` need no waking, and closing the TUN descriptor
//! is what deletes the interface.

mod batch;
mod events;
mod handshakes;
mod io_loop;
mod rx;
mod send_room;
mod shared;
mod timers;
mod transmit;
mod tx;

pub use handshakes::handshake_loop;
pub use io_loop::{io_loop, IoRole};
pub use shared::{Engine, Shared};
pub use timers::timer_loop;
pub use tx::StackSender;

/// Largest datagram or packet handled (UDP's limit).
pub const MAX_PACKET: usize = 65536;
/// Room for the transport header, tag and padding.
const OVERHEAD: usize = 64;
