//! The device's UDP sockets: one IPv4 and one IPv6 socket on the same port.
//!
//! # Blocking model
//!
//! The sockets are blocking, so a send waits while the socket's send buffer
//! is full (back-pressure instead of drops). Receiving never blocks:
//! [`UdpSockets::recv_batch`] passes `MSG_DONTWAIT` and returns
//! [`io::ErrorKind::WouldBlock`] when nothing is queued. A receiver waits
//! with [`poll_readable`](super::poll_readable) on the socket and an
//! [`EventFd`](super::EventFd) for shutdown. (A blocking receive could hang
//! after a readiness report: the kernel drops a datagram with a bad checksum
//! only when it is read.)
//!
//! # Addresses
//!
//! An IPv4 destination goes out of the IPv4 socket, an IPv6 one out of the
//! IPv6 socket. The IPv6 socket is `IPV6_V6ONLY`, so it never sees
//! IPv4-mapped addresses; a `SocketAddr::V6` holding a mapped address
//! (`::ffff:a.b.c.d`) given to a send is normalised to IPv4 first, and so is
//! a mapped [`LocalSource`] address.
//!
//! # Sticky source addresses
//!
//! Every received datagram comes with its local address and interface
//! ([`RecvMeta::local`], from `IP_PKTINFO` / `IPV6_PKTINFO`). Replies pass it
//! back in a `IP_PKTINFO` / `IPV6_PKTINFO` control message so they leave from
//! the address the peer talked to. Only the address pins the route: the
//! interface index is passed only for IPv6 link-local sources, whose scope
//! needs it, because a given index would force the egress interface even
//! after the route changed (the kernel driver's "sticky, but not too sticky"
//! rule also lets the route choose the interface). When the address is no
//! longer on the host the kernel refuses the send: measured on Linux 6.18,
//! `ENETUNREACH` for IPv4 and `EINVAL` for IPv6. Those errors (and the few
//! others a source can cause, see `classify_send_error`) on a send with a
//! source are reported as [`SendError::SourceUnusable`], so the caller
//! clears its sticky source and sends again without one.
//!
//! # Later: UDP GSO/GRO
//!
//! [`UdpSockets::send_batch`] sends many datagrams to one destination, the
//! unit UDP GSO needs (equal-sized datagrams concatenated with a
//! `UDP_SEGMENT` control message). [`UdpSockets::recv_batch`] fills caller
//! buffers of any size (with GRO a buffer receives up to 64 KiB of
//! coalesced datagrams) and reserves control space for a `UDP_GRO` message.

use super::{check, set_int_option};
use socket2::{Domain, SockAddr, SockAddrStorage, Socket, Type};
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};

/// The most datagrams one `recvmmsg`/`sendmmsg` call handles (as
/// wireguard-go's `IdealBatchSize`); larger batches take several calls.
pub const MAX_BATCH: usize = 128;

/// Socket buffer size, as wireguard-go: 7 MiB.
const SOCKET_BUFFER_BYTES: libc::c_int = 7 << 20;

/// How often `bind(0, ..)` picks a new port when the IPv6 socket cannot get
/// the port the kernel gave the IPv4 socket.
const PORT_ATTEMPTS: usize = 10;

/// Control-message space per datagram: a pktinfo message (at most 40 bytes
/// with its header) plus room for a later `UDP_GRO`/`UDP_SEGMENT` message.
const CONTROL_BYTES: usize = 96;

/// An IP family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

/// What was learnt about one received datagram.
#[derive(Clone, Copy, Debug, Default)]
pub struct RecvMeta {
    /// Bytes received into the matching buffer (a longer datagram was cut).
    pub len: usize,
    /// The sender's address.
    pub src: Option<SocketAddr>,
    /// The local address and interface the datagram arrived on.
    pub local: Option<LocalSource>,
}

/// A local address to send from, with the interface it was seen on (from
/// the pktinfo of a received datagram).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalSource {
    /// The local address.
    pub addr: IpAddr,
    /// The interface index the datagram arrived on.
    pub ifindex: u32,
}

