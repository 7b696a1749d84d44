//! Cryptokey routing: the allowed-IPs table.
//!
//! Every peer owns a set of IP prefixes. Sending, the table answers "which peer
//! handles this destination?"; receiving, "is this peer allowed to use this
//! source address?". Both are a longest-prefix match over the whole device: one
//! table per address family, each prefix owned by exactly one peer. Inserting a
//! prefix that already exists moves it to the new owner.
//!
//! # Design
//!
//! Each family is a binary trie with path compression, the layout of the Linux
//! driver: a node stores a masked key and its prefix length (`cidr`), and its
//! two children differ from it in the bit just after that prefix. Chains of
//! single-child nodes are never stored, so the depth is bounded by the number
//! of distinct branch points on a path (about log2 of the number of prefixes
//! for random routes, at most 33 or 129). A node without a value exists only as
//! a fork with exactly two children.
//!
//! Nodes live in a `Vec` arena addressed by `u32` indices instead of boxes:
//! a lookup is a walk of dependent loads in one contiguous allocation, with no
//! pointer chasing through the allocator. The hot node holds only what the walk
//! reads (key, children, prefix length and an index to the owner record):
//! 20 bytes for IPv4 and 32 for IPv6. A lookup that ends at a valued node does
//! one more load, for the owner record.
//!
//! Owner records ("entries") sit in a second arena. They form, per value, an
//! intrusive doubly linked list in insertion order, reached through a
//! `HashMap<T, list>`; this gives `prefixes_of` its order, and makes moving a
//! prefix, removing one, or removing all of a value's prefixes cost O(1) per
//! prefix plus a root-to-node walk. Nodes keep no parent index (that would be 4
//! more bytes in every hot node); removal finds the parent by walking down from
//! the root, at most 33 or 129 steps.
//!
//! Memory per prefix, with a `u32` value: one leaf node, at most one fork node
//! and one entry of 20 bytes, that is about 60 bytes for IPv4 and 84 for IPv6,
//! plus the hash map and `Vec` growth slack.
//!
//! A multibit (stride) trie would cut the number of dependent loads, at the
//! price of prefix expansion on insert and several times the memory; measured
//! with 100 000 random prefixes per family, the binary walk already stays
//! well under the 100 ns budget (see `benches/allowedips.rs`), so the simpler
//! structure was kept.
//!
//! With the `debug-checks` feature every mutation re-validates the whole
//! structure (`check_invariants`), which is quadratic over a sequence of
//! mutations: meant for tests and fuzzing only.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Index value meaning "no node" / "no entry" in the arenas.
const NONE: u32 = u32::MAX;

/// An error from [`AllowedIps`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllowedIpsError {
    /// The prefix length exceeds the address width (32 for IPv4, 128 for IPv6).
    InvalidCidr,
}

impl fmt::Display for AllowedIpsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AllowedIpsError::InvalidCidr => f.write_str("prefix length exceeds the address width"),
        }
    }
}

impl std::error::Error for AllowedIpsError {}

/// An address as an unsigned integer, most significant bit first: `u32` for
/// IPv4, `u128` for IPv6.
trait Key: Copy + Eq + fmt::Debug {
    /// Address width in bits.
    const BITS: u8;

    /// The address with every bit after the first `cidr` cleared.
    fn masked(self, cidr: u8) -> Self;

    /// Whether `self` and `other` agree on their first `cidr` bits.
    fn shares_prefix(self, other: Self, cidr: u8) -> bool;

    /// Bit number `pos` counted from the most significant one, as a child
    /// index. For `pos == BITS` the result is meaningless but does not panic.
    fn bit_at(self, pos: u8) -> usize;

    /// Number of leading bits on which `self` and `other` agree.
    fn common_prefix_len(self, other: Self) -> u8;
}

impl Key for u32 {
    const BITS: u8 = 32;

    #[inline]
    fn masked(self, cidr: u8) -> Self {
        self & mask_u32(cidr)
    }

    #[inline]
    fn shares_prefix(self, other: Self, cidr: u8) -> bool {
        (self ^ other) & mask_u32(cidr) == 0
    }

    #[inline]
    fn bit_at(self, pos: u8) -> usize {
        (self.wrapping_shl(u32::from(pos)) >> 31) as usize
    }

    #[inline]
    fn common_prefix_len(self, other: Self) -> u8 {
        // leading_zeros is at most 32, so the cast cannot truncate.
        (self ^ other).leading_zeros() as u8
    }
}

impl Key for u128 {
    const BITS: u8 = 128;

    #[inline]
    fn masked(self, cidr: u8) -> Self {
        self & mask_u128(cidr)
    }

    #[inline]
    fn shares_prefix(self, other: Self, cidr: u8) -> bool {
        (self ^ other) & mask_u128(cidr) == 0
    }

    #[inline]
    fn bit_at(self, pos: u8) -> usize {
        (self.wrapping_shl(u32::from(pos)) >> 127) as usize
    }

    #[inline]
    fn common_prefix_len(self, other: Self) -> u8 {
        // leading_zeros is at most 128, so the cast cannot truncate.
        (self ^ other).leading_zeros() as u8
    }
}

/// Network mask of an IPv4 prefix of length `cidr` (0..=32).
#[inline]
fn mask_u32(cidr: u8) -> u32 {
    // Shifting a u64 by 0..=32 never overflows; the low half is the mask.
    (u64::MAX << (32 - u32::from(cidr.min(32)))) as u32
}

/// Network mask of an IPv6 prefix of length `cidr` (0..=128).
#[inline]
fn mask_u128(cidr: u8) -> u128 {
    u128::MAX
        .checked_shl(128 - u32::from(cidr.min(128)))
        .unwrap_or(0)
}

/// One trie node. Kept small: this is all a lookup touches.
#[derive(Debug, Clone, Copy)]
struct Node<K> {
    /// The prefix, host bits cleared.
    key: K,
    /// Subtrees whose keys have bit number `cidr` equal to 0 and 1.
    children: [u32; 2],
    /// Owner record in [`AllowedIps::entries`], or `NONE` for a pure fork.
    entry: u32,
    /// Prefix length.
    cidr: u8,
}

/// A path-compressed binary trie over one address family.
#[derive(Debug, Clone)]
struct Trie<K> {
    nodes: Vec<Node<K>>,
    /// Indices of released slots in `nodes`, reused before growing.
    free: Vec<u32>,
    root: u32,
}

impl<K: Key> Trie<K> {
    const fn new() -> Self {
        Trie {
            nodes: Vec::new(),
            free: Vec::new(),
            root: NONE,
        }
    }

    fn clear(&mut self) {
        self.nodes.clear();
        self.free.clear();
        self.root = NONE;
    }

    fn node(&self, index: u32) -> &Node<K> {
        &self.nodes[index as usize]
    }

