//! The device's peers, kept in the slots of one vector.
//!
//! A [`PeerId`] names a slot (its low 32 bits) and the slot's generation
//! (its high 32 bits), so finding a peer is an index and a comparison, not
//! a hash lookup, and an id outlives its peer safely: once the peer is
//! removed, the slot's generation moves on and the old id finds nothing,
//! also after the slot holds a new peer. (The generation wraps after 2^32
//! reuses of one slot; an id kept that long is not a realistic case.)
//!
//! Readers that walk every peer (`get`, a metrics scrape) walk the slots in
//! order, a slice at a time, releasing the engine lock in between: the id
//! of the last peer read is the cursor, and it stays valid whatever happens
//! to that peer meanwhile, since it only says where to go on. Peers never
//! move between slots, so a peer present for the whole walk is read exactly
//! once; one added or removed meanwhile may or may not be. A removed peer's
//! slot is reused by the next peer added, lowest slot first, so the order is
//! the order of addition until peers are removed, and `wg setconf` (remove
//! all, then add) lists peers in the order of its file.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::peer::{Peer, PeerId};

/// One slot: its generation and its peer, if any.
#[derive(Default)]
struct Slot {
    generation: u32,
    peer: Option<Box<Peer>>,
}

/// The peers of a device, in slots (see the module documentation).
#[derive(Default)]
pub(crate) struct PeerStore {
    slots: Vec<Slot>,
    /// Empty slots below `slots.len()`, lowest first.
    free: BinaryHeap<Reverse<u32>>,
    len: usize,
}

fn slot_of(id: PeerId) -> usize {
    (id.0 & u64::from(u32::MAX)) as usize
}

fn id_of(slot: usize, generation: u32) -> PeerId {
    PeerId(u64::from(generation) << 32 | slot as u64)
}

impl PeerStore {
    /// Number of peers.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Makes room for `more` peers beyond the free slots.
    pub(crate) fn reserve(&mut self, more: usize) {
        self.slots.reserve(more.saturating_sub(self.free.len()));
    }

    /// Stores a peer in the lowest free slot and returns its id.
    ///
    /// # Panics
    /// With 2^32 peers at once (the device caps far lower).
    pub(crate) fn insert(&mut self, peer: Box<Peer>) -> PeerId {
        let slot = match self.free.pop() {
            Some(Reverse(slot)) => slot as usize,
            None => {
                assert!(self.slots.len() < u32::MAX as usize, "peer slots exhausted");
                self.slots.push(Slot::default());
                self.slots.len() - 1
            }
        };
        let entry = &mut self.slots[slot];
        entry.peer = Some(peer);
        self.len += 1;
        id_of(slot, entry.generation)
    }

    /// Removes and returns the peer `id`, if it is still there.
    pub(crate) fn remove(&mut self, id: PeerId) -> Option<Box<Peer>> {
        let slot = slot_of(id);
        let entry = self.slots.get_mut(slot)?;
        if id_of(slot, entry.generation) != id {
            return None;
        }
        let peer = entry.peer.take()?;
        entry.generation = entry.generation.wrapping_add(1);
        self.free.push(Reverse(slot as u32));
        self.len -= 1;
        Some(peer)
    }

    /// The peer `id`, if it is still there.
    #[inline]
    pub(crate) fn get(&self, id: PeerId) -> Option<&Peer> {
        let slot = slot_of(id);
        let entry = self.slots.get(slot)?;
        if id_of(slot, entry.generation) != id {
            return None;
        }
        entry.peer.as_deref()
    }

    /// The peer `id`, if it is still there, for changing.
    #[inline]
    pub(crate) fn get_mut(&mut self, id: PeerId) -> Option<&mut Peer> {
        let slot = slot_of(id);
        let entry = self.slots.get_mut(slot)?;
        if id_of(slot, entry.generation) != id {
            return None;
        }
        entry.peer.as_deref_mut()
    }

