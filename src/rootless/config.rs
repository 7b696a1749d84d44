//! The rootless mode's configuration file: wg-quick's format (`[Interface]`,
//! `[Peer]`) plus the sections of what the mode exposes (`[Forward]`,
//! `[Socks5]`, `[HttpProxy]`, `[Limits]`). docs/ROOTLESS.md describes every
//! key. Keys are case-insensitive, as in wg-quick; `#` starts a comment.
//! Every error names its line.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use base64::Engine as _;
use zeroize::Zeroizing;

use crate::uapi::{DeviceOp, PeerOp, PeerUpdate, SetRequest};

/// The largest configuration file read.
pub const MAX_FILE_LEN: usize = 1 << 20;

/// The default tunnel MTU (wg-quick's default for IPv6 endpoints).
pub const DEFAULT_MTU: usize = 1420;

/// A whole, valid configuration.
#[derive(Debug)]
pub struct RootlessConfig {
    /// `[Interface] PrivateKey`.
    pub private_key: Zeroizing<[u8; 32]>,
    /// `[Interface] Address`: the stack's own addresses with prefix lengths.
    pub addresses: Vec<(IpAddr, u8)>,
    /// `[Interface] ListenPort` (0: any).
    pub listen_port: u16,
    /// `[Interface] DNS`: the resolvers used for names (inside the tunnel).
    pub dns: Vec<IpAddr>,
    /// `[Interface] MTU`.
    pub mtu: usize,
    /// The `[Peer]` sections.
    pub peers: Vec<PeerConfig>,
    /// `[Forward] TCP` and `UDP`: local port to tunnel address.
    pub forwards: Vec<Forward>,
    /// `[Forward] ReverseTCP`: tunnel port to local service.
    pub reverse: Vec<Reverse>,
    /// `[Forward] ReverseUDP`: tunnel port to local service, for UDP.
    pub reverse_udp: Vec<Reverse>,
    /// `[Socks5]`.
    pub socks5: Option<ProxyConfig>,
    /// `[HttpProxy]`.
    pub http_proxy: Option<ProxyConfig>,
    /// `[Limits]`.
    pub limits: Limits,
}

/// One `[Peer]` section.
#[derive(Debug)]
pub struct PeerConfig {
    /// `PublicKey`.
    pub public_key: [u8; 32],
    /// `PresharedKey`.
    pub preshared_key: Option<Zeroizing<[u8; 32]>>,
    /// `Endpoint` as written (`host:port`), resolved at start.
    pub endpoint: Option<String>,
    /// `AllowedIPs`.
    pub allowed_ips: Vec<(IpAddr, u8)>,
    /// `PersistentKeepalive` in seconds (0: off).
    pub persistent_keepalive: u16,
}

/// The transport protocol of a forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

/// A local listener whose connections or datagrams go to `target` inside
/// the tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    /// TCP or UDP.
    pub protocol: Protocol,
    /// The local address to listen on.
    pub listen: SocketAddr,
    /// The address inside the tunnel.
    pub target: SocketAddr,
}

/// A TCP port on the tunnel addresses whose connections go to a local
/// service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reverse {
    /// The tunnel address to accept on (None: any of ours).
    pub address: Option<IpAddr>,
    /// The port.
    pub port: u16,
    /// The local service.
    pub target: SocketAddr,
}

/// A proxy listener and its optional credentials.
#[derive(Debug, PartialEq, Eq)]
pub struct ProxyConfig {
    /// Where it listens.
    pub listen: SocketAddr,
    /// Username and password, when required.
    pub credentials: Option<(String, Zeroizing<String>)>,
}

