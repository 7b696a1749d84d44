//! Finding a peer: by session index ([`IndexTable`]) and by public key
//! ([`PublicKeyTable`]), as the kernel's `peerlookup.c` keeps both.
//!
//! An index names one handshake or keypair of one peer. The value is random
//! (not a counter) so that it reveals neither how many peers nor how many
//! handshakes a device has.

use std::collections::HashMap;

use rustc_hash::FxBuildHasher;

use crate::crypto::PublicKey;
use crate::peer::PeerId;

/// The peers by static public key.
///
/// Hashed with the standard library's keyed SipHash, unlike the index
/// table: the key looked up when an initiation arrives is the one its
/// sender chose (anyone who knows our public key can make one decrypt), so
/// the keys are not ours to trust.
#[derive(Default, Debug)]
pub struct PublicKeyTable {
    peers: HashMap<PublicKey, PeerId>,
}

impl PublicKeyTable {
    /// The peer with this public key.
    pub fn get(&self, public_key: &PublicKey) -> Option<PeerId> {
        self.peers.get(public_key).copied()
    }

    /// Records `peer` as the owner of `public_key`.
    pub fn insert(&mut self, public_key: PublicKey, peer: PeerId) {
        self.peers.insert(public_key, peer);
    }

    /// Forgets `public_key`.
    pub fn remove(&mut self, public_key: &PublicKey) {
        self.peers.remove(public_key);
    }

    /// Makes room for `additional` more keys at once (see
    /// `Device::reserve_peers`).
    pub fn reserve(&mut self, additional: usize) {
        self.peers.reserve(additional);
    }

    /// Keys recorded.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether no key is recorded.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }
}

/// The table of session indices in use.
///
/// Hashed with Fx, not SipHash: every transport message costs a lookup
/// here, and Fx is several times cheaper. A keyed hash is not needed for
/// flooding resistance because only this device inserts, and its keys are
/// random values that nobody else chooses; a lookup of a value that is not
/// in the table (anything the network sends) inserts nothing.
#[derive(Default, Debug)]
pub struct IndexTable {
    entries: HashMap<u32, PeerId, FxBuildHasher>,
}

impl IndexTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Picks a random index that is not in use and assigns it to `peer`.
    pub fn allocate(&mut self, rng: &mut impl rand_core::RngCore, peer: PeerId) -> u32 {
        loop {
            let index = rng.next_u32();
            if let std::collections::hash_map::Entry::Vacant(slot) = self.entries.entry(index) {
                slot.insert(peer);
                return index;
            }
        }
    }

    /// The peer an index belongs to.
    pub fn get(&self, index: u32) -> Option<PeerId> {
        self.entries.get(&index).copied()
    }

    /// Frees an index; a no-op for an index not in use.
    pub fn remove(&mut self, index: u32) {
        self.entries.remove(&index);
    }

    /// Number of indices in use.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no index is in use.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::SeedableRng;

    /// A generator that repeats values, to exercise collision handling.
    struct Repeating(u32);
    impl rand_core::RngCore for Repeating {
        fn next_u32(&mut self) -> u32 {
            self.0 = (self.0 + 1) % 3;
            self.0
        }
        fn next_u64(&mut self) -> u64 {
            self.next_u32() as u64
        }
        fn fill_bytes(&mut self, dst: &mut [u8]) {
            dst.fill(self.next_u32() as u8)
        }
    }

    #[test]
    fn indices_are_unique_even_when_the_generator_repeats() {
        let mut table = IndexTable::new();
        let mut rng = Repeating(0);
        let a = table.allocate(&mut rng, PeerId(1));
        let b = table.allocate(&mut rng, PeerId(2));
        let c = table.allocate(&mut rng, PeerId(3));
        assert_ne!(a, b);
        assert_ne!(b, c);
        assert_ne!(a, c);
        assert_eq!(table.get(b), Some(PeerId(2)));
        table.remove(b);
        assert_eq!(table.get(b), None);
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn many_random_indices() {
        let mut table = IndexTable::new();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let mut seen = std::collections::HashSet::new();
        for i in 0..10_000 {
            assert!(seen.insert(table.allocate(&mut rng, PeerId(i))));
        }
        assert_eq!(table.len(), 10_000);
    }
}
