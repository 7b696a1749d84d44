//! Structural checks of the whole table, run after every mutation with
//! the `debug-checks` feature and from the tests.

use super::{prefix_slot, AllowedIps, Entry, Family, Key, Trie, LEAF, NODE_PREFIXES, NONE, STRIDE};
use std::collections::HashSet;
use std::hash::Hash;

impl<T: Copy + Eq + Hash> AllowedIps<T> {
    /// Panics with a description of the first broken invariant.
    pub(super) fn check_invariants(&self) {
        let mut seen = HashSet::new();
        check_trie(&self.v4, Family::V4, &self.entries, &mut seen);
        check_trie(&self.v6, Family::V6, &self.entries, &mut seen);
        let used = self.entries.iter().filter(|slot| slot.is_some()).count();
        assert_eq!(
            used, self.len,
            "allowedips: len {} but {used} entries",
            self.len
        );
        assert_eq!(
            seen.len(),
            self.len,
            "allowedips: {} entries in the tries for len {}",
            seen.len(),
            self.len
        );
        assert_eq!(
            self.entries.len() - used,
            self.free_entries.len(),
            "allowedips: free entry list does not match the free slots"
        );
        for &free in &self.free_entries {
            assert!(
                matches!(self.entries.get(free as usize), Some(None)),
                "allowedips: free entry {free} is in use or out of range"
            );
        }
        self.check_lists();
    }

    /// Every value's list is well linked, holds only that value's
    /// entries, and the lists together cover every entry once.
    fn check_lists(&self) {
        let mut listed = 0;
        for (value, list) in &self.by_value {
            assert_ne!(list.head, NONE, "allowedips: empty list kept in the map");
            let mut previous = NONE;
            let mut index = list.head;
            while index != NONE {
                let entry = self
                    .entry(index)
                    .unwrap_or_else(|| panic!("allowedips: list links to free entry {index}"));
                assert!(
                    entry.value == *value,
                    "allowedips: entry {index} in another value's list"
                );
                assert_eq!(
                    entry.prev, previous,
                    "allowedips: broken prev link at entry {index}"
                );
                listed += 1;
                assert!(listed <= self.len, "allowedips: cycle in an entry list");
                previous = index;
                index = entry.next;
            }
            assert_eq!(
                list.tail, previous,
                "allowedips: list tail is not the last entry"
            );
        }
        assert_eq!(
            listed, self.len,
            "allowedips: {listed} listed entries for len {}",
            self.len
        );
    }
}

/// A slot to check: its encoded content, the depth and key prefix every
/// prefix below it must have.
struct Pending<K> {
    slot: u32,
    depth: u8,
    key: K,
}

