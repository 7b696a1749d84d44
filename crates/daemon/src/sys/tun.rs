//! The TUN device: IP packets to and from the host's network stack.
//!
//! [`Tun::create`] opens `/dev/net/tun` and attaches it to an interface with
//! `TUNSETIFF` (`IFF_TUN | IFF_NO_PI`: each read or write is exactly one IP
//! packet, without the 4-byte protocol header). The interface lives as long
//! as the [`Tun`]: it is not persistent, so dropping the `Tun` deletes it.
//!
//! # Interface queries across network namespaces
//!
//! The interface may be moved into another network namespace
//! (`ip link set NAME netns X`) while the daemon, its sockets and its
//! threads stay where they were (wireguard-go's test scripts rely on this).
//! An `SIOCGIFMTU` by name on a socket of the daemon's namespace would then
//! fail, or worse, find an unrelated interface that took the same name. So
//! [`Tun::mtu`], [`Tun::set_mtu`] and [`Tun::ipv4_address`] ask the device
//! itself where it lives: `TUNGETIFF` gives its current name (renames are
//! followed too) and `TUNGETDEVNETNS` a descriptor of its current namespace.
//! The ioctl then goes to a control socket in that namespace; one is created
//! (on a helper thread that enters the namespace, see `netns.rs`) whenever
//! the namespace differs from the cached socket's, so the common case costs
//! no thread. Entering another namespace needs `CAP_SYS_ADMIN`; without it
//! these queries fail with `EPERM` once the interface was moved (the daemon
//! keeps its last known MTU then). On kernels without `TUNGETDEVNETNS`
//! (before 5.2) the daemon's own namespace is used.
//!
//! # When the interface is deleted
//!
//! Measured on Linux 6.18 (see `tests/sys_tun.rs`): after `ip link del`,
//! in the daemon's namespace or in the one the interface was moved to, a read
//! that was blocked returns `EFAULT` and later reads and writes return
//! `EBADFD`. Deleting the namespace the interface was moved to deletes the
//! interface as well. [`Tun::is_gone`] recognises these errors; `poll(2)`
//! reports the descriptor as being in error, which
//! [`poll_readable`](super::poll_readable) counts as readable.

use super::netns::{control_socket_here, control_socket_in, NetnsId};
use super::{check, check_len};
use std::fs::OpenOptions;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Mutex, PoisonError};

/// The MTU set at creation, as wireguard-go does: 1500 minus the largest
/// overhead (IPv6 40 + UDP 8 + WireGuard data header 16 + tag 16 = 80).
pub const DEFAULT_MTU: u32 = 1420;

/// The longest interface name: `IFNAMSIZ` minus the terminating NUL.
pub const MAX_NAME_LEN: usize = libc::IFNAMSIZ - 1;

/// How the device is opened. Only the plain mode exists today; offloads
/// (`IFF_VNET_HDR` with `TUNSETOFFLOAD`) will be switched on here.
#[derive(Clone, Copy, Debug, Default)]
struct TunOptions {
    /// Prefix each packet with a `virtio_net_hdr` (for GSO/GRO).
    vnet_hdr: bool,
}

impl TunOptions {
    /// The `ifr_flags` value for `TUNSETIFF`.
    fn interface_flags(self) -> libc::c_short {
        let mut flags = libc::IFF_TUN | libc::IFF_NO_PI;
        if self.vnet_hdr {
            flags |= libc::IFF_VNET_HDR;
        }
        flags as libc::c_short
    }
}

/// An open TUN device; owns its descriptor. Reads and writes may happen
/// concurrently from different threads (`&Tun` is enough).
#[derive(Debug)]
pub struct Tun {
    file: OwnedFd,
    name: String,
    /// A socket in the namespace the interface was last seen in.
    control: Mutex<Option<ControlSocket>>,
}

/// A control socket and the namespace it lives in (`None`: unknown, the
/// kernel cannot tell us the device's namespace).
#[derive(Debug)]
struct ControlSocket {
    netns: Option<NetnsId>,
    fd: OwnedFd,
}

