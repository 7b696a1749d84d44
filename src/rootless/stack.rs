//! The in-process TCP/IP stack's device (see docs/ROOTLESS.md, "Design"):
//! a smoltcp [`Device`](phy::Device) that receives from a unix datagram
//! socket, the other end of which is the WireGuard runtime's "TUN device",
//! and hands what it sends straight to the runtime's send path.
//!
//! Towards the stack the pipe speaks the TUN device's offload format: each
//! datagram is a virtio-net header and an IP packet. What the runtime sends
//! may be a TCP super-packet of up to 64 KiB (its GRO merges what it
//! decrypted), split here with the runtime's own `offload::split`: a full
//! window from the peer crosses the pipe in a few system calls.
//!
//! From the stack, packets do not cross the pipe: the packets of one poll
//! are collected and given to [`StackSender`], which routes, encrypts and
//! sends them on the stack's thread with the code that serves TUN reads.
//! One datagram per packet through the pipe cost a socket buffer, a copy
//! and a wake-up at each end, half the process's CPU time uphill (profile
//! in BENCHMARKS.md, "Rootless mode").

use std::collections::VecDeque;
use std::io;
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;

use smoltcp::iface::{Config, Interface};
use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::time::Instant as SmolInstant;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr};

use crate::offload::{split, SegmentBatch, VirtioNetHdr, VIRTIO_NET_HDR_LEN};
use crate::runtime::{Shared, StackSender};
use crate::sys::tun::TunOffloads;

/// The offloads the pipe's runtime end is set up with: the virtio-net
/// header and TCP segmentation, so that the runtime may write GRO
/// super-packets (nothing is sent into the pipe from the stack's end but
/// through [`StackSender`]; no UDP segmentation).
pub(crate) const PIPE_OFFLOADS: TunOffloads = TunOffloads {
    vnet_hdr: true,
    tso: true,
    uso: false,
};

/// The largest datagram on the pipe: a header and a 64 KiB super-packet.
const MAX_DATAGRAM: usize = VIRTIO_NET_HDR_LEN + 65535;

/// Packets read from the pipe per round at most, so that the listeners and
/// connections get their turn under a flood.
const READ_BATCH: usize = 256;

/// Packets the stack sends that are handed to the runtime at once (one
/// `sendmmsg`, one GSO run). A poll that sends more hands them over in
/// batches of this size; the rest goes at the end of the poll
/// ([`PacketPipe::send_queued`]). Not 64 (the runtime's largest run):
/// towards a wireguard-go peer with a default-sized UDP buffer, 64 carried
/// 8.5 Mbit/s uphill and 16 carried 105 in one run each (BENCHMARKS.md,
/// "Rootless mode").
const HANDOFF_BATCH: usize = 16;

/// The stack's end of the packet pipe.
pub(crate) struct PacketPipe {
    socket: UnixDatagram,
    received: VecDeque<Vec<u8>>,
    read_buf: Vec<u8>,
    segments: SegmentBatch,
    outgoing: Outgoing,
    mtu: usize,
    /// The last read stopped at [`READ_BATCH`], not at an empty pipe.
    pub more_to_read: bool,
}

/// The packets the stack sent and the runtime has not yet been given, back
/// to back in one buffer.
struct Outgoing {
    shared: Arc<Shared>,
    sender: StackSender,
    bytes: Vec<u8>,
    /// Where each packet ends in `bytes`.
    ends: Vec<usize>,
}

impl Outgoing {
    /// Lets smoltcp write a `len`-byte packet at the end of the queue; hands
    /// the queue over when it holds a batch.
    fn push<R>(&mut self, len: usize, write: impl FnOnce(&mut [u8]) -> R) -> R {
        let start = self.bytes.len();
        self.bytes.resize(start + len, 0);
        let result = write(&mut self.bytes[start..]);
        self.ends.push(self.bytes.len());
        if self.ends.len() >= HANDOFF_BATCH {
            self.hand_over();
        }
        result
    }

    /// Sends the queued packets through the runtime, in order.
    fn hand_over(&mut self) {
        if self.ends.is_empty() {
            return;
        }
        let mut packets = Vec::with_capacity(self.ends.len());
        let mut start = 0;
        for &end in &self.ends {
            packets.push(&self.bytes[start..end]);
            start = end;
        }
        self.sender.send(&self.shared, &packets);
        self.bytes.clear();
        self.ends.clear();
    }
}

