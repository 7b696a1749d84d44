//! The device's UDP sockets: one IPv4 and one IPv6 socket on the same port.
//!
//! # Blocking model
//!
//! The sockets are blocking, so a send waits while the socket's send buffer
//! is full (back-pressure instead of drops). Receiving never blocks:
//! [`UdpSockets::recv_batch`] passes `MSG_DONTWAIT` and returns
//! [`io::ErrorKind::WouldBlock`] when nothing is queued. A receiver waits
//! until the socket is reported readable ([`Epoll`](super::epoll::Epoll)
//! in the daemon). (A blocking receive could hang
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
//! source mean the source is unusable: [`UdpSockets::send`] sends the
//! datagrams again at once without it, before anything later to that
//! destination, and reports [`SendOutcome::SourceDropped`] so the caller
//! clears its sticky source.
//!
//! # One send call
//!
//! [`UdpSockets::send`] takes a batch of [`Transmit`]s, each a destination,
//! an optional source and either one datagram or, with a segment size,
//! several equal-sized datagrams end to end (the last may be shorter), and
//! returns one [`SendOutcome`] per transmit. Consecutive segmented
//! transmits to one destination from one source leave together, as GSO
//! messages in one `sendmmsg`; single datagrams, each with its own
//! destination and source (the engine's outbox: handshake messages, cookie
//! replies, keepalives), leave with one `sendmmsg` per family. `sendmmsg`
//! stops at the first message the kernel refuses; that message is dealt
//! with alone and the batch goes on after it.
//!
//! # Offloads: UDP GSO and GRO
//!
//! With *generic segmentation offload* one `sendmsg` carries many datagrams
//! to one destination: equal-sized datagrams (the last may be shorter) laid
//! end to end, with a `UDP_SEGMENT` control message giving the size; the
//! kernel (or the NIC) cuts them apart late, so the stack is traversed once
//! per run instead of once per datagram. [`UdpSockets::send`] does this for
//! a segmented [`Transmit`] when the socket supports it
//! (probed with `getsockopt(UDP_SEGMENT)` at bind) and fall back to one
//! datagram per segment with `sendmmsg` otherwise. When a GSO send fails with
//! `EIO`, GSO is switched off for that socket for good and the same data is
//! sent without it. Before Linux 6.11 the kernel answers `EIO` when the
//! egress device cannot checksum on the way out; since then it checksums in
//! software (measured on 6.18: a GSO send into a TUN device with transmit
//! checksumming switched off succeeds), and `EIO` remains for routes through
//! IPsec (xfrm).
//!
//! With *generic receive offload* (`UDP_GRO`, enabled at bind where the
//! kernel supports it, Linux 5.12 and later as wireguard-go requires) the
//! kernel hands over several datagrams of one flow as one buffer: they lie
//! back to back, each [`RecvMeta::segment_size`] bytes long except a shorter
//! last one; [`RecvMeta::datagrams`] splits them. A buffer must then hold up
//! to [`GRO_BUFFER_BYTES`]; a [`UdpSockets::recv_batch`] call given any
//! smaller buffer switches GRO off for that socket for good (a coalesced
//! buffer would be cut), so callers with small buffers keep getting one
//! datagram per buffer.

use super::{check, get_int_option, set_int_option};
use socket2::{Domain, SockAddr, SockAddrStorage, Socket, Type};
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Range;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

/// The most datagrams one `recvmmsg`/`sendmmsg` call handles (as
/// wireguard-go's `IdealBatchSize`); larger batches take several calls.
pub const MAX_BATCH: usize = 128;

/// The most datagrams one GSO send carries (as wireguard-go; the kernel's
/// own limit, `UDP_MAX_SEGMENTS`, is 64 on older kernels and 128 on newer).
pub const MAX_GSO_SEGMENTS: usize = 64;

/// The most bytes one GSO send carries: the largest UDP payload of an IPv4
/// datagram (65535 minus the UDP and IPv4 headers).
pub const MAX_GSO_BYTES: usize = 65535 - 8 - 20;

/// The buffer size [`UdpSockets::recv_batch`] needs in every buffer to keep
/// GRO on: the largest coalesced payload the kernel hands over.
pub const GRO_BUFFER_BYTES: usize = 65535;

/// Socket buffer size, as wireguard-go: 7 MiB.
const SOCKET_BUFFER_BYTES: libc::c_int = 7 << 20;

/// How often `bind(0, ..)` picks a new port when the IPv6 socket cannot get
/// the port the kernel gave the IPv4 socket.
const PORT_ATTEMPTS: usize = 10;

/// Control-message space per datagram: a pktinfo message (at most 40 bytes
/// with its header) plus a `UDP_GRO` (24) or `UDP_SEGMENT` (24) message.
const CONTROL_BYTES: usize = 96;

/// An IP family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

/// What was learnt about one received datagram (or, with GRO, one buffer
/// of coalesced datagrams from the same sender).
#[derive(Clone, Copy, Debug, Default)]
pub struct RecvMeta {
    /// Bytes received into the matching buffer (a longer datagram was cut).
    pub len: usize,
    /// The sender's address.
    pub src: Option<SocketAddr>,
    /// The local address and interface the datagram arrived on.
    pub local: Option<LocalSource>,
    /// With GRO: the size of each coalesced datagram in the buffer (the
    /// last may be shorter). `None`: the buffer holds one datagram.
    pub segment_size: Option<usize>,
}