/// The bounds of the mode (docs/ROOTLESS.md, "Limits").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once, of every kind.
    pub max_connections: usize,
    /// Connections not yet carrying data: in their proxy handshake, waiting
    /// for a name to resolve or for the connection to be established.
    pub max_half_open: usize,
    /// Bytes of receive buffer per connection: the window offered to the
    /// other end.
    pub connection_buffer: usize,
    /// Bytes of send buffer per connection: the most sent before an
    /// acknowledgement. Apart from the receive buffer because smoltcp sends
    /// what the window allows at once (no pacing) and, after a loss, sends
    /// everything from the first unacknowledged byte again (no SACK-based
    /// recovery): against a receiver that drops part of each burst
    /// (wireguard-go's UDP socket overflowing on a busy host), a large one
    /// collapses the connection (docs/ROOTLESS.md, "Design"). A connection
    /// that stalls keeps less than this in flight for a while
    /// (`driver/in_flight.rs`); the buffer itself stays this size.
    pub send_buffer: usize,
    /// Bytes of connection buffers in all.
    pub total_buffers: usize,
    /// UDP associations (forwarded client addresses) at once.
    pub max_udp_associations: usize,
    /// An idle UDP association is forgotten after this long.
    pub udp_idle_timeout: Duration,
    /// A connection still half-open after this long is closed.
    pub handshake_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 512,
            max_half_open: 64,
            connection_buffer: 256 * 1024,
            send_buffer: 128 * 1024,
            total_buffers: 128 * 1024 * 1024,
            max_udp_associations: 256,
            udp_idle_timeout: Duration::from_secs(60),
            handshake_timeout: Duration::from_secs(15),
        }
    }
}

/// A configuration error, with its line number when it has one.
#[derive(Debug, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Section {
    None,
    Interface,
    Peer,
    Forward,
    Socks5,
    HttpProxy,
    Limits,
}

/// wg-quick keys that configure the host's network, which the rootless
/// mode has none of: ignored with a warning so existing files load.
const HOST_ONLY_KEYS: [&str; 7] = [
    "table",
    "preup",
    "postup",
    "predown",
    "postdown",
    "saveconfig",
    "fwmark",
];

/// The proxy sections as read, before their checks.
#[derive(Default)]
struct ProxyDraft {
    listen: Option<SocketAddr>,
    username: Option<String>,
    password: Option<Zeroizing<String>>,
    allow_unauthenticated: bool,
}

/// Parses a configuration file's text.
pub fn parse(text: &str) -> Result<RootlessConfig, ConfigError> {
    if text.len() > MAX_FILE_LEN {
        return Err(ConfigError(format!(
            "the file is larger than {MAX_FILE_LEN} bytes"
        )));
    }
    let mut parser = Parser::default();
    for (index, raw) in text.lines().enumerate() {
        parser
            .line(raw)
            .map_err(|e| ConfigError(format!("line {}: {e}", index + 1)))?;
    }
    parser.finish()
}

#[derive(Default)]
struct Parser {
    section: Option<SectionState>,
    private_key: Option<Zeroizing<[u8; 32]>>,
    addresses: Vec<(IpAddr, u8)>,
    listen_port: u16,
    dns: Vec<IpAddr>,
    mtu: Option<usize>,
    peers: Vec<PeerConfig>,
    forwards: Vec<Forward>,
    reverse: Vec<Reverse>,
    reverse_udp: Vec<Reverse>,
    socks5: Option<ProxyDraft>,
    http_proxy: Option<ProxyDraft>,
    limits: Limits,
}

struct SectionState {
    kind: Section,
}

impl Parser {
    fn current(&self) -> Section {
        self.section.as_ref().map_or(Section::None, |s| s.kind)
    }

