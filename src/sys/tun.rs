//! The TUN device: IP packets to and from the host's network stack.
//!
//! [`Tun::create`] opens `/dev/net/tun` and attaches it to an interface with
//! `TUNSETIFF` (`IFF_TUN | IFF_NO_PI`: each read or write is exactly one IP
//! packet, without the 4-byte protocol header). The interface lives as long
//! as the [`Tun`]: it is not persistent, so dropping the `Tun` deletes it.
//!
//! # Offloads: the virtio-net header
//!
//! [`Tun::create_with`] can open the device with `IFF_VNET_HDR`: every read
//! and write then starts with a 10-byte [`VnetHeader`] (`virtio_net_hdr`, in
//! the host's byte order) before the IP packet. With
//! [`TunOptions::offloads`] the device also announces checksum and TCP
//! segmentation offload (`TUNSETOFFLOAD` with `TUN_F_CSUM | TUN_F_TSO4 |
//! TUN_F_TSO6`), and UDP segmentation offload (`TUN_F_USO4 | TUN_F_USO6`)
//! where the kernel accepts it (Linux 6.2 and later). The host's stack then
//! hands over "super-packets" of up to 64 KiB: one IP/TCP (or UDP) header
//! followed by many segments' payload, described by the header's
//! `gso_type`/`gso_size`, and possibly with the transport checksum left for
//! the reader to complete (`VNET_FLAG_NEEDS_CSUM`, `csum_start`,
//! `csum_offset`). Cutting such a packet into MTU-sized ones (and, for
//! writes, coalescing) is the data path's job; this module moves the bytes.
//! [`Tun::offloads`] reports the mode that is active: if the kernel refuses
//! the required offloads the device is reopened without a header.
//!
//! # Several queues
//!
//! [`Tun::create_queues`] opens the device with `IFF_MULTI_QUEUE`: one
//! descriptor per queue, each attached with its own `TUNSETIFF` to the same
//! name (the first creates the interface, the others join it). The header
//! size and the offloads belong to the device, so they are set once. The
//! kernel puts each packet the host sends into one queue by its flow: the
//! queue that last wrote a packet of that flow (the flow table `tun` keeps
//! for writes), else a hash of the flow. So one TCP or UDP flow is read from
//! one queue, in order, while many flows spread over the queues. A packet
//! written to any queue enters the host's stack. [`Tun::queue`] gives one
//! queue's reads and writes; [`Tun::read`] and [`Tun::write`] use queue 0.
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
//! interface as well. [`Tun::is_gone`] recognises these errors; `epoll(7)`
//! and `poll(2)` report the descriptor as being in error, which
//! [`Epoll`](super::epoll::Epoll) and [`poll_readable`](super::poll_readable)
//! pass on as ready, so the next read returns the error.

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

/// The virtio-net header and its constants live with the code that reads
/// and writes it ([`crate::offload::virtio`]); re-exported here for callers
/// of [`Tun::create_with`].
pub use crate::offload::virtio::{
    VirtioNetHdr as VnetHeader, VIRTIO_NET_HDR_F_DATA_VALID as VNET_FLAG_DATA_VALID,
    VIRTIO_NET_HDR_F_NEEDS_CSUM as VNET_FLAG_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_ECN as VNET_GSO_ECN,
    VIRTIO_NET_HDR_GSO_NONE as VNET_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV4 as VNET_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_TCPV6 as VNET_GSO_TCPV6, VIRTIO_NET_HDR_GSO_UDP as VNET_GSO_UDP,
    VIRTIO_NET_HDR_GSO_UDP_L4 as VNET_GSO_UDP_L4, VIRTIO_NET_HDR_LEN as VNET_HDR_LEN,
};

/// The largest read in header mode: a 64 KiB super-packet and its header.
pub const MAX_OFFLOAD_READ: usize = 65535 + VNET_HDR_LEN;

/// How [`Tun::create_with`] opens the device.
#[derive(Clone, Copy, Debug, Default)]
pub struct TunOptions {
    /// Prefix each packet with a [`VnetHeader`] (`IFF_VNET_HDR`).
    pub vnet_hdr: bool,
    /// Ask for checksum, TCP and (where available) UDP segmentation
    /// offload; needs `vnet_hdr`.
    pub offloads: bool,
}

