//! The per-peer send bound of a data path with several sending threads.
//!
//! When several threads ("holders": the daemon's lanes) reserve counters of
//! one peer and each seals and sends its own batch, a holder that reserved a
//! batch and then stalls (descheduled between its reservation and its send)
//! lets the others send ahead of it. The receiver accepts a counter only if
//! it is at most [`WINDOW_SIZE`](crate::replay::WINDOW_SIZE) (8128) behind
//! the highest counter it has accepted, so once the others are that far
//! ahead the stalled batch would be refused as replays although it arrived
//! once.
//!
//! [`SendHolds`] keeps, per peer and keypair, the first counter each holder
//! reserved and has not yet released (a *hold*). A holder releases all its
//! holds once everything it reserved has been handed to the network. A
//! reservation is refused (the caller must wait) when the peer's next
//! counter would be [`SEND_LEAD_LIMIT`] or more ahead of the oldest hold of
//! that keypair. So while a counter `c` is reserved and not yet sent, every
//! counter of the same keypair sent before it is below `c + SEND_LEAD_LIMIT`,
//! and `c` arrives inside the receiver's window unless the network itself
//! reorders by the rest of the window.
//!
//! The accounting is exact and clock-free; what a holder does when it must
//! wait (and for how long) is the runtime's decision.

use rustc_hash::FxHashMap;

use crate::peer::PeerId;

/// How far a peer's next counter may run ahead of its oldest counter that
/// is reserved but not yet sent: half the receiver's replay window (8128).
/// The other half is left for what is sent without a hold (staged packets,
/// at most 128 per flush, and keepalives) and for reordering on the path.
pub const SEND_LEAD_LIMIT: u64 = 4096;

/// Who holds reservations: the daemon's lane index, say. Small numbers.
pub type Holder = usize;

/// A keypair of a peer, by its local index.
type KeypairKey = (PeerId, u32);

/// The holds of every holder (see the module documentation).
#[derive(Debug)]
pub struct SendHolds {
    /// The lead allowed: [`SEND_LEAD_LIMIT`] unless lowered (tests).
    limit: u64,
    /// Per peer and keypair: (holder, the first counter it reserved).
    by_keypair: FxHashMap<KeypairKey, Vec<(Holder, u64)>>,
    /// Per holder: the keypairs it holds counters of.
    by_holder: Vec<Vec<KeypairKey>>,
}

impl Default for SendHolds {
    fn default() -> Self {
        SendHolds::new()
    }
}

impl SendHolds {
    /// No holds.
    pub fn new() -> Self {
        SendHolds {
            limit: SEND_LEAD_LIMIT,
            by_keypair: FxHashMap::default(),
            by_holder: Vec::new(),
        }
    }

    /// Lowers the lead allowed to `limit` (at least 1, at most
    /// [`SEND_LEAD_LIMIT`]): for tests that make the holders wait often.
    pub fn set_limit(&mut self, limit: u64) {
        self.limit = limit.clamp(1, SEND_LEAD_LIMIT);
    }

    /// The lead allowed.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// The oldest counter of the keypair (`peer`, `local_index`) that some
    /// holder reserved and has not released.
    pub fn oldest(&self, peer: PeerId, local_index: u32) -> Option<u64> {
        let holds = self.by_keypair.get(&(peer, local_index))?;
        holds.iter().map(|&(_, first)| first).min()
    }

    /// True if reserving `next` (the keypair's next counter) would put it
    /// the limit ([`SEND_LEAD_LIMIT`]) or more ahead of the oldest hold.
    pub fn must_wait(&self, peer: PeerId, local_index: u32, next: u64) -> bool {
        self.oldest(peer, local_index)
            .is_some_and(|oldest| next.saturating_sub(oldest) >= self.limit)
    }

    /// Records that `holder` reserved `counter` of the keypair: the start of
    /// its hold unless it already holds an older one there.
    pub fn note(&mut self, holder: Holder, peer: PeerId, local_index: u32, counter: u64) {
        let key = (peer, local_index);
        let holds = self.by_keypair.entry(key).or_default();
        if holds.iter().any(|&(h, _)| h == holder) {
            return; // counters only grow: the first one stays the oldest
        }
        holds.push((holder, counter));
        self.index_holder(holder, key);
    }

    /// [`SendHolds::must_wait`] and, if not, [`SendHolds::note`], with one
    /// look-up: true if `holder` may reserve `next` (and it is noted).
    pub fn try_hold(&mut self, holder: Holder, peer: PeerId, local_index: u32, next: u64) -> bool {
        let key = (peer, local_index);
        let Some(holds) = self.by_keypair.get_mut(&key) else {
            self.by_keypair.insert(key, vec![(holder, next)]);
            self.index_holder(holder, key);
            return true;
        };
        let mut mine = false;
        let mut oldest = u64::MAX;
        for &(h, first) in holds.iter() {
            mine |= h == holder;
            oldest = oldest.min(first);
        }
        if next.saturating_sub(oldest) >= self.limit {
            return false;
        }
        if !mine {
            holds.push((holder, next));
            self.index_holder(holder, key);
        }
        true
    }

