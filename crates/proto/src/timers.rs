//! The five per-peer timers of WireGuard, as deadlines instead of callbacks.
//!
//! The kernel arms kernel timers from event hooks (`data_sent`,
//! `handshake_initiated`, ...). Here each timer is an optional deadline set by
//! the same hooks with the same rules; [`Timers::next_deadline`] tells the
//! caller exactly when to call back, and [`Timers::take_expired`] hands out
//! the timers that are due, one at a time, disarming each.

use std::time::{Duration, Instant};

use crate::constants::{KEEPALIVE_TIMEOUT, REKEY_TIMEOUT, ZERO_KEY_MATERIAL_AFTER};

/// A timer that expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerEvent {
    /// No response to our initiation: retry, or give up.
    RetransmitHandshake,
    /// We received data and sent nothing back: send a keepalive.
    SendKeepalive,
    /// We sent data and heard nothing back: start a new handshake.
    NewHandshake,
    /// No new session for 540 s: wipe every key.
    ZeroKeyMaterial,
    /// The configured persistent keepalive interval passed.
    PersistentKeepalive,
}

/// Deadlines and counters of one peer's timers.
#[derive(Debug, Default, Clone)]
pub struct Timers {
    retransmit_handshake: Option<Instant>,
    send_keepalive: Option<Instant>,
    new_handshake: Option<Instant>,
    zero_key_material: Option<Instant>,
    persistent_keepalive: Option<Instant>,
    /// Retries of the current handshake.
    pub handshake_attempts: u32,
    need_another_keepalive: bool,
    /// Whether the initiator already rekeyed at 165 s for the current session.
    pub sent_lastminute_handshake: bool,
    /// Persistent keepalive interval; zero disables it.
    pub persistent_keepalive_interval: Duration,
}

impl Timers {
    fn all(&self) -> [(Option<Instant>, TimerEvent); 5] {
        [
            (self.retransmit_handshake, TimerEvent::RetransmitHandshake),
            (self.send_keepalive, TimerEvent::SendKeepalive),
            (self.new_handshake, TimerEvent::NewHandshake),
            (self.zero_key_material, TimerEvent::ZeroKeyMaterial),
            (self.persistent_keepalive, TimerEvent::PersistentKeepalive),
        ]
    }