/// The mode a [`Tun`] runs in (see [`Tun::offloads`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TunOffloads {
    /// Reads and writes carry a [`VnetHeader`].
    pub vnet_hdr: bool,
    /// Checksum offload and TCP segmentation offload (IPv4 and IPv6) are on:
    /// reads may be TCP super-packets with partial checksums.
    pub tso: bool,
    /// UDP segmentation offload (IPv4 and IPv6) is on as well: reads may be
    /// UDP super-packets (`VNET_GSO_UDP_L4`).
    pub uso: bool,
}

/// The offloads every header-mode device with offloads asks for (supported
/// since Linux 2.6).
const REQUIRED_OFFLOADS: libc::c_uint = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6;
/// UDP segmentation offload, added when accepted (Linux 6.2 and later).
const UDP_OFFLOADS: libc::c_uint = libc::TUN_F_USO4 | libc::TUN_F_USO6;

impl TunOptions {
    /// The `ifr_flags` value for `TUNSETIFF`.
    fn interface_flags(self) -> libc::c_short {
        let mut flags = libc::IFF_TUN | libc::IFF_NO_PI;
        if self.vnet_hdr {
            flags |= libc::IFF_VNET_HDR;
        }
        flags as libc::c_short
    }

    /// [`interface_flags`](Self::interface_flags) for a device of `queues`
    /// queues: with `IFF_MULTI_QUEUE` from two on (one queue keeps the plain
    /// single-queue device).
    fn queue_flags(self, queues: usize) -> libc::c_short {
        let multi = if queues > 1 {
            libc::IFF_MULTI_QUEUE as libc::c_short
        } else {
            0
        };
        self.interface_flags() | multi
    }
}

/// The most queues [`Tun::create_queues`] opens (the kernel's limit,
/// `MAX_TAP_QUEUES`, is 256).
pub const MAX_QUEUES: usize = 64;

/// An open TUN device; owns its descriptors (one per queue). Reads and
/// writes may happen concurrently from different threads (`&Tun` is enough).
#[derive(Debug)]
pub struct Tun {
    /// Queue 0.
    file: OwnedFd,
    /// Queues 1 and up (empty for a single-queue device).
    more_queues: Vec<OwnedFd>,
    name: String,
    offloads: TunOffloads,
    /// A socket in the namespace the interface was last seen in.
    control: Mutex<ControlCache>,
}

/// The cached control socket, and the namespace where creating one was
/// refused (without `CAP_SYS_ADMIN`, e.g. after `--user`): asking again every
/// time would start a thread per query only to be refused again.
#[derive(Debug, Default)]
struct ControlCache {
    socket: Option<ControlSocket>,
    refused_in: Option<NetnsId>,
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
    ///
    /// This is the plain mode: no packet header, no offloads (see
    /// [`create_with`](Self::create_with)).
    pub fn create(name: &str) -> io::Result<Tun> {
        Tun::create_with(name, TunOptions::default())
    }

    /// Like [`create`](Self::create), in the mode `options` asks for (see
    /// the module documentation): with `vnet_hdr`, reads and writes carry a
    /// [`VnetHeader`] (`TUNSETVNETHDRSZ` = 10); with `offloads` as well,
    /// checksum and TCP segmentation offload are required and UDP
    /// segmentation offload is added when the kernel accepts it. When the
    /// kernel refuses the header or the required offloads, the device is
    /// reopened in the plain mode; [`offloads`](Self::offloads) tells which
    /// mode is active, and the caller must follow it.
    ///
    /// Errors: those of `create`, and `InvalidInput` for `offloads` without
    /// `vnet_hdr`.
    pub fn create_with(name: &str, options: TunOptions) -> io::Result<Tun> {
        Tun::create_configured(name, options, 1, false)
    }