impl Tun {
    /// Creates (or attaches to an existing, unowned) TUN interface `name` and
    /// sets its MTU to [`DEFAULT_MTU`].
    ///
    /// A name containing `%d` is a template the kernel completes (`fg%d` →
    /// `fg0`); [`name`](Self::name) returns the result.
    ///
    /// Errors: `InvalidInput` for a name the kernel would refuse (empty,
    /// longer than [`MAX_NAME_LEN`] bytes, `.` or `..`, or containing `/`,
    /// `:`, NUL or whitespace); an error naming the interface when it exists
    /// but is not a TUN interface, or is already attached by another owner;
    /// `PermissionDenied` without `CAP_NET_ADMIN`.
    pub fn create(name: &str) -> io::Result<Tun> {
        Tun::create_with(name, TunOptions::default())
    }

    fn create_with(name: &str, options: TunOptions) -> io::Result<Tun> {
        validate_name(name)?;
        let file = open_clone_device()?;
        let request = name_request(name, options.interface_flags());
        let name = attach(file.as_fd(), request).map_err(|e| explain_attach_error(name, e))?;
        let tun = Tun {
            file,
            name,
            control: Mutex::new(None),
        };
        tun.set_mtu(DEFAULT_MTU)?;
        Ok(tun)
    }

    /// The interface name given by the kernel at creation. (Queries use the
    /// current name, so a later rename does not break them.)
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads one IP packet, blocking until one is queued. A packet longer
    /// than `buf` is truncated. Interrupted reads are retried.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            // SAFETY: `buf` is a valid exclusive buffer of `buf.len()` bytes;
            // the kernel writes at most that many.
            let ret =
                unsafe { libc::read(self.file.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            match check_len(ret) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                result => return result,
            }
        }
    }

    /// Writes one IP packet (IPv4 or IPv6, told apart by the kernel from the
    /// version nibble) to the host's stack.
    pub fn write(&self, packet: &[u8]) -> io::Result<usize> {
        loop {
            // SAFETY: `packet` is a valid buffer of `packet.len()` bytes that
            // the kernel only reads.
            let ret =
                unsafe { libc::write(self.file.as_raw_fd(), packet.as_ptr().cast(), packet.len()) };
            match check_len(ret) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                result => return result,
            }
        }
    }

    /// The interface's current MTU, wherever the interface now lives (see the
    /// module documentation).
    pub fn mtu(&self) -> io::Result<u32> {
        let mtu = self.with_interface(|socket, request| {
            if_ioctl(socket, libc::SIOCGIFMTU, request)?;
            // SAFETY: SIOCGIFMTU succeeded, so the kernel filled `ifru_mtu`.
            Ok(unsafe { request.ifr_ifru.ifru_mtu })
        })?;
        u32::try_from(mtu).map_err(|_| io::Error::other("kernel reported a negative MTU"))
    }

    /// Sets the interface's MTU, wherever the interface now lives.
    pub fn set_mtu(&self, mtu: u32) -> io::Result<()> {
        let mtu = libc::c_int::try_from(mtu)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "MTU out of range"))?;
        self.with_interface(|socket, request| {
            request.ifr_ifru.ifru_mtu = mtu;
            if_ioctl(socket, libc::SIOCSIFMTU, request)
        })
    }

    /// The interface's first (primary) IPv4 address, if it has one and it can
    /// be read (see the module documentation on namespaces).
    pub fn ipv4_address(&self) -> Option<Ipv4Addr> {
        self.with_interface(|socket, request| {
            if_ioctl(socket, libc::SIOCGIFADDR, request)?;
            // SAFETY: SIOCGIFADDR succeeded on an AF_INET socket, so the
            // kernel stored a `sockaddr_in` in the union, which is large
            // enough for it (both are 16 bytes).
            let sin: libc::sockaddr_in =
                unsafe { std::ptr::read_unaligned((&raw const request.ifr_ifru.ifru_addr).cast()) };
            Ok(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)))
        })
        .ok()
    }

    /// Whether `err`, returned by [`read`](Self::read) or
    /// [`write`](Self::write), means that the interface was deleted: the
    /// descriptor is useless from then on and the daemon should exit.
    pub fn is_gone(err: &io::Error) -> bool {
        matches!(err.raw_os_error(), Some(libc::EBADFD | libc::EFAULT))
    }

    /// Runs `query` with a control socket in the interface's namespace and an
    /// `ifreq` holding the interface's current name.
    fn with_interface<T>(
        &self,
        query: impl FnOnce(BorrowedFd<'_>, &mut libc::ifreq) -> io::Result<T>,
    ) -> io::Result<T> {
        let mut request = current_name_request(self.file.as_fd())?;
        let mut cached = self.control.lock().unwrap_or_else(PoisonError::into_inner);
        let socket = control_socket_for(self.file.as_fd(), &mut cached)?;
        query(socket, &mut request)
    }
}

