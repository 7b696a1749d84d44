//! Network-namespace helpers: identify a namespace and open a socket inside
//! one without moving the calling thread.
//!
//! A socket belongs for life to the namespace its creating thread was in, and
//! `setns(2)` changes the namespace of the calling thread only. So a
//! short-lived helper thread enters the target namespace, creates the socket
//! and exits; the socket can then be used from any thread. This is how the
//! TUN device keeps answering MTU and address queries after its interface was
//! moved into another namespace.

use super::check;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

/// Identity of a network namespace: the device and inode of its nsfs file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct NetnsId {
    dev: u64,
    ino: u64,
}

impl NetnsId {
    /// The identity of the namespace that `ns` (an nsfs descriptor) refers to.
    pub(super) fn of(ns: BorrowedFd<'_>) -> io::Result<NetnsId> {
        let file = File::from(ns.try_clone_to_owned()?);
        let meta = file.metadata()?;
        Ok(NetnsId {
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    /// The identity of the calling thread's network namespace.
    pub(super) fn current() -> io::Result<NetnsId> {
        let meta = std::fs::metadata("/proc/thread-self/ns/net")?;
        Ok(NetnsId {
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }
}

/// A close-on-exec `AF_INET` datagram socket in the calling thread's
/// namespace, for `SIOC*IF*` ioctls.
pub(super) fn control_socket_here() -> io::Result<OwnedFd> {
    // SAFETY: socket(2) takes no pointers; the result is checked.
    let raw =
        check(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: `raw` is a new descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// A control socket (as [`control_socket_here`]) inside the network namespace
/// `ns` refers to, created on a helper thread so that the caller's thread
/// stays where it is. Needs `CAP_SYS_ADMIN` (for `setns`).
pub(super) fn control_socket_in(ns: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let ns = ns.try_clone_to_owned()?;
    std::thread::Builder::new()
        .name("netns-helper".into())
        .spawn(move || {
            enter_netns(ns.as_fd())?;
            control_socket_here()
        })?
        .join()
        .map_err(|_| io::Error::other("network namespace helper thread panicked"))?
}

/// Moves the calling thread into the network namespace `ns` refers to.
fn enter_netns(ns: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: setns takes a descriptor and a flag; no memory is passed.
    check(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) }).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_namespace_is_stable_and_matches_its_file() {
        let first = NetnsId::current().unwrap();
        assert_eq!(first, NetnsId::current().unwrap());
        let file = File::open("/proc/thread-self/ns/net").unwrap();
        assert_eq!(NetnsId::of(file.as_fd()).unwrap(), first);
    }

    #[test]
    fn control_socket_in_own_namespace_works() {
        let file = File::open("/proc/thread-self/ns/net").unwrap();
        match control_socket_in(file.as_fd()) {
            Ok(socket) => assert!(socket.as_raw_fd() >= 0),
            // Without CAP_SYS_ADMIN setns is refused; that is the documented need.
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EPERM)),
        }
    }
}