/// Why a send failed.
#[derive(Debug)]
pub enum SendError {
    /// The send had a source address that the kernel refused (gone from the
    /// host, wrong family, no route from it): the caller should clear its
    /// sticky source and send again without one.
    SourceUnusable(io::Error),
    /// Any other failure.
    Other(io::Error),
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::SourceUnusable(e) => write!(f, "source address unusable: {e}"),
            SendError::Other(e) => write!(f, "send failed: {e}"),
        }
    }
}

impl std::error::Error for SendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SendError::SourceUnusable(e) | SendError::Other(e) => Some(e),
        }
    }
}

impl From<SendError> for io::Error {
    fn from(err: SendError) -> io::Error {
        match err {
            SendError::SourceUnusable(e) | SendError::Other(e) => e,
        }
    }
}

/// The device's UDP sockets (see the module documentation). At least one
/// family is open; a host without IPv6 (or IPv4) runs with the other alone.
#[derive(Debug)]
pub struct UdpSockets {
    v4: Option<Socket>,
    v6: Option<Socket>,
    port: u16,
}

impl UdpSockets {
    /// Binds `0.0.0.0:port` and `[::]:port` (`IPV6_V6ONLY`). With port 0
    /// the kernel picks the IPv4 port and the IPv6 socket takes the same; if
    /// that is taken for IPv6 the pair is tried again with a new port, up to
    /// ten times. A family the system does not support (`EAFNOSUPPORT`) is
    /// left out. Sets `SO_MARK` when `fwmark` is not 0, enables
    /// `IP_PKTINFO`/`IPV6_RECVPKTINFO`, and asks for 7 MiB buffers (the
    /// `*FORCE` options first, which work with `CAP_NET_ADMIN`; the plain
    /// ones, capped by `net.core.*mem_max`, otherwise).
    pub fn bind(port: u16, fwmark: u32) -> io::Result<UdpSockets> {
        let mut last_error = None;
        for _ in 0..PORT_ATTEMPTS {
            match bind_pair(port) {
                Ok(sockets) => {
                    if fwmark != 0 {
                        sockets.set_fwmark(fwmark)?;
                    }
                    return Ok(sockets);
                }
                Err(e) if port == 0 && e.kind() == io::ErrorKind::AddrInUse => last_error = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| io::Error::from(io::ErrorKind::AddrInUse)))
    }

    /// The port both sockets are bound to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Sets `SO_MARK` on both sockets (0 clears it).
    pub fn set_fwmark(&self, mark: u32) -> io::Result<()> {
        for socket in self.sockets() {
            socket.set_mark(mark)?;
        }
        Ok(())
    }

    /// The `SO_MARK` the kernel holds for the sockets, read back from each
    /// of them; an error if they differ (they are always set together).
    pub fn fwmark(&self) -> io::Result<u32> {
        let mut marks = self.sockets().map(Socket::mark);
        let first = marks
            .next()
            .unwrap_or_else(|| Err(io::Error::from_raw_os_error(libc::EAFNOSUPPORT)))?;
        for mark in marks {
            if mark? != first {
                return Err(io::Error::other(
                    "the IPv4 and IPv6 sockets have different marks",
                ));
            }
        }
        Ok(first)
    }

    /// Receives up to `min(bufs.len(), meta.len(), MAX_BATCH)` datagrams from
    /// the `family` socket without blocking (`recvmmsg`): datagram `i` goes
    /// to `bufs[i]` (its whole `len()` is usable) and its details to
    /// `meta[i]`. Returns how many arrived; `WouldBlock` when none was
    /// queued; `EAFNOSUPPORT` when that family is not open.
    pub fn recv_batch(
        &self,
        family: Family,
        bufs: &mut [Vec<u8>],
        meta: &mut [RecvMeta],
    ) -> io::Result<usize> {
        let socket = self.socket(family)?;
        let count = bufs.len().min(meta.len()).min(MAX_BATCH);
        if count == 0 {
            return Ok(0);
        }
        let mut batch = RecvBatch::new(&mut bufs[..count]);
        let received = batch.receive(socket.as_raw_fd())?;
        for (slot, i) in meta.iter_mut().zip(0..received) {
            *slot = batch.meta(i);
        }
        Ok(received)
    }