impl PacketPipe {
    /// Wraps the stack's end (made non-blocking here); what the stack sends
    /// goes through `shared`, the runtime at the pipe's other end.
    pub(crate) fn new(
        socket: UnixDatagram,
        shared: Arc<Shared>,
        mtu: usize,
    ) -> io::Result<PacketPipe> {
        socket.set_nonblocking(true)?;
        Ok(PacketPipe {
            socket,
            received: VecDeque::new(),
            read_buf: vec![0u8; MAX_DATAGRAM],
            segments: SegmentBatch::new(),
            outgoing: Outgoing {
                shared,
                sender: StackSender::new(),
                bytes: Vec::new(),
                ends: Vec::new(),
            },
            mtu,
            more_to_read: false,
        })
    }

    /// Hands what the stack sent during the last poll to the runtime (call
    /// after each `Interface::poll`).
    pub(crate) fn send_queued(&mut self) {
        self.outgoing.hand_over();
    }

    /// The descriptor, for the event loop.
    pub(crate) fn socket(&self) -> &UnixDatagram {
        &self.socket
    }

    /// Reads the packets waiting in the pipe (up to a batch), splitting
    /// super-packets. An error other than "nothing waiting" means the
    /// runtime is gone.
    pub(crate) fn read_waiting(&mut self) -> io::Result<()> {
        self.more_to_read = false;
        for _ in 0..READ_BATCH {
            match self.socket.recv(&mut self.read_buf) {
                Ok(n) => self.take_datagram(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        self.more_to_read = true;
        Ok(())
    }

    /// Queues the packets of the `n`-byte datagram in `read_buf` (one, or
    /// the segments of a super-packet); a malformed one is dropped.
    fn take_datagram(&mut self, n: usize) {
        let datagram = &self.read_buf[..n];
        let Ok(header) = VirtioNetHdr::decode(datagram) else {
            return;
        };
        let packet = &datagram[VIRTIO_NET_HDR_LEN..];
        if split(&header, packet, &mut self.segments).is_err() {
            log::trace!("dropped a malformed {n}-byte datagram from the runtime");
            return;
        }
        self.received
            .extend(self.segments.packets().map(<[u8]>::to_vec));
    }
}

/// The interface with our tunnel addresses, and default routes through it
/// (every destination is reached through the tunnel; the runtime's allowed
/// IPs decide which peer, or answer with ICMP).
pub(crate) fn interface(
    pipe: &mut PacketPipe,
    addresses: &[(std::net::IpAddr, u8)],
    seed: u64,
) -> Result<Interface, String> {
    let mut config = Config::new(HardwareAddress::Ip);
    config.random_seed = seed;
    let mut iface = Interface::new(config, pipe, SmolInstant::ZERO);
    let mut overflow = false;
    iface.update_ip_addrs(|ips| {
        for (ip, len) in addresses {
            overflow |= ips.push(IpCidr::new(IpAddress::from(*ip), *len)).is_err();
        }
    });
    if overflow {
        return Err("rootless mode takes at most two addresses (one IPv4, one IPv6)".into());
    }
    for (ip, _) in addresses {
        let added = match ip {
            std::net::IpAddr::V4(v4) => iface.routes_mut().add_default_ipv4_route(*v4).map(|_| ()),
            std::net::IpAddr::V6(v6) => iface.routes_mut().add_default_ipv6_route(*v6).map(|_| ()),
        };
        added.map_err(|_| "too many routes".to_string())?;
    }
    Ok(iface)
}

/// A received packet, handed to the stack.
pub(crate) struct RxToken(Vec<u8>);

/// Room for one packet the stack sends.
pub(crate) struct TxToken<'a> {
    outgoing: &'a mut Outgoing,
}

impl phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        self.outgoing.push(len, f)
    }
}

impl phy::Device for PacketPipe {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _now: SmolInstant) -> Option<(RxToken, TxToken<'_>)> {
        let packet = self.received.pop_front()?;
        Some((
            RxToken(packet),
            TxToken {
                outgoing: &mut self.outgoing,
            },
        ))
    }

    fn transmit(&mut self, _now: SmolInstant) -> Option<TxToken<'_>> {
        Some(TxToken {
            outgoing: &mut self.outgoing,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = self.mtu;
        // Received packets were authenticated by WireGuard's AEAD on the way
        // in, so verifying their checksums again buys nothing; sent ones
        // get theirs, since the peer's kernel checks.
        let mut checksums = ChecksumCapabilities::default();
        checksums.ipv4 = Checksum::Tx;
        checksums.tcp = Checksum::Tx;
        checksums.udp = Checksum::Tx;
        checksums.icmpv4 = Checksum::Tx;
        checksums.icmpv6 = Checksum::Tx;
        caps.checksum = checksums;
        caps
    }
}