    fn line(&mut self, raw: &str) -> Result<(), String> {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            return Ok(());
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            return self.open_section(name.trim());
        }
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| format!("expected `Key = Value` or `[Section]`, found {line:?}"))?;
        let (key, value) = (key.trim().to_ascii_lowercase(), value.trim());
        match self.current() {
            Section::None => Err(format!("`{key}` before any section")),
            Section::Interface => self.interface_key(&key, value),
            Section::Peer => self.peer_key(&key, value),
            Section::Forward => self.forward_key(&key, value),
            Section::Socks5 => proxy_key(
                self.socks5.get_or_insert_with(Default::default),
                &key,
                value,
            ),
            Section::HttpProxy => proxy_key(
                self.http_proxy.get_or_insert_with(Default::default),
                &key,
                value,
            ),
            Section::Limits => limits_key(&mut self.limits, &key, value),
        }
    }

    fn open_section(&mut self, name: &str) -> Result<(), String> {
        let kind = match name.to_ascii_lowercase().as_str() {
            "interface" => Section::Interface,
            "peer" => Section::Peer,
            "forward" => Section::Forward,
            "socks5" => Section::Socks5,
            "httpproxy" => Section::HttpProxy,
            "limits" => Section::Limits,
            _ => return Err(format!("unknown section [{name}]")),
        };
        let repeated = match kind {
            Section::Socks5 => self.socks5.is_some(),
            Section::HttpProxy => self.http_proxy.is_some(),
            _ => false,
        };
        if repeated {
            return Err(format!("[{name}] given twice"));
        }
        match kind {
            Section::Peer => self.peers.push(PeerConfig {
                public_key: [0; 32],
                preshared_key: None,
                endpoint: None,
                allowed_ips: Vec::new(),
                persistent_keepalive: 0,
            }),
            Section::Socks5 => self.socks5 = Some(ProxyDraft::default()),
            Section::HttpProxy => self.http_proxy = Some(ProxyDraft::default()),
            _ => {}
        }
        self.section = Some(SectionState { kind });
        Ok(())
    }

    fn interface_key(&mut self, key: &str, value: &str) -> Result<(), String> {
        match key {
            "privatekey" => self.private_key = Some(parse_key(value)?),
            "address" => {
                for item in list(value) {
                    self.addresses.push(parse_prefix(item, true)?);
                }
            }
            "listenport" => self.listen_port = parse_number(value, "port")?,
            "dns" => {
                for item in list(value) {
                    // wg-quick also takes search domains here; the mode has
                    // no resolver configuration to give them to.
                    match item.parse() {
                        Ok(ip) => self.dns.push(ip),
                        Err(_) => log::warn!("DNS search domain {item:?} ignored"),
                    }
                }
            }
            "mtu" => {
                let mtu: usize = parse_number(value, "MTU")?;
                if !(1280..=65535).contains(&mtu) {
                    return Err(format!("MTU {mtu} out of range (1280 to 65535)"));
                }
                self.mtu = Some(mtu);
            }
            _ if HOST_ONLY_KEYS.contains(&key) => {
                log::warn!("`{key}` configures the host's network: ignored in rootless mode");
            }
            _ => return Err(format!("unknown key `{key}` in [Interface]")),
        }
        Ok(())
    }

    fn peer_key(&mut self, key: &str, value: &str) -> Result<(), String> {
        let peer = self.peers.last_mut().ok_or("no [Peer] open")?;
        match key {
            "publickey" => peer.public_key = *parse_key(value)?,
            "presharedkey" => peer.preshared_key = Some(parse_key(value)?),
            "endpoint" => {
                if value
                    .rsplit_once(':')
                    .and_then(|(_, p)| p.parse::<u16>().ok())
                    .is_none()
                {
                    return Err(format!("endpoint {value:?} is not HOST:PORT"));
                }
                peer.endpoint = Some(value.to_string());
            }
            "allowedips" => {
                for item in list(value) {
                    peer.allowed_ips.push(parse_prefix(item, false)?);
                }
            }
            "persistentkeepalive" => {
                peer.persistent_keepalive = if value.eq_ignore_ascii_case("off") {
                    0
                } else {
                    parse_number(value, "keepalive interval")?
                }
            }
            _ => return Err(format!("unknown key `{key}` in [Peer]")),
        }
        Ok(())
    }

    fn forward_key(&mut self, key: &str, value: &str) -> Result<(), String> {
        let (from, to) = value
            .split_once("->")
            .ok_or_else(|| format!("expected `LISTEN -> TARGET`, found {value:?}"))?;
        let (from, to) = (from.trim(), to.trim());
        let target = parse_socket_addr(to)?;
        match key {
            "tcp" | "udp" => self.forwards.push(Forward {
                protocol: if key == "tcp" {
                    Protocol::Tcp
                } else {
                    Protocol::Udp
                },
                listen: parse_socket_addr(from)?,
                target,
            }),
            "reversetcp" | "reverseudp" => {
                let (address, port) = match from.parse::<u16>() {
                    Ok(port) => (None, port),
                    Err(_) => {
                        let addr = parse_socket_addr(from)?;
                        (Some(addr.ip()), addr.port())
                    }
                };
                if port == 0 {
                    return Err("a reverse forward needs a port other than 0".into());
                }
                let reverse = Reverse {
                    address,
                    port,
                    target,
                };
                if key == "reversetcp" {
                    self.reverse.push(reverse);
                } else {
                    self.reverse_udp.push(reverse);
                }
            }
            _ => {
                return Err(format!(
                    "unknown key `{key}` in [Forward] (TCP, UDP, ReverseTCP, ReverseUDP)"
                ))
            }
        }
        Ok(())
    }

    fn finish(self) -> Result<RootlessConfig, ConfigError> {
        let private_key = self
            .private_key
            .ok_or_else(|| ConfigError("[Interface] has no PrivateKey".into()))?;
        if self.addresses.is_empty() {
            return Err(ConfigError("[Interface] has no Address".into()));
        }
        if let Some(peer) = self.peers.iter().find(|p| p.public_key == [0; 32]) {
            let _ = peer;
            return Err(ConfigError("a [Peer] has no PublicKey".into()));
        }
        for reverse in self.reverse.iter().chain(&self.reverse_udp) {
            if let Some(ip) = reverse.address {
                if !self.addresses.iter().any(|(a, _)| *a == ip) {
                    return Err(ConfigError(format!(
                        "reverse forward address {ip} is not one of the interface's addresses"
                    )));
                }
            }
        }
        check_limits(&self.limits).map_err(ConfigError)?;
        Ok(RootlessConfig {
            private_key,
            addresses: self.addresses,
            listen_port: self.listen_port,
            dns: self.dns,
            mtu: self.mtu.unwrap_or(DEFAULT_MTU),
            peers: self.peers,
            forwards: self.forwards,
            reverse: self.reverse,
            reverse_udp: self.reverse_udp,
            socks5: self.socks5.map(|d| finish_proxy(d, "Socks5")).transpose()?,
            http_proxy: self
                .http_proxy
                .map(|d| finish_proxy(d, "HttpProxy"))
                .transpose()?,
            limits: self.limits,
        })
    }
}