    /// Like [`create_with`](Self::create_with), with `queues` queues
    /// (`IFF_MULTI_QUEUE` from two on; see the module documentation). One
    /// queue is exactly `create_with`.
    ///
    /// Errors: those of `create_with`, and `InvalidInput` for 0 or more
    /// than [`MAX_QUEUES`] queues.
    pub fn create_queues(name: &str, options: TunOptions, queues: usize) -> io::Result<Tun> {
        if queues == 0 || queues > MAX_QUEUES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a TUN device has 1 to {MAX_QUEUES} queues, not {queues}"),
            ));
        }
        Tun::create_configured(name, options, queues, false)
    }

    /// Takes an already-open, attached TUN descriptor (`WG_TUN_FD`: an app
    /// or a privileged helper created the interface). `TUNGETIFF` tells its
    /// interface and flags: it must be a TUN device (not TAP) without the
    /// packet-information prefix (`IFF_NO_PI`). If the opener turned on
    /// `IFF_VNET_HDR`, the header size and the offloads are set up as
    /// [`create_with`](Self::create_with) does; a refusal is an error here,
    /// since the descriptor cannot be reopened. The MTU is left as the opener
    /// set it.
    ///
    /// Measured on Linux 6.18: `TUNGETIFF` reports `IFF_NO_PI` also for a
    /// descriptor attached without it, so a prefixed descriptor is not always
    /// caught here; `IFF_NO_PI` is the opener's duty (documented with
    /// `WG_TUN_FD`).
    pub fn from_fd(file: OwnedFd) -> io::Result<Tun> {
        let (name, flags) = interface_of(file.as_fd())?;
        let flags = libc::c_int::from(flags);
        if flags & libc::IFF_TUN == 0 || flags & libc::IFF_NO_PI == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "the TUN descriptor of {name:?} must be IFF_TUN with IFF_NO_PI (flags {flags:#x})"
                ),
            ));
        }
        let offloads = if flags & libc::IFF_VNET_HDR != 0 {
            configure_vnet(file.as_fd(), true)?
        } else {
            TunOffloads::default()
        };
        Ok(Tun {
            file,
            more_queues: Vec::new(),
            name,
            offloads,
            control: Mutex::new(ControlCache::default()),
        })
    }

    /// [`create_with`](Self::create_with); `refuse_offloads` makes it act as
    /// if the kernel refused the header mode (for tests of the fallback).
    fn create_configured(
        name: &str,
        options: TunOptions,
        queues: usize,
        refuse_offloads: bool,
    ) -> io::Result<Tun> {
        validate_name(name)?;
        if options.offloads && !options.vnet_hdr {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "TUN offloads need the virtio-net header",
            ));
        }
        let (mut files, name) = open_attached(name, options.vnet_hdr, queues)?;
        let mut offloads = TunOffloads::default();
        if options.vnet_hdr {
            let configured = if refuse_offloads {
                Err(io::Error::from_raw_os_error(libc::EINVAL))
            } else {
                configure_vnet(files[0].as_fd(), options.offloads)
            };
            match configured {
                Ok(active) => offloads = active,
                Err(_) => {
                    // Closing the descriptors deletes the interface (it is
                    // not persistent); the plain device takes the same name.
                    drop(files);
                    files = open_attached(&name, false, queues)?.0;
                }
            }
        }
        let file = files.remove(0);
        let tun = Tun {
            file,
            more_queues: files,
            name,
            offloads,
            control: Mutex::new(ControlCache::default()),
        };
        tun.set_mtu(DEFAULT_MTU)?;
        Ok(tun)
    }

    /// The mode the device runs in: whether reads and writes carry a
    /// [`VnetHeader`], and which segmentation offloads are on.
    pub fn offloads(&self) -> TunOffloads {
        self.offloads
    }

    /// The length of the header before each packet: [`VNET_HDR_LEN`] in
    /// header mode, else 0.
    pub fn header_len(&self) -> usize {
        if self.offloads.vnet_hdr {
            VNET_HDR_LEN
        } else {
            0
        }
    }

    /// A stand-in for a TUN device: one end of a packet socket pair (a unix
    /// `SOCK_DGRAM` pair keeps packet boundaries), whose other end is an
    /// in-process TCP/IP stack (the rootless mode, `src/rootless/`). Reads
    /// and writes follow `offloads` as a device's would, which the other
    /// end must match; the interface queries (`mtu`, ...) fail, as there is
    /// no interface.
    pub fn from_packet_socket(socket: OwnedFd, name: &str, offloads: TunOffloads) -> Tun {
        Tun {
            file: socket,
            more_queues: Vec::new(),
            name: name.to_string(),
            offloads,
            control: Mutex::new(ControlCache::default()),
        }
    }

    /// The interface name given by the kernel at creation. (Queries use the
    /// current name, so a later rename does not break them.)
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How many queues the device has (1 unless made by
    /// [`create_queues`](Self::create_queues) with more).
    pub fn queue_count(&self) -> usize {
        1 + self.more_queues.len()
    }

    /// Queue `index` (wrapping around, so every index names a queue).
    pub fn queue(&self, index: usize) -> TunQueue<'_> {
        let index = index % self.queue_count();
        let fd = match index {
            0 => self.file.as_fd(),
            i => self.more_queues[i - 1].as_fd(),
        };
        TunQueue { tun: self, fd }
    }

    /// Makes reads of every queue return `WouldBlock` instead of waiting
    /// (for callers that poll the descriptors and let several threads drain
    /// them).
    pub fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        for fd in std::iter::once(&self.file).chain(&self.more_queues) {
            set_fd_nonblocking(fd.as_fd(), nonblocking)?;
        }
        Ok(())
    }

    /// Reads one IP packet, blocking until one is queued. A packet longer
    /// than `buf` is truncated. Interrupted reads are retried.
    ///
    /// In header mode ([`TunOffloads::vnet_hdr`]) the buffer receives the
    /// [`VnetHeader`] and then the packet, which with offloads can be a
    /// super-packet of up to 64 KiB: use buffers of [`MAX_OFFLOAD_READ`].
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        read_fd(self.file.as_fd(), buf)
    }

    /// Writes one IP packet (IPv4 or IPv6, told apart by the kernel from the
    /// version nibble) to the host's stack, exactly as given.
    ///
    /// In header mode the bytes must start with a [`VnetHeader`]: an
    /// all-zero one for an ordinary packet with a complete checksum, or one
    /// describing a super-packet (GRO on the write side). The returned count
    /// includes the header. [`write_packet`](Self::write_packet) adds the
    /// header when it is needed.
    pub fn write(&self, packet: &[u8]) -> io::Result<usize> {
        write_fd(self.file.as_fd(), packet)
    }

    /// Writes one complete IP packet (checksums done, no segmentation) in
    /// either mode: in header mode an all-zero [`VnetHeader`] goes before
    /// it in the same `writev`. Returns the packet's length.
    pub fn write_packet(&self, packet: &[u8]) -> io::Result<usize> {
        self.queue(0).write_packet(packet)
    }

    /// Writes `header` and then `packet` as one packet (`writev`, no copy).
    /// Returns the packet's length (without the header). `InvalidInput` when
    /// the device is not in header mode.
    pub fn write_with_header(&self, header: &VnetHeader, packet: &[u8]) -> io::Result<usize> {
        self.queue(0).write_with_header(header, packet)
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

/// One queue of a [`Tun`]: its reads and writes, as [`Tun::read`],
/// [`Tun::write`], [`Tun::write_packet`] and [`Tun::write_with_header`]
/// do them on queue 0.
#[derive(Clone, Copy, Debug)]
pub struct TunQueue<'a> {
    tun: &'a Tun,
    fd: BorrowedFd<'a>,
}