/// Checks one trie; adds the entries it references to `seen`.
fn check_trie<K: Key, T>(
    trie: &Trie<K>,
    family: Family,
    entries: &[Option<Entry<T>>],
    seen: &mut HashSet<u32>,
) {
    let mut seen_nodes = HashSet::new();
    let mut seen_blocks = HashSet::new();
    let mut stack = vec![Pending {
        slot: trie.root,
        depth: 0,
        key: K::from_stored(0),
    }];
    let mut check_entry = |index: u32, min_cidr: u8, max_cidr: u8, prefix: K, prefix_len: u8| {
        assert!(
            seen.insert(index),
            "allowedips {family:?}: entry {index} stored twice"
        );
        let entry = entries
            .get(index as usize)
            .and_then(Option::as_ref)
            .unwrap_or_else(|| panic!("allowedips {family:?}: trie holds free entry {index}"));
        assert_eq!(
            entry.family, family,
            "allowedips: entry {index} in the other family's trie"
        );
        let key = K::from_stored(entry.key);
        assert_eq!(
            key.to_stored(),
            entry.key,
            "allowedips: entry {index} key too wide"
        );
        assert!(
            (min_cidr..=max_cidr).contains(&entry.cidr) && entry.cidr <= K::BITS,
            "allowedips {family:?}: entry {index} /{} out of place ({min_cidr}..={max_cidr})",
            entry.cidr
        );
        assert!(
            key.masked(entry.cidr) == key,
            "allowedips {family:?}: entry {index} has host bits"
        );
        assert!(
            key.shares_prefix(prefix, prefix_len),
            "allowedips {family:?}: entry {index} outside its subtree"
        );
    };
    while let Some(Pending { slot, depth, key }) = stack.pop() {
        if slot == NONE {
            continue;
        }
        if slot & LEAF != 0 {
            check_entry(slot & !LEAF, depth, K::BITS, key, depth);
            continue;
        }
        assert!(
            seen_nodes.insert(slot),
            "allowedips {family:?}: node {slot} reached twice"
        );
        let node = trie
            .nodes
            .get(slot as usize)
            .unwrap_or_else(|| panic!("allowedips {family:?}: node index {slot} out of range"));
        assert!(
            node.depth % STRIDE == 0 && node.depth >= depth && node.depth + STRIDE <= K::BITS,
            "allowedips {family:?}: node {slot} at depth {} below a slot at depth {depth}",
            node.depth
        );
        assert!(
            node.key.masked(node.depth) == node.key,
            "allowedips {family:?}: node {slot} key has host bits"
        );
        assert!(
            node.key.shares_prefix(key, depth),
            "allowedips {family:?}: node {slot} outside its subtree"
        );
        let things = node.occupied_children().count() + node.prefix_bits.count_ones() as usize;
        assert!(
            things >= 2,
            "allowedips {family:?}: node {slot} holds {things} things"
        );
        assert_eq!(
            node.prefix_block == NONE,
            node.prefix_bits == 0,
            "allowedips {family:?}: node {slot} prefix bits and block disagree"
        );
        let block = if node.prefix_block == NONE {
            [NONE; NODE_PREFIXES]
        } else {
            assert!(
                seen_blocks.insert(node.prefix_block),
                "allowedips {family:?}: prefix block shared"
            );
            *trie
                .blocks
                .get(node.prefix_block as usize)
                .unwrap_or_else(|| panic!("allowedips {family:?}: node {slot} block out of range"))
        };
        for (position, &entry) in block.iter().enumerate() {
            if node.prefix_bits & (1 << position) == 0 {
                continue;
            }
            check_entry(
                entry,
                node.depth,
                node.depth + STRIDE - 1,
                node.key,
                node.depth,
            );
            let (stored, cidr) = entries[entry as usize]
                .as_ref()
                .map(|e| (e.key, e.cidr))
                .unwrap_or_default();
            assert_eq!(
                prefix_slot(K::from_stored(stored), cidr, node.depth),
                position,
                "allowedips {family:?}: entry {entry} in the wrong prefix slot of node {slot}"
            );
        }
        for (chunk, &child) in node.children.iter().enumerate() {
            let shift = u32::from(K::BITS - node.depth - STRIDE);
            // chunk < 16 and the shift keeps it inside the address.
            let chunk_bits = K::from_stored((chunk as u128) << shift);
            stack.push(Pending {
                slot: child,
                depth: node.depth + STRIDE,
                key: K::from_stored(node.key.to_stored() | chunk_bits.to_stored()),
            });
        }
    }
    check_free_list(family, "node", &trie.free, &seen_nodes, trie.nodes.len());
    check_free_list(
        family,
        "prefix block",
        &trie.free_blocks,
        &seen_blocks,
        trie.blocks.len(),
    );
}

/// A free list holds each slot once, none in use (`used`), and together
/// with the used ones accounts for all `slots`.
fn check_free_list(family: Family, what: &str, free: &[u32], used: &HashSet<u32>, slots: usize) {
    let unique: HashSet<u32> = free.iter().copied().collect();
    assert_eq!(
        unique.len(),
        free.len(),
        "allowedips {family:?}: duplicate free {what}"
    );
    assert!(
        unique.is_disjoint(used),
        "allowedips {family:?}: a free {what} is in use"
    );
    assert_eq!(
        used.len() + unique.len(),
        slots,
        "allowedips {family:?}: leaked {what}s"
    );
}