fn proxy_key(draft: &mut ProxyDraft, key: &str, value: &str) -> Result<(), String> {
    match key {
        "listen" => draft.listen = Some(parse_socket_addr(value)?),
        "username" => draft.username = Some(value.to_string()),
        "password" => draft.password = Some(Zeroizing::new(value.to_string())),
        "allowunauthenticated" => draft.allow_unauthenticated = parse_bool(value)?,
        _ => return Err(format!("unknown key `{key}` in a proxy section")),
    }
    Ok(())
}

/// A proxy section's checks: a listen address; both or neither of the
/// credentials (each 1 to 255 bytes, RFC 1929's bounds); credentials
/// required beyond loopback unless `AllowUnauthenticated = true`.
fn finish_proxy(draft: ProxyDraft, name: &str) -> Result<ProxyConfig, ConfigError> {
    let listen = draft
        .listen
        .ok_or_else(|| ConfigError(format!("[{name}] has no Listen")))?;
    let credentials = match (draft.username, draft.password) {
        (None, None) => None,
        (Some(user), Some(password)) => {
            if !(1..=255).contains(&user.len()) || !(1..=255).contains(&password.len()) {
                return Err(ConfigError(format!(
                    "[{name}] Username and Password must be 1 to 255 bytes"
                )));
            }
            Some((user, password))
        }
        _ => {
            return Err(ConfigError(format!(
                "[{name}] needs both Username and Password, or neither"
            )))
        }
    };
    if credentials.is_none() && !listen.ip().is_loopback() && !draft.allow_unauthenticated {
        return Err(ConfigError(format!(
            "[{name}] Listen = {listen} is reachable from other hosts: set Username and \
             Password (or AllowUnauthenticated = true)"
        )));
    }
    Ok(ProxyConfig {
        listen,
        credentials,
    })
}

