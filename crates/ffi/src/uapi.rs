//! The cross-platform configuration protocol (`set=1` / `get=1`, the text
//! that `wg` speaks over the daemon's socket) applied to an [`Engine`], so
//! that bindings can configure everything with one function.
//!
//! Why not the daemon's parser: it lives in the daemon crate (`src/uapi`),
//! which pulls in TUN, sockets and threads; this crate must not. The mapping
//! here is small and on top of the engine's public API only. A request is
//! parsed and checked whole before anything is applied, so a bad line
//! leaves the engine as it was (`errno=22`).
#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::UNIX_EPOCH;

use zeroize::Zeroizing;

use crate::engine::{parse_prefix, Engine};
use ferroguard_proto::crypto::{PublicKey, SecretKey};
use ferroguard_proto::device::Now;

/// `EINVAL`: a malformed request.
const EINVAL: i32 = 22;

/// One peer's part of a `set=1` request.
#[derive(Default)]
struct PeerSet {
    public_key: [u8; 32],
    remove: bool,
    update_only: bool,
    preshared_key: Option<Zeroizing<[u8; 32]>>,
    endpoint: Option<SocketAddr>,
    keepalive: Option<u16>,
    replace_allowed_ips: bool,
    allowed_ips: Vec<String>,
}

/// A whole `set=1` request, checked.
#[derive(Default)]
struct DeviceSet {
    private_key: Option<Zeroizing<[u8; 32]>>,
    listen_port: Option<u16>,
    fwmark: Option<u32>,
    replace_peers: bool,
    peers: Vec<PeerSet>,
}

/// Answers one request (`get=1\n\n` or `set=1\n...\n\n`) with the
/// protocol's reply text, `errno=N` last. The reply may hold the private
/// key: it is wiped when dropped.
pub fn handle(engine: &mut Engine, now: Now, request: &str) -> Zeroizing<String> {
    let mut lines = request.lines();
    match lines.next() {
        Some("get=1") => get(engine),
        Some("set=1") => {
            let errno = match parse_set(lines) {
                Ok(set) => {
                    apply(engine, now, set);
                    0
                }
                Err(_) => EINVAL,
            };
            Zeroizing::new(format!("errno={errno}\n\n"))
        }
        _ => Zeroizing::new(format!("errno={EINVAL}\n\n")),
    }
}

/// Why a `set=1` request was refused (for tests; the reply is `errno=22`).
#[derive(Debug, PartialEq, Eq)]
pub struct Refused(pub String);

fn parse_set<'a>(lines: impl Iterator<Item = &'a str>) -> Result<DeviceSet, Refused> {
    let mut set = DeviceSet::default();
    for line in lines {
        if line.is_empty() {
            break;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| Refused(format!("no '=' in {line:?}")))?;
        if key == "public_key" {
            set.peers.push(PeerSet {
                public_key: hex_key(value)?,
                ..PeerSet::default()
            });
            continue;
        }
        match set.peers.last_mut() {
            None => device_line(&mut set, key, value)?,
            Some(peer) => peer_line(peer, key, value)?,
        }
    }
    Ok(set)
}

fn device_line(set: &mut DeviceSet, key: &str, value: &str) -> Result<(), Refused> {
    match key {
        "private_key" => set.private_key = Some(Zeroizing::new(hex_key(value)?)),
        "listen_port" => set.listen_port = Some(number(value)?),
        "fwmark" => set.fwmark = Some(number(value)?),
        "replace_peers" => set.replace_peers = flag(value)?,
        _ => return Err(Refused(format!("unknown device key {key:?}"))),
    }
    Ok(())
}