impl RecvMeta {
    /// Where the datagrams lie in the buffer this metadata was received
    /// into, of `buf_len` bytes: its first [`len`](Self::len) bytes cut into
    /// pieces of [`segment_size`](Self::segment_size) (a shorter last one),
    /// or those bytes as one datagram without GRO. A `len` beyond the
    /// buffer is clipped. An empty datagram is one (empty) range: UDP
    /// allows it, and the layer above decides what it means.
    pub fn datagram_ranges(&self, buf_len: usize) -> impl Iterator<Item = Range<usize>> {
        let len = self.len.min(buf_len);
        let step = match self.segment_size {
            Some(size) if size > 0 => size,
            _ => len.max(1),
        };
        let empty = (len == 0).then_some(0..0);
        let pieces = (0..len)
            .step_by(step)
            .map(move |start| start..(start + step).min(len));
        empty.into_iter().chain(pieces)
    }

    /// The datagrams in `buf`, the buffer this metadata was received into
    /// (see [`datagram_ranges`](Self::datagram_ranges)).
    pub fn datagrams<'b>(&self, buf: &'b [u8]) -> impl Iterator<Item = &'b [u8]> + 'b {
        self.datagram_ranges(buf.len())
            .map(move |range| &buf[range])
    }
}

/// A run of datagrams to one destination: `data` holds consecutive
/// datagrams of `segment_size` bytes, the last may be shorter.
#[derive(Clone, Copy, Debug)]
struct SegmentRun<'a> {
    /// The datagrams, end to end.
    data: &'a [u8],
    /// The size of every datagram but the last.
    segment_size: usize,
}

/// One send of [`UdpSockets::send`]: one datagram, or several of
/// `segment_size` bytes end to end, to `destination`, from `source` when
/// given.
#[derive(Clone, Copy, Debug)]
pub struct Transmit<'a> {
    /// Where the datagrams go (an IPv4-mapped IPv6 address goes out over IPv4).
    pub destination: SocketAddr,
    /// The local address to send from (a pktinfo control message).
    pub source: Option<LocalSource>,
    /// The UDP payload: one datagram (an empty one is sent as an empty
    /// datagram), or with `segment_size` several (an empty run sends nothing).
    pub contents: &'a [u8],
    /// The size of every datagram of `contents` but the last, which may be
    /// shorter; `None`: `contents` is one datagram.
    pub segment_size: Option<usize>,
}

impl<'a> Transmit<'a> {
    /// One datagram to `destination`, from no particular source.
    pub fn datagram(destination: SocketAddr, contents: &'a [u8]) -> Self {
        Transmit {
            destination,
            source: None,
            contents,
            segment_size: None,
        }
    }

    /// Datagrams of `segment_size` bytes end to end (the last may be
    /// shorter) to `destination`, from no particular source.
    pub fn segments(destination: SocketAddr, contents: &'a [u8], segment_size: usize) -> Self {
        Transmit {
            segment_size: Some(segment_size),
            ..Transmit::datagram(destination, contents)
        }
    }

    /// The same, sent from `source`.
    pub fn from_source(self, source: Option<LocalSource>) -> Self {
        Transmit { source, ..self }
    }

    /// Whether `other` can leave in the same GSO batch: both segmented, to
    /// the same destination from the same source.
    fn joins(&self, other: &Transmit<'_>) -> bool {
        self.segment_size.is_some()
            && other.segment_size.is_some()
            && self.destination == other.destination
            && self.source == other.source
    }
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

/// One single datagram on its way through a `sendmmsg` of single
/// datagrams: its own destination and, optionally, its own source.
#[derive(Clone, Copy, Debug)]
struct Datagram<'a> {
    data: &'a [u8],
    dst: SocketAddr,
    src: Option<LocalSource>,
}

/// What became of one [`Transmit`].
#[derive(Debug)]
pub enum SendOutcome {
    /// Sent as asked.
    Sent,
    /// The kernel refused its source address (gone from the host, wrong
    /// family, no route from it), so it was sent once more without one,
    /// before anything later to that destination; `retry` is how that went.
    /// The caller should clear its sticky source.
    SourceDropped {
        /// Why the source was refused.
        refused: io::Error,
        /// The outcome of the send without a source.
        retry: io::Result<()>,
    },
    /// Not sent (or, for segments, not all of them), for a reason other
    /// than its source.
    Failed(io::Error),
}

impl SendOutcome {
    /// The outcome of sending without a source after `refused`.
    fn after_refusal(refused: io::Error, retry: Result<(), SendError>) -> SendOutcome {
        SendOutcome::SourceDropped {
            refused,
            retry: retry.map_err(io::Error::from),
        }
    }

    /// The same outcome for another transmit of the same GSO batch (errors
    /// are not `Clone`: the copy keeps the OS error number or kind).
    fn duplicate(&self) -> SendOutcome {
        match self {
            SendOutcome::Sent => SendOutcome::Sent,
            SendOutcome::SourceDropped { refused, retry } => SendOutcome::SourceDropped {
                refused: copy_error(refused),
                retry: retry.as_ref().map(|_| ()).map_err(copy_error),
            },
            SendOutcome::Failed(e) => SendOutcome::Failed(copy_error(e)),
        }
    }
}

