//! Descriptors handed to the daemon by whoever started it, instead of ones
//! it opens itself:
//!
//! - `WG_TUN_FD=N`: an open TUN descriptor (as wireguard-go takes it; an app
//!   or a privileged helper created the interface);
//! - `WG_UAPI_FD=N`: a listening UNIX stream socket for the configuration
//!   protocol (as wireguard-go takes it);
//! - systemd socket activation (`LISTEN_PID` = our pid, `LISTEN_FDS` ≥ 1):
//!   descriptor 3 is the configuration socket.
//!
//! Each variable is read once and removed from the environment, so that
//! nothing the daemon might start inherits it. Each descriptor is checked
//! (open, the right kind) and made close-on-exec before it is owned.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use super::check;

/// systemd's first passed descriptor (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;

/// Takes the descriptor named by environment variable `var`, if set.
pub fn take_env_fd(var: &str) -> io::Result<Option<OwnedFd>> {
    let Some(value) = take_env(var) else {
        return Ok(None);
    };
    let fd: RawFd = value
        .trim()
        .parse()
        .ok()
        .filter(|fd| *fd >= 0)
        .ok_or_else(|| invalid(format!("{var}={value:?} is not a descriptor number")))?;
    own(fd)
        .map(Some)
        .map_err(|e| io::Error::new(e.kind(), format!("{var}={fd}: {e}")))
}

/// The first socket passed by systemd socket activation, if the variables
/// are meant for this process (`LISTEN_PID` is our pid).
pub fn take_systemd_socket() -> io::Result<Option<OwnedFd>> {
    let pid = take_env("LISTEN_PID");
    let count = take_env("LISTEN_FDS");
    take_env("LISTEN_FDNAMES");
    let (Some(pid), Some(count)) = (pid, count) else {
        return Ok(None);
    };
    if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
        return Ok(None); // meant for another process (inherited by mistake)
    }
    match count.trim().parse::<u32>() {
        Ok(0) => Ok(None),
        Ok(_) => own(LISTEN_FDS_START)
            .map(Some)
            .map_err(|e| io::Error::new(e.kind(), format!("LISTEN_FDS: descriptor 3: {e}"))),
        Err(_) => Err(invalid(format!("LISTEN_FDS={count:?} is not a number"))),
    }
}

/// Checks that `fd` is a listening UNIX stream socket.
pub fn check_listening_unix_socket(fd: &OwnedFd) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let raw = fd.as_raw_fd();
    let domain = int_option(raw, libc::SO_DOMAIN)?;
    let kind = int_option(raw, libc::SO_TYPE)?;
    let listening = int_option(raw, libc::SO_ACCEPTCONN)?;
    if domain != libc::AF_UNIX || kind != libc::SOCK_STREAM || listening == 0 {
        return Err(invalid(
            "the configuration descriptor is not a listening UNIX stream socket".into(),
        ));
    }
    Ok(())
}

fn int_option(fd: RawFd, name: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into the live local
    // `value`, whose size `len` states.
    check(unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            name,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    })
    .map_err(|e| match e.raw_os_error() {
        Some(libc::ENOTSOCK) => invalid("the configuration descriptor is not a socket".into()),
        _ => e,
    })?;
    Ok(value)
}

/// Checks that `fd` is open, makes it close-on-exec and takes ownership.
fn own(fd: RawFd) -> io::Result<OwnedFd> {
    if fd <= 2 {
        return Err(invalid(
            "descriptors 0-2 are standard input and output".into(),
        ));
    }
    // SAFETY: F_GETFD only reads the descriptor's flags; an unused number
    // fails with EBADF, which is returned.
    let flags = check(unsafe { libc::fcntl(fd, libc::F_GETFD) })?;
    // SAFETY: F_SETFD on the descriptor just found open, with an integer.
    check(unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) })?;
    // SAFETY: the descriptor is open, and the process that started us handed
    // it over by naming it: nothing else in this process owns it (the
    // variable is removed, so it is taken once).
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Reads and removes an environment variable. Called at start-up, before
/// any thread is spawned (removing variables is not thread-safe).
fn take_env(var: &str) -> Option<String> {
    let value = std::env::var(var).ok();
    if value.is_some() {
        std::env::remove_var(var);
    }
    value
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}