fn peer_line(peer: &mut PeerSet, key: &str, value: &str) -> Result<(), Refused> {
    match key {
        "remove" => peer.remove = flag(value)?,
        "update_only" => peer.update_only = flag(value)?,
        "preshared_key" => peer.preshared_key = Some(Zeroizing::new(hex_key(value)?)),
        "endpoint" => {
            let addr = value
                .parse()
                .map_err(|_| Refused(format!("bad endpoint {value:?}")))?;
            peer.endpoint = Some(addr);
        }
        "persistent_keepalive_interval" => peer.keepalive = Some(number(value)?),
        "replace_allowed_ips" => peer.replace_allowed_ips = flag(value)?,
        "allowed_ip" => {
            parse_prefix(value).map_err(Refused)?;
            peer.allowed_ips.push(value.to_owned());
        }
        "protocol_version" if value == "1" => {}
        _ => return Err(Refused(format!("unsupported peer line {key}={value}"))),
    }
    Ok(())
}

fn apply(engine: &mut Engine, now: Now, set: DeviceSet) {
    if let Some(key) = set.private_key {
        let key = (*key != [0u8; 32]).then(|| SecretKey::from_bytes(*key));
        engine.device.set_private_key(key);
    }
    if let Some(port) = set.listen_port {
        engine.listen_port = port;
    }
    if let Some(mark) = set.fwmark {
        engine.fwmark = mark;
    }
    if set.replace_peers {
        engine.device.remove_all_peers();
    }
    for peer in set.peers {
        apply_peer(engine, now, peer);
    }
}

fn apply_peer(engine: &mut Engine, now: Now, peer: PeerSet) {
    let device = &mut engine.device;
    let public = PublicKey(peer.public_key);
    let existing = device.peer_id(&public);
    if peer.remove {
        if let Some(id) = existing {
            device.remove_peer(id);
        }
        return;
    }
    let id = match existing {
        Some(id) => id,
        None if peer.update_only => return,
        None => match device.add_peer(public) {
            Some(id) => id,
            None => return, // our own key: ignored, as the kernel does
        },
    };
    if let Some(key) = peer.preshared_key {
        engine.set_preshared_key(id, Some(*key));
    }
    if let Some(addr) = peer.endpoint {
        engine.device.set_endpoint(id, addr);
    }
    if peer.replace_allowed_ips {
        engine.device.clear_allowed_ips(id);
    }
    for prefix in &peer.allowed_ips {
        // Checked while parsing; a second failure cannot happen.
        let _ = engine.add_allowed_ip(id, prefix);
    }
    if let Some(seconds) = peer.keepalive {
        engine.device.set_persistent_keepalive(now, id, seconds);
    }
}

fn get(engine: &Engine) -> Zeroizing<String> {
    let device = &engine.device;
    let mut out = Zeroizing::new(String::new());
    if let Some(key) = device.private_key() {
        let _ = writeln!(out, "private_key={}", hex(&key.to_bytes()).as_str());
    }
    let _ = writeln!(out, "listen_port={}", engine.listen_port);
    if engine.fwmark != 0 {
        let _ = writeln!(out, "fwmark={}", engine.fwmark);
    }
    for id in device.peer_ids() {
        let Some(peer) = device.peer(id) else {
            continue;
        };
        let _ = writeln!(
            out,
            "public_key={}",
            hex(peer.public_key().as_bytes()).as_str()
        );
        let _ = writeln!(
            out,
            "preshared_key={}",
            hex(peer.preshared_key().as_bytes()).as_str()
        );
        let _ = writeln!(out, "protocol_version=1");
        if let Some(endpoint) = peer.endpoint() {
            let _ = writeln!(out, "endpoint={}", endpoint.addr);
        }
        let since = peer
            .last_handshake()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .unwrap_or_default();
        let _ = writeln!(out, "last_handshake_time_sec={}", since.as_secs());
        let _ = writeln!(out, "last_handshake_time_nsec={}", since.subsec_nanos());
        let _ = writeln!(out, "tx_bytes={}", peer.tx_bytes());
        let _ = writeln!(out, "rx_bytes={}", peer.rx_bytes());
        let keepalive = peer.persistent_keepalive().as_secs();
        let _ = writeln!(out, "persistent_keepalive_interval={keepalive}");
        for (addr, cidr) in device.allowed_ips().prefixes_of(id) {
            let _ = writeln!(out, "allowed_ip={addr}/{cidr}");
        }
    }
    out.push_str("errno=0\n\n");
    out
}

