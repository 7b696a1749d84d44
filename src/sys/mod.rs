//! Platform code: the only place where `unsafe` is allowed.
//!
//! Every `unsafe` block is small and carries a `// SAFETY:` comment. The rest
//! of the daemon sees safe types only:
//!
//! - [`tun::Tun`]: the TUN device (packets in and out of the host's IP stack),
//!   plain or with the virtio-net header and segmentation offloads;
//! - [`udp::UdpSockets`]: the device's IPv4 and IPv6 UDP sockets, with UDP
//!   GSO on send and GRO on receive where the kernel has them;
//! - [`udp_group::SocketGroup`]: several such pairs on one port
//!   (`SO_REUSEPORT`), one per I/O thread of the parallel data path;
//! - [`process`]: daemonizing and interface-name helpers;
//! - [`privileges`]: switching to an unprivileged user after set-up;
//! - [`epoll::Epoll`]: the data path's wait on its descriptors;
//! - here: [`poll_readable`] (a one-off wait on a few descriptors, for
//!   tests and tools) and [`EventFd`], the means to wake a waiting thread.
//!
//! # Blocking model
//!
//! [`tun::Tun::read`] blocks; [`udp::UdpSockets::recv_batch`] never blocks
//! (it returns [`io::ErrorKind::WouldBlock`] when nothing is queued). The
//! daemon's I/O threads wait with an [`epoll::Epoll`] on their descriptors
//! plus an [`EventFd`] (which says the sockets were replaced), and read only
//! what is reported ready. Sends block while the socket's send buffer is full, which
//! is the back-pressure the sender wants.

pub mod epoll;
pub mod handed_fds;
pub mod netlink;
pub mod privileges;
pub mod process;
pub mod syslog;
pub mod tun;
pub mod udp;
pub mod udp_group;

mod netns;

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

/// Turns the `-1`-on-error convention of libc calls into an [`io::Result`].
fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Like [`check`], for calls returning `ssize_t`; the count as `usize`.
fn check_len(ret: libc::ssize_t) -> io::Result<usize> {
    usize::try_from(ret).map_err(|_| io::Error::last_os_error())
}

