//! The state every thread of the runtime shares, and the one way to take a
//! turn at the engine ([`Shared::with_engine`]).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};

use ferroguard_proto::device::{Device, Transmit};

use super::events::drain;
use super::handshakes::HandshakeQueue;
use super::timers::TimerKick;
use super::tx::TunReader;
use crate::crypto_pool::CryptoPool;
use crate::sys::tun::Tun;
use crate::sys::udp_group::SocketGroup;
use crate::sys::EventFd;

/// The engine and the settings that live beside it.
pub struct Engine {
    /// The protocol engine.
    pub device: Device,
    /// The configured fwmark (0 = none).
    pub fwmark: u32,
}

/// State shared by every thread.
pub struct Shared {
    engine: Mutex<Engine>,
    sockets: RwLock<Arc<SocketGroup>>,
    tun: Arc<Tun>,
    /// Per lane (see [`IoRole::lane`](super::IoRole::lane)), one wake-up
    /// per address family, notified when the sockets change: each is
    /// watched by the one thread that receives on that lane and family.
    pub(super) receiver_wakers: Vec<[EventFd; 2]>,
    pub(super) timer: TimerKick,
    pub(super) handshakes: HandshakeQueue,
    /// Per TUN queue, what reading it needs (see `tx.rs`).
    pub(super) tun_readers: Vec<Mutex<TunReader>>,
    /// Per lane: packets read from its TUN queue and datagrams received on
    /// its sockets (for metrics: which threads carry the traffic).
    lane_packets: Vec<[AtomicU64; 2]>,
    /// Serialises rebinds so two configuration changes cannot interleave.
    rebind_lock: Mutex<()>,
    /// The crypto workers for large batches.
    pub(super) crypto: CryptoPool,
    /// Paired with `engine`: lanes waiting for another lane to release a
    /// peer's counters (`send_room.rs`), and how many wait.
    pub(super) send_room: Condvar,
    pub(super) send_room_waiters: AtomicUsize,
    /// Times a lane waited for room, and packets dropped after waiting in vain.
    pub(super) send_room_waits: AtomicU64,
    pub(super) send_room_drops: AtomicU64,
}

impl Shared {
    /// Builds the shared state around an engine, a TUN device and sockets.
    /// The data path has one lane per TUN queue; lane `i` uses queue `i` and
    /// the `i`-th member of the socket group (which should be as large).
    pub fn new(mut device: Device, tun: Tun, sockets: SocketGroup) -> std::io::Result<Arc<Shared>> {
        super::send_room::apply_lead_limit_from_env(&mut device);
        let lanes = tun.queue_count();
        if sockets.len() != lanes {
            log::warn!(
                "{lanes} TUN queues but {} socket pairs: lanes share sockets",
                sockets.len()
            );
        }
        Ok(Arc::new(Shared {
            engine: Mutex::new(Engine { device, fwmark: 0 }),
            sockets: RwLock::new(Arc::new(sockets)),
            receiver_wakers: (0..lanes)
                .map(|_| Ok([EventFd::new()?, EventFd::new()?]))
                .collect::<std::io::Result<_>>()?,
            timer: TimerKick::new(),
            handshakes: HandshakeQueue::new(),
            tun_readers: (0..lanes)
                .map(|lane| Mutex::new(TunReader::new(lane)))
                .collect(),
            lane_packets: (0..lanes).map(|_| Default::default()).collect(),
            tun: Arc::new(tun),
            rebind_lock: Mutex::new(()),
            crypto: CryptoPool::from_env(),
            send_room: Condvar::new(),
            send_room_waiters: AtomicUsize::new(0),
            send_room_waits: AtomicU64::new(0),
            send_room_drops: AtomicU64::new(0),
        }))
    }

    /// Locks the engine (a poisoned lock is taken over: the engine's state
    /// is consistent between calls). Readers use this; a caller that may
    /// change the engine takes its turn with [`with_engine`](Self::with_engine).
    pub fn engine(&self) -> MutexGuard<'_, Engine> {
        self.engine.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One turn at the engine: runs `work` under the engine lock, takes
    /// every datagram the engine queued meanwhile (handshakes, keepalives,
    /// cookie replies) and wakes the timer thread if a deadline moved
    /// earlier. The caller sends the datagrams with
    /// [`send_all`](Self::send_all) once the lock is released: never a
    /// system call under it.
    pub fn with_engine<R>(&self, work: impl FnOnce(&mut Engine) -> R) -> (R, Vec<Transmit>) {
        let mut engine = self.engine();
        let result = work(&mut engine);
        let pending = drain(&mut engine.device);
        self.timer.kick_if_earlier(engine.device.poll_timeout());
        (result, pending)
    }

    /// The current sockets.
    pub fn sockets(&self) -> Arc<SocketGroup> {
        self.sockets
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The TUN device.
    pub fn tun(&self) -> &Tun {
        &self.tun
    }

    /// The data path's lanes: one per TUN queue (see [`new`](Self::new)).
    pub fn lanes(&self) -> usize {
        self.tun_readers.len()
    }

    /// Counts `packets` read from the TUN (`received` false) or datagrams
    /// received (`received` true) on `lane`.
    pub(super) fn count_lane(&self, lane: usize, received: bool, packets: usize) {
        if let Some(counters) = self.lane_packets.get(lane) {
            counters[usize::from(received)].fetch_add(packets as u64, Ordering::Relaxed);
        }
    }

    /// Per lane: (packets read from its TUN queue, datagrams received on
    /// its sockets), for metrics.
    pub fn lane_packets(&self) -> Vec<(u64, u64)> {
        self.lane_packets
            .iter()
            .map(|c| (c[0].load(Ordering::Relaxed), c[1].load(Ordering::Relaxed)))
            .collect()
    }

    /// Handshake messages waiting for the handshake thread (for metrics).
    pub fn handshake_queue_len(&self) -> usize {
        self.handshakes.len()
    }

    /// Handshake messages dropped because their queue was full (for metrics).
    pub fn handshake_queue_full_drops(&self) -> u64 {
        self.handshakes.full_drops()
    }

    /// Rebinds the UDP sockets to `port` with `fwmark` (as many pairs as
    /// before), waking every receiver.
    pub fn rebind(&self, port: u16, fwmark: u32) -> std::io::Result<()> {
        let _guard = self.rebind_lock.lock().unwrap_or_else(|e| e.into_inner());
        let fresh = Arc::new(SocketGroup::bind(port, fwmark, self.sockets().len())?);
        *self.sockets.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        for waker in self.receiver_wakers.iter().flatten() {
            let _ = waker.notify();
        }
        Ok(())
    }
}