    fn node_mut(&mut self, index: u32) -> &mut Node<K> {
        &mut self.nodes[index as usize]
    }

    /// Entry index of the longest prefix containing `addr`, or `NONE`.
    #[inline]
    fn lookup(&self, addr: K) -> u32 {
        let mut best = NONE;
        let mut index = self.root;
        // `NONE` is never a valid index, so `get` doubles as the null check.
        while let Some(node) = self.nodes.get(index as usize) {
            if !node.key.shares_prefix(addr, node.cidr) {
                break;
            }
            if node.entry != NONE {
                best = node.entry;
            }
            // A full-length node has no children: both are `NONE`.
            index = node.children[addr.bit_at(node.cidr)];
        }
        best
    }

    /// The node holding exactly `key/cidr` (`key` already masked), or `NONE`.
    fn find_exact(&self, key: K, cidr: u8) -> u32 {
        let mut index = self.root;
        while let Some(node) = self.nodes.get(index as usize) {
            if node.cidr > cidr || !node.key.shares_prefix(key, node.cidr) {
                return NONE;
            }
            if node.cidr == cidr {
                return index;
            }
            index = node.children[key.bit_at(node.cidr)];
        }
        NONE
    }

    /// The node for `key/cidr` (`key` already masked), created if missing.
    /// A created node has no entry yet: the caller must give it one.
    fn find_or_insert(&mut self, key: K, cidr: u8) -> u32 {
        // Descend to the deepest node whose prefix contains key/cidr.
        let mut parent = NONE;
        let mut index = self.root;
        while let Some(node) = self.nodes.get(index as usize) {
            if node.cidr > cidr || !node.key.shares_prefix(key, node.cidr) {
                break;
            }
            if node.cidr == cidr {
                return index;
            }
            parent = index;
            index = node.children[key.bit_at(node.cidr)];
        }
        // `index` is the subtree (possibly empty) that the new prefix must
        // take the place of, become the parent of, or fork away from.
        let subtree = index;
        let created = self.allocate(key, cidr);
        if subtree == NONE {
            self.replace_child(parent, key, created);
            return created;
        }
        let subtree_key = self.node(subtree).key;
        let fork_len = cidr.min(key.common_prefix_len(subtree_key));
        if fork_len == cidr {
            // The new prefix contains the subtree (strictly: otherwise the
            // descent would have continued), so it becomes its parent.
            self.node_mut(created).children[subtree_key.bit_at(cidr)] = subtree;
            self.replace_child(parent, key, created);
        } else {
            // The two diverge at bit `fork_len`: join them under a fork.
            let fork = self.allocate(key.masked(fork_len), fork_len);
            let fork_node = self.node_mut(fork);
            fork_node.children[subtree_key.bit_at(fork_len)] = subtree;
            fork_node.children[key.bit_at(fork_len)] = created;
            self.replace_child(parent, key, fork);
        }
        created
    }

    /// Drops the value of node `target` and removes the nodes that became
    /// useless: the node itself unless it still forks, and its parent if that
    /// was a valueless fork left with a single child.
    fn remove(&mut self, target: u32) {
        let key = self.node(target).key;
        let mut grandparent = NONE;
        let mut parent = NONE;
        let mut index = self.root;
        while index != target {
            let Some(node) = self.nodes.get(index as usize) else {
                debug_assert!(false, "allowedips: node {target} not reachable");
                return;
            };
            grandparent = parent;
            parent = index;
            index = node.children[key.bit_at(node.cidr)];
        }

        let node = self.node_mut(target);
        node.entry = NONE;
        let [zero, one] = node.children;
        if zero != NONE && one != NONE {
            return; // Still needed as a fork.
        }
        let only_child = if zero != NONE { zero } else { one };
        self.replace_child(parent, key, only_child);
        self.release(target);

        if only_child != NONE || parent == NONE {
            return;
        }
        let parent_node = *self.node(parent);
        if parent_node.entry == NONE {
            // A valueless fork that just lost one of its two children.
            let [zero, one] = parent_node.children;
            let remaining = if zero != NONE { zero } else { one };
            self.replace_child(grandparent, parent_node.key, remaining);
            self.release(parent);
        }
    }

    /// Makes `child` the subtree of `parent` on the side of `key` (or the root
    /// when `parent` is `NONE`).
    fn replace_child(&mut self, parent: u32, key: K, child: u32) {
        if parent == NONE {
            self.root = child;
        } else {
            let node = self.node_mut(parent);
            node.children[key.bit_at(node.cidr)] = child;
        }
    }

    fn allocate(&mut self, key: K, cidr: u8) -> u32 {
        let node = Node {
            key,
            children: [NONE, NONE],
            entry: NONE,
            cidr,
        };
        if let Some(index) = self.free.pop() {
            *self.node_mut(index) = node;
            return index;
        }
        let index = arena_index(self.nodes.len());
        self.nodes.push(node);
        index
    }

    fn release(&mut self, index: u32) {
        if self.root == NONE {
            // The trie is empty: drop the arena contents instead of keeping
            // a free list of everything.
            self.nodes.clear();
            self.free.clear();
        } else {
            self.free.push(index);
        }
    }
}

/// Converts an arena length into the index of the next slot.
///
/// Reaching `u32::MAX` slots would take over 80 GB of nodes; memory runs
/// out long before, so this is not reachable from any input.
fn arena_index(len: usize) -> u32 {
    u32::try_from(len)
        .ok()
        .filter(|&index| index != NONE)
        .expect("allowedips arena exceeds u32 indices")
}

/// Address family of an entry, selecting the trie its node lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

/// Owner record of one prefix, linked into its value's list.
#[derive(Debug, Clone, Copy)]
struct Entry<T> {
    value: T,
    family: Family,
    /// The trie node holding the prefix.
    node: u32,
    /// Neighbours in the value's insertion-ordered list.
    prev: u32,
    next: u32,
}

/// First and last entry of one value's list.
#[derive(Debug, Clone, Copy)]
struct EntryList {
    head: u32,
    tail: u32,
}

/// The cryptokey-routing table: longest-prefix match over IPv4 and IPv6
/// prefixes, each owned by one value (a peer id).
#[derive(Debug, Clone)]
pub struct AllowedIps<T> {
    v4: Trie<u32>,
    v6: Trie<u128>,
    /// Owner records; `None` marks a free slot (listed in `free_entries`).
    entries: Vec<Option<Entry<T>>>,
    free_entries: Vec<u32>,
    by_value: HashMap<T, EntryList>,
    len: usize,
}

impl<T: Copy + Eq + Hash> Default for AllowedIps<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Copy + Eq + Hash> AllowedIps<T> {
    /// An empty table.
    pub fn new() -> Self {
        AllowedIps {
            v4: Trie::new(),
            v6: Trie::new(),
            entries: Vec::new(),
            free_entries: Vec::new(),
            by_value: HashMap::new(),
            len: 0,
        }
    }