    /// Whether the peer `id` is still there.
    pub(crate) fn contains(&self, id: PeerId) -> bool {
        self.get(id).is_some()
    }

    /// Every peer with its id, in slot order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (PeerId, &Peer)> + '_ {
        self.iter_from(0)
    }

    /// Every peer, in slot order, for changing.
    pub(crate) fn values_mut(&mut self) -> impl Iterator<Item = &mut Peer> + '_ {
        self.slots
            .iter_mut()
            .filter_map(|entry| entry.peer.as_deref_mut())
    }

    /// The peers in the slots after the one of `after` (from the first slot
    /// when `None`), in slot order. `after` need not be a peer any more.
    pub(crate) fn iter_after(
        &self,
        after: Option<PeerId>,
    ) -> impl Iterator<Item = (PeerId, &Peer)> + '_ {
        self.iter_from(after.map_or(0, |id| slot_of(id).saturating_add(1)))
    }

    fn iter_from(&self, first: usize) -> impl Iterator<Item = (PeerId, &Peer)> + '_ {
        let tail = self.slots.get(first..).unwrap_or_default();
        tail.iter().enumerate().filter_map(move |(offset, entry)| {
            let peer = entry.peer.as_deref()?;
            Some((id_of(first + offset, entry.generation), peer))
        })
    }

    /// Checks the count and the free list against the slots.
    pub(crate) fn check_invariants(&self) {
        let occupied = self.slots.iter().filter(|e| e.peer.is_some()).count();
        assert_eq!(occupied, self.len, "invariant: peer count out of step");
        assert_eq!(
            self.slots.len() - occupied,
            self.free.len(),
            "invariant: free peer slots out of step"
        );
        assert!(
            self.free
                .iter()
                .all(|Reverse(slot)| self.slots[*slot as usize].peer.is_none()),
            "invariant: a free peer slot holds a peer"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::PublicKey;

    fn peer(byte: u8) -> Box<Peer> {
        Box::new(Peer::new(PublicKey([byte; 32])))
    }

    #[test]
    fn a_removed_peers_id_never_finds_the_slots_next_peer() {
        let mut store = PeerStore::default();
        let first = store.insert(peer(1));
        assert!(store.remove(first).is_some());
        let second = store.insert(peer(2));
        assert_eq!(slot_of(first), slot_of(second), "the slot is reused");
        assert_ne!(first, second);
        assert!(store.get(first).is_none());
        assert!(store.remove(first).is_none());
        assert_eq!(
            store.get(second).map(|p| p.public_key),
            Some(PublicKey([2; 32]))
        );
        assert_eq!(store.len(), 1);
        store.check_invariants();
    }

    #[test]
    fn the_lowest_free_slot_is_reused_first() {
        let mut store = PeerStore::default();
        let ids: Vec<PeerId> = (0..6).map(|i| store.insert(peer(i))).collect();
        for &id in ids.iter().rev() {
            store.remove(id);
        }
        let again: Vec<usize> = (0..6).map(|i| slot_of(store.insert(peer(i)))).collect();
        assert_eq!(again, (0..6).collect::<Vec<_>>());
        store.check_invariants();
    }

    #[test]
    fn a_walk_resumes_after_a_removed_cursor() {
        let mut store = PeerStore::default();
        let ids: Vec<PeerId> = (0..5).map(|i| store.insert(peer(i))).collect();
        store.remove(ids[2]);
        let rest: Vec<PeerId> = store.iter_after(Some(ids[2])).map(|(id, _)| id).collect();
        assert_eq!(rest, ids[3..].to_vec());
        let all: Vec<PeerId> = store.iter().map(|(id, _)| id).collect();
        assert_eq!(all, vec![ids[0], ids[1], ids[3], ids[4]]);
        assert_eq!(store.iter_after(Some(PeerId(u64::MAX))).count(), 0);
    }
}
