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
use ferroguard_proto::device::{Device, Now};
use ferroguard_proto::peer::PeerId;
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
    /// The device's state, read in chunks of [`GET_CHUNK`] peers with the
    /// engine lock released in between, so that `wg show` of 100 000 peers
    /// does not stall the data path for the whole walk (it took the lock for
    /// up to 0.46 s). A peer removed meanwhile is left out; one added
    /// meanwhile is not listed: each peer is read whole, as the kernel's
    /// netlink dump does across its messages.
    fn get(&mut self) -> DeviceSnapshot {
        let listen_port = self.shared.sockets().port();
        let (private_key, fwmark, ids) = {
            let engine = self.shared.engine();
            let device = &engine.device;
            (
                device.private_key().map(|k| k.to_bytes()),
                engine.fwmark,
                device.peer_ids(),
            )
        };
        let mut peers = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(GET_CHUNK) {
            let engine = self.shared.engine();
            let device = &engine.device;
            peers.extend(chunk.iter().filter_map(|&id| peer_snapshot(device, id)));
        }
        DeviceSnapshot {
            private_key,
            listen_port,
            fwmark,
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

/// Peers read per acquisition of the engine lock by a `get` (about 2 ms).
const GET_CHUNK: usize = 1000;

/// One peer as `get` reports it, or `None` if it is gone.
fn peer_snapshot(device: &Device, id: PeerId) -> Option<PeerSnapshot> {
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
        persistent_keepalive: peer.timers.persistent_keepalive_interval.as_secs() as u16,
        allowed_ips: device.allowed_ips().prefixes_of(id).collect(),
    })
}