    /// Sends one datagram to `dst`, from `src` when given (a pktinfo control
    /// message); the errors are those of [`send_batch`](Self::send_batch).
    pub fn send_to(
        &self,
        packet: &[u8],
        dst: SocketAddr,
        src: Option<&LocalSource>,
    ) -> Result<(), SendError> {
        self.send_batch(&[packet], dst, src).map(drop)
    }

    /// Sends `packets` to `dst`, from `src` when given, with `sendmmsg`
    /// (several calls for more than [`MAX_BATCH`]). Returns how many were
    /// sent: all of them, or — when the kernel refused one after others had
    /// gone — the count before it (sending the rest again reports the
    /// error). An error means that nothing was sent.
    pub fn send_batch(
        &self,
        packets: &[&[u8]],
        dst: SocketAddr,
        src: Option<&LocalSource>,
    ) -> Result<usize, SendError> {
        let dst = normalize(dst);
        let socket = self
            .socket(family_of(&dst.ip()))
            .map_err(SendError::Other)?;
        let control = match src {
            Some(src) => Some(source_control(src, &dst)?),
            None => None,
        };
        let name = SockAddr::from(dst);
        let mut sent = 0;
        while let Some(rest) = packets.get(sent..).filter(|rest| !rest.is_empty()) {
            let chunk = &rest[..rest.len().min(MAX_BATCH)];
            match send_chunk(socket.as_raw_fd(), chunk, &name, control.as_ref()) {
                Ok(0) => break, // not expected for a non-empty chunk; never spin
                Ok(n) => sent += n,
                Err(_) if sent > 0 => break,
                Err(e) => return Err(classify_send_error(e, src.is_some())),
            }
        }
        Ok(sent)
    }

    /// The descriptors of the IPv4 and IPv6 sockets (`None`: not open).
    pub fn raw_fds(&self) -> (Option<RawFd>, Option<RawFd>) {
        (
            self.v4.as_ref().map(AsRawFd::as_raw_fd),
            self.v6.as_ref().map(AsRawFd::as_raw_fd),
        )
    }

    /// The socket of `family`, or `EAFNOSUPPORT` when it is not open.
    fn socket(&self, family: Family) -> io::Result<&Socket> {
        let socket = match family {
            Family::V4 => self.v4.as_ref(),
            Family::V6 => self.v6.as_ref(),
        };
        socket.ok_or_else(|| io::Error::from_raw_os_error(libc::EAFNOSUPPORT))
    }

    /// The open sockets.
    fn sockets(&self) -> impl Iterator<Item = &Socket> {
        self.v4.iter().chain(self.v6.iter())
    }
}

/// One attempt at binding both families to `port` (0: the kernel picks).
fn bind_pair(port: u16) -> io::Result<UdpSockets> {
    let v4 = open_bound(Family::V4, port)?;
    let port = match &v4 {
        Some(socket) => local_port(socket)?,
        None => port,
    };
    let v6 = open_bound(Family::V6, port)?;
    let port = match (&v4, &v6) {
        (Some(_), _) => port,
        (None, Some(socket)) => local_port(socket)?,
        (None, None) => {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "neither IPv4 nor IPv6 UDP sockets are available",
            ))
        }
    };
    Ok(UdpSockets { v4, v6, port })
}