/// A copy of `e` with its OS error number, or else its kind.
fn copy_error(e: &io::Error) -> io::Error {
    e.raw_os_error()
        .map_or_else(|| io::Error::from(e.kind()), io::Error::from_raw_os_error)
}

/// Why a send failed (inside this module: [`SendOutcome`] is what callers see).
/// Why a send failed.
#[derive(Debug)]
enum SendError {
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
    v4: Option<FamilySocket>,
    v6: Option<FamilySocket>,
    port: u16,
}

/// One family's socket and its offload state.
#[derive(Debug)]
struct FamilySocket {
    socket: Socket,
    /// `UDP_SEGMENT` may be used: probed at bind, cleared for good after an
    /// `EIO` or by [`UdpSockets::disable_gso`].
    gso: AtomicBool,
    /// `UDP_GRO` is on: set at bind where supported, cleared for good when a
    /// receive has buffers too small for it or by [`UdpSockets::disable_gro`].
    gro: AtomicBool,
    /// Tests only: make the next GSO send fail with `EIO` before sending.
    #[cfg(test)]
    simulate_eio: AtomicBool,
}

impl FamilySocket {
    /// Wraps a bound socket, probing GSO and enabling GRO where supported.
    fn new(socket: Socket) -> FamilySocket {
        let gso = probe_gso(&socket);
        let gro = enable_gro(&socket);
        FamilySocket {
            socket,
            gso: AtomicBool::new(gso),
            gro: AtomicBool::new(gro),
            #[cfg(test)]
            simulate_eio: AtomicBool::new(false),
        }
    }

    /// Sends `pieces` as GSO messages (see [`send_gso_pieces`]).
    fn send_gso(
        &self,
        target: &SendTarget,
        pieces: &[SegmentRun<'_>],
    ) -> Result<(), (usize, io::Error)> {
        #[cfg(test)]
        if self.simulate_eio.swap(false, Ordering::Relaxed) {
            return Err((0, io::Error::from_raw_os_error(libc::EIO)));
        }
        send_gso_pieces(target, pieces)
    }

    /// Turns GRO off for good (best effort: the flag is cleared even if the
    /// kernel refuses, and coalesced buffers are still reported as such).
    fn disable_gro(&self) -> io::Result<()> {
        if self.gro.swap(false, Ordering::Relaxed) {
            set_int_option(self.as_raw_fd(), libc::SOL_UDP, libc::UDP_GRO, 0)?;
        }
        Ok(())
    }
}

impl AsRawFd for FamilySocket {
    fn as_raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
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
        let sockets = with_port_retries(port, || bind_pair(port, false))?;
        if fwmark != 0 {
            sockets.set_fwmark(fwmark)?;
        }
        Ok(sockets)
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

    /// Whether GSO sends are in use on every open socket (see the module
    /// documentation); without it [`send`](Self::send) sends a segmented
    /// transmit one datagram per segment.
    pub fn gso_supported(&self) -> bool {
        self.family_sockets()
            .all(|socket| socket.gso.load(Ordering::Relaxed))
    }

    /// Whether GSO sends are in use on the `family` socket (false when that
    /// family is not open).
    pub fn gso_enabled(&self, family: Family) -> bool {
        self.socket(family)
            .is_ok_and(|socket| socket.gso.load(Ordering::Relaxed))
    }

    /// Stops using GSO on both sockets, for good: later segment sends go out
    /// as one datagram per segment.
    pub fn disable_gso(&self) {
        for socket in self.family_sockets() {
            socket.gso.store(false, Ordering::Relaxed);
        }
    }

    /// Whether GRO is on for the `family` socket (false when that family is
    /// not open).
    pub fn gro_enabled(&self, family: Family) -> bool {
        self.socket(family)
            .is_ok_and(|socket| socket.gro.load(Ordering::Relaxed))
    }

    /// Turns GRO off on both sockets, for good: each received buffer holds
    /// one datagram again. A coalesced buffer queued before the call may
    /// still arrive; its [`RecvMeta::segment_size`] says so.
    pub fn disable_gro(&self) -> io::Result<()> {
        self.family_sockets()
            .try_for_each(FamilySocket::disable_gro)
    }

    /// Receives up to `min(bufs.len(), meta.len(), MAX_BATCH)` datagrams from
    /// the `family` socket without blocking (`recvmmsg`): datagram `i` goes
    /// to `bufs[i]` (its whole `len()` is usable) and its details to
    /// `meta[i]`. Returns how many arrived; `WouldBlock` when none was
    /// queued; `EAFNOSUPPORT` when that family is not open.
    ///
    /// With GRO on, a buffer may hold several datagrams of one sender (see
    /// [`RecvMeta::datagrams`]); that needs every buffer to be at least
    /// [`GRO_BUFFER_BYTES`] long, and a call with a shorter one first turns
    /// GRO off for this socket for good. (A few large buffers per call are
    /// enough then: each holds up to 64 datagrams.) Only a host that raised
    /// `gro_ipv4_max_size`/`gro_max_size` above 64 KiB (BIG TCP) could
    /// coalesce more than that; the excess is cut, the cut datagram then
    /// looks like a short last one and fails authentication upstream.
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
        let bufs = &mut bufs[..count];
        if socket.gro.load(Ordering::Relaxed) && bufs.iter().any(|b| b.len() < GRO_BUFFER_BYTES) {
            // Best effort: a refusal leaves GRO on, and coalesced buffers
            // are still reported with their segment size.
            let _ = socket.disable_gro();
        }
        let mut batch = RecvBatch::new(bufs);
        let received = batch.receive(socket.as_raw_fd())?;
        for (slot, i) in meta.iter_mut().zip(0..received) {
            *slot = batch.meta(i);
        }
        Ok(received)
    }