    /// The earliest armed deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.all().iter().filter_map(|(d, _)| *d).min()
    }

    /// Disarms and returns the earliest timer due at `now`, if any.
    pub fn take_expired(&mut self, now: Instant) -> Option<TimerEvent> {
        let (_, event) = self
            .all()
            .into_iter()
            .filter_map(|(d, e)| d.filter(|d| *d <= now).map(|d| (d, e)))
            .min_by_key(|(d, _)| *d)?;
        *self.slot(event) = None;
        Some(event)
    }

    fn slot(&mut self, event: TimerEvent) -> &mut Option<Instant> {
        match event {
            TimerEvent::RetransmitHandshake => &mut self.retransmit_handshake,
            TimerEvent::SendKeepalive => &mut self.send_keepalive,
            TimerEvent::NewHandshake => &mut self.new_handshake,
            TimerEvent::ZeroKeyMaterial => &mut self.zero_key_material,
            TimerEvent::PersistentKeepalive => &mut self.persistent_keepalive,
        }
    }

    /// True if the timer is armed.
    pub fn is_pending(&self, event: TimerEvent) -> bool {
        self.all().iter().any(|(d, e)| *e == event && d.is_some())
    }

    /// Disarms every timer (peer removed or all keys wiped).
    pub fn stop_all(&mut self) {
        let interval = self.persistent_keepalive_interval;
        *self = Timers {
            persistent_keepalive_interval: interval,
            ..Timers::default()
        };
    }

    /// A non-keepalive transport packet was sent.
    pub fn data_sent(&mut self, now: Instant, jitter: Duration) {
        if self.new_handshake.is_none() {
            self.new_handshake = Some(now + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + jitter);
        }
    }

    /// A non-empty transport packet was received.
    pub fn data_received(&mut self, now: Instant) {
        if self.send_keepalive.is_none() {
            self.send_keepalive = Some(now + KEEPALIVE_TIMEOUT);
        } else {
            self.need_another_keepalive = true;
        }
    }

    /// Any authenticated packet (handshake, keepalive, data) was sent.
    pub fn any_authenticated_packet_sent(&mut self) {
        self.send_keepalive = None;
    }

    /// Any authenticated packet was received.
    pub fn any_authenticated_packet_received(&mut self) {
        self.new_handshake = None;
    }

    /// An initiation was sent.
    pub fn handshake_initiated(&mut self, now: Instant, jitter: Duration) {
        self.retransmit_handshake = Some(now + REKEY_TIMEOUT + jitter);
    }

    /// A handshake completed (response consumed, or first data with `next`).
    pub fn handshake_complete(&mut self) {
        self.retransmit_handshake = None;
        self.handshake_attempts = 0;
        self.sent_lastminute_handshake = false;
    }

    /// New keys were derived.
    pub fn session_derived(&mut self, now: Instant) {
        self.zero_key_material = Some(now + ZERO_KEY_MATERIAL_AFTER);
    }

    /// Any authenticated packet was sent or received.
    pub fn any_authenticated_packet_traversal(&mut self, now: Instant) {
        if !self.persistent_keepalive_interval.is_zero() {
            self.persistent_keepalive = Some(now + self.persistent_keepalive_interval);
        }
    }

    /// After a send-keepalive expiry: re-arm once more if data kept arriving.
    pub fn keepalive_sent_by_timer(&mut self, now: Instant) {
        if self.need_another_keepalive {
            self.need_another_keepalive = false;
            self.send_keepalive = Some(now + KEEPALIVE_TIMEOUT);
        }
    }

    /// After the handshake gave up: stop keepalives, schedule key wiping.
    pub fn handshake_gave_up(&mut self, now: Instant) {
        self.send_keepalive = None;
        if self.zero_key_material.is_none() {
            self.zero_key_material = Some(now + ZERO_KEY_MATERIAL_AFTER);
        }
    }

    /// Changes the persistent keepalive interval (0 disables it).
    pub fn set_persistent_keepalive(&mut self, interval: Duration) {
        self.persistent_keepalive_interval = interval;
        if interval.is_zero() {
            self.persistent_keepalive = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_order_and_disarming() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        t.handshake_initiated(t0, Duration::from_millis(100));
        t.data_received(t0);
        t.session_derived(t0);
        assert_eq!(t.next_deadline(), Some(t0 + Duration::from_millis(5100)));
        assert_eq!(t.take_expired(t0 + Duration::from_secs(4)), None);
        let late = t0 + Duration::from_secs(11);
        assert_eq!(t.take_expired(late), Some(TimerEvent::RetransmitHandshake));
        assert_eq!(t.take_expired(late), Some(TimerEvent::SendKeepalive));
        assert_eq!(t.take_expired(late), None);
        assert_eq!(t.next_deadline(), Some(t0 + ZERO_KEY_MATERIAL_AFTER));
    }

    #[test]
    fn data_sent_does_not_push_back_a_pending_new_handshake() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        t.data_sent(t0, Duration::ZERO);
        t.data_sent(t0 + Duration::from_secs(3), Duration::ZERO);
        assert_eq!(t.next_deadline(), Some(t0 + Duration::from_secs(15)));
        t.any_authenticated_packet_received();
        assert_eq!(t.next_deadline(), None);
    }

    #[test]
    fn keepalive_rearms_once_when_more_data_arrived() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        t.data_received(t0);
        t.data_received(t0 + Duration::from_secs(1));
        let fire = t0 + KEEPALIVE_TIMEOUT;
        assert_eq!(t.take_expired(fire), Some(TimerEvent::SendKeepalive));
        t.keepalive_sent_by_timer(fire);
        assert_eq!(t.next_deadline(), Some(fire + KEEPALIVE_TIMEOUT));
        t.take_expired(fire + KEEPALIVE_TIMEOUT);
        t.keepalive_sent_by_timer(fire + KEEPALIVE_TIMEOUT);
        assert_eq!(t.next_deadline(), None);
    }

    #[test]
    fn persistent_keepalive_follows_traffic() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        t.any_authenticated_packet_traversal(t0);
        assert_eq!(t.next_deadline(), None, "disabled by default");
        t.set_persistent_keepalive(Duration::from_secs(25));
        t.any_authenticated_packet_traversal(t0);
        assert_eq!(t.next_deadline(), Some(t0 + Duration::from_secs(25)));
        t.set_persistent_keepalive(Duration::ZERO);
        assert_eq!(t.next_deadline(), None);
    }
}
