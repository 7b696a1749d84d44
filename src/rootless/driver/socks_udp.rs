//! SOCKS5 UDP ASSOCIATE (RFC 1928 section 7): a relay per association.
//!
//! The client's control connection asks for an association; the relay is a
//! local UDP socket (on the address the client reached the proxy on, any
//! port, returned in the reply) and a UDP socket of the stack. Datagrams
//! from the client carry a header naming their destination inside the
//! tunnel; answers go back with a header naming their source. The relay
//! lives as long as its control connection, and no longer than
//! `UdpIdleTimeout` without a datagram either way (then the control
//! connection is closed, which tells the client). Each relay counts
//! towards `MaxUdpAssociations`, and its control connection towards the
//! connection limits like any other.
//!
//! Only the control connection's client may use a relay: datagrams from any
//! other IP address (or, if the request named one, another port) are
//! dropped, and the first accepted datagram fixes the client's port.
//! Fragments (FRAG other than 0) are dropped, as the RFC allows. Names are
//! resolved through the tunnel's DNS server (socks5h semantics) and kept
//! for the relay's lifetime; datagrams wait for their lookup, a few at most.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use mio::net::UdpSocket;
use mio::{Interest, Token};
use smoltcp::iface::SocketHandle;
use smoltcp::socket::dns::{self, GetQueryResultError, QueryHandle};
use smoltcp::socket::udp;
use smoltcp::wire::{IpAddress, IpEndpoint};

use super::{recv_waiting, Driver, Phase, Reply};
use crate::rootless::socks5::{self, Target};

/// Lookups in flight per relay.
const MAX_LOOKUPS: usize = 4;
/// Datagrams waiting for their lookups, per relay.
const MAX_WAITING: usize = 16;
/// Resolved names remembered per relay.
const MAX_NAMES: usize = 16;

/// One UDP ASSOCIATE relay.
pub(super) struct SocksRelay {
    socket: UdpSocket,
    stack: SocketHandle,
    /// The token of the control connection.
    control: usize,
    /// The control connection's client address: only it may send.
    client_ip: IpAddr,
    /// The port the request named, if any.
    client_port: Option<u16>,
    /// The client's address, fixed by its first accepted datagram.
    client: Option<SocketAddr>,
    last_used: Instant,
    lookups: Vec<Lookup>,
    names: VecDeque<(String, IpAddr)>,
}

/// A name being resolved and the datagrams (port, payload) waiting for it.
struct Lookup {
    query: QueryHandle,
    name: String,
    waiting: Vec<(u16, Vec<u8>)>,
}

impl SocksRelay {
    fn waiting(&self) -> usize {
        self.lookups.iter().map(|l| l.waiting.len()).sum()
    }

    fn resolved(&self, name: &str) -> Option<IpAddr> {
        self.names
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, ip)| *ip)
    }

    /// Whether a datagram from `source` is the client's (and fixes the
    /// client's address on the first).
    fn admit(&mut self, source: SocketAddr) -> bool {
        if source.ip() != self.client_ip || self.client_port.is_some_and(|p| p != source.port()) {
            return false;
        }
        match self.client {
            Some(client) => client == source,
            None => {
                self.client = Some(source);
                true
            }
        }
    }
}