    /// Routes `addr/cidr` (host bits ignored) to `value`.
    ///
    /// A prefix already owned by another value moves to `value` and goes to
    /// the end of its list; one already owned by `value` keeps its place.
    pub fn insert(&mut self, addr: IpAddr, cidr: u8, value: T) -> Result<(), AllowedIpsError> {
        let (family, node) = match addr {
            IpAddr::V4(addr) => {
                let key = masked_key(u32::from(addr), cidr)?;
                (Family::V4, self.v4.find_or_insert(key, cidr))
            }
            IpAddr::V6(addr) => {
                let key = masked_key(u128::from(addr), cidr)?;
                (Family::V6, self.v6.find_or_insert(key, cidr))
            }
        };
        self.assign(family, node, value);
        #[cfg(feature = "debug-checks")]
        self.check_invariants();
        Ok(())
    }

    /// Removes `addr/cidr` (host bits ignored) if `value` owns it; returns
    /// whether it was removed.
    pub fn remove(&mut self, addr: IpAddr, cidr: u8, value: T) -> Result<bool, AllowedIpsError> {
        let (family, node) = match addr {
            IpAddr::V4(addr) => {
                let key = masked_key(u32::from(addr), cidr)?;
                (Family::V4, self.v4.find_exact(key, cidr))
            }
            IpAddr::V6(addr) => {
                let key = masked_key(u128::from(addr), cidr)?;
                (Family::V6, self.v6.find_exact(key, cidr))
            }
        };
        let entry_index = self.node_entry(family, node);
        match self.entry(entry_index) {
            Some(entry) if entry.value == value => {}
            _ => return Ok(false),
        }
        self.unlink(entry_index);
        self.release_entry(entry_index);
        self.remove_node(family, node);
        #[cfg(feature = "debug-checks")]
        self.check_invariants();
        Ok(true)
    }

    /// Removes every prefix owned by `value`, in time proportional to their
    /// number.
    pub fn remove_by_value(&mut self, value: T) {
        let Some(list) = self.by_value.remove(&value) else {
            return;
        };
        let mut index = list.head;
        while let Some(entry) = self.entry(index).copied() {
            let next = entry.next;
            self.release_entry(index);
            self.remove_node(entry.family, entry.node);
            index = next;
        }
        #[cfg(feature = "debug-checks")]
        self.check_invariants();
    }

    /// The prefixes owned by `value`, host bits cleared, in insertion order.
    pub fn prefixes_of(&self, value: T) -> impl Iterator<Item = (IpAddr, u8)> + '_ {
        let head = self.by_value.get(&value).map_or(NONE, |list| list.head);
        PrefixesOf {
            table: self,
            next: head,
        }
    }

    /// The owner of the longest prefix containing `addr`.
    pub fn lookup(&self, addr: IpAddr) -> Option<T> {
        match addr {
            IpAddr::V4(addr) => self.lookup_v4(addr.octets()),
            IpAddr::V6(addr) => self.lookup_v6(addr.octets()),
        }
    }

    /// The owner of the longest IPv4 prefix containing `addr` (network order,
    /// as in an IP header).
    #[inline]
    pub fn lookup_v4(&self, addr: [u8; 4]) -> Option<T> {
        let entry = self.v4.lookup(u32::from_be_bytes(addr));
        self.entry(entry).map(|entry| entry.value)
    }

    /// The owner of the longest IPv6 prefix containing `addr` (network order,
    /// as in an IP header).
    #[inline]
    pub fn lookup_v6(&self, addr: [u8; 16]) -> Option<T> {
        let entry = self.v6.lookup(u128::from_be_bytes(addr));
        self.entry(entry).map(|entry| entry.value)
    }

    /// Number of prefixes in the table (both families).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the table holds no prefix.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Removes every prefix.
    pub fn clear(&mut self) {
        self.v4.clear();
        self.v6.clear();
        self.entries.clear();
        self.free_entries.clear();
        self.by_value.clear();
        self.len = 0;
    }

    fn entry(&self, index: u32) -> Option<&Entry<T>> {
        self.entries.get(index as usize)?.as_ref()
    }

    fn entry_mut(&mut self, index: u32) -> Option<&mut Entry<T>> {
        self.entries.get_mut(index as usize)?.as_mut()
    }

    /// Entry index stored in a node, `NONE` if there is no such node.
    fn node_entry(&self, family: Family, node: u32) -> u32 {
        let node = match family {
            Family::V4 => self.v4.nodes.get(node as usize).map(|node| node.entry),
            Family::V6 => self.v6.nodes.get(node as usize).map(|node| node.entry),
        };
        node.unwrap_or(NONE)
    }

    fn set_node_entry(&mut self, family: Family, node: u32, entry: u32) {
        match family {
            Family::V4 => self.v4.node_mut(node).entry = entry,
            Family::V6 => self.v6.node_mut(node).entry = entry,
        }
    }

    fn remove_node(&mut self, family: Family, node: u32) {
        match family {
            Family::V4 => self.v4.remove(node),
            Family::V6 => self.v6.remove(node),
        }
    }

    /// The prefix stored in a node.
    fn node_prefix(&self, family: Family, node: u32) -> (IpAddr, u8) {
        match family {
            Family::V4 => {
                let node = self.v4.node(node);
                (IpAddr::V4(Ipv4Addr::from(node.key)), node.cidr)
            }
            Family::V6 => {
                let node = self.v6.node(node);
                (IpAddr::V6(Ipv6Addr::from(node.key)), node.cidr)
            }
        }
    }

    /// Gives the prefix in `node` to `value`, creating its entry if needed.
    fn assign(&mut self, family: Family, node: u32, value: T) {
        let index = self.node_entry(family, node);
        match self.entry(index).map(|entry| entry.value) {
            Some(owner) if owner == value => {}
            Some(_) => {
                self.unlink(index);
                if let Some(entry) = self.entry_mut(index) {
                    entry.value = value;
                }
                self.append(value, index);
            }
            None => {
                let entry = Entry {
                    value,
                    family,
                    node,
                    prev: NONE,
                    next: NONE,
                };
                let index = self.allocate_entry(entry);
                self.set_node_entry(family, node, index);
                self.append(value, index);
                self.len += 1;
            }
        }
    }

    /// Appends entry `index` to the end of `value`'s list.
    fn append(&mut self, value: T, index: u32) {
        let list = self.by_value.entry(value).or_insert(EntryList {
            head: NONE,
            tail: NONE,
        });
        let old_tail = list.tail;
        list.tail = index;
        if old_tail == NONE {
            list.head = index;
        }
        if let Some(tail) = self
            .entries
            .get_mut(old_tail as usize)
            .and_then(Option::as_mut)
        {
            tail.next = index;
        }
        if let Some(entry) = self.entry_mut(index) {
            entry.prev = old_tail;
            entry.next = NONE;
        }
    }

    /// Takes entry `index` out of its value's list, dropping the list when it
    /// becomes empty.
    fn unlink(&mut self, index: u32) {
        let Some(&Entry {
            value, prev, next, ..
        }) = self.entry(index)
        else {
            return;
        };
        if let Some(previous) = self.entry_mut(prev) {
            previous.next = next;
        }
        if let Some(following) = self.entry_mut(next) {
            following.prev = prev;
        }
        let Some(list) = self.by_value.get_mut(&value) else {
            return;
        };
        if list.head == index {
            list.head = next;
        }
        if list.tail == index {
            list.tail = prev;
        }
        if list.head == NONE {
            self.by_value.remove(&value);
        }
    }

    fn allocate_entry(&mut self, entry: Entry<T>) -> u32 {
        if let Some(index) = self.free_entries.pop() {
            if let Some(slot) = self.entries.get_mut(index as usize) {
                *slot = Some(entry);
                return index;
            }
        }
        let index = arena_index(self.entries.len());
        self.entries.push(Some(entry));
        index
    }

    /// Frees entry slot `index` (already unlinked or with its list dropped).
    fn release_entry(&mut self, index: u32) {
        if let Some(slot) = self.entries.get_mut(index as usize) {
            if slot.take().is_some() {
                self.len -= 1;
                self.free_entries.push(index);
            }
        }
        if self.len == 0 {
            self.entries.clear();
            self.free_entries.clear();
        }
    }
}

