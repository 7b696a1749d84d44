//! Ferroguard's protocol core: WireGuard without I/O and without a clock.
//!
//! The caller owns sockets, the TUN device and time. It hands datagrams,
//! IP packets and "now" to a [`device::Device`] and gets back datagrams to
//! send, packets to deliver and the next instant at which the engine wants
//! to be woken. Nothing here blocks, sleeps, reads a clock or touches a file,
//! so the engine is deterministic, fuzzable and embeddable.
//!
//! One concern per module, as in the Linux driver.
//!
//! # Example: two engines over UDP on loopback, no TUN
//!
//! ```
//! use std::net::UdpSocket;
//! use ferroguard_proto::{crypto::SecretKey, device::*};
//!
//! let node = |seed: u8| -> (Device, UdpSocket) {
//!     let mut d = Device::new([seed; 32]); // real code: 32 bytes from the OS
//!     d.set_private_key(Some(SecretKey::from_bytes([seed; 32])));
//!     let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
//!     sock.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
//!     (d, sock)
//! };
//! let ((mut a, sa), (mut b, sb)) = (node(1), node(2));
//! let peer = a.add_peer(b.public_key().unwrap()).unwrap();
//! a.set_endpoint(peer, sb.local_addr().unwrap());
//! a.add_allowed_ip(peer, "10.0.0.2".parse().unwrap(), 32).unwrap();
//! let back = b.add_peer(a.public_key().unwrap()).unwrap();
//! b.add_allowed_ip(back, "10.0.0.1".parse().unwrap(), 32).unwrap();
//!
//! // A 20-byte IPv4 header from 10.0.0.1 to 10.0.0.2: queued, handshake starts.
//! let mut ip = [0u8; 20];
//! ip[0] = 0x45; ip[3] = 20; ip[12..16].copy_from_slice(&[10, 0, 0, 1]); ip[16..].copy_from_slice(&[10, 0, 0, 2]);
//! let mut out = [0u8; 128];
//! assert!(matches!(a.send(Now::system(), &ip, &mut out), SendOutcome::Queued(_)));
//!
//! // Shuttle datagrams until B delivers the packet.
//! let flush = |dev: &mut Device, sock: &UdpSocket| {
//!     while let Some(t) = dev.poll_transmit() { sock.send_to(&t.data, t.endpoint.addr).unwrap(); }
//! };
//! let mut buf = [0u8; 2048];
//! let delivered = loop {
//!     flush(&mut a, &sa);
//!     let (n, from) = sb.recv_from(&mut buf).unwrap();
//!     if let ReceiveOutcome::Deliver { len, .. } = b.receive(Now::system(), from.into(), &mut buf[..n]) {
//!         break buf[16..16 + len].to_vec();
//!     }
//!     flush(&mut b, &sb); // the handshake response
//!     let (n, from) = sa.recv_from(&mut buf).unwrap();
//!     a.receive(Now::system(), from.into(), &mut buf[..n]);
//! };
//! assert_eq!(delivered, ip);
//! // Sleep until a.poll_timeout(), then call a.handle_timeout(Now::system()).
//! ```
//!
//! `examples/udp_pair.rs` is the same with an answer and the timer loop.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod allowedips;
pub mod constants;
pub mod cookie;
pub mod crypto;
pub mod device;
pub mod drops;
pub mod messages;
pub mod noise;
pub mod packet;
pub mod peer;
pub mod peerlookup;
mod peerstore;
pub mod ratelimiter;
pub mod replay;
#[cfg(feature = "selftest")]
pub mod selftest;
pub mod send_holds;
pub mod tai64n;
#[cfg(any(test, feature = "test-support"))]
pub mod testing;
pub mod timers;
pub mod transport;
