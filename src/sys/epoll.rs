//! `epoll(7)`: wait on a fixed set of descriptors without handing the kernel
//! the whole set again at every wait, as `poll(2)` does.
//!
//! Level-triggered, read interest only: a descriptor is reported while it
//! is readable, in an error state or hung up, so a caller that reads only
//! part of what is queued is told again at its next wait.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use super::check;

/// An epoll instance; each registered descriptor carries a caller's token.
#[derive(Debug)]
pub struct Epoll {
    fd: OwnedFd,
}

/// Ready descriptors reported by one wait at most.
const MAX_EVENTS: usize = 8;

impl Epoll {
    /// A new, empty instance (close-on-exec).
    pub fn new() -> io::Result<Epoll> {
        // SAFETY: epoll_create1 takes no pointers; the result is checked.
        let raw = check(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: `raw` is a freshly created descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(Epoll { fd })
    }

    /// Watches `fd` for input, reporting it as `token`. The caller keeps
    /// `fd` open while it is registered (or removes it first).
    pub fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let mut event = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        self.control(libc::EPOLL_CTL_ADD, fd, &mut event)
    }

    /// Stops watching `fd`.
    pub fn remove(&self, fd: RawFd) -> io::Result<()> {
        // Kernels before 2.6.9 wanted a non-null event even for DEL.
        let mut unused = libc::epoll_event { events: 0, u64: 0 };
        self.control(libc::EPOLL_CTL_DEL, fd, &mut unused)
    }

    fn control(&self, op: libc::c_int, fd: RawFd, event: &mut libc::epoll_event) -> io::Result<()> {
        // SAFETY: `event` is a live, exclusively borrowed epoll_event that the
        // kernel only reads during the call.
        check(unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), op, fd, event) }).map(|_| ())
    }

    /// Waits until a watched descriptor is ready or `timeout` passes (None:
    /// forever), and replaces `ready` with the tokens of the ready ones. An
    /// interrupted wait (`EINTR`) returns with `ready` empty.
    pub fn wait(&self, ready: &mut Vec<u64>, timeout: Option<Duration>) -> io::Result<()> {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; MAX_EVENTS];
        let timeout_ms = timeout.map_or(-1, |t| {
            libc::c_int::try_from(t.as_nanos().div_ceil(1_000_000)).unwrap_or(libc::c_int::MAX)
        });
        ready.clear();
        // SAFETY: `events` is a live local array of MAX_EVENTS entries, the
        // count passed; the kernel writes at most that many.
        let n = unsafe {
            libc::epoll_wait(
                self.fd.as_raw_fd(),
                events.as_mut_ptr(),
                MAX_EVENTS as libc::c_int,
                timeout_ms,
            )
        };
        match check(n) {
            Ok(n) => {
                ready.extend(events[..n as usize].iter().map(|e| e.u64));
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::EventFd;

    #[test]
    fn reports_the_token_of_each_ready_descriptor_until_drained() {
        let epoll = Epoll::new().unwrap();
        let (a, b) = (EventFd::new().unwrap(), EventFd::new().unwrap());
        epoll.add(a.as_raw_fd(), 7).unwrap();
        epoll.add(b.as_raw_fd(), 9).unwrap();
        let mut ready = vec![42];
        epoll
            .wait(&mut ready, Some(Duration::from_millis(1)))
            .unwrap();
        assert!(ready.is_empty(), "nothing ready yet: {ready:?}");
        b.notify().unwrap();
        epoll
            .wait(&mut ready, Some(Duration::from_secs(5)))
            .unwrap();
        assert_eq!(ready, [9]);
        // Level-triggered: still ready until drained.
        epoll
            .wait(&mut ready, Some(Duration::from_secs(5)))
            .unwrap();
        assert_eq!(ready, [9]);
        a.notify().unwrap();
        b.drain().unwrap();
        epoll
            .wait(&mut ready, Some(Duration::from_secs(5)))
            .unwrap();
        assert_eq!(ready, [7]);
    }

    #[test]
    fn a_removed_descriptor_is_no_longer_reported() {
        let epoll = Epoll::new().unwrap();
        let a = EventFd::new().unwrap();
        epoll.add(a.as_raw_fd(), 1).unwrap();
        a.notify().unwrap();
        epoll.remove(a.as_raw_fd()).unwrap();
        let mut ready = Vec::new();
        epoll
            .wait(&mut ready, Some(Duration::from_millis(1)))
            .unwrap();
        assert!(ready.is_empty());
        assert!(
            epoll.remove(a.as_raw_fd()).is_err(),
            "not registered any more"
        );
    }
}