/// A configured UDP socket of `family` bound to the wildcard address and
/// `port`, or `None` if the system lacks that family.
fn open_bound(family: Family, port: u16) -> io::Result<Option<Socket>> {
    let (domain, wildcard) = match family {
        Family::V4 => (Domain::IPV4, IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        Family::V6 => (Domain::IPV6, IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
    };
    let socket = match Socket::new(domain, Type::DGRAM, None) {
        Ok(socket) => socket,
        Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => return Ok(None),
        Err(e) => return Err(e),
    };
    if family == Family::V6 {
        socket.set_only_v6(true)?;
    }
    enable_pktinfo(&socket, family)?;
    enlarge_buffers(&socket);
    socket.bind(&SockAddr::from(SocketAddr::new(wildcard, port)))?;
    Ok(Some(socket))
}

/// Asks the kernel for the local address of each received datagram.
fn enable_pktinfo(socket: &Socket, family: Family) -> io::Result<()> {
    let (level, name) = match family {
        Family::V4 => (libc::IPPROTO_IP, libc::IP_PKTINFO),
        Family::V6 => (libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO),
    };
    set_int_option(socket.as_raw_fd(), level, name, 1)
}

/// Best effort 7 MiB buffers: the `*FORCE` options ignore the sysctl caps
/// but need `CAP_NET_ADMIN`; the plain ones are capped. Failure is harmless.
fn enlarge_buffers(socket: &Socket) {
    let fd = socket.as_raw_fd();
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        if set_int_option(fd, libc::SOL_SOCKET, force, SOCKET_BUFFER_BYTES).is_err() {
            let _ = set_int_option(fd, libc::SOL_SOCKET, plain, SOCKET_BUFFER_BYTES);
        }
    }
}

/// The port a socket is bound to.
fn local_port(socket: &Socket) -> io::Result<u16> {
    socket
        .local_addr()?
        .as_socket()
        .map(|addr| addr.port())
        .ok_or_else(|| io::Error::other("socket has no IP address"))
}

/// The family of an address.
fn family_of(addr: &IpAddr) -> Family {
    match addr {
        IpAddr::V4(_) => Family::V4,
        IpAddr::V6(_) => Family::V6,
    }
}

/// An IPv4-mapped IPv6 address as plain IPv4; other addresses unchanged.
fn normalize_ip(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        IpAddr::V4(_) => addr,
    }
}

/// A socket address with an IPv4-mapped IPv6 address as plain IPv4.
fn normalize(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(normalize_ip(addr.ip()), addr.port())
}

/// Whether a send error, with or without a source address set, means the
/// source should be dropped. With a source these errors can all come from it
/// (not local any more, no route from it, interface gone); a wrong guess
/// costs the caller one retry without the source.
fn classify_send_error(err: io::Error, had_source: bool) -> SendError {
    let source_related = matches!(
        err.raw_os_error(),
        Some(
            libc::EINVAL
                | libc::EADDRNOTAVAIL
                | libc::ENETUNREACH
                | libc::EHOSTUNREACH
                | libc::ENODEV
                | libc::ENXIO
        )
    );
    if had_source && source_related {
        SendError::SourceUnusable(err)
    } else {
        SendError::Other(err)
    }
}

/// A control-message buffer aligned for `cmsghdr`.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct ControlBuffer {
    bytes: [u8; CONTROL_BYTES],
    /// How many bytes are used (for sending) or available (for receiving).
    len: usize,
}

impl ControlBuffer {
    fn empty() -> ControlBuffer {
        ControlBuffer {
            bytes: [0; CONTROL_BYTES],
            len: 0,
        }
    }

    /// Appends one control message; `None` if it does not fit.
    fn push(&mut self, level: libc::c_int, kind: libc::c_int, data: &[u8]) -> Option<()> {
        let message_len = CMSG_HEADER_LEN + data.len();
        let end = self.len.checked_add(cmsg_align(message_len))?;
        let message = self.bytes.get_mut(self.len..end)?;
        message.fill(0);
        message[..CMSG_LEN_BYTES].copy_from_slice(&message_len.to_ne_bytes());
        message[CMSG_LEN_BYTES..CMSG_LEN_BYTES + 4].copy_from_slice(&level.to_ne_bytes());
        message[CMSG_LEN_BYTES + 4..CMSG_LEN_BYTES + 8].copy_from_slice(&kind.to_ne_bytes());
        message[CMSG_HEADER_LEN..message_len].copy_from_slice(data);
        self.len = end;
        Some(())
    }
}