/// Rejects a prefix length wider than the address and clears the host bits.
fn masked_key<K: Key>(addr: K, cidr: u8) -> Result<K, AllowedIpsError> {
    if cidr > K::BITS {
        return Err(AllowedIpsError::InvalidCidr);
    }
    Ok(addr.masked(cidr))
}

/// Iterator over one value's prefixes, following its entry list.
struct PrefixesOf<'a, T> {
    table: &'a AllowedIps<T>,
    next: u32,
}

impl<T: Copy + Eq + Hash> Iterator for PrefixesOf<'_, T> {
    type Item = (IpAddr, u8);

    fn next(&mut self) -> Option<Self::Item> {
        let entry = self.table.entry(self.next)?;
        self.next = entry.next;
        Some(self.table.node_prefix(entry.family, entry.node))
    }
}

#[cfg(any(test, feature = "debug-checks"))]
mod invariants {
    //! Structural checks of the whole table, run after every mutation with
    //! the `debug-checks` feature and from the tests.

    use super::{AllowedIps, Entry, Family, Key, Trie, NONE};
    use std::collections::HashSet;
    use std::hash::Hash;

    impl<T: Copy + Eq + Hash> AllowedIps<T> {
        /// Panics with a description of the first broken invariant.
        pub(super) fn check_invariants(&self) {
            let valued_v4 = check_trie(&self.v4, Family::V4, &self.entries);
            let valued_v6 = check_trie(&self.v6, Family::V6, &self.entries);
            let used = self.entries.iter().filter(|slot| slot.is_some()).count();
            assert_eq!(
                used, self.len,
                "allowedips: len {} but {used} entries",
                self.len
            );
            assert_eq!(
                valued_v4 + valued_v6,
                self.len,
                "allowedips: {} valued nodes for {} entries",
                valued_v4 + valued_v6,
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

    /// Checks one trie and returns its number of valued nodes.
    fn check_trie<K: Key, T>(
        trie: &Trie<K>,
        family: Family,
        entries: &[Option<Entry<T>>],
    ) -> usize {
        let mut seen = HashSet::new();
        let mut valued = 0;
        let mut stack = Vec::new();
        if trie.root != NONE {
            stack.push(trie.root);
        }
        while let Some(index) = stack.pop() {
            assert!(
                seen.insert(index),
                "allowedips {family:?}: node {index} reached twice"
            );
            let node = trie.nodes.get(index as usize).unwrap_or_else(|| {
                panic!("allowedips {family:?}: node index {index} out of range")
            });
            assert!(
                node.cidr <= K::BITS,
                "allowedips {family:?}: node {index} cidr {}",
                node.cidr
            );
            assert!(
                node.key.masked(node.cidr) == node.key,
                "allowedips {family:?}: node {index} key {:?} has host bits past /{}",
                node.key,
                node.cidr
            );
            if node.entry == NONE {
                assert!(
                    node.children.iter().all(|&child| child != NONE),
                    "allowedips {family:?}: valueless node {index} does not fork"
                );
            } else {
                valued += 1;
                let entry = entries
                    .get(node.entry as usize)
                    .and_then(Option::as_ref)
                    .unwrap_or_else(|| {
                        panic!("allowedips {family:?}: node {index} has a free entry")
                    });
                assert_eq!(
                    entry.family, family,
                    "allowedips: node {index} entry of the other family"
                );
                assert_eq!(
                    entry.node, index,
                    "allowedips {family:?}: entry of node {index} points elsewhere"
                );
            }
            for (side, &child_index) in node.children.iter().enumerate() {
                if child_index == NONE {
                    continue;
                }
                let child = trie.nodes.get(child_index as usize).unwrap_or_else(|| {
                    panic!("allowedips {family:?}: child index {child_index} out of range")
                });
                assert!(
                    child.cidr > node.cidr
                        && node.key.shares_prefix(child.key, node.cidr)
                        && child.key.bit_at(node.cidr) == side,
                    "allowedips {family:?}: child {child_index} is misplaced under node {index}"
                );
                stack.push(child_index);
            }
        }
        let free: HashSet<u32> = trie.free.iter().copied().collect();
        assert_eq!(
            free.len(),
            trie.free.len(),
            "allowedips {family:?}: duplicate free node"
        );
        assert!(
            free.is_disjoint(&seen),
            "allowedips {family:?}: a free node is reachable"
        );
        assert_eq!(
            seen.len() + free.len(),
            trie.nodes.len(),
            "allowedips {family:?}: leaked nodes"
        );
        valued
    }
}

#[cfg(test)]
mod tests {
    use super::{AllowedIps, AllowedIpsError};
    use proptest::prelude::*;
    use rand_chacha::rand_core::{RngCore, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    fn ip4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    /// An IPv6 address from four big-endian 32-bit words, as in the kernel
    /// selftest.
    fn ip6(a: u32, b: u32, c: u32, d: u32) -> IpAddr {
        let words = [a, b, c, d];
        let mut octets = [0u8; 16];
        for (chunk, word) in octets.chunks_exact_mut(4).zip(words) {
            chunk.copy_from_slice(&word.to_be_bytes());
        }
        IpAddr::V6(Ipv6Addr::from(octets))
    }

    /// A reference implementation with no cleverness: a list of prefixes in
    /// insertion order, searched linearly.
    #[derive(Default)]
    struct NaiveTable {
        /// (is_v6, masked address as an integer, cidr, value), oldest first.
        prefixes: Vec<(bool, u128, u8, u32)>,
    }

    fn naive_parts(addr: IpAddr) -> (bool, u128, u8) {
        match addr {
            IpAddr::V4(addr) => (false, u128::from(u32::from(addr)), 32),
            IpAddr::V6(addr) => (true, u128::from(addr), 128),
        }
    }

    /// Mask built bit by bit, independently of the trie's shift tricks
    /// (from a table: building it per call would dominate the test time).
    fn naive_mask(width: u8, cidr: u8) -> u128 {
        use std::sync::OnceLock;
        static MASKS: OnceLock<[[u128; 129]; 2]> = OnceLock::new();
        let masks = MASKS.get_or_init(|| {
            let mut masks = [[0u128; 129]; 2];
            for (table, width) in masks.iter_mut().zip([32u8, 128]) {
                for cidr in 0..=width {
                    table[usize::from(cidr)] =
                        (0..cidr).fold(0u128, |mask, bit| mask | 1u128 << (width - 1 - bit));
                }
            }
            masks
        });
        masks[usize::from(width == 128)][usize::from(cidr)]
    }

    impl NaiveTable {
        fn key(addr: IpAddr, cidr: u8) -> Option<(bool, u128)> {
            let (is_v6, bits, width) = naive_parts(addr);
            (cidr <= width).then(|| (is_v6, bits & naive_mask(width, cidr)))
        }

        fn position(&self, is_v6: bool, key: u128, cidr: u8) -> Option<usize> {
            self.prefixes
                .iter()
                .position(|&(v6, k, c, _)| v6 == is_v6 && k == key && c == cidr)
        }

        fn insert(&mut self, addr: IpAddr, cidr: u8, value: u32) -> Result<(), AllowedIpsError> {
            let (is_v6, key) = Self::key(addr, cidr).ok_or(AllowedIpsError::InvalidCidr)?;
            if let Some(at) = self.position(is_v6, key, cidr) {
                if self.prefixes[at].3 == value {
                    return Ok(());
                }
                self.prefixes.remove(at);
            }
            self.prefixes.push((is_v6, key, cidr, value));
            Ok(())
        }

        fn remove(&mut self, addr: IpAddr, cidr: u8, value: u32) -> Result<bool, AllowedIpsError> {
            let (is_v6, key) = Self::key(addr, cidr).ok_or(AllowedIpsError::InvalidCidr)?;
            match self.position(is_v6, key, cidr) {
                Some(at) if self.prefixes[at].3 == value => {
                    self.prefixes.remove(at);
                    Ok(true)
                }
                _ => Ok(false),
            }
        }

        fn remove_by_value(&mut self, value: u32) {
            self.prefixes.retain(|&(_, _, _, owner)| owner != value);
        }

        fn lookup(&self, addr: IpAddr) -> Option<u32> {
            let (is_v6, bits, width) = naive_parts(addr);
            self.prefixes
                .iter()
                .filter(|&&(v6, key, cidr, _)| v6 == is_v6 && bits & naive_mask(width, cidr) == key)
                .max_by_key(|&&(_, _, cidr, _)| cidr)
                .map(|&(_, _, _, value)| value)
        }

        fn prefixes_of(&self, value: u32) -> Vec<(IpAddr, u8)> {
            self.prefixes
                .iter()
                .filter(|&&(_, _, _, owner)| owner == value)
                .map(|&(is_v6, key, cidr, _)| {
                    let addr = if is_v6 {
                        IpAddr::V6(Ipv6Addr::from(key))
                    } else {
                        // The key of a v4 prefix fits in 32 bits.
                        IpAddr::V4(Ipv4Addr::from(key as u32))
                    };
                    (addr, cidr)
                })
                .collect()
        }

        fn values(&self) -> Vec<u32> {
            let mut values: Vec<u32> = self.prefixes.iter().map(|p| p.3).collect();
            values.sort_unstable();
            values.dedup();
            values
        }
    }

    /// Compares everything observable except lookups.
    fn assert_same_contents(
        table: &AllowedIps<u32>,
        naive: &NaiveTable,
        values: impl Iterator<Item = u32>,
    ) {
        table.check_invariants();
        assert_eq!(table.len(), naive.prefixes.len());
        assert_eq!(table.is_empty(), naive.prefixes.is_empty());
        for value in values {
            let got: Vec<_> = table.prefixes_of(value).collect();
            assert_eq!(got, naive.prefixes_of(value), "prefixes_of({value})");
        }
    }

    #[test]
    fn kernel_selftest_static_lookups() {
        let mut t = AllowedIps::new();
        let insert4 = |t: &mut AllowedIps<char>, v, a, b, c, d, cidr| {
            t.insert(ip4(a, b, c, d), cidr, v).unwrap();
        };
        let insert6 = |t: &mut AllowedIps<char>, v, a, b, c, d, cidr| {
            t.insert(ip6(a, b, c, d), cidr, v).unwrap();
        };
        insert4(&mut t, 'a', 192, 168, 4, 0, 24);
        insert4(&mut t, 'b', 192, 168, 4, 4, 32);
        insert4(&mut t, 'c', 192, 168, 0, 0, 16);
        insert4(&mut t, 'd', 192, 95, 5, 64, 27);
        // Replaces the previous entry; the host bits must be masked.
        insert4(&mut t, 'c', 192, 95, 5, 65, 27);
        insert6(&mut t, 'd', 0x26075300, 0x60006b00, 0, 0xc05f0543, 128);
        insert6(&mut t, 'c', 0x26075300, 0x60006b00, 0, 0, 64);
        insert4(&mut t, 'e', 0, 0, 0, 0, 0);
        insert6(&mut t, 'e', 0, 0, 0, 0, 0);
        // Replaces the previous entry.
        insert6(&mut t, 'f', 0, 0, 0, 0, 0);
        insert6(&mut t, 'g', 0x24046800, 0, 0, 0, 32);
        insert6(
            &mut t, 'h', 0x24046800, 0x40040800, 0xdeadbeef, 0xdeadbeef, 64,
        );
        insert6(
            &mut t, 'a', 0x24046800, 0x40040800, 0xdeadbeef, 0xdeadbeef, 128,
        );
        insert6(
            &mut t, 'c', 0x24446800, 0x40e40800, 0xdeaebeef, 0xdefbeef, 128,
        );
        insert6(&mut t, 'b', 0x24446800, 0xf0e40800, 0xeeaebeef, 0, 98);
        insert4(&mut t, 'g', 64, 15, 112, 0, 20);
        insert4(&mut t, 'h', 64, 15, 123, 211, 25);
        insert4(&mut t, 'a', 10, 0, 0, 0, 25);
        insert4(&mut t, 'b', 10, 0, 0, 128, 25);
        insert4(&mut t, 'a', 10, 1, 0, 0, 30);
        insert4(&mut t, 'b', 10, 1, 0, 4, 30);
        insert4(&mut t, 'c', 10, 1, 0, 8, 29);
        insert4(&mut t, 'd', 10, 1, 0, 16, 29);
        t.check_invariants();
        // 23 inserts, two of which replaced an existing prefix.
        assert_eq!(t.len(), 21);

        let v4_expectations = [
            ('a', [192, 168, 4, 20]),
            ('a', [192, 168, 4, 0]),
            ('b', [192, 168, 4, 4]),
            ('c', [192, 168, 200, 182]),
            ('c', [192, 95, 5, 68]),
            ('e', [192, 95, 5, 96]),
            ('g', [64, 15, 116, 26]),
            ('g', [64, 15, 127, 3]),
            ('g', [64, 15, 123, 1]),
            ('h', [64, 15, 123, 128]),
            ('h', [64, 15, 123, 129]),
            ('a', [10, 0, 0, 52]),
            ('b', [10, 0, 0, 220]),
            ('a', [10, 1, 0, 2]),
            ('b', [10, 1, 0, 6]),
            ('c', [10, 1, 0, 10]),
            ('d', [10, 1, 0, 20]),
        ];
        for (expected, [a, b, c, d]) in v4_expectations {
            assert_eq!(t.lookup(ip4(a, b, c, d)), Some(expected), "{a}.{b}.{c}.{d}");
            assert_eq!(t.lookup_v4([a, b, c, d]), Some(expected));
        }
        let v6_expectations = [
            ('d', [0x26075300, 0x60006b00, 0, 0xc05f0543]),
            ('c', [0x26075300, 0x60006b00, 0, 0xc02e01ee]),
            ('f', [0x26075300, 0x60006b01, 0, 0]),
            ('g', [0x24046800, 0x40040806, 0, 0x1006]),
            ('g', [0x24046800, 0x40040806, 0x1234, 0x5678]),
            ('f', [0x240467ff, 0x40040806, 0x1234, 0x5678]),
            ('f', [0x24046801, 0x40040806, 0x1234, 0x5678]),
            ('h', [0x24046800, 0x40040800, 0x1234, 0x5678]),
            ('h', [0x24046800, 0x40040800, 0, 0]),
            ('h', [0x24046800, 0x40040800, 0x10101010, 0x10101010]),
            ('a', [0x24046800, 0x40040800, 0xdeadbeef, 0xdeadbeef]),
        ];
        for (expected, [a, b, c, d]) in v6_expectations {
            let addr = ip6(a, b, c, d);
            assert_eq!(t.lookup(addr), Some(expected), "{addr}");
            let IpAddr::V6(v6) = addr else { unreachable!() };
            assert_eq!(t.lookup_v6(v6.octets()), Some(expected));
        }

        // Removing every prefix of one peer.
        for first in [1, 64, 128, 192, 255] {
            t.insert(ip4(first, 0, 0, 0), 32, 'a').unwrap();
        }
        assert_eq!(t.lookup(ip4(255, 0, 0, 0)), Some('a'));
        t.remove_by_value('a');
        t.check_invariants();
        for first in [1, 64, 128, 192, 255] {
            assert_ne!(t.lookup(ip4(first, 0, 0, 0)), Some('a'));
        }
        assert_eq!(t.prefixes_of('a').count(), 0);
        assert_eq!(
            t.lookup(ip4(10, 0, 0, 52)),
            Some('e'),
            "the default route remains"
        );
        assert_eq!(t.lookup(ip4(10, 0, 0, 220)), Some('b'));
        assert_eq!(
            t.lookup(ip6(0x24046800, 0x40040800, 0xdeadbeef, 0xdeadbeef)),
            Some('h')
        );
    }

    #[test]
    fn kernel_selftest_remove_nested_prefixes() {
        let mut t = AllowedIps::new();
        t.insert(ip4(192, 168, 0, 0), 16, 'a').unwrap();
        t.insert(ip4(192, 168, 0, 0), 24, 'a').unwrap();
        assert_eq!(t.lookup(ip4(192, 168, 0, 1)), Some('a'));
        t.remove_by_value('a');
        t.check_invariants();
        assert_eq!(t.lookup(ip4(192, 168, 0, 1)), None);
        assert!(t.is_empty());
    }

    #[test]
    fn kernel_selftest_almost_all_ones_v6() {
        let mut t = AllowedIps::new();
        let addrs: Vec<Ipv6Addr> = (0..128)
            .map(|bit| Ipv6Addr::from(!(1u128 << bit)))
            .collect();
        for &addr in &addrs {
            t.insert(IpAddr::V6(addr), 128, 'a').unwrap();
        }
        t.check_invariants();
        assert_eq!(t.len(), 128);
        for &addr in &addrs {
            assert_eq!(t.lookup_v6(addr.octets()), Some('a'));
        }
        assert_eq!(t.lookup_v6([0xff; 16]), None);
        // Remove half one by one (deep, single-child paths), then the rest.
        for &addr in addrs.iter().step_by(2) {
            assert_eq!(t.remove(IpAddr::V6(addr), 128, 'a'), Ok(true));
            t.check_invariants();
        }
        assert_eq!(t.len(), 64);
        t.remove_by_value('a');
        t.check_invariants();
        assert!(t.is_empty());
        assert!(addrs
            .iter()
            .all(|addr| t.lookup_v6(addr.octets()).is_none()));
    }

    #[test]
    fn kernel_selftest_masked_read_back() {
        let mut t = AllowedIps::new();
        t.insert(ip4(192, 95, 5, 93), 27, 'a').unwrap();
        t.insert(ip6(0x26075300, 0x60006b00, 0, 0xc05f0543), 128, 'a')
            .unwrap();
        t.insert(ip4(10, 1, 0, 20), 29, 'a').unwrap();
        t.insert(ip6(0x26075300, 0x6d8a6bf8, 0xdab1f1df, 0xc05f1523), 83, 'a')
            .unwrap();
        t.insert(ip6(0x26075300, 0x6d8a6bf8, 0xdab1f1df, 0xc05f1523), 21, 'a')
            .unwrap();
        let got: Vec<_> = t.prefixes_of('a').collect();
        let expected = vec![
            (ip4(192, 95, 5, 64), 27),
            (ip6(0x26075300, 0x60006b00, 0, 0xc05f0543), 128),
            (ip4(10, 1, 0, 16), 29),
            (ip6(0x26075300, 0x6d8a6bf8, 0xdab1e000, 0), 83),
            (ip6(0x26075000, 0, 0, 0), 21),
        ];
        assert_eq!(got, expected);
    }

    #[test]
    fn prefixes_of_keeps_insertion_order_and_moves() {
        let mut t = AllowedIps::new();
        t.insert(ip4(10, 0, 0, 1), 32, 1u32).unwrap();
        t.insert(ip4(10, 0, 0, 2), 32, 1).unwrap();
        t.insert(ip4(10, 0, 0, 3), 32, 1).unwrap();
        t.insert(ip4(10, 9, 9, 9), 8, 2).unwrap();
        // Re-inserting an owned prefix keeps its place.
        t.insert(ip4(10, 0, 0, 1), 32, 1).unwrap();
        let owned: Vec<_> = t.prefixes_of(1).collect();
        assert_eq!(
            owned,
            vec![
                (ip4(10, 0, 0, 1), 32),
                (ip4(10, 0, 0, 2), 32),
                (ip4(10, 0, 0, 3), 32)
            ]
        );
        // Moving a prefix takes it off the old list and appends it to the new.
        t.insert(ip4(10, 0, 0, 2), 32, 2).unwrap();
        t.check_invariants();
        assert_eq!(
            t.prefixes_of(1).collect::<Vec<_>>(),
            vec![(ip4(10, 0, 0, 1), 32), (ip4(10, 0, 0, 3), 32)]
        );
        assert_eq!(
            t.prefixes_of(2).collect::<Vec<_>>(),
            vec![(ip4(10, 0, 0, 0), 8), (ip4(10, 0, 0, 2), 32)]
        );
        assert_eq!(t.lookup(ip4(10, 0, 0, 2)), Some(2));
        assert_eq!(t.len(), 4);
        // Moving it back appends it at the end of the first list.
        t.insert(ip4(10, 0, 0, 2), 32, 1).unwrap();
        assert_eq!(
            t.prefixes_of(1).collect::<Vec<_>>(),
            vec![
                (ip4(10, 0, 0, 1), 32),
                (ip4(10, 0, 0, 3), 32),
                (ip4(10, 0, 0, 2), 32)
            ]
        );
        assert_eq!(t.prefixes_of(3).count(), 0);
    }

    #[test]
    fn remove_requires_the_owner() {
        let mut t = AllowedIps::new();
        t.insert(ip4(10, 0, 0, 0), 8, 1u32).unwrap();
        t.insert(ip4(10, 1, 0, 0), 16, 2).unwrap();
        assert_eq!(t.remove(ip4(10, 1, 2, 3), 16, 1), Ok(false));
        assert_eq!(t.remove(ip4(10, 1, 0, 0), 17, 2), Ok(false));
        assert_eq!(t.remove(ip4(11, 0, 0, 0), 8, 1), Ok(false));
        assert_eq!(t.lookup(ip4(10, 1, 2, 3)), Some(2));
        // Host bits are ignored on removal as on insertion.
        assert_eq!(t.remove(ip4(10, 1, 2, 3), 16, 2), Ok(true));
        t.check_invariants();
        assert_eq!(t.lookup(ip4(10, 1, 2, 3)), Some(1));
        assert_eq!(t.remove(ip4(10, 1, 0, 0), 16, 2), Ok(false));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn default_routes_and_full_length_prefixes() {
        let mut t = AllowedIps::default();
        t.insert(ip4(1, 2, 3, 4), 0, 1u32).unwrap();
        t.insert(ip4(1, 2, 3, 4), 32, 2).unwrap();
        t.insert(ip6(1, 2, 3, 4), 0, 3).unwrap();
        t.insert(ip6(1, 2, 3, 4), 128, 4).unwrap();
        t.check_invariants();
        assert_eq!(
            t.prefixes_of(1).collect::<Vec<_>>(),
            vec![(ip4(0, 0, 0, 0), 0)]
        );
        assert_eq!(
            t.prefixes_of(3).collect::<Vec<_>>(),
            vec![(ip6(0, 0, 0, 0), 0)]
        );
        assert_eq!(t.lookup(ip4(1, 2, 3, 4)), Some(2));
        assert_eq!(t.lookup(ip4(1, 2, 3, 5)), Some(1));
        assert_eq!(t.lookup(ip4(255, 255, 255, 255)), Some(1));
        assert_eq!(t.lookup(ip6(1, 2, 3, 4)), Some(4));
        assert_eq!(t.lookup(ip6(1, 2, 3, 5)), Some(3));
        assert_eq!(
            t.lookup(ip6(u32::MAX, u32::MAX, u32::MAX, u32::MAX)),
            Some(3)
        );
        assert_eq!(t.remove(ip4(9, 9, 9, 9), 0, 1), Ok(true));
        assert_eq!(t.lookup(ip4(1, 2, 3, 5)), None);
        assert_eq!(t.lookup(ip4(1, 2, 3, 4)), Some(2));
        t.clear();
        assert!(t.is_empty());
        assert_eq!(t.lookup(ip6(1, 2, 3, 4)), None);
        t.check_invariants();
    }

    #[test]
    fn invalid_cidr_is_rejected_without_change() {
        let mut t = AllowedIps::new();
        t.insert(ip4(10, 0, 0, 0), 8, 1u32).unwrap();
        assert_eq!(
            t.insert(ip4(10, 0, 0, 0), 33, 2),
            Err(AllowedIpsError::InvalidCidr)
        );
        assert_eq!(
            t.insert(ip6(0, 0, 0, 0), 129, 2),
            Err(AllowedIpsError::InvalidCidr)
        );
        assert_eq!(
            t.insert(ip6(0, 0, 0, 0), u8::MAX, 2),
            Err(AllowedIpsError::InvalidCidr)
        );
        assert_eq!(
            t.remove(ip4(10, 0, 0, 0), 33, 1),
            Err(AllowedIpsError::InvalidCidr)
        );
        assert_eq!(
            t.remove(ip6(0, 0, 0, 0), 129, 1),
            Err(AllowedIpsError::InvalidCidr)
        );
        assert!(t.insert(ip6(0, 0, 0, 0), 128, 2).is_ok());
        assert_eq!(t.len(), 2);
        assert_eq!(
            t.prefixes_of(1).collect::<Vec<_>>(),
            vec![(ip4(10, 0, 0, 0), 8)]
        );
        t.check_invariants();
    }

    /// Random addresses clustered around a few bases, so that prefixes nest
    /// and overlap the way real routing tables do.
    struct AddressSource {
        rng: ChaCha8Rng,
        bases: Vec<u128>,
    }

    impl AddressSource {
        fn new(seed: u64) -> Self {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let bases = (0..32).map(|_| random_u128(&mut rng)).collect();
            AddressSource { rng, bases }
        }

        fn below(&mut self, bound: u32) -> u32 {
            // The modulo bias is irrelevant for a test distribution.
            self.rng.next_u32() % bound
        }

        /// A base with its low bits randomized, or a fully random address.
        fn address(&mut self, is_v6: bool) -> IpAddr {
            let random = random_u128(&mut self.rng);
            let pick = self.below(32) as usize;
            let base = self.bases[pick];
            let width = if is_v6 { 128 } else { 32 };
            let keep = self.below(width + 1);
            let low_mask = u128::MAX.checked_shr(128 - (width - keep)).unwrap_or(0);
            let bits = (base & !low_mask) | (random & low_mask);
            if is_v6 {
                IpAddr::V6(Ipv6Addr::from(bits))
            } else {
                IpAddr::V4(Ipv4Addr::from((bits >> 96) as u32))
            }
        }

        fn any_address(&mut self) -> IpAddr {
            let is_v6 = self.below(2) == 1;
            self.address(is_v6)
        }

        fn cidr(&mut self, is_v6: bool) -> u8 {
            // Below 256 by construction.
            self.below(if is_v6 { 129 } else { 33 }) as u8
        }
    }

    fn random_u128(rng: &mut ChaCha8Rng) -> u128 {
        u128::from(rng.next_u64()) << 64 | u128::from(rng.next_u64())
    }

    #[test]
    fn randomized_against_naive_model() {
        const VALUES: u32 = 100;
        const ROUNDS: usize = 4;
        const INSERTS_PER_ROUND: usize = 600;
        const LOOKUPS_PER_ROUND: usize = 10_000;
        let mut source = AddressSource::new(0x5eed_a110);
        let mut table = AllowedIps::new();
        let mut naive = NaiveTable::default();
        for round in 0..ROUNDS {
            for _ in 0..INSERTS_PER_ROUND {
                let is_v6 = source.below(2) == 1;
                let (addr, cidr, value) = (
                    source.address(is_v6),
                    source.cidr(is_v6),
                    source.below(VALUES),
                );
                table.insert(addr, cidr, value).unwrap();
                naive.insert(addr, cidr, value).unwrap();
            }
            assert_same_contents(&table, &naive, 0..VALUES);
            let mut hits = 0;
            for _ in 0..LOOKUPS_PER_ROUND {
                let addr = source.any_address();
                let expected = naive.lookup(addr);
                assert_eq!(table.lookup(addr), expected, "round {round}: lookup {addr}");
                hits += usize::from(expected.is_some());
            }
            assert!(
                hits > LOOKUPS_PER_ROUND / 10,
                "the test should exercise matches ({hits})"
            );

            // Moves: give existing prefixes to other values.
            for _ in 0..50 {
                let pick = source.below(naive.prefixes.len() as u32) as usize;
                let (addr, cidr) = naive.prefixes_of(naive.prefixes[pick].3)[0];
                let value = source.below(VALUES);
                table.insert(addr, cidr, value).unwrap();
                naive.insert(addr, cidr, value).unwrap();
            }
            // Single removes, half by the owner and half by someone else.
            for attempt in 0..100 {
                let pick = source.below(naive.prefixes.len() as u32) as usize;
                let (is_v6, key, cidr, owner) = naive.prefixes[pick];
                let addr = if is_v6 {
                    IpAddr::V6(Ipv6Addr::from(key))
                } else {
                    IpAddr::V4(Ipv4Addr::from(key as u32))
                };
                let value = if attempt % 2 == 0 {
                    owner
                } else {
                    source.below(VALUES)
                };
                assert_eq!(
                    table.remove(addr, cidr, value),
                    naive.remove(addr, cidr, value)
                );
            }
            assert_same_contents(&table, &naive, 0..VALUES);
            // Peer removals.
            for _ in 0..10 {
                let value = source.below(VALUES);
                table.remove_by_value(value);
                naive.remove_by_value(value);
            }
            assert_same_contents(&table, &naive, 0..VALUES);
            for _ in 0..LOOKUPS_PER_ROUND {
                let addr = source.any_address();
                assert_eq!(
                    table.lookup(addr),
                    naive.lookup(addr),
                    "round {round}: lookup {addr}"
                );
            }
        }
        for value in naive.values() {
            table.remove_by_value(value);
        }
        table.check_invariants();
        assert!(table.is_empty());
        assert!(
            table.v4.nodes.is_empty() && table.v6.nodes.is_empty(),
            "arenas released"
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(IpAddr, u8, u32),
        Remove(IpAddr, u8, u32),
        RemoveByValue(u32),
        Lookup(IpAddr),
    }

    /// Addresses from a handful of bases with random low bits, so that the
    /// operations collide on prefixes often.
    fn address_strategy() -> impl Strategy<Value = IpAddr> {
        let v4 = (
            prop::sample::select(vec![0u32, 0x0a00_0000, 0xc0a8_0100, 0xffff_ff00]),
            any::<u32>(),
            0u32..=32,
        )
            .prop_map(|(base, random, host_bits)| {
                let low = u32::MAX.checked_shr(32 - host_bits).unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from((base & !low) | (random & low)))
            });
        let v6 = (
            prop::sample::select(vec![0u128, 0x2001_0db8 << 96, u128::MAX << 8]),
            any::<u128>(),
            0u32..=128,
        )
            .prop_map(|(base, random, host_bits)| {
                let low = u128::MAX.checked_shr(128 - host_bits).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from((base & !low) | (random & low)))
            });
        prop_oneof![v4, v6]
    }

    fn op_strategy() -> impl Strategy<Value = Op> {
        // Mostly valid prefix lengths, sometimes invalid ones.
        let cidr = prop_oneof![8 => 0u8..=32, 4 => 0u8..=128, 1 => any::<u8>()];
        let value = 0u32..6;
        prop_oneof![
            6 => (address_strategy(), cidr.clone(), value.clone()).prop_map(|(a, c, v)| Op::Insert(a, c, v)),
            2 => (address_strategy(), cidr, value.clone()).prop_map(|(a, c, v)| Op::Remove(a, c, v)),
            1 => value.prop_map(Op::RemoveByValue),
            4 => address_strategy().prop_map(Op::Lookup),
        ]
    }

    proptest! {
        #[test]
        fn operations_match_naive_model(ops in prop::collection::vec(op_strategy(), 1..120)) {
            let mut table = AllowedIps::new();
            let mut naive = NaiveTable::default();
            for op in ops {
                match op {
                    Op::Insert(addr, cidr, value) => {
                        prop_assert_eq!(table.insert(addr, cidr, value), naive.insert(addr, cidr, value));
                    }
                    Op::Remove(addr, cidr, value) => {
                        prop_assert_eq!(table.remove(addr, cidr, value), naive.remove(addr, cidr, value));
                    }
                    Op::RemoveByValue(value) => {
                        table.remove_by_value(value);
                        naive.remove_by_value(value);
                    }
                    Op::Lookup(addr) => prop_assert_eq!(table.lookup(addr), naive.lookup(addr)),
                }
                table.check_invariants();
            }
            assert_same_contents(&table, &naive, 0..6);
        }
    }
}
