//! Applies configuration requests to the engine and reports its state: the
//! daemon's equivalent of the kernel's netlink handlers.
//!
//! Decisions (the kernel's semantics where the text protocol is silent):
//! * a request is parsed whole before anything is applied (see `uapi`);
//!   an error while applying (a port in use, a refused fwmark) stops there,
//!   and what came before stays applied, as with the kernel;
//! * `listen_port` equal to the bound port and `fwmark` equal to the current
//!   mark are no-ops, so `wg setconf` works without privileges;
//! * a peer equal to our own public key is ignored;
//! * turning persistent keepalive on sends a keepalive once the peer's
//!   other settings of the same request are applied.

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use ferroguard_proto::crypto::{PublicKey, SecretKey, SymmetricKey};
use ferroguard_proto::device::Now;
use zeroize::Zeroizing;

use crate::clock;
use crate::runtime::{drain, Shared};
use crate::uapi::{
    DeviceOp, DeviceSnapshot, Errno, PeerOp, PeerSnapshot, PeerUpdate, SetRequest, UapiHandler,
};

/// Serves `get` and `set` for one device.
pub struct ConfigHandler {
    shared: Arc<Shared>,
}

impl ConfigHandler {
    /// A handler for the device behind `shared`.
    pub fn new(shared: Arc<Shared>) -> Self {
        ConfigHandler { shared }
    }

    fn apply_device_op(&self, op: &DeviceOp) -> Result<(), Errno> {
        match op {
            DeviceOp::PrivateKey(bytes) => {
                let key = (**bytes != [0u8; 32]).then(|| SecretKey::from_bytes(**bytes));
                self.shared.engine().device.set_private_key(key);
            }
            DeviceOp::ListenPort(port) => {
                if *port != self.shared.sockets().port() {
                    let fwmark = self.shared.engine().fwmark;
                    self.shared
                        .rebind(*port, fwmark)
                        .map_err(|e| Errno::from_io_error(&e))?;
                    self.shared.engine().device.clear_sticky_sources();
                }
            }
            DeviceOp::Fwmark(mark) => {
                if *mark != self.shared.engine().fwmark {
                    self.shared
                        .sockets()
                        .set_fwmark(*mark)
                        .map_err(|e| Errno::from_io_error(&e))?;
                    let mut engine = self.shared.engine();
                    engine.fwmark = *mark;
                    engine.device.clear_sticky_sources();
                }
            }
            DeviceOp::ReplacePeers => self.shared.engine().device.remove_all_peers(),
        }
        Ok(())
    }

    fn apply_peer_update(&self, update: &PeerUpdate, now: Now) {
        let mut engine = self.shared.engine();
        let device = &mut engine.device;
        let public = PublicKey(update.public_key);
        if device.public_key() == Some(public) {
            return;
        }
        let existing = device.peer_id(&public);
        if update.remove {
            if let Some(id) = existing {
                device.remove_peer(id);
            }
            return;
        }
        if update.update_only && existing.is_none() {
            return;
        }
        let Some(id) = device.add_peer(public) else {
            return;
        };
        let mut keepalive = None;
        for op in &update.ops {
            match op {
                PeerOp::PresharedKey(k) => device.set_preshared_key(id, SymmetricKey(**k)),
                PeerOp::Endpoint(addr) => device.set_endpoint(id, *addr),
                PeerOp::PersistentKeepalive(secs) => keepalive = Some(*secs),
                PeerOp::ReplaceAllowedIps => device.clear_allowed_ips(id),
                PeerOp::AddAllowedIp(ip, cidr) => {
                    // The parser checked the prefix length, so this cannot fail.
                    let _ = device.add_allowed_ip(id, *ip, *cidr);
                }
                PeerOp::RemoveAllowedIp(ip, cidr) => {
                    let _ = device.remove_allowed_ip(id, *ip, *cidr);
                }
            }
        }
        if let Some(secs) = keepalive {
            device.set_persistent_keepalive(now, id, secs);
        }
        let pending = drain(device);
        self.shared.after_engine_change(&mut engine);
        drop(engine);
        self.shared.send_all(pending);
    }
}

impl UapiHandler for ConfigHandler {
    fn get(&mut self) -> DeviceSnapshot {
        let listen_port = self.shared.sockets().port();
        let engine = self.shared.engine();
        let device = &engine.device;
        let peers = device
            .peer_ids()
            .into_iter()
            .filter_map(|id| {
                let peer = device.peer(id)?;
                Some(PeerSnapshot {
                    public_key: peer.public_key.0,
                    preshared_key: Zeroizing::new(*peer.preshared_key.as_bytes()),
                    endpoint: peer.endpoint.map(|e| e.addr),
                    last_handshake: peer
                        .last_handshake
                        .and_then(|t| t.duration_since(UNIX_EPOCH).ok()),
                    tx_bytes: peer.tx_bytes,
                    rx_bytes: peer.rx_bytes,
                    persistent_keepalive: peer.timers.persistent_keepalive_interval.as_secs()
                        as u16,
                    allowed_ips: device.allowed_ips().prefixes_of(id).collect(),
                })
            })
            .collect();
        DeviceSnapshot {
            private_key: device.private_key().map(|k| k.to_bytes()),
            listen_port,
            fwmark: engine.fwmark,
            peers,
        }
    }

    fn set(&mut self, request: SetRequest) -> Result<(), Errno> {
        for op in &request.device {
            self.apply_device_op(op)?;
        }
        let now = clock::now();
        for update in &request.peers {
            self.apply_peer_update(update, now);
        }
        Ok(())
    }
}