fn limits_key(limits: &mut Limits, key: &str, value: &str) -> Result<(), String> {
    match key {
        "maxconnections" => limits.max_connections = parse_number(value, "count")?,
        "maxhalfopen" => limits.max_half_open = parse_number(value, "count")?,
        "connectionbuffer" => limits.connection_buffer = parse_size(value)?,
        "sendbuffer" => limits.send_buffer = parse_size(value)?,
        "totalbuffers" => limits.total_buffers = parse_size(value)?,
        "maxudpassociations" => limits.max_udp_associations = parse_number(value, "count")?,
        "udpidletimeout" => limits.udp_idle_timeout = parse_seconds(value)?,
        "handshaketimeout" => limits.handshake_timeout = parse_seconds(value)?,
        _ => return Err(format!("unknown key `{key}` in [Limits]")),
    }
    Ok(())
}

fn check_limits(limits: &Limits) -> Result<(), String> {
    if limits.max_connections == 0 || limits.max_half_open == 0 {
        return Err("[Limits] MaxConnections and MaxHalfOpen must be at least 1".into());
    }
    if !(4096..=64 << 20).contains(&limits.connection_buffer) {
        return Err("[Limits] ConnectionBuffer must be 4K to 64M".into());
    }
    if !(4096..=64 << 20).contains(&limits.send_buffer) {
        return Err("[Limits] SendBuffer must be 4K to 64M".into());
    }
    if limits.total_buffers < limits.connection_buffer + limits.send_buffer {
        return Err("[Limits] TotalBuffers must hold at least one connection's two buffers".into());
    }
    Ok(())
}

/// The comma-separated items of a value.
fn list(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty())
}

fn parse_key(value: &str) -> Result<Zeroizing<[u8; 32]>, String> {
    let decoded = Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(value)
            .map_err(|_| "a key must be 32 bytes in base64 (44 characters)".to_string())?,
    );
    let mut key = Zeroizing::new([0u8; 32]);
    if decoded.len() != 32 {
        return Err("a key must be 32 bytes in base64 (44 characters)".into());
    }
    key.copy_from_slice(&decoded);
    Ok(key)
}

/// `ADDR/LEN`, or a bare address (a host prefix). Interface addresses keep
/// their host bits; allowed IPs are masked by the engine.
fn parse_prefix(item: &str, _interface: bool) -> Result<(IpAddr, u8), String> {
    let (addr, len) = match item.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (item, None),
    };
    let ip: IpAddr = addr
        .parse()
        .map_err(|_| format!("{item:?} is not an IP address or prefix"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        None => max,
        Some(l) => l
            .parse::<u8>()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| format!("{item:?}: prefix length must be 0 to {max}"))?,
    };
    Ok((ip, len))
}

fn parse_socket_addr(value: &str) -> Result<SocketAddr, String> {
    value
        .parse()
        .map_err(|_| format!("{value:?} is not ADDRESS:PORT (IPv6 as [ADDRESS]:PORT)"))
}

fn parse_number<T: std::str::FromStr>(value: &str, what: &str) -> Result<T, String> {
    value
        .parse()
        .map_err(|_| format!("{value:?} is not a valid {what}"))
}

fn parse_bool(value: &str) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "yes" | "1" => Ok(true),
        "false" | "no" | "0" => Ok(false),
        _ => Err(format!("{value:?} is not true or false")),
    }
}

/// Bytes, with an optional K or M suffix (binary: 1K = 1024).
fn parse_size(value: &str) -> Result<usize, String> {
    let upper = value.to_ascii_uppercase();
    let (digits, unit) = match upper.strip_suffix('K') {
        Some(d) => (d, 1 << 10),
        None => match upper.strip_suffix('M') {
            Some(d) => (d, 1 << 20),
            None => (upper.as_str(), 1),
        },
    };
    digits
        .trim()
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .ok_or_else(|| format!("{value:?} is not a size (bytes, or with K or M)"))
}

fn parse_seconds(value: &str) -> Result<Duration, String> {
    let seconds: u64 = parse_number(value, "number of seconds")?;
    if seconds == 0 || seconds > 86400 {
        return Err("a timeout must be 1 to 86400 seconds".into());
    }
    Ok(Duration::from_secs(seconds))
}