    /// Adds `key` to the keypairs `holder` holds counters of.
    fn index_holder(&mut self, holder: Holder, key: KeypairKey) {
        if self.by_holder.len() <= holder {
            self.by_holder.resize_with(holder + 1, Vec::new);
        }
        self.by_holder[holder].push(key);
    }

    /// Ends every hold of `holder`: all it reserved was handed to the
    /// network (or given up). Returns how many holds ended.
    pub fn release(&mut self, holder: Holder) -> usize {
        let Some(keys) = self.by_holder.get_mut(holder) else {
            return 0;
        };
        let released = keys.len();
        for key in keys.drain(..) {
            if let Some(holds) = self.by_keypair.get_mut(&key) {
                holds.retain(|&(h, _)| h != holder);
                if holds.is_empty() {
                    self.by_keypair.remove(&key);
                }
            }
        }
        released
    }

    /// True if `holder` holds anything.
    pub fn holds_any(&self, holder: Holder) -> bool {
        self.by_holder.get(holder).is_some_and(|k| !k.is_empty())
    }

    /// The number of holds of all holders together.
    pub fn len(&self) -> usize {
        self.by_holder.iter().map(Vec::len).sum()
    }

    /// True if nobody holds anything.
    pub fn is_empty(&self) -> bool {
        self.by_keypair.is_empty()
    }

    /// Checks that both indexes agree; panics if not (part of
    /// `Device::check_invariants`).
    pub fn assert_consistent(&self) {
        let mut counted = 0;
        for (holder, keys) in self.by_holder.iter().enumerate() {
            for key in keys {
                let holds = &self.by_keypair[key];
                assert_eq!(holds.iter().filter(|&&(h, _)| h == holder).count(), 1);
                counted += 1;
            }
        }
        let indexed: usize = self.by_keypair.values().map(Vec::len).sum();
        assert_eq!(counted, indexed, "a hold missing from one index");
        assert!(self.by_keypair.values().all(|h| !h.is_empty()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: PeerId = PeerId(7);

    #[test]
    fn the_oldest_hold_bounds_the_lead_until_released() {
        let mut holds = SendHolds::new();
        assert!(!holds.must_wait(P, 1, 1_000_000));
        holds.note(0, P, 1, 10);
        holds.note(1, P, 1, 11);
        holds.note(0, P, 1, 12); // later counters of holder 0 change nothing
        assert_eq!(holds.oldest(P, 1), Some(10));
        assert!(!holds.must_wait(P, 1, 10 + SEND_LEAD_LIMIT - 1));
        assert!(holds.must_wait(P, 1, 10 + SEND_LEAD_LIMIT));
        // Another keypair, another peer: not bound by these holds.
        assert!(!holds.must_wait(P, 2, 10 + SEND_LEAD_LIMIT));
        assert!(!holds.must_wait(PeerId(8), 1, 10 + SEND_LEAD_LIMIT));
        assert_eq!(holds.release(0), 1);
        assert_eq!(holds.oldest(P, 1), Some(11));
        assert!(!holds.must_wait(P, 1, 10 + SEND_LEAD_LIMIT));
        holds.assert_consistent();
        assert_eq!(holds.release(1), 1);
        assert!(holds.is_empty());
        assert_eq!(holds.release(5), 0);
        holds.set_limit(0);
        assert_eq!(holds.limit(), 1);
        holds.set_limit(u64::MAX);
        assert_eq!(holds.limit(), SEND_LEAD_LIMIT);
        holds.assert_consistent();
    }

    #[test]
    fn try_hold_is_must_wait_then_note() {
        let mut holds = SendHolds::new();
        assert!(holds.try_hold(0, P, 1, 10));
        assert!(holds.try_hold(1, P, 1, 11));
        assert!(holds.try_hold(0, P, 1, 12));
        assert_eq!(holds.oldest(P, 1), Some(10));
        assert!(holds.try_hold(1, P, 1, 10 + SEND_LEAD_LIMIT - 1));
        assert!(!holds.try_hold(1, P, 1, 10 + SEND_LEAD_LIMIT));
        assert!(!holds.try_hold(2, P, 1, 10 + SEND_LEAD_LIMIT));
        assert!(!holds.holds_any(2), "a refused holder holds nothing");
        assert_eq!(holds.len(), 2);
        holds.assert_consistent();
        holds.release(0);
        assert!(holds.try_hold(2, P, 1, 10 + SEND_LEAD_LIMIT));
        holds.assert_consistent();
    }

    #[test]
    fn a_counter_below_the_hold_never_underflows() {
        // A stale hold of a dropped keypair whose local index came back.
        let mut holds = SendHolds::new();
        holds.note(3, P, 1, 50_000);
        assert!(!holds.must_wait(P, 1, 0));
        assert!(holds.holds_any(3));
        assert!(!holds.holds_any(0));
        assert_eq!(holds.len(), 1);
    }
}