/// Size of `cmsghdr.cmsg_len` (a `size_t` on Linux/glibc).
const CMSG_LEN_BYTES: usize = std::mem::size_of::<usize>();
/// Size of `cmsghdr`; the data follows it (it is already aligned).
const CMSG_HEADER_LEN: usize = std::mem::size_of::<libc::cmsghdr>();

/// `CMSG_ALIGN`: control messages are aligned to `size_t`.
fn cmsg_align(len: usize) -> usize {
    len.div_ceil(CMSG_LEN_BYTES) * CMSG_LEN_BYTES
}

/// The control messages in `buf` as (level, type, data); stops at the first
/// malformed header.
fn control_messages(buf: &[u8]) -> impl Iterator<Item = (libc::c_int, libc::c_int, &[u8])> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        let header = rest.get(..CMSG_HEADER_LEN)?;
        let message_len = usize::from_ne_bytes(header[..CMSG_LEN_BYTES].try_into().ok()?);
        let level =
            libc::c_int::from_ne_bytes(header[CMSG_LEN_BYTES..CMSG_LEN_BYTES + 4].try_into().ok()?);
        let kind = libc::c_int::from_ne_bytes(
            header[CMSG_LEN_BYTES + 4..CMSG_LEN_BYTES + 8]
                .try_into()
                .ok()?,
        );
        let data = rest.get(CMSG_HEADER_LEN..message_len)?;
        rest = rest.get(cmsg_align(message_len)..).unwrap_or(&[]);
        Some((level, kind, data))
    })
}

/// The local address in a pktinfo control message, if `level`/`kind` is one.
fn parse_pktinfo(level: libc::c_int, kind: libc::c_int, data: &[u8]) -> Option<LocalSource> {
    match (level, kind) {
        // struct in_pktinfo { int ipi_ifindex; in_addr ipi_spec_dst; in_addr ipi_addr; }
        (libc::IPPROTO_IP, libc::IP_PKTINFO) => {
            data.get(..12)?;
            let ifindex = libc::c_int::from_ne_bytes(data.get(0..4)?.try_into().ok()?);
            let spec_dst: [u8; 4] = data.get(4..8)?.try_into().ok()?;
            Some(LocalSource {
                addr: IpAddr::V4(Ipv4Addr::from(spec_dst)),
                ifindex: u32::try_from(ifindex).ok()?,
            })
        }
        // struct in6_pktinfo { in6_addr ipi6_addr; unsigned ipi6_ifindex; }
        (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) => {
            let addr: [u8; 16] = data.get(0..16)?.try_into().ok()?;
            let ifindex = u32::from_ne_bytes(data.get(16..20)?.try_into().ok()?);
            Some(LocalSource {
                addr: IpAddr::V6(Ipv6Addr::from(addr)),
                ifindex,
            })
        }
        _ => None,
    }
}

/// The pktinfo control message that makes a send to `dst` leave from `src`.
fn source_control(src: &LocalSource, dst: &SocketAddr) -> Result<ControlBuffer, SendError> {
    let mut control = ControlBuffer::empty();
    let pushed = match (normalize_ip(src.addr), dst) {
        (IpAddr::V4(addr), SocketAddr::V4(_)) => {
            // ipi_ifindex 0: let the route choose the interface.
            let mut data = [0u8; 12];
            data[4..8].copy_from_slice(&addr.octets());
            control.push(libc::IPPROTO_IP, libc::IP_PKTINFO, &data)
        }
        (IpAddr::V6(addr), SocketAddr::V6(_)) => {
            let ifindex = if addr.is_unicast_link_local() {
                src.ifindex
            } else {
                0
            };
            let mut data = [0u8; 20];
            data[..16].copy_from_slice(&addr.octets());
            data[16..20].copy_from_slice(&ifindex.to_ne_bytes());
            control.push(libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, &data)
        }
        _ => {
            return Err(SendError::SourceUnusable(io::Error::new(
                io::ErrorKind::InvalidInput,
                "source and destination address families differ",
            )))
        }
    };
    pushed.ok_or_else(|| SendError::Other(io::Error::other("control buffer too small")))?;
    Ok(control)
}

