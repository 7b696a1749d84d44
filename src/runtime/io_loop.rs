//! The epoll loop of one I/O thread: which descriptors it serves (its
//! [`IoRole`]) and in what turns. What happens to a packet from there is in
//! `tx.rs` (TUN readable) and `rx.rs` (socket readable).

use std::os::fd::AsRawFd;
use std::sync::Arc;

use super::rx::{receive, RxState};
use super::tx::serve_tun;
use super::{Shared, MAX_PACKET};
use crate::offload::Coalescer;
use crate::sys::epoll::Epoll;
use crate::sys::udp::{Family, RecvMeta, UdpSockets};

/// Buffers per receive system call (each up to 64 KiB: with UDP GRO one
/// buffer holds up to 64 datagrams).
const RECV_BATCH: usize = 16;

/// Which of the data path's descriptors one I/O thread serves: those of its
/// lane (TUN queue `lane`, the `lane`-th socket pair of the group) that its
/// flags select.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoRole {
    /// The lane: TUN queue and member of the socket group.
    pub lane: usize,
    /// Reads the TUN device (and encrypts what it reads).
    pub tun: bool,
    /// Receives (and decrypts) on these families' sockets.
    pub v4: bool,
    /// See `v4`.
    pub v6: bool,
}

impl IoRole {
    /// Everything: the one I/O thread of
    /// [`IoThreads::One`](crate::io_threads::IoThreads::One).
    pub const ALL: IoRole = IoRole {
        lane: 0,
        tun: true,
        v4: true,
        v6: true,
    };
    /// Only the TUN device.
    pub const TUN: IoRole = IoRole {
        lane: 0,
        tun: true,
        v4: false,
        v6: false,
    };

    /// Only the socket of `family`.
    pub fn socket(family: Family) -> IoRole {
        IoRole {
            lane: 0,
            tun: false,
            v4: family == Family::V4,
            v6: family == Family::V6,
        }
    }

    /// Everything of lane `lane`: a thread of
    /// [`IoThreads::Queues`](crate::io_threads::IoThreads::Queues).
    pub fn lane(lane: usize) -> IoRole {
        IoRole {
            lane,
            ..IoRole::ALL
        }
    }

    fn families(self) -> impl Iterator<Item = Family> {
        [(self.v4, Family::V4), (self.v6, Family::V6)]
            .into_iter()
            .filter_map(|(served, family)| served.then_some(family))
    }
}

/// TUN reads per turn of a thread that also serves sockets, so that a
/// stream read from the TUN cannot starve the receive side (and the
/// reverse: a socket turn is one receive batch).
pub(super) const TUN_READS_PER_TURN: usize = 64;

/// One descriptor an I/O thread waits for (its epoll token).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    /// The sockets of this family were replaced.
    Rebound(Family),
    Tun,
    Socket(Family),
}

impl Source {
    const ALL: [Source; 5] = [
        Source::Rebound(Family::V4),
        Source::Rebound(Family::V6),
        Source::Tun,
        Source::Socket(Family::V4),
        Source::Socket(Family::V6),
    ];

    fn token(self) -> u64 {
        Source::ALL.iter().position(|&s| s == self).unwrap_or(0) as u64
    }

    fn from_token(token: u64) -> Option<Source> {
        Source::ALL.get(usize::try_from(token).ok()?).copied()
    }
}

/// Serves the descriptors of `role` forever: drains the TUN device
/// (route, encrypt, send) and receives datagrams in batches (decrypt,
/// write to the TUN). Returns when the TUN device is gone, or with the
/// error that keeps the thread from waiting at all.
pub fn io_loop(shared: Arc<Shared>, role: IoRole) -> std::io::Error {
    if role.tun {
        if let Err(e) = shared.tun().set_nonblocking(true) {
            return e;
        }
    }
    let offloads = shared.tun().offloads();
    let mut state = RxState {
        bufs: Vec::new(),
        meta: Vec::new(),
        coalescer: offloads.vnet_hdr.then(|| Coalescer::new(offloads.uso)),
    };
    let receives = role.v4 || role.v6;
    if receives {
        state.bufs = (0..RECV_BATCH).map(|_| vec![0u8; MAX_PACKET]).collect();
        state.meta = vec![RecvMeta::default(); RECV_BATCH];
    }
    // A thread that also receives takes the TUN in turns; alone, it drains it.
    let tun_reads = if receives {
        TUN_READS_PER_TURN
    } else {
        usize::MAX
    };
    let mut group = shared.sockets();
    let epoll = match watch(&shared, group.member(role.lane), role) {
        Ok(epoll) => epoll,
        Err(e) => return e,
    };
    let mut ready = Vec::new();
    loop {
        if let Err(e) = epoll.wait(&mut ready, None) {
            return e;
        }
        for source in ready.iter().filter_map(|&t| Source::from_token(t)) {
            match source {
                Source::Rebound(family) => {
                    let _ = shared.receiver_wakers[role.lane][family as usize].drain();
                    let fresh = shared.sockets();
                    if !Arc::ptr_eq(&fresh, &group) {
                        let (old, new) = (group.member(role.lane), fresh.member(role.lane));
                        rewatch_sockets(&epoll, old, new, role);
                        group = fresh;
                    }
                }
                Source::Tun => {
                    if let Some(error) = serve_tun(&shared, role.lane, tun_reads) {
                        return error;
                    }
                }
                Source::Socket(family) => {
                    let sockets = group.member(role.lane);
                    receive(&shared, role.lane, sockets, family, &mut state)
                }
            }
        }
    }
}

/// An epoll instance watching what a thread of `role` serves.
fn watch(shared: &Shared, sockets: &UdpSockets, role: IoRole) -> std::io::Result<Epoll> {
    let epoll = Epoll::new()?;
    for family in role.families() {
        let waker = &shared.receiver_wakers[role.lane][family as usize];
        epoll.add(waker.as_raw_fd(), Source::Rebound(family).token())?;
    }
    if role.tun {
        let queue = shared.tun().queue(role.lane);
        epoll.add(queue.as_raw_fd(), Source::Tun.token())?;
    }
    for (family, fd) in socket_fds(sockets, role) {
        epoll.add(fd, Source::Socket(family).token())?;
    }
    Ok(epoll)
}

/// Moves the watch from the replaced sockets to the fresh ones (the old
/// ones are still open: the caller holds them until this returns).
fn rewatch_sockets(epoll: &Epoll, old: &UdpSockets, fresh: &UdpSockets, role: IoRole) {
    for (_, fd) in socket_fds(old, role) {
        let _ = epoll.remove(fd);
    }
    for (family, fd) in socket_fds(fresh, role) {
        if let Err(e) = epoll.add(fd, Source::Socket(family).token()) {
            log::warn!("cannot wait on the new {family:?} socket: {e}");
        }
    }
}

/// The open sockets among the families `role` serves.
fn socket_fds(
    sockets: &UdpSockets,
    role: IoRole,
) -> impl Iterator<Item = (Family, std::os::fd::RawFd)> {
    let (v4, v6) = sockets.raw_fds();
    role.families().filter_map(move |family| match family {
        Family::V4 => v4.map(|fd| (family, fd)),
        Family::V6 => v6.map(|fd| (family, fd)),
    })
}