    /// Sends `transmits`, in order per destination, and returns one outcome
    /// per transmit, in the order given.
    ///
    /// Consecutive segmented transmits to one destination from one source
    /// leave together, as UDP GSO messages in as few `sendmmsg` calls as
    /// possible (without GSO, one datagram per segment); single datagrams
    /// leave with one `sendmmsg` per family (see the module documentation,
    /// "One send call" and "Offloads"). A refused source is dropped
    /// and the datagrams sent again at once without it
    /// ([`SendOutcome::SourceDropped`]). A segmented transmit with a zero
    /// segment size fails with `InvalidInput`.
    pub fn send(&self, transmits: &[Transmit<'_>]) -> Vec<SendOutcome> {
        let mut outcomes = Vec::with_capacity(transmits.len());
        let mut rest = transmits;
        while let Some(first) = rest.first() {
            let together = match first.segment_size {
                Some(_) => 1 + rest[1..].iter().take_while(|t| first.joins(t)).count(),
                None => rest.iter().take_while(|t| t.segment_size.is_none()).count(),
            };
            let (group, tail) = rest.split_at(together);
            if first.segment_size.is_some() {
                let outcome = self.send_segmented(group);
                let copies: Vec<SendOutcome> =
                    (1..group.len()).map(|_| outcome.duplicate()).collect();
                outcomes.push(outcome);
                outcomes.extend(copies);
            } else {
                let datagrams: Vec<Datagram<'_>> = group
                    .iter()
                    .map(|t| Datagram {
                        data: t.contents,
                        dst: t.destination,
                        src: t.source,
                    })
                    .collect();
                outcomes.extend(self.send_singles(&datagrams));
            }
            rest = tail;
        }
        outcomes
    }

    /// Sends segmented transmits that share a destination and a source,
    /// dropping a refused source (one outcome for all of them).
    fn send_segmented(&self, group: &[Transmit<'_>]) -> SendOutcome {
        let runs: Vec<SegmentRun<'_>> = group
            .iter()
            .map(|t| SegmentRun {
                data: t.contents,
                segment_size: t.segment_size.unwrap_or(t.contents.len()),
            })
            .collect();
        let first = &group[0];
        match self.send_runs(&runs, first.destination, first.source.as_ref()) {
            Ok(()) => SendOutcome::Sent,
            Err(SendError::SourceUnusable(refused)) => {
                // Every datagram has this source, so a refused source fails
                // the first one and the retry duplicates nothing. (A later
                // refusal is of the datagram itself, e.g. its size; a copy
                // sent twice then is dropped by the receiver's replay window.)
                let retry = self.send_runs(&runs, first.destination, None);
                SendOutcome::after_refusal(refused, retry)
            }
            Err(SendError::Other(e)) => SendOutcome::Failed(e),
        }
    }

    /// Sends `runs` to `dst`, from `src` when given, in as few `sendmmsg`
    /// calls as possible.
    ///
    /// With GSO ([`gso_supported`](Self::gso_supported)) each run of up to
    /// [`MAX_GSO_SEGMENTS`] datagrams and [`MAX_GSO_BYTES`] bytes is one
    /// message with a `UDP_SEGMENT` control message (a longer run takes
    /// several; up to [`MAX_BATCH`] messages a call); every datagram plus
    /// its headers must then fit the route's MTU, or the kernel refuses the
    /// send (`EINVAL`). Runs may have different segment sizes. Without GSO,
    /// or after the kernel answered `EIO` (which turns GSO off for this
    /// socket for good), each datagram is sent alone (`sendmmsg`). An error
    /// may come after the datagrams before the failing one went out.
    fn send_runs(
        &self,
        runs: &[SegmentRun<'_>],
        dst: SocketAddr,
        src: Option<&LocalSource>,
    ) -> Result<(), SendError> {
        if runs
            .iter()
            .any(|run| run.segment_size == 0 && !run.data.is_empty())
        {
            return Err(SendError::Other(io::Error::new(
                io::ErrorKind::InvalidInput,
                "segment size 0",
            )));
        }
        let dst = normalize(dst);
        let socket = self
            .socket(family_of(&dst.ip()))
            .map_err(SendError::Other)?;
        let target = SendTarget {
            fd: socket.as_raw_fd(),
            name: SockAddr::from(dst),
            pktinfo: match src {
                Some(src) => Some(source_control(src, &dst)?),
                None => None,
            },
        };
        let pieces: Vec<SegmentRun<'_>> = runs.iter().flat_map(gso_pieces).collect();
        let mut unsent = pieces.as_slice();
        if socket.gso.load(Ordering::Relaxed) {
            match socket.send_gso(&target, unsent) {
                Ok(()) => return Ok(()),
                Err((sent, e)) if e.raw_os_error() == Some(libc::EIO) => {
                    // No GSO on this route (see the module documentation).
                    socket.gso.store(false, Ordering::Relaxed);
                    unsent = unsent.get(sent..).unwrap_or(&[]);
                }
                Err((_, e)) => return Err(classify_send_error(e, src.is_some())),
            }
        }
        let datagrams: Vec<&[u8]> = unsent
            .iter()
            .flat_map(|piece| piece.data.chunks(piece.segment_size.max(1)))
            .collect();
        send_all_datagrams(&target, &datagrams).map_err(|e| classify_send_error(e, src.is_some()))
    }

    /// Sends single datagrams to many destinations, each with its own
    /// source: one `sendmmsg` per family for up to [`MAX_BATCH`] datagrams
    /// (IPv4 ones first, then IPv6 ones, each family in the given order, so
    /// the order per destination is kept). Returns one outcome per
    /// datagram, in the order given.
    ///
    /// `sendmmsg` stops at the first datagram the kernel refuses; that one
    /// gets its outcome and the call goes on with the next. A refused
    /// source is dropped and the datagram sent again at once without it
    /// ([`SendOutcome::SourceDropped`]), so it still arrives before the
    /// later datagrams to its destination. No GSO: each datagram is one
    /// message.
    fn send_singles(&self, datagrams: &[Datagram<'_>]) -> Vec<SendOutcome> {
        let mut outcomes: Vec<Option<SendOutcome>> = datagrams.iter().map(|_| None).collect();
        for family in [Family::V4, Family::V6] {
            let batch: Vec<PreparedDatagram<'_>> = datagrams
                .iter()
                .enumerate()
                .filter(|(_, d)| family_of(&normalize(d.dst).ip()) == family)
                .map(|(index, d)| PreparedDatagram::new(index, d))
                .collect();
            if batch.is_empty() {
                continue;
            }
            match self.socket(family) {
                Ok(socket) => send_prepared(socket.as_raw_fd(), batch, &mut outcomes),
                Err(e) => {
                    for prepared in batch {
                        outcomes[prepared.index] = Some(SendOutcome::Failed(copy_error(&e)));
                    }
                }
            }
        }
        // Every index is in exactly one family's batch; the default is for
        // the impossible case only.
        outcomes
            .into_iter()
            .map(|outcome| {
                outcome.unwrap_or_else(|| SendOutcome::Failed(io::Error::other("not sent")))
            })
            .collect()
    }

    /// The descriptors of the IPv4 and IPv6 sockets (`None`: not open).
    pub fn raw_fds(&self) -> (Option<RawFd>, Option<RawFd>) {
        (
            self.v4.as_ref().map(AsRawFd::as_raw_fd),
            self.v6.as_ref().map(AsRawFd::as_raw_fd),
        )
    }

    /// The socket of `family`, or `EAFNOSUPPORT` when it is not open.
    fn socket(&self, family: Family) -> io::Result<&FamilySocket> {
        let socket = match family {
            Family::V4 => self.v4.as_ref(),
            Family::V6 => self.v6.as_ref(),
        };
        socket.ok_or_else(|| io::Error::from_raw_os_error(libc::EAFNOSUPPORT))
    }

    /// The open sockets.
    fn sockets(&self) -> impl Iterator<Item = &Socket> {
        self.family_sockets().map(|socket| &socket.socket)
    }

    /// The open sockets with their offload state.
    fn family_sockets(&self) -> impl Iterator<Item = &FamilySocket> {
        self.v4.iter().chain(self.v6.iter())
    }
}

/// Runs `bind` (an attempt at binding to `port`) again while it fails with
/// `EADDRINUSE` and `port` is 0, so that each try takes a new port, up to
/// ten times; any other outcome is returned at once.
pub(super) fn with_port_retries<T>(
    port: u16,
    mut bind: impl FnMut() -> io::Result<T>,
) -> io::Result<T> {
    let mut last_error = None;
    for _ in 0..PORT_ATTEMPTS {
        match bind() {
            Err(e) if port == 0 && e.kind() == io::ErrorKind::AddrInUse => last_error = Some(e),
            result => return result,
        }
    }
    Err(last_error.unwrap_or_else(|| io::Error::from(io::ErrorKind::AddrInUse)))
}

/// One attempt at binding both families to `port` (0: the kernel picks),
/// with `SO_REUSEPORT` set before the bind when `reuse_port` (the members of
/// a [`SocketGroup`](super::udp_group::SocketGroup)).
pub(super) fn bind_pair(port: u16, reuse_port: bool) -> io::Result<UdpSockets> {
    let v4 = open_bound(Family::V4, port, reuse_port)?;
    let port = match &v4 {
        Some(socket) => local_port(socket)?,
        None => port,
    };
    let v6 = open_bound(Family::V6, port, reuse_port)?;
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
    Ok(UdpSockets {
        v4: v4.map(FamilySocket::new),
        v6: v6.map(FamilySocket::new),
        port,
    })
}

/// A configured UDP socket of `family` bound to the wildcard address and
/// `port`, or `None` if the system lacks that family.
fn open_bound(family: Family, port: u16, reuse_port: bool) -> io::Result<Option<Socket>> {
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
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
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

/// Whether the kernel knows `UDP_SEGMENT` (Linux 4.18 and later): reading
/// the option fails with `ENOPROTOOPT` where it does not.
fn probe_gso(socket: &Socket) -> bool {
    get_int_option(socket.as_raw_fd(), libc::SOL_UDP, libc::UDP_SEGMENT).is_ok()
}

/// Turns `UDP_GRO` on; returns whether it is on. Kernels without it refuse
/// with `ENOPROTOOPT`. As wireguard-go, GRO counts as on only when it can be
/// read back (Linux 5.12 and later; older kernels have no `getsockopt` for
/// it and are left without GRO).
fn enable_gro(socket: &Socket) -> bool {
    let fd = socket.as_raw_fd();
    if set_int_option(fd, libc::SOL_UDP, libc::UDP_GRO, 1).is_err() {
        return false;
    }
    let on = get_int_option(fd, libc::SOL_UDP, libc::UDP_GRO).is_ok_and(|value| value == 1);
    if !on {
        let _ = set_int_option(fd, libc::SOL_UDP, libc::UDP_GRO, 0);
    }
    on
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

/// The segment size in a `UDP_GRO` control message, if `level`/`kind` is
/// one (the kernel sends an `int`; a 2-byte form is read as `u16`).
fn parse_gro(level: libc::c_int, kind: libc::c_int, data: &[u8]) -> Option<usize> {
    if (level, kind) != (libc::SOL_UDP, libc::UDP_GRO) {
        return None;
    }
    let size = match data {
        [a, b, c, d, ..] => usize::try_from(libc::c_int::from_ne_bytes([*a, *b, *c, *d])).ok()?,
        [a, b] => usize::from(u16::from_ne_bytes([*a, *b])),
        _ => return None,
    };
    (size > 0).then_some(size)
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

/// One `sendmmsg` call for at most `MAX_BATCH` packets, all with the same
/// control messages; returns how many were sent.
fn send_chunk(
    fd: RawFd,
    packets: &[&[u8]],
    name: &SockAddr,
    control: Option<&ControlBuffer>,
) -> io::Result<usize> {
    send_messages_with(fd, packets, |_| name, |_| control)
}

/// One `sendmmsg` call for at most `MAX_BATCH` packets, packet `i` with the
/// control messages `controls[i]`; returns how many were sent.
fn send_messages(
    fd: RawFd,
    packets: &[&[u8]],
    name: &SockAddr,
    controls: &[ControlBuffer],
) -> io::Result<usize> {
    send_messages_with(fd, packets, |_| name, |i| controls.get(i))
}

/// One `sendmmsg` call, packet `i` to the destination `name_of(i)` with the
/// control messages `control_of(i)` (none when `None` or empty); returns
/// how many were sent. Interrupted calls are retried.
fn send_messages_with<'n, 'c>(
    fd: RawFd,
    packets: &[&[u8]],
    name_of: impl Fn(usize) -> &'n SockAddr,
    control_of: impl Fn(usize) -> Option<&'c ControlBuffer>,
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
        .enumerate()
        .map(|(i, iov)| {
            let mut header = empty_msghdr();
            let name = name_of(i);
            header.msg_name = name.as_ptr().cast_mut().cast();
            header.msg_namelen = name.len();
            header.msg_iov = iov;
            header.msg_iovlen = 1;
            if let Some(control) = control_of(i).filter(|control| control.len > 0) {
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
        // SAFETY: each header points to live data for the whole call: its
        // borrowed destination name with its exact length, one iovec over
        // a borrowed packet, and the borrowed control buffer with its
        // exact length. sendmmsg only reads them, except for writing each
        // `msg_len`.
        let ret = unsafe { libc::sendmmsg(fd, headers.as_mut_ptr(), count, 0) };
        match check(ret) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            result => return result.map(|n| n as usize),
        }
    }
}

/// Where a segment send goes: the socket, the destination and the pktinfo
/// control message for a sticky source.
struct SendTarget {
    fd: RawFd,
    name: SockAddr,
    pktinfo: Option<ControlBuffer>,
}

/// `run` cut into pieces that one GSO message can carry: at most
/// [`MAX_GSO_SEGMENTS`] segments and [`MAX_GSO_BYTES`] bytes (a segment
/// larger than that is a piece of its own, for the kernel to refuse).
fn gso_pieces<'a>(run: &SegmentRun<'a>) -> impl Iterator<Item = SegmentRun<'a>> {
    let segment_size = run.segment_size.max(1);
    let segments_per_piece = (MAX_GSO_BYTES / segment_size).clamp(1, MAX_GSO_SEGMENTS);
    let piece_bytes = segments_per_piece.saturating_mul(segment_size);
    run.data
        .chunks(piece_bytes)
        .map(move |data| SegmentRun { data, segment_size })
}

/// The control messages of one GSO piece: the pktinfo if any, then
/// `UDP_SEGMENT` when the piece holds more than one datagram.
fn gso_control(target: &SendTarget, piece: &SegmentRun<'_>) -> io::Result<ControlBuffer> {
    let mut control = target.pktinfo.unwrap_or_else(ControlBuffer::empty);
    if piece.data.len() > piece.segment_size {
        // More than one segment means at most MAX_GSO_BYTES / 2 per segment.
        let size = u16::try_from(piece.segment_size)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "segment too large"))?;
        control
            .push(libc::SOL_UDP, libc::UDP_SEGMENT, &size.to_ne_bytes())
            .ok_or_else(|| io::Error::other("control buffer too small"))?;
    }
    Ok(control)
}

/// Sends every piece as one GSO message, [`MAX_BATCH`] per `sendmmsg`.
/// On failure, returns how many pieces went out before the error.
fn send_gso_pieces(
    target: &SendTarget,
    pieces: &[SegmentRun<'_>],
) -> Result<(), (usize, io::Error)> {
    let mut sent = 0;
    while let Some(rest) = pieces.get(sent..).filter(|rest| !rest.is_empty()) {
        let chunk = &rest[..rest.len().min(MAX_BATCH)];
        let controls = chunk
            .iter()
            .map(|piece| gso_control(target, piece))
            .collect::<io::Result<Vec<_>>>()
            .map_err(|e| (sent, e))?;
        let payloads: Vec<&[u8]> = chunk.iter().map(|piece| piece.data).collect();
        match send_messages(target.fd, &payloads, &target.name, &controls) {
            Ok(0) => return Err((sent, io::Error::from(io::ErrorKind::WriteZero))),
            Ok(n) => sent += n,
            Err(e) => return Err((sent, e)),
        }
    }
    Ok(())
}

/// Sends every datagram (several `sendmmsg` calls when needed); fails with
/// the first error, after the datagrams before it went out.
fn send_all_datagrams(target: &SendTarget, datagrams: &[&[u8]]) -> io::Result<()> {
    let mut sent = 0;
    while let Some(rest) = datagrams.get(sent..).filter(|rest| !rest.is_empty()) {
        let chunk = &rest[..rest.len().min(MAX_BATCH)];
        match send_chunk(target.fd, chunk, &target.name, target.pktinfo.as_ref())? {
            0 => return Err(io::Error::from(io::ErrorKind::WriteZero)),
            n => sent += n,
        }
    }
    Ok(())
}

/// A datagram of `UdpSockets::send_singles` ready for `sendmmsg`: its
/// normalised destination and its pktinfo control message.
struct PreparedDatagram<'a> {
    /// Its position in the caller's batch.
    index: usize,
    data: &'a [u8],
    name: SockAddr,
    pktinfo: Option<ControlBuffer>,
    /// Why its source cannot be used, found before any system call (e.g.
    /// a source of the other family); taken when it is dealt with.
    refused: Option<SendError>,
}

impl<'a> PreparedDatagram<'a> {
    fn new(index: usize, datagram: &Datagram<'a>) -> PreparedDatagram<'a> {
        let dst = normalize(datagram.dst);
        let control = datagram.src.map(|src| source_control(&src, &dst));
        PreparedDatagram {
            index,
            data: datagram.data,
            name: SockAddr::from(dst),
            pktinfo: control.as_ref().and_then(|c| c.as_ref().ok().copied()),
            refused: control.and_then(Result::err),
        }
    }
}

/// Sends one family's prepared datagrams from `fd`, [`MAX_BATCH`] per
/// `sendmmsg`, and records each one's outcome at its index. A refused
/// datagram is dealt with alone (see [`settle_refused`]) before the next
/// `sendmmsg` goes on after it.
fn send_prepared(
    fd: RawFd,
    mut batch: Vec<PreparedDatagram<'_>>,
    outcomes: &mut [Option<SendOutcome>],
) {
    let mut next = 0;
    while next < batch.len() {
        let refusal = match batch[next].refused.take() {
            Some(refused) => refused,
            None => {
                // The run up to the next datagram refused beforehand.
                let run: Vec<&PreparedDatagram<'_>> = batch[next..]
                    .iter()
                    .take(MAX_BATCH)
                    .take_while(|p| p.refused.is_none())
                    .collect();
                let packets: Vec<&[u8]> = run.iter().map(|p| p.data).collect();
                let sent =
                    send_messages_with(fd, &packets, |i| &run[i].name, |i| run[i].pktinfo.as_ref());
                match sent {
                    Ok(n) if n > 0 => {
                        let n = n.min(run.len());
                        for prepared in &run[..n] {
                            outcomes[prepared.index] = Some(SendOutcome::Sent);
                        }
                        next += n;
                        continue;
                    }
                    // Not expected for a non-empty run; never spin.
                    Ok(_) => SendError::Other(io::Error::from(io::ErrorKind::WriteZero)),
                    // sendmmsg fails only when its first datagram failed.
                    Err(e) => classify_send_error(e, run[0].pktinfo.is_some()),
                }
            }
        };
        let prepared = &batch[next];
        outcomes[prepared.index] = Some(settle_refused(fd, prepared, refusal));
        next += 1;
    }
}

/// The outcome of a datagram the kernel (or the preparation of its source)
/// refused: an unusable source is dropped and the datagram sent once more
/// without it; any other error is final.
fn settle_refused(fd: RawFd, prepared: &PreparedDatagram<'_>, err: SendError) -> SendOutcome {
    match err {
        SendError::SourceUnusable(refused) => {
            let retry = send_messages_with(fd, &[prepared.data], |_| &prepared.name, |_| None)
                .and_then(|sent| match sent {
                    0 => Err(io::Error::from(io::ErrorKind::WriteZero)),
                    _ => Ok(()),
                });
            SendOutcome::SourceDropped { refused, retry }
        }
        SendError::Other(e) => SendOutcome::Failed(e),
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
        let mut local = None;
        let mut segment_size = None;
        if let Some(control) = self.controls.get(i) {
            for (level, kind, data) in control_messages(&control.bytes[..control_len]) {
                local = local.or_else(|| parse_pktinfo(level, kind, data));
                segment_size = segment_size.or_else(|| parse_gro(level, kind, data));
            }
        }
        RecvMeta {
            len,
            src,
            local,
            segment_size,
        }
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
    fn eio_turns_gso_off_and_the_data_is_resent() {
        let a = UdpSockets::bind(0, 0).unwrap();
        let b = UdpSockets::bind(0, 0).unwrap();
        let a4 = a.v4.as_ref().unwrap();
        assert!(a4.gso.load(Ordering::Relaxed));
        a4.simulate_eio.store(true, Ordering::Relaxed);
        let data: Vec<u8> = (0..10u8).flat_map(|i| [i; 1200]).collect();
        let dst = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), b.port());
        let outcome = a.send(&[Transmit::segments(dst, &data, 1200)]);
        assert!(matches!(outcome[..], [SendOutcome::Sent]), "{outcome:?}");
        assert!(!a.gso_enabled(Family::V4), "EIO turns GSO off for good");
        assert!(!a.gso_supported());
        if a.v6.is_some() {
            assert!(a.gso_enabled(Family::V6), "the other socket keeps it");
        }

        let fd = b.v4.as_ref().unwrap().as_raw_fd();
        let mut bufs = vec![vec![0u8; GRO_BUFFER_BYTES]; 4];
        let mut meta = vec![RecvMeta::default(); 4];
        let mut received = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while received.len() < 10 && std::time::Instant::now() < deadline {
            let wait = Some(std::time::Duration::from_millis(100));
            if crate::sys::poll_readable(&[fd], wait).unwrap() != [true] {
                continue;
            }
            let n = b.recv_batch(Family::V4, &mut bufs, &mut meta).unwrap_or(0);
            for (buf, meta) in bufs.iter().zip(&meta).take(n) {
                // Sent one by one, the datagrams are not coalesced.
                assert_eq!(meta.segment_size, None);
                received.extend(meta.datagrams(buf).map(<[u8]>::to_vec));
            }
        }
        assert_eq!(received.len(), 10);
        assert_eq!(received.concat(), data);
    }

    #[test]
    fn datagrams_are_split_at_the_segment_size() {
        let buf: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
        let meta = RecvMeta {
            len: 2500,
            segment_size: Some(1000),
            ..RecvMeta::default()
        };
        let parts: Vec<&[u8]> = meta.datagrams(&buf).collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [1000, 1000, 500]
        );
        assert_eq!(parts.concat(), buf[..2500]);

        let exact = RecvMeta { len: 2000, ..meta };
        assert_eq!(exact.datagrams(&buf).count(), 2);
        let plain = RecvMeta {
            segment_size: None,
            ..meta
        };
        assert_eq!(plain.datagrams(&buf).collect::<Vec<_>>(), [&buf[..2500]]);
        let clipped = RecvMeta { len: 9999, ..plain };
        assert_eq!(clipped.datagrams(&buf).collect::<Vec<_>>(), [&buf[..]]);
        let empty = RecvMeta::default();
        assert_eq!(empty.datagrams(&buf).collect::<Vec<_>>(), [&[][..]]);
        let zero_size = RecvMeta {
            len: 10,
            segment_size: Some(0),
            ..RecvMeta::default()
        };
        assert_eq!(zero_size.datagrams(&buf).collect::<Vec<_>>(), [&buf[..10]]);
    }

    #[test]
    fn gso_pieces_respect_both_limits() {
        let data = vec![0u8; 300 * 1420 + 7];
        let run = SegmentRun {
            data: &data,
            segment_size: 1420,
        };
        let pieces: Vec<_> = gso_pieces(&run).collect();
        assert!(pieces.iter().all(|p| p.data.len() <= MAX_GSO_BYTES));
        assert_eq!(pieces[0].data.len(), 46 * 1420);
        assert_eq!(
            pieces.iter().map(|p| p.data.len()).sum::<usize>(),
            data.len()
        );
        let small = vec![0u8; 100 * 100];
        let run = SegmentRun {
            data: &small,
            segment_size: 100,
        };
        let pieces: Vec<_> = gso_pieces(&run).collect();
        assert_eq!(pieces.len(), 2);
        assert_eq!(pieces[0].data.len(), MAX_GSO_SEGMENTS * 100);
        let huge = vec![0u8; 70_000];
        let run = SegmentRun {
            data: &huge,
            segment_size: 70_000,
        };
        assert_eq!(
            gso_pieces(&run).count(),
            1,
            "one oversized segment stays whole"
        );
    }

    #[test]
    fn gro_messages_are_parsed() {
        let int = 1380i32.to_ne_bytes();
        assert_eq!(parse_gro(libc::SOL_UDP, libc::UDP_GRO, &int), Some(1380));
        let short = 1200u16.to_ne_bytes();
        assert_eq!(parse_gro(libc::SOL_UDP, libc::UDP_GRO, &short), Some(1200));
        assert_eq!(parse_gro(libc::SOL_UDP, libc::UDP_GRO, &[1]), None);
        assert_eq!(
            parse_gro(libc::SOL_UDP, libc::UDP_GRO, &0i32.to_ne_bytes()),
            None
        );
        assert_eq!(
            parse_gro(libc::SOL_UDP, libc::UDP_GRO, &(-5i32).to_ne_bytes()),
            None
        );
        assert_eq!(parse_gro(libc::IPPROTO_IP, libc::UDP_GRO, &int), None);
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