/// Sets an integer socket option.
fn set_int_option(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` is a live c_int and `len` is exactly its size; the
    // kernel only reads that many bytes. An invalid fd yields EBADF.
    let ret =
        unsafe { libc::setsockopt(fd, level, name, (&value as *const libc::c_int).cast(), len) };
    check(ret).map(drop)
}

/// Reads an integer socket option.
fn get_int_option(fd: RawFd, level: libc::c_int, name: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are live locals; `len` tells the kernel the
    // buffer size, so it writes at most that many bytes.
    let ret = unsafe {
        libc::getsockopt(
            fd,
            level,
            name,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    check(ret).map(|_| value)
}

/// Waits until at least one of `fds` is readable, or `timeout` passes
/// (`None`: wait forever). Returns one flag per descriptor, in order; all
/// false means the timeout passed.
///
/// A descriptor in an error or hang-up state (for instance a TUN whose
/// interface was deleted) counts as readable, so that the caller's next read
/// reports the error instead of the caller spinning. Interrupted waits
/// (`EINTR`) are resumed with the remaining time.
pub fn poll_readable(fds: &[RawFd], timeout: Option<Duration>) -> io::Result<Vec<bool>> {
    let mut pollfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let deadline = timeout.map(|t| Instant::now().checked_add(t));
    loop {
        let timeout_ms = match deadline {
            None | Some(None) => -1,
            Some(Some(deadline)) => {
                poll_timeout_ms(deadline.saturating_duration_since(Instant::now()))
            }
        };
        match poll_once(&mut pollfds, timeout_ms) {
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    let ready = libc::POLLIN | libc::POLLERR | libc::POLLHUP | libc::POLLNVAL;
    Ok(pollfds.iter().map(|p| p.revents & ready != 0).collect())
}

/// A timeout for `poll(2)` in milliseconds, rounded up so that a short wait
/// does not become a busy loop.
fn poll_timeout_ms(remaining: Duration) -> libc::c_int {
    let ms = remaining.as_nanos().div_ceil(1_000_000);
    libc::c_int::try_from(ms).unwrap_or(libc::c_int::MAX)
}

/// One `poll(2)` call.
fn poll_once(pollfds: &mut [libc::pollfd], timeout_ms: libc::c_int) -> io::Result<usize> {
    let count = libc::nfds_t::try_from(pollfds.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "too many descriptors"))?;
    // SAFETY: `pollfds` is a valid, exclusively borrowed array of `count`
    // pollfd structures; the kernel writes only their `revents` fields.
    let ret = unsafe { libc::poll(pollfds.as_mut_ptr(), count, timeout_ms) };
    check(ret).map(|n| n as usize)
}

/// An `eventfd(2)` used to wake threads waiting in [`epoll::Epoll::wait`]
/// or [`poll_readable`]:
/// [`notify`](Self::notify) makes it readable until [`drain`](Self::drain).
///
/// It is non-blocking and close-on-exec; it can be shared between threads
/// (`&EventFd` is enough for every operation).
#[derive(Debug)]
pub struct EventFd {
    fd: OwnedFd,
}

impl EventFd {
    /// Creates an event descriptor with a zero counter (not readable).
    pub fn new() -> io::Result<EventFd> {
        // SAFETY: eventfd takes no pointers; the result is checked below.
        let raw = check(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
        // SAFETY: `raw` is a freshly created descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(EventFd { fd })
    }

    /// Makes the descriptor readable, waking every poller. Never blocks; a
    /// counter already at its maximum is left as it is (it is readable then).
    pub fn notify(&self) -> io::Result<()> {
        let one: u64 = 1;
        // SAFETY: writes the 8 bytes of the live local `one`, as eventfd wants.
        let ret = unsafe { libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
        match check_len(ret) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Resets the counter so the descriptor is no longer readable. Returns
    /// whether it had been notified.
    pub fn drain(&self) -> io::Result<bool> {
        let mut counter: u64 = 0;
        // SAFETY: reads at most 8 bytes into the live local `counter`.
        let ret = unsafe { libc::read(self.fd.as_raw_fd(), (&mut counter as *mut u64).cast(), 8) };
        match check_len(ret) {
            Ok(_) => Ok(counter != 0),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(e),
        }
    }
}

impl AsRawFd for EventFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eventfd_wakes_poll_and_drains() {
        let event = EventFd::new().unwrap();
        let fd = event.as_raw_fd();
        let idle = poll_readable(&[fd], Some(Duration::from_millis(10))).unwrap();
        assert_eq!(idle, vec![false]);
        event.notify().unwrap();
        event.notify().unwrap();
        let ready = poll_readable(&[fd], Some(Duration::from_secs(5))).unwrap();
        assert_eq!(ready, vec![true]);
        assert!(event.drain().unwrap());
        assert!(!event.drain().unwrap());
        let idle = poll_readable(&[fd], Some(Duration::ZERO)).unwrap();
        assert_eq!(idle, vec![false]);
    }

    #[test]
    fn poll_reports_each_descriptor() {
        let first = EventFd::new().unwrap();
        let second = EventFd::new().unwrap();
        second.notify().unwrap();
        let fds = [first.as_raw_fd(), second.as_raw_fd()];
        assert_eq!(poll_readable(&fds, None).unwrap(), vec![false, true]);
    }

    #[test]
    fn notify_from_another_thread_wakes_a_waiter() {
        let event = std::sync::Arc::new(EventFd::new().unwrap());
        let notifier = event.clone();
        let started = Instant::now();
        let thread = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            notifier.notify().unwrap();
        });
        let ready = poll_readable(&[event.as_raw_fd()], Some(Duration::from_secs(10))).unwrap();
        thread.join().unwrap();
        assert_eq!(ready, vec![true]);
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn poll_timeout_rounds_up() {
        assert_eq!(poll_timeout_ms(Duration::from_micros(1)), 1);
        assert_eq!(poll_timeout_ms(Duration::ZERO), 0);
        assert_eq!(
            poll_timeout_ms(Duration::from_secs(u64::MAX)),
            libc::c_int::MAX
        );
    }

    #[test]
    fn int_socket_options_round_trip() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let fd = socket.as_raw_fd();
        set_int_option(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1).unwrap();
        assert_eq!(
            get_int_option(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR).unwrap(),
            1
        );
    }
}
