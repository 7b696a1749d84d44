//! The stack thread: one event loop over the packet pipe, the local
//! listeners, the local connections and the stack's own deadline.
//!
//! A local connection ([`Conn`]) pairs a local TCP stream with a TCP socket
//! of the stack. It starts half-open (a proxy handshake, a name lookup, the
//! tunnel or local connection being made) and then copies bytes both ways
//! directly between the kernel socket and the stack's buffers, which are
//! the connection's only buffers. mio's readiness is edge-triggered, so each
//! side's "readable"/"writable" flag is kept until an operation answers
//! `WouldBlock`.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr};
use std::time::{Duration, Instant};

use ferroguard_proto::crypto::ct_eq;
use mio::net::{TcpListener, TcpStream, UdpSocket};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use smoltcp::iface::{Interface, SocketHandle, SocketSet};
use smoltcp::socket::dns::{self, GetQueryResultError, QueryHandle};
use smoltcp::socket::{tcp, udp};
use smoltcp::time::Instant as SmolInstant;
use smoltcp::wire::{DnsQueryType, IpAddress, IpEndpoint, IpListenEndpoint};

use self::in_flight::InFlight;
use super::config::{Limits, Protocol, ProxyConfig, Reverse, RootlessConfig};
use super::http_connect;
use super::socks5::{self, Parse, Reply, Target};
use super::stack::PacketPipe;

mod in_flight;
mod reverse_udp;
mod socks_udp;
use reverse_udp::ReverseUdp;
use socks_udp::SocksRelay;

const PIPE: Token = Token(0);
/// Tokens of listeners and UDP forward sockets: `LISTENER_BASE + index`.
const LISTENER_BASE: usize = 1;
/// Tokens of local connections start here and are never reused.
const CONN_BASE: usize = 1 << 20;
/// Bytes a client may send before its proxy request is complete.
const MAX_HANDSHAKE_BYTES: usize = http_connect::MAX_HEAD_LEN;
/// How often deadlines (handshakes, UDP lifetimes) are checked when idle.
const HOUSEKEEPING: Duration = Duration::from_millis(250);
/// Listening sockets kept ready per reverse forward: SYNs beyond those in
/// flight at once are refused (RST) by the stack.
const REVERSE_BACKLOG: usize = 8;
/// A closed connection's stack socket is given this long to finish its
/// FIN exchange before it is aborted.
const LINGER: Duration = Duration::from_secs(10);
/// Buffers of one UDP association: payload bytes and datagrams per direction.
const UDP_BUFFER: usize = 64 * 1024;
const UDP_SLOTS: usize = 64;
/// The largest UDP payload.
const MAX_DATAGRAM: usize = 65536;
/// Name lookups in flight at once.
const DNS_SLOTS: usize = 32;

/// What a local listener does with its connections.
enum ListenerKind {
    /// Connects each to a fixed address inside the tunnel.
    Forward(SocketAddr),
    /// SOCKS5.
    Socks5(Option<(String, zeroize::Zeroizing<String>)>),
    /// HTTP CONNECT.
    Http(Option<(String, zeroize::Zeroizing<String>)>),
}

struct Listener {
    socket: TcpListener,
    kind: ListenerKind,
}

/// A local UDP port forwarded to one address inside the tunnel; each client
/// address is an association with a stack socket of its own.
struct UdpForward {
    socket: UdpSocket,
    target: SocketAddr,
    associations: HashMap<SocketAddr, Association>,
}

struct Association {
    handle: SocketHandle,
    last_used: Instant,
}

struct ReverseForward {
    spec: Reverse,
    listening: Vec<SocketHandle>,
}

/// Which handshake a half-open connection is in, and what it answers.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Proxy {
    Plain,
    Socks5,
    /// HTTP CONNECT.
    Http,
    /// A plain HTTP request (absolute URI) passed on to its server.
    HttpForward,
}

enum Phase {
    SocksGreeting,
    SocksAuth,
    SocksRequest,
    HttpHead,
    Resolving {
        query: QueryHandle,
        port: u16,
    },
    TunnelConnecting,
    LocalConnecting,
    Open,
    /// Writing a last answer to the client, then closing.
    Closing,
    /// The control connection of a SOCKS5 UDP ASSOCIATE: the relay (keyed
    /// by its socket's token) lives as long as this connection.
    UdpControl {
        relay: usize,
    },
}

struct Conn {
    stream: TcpStream,
    tcp: Option<SocketHandle>,
    proxy: Proxy,
    phase: Phase,
    readable: bool,
    writable: bool,
    /// Client bytes read during the handshake, not yet used.
    inbound: Vec<u8>,
    /// Bytes for the client ahead of the tunnel's (proxy answers).
    outbound: Vec<u8>,
    local_eof: bool,
    local_shut: bool,
    /// Whether this connection holds a buffer reservation itself; once it
    /// has a stack socket, the socket holds it (and gives it back when it
    /// is removed, after lingering).
    reserved: bool,
    /// While half-open: when to give up.
    deadline: Option<Instant>,
    /// How much of the stack socket's send buffer may be filled.
    in_flight: InFlight,
}

impl Conn {
    fn is_half_open(&self) -> bool {
        !matches!(
            self.phase,
            Phase::Open | Phase::Closing | Phase::UdpControl { .. }
        )
    }
}

/// The send buffer of a connection's stack socket (`SendBuffer`, see
/// [`Limits::send_buffer`] for why it is apart).
fn send_buffer(limits: &Limits) -> usize {
    limits.send_buffer
}

/// Accounting of the connection buffers (both directions of every open or
/// lingering stack socket, and of the reverse listeners).
struct Budget {
    per_connection: usize,
    total: usize,
    reserved: usize,
}

impl Budget {
    fn try_reserve(&mut self) -> bool {
        if self.reserved + self.per_connection > self.total {
            return false;
        }
        self.reserved += self.per_connection;
        true
    }

    fn release(&mut self) {
        self.reserved = self.reserved.saturating_sub(self.per_connection);
    }
}