impl RootlessConfig {
    /// The WireGuard part as a configuration request, applied through the
    /// same handler as `wg setconf`. `endpoints[i]` is peer i's resolved
    /// endpoint.
    pub fn to_set_request(&self, endpoints: &[Option<SocketAddr>]) -> SetRequest {
        let device = vec![
            DeviceOp::PrivateKey(self.private_key.clone()),
            DeviceOp::ReplacePeers,
        ];
        let peers = self
            .peers
            .iter()
            .zip(endpoints)
            .map(|(peer, endpoint)| {
                let mut ops = Vec::new();
                if let Some(psk) = &peer.preshared_key {
                    ops.push(PeerOp::PresharedKey(psk.clone()));
                }
                if let Some(addr) = endpoint {
                    ops.push(PeerOp::Endpoint(*addr));
                }
                ops.push(PeerOp::ReplaceAllowedIps);
                for (ip, len) in &peer.allowed_ips {
                    ops.push(PeerOp::AddAllowedIp(*ip, *len));
                }
                ops.push(PeerOp::PersistentKeepalive(peer.persistent_keepalive));
                PeerUpdate {
                    public_key: peer.public_key,
                    remove: false,
                    update_only: false,
                    ops,
                }
            })
            .collect();
        SetRequest { device, peers }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";
    const KEY_B: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";

    fn full() -> String {
        format!(
            "# comment\n[Interface]\nPrivateKey = {KEY_A}\nAddress = 10.0.0.2/24, fd00::2/64\n\
             ListenPort = 51821\nDNS = 10.0.0.1, corp.example\nMTU = 1380\nPostUp = echo hi\n\n\
             [Peer]\npublickey = {KEY_B}\nPresharedKey = {KEY_A}\nEndpoint = 192.0.2.1:51820\n\
             AllowedIPs = 10.0.0.0/24, fd00::/64\nPersistentKeepalive = 25\n\n\
             [Forward]\nTCP = 127.0.0.1:8080 -> 10.0.0.1:80\nUDP = 127.0.0.1:5353 -> 10.0.0.1:53\n\
             ReverseTCP = 9000 -> 127.0.0.1:9000\nReverseTCP = 10.0.0.2:9001 -> [::1]:22\n\
             ReverseUDP = 5300 -> 127.0.0.1:53\n\n\
             [Socks5]\nListen = 127.0.0.1:1080\n[HttpProxy]\nListen = 0.0.0.0:8118\n\
             Username = u\nPassword = p\n[Limits]\nMaxConnections = 10\nConnectionBuffer = 64K\n\
             SendBuffer = 32K\nTotalBuffers = 2M\nUdpIdleTimeout = 5\n"
        )
    }

    #[test]
    fn a_full_file_parses() {
        let config = parse(&full()).unwrap();
        assert_eq!(config.addresses.len(), 2);
        assert_eq!(config.listen_port, 51821);
        assert_eq!(config.dns, vec!["10.0.0.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(config.mtu, 1380);
        assert_eq!(config.peers.len(), 1);
        assert_eq!(config.peers[0].allowed_ips.len(), 2);
        assert_eq!(config.peers[0].persistent_keepalive, 25);
        assert_eq!(config.forwards.len(), 2);
        assert_eq!(config.forwards[1].protocol, Protocol::Udp);
        assert_eq!(config.reverse[0].address, None);
        assert_eq!(config.reverse[1].target, "[::1]:22".parse().unwrap());
        assert_eq!(config.reverse_udp.len(), 1);
        assert_eq!(config.reverse_udp[0].port, 5300);
        assert!(config.socks5.unwrap().credentials.is_none());
        assert!(config.http_proxy.unwrap().credentials.is_some());
        assert_eq!(config.limits.max_connections, 10);
        assert_eq!(config.limits.connection_buffer, 64 * 1024);
        assert_eq!(config.limits.send_buffer, 32 * 1024);
        assert_eq!(config.limits.total_buffers, 2 << 20);
        assert_eq!(config.limits.udp_idle_timeout, Duration::from_secs(5));
    }

    #[test]
    fn the_wireguard_part_becomes_a_set_request() {
        let config = parse(&full()).unwrap();
        let endpoint: SocketAddr = "192.0.2.1:51820".parse().unwrap();
        let request = config.to_set_request(&[Some(endpoint)]);
        assert_eq!(request.device.len(), 2);
        let ops = &request.peers[0].ops;
        assert!(ops.contains(&PeerOp::Endpoint(endpoint)));
        assert!(ops.contains(&PeerOp::AddAllowedIp("fd00::".parse().unwrap(), 64)));
        assert!(ops.contains(&PeerOp::PersistentKeepalive(25)));
    }

    fn error_of(text: &str) -> String {
        parse(text).unwrap_err().0
    }

    #[test]
    fn bad_files_are_clear_errors() {
        let head = format!("[Interface]\nPrivateKey = {KEY_A}\nAddress = 10.0.0.2/24\n");
        assert!(error_of("Address = 1.2.3.4\n").contains("before any section"));
        assert!(error_of("[Bogus]\n").contains("line 1: unknown section"));
        assert!(error_of(&format!("{head}Colour = blue\n")).contains("line 4: unknown key"));
        assert!(error_of("[Interface]\nPrivateKey = abc\n").contains("base64"));
        assert!(error_of(&format!("{head}MTU = 70000\n")).contains("out of range"));
        assert!(error_of(&format!("{head}Address = 10.0.0.1/33\n")).contains("prefix length"));
        assert!(error_of("[Interface]\nAddress = 10.0.0.2\n").contains("no PrivateKey"));
        assert!(error_of(&format!("[Interface]\nPrivateKey = {KEY_A}\n")).contains("no Address"));
        assert!(
            error_of(&format!("{head}[Peer]\nAllowedIPs = 0.0.0.0/0\n")).contains("no PublicKey")
        );
        assert!(error_of(&format!(
            "{head}[Peer]\nPublicKey = {KEY_B}\nEndpoint = host\n"
        ))
        .contains("HOST:PORT"));
        assert!(
            error_of(&format!("{head}[Forward]\nTCP = 127.0.0.1:1\n")).contains("LISTEN -> TARGET")
        );
        assert!(
            error_of(&format!("{head}[Forward]\nSCTP = 1.1.1.1:1 -> 1.1.1.1:2\n"))
                .contains("unknown key")
        );
        assert!(error_of(&format!(
            "{head}[Forward]\nReverseTCP = 10.9.9.9:1 -> 127.0.0.1:2\n"
        ))
        .contains("not one of the interface's addresses"));
        assert!(
            error_of(&format!("{head}[Socks5]\nListen = 0.0.0.0:1080\n"))
                .contains("reachable from other hosts")
        );
        assert!(error_of(&format!(
            "{head}[Socks5]\nListen = 127.0.0.1:1080\nUsername = u\n"
        ))
        .contains("both Username and Password"));
        assert!(
            error_of(&format!("{head}[Socks5]\nListen = 127.0.0.1:1\n[Socks5]\n"))
                .contains("twice")
        );
        assert!(error_of(&format!(
            "{head}[Limits]\nConnectionBuffer = 99999999999999999999M\n"
        ))
        .contains("not a size"));
        assert!(error_of(&format!("{head}[Limits]\nTotalBuffers = 4K\n")).contains("TotalBuffers"));
        assert!(error_of(&format!("{head}[Limits]\nMaxConnections = 0\n")).contains("at least 1"));
        let allowed =
            format!("{head}[Socks5]\nListen = 0.0.0.0:1080\nAllowUnauthenticated = yes\n");
        assert!(parse(&allowed).is_ok());
    }

    #[test]
    fn random_text_never_panics() {
        let alphabet = b"[]=#,./:->\n abcPeerInterfaceForwardTCP0123456789";
        let mut state = 0x9e37_79b9_u32;
        for _ in 0..2000 {
            let len = (state % 200) as usize;
            let text: String = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 17;
                    state ^= state << 5;
                    alphabet[state as usize % alphabet.len()] as char
                })
                .collect();
            let _ = parse(&text);
        }
        assert!(parse(&"x".repeat(MAX_FILE_LEN + 1))
            .unwrap_err()
            .0
            .contains("larger"));
    }
}