impl Driver {
    /// Answers a UDP ASSOCIATE request of connection `token`: opens a relay
    /// if `MaxUdpAssociations` allows, and replies with its address.
    pub(super) fn start_udp_relay(&mut self, token: usize, requested: &Target) {
        let open = self.udp_association_count();
        if open >= self.limits.max_udp_associations {
            log::warn!(
                "refusing a SOCKS5 UDP association: {open} associations open (MaxUdpAssociations)"
            );
            self.fail(token, Reply::GeneralFailure);
            return;
        }
        let Some(conn) = self.conns.get(&token) else {
            return;
        };
        let (Ok(local), Ok(peer)) = (conn.stream.local_addr(), conn.stream.peer_addr()) else {
            self.fail(token, Reply::GeneralFailure);
            return;
        };
        let mut socket = match UdpSocket::bind(SocketAddr::new(local.ip(), 0)) {
            Ok(socket) => socket,
            Err(e) => {
                log::warn!("SOCKS5 UDP relay: cannot bind on {}: {e}", local.ip());
                self.fail(token, Reply::GeneralFailure);
                return;
            }
        };
        let relay_token = self.next_token;
        self.next_token += 1;
        let bound = socket.local_addr();
        let registered =
            self.poll
                .registry()
                .register(&mut socket, Token(relay_token), Interest::READABLE);
        let Some(stack) = bound
            .is_ok()
            .then_some(())
            .and(registered.ok())
            .and_then(|()| self.new_udp_socket())
        else {
            self.fail(token, Reply::GeneralFailure);
            return;
        };
        let bound = bound.expect("checked above");
        let client_port = match requested {
            Target::Addr(addr) if addr.port() != 0 => Some(addr.port()),
            _ => None,
        };
        self.relays.insert(
            relay_token,
            SocksRelay {
                socket,
                stack,
                control: token,
                client_ip: peer.ip(),
                client_port,
                client: None,
                last_used: Instant::now(),
                lookups: Vec::new(),
                names: VecDeque::new(),
            },
        );
        log::debug!("connection {token}: SOCKS5 UDP relay on {bound} for {peer}");
        let conn = self.conns.get_mut(&token).expect("exists");
        conn.outbound
            .extend_from_slice(&socks5::reply(Reply::Succeeded, bound));
        conn.phase = Phase::UdpControl { relay: relay_token };
        conn.deadline = None;
    }

