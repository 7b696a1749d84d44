//! Route and address change notifications (rtnetlink multicast groups).
//!
//! The daemon keeps, per peer, the local address its packets arrived at and
//! replies from it ("sticky source"). When routes or addresses change in the
//! daemon's network namespace that choice may become wrong (a better route
//! with another source, as in the kernel's netns test #20), so every change
//! makes the daemon forget the sticky sources; the next packet from each peer
//! teaches the right one again.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// A netlink socket subscribed to route and address changes.
#[derive(Debug)]
pub struct RouteMonitor {
    fd: OwnedFd,
}

const GROUPS: u32 = (libc::RTMGRP_IPV4_ROUTE
    | libc::RTMGRP_IPV6_ROUTE
    | libc::RTMGRP_IPV4_IFADDR
    | libc::RTMGRP_IPV6_IFADDR
    | libc::RTMGRP_LINK) as u32;

impl RouteMonitor {
    /// Opens the socket in the calling thread's network namespace.
    pub fn new() -> io::Result<RouteMonitor> {
        // SAFETY: socket(2) with constant arguments; the result is checked.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_nl is plain data; all-zero is a valid value.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        addr.nl_groups = GROUPS;
        // SAFETY: `addr` is a valid sockaddr_nl and the length matches it.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(RouteMonitor { fd })
    }

    /// Blocks until at least one notification arrives, then consumes it.
    /// An overrun (ENOBUFS: notifications were lost) also counts as a change.
    pub fn wait(&self) -> io::Result<()> {
        let mut buf = [0u8; 8192];
        loop {
            // SAFETY: `buf` is valid for writes of its length.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n >= 0 {
                return Ok(());
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::ENOBUFS) => return Ok(()),
                _ => return Err(err),
            }
        }
    }
}
