//! The state every thread of the runtime shares, and the one way to take a
//! turn at the engine ([`Shared::with_engine`]).

use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use ferroguard_proto::device::{Device, Transmit};

use super::events::drain;
use super::handshakes::HandshakeQueue;
use super::timers::TimerKick;
use super::tx::TunReader;
use crate::crypto_pool::CryptoPool;
use crate::sys::tun::Tun;
use crate::sys::udp::UdpSockets;
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
    sockets: RwLock<Arc<UdpSockets>>,
    tun: Arc<Tun>,
    /// One wake-up per receiver thread, notified when the sockets change.
    pub(super) receiver_wakers: [EventFd; 2],
    pub(super) timer: TimerKick,
    pub(super) handshakes: HandshakeQueue,
    pub(super) tun_reader: Mutex<TunReader>,
    /// Serialises rebinds so two configuration changes cannot interleave.
    rebind_lock: Mutex<()>,
    /// The crypto workers for large batches.
    pub(super) crypto: CryptoPool,
}

impl Shared {
    /// Builds the shared state around an engine, a TUN device and sockets.
    pub fn new(device: Device, tun: Tun, sockets: UdpSockets) -> std::io::Result<Arc<Shared>> {
        Ok(Arc::new(Shared {
            engine: Mutex::new(Engine { device, fwmark: 0 }),
            sockets: RwLock::new(Arc::new(sockets)),
            tun: Arc::new(tun),
            receiver_wakers: [EventFd::new()?, EventFd::new()?],
            timer: TimerKick::new(),
            handshakes: HandshakeQueue::new(),
            tun_reader: Mutex::new(TunReader::new()),
            rebind_lock: Mutex::new(()),
            crypto: CryptoPool::from_env(),
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
    pub fn sockets(&self) -> Arc<UdpSockets> {
        self.sockets
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The TUN device.
    pub fn tun(&self) -> &Tun {
        &self.tun
    }

    /// Handshake messages waiting for the handshake thread (for metrics).
    pub fn handshake_queue_len(&self) -> usize {
        self.handshakes.len()
    }

    /// Handshake messages dropped because their queue was full (for metrics).
    pub fn handshake_queue_full_drops(&self) -> u64 {
        self.handshakes.full_drops()
    }

    /// Rebinds the UDP sockets to `port` with `fwmark`, waking the receivers.
    pub fn rebind(&self, port: u16, fwmark: u32) -> std::io::Result<()> {
        let _guard = self.rebind_lock.lock().unwrap_or_else(|e| e.into_inner());
        let fresh = Arc::new(UdpSockets::bind(port, fwmark)?);
        *self.sockets.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        for waker in &self.receiver_wakers {
            let _ = waker.notify();
        }
        Ok(())
    }
}