/// A control socket in the namespace the interface `tun` is attached to now:
/// the cached one if it is still in that namespace, else a new one (cached).
fn control_socket_for<'a>(
    tun: BorrowedFd<'_>,
    cached: &'a mut Option<ControlSocket>,
) -> io::Result<BorrowedFd<'a>> {
    let netns_fd = device_netns(tun)?;
    let netns = netns_fd
        .as_ref()
        .map(|fd| NetnsId::of(fd.as_fd()))
        .transpose()?;
    let reusable = matches!(cached, Some(control) if control.netns == netns);
    if !reusable {
        let fd = match &netns_fd {
            Some(ns_fd) if netns != Some(NetnsId::current()?) => control_socket_in(ns_fd.as_fd())?,
            _ => control_socket_here()?,
        };
        *cached = Some(ControlSocket { netns, fd });
    }
    cached
        .as_ref()
        .map(|control| control.fd.as_fd())
        .ok_or_else(|| io::Error::other("no control socket"))
}

impl AsRawFd for Tun {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

/// Checks `name` against the kernel's rules for interface names
/// (`dev_valid_name`), so a bad name gets a clear error.
fn validate_name(name: &str) -> io::Result<()> {
    let invalid = |why: &str| {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid interface name {name:?}: {why}"),
        ))
    };
    if name.is_empty() {
        return invalid("empty");
    }
    if name.len() > MAX_NAME_LEN {
        return invalid("longer than 15 bytes");
    }
    if name == "." || name == ".." {
        return invalid("reserved");
    }
    let forbidden =
        |b: u8| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace() || b == 0x0b;
    if name.bytes().any(forbidden) {
        return invalid("contains '/', ':', NUL or whitespace");
    }
    Ok(())
}

/// Opens the TUN clone device. The `File` is close-on-exec.
fn open_clone_device() -> io::Result<OwnedFd> {
    match OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
    {
        Ok(file) => Ok(file.into()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(io::Error::new(
            io::ErrorKind::NotFound,
            "/dev/net/tun does not exist (is the tun module loaded?)",
        )),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("cannot open /dev/net/tun: {e}"),
        )),
    }
}

/// A zeroed `ifreq` with `ifr_name` = `name` (validated: at most 15 bytes)
/// and `ifr_flags` = `flags`.
fn name_request(name: &str, flags: libc::c_short) -> libc::ifreq {
    // SAFETY: `ifreq` is plain data (arrays, integers, a union of those and
    // a pointer); all-zero bytes are a valid value of it.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, &src) in request
        .ifr_name
        .iter_mut()
        .zip(name.as_bytes().iter().take(MAX_NAME_LEN))
    {
        *dst = src as libc::c_char;
    }
    request.ifr_ifru.ifru_flags = flags;
    request
}

/// The interface name in a kernel-filled `ifreq`.
fn request_name(request: &libc::ifreq) -> io::Result<String> {
    let bytes: Vec<u8> = request
        .ifr_name
        .iter()
        .map(|&c| c as u8)
        .take_while(|&b| b != 0)
        .collect();
    String::from_utf8(bytes).map_err(|_| io::Error::other("interface name is not UTF-8"))
}

/// `TUNSETIFF`: attaches the descriptor to the interface; returns its name.
fn attach(tun: BorrowedFd<'_>, mut request: libc::ifreq) -> io::Result<String> {
    // SAFETY: TUNSETIFF reads and writes one `ifreq`; `request` is a live,
    // exclusively borrowed one.
    check(unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut request) })?;
    request_name(&request)
}

