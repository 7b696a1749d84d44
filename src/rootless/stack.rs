//! The in-process TCP/IP stack's side of the packet pipe: a smoltcp
//! [`Device`](phy::Device) whose packets come from and go to a unix
//! datagram socket, the other end of which is the WireGuard runtime's
//! "TUN device" (see docs/ROOTLESS.md, "Design").
//!
//! The pipe speaks the TUN device's offload format: each datagram is a
//! virtio-net header and an IP packet. What the runtime sends may be a TCP
//! super-packet of up to 64 KiB (its GRO merges what it decrypted), split
//! here with the runtime's own `offload::split`: a full window from the
//! peer crosses the pipe in a few system calls, not one per segment. What
//! the stack sends goes one packet per datagram, with an empty header:
//! merging it too was measured no faster, and it sent smoltcp's
//! window-sized bursts to the wire at once, which a wireguard-go peer on a
//! busy host dropped (docs/ROOTLESS.md, "Design").

use std::collections::VecDeque;
use std::io;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use smoltcp::iface::{Config, Interface};
use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::time::Instant as SmolInstant;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr};

use crate::offload::{split, SegmentBatch, VirtioNetHdr, VIRTIO_NET_HDR_LEN};
use crate::sys::tun::TunOffloads;

/// The offloads the pipe's runtime end is set up with: the virtio-net
/// header and TCP segmentation, so that the runtime may write GRO
/// super-packets (the stack itself sends none; no UDP segmentation).
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

/// How long a send into a full pipe is retried before the packet is dropped
/// (TCP retransmits it). The runtime drains the pipe continuously, so this
/// only waits out a burst.
const FULL_PIPE_PATIENCE: Duration = Duration::from_millis(20);

/// The stack's end of the packet pipe.
pub(crate) struct PacketPipe {
    socket: UnixDatagram,
    received: VecDeque<Vec<u8>>,
    read_buf: Vec<u8>,
    segments: SegmentBatch,
    /// Where smoltcp writes the packet it sends, after an empty header.
    scratch: Vec<u8>,
    mtu: usize,
    /// The last read stopped at [`READ_BATCH`], not at an empty pipe.
    pub more_to_read: bool,
    /// Packets dropped because the pipe stayed full.
    pub dropped: u64,
}

impl PacketPipe {
    /// Wraps the stack's end (made non-blocking here).
    pub(crate) fn new(socket: UnixDatagram, mtu: usize) -> io::Result<PacketPipe> {
        socket.set_nonblocking(true)?;
        Ok(PacketPipe {
            socket,
            received: VecDeque::new(),
            read_buf: vec![0u8; MAX_DATAGRAM],
            segments: SegmentBatch::new(),
            scratch: Vec::new(),
            mtu,
            more_to_read: false,
            dropped: 0,
        })
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

/// Room for one packet to send into the pipe.
pub(crate) struct TxToken<'a> {
    socket: &'a UnixDatagram,
    scratch: &'a mut Vec<u8>,
    dropped: &'a mut u64,
}

impl phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        // An all-zero header: a whole packet, its checksums complete.
        self.scratch.clear();
        self.scratch.resize(VIRTIO_NET_HDR_LEN + len, 0);
        let result = f(&mut self.scratch[VIRTIO_NET_HDR_LEN..]);
        if !send_patiently(self.socket, self.scratch) {
            *self.dropped += 1;
        }
        result
    }
}

/// Sends one packet, waiting out a full pipe for at most
/// [`FULL_PIPE_PATIENCE`]; false if it was dropped.
fn send_patiently(socket: &UnixDatagram, packet: &[u8]) -> bool {
    let give_up = std::time::Instant::now() + FULL_PIPE_PATIENCE;
    loop {
        match socket.send(packet) {
            Ok(_) => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if std::time::Instant::now() >= give_up {
                    return false;
                }
                std::thread::sleep(Duration::from_micros(50));
            }
            Err(_) => return false,
        }
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
                socket: &self.socket,
                scratch: &mut self.scratch,
                dropped: &mut self.dropped,
            },
        ))
    }

    fn transmit(&mut self, _now: SmolInstant) -> Option<TxToken<'_>> {
        Some(TxToken {
            socket: &self.socket,
            scratch: &mut self.scratch,
            dropped: &mut self.dropped,
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