/// Why a new connection was turned away (logged, and counted in tests).
#[derive(Debug, Clone, Copy)]
enum Refusal {
    Connections,
    HalfOpen,
    Buffers,
}

/// The stack, its sockets and everything local they are tied to.
pub(crate) struct Driver {
    poll: Poll,
    iface: Interface,
    sockets: SocketSet<'static>,
    pipe: PacketPipe,
    listeners: Vec<Listener>,
    udp_forwards: Vec<UdpForward>,
    reverse: Vec<ReverseForward>,
    conns: HashMap<usize, Conn>,
    /// SOCKS5 UDP relays, by the token of their local UDP socket.
    relays: HashMap<usize, SocksRelay>,
    reverse_udp: Vec<ReverseUdp>,
    /// The local sockets of UDP reverse associations: token to the
    /// forward's index and the tunnel endpoint.
    reverse_udp_tokens: HashMap<usize, (usize, IpEndpoint)>,
    /// A buffer for one datagram, kept (zeroing 64 KiB per round of the
    /// event loop showed in profiles); see [`Driver::datagram_buf`].
    datagram: Vec<u8>,
    /// Stack sockets of closed connections, finishing their close.
    lingering: Vec<(SocketHandle, Instant)>,
    dns: Option<SocketHandle>,
    limits: Limits,
    budget: Budget,
    has_v4: bool,
    has_v6: bool,
    next_token: usize,
    next_port: u16,
    start: Instant,
}

impl Driver {
    /// Binds every listener of `config` (an address in use fails the start
    /// with a message) around the interface `iface`.
    pub(crate) fn new(
        config: &RootlessConfig,
        pipe: PacketPipe,
        iface: Interface,
    ) -> Result<Driver, String> {
        let poll = Poll::new().map_err(|e| format!("epoll: {e}"))?;
        let limits = config.limits.clone();
        let mut driver = Driver {
            poll,
            iface,
            sockets: SocketSet::new(Vec::new()),
            pipe,
            listeners: Vec::new(),
            udp_forwards: Vec::new(),
            reverse: Vec::new(),
            conns: HashMap::new(),
            relays: HashMap::new(),
            reverse_udp: Vec::new(),
            reverse_udp_tokens: HashMap::new(),
            datagram: Vec::new(),
            lingering: Vec::new(),
            dns: None,
            budget: Budget {
                per_connection: limits.connection_buffer + send_buffer(&limits),
                total: limits.total_buffers,
                reserved: 0,
            },
            limits,
            has_v4: config.addresses.iter().any(|(a, _)| a.is_ipv4()),
            has_v6: config.addresses.iter().any(|(a, _)| a.is_ipv6()),
            next_token: CONN_BASE,
            next_port: 49152,
            start: Instant::now(),
        };
        let fd = std::os::fd::AsRawFd::as_raw_fd(driver.pipe.socket());
        driver
            .poll
            .registry()
            .register(&mut SourceFd(&fd), PIPE, Interest::READABLE)
            .map_err(|e| format!("epoll: {e}"))?;
        driver.bind_listeners(config)?;
        if !config.dns.is_empty() {
            let servers: Vec<IpAddress> =
                config.dns.iter().map(|ip| IpAddress::from(*ip)).collect();
            let socket =
                dns::Socket::new(&servers, (0..DNS_SLOTS).map(|_| None).collect::<Vec<_>>());
            driver.dns = Some(driver.sockets.add(socket));
        }
        for spec in &config.reverse {
            driver.reverse.push(ReverseForward {
                spec: spec.clone(),
                listening: Vec::new(),
            });
        }
        driver.refill_reverse_listeners();
        driver.bind_reverse_udp(&config.reverse_udp)?;
        Ok(driver)
    }

    fn bind_listeners(&mut self, config: &RootlessConfig) -> Result<(), String> {
        let mut tcp_kinds = Vec::new();
        for forward in &config.forwards {
            match forward.protocol {
                Protocol::Tcp => {
                    tcp_kinds.push((forward.listen, ListenerKind::Forward(forward.target)))
                }
                Protocol::Udp => {
                    let socket = UdpSocket::bind(forward.listen)
                        .map_err(|e| format!("cannot listen on UDP {}: {e}", forward.listen))?;
                    self.udp_forwards.push(UdpForward {
                        socket,
                        target: forward.target,
                        associations: HashMap::new(),
                    });
                }
            }
        }
        let credentials = |p: &ProxyConfig| p.credentials.clone();
        if let Some(p) = &config.socks5 {
            tcp_kinds.push((p.listen, ListenerKind::Socks5(credentials(p))));
        }
        if let Some(p) = &config.http_proxy {
            tcp_kinds.push((p.listen, ListenerKind::Http(credentials(p))));
        }
        for (addr, kind) in tcp_kinds {
            let mut socket =
                TcpListener::bind(addr).map_err(|e| format!("cannot listen on TCP {addr}: {e}"))?;
            let token = Token(LISTENER_BASE + self.listeners.len());
            self.poll
                .registry()
                .register(&mut socket, token, Interest::READABLE)
                .map_err(|e| format!("epoll: {e}"))?;
            log::info!("listening on {addr} ({})", kind.describe());
            self.listeners.push(Listener { socket, kind });
        }
        for (i, forward) in self.udp_forwards.iter_mut().enumerate() {
            let token = Token(LISTENER_BASE + self.listeners.len() + i);
            self.poll
                .registry()
                .register(&mut forward.socket, token, Interest::READABLE)
                .map_err(|e| format!("epoll: {e}"))?;
            log::info!(
                "forwarding UDP {} to {}",
                forward
                    .socket
                    .local_addr()
                    .map_or("?".into(), |a| a.to_string()),
                forward.target
            );
        }
        Ok(())
    }

    fn now(&self) -> SmolInstant {
        SmolInstant::from_micros(self.start.elapsed().as_micros() as i64)
    }

