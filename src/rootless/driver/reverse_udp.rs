//! UDP reverse forwards (`[Forward] ReverseUDP = PORT -> LOCAL`): a UDP
//! port on the tunnel address, forwarded to a local service.
//!
//! A stack UDP socket listens on the port. Each tunnel endpoint (address
//! and port) that sends to it is an association with a local UDP socket of
//! its own, connected to the service, so that the service's answers can be
//! told apart and go back to the endpoint that asked. Associations count
//! towards `MaxUdpAssociations` (beyond it, datagrams from new endpoints are
//! dropped) and are forgotten after `UdpIdleTimeout` without traffic.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::UdpSocket;
use mio::{Interest, Token};
use smoltcp::iface::SocketHandle;
use smoltcp::socket::udp;
use smoltcp::wire::{IpAddress, IpEndpoint, IpListenEndpoint};

use super::Driver;
use crate::rootless::config::Reverse;

/// One `ReverseUDP` line.
pub(super) struct ReverseUdp {
    spec: Reverse,
    stack: SocketHandle,
    peers: HashMap<IpEndpoint, ReversePeer>,
}

/// A tunnel endpoint's association: its local socket and last use.
struct ReversePeer {
    socket: UdpSocket,
    token: usize,
    last_used: Instant,
}

impl ReverseUdp {
    /// Its associations.
    pub(super) fn associations(&self) -> usize {
        self.peers.len()
    }
}

impl Driver {
    /// Opens the stack socket of each `ReverseUDP` line.
    pub(super) fn bind_reverse_udp(&mut self, specs: &[Reverse]) -> Result<(), String> {
        for spec in specs {
            let endpoint = IpListenEndpoint {
                addr: spec.address.map(IpAddress::from),
                port: spec.port,
            };
            let stack = self
                .udp_socket_bound(endpoint)
                .ok_or_else(|| format!("cannot listen on UDP port {} in the tunnel", spec.port))?;
            log::info!(
                "forwarding UDP port {} of the tunnel to {}",
                spec.port,
                spec.target
            );
            self.reverse_udp.push(ReverseUdp {
                spec: spec.clone(),
                stack,
                peers: HashMap::new(),
            });
        }
        Ok(())
    }

    /// Hands what tunnel endpoints sent to the reverse ports to the local
    /// services.
    pub(super) fn relay_reverse_udp_from_tunnel(&mut self) {
        if self.reverse_udp.is_empty() {
            return;
        }
        let mut buf = self.datagram_buf();
        for index in 0..self.reverse_udp.len() {
            loop {
                let stack = self.reverse_udp[index].stack;
                let socket = self.sockets.get_mut::<udp::Socket>(stack);
                let Ok((n, meta)) = socket.recv_slice(&mut buf) else {
                    break;
                };
                let Some(peer) = self.reverse_peer(index, meta.endpoint) else {
                    continue;
                };
                peer.last_used = Instant::now();
                if let Err(e) = peer.socket.send(&buf[..n]) {
                    log::debug!("UDP reverse forward to the local service: {e}");
                }
            }
        }
        self.datagram = buf;
    }

    /// The association of `endpoint` on reverse forward `index`, made if
    /// `MaxUdpAssociations` allows.
    fn reverse_peer(&mut self, index: usize, endpoint: IpEndpoint) -> Option<&mut ReversePeer> {
        if !self.reverse_udp[index].peers.contains_key(&endpoint) {
            let open = self.udp_association_count();
            if open >= self.limits.max_udp_associations {
                log::warn!(
                    "refusing UDP from {endpoint} in the tunnel: {open} associations open (MaxUdpAssociations)"
                );
                return None;
            }
            let target = self.reverse_udp[index].spec.target;
            let token = self.next_token;
            let peer = match local_socket(target) {
                Ok(mut socket) => self
                    .poll
                    .registry()
                    .register(&mut socket, Token(token), Interest::READABLE)
                    .map(|()| socket),
                Err(e) => Err(e),
            };
            let socket = match peer {
                Ok(socket) => socket,
                Err(e) => {
                    log::warn!("UDP reverse forward to {target}: {e}");
                    return None;
                }
            };
            self.next_token += 1;
            self.reverse_udp_tokens.insert(token, (index, endpoint));
            self.reverse_udp[index].peers.insert(
                endpoint,
                ReversePeer {
                    socket,
                    token,
                    last_used: Instant::now(),
                },
            );
        }
        self.reverse_udp[index].peers.get_mut(&endpoint)
    }

    /// Sends the local service's answers back to the tunnel endpoint.
    pub(super) fn on_reverse_udp_ready(&mut self, token: usize) {
        let Some(&(index, endpoint)) = self.reverse_udp_tokens.get(&token) else {
            return;
        };
        let mut buf = self.datagram_buf();
        let forward = &mut self.reverse_udp[index];
        if let Some(peer) = forward.peers.get_mut(&endpoint) {
            let socket = self.sockets.get_mut::<udp::Socket>(forward.stack);
            loop {
                match peer.socket.recv(&mut buf) {
                    Ok(n) => {
                        peer.last_used = Instant::now();
                        if socket.send_slice(&buf[..n], endpoint).is_err() {
                            log::debug!("UDP reverse forward: stack buffer full, dropped");
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        if e.kind() != io::ErrorKind::WouldBlock {
                            log::debug!("UDP reverse forward, local service: {e}");
                        }
                        break;
                    }
                }
            }
        }
        self.datagram = buf;
    }

    /// Forgets the associations idle for `idle`.
    pub(super) fn expire_reverse_udp(&mut self, now: Instant, idle: Duration) {
        for forward in &mut self.reverse_udp {
            let registry = self.poll.registry();
            let tokens = &mut self.reverse_udp_tokens;
            forward.peers.retain(|endpoint, peer| {
                let alive = now.duration_since(peer.last_used) < idle;
                if !alive {
                    log::debug!("UDP reverse association of {endpoint} expired");
                    let _ = registry.deregister(&mut peer.socket);
                    tokens.remove(&peer.token);
                }
                alive
            });
        }
    }
}

/// A local socket connected to `target`, on the matching loopback or
/// unspecified address.
fn local_socket(target: SocketAddr) -> io::Result<UdpSocket> {
    let any: SocketAddr = if target.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(any)?;
    socket.connect(target)?;
    Ok(socket)
}