    /// Frees a relay (its control connection is closing).
    pub(super) fn remove_relay(&mut self, relay_token: usize) {
        let Some(mut relay) = self.relays.remove(&relay_token) else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut relay.socket);
        self.sockets.remove(relay.stack);
        if let Some(dns_handle) = self.dns {
            let dns = self.sockets.get_mut::<dns::Socket>(dns_handle);
            for lookup in relay.lookups {
                dns.cancel_query(lookup.query);
            }
        }
    }

    /// Reads (and ignores) what the client sends on a control connection;
    /// its end closes the association.
    pub(super) fn watch_udp_control(&mut self, token: usize) -> bool {
        let conn = self
            .conns
            .get_mut(&token)
            .expect("serviced connection exists");
        conn.inbound.clear();
        let mut buf = [0u8; 512];
        while conn.readable {
            match conn.stream.read(&mut buf) {
                Ok(0) => {
                    self.close(token);
                    return true;
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => conn.readable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.close(token);
                    return true;
                }
            }
        }
        false
    }

    /// Takes every datagram waiting on a relay's local socket.
    pub(super) fn on_relay_ready(&mut self, relay_token: usize) {
        let mut buf = vec![0u8; 65536];
        loop {
            let Some(relay) = self.relays.get_mut(&relay_token) else {
                return;
            };
            let Some((n, source)) = recv_waiting(&relay.socket, &mut buf, "SOCKS5 UDP relay")
            else {
                return;
            };
            if !relay.admit(source) {
                log::debug!("SOCKS5 UDP relay: datagram from {source} (not the client) dropped");
                continue;
            }
            self.relay_to_tunnel(relay_token, &buf[..n]);
        }
    }

    /// Sends one client datagram into the tunnel (after a lookup if its
    /// destination is a name).
    fn relay_to_tunnel(&mut self, relay_token: usize, datagram: &[u8]) {
        let header = match socks5::parse_udp_header(datagram) {
            Ok(header) if header.frag == 0 => header,
            Ok(_) => {
                log::debug!("SOCKS5 UDP relay: fragment dropped");
                return;
            }
            Err(e) => {
                log::debug!("SOCKS5 UDP relay: datagram dropped: {e}");
                return;
            }
        };
        let payload = &datagram[header.payload_offset..];
        let relay = self.relays.get_mut(&relay_token).expect("exists");
        relay.last_used = Instant::now();
        let (name, port) = match header.target {
            Target::Addr(addr) => {
                self.send_from_relay(relay_token, addr, payload);
                return;
            }
            Target::Name(name, port) => match name.parse::<IpAddr>().ok().or(relay.resolved(&name))
            {
                Some(ip) => {
                    self.send_from_relay(relay_token, SocketAddr::new(ip, port), payload);
                    return;
                }
                None => (name, port),
            },
        };
        if relay.waiting() >= MAX_WAITING {
            log::debug!("SOCKS5 UDP relay: too many datagrams wait for names, dropped");
            return;
        }
        if let Some(lookup) = relay.lookups.iter_mut().find(|l| l.name == name) {
            lookup.waiting.push((port, payload.to_vec()));
            return;
        }
        let Some(dns_handle) = self.dns.filter(|_| relay.lookups.len() < MAX_LOOKUPS) else {
            log::debug!("SOCKS5 UDP relay: cannot look up {name} (no DNS, or too many lookups)");
            return;
        };
        match self.start_lookup(dns_handle, &name) {
            Ok(query) => {
                let relay = self.relays.get_mut(&relay_token).expect("exists");
                relay.lookups.push(Lookup {
                    query,
                    name,
                    waiting: vec![(port, payload.to_vec())],
                });
            }
            Err(e) => log::debug!("SOCKS5 UDP relay: cannot look up {name}: {e}"),
        }
    }

    fn send_from_relay(&mut self, relay_token: usize, target: SocketAddr, payload: &[u8]) {
        let family_ok = match target.ip() {
            IpAddr::V4(_) => self.has_v4,
            IpAddr::V6(_) => self.has_v6,
        };
        let Some(relay) = self.relays.get(&relay_token) else {
            return;
        };
        let remote = IpEndpoint::new(IpAddress::from(target.ip()), target.port());
        let socket = self.sockets.get_mut::<udp::Socket>(relay.stack);
        if !family_ok || target.port() == 0 || socket.send_slice(payload, remote).is_err() {
            log::debug!("SOCKS5 UDP relay: datagram to {target} dropped");
        }
    }

    /// Sends the datagrams whose names have resolved (drops those whose
    /// lookup failed).
    pub(super) fn check_relay_lookups(&mut self) {
        let Some(dns_handle) = self.dns else {
            return;
        };
        let mut ready = Vec::new();
        for (&relay_token, relay) in &mut self.relays {
            let dns = self.sockets.get_mut::<dns::Socket>(dns_handle);
            relay.lookups.retain_mut(|lookup| {
                let ip = match dns.get_query_result(lookup.query) {
                    Err(GetQueryResultError::Pending) => return true,
                    Err(GetQueryResultError::Failed) => None,
                    Ok(addresses) => addresses.first().map(|a| IpAddr::from(*a)),
                };
                match ip {
                    Some(ip) => {
                        if relay.names.len() >= MAX_NAMES {
                            relay.names.pop_front();
                        }
                        relay.names.push_back((lookup.name.clone(), ip));
                        for (port, payload) in lookup.waiting.drain(..) {
                            ready.push((relay_token, SocketAddr::new(ip, port), payload));
                        }
                    }
                    None => log::debug!("SOCKS5 UDP relay: {} did not resolve", lookup.name),
                }
                false
            });
        }
        for (relay_token, target, payload) in ready {
            self.send_from_relay(relay_token, target, &payload);
        }
    }

    /// Hands what the tunnel sent to each relay's client, with its header.
    pub(super) fn relay_socks_udp_from_tunnel(&mut self) {
        if self.relays.is_empty() {
            return;
        }
        let mut buf = self.datagram_buf();
        for relay in self.relays.values_mut() {
            let socket = self.sockets.get_mut::<udp::Socket>(relay.stack);
            while let Ok((n, meta)) = socket.recv_slice(&mut buf) {
                let Some(client) = relay.client else {
                    continue; // nobody to hand it to yet
                };
                relay.last_used = Instant::now();
                let source = SocketAddr::new(meta.endpoint.addr.into(), meta.endpoint.port);
                let datagram = socks5::encode_udp_datagram(source, &buf[..n]);
                if let Err(e) = relay.socket.send_to(&datagram, client) {
                    log::debug!("SOCKS5 UDP relay to {client}: {e}");
                }
            }
        }
        self.datagram = buf;
    }

    /// Closes the control connection of every relay idle for `idle`.
    pub(super) fn expire_relays(&mut self, now: Instant, idle: Duration) {
        let expired: Vec<usize> = self
            .relays
            .values()
            .filter(|r| now.duration_since(r.last_used) >= idle)
            .map(|r| r.control)
            .collect();
        for control in expired {
            log::debug!("connection {control}: SOCKS5 UDP association idle, closed");
            self.close(control);
        }
    }
}
