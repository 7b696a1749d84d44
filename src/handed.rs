//! Descriptors handed to the daemon instead of ones it opens: the TUN
//! device (`WG_TUN_FD`) and the configuration socket (`WG_UAPI_FD`, or
//! systemd socket activation), as an app, a privileged helper or systemd
//! passes them (see `sys::handed_fds` for the variables).
//!
//! Decisions:
//! - A handed TUN descriptor must be `IFF_TUN | IFF_NO_PI`; with
//!   `IFF_VNET_HDR` on, the daemon uses the header and asks for offloads
//!   (as when it opens the device itself). Its interface name is the
//!   kernel's; the name on the command line still names the socket file.
//! - A handed configuration socket is served as it is: its file (if any)
//!   belongs to whoever made it, so the daemon neither watches nor removes
//!   it, and stops when the interface goes or on SIGTERM.
//! - `WG_UAPI_FD` together with socket activation is refused (which one
//!   was meant is unclear), and so is `--user` with a handed configuration
//!   socket (the privilege drop relies on owning the socket file).

use std::io;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

use crate::sys::handed_fds::{check_listening_unix_socket, take_env_fd, take_systemd_socket};
use crate::sys::tun::Tun;
use crate::uapi::UapiListener;

/// The configuration socket: bound by the daemon, or handed in.
#[derive(Debug)]
pub enum ConfigSocket {
    /// `<socket dir>/<interface>.sock`, the daemon's own.
    Bound(UapiListener),
    /// A listening socket handed in (`WG_UAPI_FD` or socket activation).
    Handed(UnixListener),
}

impl ConfigSocket {
    /// The handed socket if there is one, else a bound one for `interface`.
    pub fn open(interface: &str) -> io::Result<ConfigSocket> {
        let by_variable = take_env_fd("WG_UAPI_FD")?;
        let by_systemd = take_systemd_socket()?;
        let fd = match (by_variable, by_systemd) {
            (Some(_), Some(_)) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "both WG_UAPI_FD and systemd socket activation name a configuration socket",
                ))
            }
            (Some(fd), None) | (None, Some(fd)) => fd,
            (None, None) => return UapiListener::bind(interface).map(ConfigSocket::Bound),
        };
        check_listening_unix_socket(&fd)?;
        let listener = UnixListener::from(fd);
        listener.set_nonblocking(false)?;
        log::info!("configuration socket handed in");
        Ok(ConfigSocket::Handed(listener))
    }

    /// The socket file the daemon owns (None for a handed socket).
    pub fn owned_path(&self) -> Option<&Path> {
        match self {
            ConfigSocket::Bound(listener) => Some(listener.path()),
            ConfigSocket::Handed(_) => None,
        }
    }

    /// Waits for and accepts one connection.
    pub fn accept(&self) -> io::Result<UnixStream> {
        match self {
            ConfigSocket::Bound(listener) => listener.accept(),
            ConfigSocket::Handed(listener) => listener.accept().map(|(stream, _)| stream),
        }
    }
}

/// The TUN device handed in by `WG_TUN_FD`, if any.
pub fn take_tun() -> io::Result<Option<Tun>> {
    let Some(fd) = take_env_fd("WG_TUN_FD")? else {
        return Ok(None);
    };
    let tun = Tun::from_fd(fd)?;
    log::info!(
        "TUN device {} handed in, offloads {:?}",
        tun.name(),
        tun.offloads()
    );
    Ok(Some(tun))
}