impl TunQueue<'_> {
    /// Reads one IP packet from this queue (see [`Tun::read`]).
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        read_fd(self.fd, buf)
    }

    /// Writes bytes as they are (see [`Tun::write`]).
    pub fn write(&self, packet: &[u8]) -> io::Result<usize> {
        write_fd(self.fd, packet)
    }

    /// Writes one complete IP packet in either mode (see
    /// [`Tun::write_packet`]).
    pub fn write_packet(&self, packet: &[u8]) -> io::Result<usize> {
        if !self.tun.offloads.vnet_hdr {
            return self.write(packet);
        }
        self.write_with_header(&VnetHeader::default(), packet)
    }

    /// Writes `header` and then `packet` (see [`Tun::write_with_header`]).
    pub fn write_with_header(&self, header: &VnetHeader, packet: &[u8]) -> io::Result<usize> {
        if !self.tun.offloads.vnet_hdr {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the TUN device has no virtio-net header",
            ));
        }
        let header = header.to_bytes();
        let written = write_two(self.fd, &header, packet)?;
        Ok(written.saturating_sub(VNET_HDR_LEN))
    }
}

impl AsRawFd for TunQueue<'_> {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// `read(2)` into `buf`, retrying interrupted calls.
fn read_fd(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is a valid exclusive buffer of `buf.len()` bytes;
        // the kernel writes at most that many.
        let ret = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        match check_len(ret) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            result => return result,
        }
    }
}

