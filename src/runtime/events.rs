//! The engine's outbox and its events as log lines.

use ferroguard_proto::device::{Device, Event, Transmit};

/// Takes every datagram waiting in the engine's outbox, and logs the
/// engine's events when debug logging is on.
pub(super) fn drain(device: &mut Device) -> Vec<Transmit> {
    if log::log_enabled!(log::Level::Debug) {
        log_events(device);
    }
    std::iter::from_fn(|| device.poll_transmit()).collect()
}

/// Logs engine events, naming peers by a short public-key id.
fn log_events(device: &mut Device) {
    while let Some(event) = device.poll_event() {
        let peer = match event {
            Event::HandshakeInitiated { peer, .. }
            | Event::HandshakeCompleted { peer }
            | Event::HandshakeAnswered { peer }
            | Event::HandshakeGaveUp { peer }
            | Event::KeysZeroed { peer } => peer,
        };
        let id = device
            .peer(peer)
            .map_or_else(|| "?".to_string(), |p| p.public_key().short_id());
        let endpoint = device.peer(peer).and_then(|p| p.endpoint()).map(|e| e.addr);
        match event {
            Event::HandshakeInitiated { retry, .. } => log::debug!(
                "peer {id}: sending handshake initiation{} to {endpoint:?}",
                if retry { " (retry)" } else { "" }
            ),
            Event::HandshakeCompleted { .. } => {
                log::debug!("peer {id}: handshake complete, endpoint {endpoint:?}")
            }
            Event::HandshakeAnswered { .. } => {
                log::debug!("peer {id}: answered a handshake initiation from {endpoint:?}")
            }
            Event::HandshakeGaveUp { .. } => {
                log::info!("peer {id}: no handshake response after 20 attempts, giving up")
            }
            Event::KeysZeroed { .. } => log::debug!("peer {id}: session keys zeroed"),
        }
    }
}