/// A zeroed `msghdr`.
fn empty_msghdr() -> libc::msghdr {
    // SAFETY: msghdr holds integers and raw pointers; all zeros (null
    // pointers, zero lengths) is a valid, empty header.
    unsafe { std::mem::zeroed() }
}

/// One `sendmmsg` call for at most `MAX_BATCH` packets; returns how many
/// were sent. Interrupted calls are retried.
fn send_chunk(
    fd: RawFd,
    packets: &[&[u8]],
    name: &SockAddr,
    control: Option<&ControlBuffer>,
) -> io::Result<usize> {
    let mut iovecs: Vec<libc::iovec> = packets
        .iter()
        .map(|packet| libc::iovec {
            // The kernel only reads from a send buffer; the cast is for the type.
            iov_base: packet.as_ptr().cast_mut().cast(),
            iov_len: packet.len(),
        })
        .collect();
    let mut headers: Vec<libc::mmsghdr> = iovecs
        .iter_mut()
        .map(|iov| {
            let mut header = empty_msghdr();
            header.msg_name = name.as_ptr().cast_mut().cast();
            header.msg_namelen = name.len();
            header.msg_iov = iov;
            header.msg_iovlen = 1;
            if let Some(control) = control {
                header.msg_control = control.bytes.as_ptr().cast_mut().cast();
                header.msg_controllen = control.len;
            }
            libc::mmsghdr {
                msg_hdr: header,
                msg_len: 0,
            }
        })
        .collect();
    let count = libc::c_uint::try_from(headers.len()).unwrap_or(0);
    loop {
        // SAFETY: each header points to live data for the whole call: the
        // destination `name`, one iovec over a borrowed packet, and the
        // borrowed control buffer with its exact length. sendmmsg only
        // reads them, except for writing each `msg_len`.
        let ret = unsafe { libc::sendmmsg(fd, headers.as_mut_ptr(), count, 0) };
        match check(ret) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            result => return result.map(|n| n as usize),
        }
    }
}

/// The buffers of one `recvmmsg` call. The headers point into the other
/// fields, so it is filled in place and not moved while the call runs.
struct RecvBatch<'a> {
    bufs: &'a mut [Vec<u8>],
    names: Vec<SockAddrStorage>,
    controls: Vec<ControlBuffer>,
    headers: Vec<libc::mmsghdr>,
    iovecs: Vec<libc::iovec>,
}