/// `write(2)` of `packet`, retrying interrupted calls.
fn write_fd(fd: BorrowedFd<'_>, packet: &[u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `packet` is a valid buffer of `packet.len()` bytes that
        // the kernel only reads.
        let ret = unsafe { libc::write(fd.as_raw_fd(), packet.as_ptr().cast(), packet.len()) };
        match check_len(ret) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            result => return result,
        }
    }
}

/// Sets or clears `O_NONBLOCK` on `fd`.
fn set_fd_nonblocking(fd: BorrowedFd<'_>, nonblocking: bool) -> io::Result<()> {
    let fd = fd.as_raw_fd();
    // SAFETY: fcntl on a live descriptor, with integer arguments.
    let flags = check(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    let flags = if nonblocking {
        flags | libc::O_NONBLOCK
    } else {
        flags & !libc::O_NONBLOCK
    };
    // SAFETY: as above.
    check(unsafe { libc::fcntl(fd, libc::F_SETFL, flags) })?;
    Ok(())
}

/// A control socket in the namespace the interface `tun` is attached to now:
/// the cached one if it is still in that namespace, else a new one (cached).
/// A namespace where the kernel refused us once is not tried again.
fn control_socket_for<'a>(
    tun: BorrowedFd<'_>,
    cache: &'a mut ControlCache,
) -> io::Result<BorrowedFd<'a>> {
    let netns_fd = device_netns(tun)?;
    let netns = netns_fd
        .as_ref()
        .map(|fd| NetnsId::of(fd.as_fd()))
        .transpose()?;
    let reusable = matches!(&cache.socket, Some(control) if control.netns == netns);
    if !reusable {
        let fd = match &netns_fd {
            Some(ns_fd) if netns != Some(NetnsId::current()?) => {
                if netns.is_some() && cache.refused_in == netns {
                    return Err(io::Error::from_raw_os_error(libc::EPERM));
                }
                control_socket_in(ns_fd.as_fd()).inspect_err(|e| {
                    if e.raw_os_error() == Some(libc::EPERM) {
                        cache.refused_in = netns;
                    }
                })?
            }
            _ => control_socket_here()?,
        };
        cache.socket = Some(ControlSocket { netns, fd });
    }
    cache
        .socket
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

/// Opens the clone device `queues` times and attaches each to interface
/// `name`, with the virtio-net header if `vnet_hdr`; returns the queues'
/// descriptors and the kernel's name (the first attach completes a `%d`
/// template; the others join that interface).
fn open_attached(name: &str, vnet_hdr: bool, queues: usize) -> io::Result<(Vec<OwnedFd>, String)> {
    let options = TunOptions {
        vnet_hdr,
        offloads: false,
    };
    let flags = options.queue_flags(queues);
    let mut files = Vec::with_capacity(queues);
    let mut attached_name = name.to_string();
    for _ in 0..queues.max(1) {
        let file = open_clone_device()?;
        let request = name_request(&attached_name, flags);
        attached_name = attach(file.as_fd(), request).map_err(|e| explain_attach_error(name, e))?;
        files.push(file);
    }
    Ok((files, attached_name))
}

/// Sets the header size and, with `offloads`, the offloads; returns what is
/// active. Fails when the header size or the required offloads are refused.
fn configure_vnet(tun: BorrowedFd<'_>, offloads: bool) -> io::Result<TunOffloads> {
    let header_len = VNET_HDR_LEN as libc::c_int;
    // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which
    // points to the live local `header_len`.
    check(unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETVNETHDRSZ, &header_len) })?;
    let mut active = TunOffloads {
        vnet_hdr: true,
        ..TunOffloads::default()
    };
    if offloads {
        set_offload(tun, REQUIRED_OFFLOADS)?;
        active.tso = true;
        // A kernel that does not know the USO bits refuses the whole call
        // and keeps the previous setting.
        active.uso = set_offload(tun, REQUIRED_OFFLOADS | UDP_OFFLOADS).is_ok();
    }
    Ok(active)
}

/// `TUNSETOFFLOAD`: the offloads the reader can take (`TUN_F_*` bits).
fn set_offload(tun: BorrowedFd<'_>, flags: libc::c_uint) -> io::Result<()> {
    // SAFETY: TUNSETOFFLOAD takes its argument by value, not as a pointer;
    // no memory is passed.
    check(unsafe {
        libc::ioctl(
            tun.as_raw_fd(),
            libc::TUNSETOFFLOAD,
            libc::c_ulong::from(flags),
        )
    })
    .map(drop)
}