    /// Runs until the runtime's end of the pipe is gone.
    pub(crate) fn run(&mut self) -> io::Error {
        let mut events = Events::with_capacity(1024);
        let mut busy = true;
        loop {
            let timeout = if busy || self.pipe.more_to_read {
                Some(Duration::ZERO)
            } else {
                let now = self.now();
                let stack = self
                    .iface
                    .poll_delay(now, &self.sockets)
                    .map(|d| Duration::from_micros(d.total_micros()));
                Some(stack.map_or(HOUSEKEEPING, |d| d.min(HOUSEKEEPING)))
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    return e;
                }
            }
            let mut pipe_ready = self.pipe.more_to_read;
            for event in events.iter() {
                match event.token() {
                    PIPE => pipe_ready = true,
                    Token(t) if t >= CONN_BASE => {
                        if let Some(conn) = self.conns.get_mut(&t) {
                            conn.readable |= event.is_readable() || event.is_read_closed();
                            conn.writable |= event.is_writable() || event.is_write_closed();
                        } else if self.relays.contains_key(&t) {
                            self.on_relay_ready(t);
                        } else {
                            self.on_reverse_udp_ready(t);
                        }
                    }
                    Token(t) => self.on_listener_ready(t - LISTENER_BASE),
                }
            }
            if pipe_ready {
                if let Err(e) = self.pipe.read_waiting() {
                    return e;
                }
            }
            busy = self.step();
        }
    }

    /// One round: packets into the stack, every connection serviced, what
    /// that produced sent. True if anything moved (go round again at once).
    fn step(&mut self) -> bool {
        let mut moved = self.poll_stack();
        self.accept_reverse();
        let tokens: Vec<usize> = self.conns.keys().copied().collect();
        for token in tokens {
            moved |= self.service(token);
        }
        self.relay_udp_from_tunnel();
        self.check_relay_lookups();
        self.relay_socks_udp_from_tunnel();
        self.relay_reverse_udp_from_tunnel();
        self.expire();
        moved |= self.poll_stack();
        moved
    }

    /// Lets the stack take the received packets and send what it has to,
    /// and hands what it sent to the runtime. True if a socket's state may
    /// have changed.
    fn poll_stack(&mut self) -> bool {
        let now = self.now();
        let changed = self.iface.poll(now, &mut self.pipe, &mut self.sockets)
            == smoltcp::iface::PollResult::SocketStateChanged;
        self.pipe.send_queued();
        changed
    }

    // ----- admission -----------------------------------------------------

    fn half_open_count(&self) -> usize {
        self.conns.values().filter(|c| c.is_half_open()).count()
    }

    /// Whether one more connection fits; reserves its buffers if so.
    fn admit(&mut self) -> Result<(), Refusal> {
        if self.conns.len() >= self.limits.max_connections {
            return Err(Refusal::Connections);
        }
        if self.half_open_count() >= self.limits.max_half_open {
            return Err(Refusal::HalfOpen);
        }
        if !self.budget.try_reserve() {
            return Err(Refusal::Buffers);
        }
        Ok(())
    }

    fn on_listener_ready(&mut self, index: usize) {
        if index >= self.listeners.len() {
            self.on_udp_ready(index - self.listeners.len());
            return;
        }
        loop {
            let (mut stream, peer) = match self.listeners[index].socket.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    log::warn!("accept failed: {e}");
                    return;
                }
            };
            if let Err(refusal) = self.admit() {
                log::warn!(
                    "refusing a connection from {peer}: {}",
                    refusal.describe(&self.limits)
                );
                if matches!(self.listeners[index].kind, ListenerKind::Http(_)) {
                    let _ = stream.write(http_connect::UNAVAILABLE);
                }
                continue; // dropping the stream closes it
            }
            let _ = stream.set_nodelay(true);
            let (proxy, phase) = match &self.listeners[index].kind {
                ListenerKind::Forward(_) => (Proxy::Plain, Phase::TunnelConnecting),
                ListenerKind::Socks5(_) => (Proxy::Socks5, Phase::SocksGreeting),
                ListenerKind::Http(_) => (Proxy::Http, Phase::HttpHead),
            };
            let token = self.insert_conn(stream, proxy, phase);
            if let ListenerKind::Forward(target) = self.listeners[index].kind {
                self.connect_tunnel(token, target);
            }
        }
    }

    fn insert_conn(&mut self, mut stream: TcpStream, proxy: Proxy, phase: Phase) -> usize {
        let token = self.next_token;
        self.next_token += 1;
        let registered = self.poll.registry().register(
            &mut stream,
            Token(token),
            Interest::READABLE | Interest::WRITABLE,
        );
        if let Err(e) = registered {
            log::warn!("epoll: {e}");
        }
        self.conns.insert(
            token,
            Conn {
                stream,
                tcp: None,
                proxy,
                phase,
                readable: true,
                writable: true,
                inbound: Vec::new(),
                outbound: Vec::new(),
                local_eof: false,
                local_shut: false,
                reserved: true,
                deadline: Some(Instant::now() + self.limits.handshake_timeout),
                in_flight: InFlight::new(send_buffer(&self.limits), Instant::now()),
            },
        );
        token
    }

    fn new_tcp_socket(&self) -> tcp::Socket<'static> {
        let size = self.limits.connection_buffer;
        let send_size = send_buffer(&self.limits);
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0u8; size]),
            tcp::SocketBuffer::new(vec![0u8; send_size]),
        );
        socket.set_nagle_enabled(false);
        // Without congestion control smoltcp sends a whole window at once; a
        // peer or path that drops part of it (wireguard-go under load does)
        // then collapses the connection to retransmission timeouts.
        socket.set_congestion_control(tcp::CongestionControl::Cubic);
        socket
    }

    fn ephemeral_port(&mut self) -> u16 {
        let port = self.next_port;
        self.next_port = if port == u16::MAX { 49152 } else { port + 1 };
        port
    }

    /// Starts the tunnel connection of `token` to `target`.
    fn connect_tunnel(&mut self, token: usize, target: SocketAddr) {
        let family_ok = match target.ip() {
            IpAddr::V4(_) => self.has_v4,
            IpAddr::V6(_) => self.has_v6,
        };
        if !family_ok {
            self.fail(token, Reply::NetworkUnreachable);
            return;
        }
        let mut socket = self.new_tcp_socket();
        let port = self.ephemeral_port();
        let remote = IpEndpoint::new(IpAddress::from(target.ip()), target.port());
        if socket.connect(self.iface.context(), remote, port).is_err() {
            self.fail(token, Reply::NetworkUnreachable);
            return;
        }
        let handle = self.sockets.add(socket);
        if let Some(conn) = self.conns.get_mut(&token) {
            conn.tcp = Some(handle);
            conn.reserved = false;
            conn.phase = Phase::TunnelConnecting;
        }
    }

    // ----- servicing connections ------------------------------------------

    /// Advances one connection; true if anything moved.
    fn service(&mut self, token: usize) -> bool {
        let Some(phase) = self.conns.get(&token).map(|c| phase_kind(&c.phase)) else {
            return false;
        };
        // Proxy answers go out whatever the phase (the SOCKS5 method choice
        // must reach the client before it sends its request).
        let conn = self
            .conns
            .get_mut(&token)
            .expect("serviced connection exists");
        if !Self::flush_outbound(conn) {
            self.close(token);
            return true;
        }
        if let Some(deadline) = self.conns[&token].deadline {
            if Instant::now() >= deadline {
                log::debug!("connection {token}: handshake timed out");
                self.fail(token, Reply::TtlExpired);
                return true;
            }
        }
        match phase {
            PhaseKind::Handshake => self.read_handshake(token),
            PhaseKind::Resolving => self.check_resolution(token),
            PhaseKind::TunnelConnecting => self.check_tunnel_connect(token),
            PhaseKind::LocalConnecting => self.check_local_connect(token),
            PhaseKind::Open => self.pump(token),
            PhaseKind::Closing => self.flush_then_close(token),
            PhaseKind::UdpControl => self.watch_udp_control(token),
        }
    }

    fn read_handshake(&mut self, token: usize) -> bool {
        let conn = self
            .conns
            .get_mut(&token)
            .expect("serviced connection exists");
        let mut moved = false;
        let mut buf = [0u8; 2048];
        while conn.readable && conn.inbound.len() < MAX_HANDSHAKE_BYTES {
            match conn.stream.read(&mut buf) {
                Ok(0) => {
                    self.close(token);
                    return true;
                }
                Ok(n) => {
                    conn.inbound.extend_from_slice(&buf[..n]);
                    moved = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => conn.readable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.close(token);
                    return true;
                }
            }
        }
        if moved {
            self.advance_handshake(token);
        }
        moved
    }

    fn credentials_of(&self, proxy: Proxy) -> Option<(String, zeroize::Zeroizing<String>)> {
        self.listeners.iter().find_map(|l| match (&l.kind, proxy) {
            (ListenerKind::Socks5(c), Proxy::Socks5) | (ListenerKind::Http(c), Proxy::Http) => {
                Some(c.clone())
            }
            _ => None,
        })?
    }

    /// Acts on the handshake bytes received so far.
    fn advance_handshake(&mut self, token: usize) {
        loop {
            let Some(conn) = self.conns.get_mut(&token) else {
                return;
            };
            let before = phase_name(&conn.phase);
            match conn.phase {
                Phase::SocksGreeting => self.socks_greeting(token),
                Phase::SocksAuth => self.socks_auth(token),
                Phase::SocksRequest => self.socks_request(token),
                Phase::HttpHead => self.http_head(token),
                _ => return,
            }
            let Some(conn) = self.conns.get(&token) else {
                return;
            };
            if phase_name(&conn.phase) == before {
                return; // waiting for more bytes
            }
        }
    }

    fn socks_greeting(&mut self, token: usize) {
        let needs_auth = self.credentials_of(Proxy::Socks5).is_some();
        let wanted = if needs_auth {
            socks5::METHOD_PASSWORD
        } else {
            socks5::METHOD_NONE
        };
        let conn = self.conns.get_mut(&token).expect("exists");
        match socks5::parse_greeting(&conn.inbound, wanted) {
            Ok(Parse::Incomplete) => {}
            Ok(Parse::Done(true, used)) => {
                conn.inbound.drain(..used);
                conn.outbound.extend_from_slice(&[5, wanted]);
                conn.phase = if needs_auth {
                    Phase::SocksAuth
                } else {
                    Phase::SocksRequest
                };
            }
            Ok(Parse::Done(false, _)) => {
                conn.outbound
                    .extend_from_slice(&[5, socks5::METHOD_UNACCEPTABLE]);
                conn.phase = Phase::Closing;
            }
            Err(e) => {
                log::debug!("connection {token}: SOCKS5 greeting refused: {e}");
                conn.phase = Phase::Closing;
            }
        }
    }

    fn socks_auth(&mut self, token: usize) {
        let expected = self.credentials_of(Proxy::Socks5);
        let conn = self.conns.get_mut(&token).expect("exists");
        match socks5::parse_credentials(&conn.inbound) {
            Ok(Parse::Incomplete) => {}
            Ok(Parse::Done(given, used)) => {
                let accepted = expected.is_some_and(|(user, password)| {
                    credentials_match(&user, &password, given.username, given.password)
                });
                conn.inbound.drain(..used);
                conn.outbound
                    .extend_from_slice(&socks5::credentials_reply(accepted));
                conn.phase = if accepted {
                    Phase::SocksRequest
                } else {
                    log::info!("connection {token}: SOCKS5 credentials refused");
                    Phase::Closing
                };
            }
            Err(e) => {
                log::debug!("connection {token}: SOCKS5 authentication refused: {e}");
                conn.phase = Phase::Closing;
            }
        }
    }

    fn socks_request(&mut self, token: usize) {
        let conn = self.conns.get_mut(&token).expect("exists");
        match socks5::parse_request(&conn.inbound) {
            Ok(Parse::Incomplete) => {}
            Ok(Parse::Done(request, used)) => {
                conn.inbound.drain(..used);
                match request.command {
                    socks5::Command::Connect => self.open_target(token, request.target),
                    socks5::Command::UdpAssociate => self.start_udp_relay(token, &request.target),
                    _ => self.fail(token, Reply::CommandNotSupported),
                }
            }
            Err(e) => {
                log::debug!("connection {token}: SOCKS5 request refused: {e}");
                let reply = match e {
                    socks5::Socks5Error::AddressType(_) => Reply::AddressTypeNotSupported,
                    _ => Reply::GeneralFailure,
                };
                self.fail(token, reply);
            }
        }
    }

    fn http_head(&mut self, token: usize) {
        let expected = self.credentials_of(Proxy::Http);
        let conn = self.conns.get_mut(&token).expect("exists");
        match http_connect::parse(&conn.inbound) {
            Ok(None) => {}
            Ok(Some(request)) => {
                conn.inbound.drain(..request.head_len);
                if let Some((user, password)) = expected {
                    let accepted = request.credentials.as_ref().is_some_and(|(u, p)| {
                        credentials_match(&user, &password, u.as_bytes(), p.as_bytes())
                    });
                    if !accepted {
                        conn.outbound.extend_from_slice(http_connect::AUTH_REQUIRED);
                        conn.phase = Phase::Closing;
                        return;
                    }
                }
                if let Some(head) = request.forward {
                    // A plain request: the rewritten head goes to the server
                    // ahead of any body bytes already received, and no
                    // "established" answer.
                    conn.inbound.splice(0..0, head);
                    conn.proxy = Proxy::HttpForward;
                }
                self.open_target(token, request.target);
            }
            Err(e) => {
                log::debug!("connection {token}: HTTP request refused: {e:?}");
                conn.outbound.extend_from_slice(e.response());
                conn.phase = Phase::Closing;
            }
        }
    }

    /// Connects to a numeric target, or looks a name up through the
    /// tunnel's DNS server first (socks5h semantics).
    fn open_target(&mut self, token: usize, target: Target) {
        match target {
            Target::Addr(addr) => self.connect_tunnel(token, addr),
            Target::Name(name, port) => {
                if let Ok(ip) = name.parse::<IpAddr>() {
                    self.connect_tunnel(token, SocketAddr::new(ip, port));
                    return;
                }
                let Some(dns_handle) = self.dns else {
                    log::info!("connection {token}: no DNS server configured to resolve {name}");
                    self.fail(token, Reply::HostUnreachable);
                    return;
                };
                match self.start_lookup(dns_handle, &name) {
                    Ok(query) => {
                        if let Some(conn) = self.conns.get_mut(&token) {
                            conn.phase = Phase::Resolving { query, port };
                        }
                    }
                    Err(e) => {
                        log::info!("connection {token}: cannot look up {name}: {e}");
                        self.fail(token, Reply::GeneralFailure);
                    }
                }
            }
        }
    }

    /// Starts a lookup of `name` through the tunnel's DNS server: A if the
    /// interface has an IPv4 address, else AAAA.
    fn start_lookup(
        &mut self,
        dns_handle: SocketHandle,
        name: &str,
    ) -> Result<QueryHandle, dns::StartQueryError> {
        let query_type = if self.has_v4 {
            DnsQueryType::A
        } else {
            DnsQueryType::Aaaa
        };
        let socket = self.sockets.get_mut::<dns::Socket>(dns_handle);
        socket.start_query(self.iface.context(), name, query_type)
    }

    fn check_resolution(&mut self, token: usize) -> bool {
        let (query, port) = match self.conns.get(&token).map(|c| &c.phase) {
            Some(Phase::Resolving { query, port }) => (*query, *port),
            _ => return false,
        };
        let Some(dns_handle) = self.dns else {
            return false;
        };
        let socket = self.sockets.get_mut::<dns::Socket>(dns_handle);
        match socket.get_query_result(query) {
            Err(GetQueryResultError::Pending) => false,
            Err(GetQueryResultError::Failed) => {
                self.conn_phase(token, Phase::TunnelConnecting);
                self.fail(token, Reply::HostUnreachable);
                true
            }
            Ok(addresses) => {
                self.conn_phase(token, Phase::TunnelConnecting);
                match addresses.first() {
                    Some(ip) => {
                        self.connect_tunnel(token, SocketAddr::new(IpAddr::from(*ip), port))
                    }
                    None => self.fail(token, Reply::HostUnreachable),
                }
                true
            }
        }
    }

    fn conn_phase(&mut self, token: usize, phase: Phase) {
        if let Some(conn) = self.conns.get_mut(&token) {
            conn.phase = phase;
        }
    }

    fn check_tunnel_connect(&mut self, token: usize) -> bool {
        let Some(handle) = self.conns.get(&token).and_then(|c| c.tcp) else {
            return false;
        };
        let socket = self.sockets.get::<tcp::Socket>(handle);
        match socket.state() {
            tcp::State::SynSent | tcp::State::SynReceived => false,
            tcp::State::Established | tcp::State::CloseWait => {
                let bound = socket
                    .local_endpoint()
                    .map(|e| SocketAddr::new(e.addr.into(), e.port));
                let conn = self.conns.get_mut(&token).expect("exists");
                match conn.proxy {
                    Proxy::Plain => {}
                    Proxy::Socks5 => conn.outbound.extend_from_slice(&socks5::reply(
                        Reply::Succeeded,
                        bound.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
                    )),
                    Proxy::Http => conn.outbound.extend_from_slice(http_connect::ESTABLISHED),
                    Proxy::HttpForward => {}
                }
                conn.phase = Phase::Open;
                conn.deadline = None;
                true
            }
            _ => {
                self.fail(token, Reply::ConnectionRefused);
                true
            }
        }
    }

    fn check_local_connect(&mut self, token: usize) -> bool {
        let conn = self.conns.get_mut(&token).expect("exists");
        if !conn.writable {
            return false;
        }
        match conn.stream.take_error() {
            Ok(None) => {}
            Ok(Some(e)) | Err(e) => {
                log::info!("reverse connection {token}: local service: {e}");
                self.close(token);
                return true;
            }
        }
        match conn.stream.peer_addr() {
            Ok(_) => {
                conn.phase = Phase::Open;
                conn.deadline = None;
                true
            }
            Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                conn.writable = false;
                false
            }
            Err(e) => {
                log::info!("reverse connection {token}: local service: {e}");
                self.close(token);
                true
            }
        }
    }

    /// Answers a half-open connection's client with `reply` (in its
    /// protocol) and closes it.
    fn fail(&mut self, token: usize, reply: Reply) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        if let (Phase::Resolving { query, .. }, Some(dns_handle)) = (&conn.phase, self.dns) {
            // A lookup that timed out frees its slot (32 in all).
            self.sockets
                .get_mut::<dns::Socket>(dns_handle)
                .cancel_query(*query);
        }
        match conn.proxy {
            Proxy::Plain => {}
            Proxy::Socks5 => conn
                .outbound
                .extend_from_slice(&socks5::reply(reply, SocketAddr::from(([0, 0, 0, 0], 0)))),
            Proxy::Http | Proxy::HttpForward => conn.outbound.extend_from_slice(match reply {
                Reply::TtlExpired => http_connect::GATEWAY_TIMEOUT,
                Reply::GeneralFailure => http_connect::UNAVAILABLE,
                _ => http_connect::BAD_GATEWAY,
            }),
        }
        conn.phase = Phase::Closing;
        conn.deadline = Some(Instant::now() + Duration::from_secs(2));
        if let Some(handle) = conn.tcp.take() {
            self.sockets.get_mut::<tcp::Socket>(handle).abort();
            self.lingering.push((handle, Instant::now()));
        }
    }

    /// Writes pending answers; false on a write error (close).
    fn flush_outbound(conn: &mut Conn) -> bool {
        while conn.writable && !conn.outbound.is_empty() {
            match conn.stream.write(&conn.outbound) {
                Ok(n) => {
                    conn.outbound.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => conn.writable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        true
    }

    fn flush_then_close(&mut self, token: usize) -> bool {
        let conn = self.conns.get_mut(&token).expect("exists");
        if !Self::flush_outbound(conn) || conn.outbound.is_empty() {
            self.close(token);
            return true;
        }
        false
    }

    /// Copies bytes both ways between the local stream and the stack.
    fn pump(&mut self, token: usize) -> bool {
        let conn = self.conns.get_mut(&token).expect("exists");
        let Some(handle) = conn.tcp else {
            self.close(token);
            return true;
        };
        if !Self::flush_outbound(conn) {
            self.close(token);
            return true;
        }
        let socket = self.sockets.get_mut::<tcp::Socket>(handle);
        let mut moved = false;
        // Tunnel to local.
        while conn.writable && conn.outbound.is_empty() && socket.can_recv() {
            let stream = &mut conn.stream;
            match socket.recv(|buf| match stream.write(buf) {
                Ok(n) => (n, Ok(n)),
                Err(e) => (0, Err(e)),
            }) {
                Ok(Ok(n)) => moved |= n > 0,
                Ok(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => conn.writable = false,
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(_)) | Err(_) => {
                    socket.abort();
                    self.close(token);
                    return true;
                }
            }
        }
        if !socket.may_recv() && socket.recv_queue() == 0 && !conn.local_shut {
            let _ = conn.stream.shutdown(Shutdown::Write);
            conn.local_shut = true;
            moved = true;
        }
        // Local to tunnel, as far as the in-flight limit lets: handshake
        // leftovers first.
        conn.in_flight.observe(socket.send_queue(), Instant::now());
        let room = conn.in_flight.room(socket.send_queue());
        if !conn.inbound.is_empty() && socket.can_send() && room > 0 {
            let take = conn.inbound.len().min(room);
            if let Ok(n) = socket.send_slice(&conn.inbound[..take]) {
                conn.inbound.drain(..n);
                conn.in_flight.queued(n);
                moved |= n > 0;
            }
        }
        while conn.readable && !conn.local_eof && conn.inbound.is_empty() && socket.can_send() {
            let room = conn.in_flight.room(socket.send_queue());
            if room == 0 {
                break;
            }
            let stream = &mut conn.stream;
            match socket.send(|buf| {
                let len = buf.len().min(room);
                match stream.read(&mut buf[..len]) {
                    Ok(0) => (0, Ok(0)),
                    Ok(n) => (n, Ok(n)),
                    Err(e) => (0, Err(e)),
                }
            }) {
                Ok(Ok(0)) => {
                    conn.local_eof = true;
                    socket.close();
                    moved = true;
                }
                Ok(Ok(n)) => {
                    conn.in_flight.queued(n);
                    moved = true;
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => conn.readable = false,
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(_)) | Err(_) => {
                    socket.abort();
                    self.close(token);
                    return true;
                }
            }
        }
        if conn.readable && !conn.local_eof && !socket.may_send() {
            // The tunnel side can take no more (reset or closed): stop.
            conn.local_eof = true;
        }
        let finished = conn.local_eof && conn.local_shut && conn.inbound.is_empty();
        let reset = matches!(socket.state(), tcp::State::Closed | tcp::State::TimeWait)
            && socket.recv_queue() == 0;
        if finished || reset {
            self.close(token);
            return true;
        }
        moved
    }

    /// Drops a connection; its stack socket lingers until its close is done.
    fn close(&mut self, token: usize) {
        let Some(mut conn) = self.conns.remove(&token) else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut conn.stream);
        if let Phase::UdpControl { relay } = conn.phase {
            self.remove_relay(relay);
        }
        if let (Phase::Resolving { query, .. }, Some(dns_handle)) = (&conn.phase, self.dns) {
            self.sockets
                .get_mut::<dns::Socket>(dns_handle)
                .cancel_query(*query);
        }
        if let Some(handle) = conn.tcp {
            let socket = self.sockets.get_mut::<tcp::Socket>(handle);
            if !conn.local_eof {
                socket.close();
            }
            self.lingering.push((handle, Instant::now()));
        } else if conn.reserved {
            self.budget.release();
        }
    }

    // ----- reverse forwards -----------------------------------------------

    /// Keeps [`REVERSE_BACKLOG`] listening sockets per reverse forward, as
    /// far as the buffer budget allows.
    fn refill_reverse_listeners(&mut self) {
        for index in 0..self.reverse.len() {
            while self.reverse[index].listening.len() < REVERSE_BACKLOG {
                if !self.budget.try_reserve() {
                    break;
                }
                let spec = &self.reverse[index].spec;
                let endpoint = IpListenEndpoint {
                    addr: spec.address.map(IpAddress::from),
                    port: spec.port,
                };
                let mut socket = self.new_tcp_socket();
                if socket.listen(endpoint).is_err() {
                    self.budget.release();
                    break;
                }
                let handle = self.sockets.add(socket);
                self.reverse[index].listening.push(handle);
            }
        }
    }

    /// Turns every reverse listener that completed a handshake into a
    /// connection to its local service.
    fn accept_reverse(&mut self) {
        for index in 0..self.reverse.len() {
            let mut i = 0;
            while i < self.reverse[index].listening.len() {
                let handle = self.reverse[index].listening[i];
                let state = self.sockets.get::<tcp::Socket>(handle).state();
                if matches!(state, tcp::State::Listen | tcp::State::SynReceived) {
                    i += 1;
                    continue;
                }
                self.reverse[index].listening.swap_remove(i);
                let target = self.reverse[index].spec.target;
                self.accept_one_reverse(handle, target);
            }
        }
        self.refill_reverse_listeners();
    }

    fn accept_one_reverse(&mut self, handle: SocketHandle, target: SocketAddr) {
        let over = if self.conns.len() >= self.limits.max_connections {
            Some(Refusal::Connections)
        } else if self.half_open_count() >= self.limits.max_half_open {
            Some(Refusal::HalfOpen)
        } else {
            None
        };
        if let Some(refusal) = over {
            log::warn!(
                "refusing a reverse connection: {}",
                refusal.describe(&self.limits)
            );
            self.sockets.get_mut::<tcp::Socket>(handle).abort();
            self.lingering.push((handle, Instant::now()));
            return;
        }
        match TcpStream::connect(target) {
            Ok(stream) => {
                let token = self.insert_conn(stream, Proxy::Plain, Phase::LocalConnecting);
                if let Some(conn) = self.conns.get_mut(&token) {
                    conn.tcp = Some(handle);
                    conn.reserved = false;
                    conn.writable = false;
                }
            }
            Err(e) => {
                log::info!("reverse forward to {target}: {e}");
                self.sockets.get_mut::<tcp::Socket>(handle).abort();
                self.lingering.push((handle, Instant::now()));
            }
        }
    }

    // ----- UDP forwards ---------------------------------------------------

    fn on_udp_ready(&mut self, index: usize) {
        if index >= self.udp_forwards.len() {
            return;
        }
        let mut buf = vec![0u8; 65536];
        loop {
            let forward = &self.udp_forwards[index];
            let Some((n, client)) = recv_waiting(&forward.socket, &mut buf, "UDP forward") else {
                return;
            };
            let Some(handle) = self.association(index, client) else {
                continue;
            };
            let target = self.udp_forwards[index].target;
            let remote = IpEndpoint::new(IpAddress::from(target.ip()), target.port());
            let socket = self.sockets.get_mut::<udp::Socket>(handle);
            if socket.send_slice(&buf[..n], remote).is_err() {
                log::debug!("UDP forward: stack buffer full, datagram dropped");
            }
        }
    }

    /// The association of `client`, made if the limit allows.
    fn association(&mut self, index: usize, client: SocketAddr) -> Option<SocketHandle> {
        if let Some(existing) = self.udp_forwards[index].associations.get_mut(&client) {
            existing.last_used = Instant::now();
            return Some(existing.handle);
        }
        let total = self.udp_association_count();
        if total >= self.limits.max_udp_associations {
            log::warn!(
                "refusing UDP from {client}: {} associations open (MaxUdpAssociations)",
                total
            );
            return None;
        }
        let handle = self.new_udp_socket()?;
        self.udp_forwards[index].associations.insert(
            client,
            Association {
                handle,
                last_used: Instant::now(),
            },
        );
        Some(handle)
    }

    /// UDP associations of every kind: UDP forward clients, SOCKS5 relays
    /// and UDP reverse forward endpoints (`MaxUdpAssociations` bounds their
    /// sum).
    fn udp_association_count(&self) -> usize {
        let forwards: usize = self.udp_forwards.iter().map(|f| f.associations.len()).sum();
        let reverse: usize = self.reverse_udp.iter().map(|r| r.associations()).sum();
        forwards + self.relays.len() + reverse
    }

    /// A stack UDP socket on an ephemeral port, with the buffers of one
    /// association.
    fn new_udp_socket(&mut self) -> Option<SocketHandle> {
        let port = self.ephemeral_port();
        self.udp_socket_bound(IpListenEndpoint::from(port))
    }

    /// A stack UDP socket bound to `endpoint`, with the buffers of one
    /// association.
    fn udp_socket_bound(&mut self, endpoint: IpListenEndpoint) -> Option<SocketHandle> {
        let buffer = || {
            udp::PacketBuffer::new(
                vec![udp::PacketMetadata::EMPTY; UDP_SLOTS],
                vec![0u8; UDP_BUFFER],
            )
        };
        let mut socket = udp::Socket::new(buffer(), buffer());
        socket.bind(endpoint).ok()?;
        Some(self.sockets.add(socket))
    }

    /// The datagram buffer, taken out of the driver (give it back with
    /// `self.datagram = buf`); allocated on first use only.
    fn datagram_buf(&mut self) -> Vec<u8> {
        let mut buf = std::mem::take(&mut self.datagram);
        buf.resize(MAX_DATAGRAM, 0);
        buf
    }

    fn relay_udp_from_tunnel(&mut self) {
        if self.udp_forwards.iter().all(|f| f.associations.is_empty()) {
            return;
        }
        let mut buf = self.datagram_buf();
        for forward in &mut self.udp_forwards {
            for (client, association) in &mut forward.associations {
                let socket = self.sockets.get_mut::<udp::Socket>(association.handle);
                while let Ok((n, _meta)) = socket.recv_slice(&mut buf) {
                    association.last_used = Instant::now();
                    if let Err(e) = forward.socket.send_to(&buf[..n], *client) {
                        log::debug!("UDP forward to {client}: {e}");
                    }
                }
            }
        }
        self.datagram = buf;
    }

    // ----- deadlines ------------------------------------------------------

    fn expire(&mut self) {
        let now = Instant::now();
        let idle = self.limits.udp_idle_timeout;
        for forward in &mut self.udp_forwards {
            let sockets = &mut self.sockets;
            forward.associations.retain(|client, a| {
                let alive = now.duration_since(a.last_used) < idle;
                if !alive {
                    log::debug!("UDP association of {client} expired");
                    sockets.remove(a.handle);
                }
                alive
            });
        }
        self.expire_relays(now, idle);
        self.expire_reverse_udp(now, idle);
        let mut released = 0;
        let sockets = &mut self.sockets;
        self.lingering.retain(|(handle, since)| {
            let socket = sockets.get_mut::<tcp::Socket>(*handle);
            let done = matches!(socket.state(), tcp::State::Closed | tcp::State::TimeWait);
            if done || now.duration_since(*since) > LINGER {
                sockets.remove(*handle);
                released += 1;
                return false;
            }
            true
        });
        for _ in 0..released {
            self.budget.release();
        }
    }
}

/// A phase without its data, to dispatch on without holding a borrow.
#[derive(Clone, Copy, PartialEq, Eq)]
enum PhaseKind {
    Handshake,
    Resolving,
    TunnelConnecting,
    LocalConnecting,
    Open,
    Closing,
    UdpControl,
}

fn phase_kind(phase: &Phase) -> PhaseKind {
    match phase {
        Phase::SocksGreeting | Phase::SocksAuth | Phase::SocksRequest | Phase::HttpHead => {
            PhaseKind::Handshake
        }
        Phase::Resolving { .. } => PhaseKind::Resolving,
        Phase::TunnelConnecting => PhaseKind::TunnelConnecting,
        Phase::LocalConnecting => PhaseKind::LocalConnecting,
        Phase::Open => PhaseKind::Open,
        Phase::Closing => PhaseKind::Closing,
        Phase::UdpControl { .. } => PhaseKind::UdpControl,
    }
}

fn phase_name(phase: &Phase) -> &'static str {
    match phase {
        Phase::SocksGreeting => "socks-greeting",
        Phase::SocksAuth => "socks-auth",
        Phase::SocksRequest => "socks-request",
        Phase::HttpHead => "http-head",
        Phase::Resolving { .. } => "resolving",
        Phase::TunnelConnecting => "tunnel-connecting",
        Phase::LocalConnecting => "local-connecting",
        Phase::Open => "open",
        Phase::Closing => "closing",
        Phase::UdpControl { .. } => "udp-control",
    }
}