/// Adds the interface name and the likely cause to a `TUNSETIFF` error.
fn explain_attach_error(name: &str, err: io::Error) -> io::Error {
    let why = match err.raw_os_error() {
        Some(libc::EBUSY) => "it is already in use by another TUN owner",
        Some(libc::EINVAL) => "an interface of that name exists and is not a TUN interface",
        Some(libc::EPERM) => "permission denied (CAP_NET_ADMIN is needed)",
        _ => "TUNSETIFF failed",
    };
    io::Error::new(
        err.kind(),
        format!("cannot create TUN interface {name:?}: {why} ({err})"),
    )
}

/// `TUNGETIFF`: an `ifreq` holding the interface's current name.
fn current_name_request(tun: BorrowedFd<'_>) -> io::Result<libc::ifreq> {
    let mut request = name_request("", 0);
    // SAFETY: TUNGETIFF writes one `ifreq` into the live local `request`.
    check(unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNGETIFF, &mut request) })?;
    // Keep only the name: the flags share the union with the query's data.
    request.ifr_ifru.ifru_flags = 0;
    Ok(request)
}

/// `TUNGETDEVNETNS`: a descriptor of the interface's network namespace, or
/// `None` when the kernel does not know this ioctl (before Linux 5.2).
fn device_netns(tun: BorrowedFd<'_>) -> io::Result<Option<OwnedFd>> {
    // SAFETY: TUNGETDEVNETNS takes no argument and returns a new descriptor.
    match check(unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNGETDEVNETNS) }) {
        // SAFETY: the ioctl returned a fresh descriptor that only we own.
        Ok(raw) => Ok(Some(unsafe { OwnedFd::from_raw_fd(raw) })),
        // Kernels without it answer EINVAL (unknown TUN ioctl) or ENOTTY.
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOTTY)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// An interface ioctl (`SIOCGIFMTU` and friends) on a control socket.
fn if_ioctl(
    socket: BorrowedFd<'_>,
    request_code: libc::Ioctl,
    request: &mut libc::ifreq,
) -> io::Result<()> {
    // SAFETY: every SIOC*IF* request used here reads and writes one `ifreq`,
    // and `request` is a live, exclusively borrowed one.
    check(unsafe {
        libc::ioctl(
            socket.as_raw_fd(),
            request_code,
            request as *mut libc::ifreq,
        )
    })
    .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_names_pass() {
        for name in ["wg0", "a", "fg%d", "x.y-z_1", "123456789012345", "ü"] {
            assert!(validate_name(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn invalid_names_are_input_errors() {
        let long = "1234567890123456";
        for name in [
            "", ".", "..", "a/b", "a b", "a\tb", "a\nb", "a:b", "a\0b", long, "ab\x0b",
        ] {
            let err = validate_name(name).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{name:?}");
            assert!(err.to_string().contains("invalid interface name"));
        }
    }

    #[test]
    fn name_request_holds_a_terminated_name_and_flags() {
        let request = name_request("123456789012345", 7);
        assert_eq!(request.ifr_name[MAX_NAME_LEN], 0);
        assert_eq!(request_name(&request).unwrap(), "123456789012345");
        // SAFETY: the flags member was the one written.
        assert_eq!(unsafe { request.ifr_ifru.ifru_flags }, 7);
    }

    #[test]
    fn plain_and_vnet_flags() {
        let plain = TunOptions::default().interface_flags() as libc::c_int;
        assert_eq!(plain, libc::IFF_TUN | libc::IFF_NO_PI);
        let vnet = TunOptions { vnet_hdr: true }.interface_flags() as libc::c_int;
        assert_eq!(vnet, libc::IFF_TUN | libc::IFF_NO_PI | libc::IFF_VNET_HDR);
    }

    #[test]
    fn gone_errors() {
        assert!(Tun::is_gone(&io::Error::from_raw_os_error(libc::EBADFD)));
        assert!(Tun::is_gone(&io::Error::from_raw_os_error(libc::EFAULT)));
        assert!(!Tun::is_gone(&io::Error::from_raw_os_error(libc::EINTR)));
        assert!(!Tun::is_gone(&io::Error::other("x")));
    }
}