/// Writes `first` then `second` as one packet with `writev`, retrying
/// interrupted calls; returns the bytes written.
fn write_two(fd: BorrowedFd<'_>, first: &[u8], second: &[u8]) -> io::Result<usize> {
    let iovecs = [first, second].map(|part| libc::iovec {
        // The kernel only reads from a write buffer; the cast is for the type.
        iov_base: part.as_ptr().cast_mut().cast(),
        iov_len: part.len(),
    });
    loop {
        // SAFETY: both iovecs describe live, borrowed buffers of the stated
        // lengths, which writev only reads.
        let ret = unsafe { libc::writev(fd.as_raw_fd(), iovecs.as_ptr(), 2) };
        match check_len(ret) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            result => return result,
        }
    }
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

/// `TUNGETIFF`: the interface's current name and the descriptor's flags.
fn interface_of(tun: BorrowedFd<'_>) -> io::Result<(String, libc::c_short)> {
    let mut request = name_request("", 0);
    // SAFETY: TUNGETIFF writes one `ifreq` into the live local `request`.
    check(unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNGETIFF, &mut request) }).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("not an attached TUN descriptor (TUNGETIFF: {e})"),
        )
    })?;
    // SAFETY: TUNGETIFF succeeded, so the kernel stored the flags in the union.
    let flags = unsafe { request.ifr_ifru.ifru_flags };
    Ok((request_name(&request)?, flags))
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
        let options = TunOptions {
            vnet_hdr: true,
            offloads: true,
        };
        let vnet = options.interface_flags() as libc::c_int;
        assert_eq!(vnet, libc::IFF_TUN | libc::IFF_NO_PI | libc::IFF_VNET_HDR);
    }

    #[test]
    fn offloads_without_header_are_refused() {
        let options = TunOptions {
            vnet_hdr: false,
            offloads: true,
        };
        let err = Tun::create_with("fgnever0", options).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    /// Needs root (skipped otherwise): a refused header mode falls back to
    /// the plain mode under the same name, and says so.
    #[test]
    fn refused_offloads_fall_back_to_the_plain_mode() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            println!("skipping: needs root");
            return;
        }
        let name = format!("fgf{}", std::process::id() % 1_000_000);
        let options = TunOptions {
            vnet_hdr: true,
            offloads: true,
        };
        let with_header = Tun::create_configured(&name, options, 1, false).unwrap();
        assert!(with_header.offloads().vnet_hdr);
        assert_ne!(device_flags(&with_header) & libc::IFF_VNET_HDR, 0);
        drop(with_header);

        let tun = Tun::create_configured(&name, options, 1, true).unwrap();
        assert_eq!(tun.offloads(), TunOffloads::default());
        assert_eq!(tun.header_len(), 0);
        assert_eq!(tun.name(), name);
        assert_eq!(tun.mtu().unwrap(), DEFAULT_MTU);
        let flags = device_flags(&tun);
        assert_eq!(flags & libc::IFF_VNET_HDR, 0, "reopened without the header");
        assert_ne!(flags & libc::IFF_TUN, 0);
        let err = tun
            .write_with_header(&VnetHeader::default(), &[0x45])
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    /// The device's `TUNGETIFF` flags.
    fn device_flags(tun: &Tun) -> libc::c_int {
        let mut request = name_request("", 0);
        // SAFETY: TUNGETIFF writes one `ifreq` into the live local `request`.
        check(unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNGETIFF, &mut request) }).unwrap();
        // SAFETY: TUNGETIFF stores the flags in the union's flags member.
        libc::c_int::from(unsafe { request.ifr_ifru.ifru_flags })
    }

    #[test]
    fn gone_errors() {
        assert!(Tun::is_gone(&io::Error::from_raw_os_error(libc::EBADFD)));
        assert!(Tun::is_gone(&io::Error::from_raw_os_error(libc::EFAULT)));
        assert!(!Tun::is_gone(&io::Error::from_raw_os_error(libc::EINTR)));
        assert!(!Tun::is_gone(&io::Error::other("x")));
    }
}