fn flag(value: &str) -> Result<bool, Refused> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(Refused(format!("not true or false: {value:?}"))),
    }
}

fn number<T: std::str::FromStr>(value: &str) -> Result<T, Refused> {
    value
        .parse()
        .map_err(|_| Refused(format!("not a number in range: {value:?}")))
}

/// 64 hex digits as a key.
fn hex_key(value: &str) -> Result<[u8; 32], Refused> {
    let bad = || Refused("a key must be 64 hex digits".into());
    let digits = value.as_bytes();
    if digits.len() != 64 {
        return Err(bad());
    }
    let mut key = [0u8; 32];
    for (byte, pair) in key.iter_mut().zip(digits.chunks_exact(2)) {
        let text = std::str::from_utf8(pair).map_err(|_| bad())?;
        *byte = u8::from_str_radix(text, 16).map_err(|_| bad())?;
    }
    Ok(key)
}

fn hex(bytes: &[u8; 32]) -> Zeroizing<String> {
    let mut s = Zeroizing::new(String::with_capacity(64));
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine(seed: u8) -> Engine {
        Engine::new([seed; 32], [seed; 32])
    }

    fn key_hex(byte: u8) -> String {
        hex(&[byte; 32]).to_string()
    }

    #[test]
    fn set_then_get_round_trips_a_peer() {
        let mut e = engine(1);
        let now = e.clock.now(0);
        let request = format!(
            "set=1\nlisten_port=51820\npublic_key={}\nendpoint=[::1]:9\n\
             persistent_keepalive_interval=25\nallowed_ip=10.0.0.0/24\nallowed_ip=fd00::/64\n\n",
            key_hex(7)
        );
        assert_eq!(handle(&mut e, now, &request).as_str(), "errno=0\n\n");
        let reply = handle(&mut e, now, "get=1\n\n");
        for line in [
            &format!("public_key={}", key_hex(7)),
            "listen_port=51820",
            "endpoint=[::1]:9",
            "persistent_keepalive_interval=25",
            "allowed_ip=10.0.0.0/24",
            "allowed_ip=fd00::/64",
        ] {
            assert!(
                reply.lines().any(|l| l == line),
                "{line} missing in {reply:?}"
            );
        }
        assert!(reply.ends_with("errno=0\n\n"));
    }

    #[test]
    fn a_bad_line_changes_nothing() {
        let mut e = engine(1);
        let now = e.clock.now(0);
        let request = format!(
            "set=1\npublic_key={}\nallowed_ip=10.0.0.0/24\nallowed_ip=banana\n\n",
            key_hex(7)
        );
        assert_eq!(handle(&mut e, now, &request).as_str(), "errno=22\n\n");
        assert_eq!(e.device.peer_count(), 0);
        for bad in [
            "set=1\nprivate_key=12\n\n",
            "set=1\nbogus=1\n\n",
            "hello\n\n",
            "",
        ] {
            assert_eq!(handle(&mut e, now, bad).as_str(), "errno=22\n\n", "{bad:?}");
        }
    }

    #[test]
    fn remove_update_only_and_replace() {
        let mut e = engine(1);
        let now = e.clock.now(0);
        let add = |k: u8| format!("public_key={}\nallowed_ip=10.0.0.{k}/32\n", key_hex(k));
        let r = handle(&mut e, now, &format!("set=1\n{}{}\n", add(7), add(8)));
        assert_eq!(r.as_str(), "errno=0\n\n");
        assert_eq!(e.device.peer_count(), 2);
        let r = format!("set=1\npublic_key={}\nremove=true\n\n", key_hex(7));
        handle(&mut e, now, &r);
        let r = format!("set=1\npublic_key={}\nupdate_only=true\n\n", key_hex(9));
        handle(&mut e, now, &r);
        assert_eq!(e.device.peer_count(), 1);
        handle(
            &mut e,
            now,
            &format!("set=1\nreplace_peers=true\n{}\n", add(9)),
        );
        let ids = e.device.peer_ids();
        assert_eq!(ids.len(), 1);
        assert_eq!(e.device.peer(ids[0]).unwrap().public_key().0, [9; 32]);
    }
}