/// Compares credentials in constant time (for equal lengths).
fn credentials_match(user: &str, password: &str, given_user: &[u8], given_password: &[u8]) -> bool {
    let user_ok = ct_eq(user.as_bytes(), given_user);
    let password_ok = ct_eq(password.as_bytes(), given_password);
    user_ok & password_ok
}

impl ListenerKind {
    fn describe(&self) -> String {
        match self {
            ListenerKind::Forward(target) => format!("TCP forward to {target}"),
            ListenerKind::Socks5(c) => {
                format!("SOCKS5{}", if c.is_some() { ", with password" } else { "" })
            }
            ListenerKind::Http(c) => format!(
                "HTTP CONNECT proxy{}",
                if c.is_some() { ", with password" } else { "" }
            ),
        }
    }
}

impl Refusal {
    fn describe(self, limits: &Limits) -> String {
        match self {
            Refusal::Connections => {
                format!(
                    "{} connections open (MaxConnections)",
                    limits.max_connections
                )
            }
            Refusal::HalfOpen => format!(
                "{} connections still being set up (MaxHalfOpen)",
                limits.max_half_open
            ),
            Refusal::Buffers => format!(
                "connection buffers would exceed {} bytes (TotalBuffers)",
                limits.total_buffers
            ),
        }
    }
}

/// One datagram from a non-blocking UDP socket: `None` once none is waiting,
/// or on an error (logged, naming the socket as `what`); an interrupted call
/// is retried.
fn recv_waiting(socket: &UdpSocket, buf: &mut [u8], what: &str) -> Option<(usize, SocketAddr)> {
    loop {
        match socket.recv_from(buf) {
            Ok(received) => return Some(received),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::debug!("{what} receive: {e}");
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_refuses_what_would_exceed_the_total() {
        let mut budget = Budget {
            per_connection: 20,
            total: 45,
            reserved: 0,
        };
        assert!(budget.try_reserve());
        assert!(budget.try_reserve());
        assert!(!budget.try_reserve(), "60 > 45");
        budget.release();
        assert!(budget.try_reserve());
    }

    #[test]
    fn credentials_must_match_whole() {
        assert!(credentials_match("u", "p", b"u", b"p"));
        assert!(!credentials_match("u", "p", b"u", b"q"));
        assert!(!credentials_match("u", "p", b"uu", b"p"));
        assert!(!credentials_match("u", "p", b"", b""));
    }
}
