//! Handshake messages: the bounded queue the I/O threads fill, and the one
//! thread that empties it.
//!
//! A flood of handshake messages costs the data path one copy each and
//! never a Diffie-Hellman: the I/O threads screen a message (MAC1, under
//! the lock they hold anyway) and queue it; the handshake thread does the
//! expensive work in batches.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferroguard_proto::device::ReceiveOutcome;
use ferroguard_proto::peer::Endpoint;

use super::Shared;
use crate::clock;

/// Handshake messages wait here for the handshake thread. Bounded: when
/// full, new handshake messages are dropped (the sender retries after
/// REKEY_TIMEOUT); its length is the backlog that switches the engine to
/// cookie replies ("under load"), as the kernel's queue does.
pub(super) struct HandshakeQueue {
    sender: SyncSender<QueuedHandshake>,
    /// Taken by the one handshake thread.
    receiver: Mutex<Option<Receiver<QueuedHandshake>>>,
    len: AtomicUsize,
    /// Messages dropped because the queue was full (for metrics).
    full_drops: AtomicU64,
}

/// A handshake datagram and where it came from.
type QueuedHandshake = (Endpoint, Vec<u8>);

/// Handshake messages queued at most (the kernel allows 4096; wireguard-go 1024).
const HANDSHAKE_QUEUE: usize = 1024;

/// Handshake messages handled under one acquisition of the engine lock at
/// most, and the time after which the thread lets the data path have the
/// lock again. Under a flood this takes one wake-up and one lock per batch
/// instead of per message; a valid initiation costs about 60 µs, so the time
/// bound keeps the data path from waiting much longer than one of them.
const HANDSHAKE_BATCH: usize = 32;
const HANDSHAKE_LOCK_BUDGET: Duration = Duration::from_micros(200);

impl HandshakeQueue {
    pub(super) fn new() -> Self {
        let (sender, receiver) = sync_channel(HANDSHAKE_QUEUE);
        HandshakeQueue {
            sender,
            receiver: Mutex::new(Some(receiver)),
            len: AtomicUsize::new(0),
            full_drops: AtomicU64::new(0),
        }
    }

    /// Queues a copy of a handshake datagram; false if the queue is full.
    pub(super) fn push(&self, from: Endpoint, datagram: &[u8]) -> bool {
        match self.sender.try_send((from, datagram.to_vec())) {
            Ok(()) => {
                self.len.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.full_drops.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Messages waiting.
    pub(super) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Messages dropped because the queue was full.
    pub(super) fn full_drops(&self) -> u64 {
        self.full_drops.load(Ordering::Relaxed)
    }

    /// Counts one message taken off the queue; returns the backlog behind it.
    fn taken(&self) -> usize {
        self.len.fetch_sub(1, Ordering::Relaxed).saturating_sub(1)
    }
}

/// Initiations, responses and cookie replies (types 1–3): the messages
/// that go to the handshake thread.
pub(super) fn is_handshake(datagram: &[u8]) -> bool {
    matches!(datagram.first(), Some(1..=3))
}

/// Processes queued handshake messages forever, telling the engine the
/// backlog so that it switches to cookie replies under load.
pub fn handshake_loop(shared: Arc<Shared>) {
    let receiver = shared
        .handshakes
        .receiver
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    let Some(receiver) = receiver else {
        return; // only one handshake thread
    };
    while let Ok(first) = receiver.recv() {
        let ((), pending) = shared.with_engine(|engine| {
            let started = Instant::now();
            let mut handled = 0;
            let mut next = Some(first);
            while let Some((from, mut datagram)) = next.take() {
                let backlog = shared.handshakes.taken();
                engine.device.set_handshake_backlog(backlog);
                if let ReceiveOutcome::Dropped(reason) =
                    engine.device.receive(clock::now(), from, &mut datagram)
                {
                    log::trace!("dropped a datagram from {}: {}", from.addr, reason.name());
                }
                handled += 1;
                if handled < HANDSHAKE_BATCH && started.elapsed() < HANDSHAKE_LOCK_BUDGET {
                    next = receiver.try_recv().ok();
                }
            }
        });
        shared.send_all(pending);
    }
}