impl<'a> RecvBatch<'a> {
    fn new(bufs: &'a mut [Vec<u8>]) -> RecvBatch<'a> {
        let count = bufs.len();
        RecvBatch {
            bufs,
            names: (0..count).map(|_| SockAddrStorage::zeroed()).collect(),
            controls: vec![ControlBuffer::empty(); count],
            headers: Vec::with_capacity(count),
            iovecs: Vec::with_capacity(count),
        }
    }

    /// One non-blocking `recvmmsg`; returns how many datagrams arrived.
    fn receive(&mut self, fd: RawFd) -> io::Result<usize> {
        self.iovecs = self
            .bufs
            .iter_mut()
            .map(|buf| libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            })
            .collect();
        self.headers = self
            .iovecs
            .iter_mut()
            .zip(self.names.iter_mut())
            .zip(self.controls.iter_mut())
            .map(|((iov, name), control)| {
                let mut header = empty_msghdr();
                header.msg_name = (name as *mut SockAddrStorage).cast();
                header.msg_namelen = name.size_of();
                header.msg_iov = iov;
                header.msg_iovlen = 1;
                header.msg_control = control.bytes.as_mut_ptr().cast();
                header.msg_controllen = CONTROL_BYTES;
                libc::mmsghdr {
                    msg_hdr: header,
                    msg_len: 0,
                }
            })
            .collect();
        let count = libc::c_uint::try_from(self.headers.len()).unwrap_or(0);
        loop {
            // SAFETY: every header points to live, exclusively borrowed
            // memory of the stated sizes (a caller buffer, a name storage,
            // a control buffer) that stays in place during the call; the
            // kernel writes within those sizes and updates the lengths.
            let ret = unsafe {
                libc::recvmmsg(
                    fd,
                    self.headers.as_mut_ptr(),
                    count,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
            match check(ret) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                result => return result.map(|n| n as usize),
            }
        }
    }

    /// What the kernel reported for datagram `i` (received).
    fn meta(&mut self, i: usize) -> RecvMeta {
        let Some(header) = self.headers.get(i) else {
            return RecvMeta::default();
        };
        let len = (header.msg_len as usize).min(self.bufs.get(i).map_or(0, Vec::len));
        let name = self
            .names
            .get_mut(i)
            .map(|name| std::mem::replace(name, SockAddrStorage::zeroed()));
        let src = name.and_then(|name| sender(name, header.msg_hdr.msg_namelen));
        let control_len = header.msg_hdr.msg_controllen.min(CONTROL_BYTES);
        let local = self.controls.get(i).and_then(|control| {
            control_messages(&control.bytes[..control_len])
                .find_map(|(level, kind, data)| parse_pktinfo(level, kind, data))
        });
        RecvMeta { len, src, local }
    }
}

/// The sender address the kernel stored in `name` (`len` bytes of it).
fn sender(name: SockAddrStorage, len: libc::socklen_t) -> Option<SocketAddr> {
    if len == 0 || len > name.size_of() {
        return None;
    }
    // SAFETY: the kernel initialised `len` bytes of this storage as an
    // address of the socket's family (AF_INET or AF_INET6) with its family
    // field set; `len` was checked to fit the storage.
    let address = unsafe { SockAddr::new(name, len) };
    address.as_socket().map(normalize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::get_int_option;

    #[test]
    fn control_messages_round_trip() {
        let mut control = ControlBuffer::empty();
        control
            .push(
                libc::IPPROTO_IP,
                libc::IP_PKTINFO,
                &[1, 0, 0, 0, 127, 0, 0, 1, 127, 0, 0, 1],
            )
            .unwrap();
        control.push(1, 2, &[9, 9, 9]).unwrap();
        let messages: Vec<_> = control_messages(&control.bytes[..control.len]).collect();
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[1], (1, 2, &[9u8, 9, 9][..]));
        let (level, kind, data) = messages[0];
        let local = parse_pktinfo(level, kind, data).unwrap();
        assert_eq!(local.addr, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(local.ifindex, 1);
    }

    #[test]
    fn control_buffer_refuses_overflow() {
        let mut control = ControlBuffer::empty();
        assert!(control.push(1, 1, &[0; CONTROL_BYTES]).is_none());
        assert_eq!(control.len, 0);
    }

    #[test]
    fn malformed_control_messages_stop_the_parse() {
        let mut bytes = [0u8; 64];
        bytes[..CMSG_LEN_BYTES].copy_from_slice(&1000usize.to_ne_bytes());
        assert_eq!(control_messages(&bytes).count(), 0);
        assert_eq!(control_messages(&bytes[..3]).count(), 0);
        let mut zero_len = [0u8; 64];
        zero_len[..CMSG_LEN_BYTES].copy_from_slice(&0usize.to_ne_bytes());
        assert_eq!(control_messages(&zero_len).count(), 0);
    }

    #[test]
    fn pktinfo_v6_is_parsed() {
        let mut data = [0u8; 20];
        data[..16].copy_from_slice(&Ipv6Addr::LOCALHOST.octets());
        data[16..].copy_from_slice(&7u32.to_ne_bytes());
        let local = parse_pktinfo(libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, &data).unwrap();
        assert_eq!(
            local,
            LocalSource {
                addr: IpAddr::V6(Ipv6Addr::LOCALHOST),
                ifindex: 7
            }
        );
        assert!(parse_pktinfo(libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, &data[..19]).is_none());
        assert!(parse_pktinfo(libc::IPPROTO_IP, libc::IP_PKTINFO, &data[..11]).is_none());
    }

    #[test]
    fn mapped_addresses_become_ipv4() {
        let mapped: SocketAddr = "[::ffff:192.0.2.7]:51820".parse().unwrap();
        assert_eq!(
            normalize(mapped),
            "192.0.2.7:51820".parse::<SocketAddr>().unwrap()
        );
        let plain: SocketAddr = "[2001:db8::1]:1".parse().unwrap();
        assert_eq!(normalize(plain), plain);
    }

    #[test]
    fn source_control_checks_families() {
        let v4_dst: SocketAddr = "192.0.2.1:1".parse().unwrap();
        let v6_src = LocalSource {
            addr: IpAddr::V6(Ipv6Addr::LOCALHOST),
            ifindex: 1,
        };
        assert!(matches!(
            source_control(&v6_src, &v4_dst),
            Err(SendError::SourceUnusable(_))
        ));
        let mapped_src = LocalSource {
            addr: "::ffff:127.0.0.1".parse().unwrap(),
            ifindex: 1,
        };
        let control = source_control(&mapped_src, &v4_dst).ok().unwrap();
        let (level, kind, data) = control_messages(&control.bytes[..control.len])
            .next()
            .unwrap();
        assert_eq!((level, kind), (libc::IPPROTO_IP, libc::IP_PKTINFO));
        assert_eq!(data[4..8], [127, 0, 0, 1]);
        assert_eq!(data[0..4], [0, 0, 0, 0], "no interface is forced for IPv4");
    }

    #[test]
    fn link_local_v6_sources_keep_their_interface() {
        let dst: SocketAddr = "[fe80::2%3]:1".parse().unwrap();
        let src = LocalSource {
            addr: "fe80::1".parse().unwrap(),
            ifindex: 3,
        };
        let control = source_control(&src, &dst).ok().unwrap();
        let (_, _, data) = control_messages(&control.bytes[..control.len])
            .next()
            .unwrap();
        assert_eq!(u32::from_ne_bytes(data[16..20].try_into().unwrap()), 3);
        let global = LocalSource {
            addr: "2001:db8::1".parse().unwrap(),
            ifindex: 3,
        };
        let control = source_control(&global, &dst).ok().unwrap();
        let (_, _, data) = control_messages(&control.bytes[..control.len])
            .next()
            .unwrap();
        assert_eq!(u32::from_ne_bytes(data[16..20].try_into().unwrap()), 0);
    }

    #[test]
    fn buffers_are_enlarged_and_pktinfo_enabled() {
        let sockets = UdpSockets::bind(0, 0).unwrap();
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        for socket in sockets.sockets() {
            let fd = socket.as_raw_fd();
            for option in [libc::SO_RCVBUF, libc::SO_SNDBUF] {
                let size = get_int_option(fd, libc::SOL_SOCKET, option).unwrap();
                // The kernel reports twice the size asked for (bookkeeping).
                if root {
                    assert!(size >= SOCKET_BUFFER_BYTES, "{option}: {size}");
                } else {
                    assert!(size > 0);
                }
            }
        }
        let v4 = sockets.v4.as_ref().unwrap().as_raw_fd();
        let pktinfo = get_int_option(v4, libc::IPPROTO_IP, libc::IP_PKTINFO);
        assert_eq!(pktinfo.unwrap(), 1);
        if let Some(v6) = &sockets.v6 {
            let fd = v6.as_raw_fd();
            let recv = get_int_option(fd, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO);
            assert_eq!(recv.unwrap(), 1);
            let v6only = get_int_option(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY);
            assert_eq!(v6only.unwrap(), 1);
        }
    }

    #[test]
    fn send_errors_are_classified() {
        let einval = || io::Error::from_raw_os_error(libc::EINVAL);
        assert!(matches!(
            classify_send_error(einval(), true),
            SendError::SourceUnusable(_)
        ));
        assert!(matches!(
            classify_send_error(einval(), false),
            SendError::Other(_)
        ));
        let enobufs = io::Error::from_raw_os_error(libc::ENOBUFS);
        assert!(matches!(
            classify_send_error(enobufs, true),
            SendError::Other(_)
        ));
    }
}
