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
//! Each family is a 16-way (4 bits per level) multibit trie with path
//! compression, in `Vec` arenas addressed by `u32` indices:
//!
//! - A node at depth `d` (a multiple of 4) covers the addresses sharing its
//!   first `d` bits. It holds the prefixes of lengths `d` to `d + 3` itself
//!   (15 possible positions: 1 + 2 + 4 + 8, kept in a separate block with a
//!   16-bit occupancy mask in the node) and 16 child slots, one per value of
//!   the next 4 address bits.
//! - A child slot is empty, another node (possibly much deeper: levels holding
//!   nothing are skipped), or a *leaf*: the index of the only prefix in that
//!   subtree. Leaves keep sparse regions cheap: a lone host route costs no
//!   node at all.
//! - Every node holds at least two things (prefixes or children), so there are
//!   fewer nodes than prefixes.
//!
//! A lookup reads one node per 4 bits at most, in practice `log16(n)` nodes
//! plus the skipped levels, and picks the longest matching prefix of a node
//! with one mask and a leading-zeros count. With 100 000 prefixes that is 4 to
//! 6 dependent loads, against about 20 for the binary trie of the Linux driver
//! (wireguard-go uses the same binary design). The tables outgrow the L2
//! cache, so each dependent load can miss. Measured with
//! `benches/allowedips.rs` on this shared 2-core machine, fastest criterion
//! sample per lookup (the least disturbed by the other load), this module's
//! first version, the kernel-style binary trie, against this one:
//!
//! | 100 000 prefixes per family       | binary trie | multibit trie |
//! |-----------------------------------|-------------|---------------|
//! | IPv4 host routes in 10.0.0.0/8    | 100 ns      | 17 ns         |
//! | random IPv4, addresses inside     | 127 ns      | 35 ns         |
//! | random IPv4, uniform addresses    | 99 ns       | 32 ns         |
//! | random IPv6, addresses inside     | 232 ns      | 43 ns         |
//!
//! Criterion's mean in a quiet moment was 49 ns (random IPv4), 53 ns (random
//! IPv6) and 19 ns (host routes); under heavy load, several times more.
//!
//! Owner records ("entries") hold the prefix (address, length, family) and the
//! value, and form per value an intrusive doubly linked list in insertion
//! order, reached through a `HashMap<T, list>`. This gives `prefixes_of` its
//! order and makes moving a prefix O(1) (the trie stores entry indices, so a
//! move does not touch it), and removing a value's prefixes O(its prefixes ×
//! depth): a removal walks from the root, so nodes need no parent index.
//!
//! Memory, with a `u32` value: an entry is 32 bytes, an IPv4 node 76, an IPv6
//! node 96 and a prefix block 60. Measured (test `memory_per_prefix`): 45 bytes
//! per prefix for 100 000 host routes, 63 for 100 000 random IPv4 prefixes and
//! 69 for random IPv6 ones, up to 1.5 times that with `Vec` growth slack. The
//! worst case, a chain of nodes holding one prefix and one child each, is
//! under 200.
//!
//! With the `debug-checks` feature every mutation re-validates the whole
//! structure (`check_invariants`), which is quadratic over a sequence of
//! mutations: meant for tests and fuzzing only.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rustc_hash::FxBuildHasher;

/// Index value meaning "nothing" in the arenas and child slots.
const NONE: u32 = u32::MAX;

/// Tag bit of a child slot holding an entry index (a leaf) rather than a node
/// index. `NONE` also carries it and decodes to an index no arena reaches.
const LEAF: u32 = 1 << 31;

/// Address bits consumed per trie level.
const STRIDE: u8 = 4;

/// Child slots per node.
const FANOUT: usize = 1 << STRIDE;

/// Prefix slots per node: lengths `depth..depth + STRIDE`, that is
/// 1 + 2 + 4 + 8.
const NODE_PREFIXES: usize = FANOUT - 1;

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

    /// The `STRIDE` bits starting at bit `depth` (counted from the most
    /// significant), for `depth <= BITS - STRIDE`.
    fn chunk(self, depth: u8) -> usize;

    /// Number of leading bits on which `self` and `other` agree.
    fn common_prefix_len(self, other: Self) -> u8;

    /// Widens to the representation stored in entries.
    fn to_stored(self) -> u128;

    /// Inverse of `to_stored`.
    fn from_stored(stored: u128) -> Self;
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
    fn chunk(self, depth: u8) -> usize {
        (self.wrapping_shl(u32::from(depth)) >> (32 - STRIDE)) as usize
    }

    #[inline]
    fn common_prefix_len(self, other: Self) -> u8 {
        // leading_zeros is at most 32, so the cast cannot truncate.
        (self ^ other).leading_zeros() as u8
    }

    fn to_stored(self) -> u128 {
        u128::from(self)
    }

    #[inline]
    fn from_stored(stored: u128) -> Self {
        // IPv4 entries store a value below 2^32: the truncation is exact.
        stored as u32
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
    fn chunk(self, depth: u8) -> usize {
        (self.wrapping_shl(u32::from(depth)) >> (128 - STRIDE)) as usize
    }

    #[inline]
    fn common_prefix_len(self, other: Self) -> u8 {
        // leading_zeros is at most 128, so the cast cannot truncate.
        (self ^ other).leading_zeros() as u8
    }

    fn to_stored(self) -> u128 {
        self
    }

    #[inline]
    fn from_stored(stored: u128) -> Self {
        stored
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

/// Deepest node depth (a multiple of `STRIDE`) at or above `len` bits.
fn level_floor(len: u8) -> u8 {
    len - len % STRIDE
}

/// Position in a [`PrefixBlock`] of the prefix `key/cidr`, for a node at
/// `depth` with `depth <= cidr < depth + STRIDE`.
fn prefix_slot<K: Key>(key: K, cidr: u8, depth: u8) -> usize {
    let extra = cidr - depth;
    (1 << extra) - 1 + (key.chunk(depth) >> (STRIDE - extra))
}

/// For each value of a node's next `STRIDE` address bits, the positions in
/// a [`PrefixBlock`] of the node's prefixes containing those addresses (one
/// per length), as a bit set.
const CONTAINING_PREFIXES: [u16; FANOUT] = {
    let mut table = [0u16; FANOUT];
    let mut chunk = 0;
    while chunk < FANOUT {
        let mut extra = 0;
        while extra < STRIDE {
            table[chunk] |= 1 << ((1 << extra) - 1 + (chunk >> (STRIDE - extra)));
            extra += 1;
        }
        chunk += 1;
    }
    table
};

/// One trie node (see the module documentation).
///
/// The node's own prefixes live in a separate block (most deep nodes have
/// none): the hot node is 76 bytes for IPv4 and 96 for IPv6, and the block
/// is read only when `prefix_bits` says one of its prefixes matches.
#[derive(Debug, Clone, Copy)]
struct Node<K> {
    /// The first `depth` bits shared by everything below, the rest cleared.
    key: K,
    /// Bit `i` set when position `i` of the prefix block holds an entry.
    prefix_bits: u16,
    depth: u8,
    /// Index in [`Trie::blocks`], `NONE` while `prefix_bits` is zero.
    prefix_block: u32,
    /// Subtrees per value of the next `STRIDE` bits: `NONE`, a node index,
    /// or `LEAF | entry index`.
    children: [u32; FANOUT],
}

/// Entries of a node's prefixes of length `depth + l` (`l < STRIDE`), at
/// position `2^l - 1 + (their l bits after depth)`; `NONE` when absent.
type PrefixBlock = [u32; NODE_PREFIXES];

impl<K: Key> Node<K> {
    fn occupied_children(&self) -> impl Iterator<Item = u32> + '_ {
        self.children.iter().copied().filter(|&slot| slot != NONE)
    }
}

/// The prefix stored in entry `index`, if it is in use.
fn stored_prefix<T>(entries: &[Option<Entry<T>>], index: u32) -> Option<(u128, u8)> {
    let entry = entries.get(index as usize)?.as_ref()?;
    Some((entry.key, entry.cidr))
}

/// A multibit trie over one address family. It stores entry indices; the
/// prefixes themselves are read from the entries.
#[derive(Debug, Clone)]
struct Trie<K> {
    nodes: Vec<Node<K>>,
    /// Indices of released slots in `nodes`, reused before growing.
    free: Vec<u32>,
    /// Prefix blocks of the nodes holding prefixes of their own.
    blocks: Vec<PrefixBlock>,
    /// Indices of released slots in `blocks`.
    free_blocks: Vec<u32>,
    /// The top slot, encoded like a child slot.
    root: u32,
}

impl<K: Key> Trie<K> {
    const fn new() -> Self {
        Trie {
            nodes: Vec::new(),
            free: Vec::new(),
            blocks: Vec::new(),
            free_blocks: Vec::new(),
            root: NONE,
        }
    }

    fn clear(&mut self) {
        self.nodes.clear();
        self.free.clear();
        self.blocks.clear();
        self.free_blocks.clear();
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
    fn lookup<T>(&self, addr: K, entries: &[Option<Entry<T>>]) -> u32 {
        let mut best = NONE;
        let mut slot = self.root;
        loop {
            if slot & LEAF != 0 {
                // A leaf, or `NONE` whose index matches no entry.
                let index = slot & !LEAF;
                if let Some((key, cidr)) = stored_prefix(entries, index) {
                    if K::from_stored(key).shares_prefix(addr, cidr) {
                        best = index;
                    }
                }
                return best;
            }
            let Some(node) = self.nodes.get(slot as usize) else {
                return best;
            };
            if !node.key.shares_prefix(addr, node.depth) {
                return best;
            }
            let chunk = addr.chunk(node.depth);
            if let Some(entry) = self.longest_prefix(node, chunk) {
                best = entry;
            }
            slot = node.children[chunk];
        }
    }

    /// Entry index of exactly `key/cidr` (`key` masked), or `NONE`.
    fn find<T>(&self, key: K, cidr: u8, entries: &[Option<Entry<T>>]) -> u32 {
        let mut slot = self.root;
        loop {
            if slot & LEAF != 0 {
                let index = slot & !LEAF;
                let found = stored_prefix(entries, index) == Some((key.to_stored(), cidr));
                return if found { index } else { NONE };
            }
            let Some(node) = self.nodes.get(slot as usize) else {
                return NONE;
            };
            if cidr < node.depth || !node.key.shares_prefix(key, node.depth) {
                return NONE;
            }
            if cidr < node.depth + STRIDE {
                return self.prefix_at(node, prefix_slot(key, cidr, node.depth));
            }
            slot = node.children[key.chunk(node.depth)];
        }
    }

    /// Adds entry `entry` holding `key/cidr` (`key` masked), which must not be
    /// in the trie yet.
    fn insert<T>(&mut self, key: K, cidr: u8, entry: u32, entries: &[Option<Entry<T>>]) {
        // The slot being examined: the root, or child `chunk` of `parent`.
        let mut parent = NONE;
        let mut chunk = 0;
        loop {
            let slot = self.slot(parent, chunk);
            if slot == NONE {
                self.set_slot(parent, chunk, LEAF | entry);
                return;
            }
            if slot & LEAF != 0 {
                let Some((other_key, other_cidr)) = stored_prefix(entries, slot & !LEAF) else {
                    debug_assert!(false, "allowedips: leaf without entry");
                    return;
                };
                let other_key = K::from_stored(other_key);
                let shared = key.common_prefix_len(other_key).min(cidr).min(other_cidr);
                let node = self.allocate(key, level_floor(shared));
                self.place(node, other_key, other_cidr, slot);
                self.place(node, key, cidr, LEAF | entry);
                self.set_slot(parent, chunk, node);
                return;
            }
            let node = *self.node(slot);
            if cidr >= node.depth && node.key.shares_prefix(key, node.depth) {
                if cidr < node.depth + STRIDE {
                    self.place(slot, key, cidr, LEAF | entry);
                    return;
                }
                parent = slot;
                chunk = key.chunk(node.depth);
                continue;
            }
            // The new prefix is not inside this node: put a node above both.
            let shared = key.common_prefix_len(node.key).min(cidr);
            let above = self.allocate(key, level_floor(shared));
            let above_depth = self.node(above).depth;
            self.node_mut(above).children[node.key.chunk(above_depth)] = slot;
            self.place(above, key, cidr, LEAF | entry);
            self.set_slot(parent, chunk, above);
            return;
        }
    }

    /// Removes the entry holding `key/cidr` (`key` masked) and merges away a
    /// node left holding a single thing. Returns whether it was found.
    fn remove<T>(&mut self, key: K, cidr: u8, entries: &[Option<Entry<T>>]) -> bool {
        // The slot holding `parent`, then the slot being examined.
        let (mut grandparent, mut parent_chunk) = (NONE, 0);
        let (mut parent, mut chunk) = (NONE, 0);
        loop {
            let slot = self.slot(parent, chunk);
            if slot & LEAF != 0 {
                if stored_prefix(entries, slot & !LEAF) != Some((key.to_stored(), cidr)) {
                    return false;
                }
                self.set_slot(parent, chunk, NONE);
                if parent != NONE {
                    self.merge_if_thin(grandparent, parent_chunk, parent);
                }
                return true;
            }
            let Some(node) = self.nodes.get(slot as usize) else {
                return false;
            };
            if cidr < node.depth || !node.key.shares_prefix(key, node.depth) {
                return false;
            }
            if cidr < node.depth + STRIDE {
                let position = prefix_slot(key, cidr, node.depth);
                if self.prefix_at(node, position) == NONE {
                    return false;
                }
                self.set_prefix(slot, position, NONE);
                self.merge_if_thin(parent, chunk, slot);
                return true;
            }
            (grandparent, parent_chunk) = (parent, chunk);
            (parent, chunk) = (slot, key.chunk(node.depth));
        }
    }

    /// Replaces `node`, which sits in child `chunk` of `parent`, by its
    /// content if it holds a single prefix or child.
    fn merge_if_thin(&mut self, parent: u32, chunk: usize, node: u32) {
        let current = *self.node(node);
        let mut children = current.occupied_children();
        let first_prefix = current.prefix_bits.trailing_zeros() as usize;
        let only_prefix = self.prefix_at(&current, first_prefix);
        let prefix_count = current.prefix_bits.count_ones();
        let replacement = match (children.next(), children.next(), prefix_count) {
            (Some(child), None, 0) => child,
            (None, _, 1) => LEAF | only_prefix,
            (None, _, 0) => NONE,
            _ => return,
        };
        self.set_slot(parent, chunk, replacement);
        self.release(node);
    }

    /// Stores `LEAF | entry` (`leaf`) for `key/cidr` in `node`: among its own
    /// prefixes, or as a leaf child. The target position must be free.
    fn place(&mut self, node: u32, key: K, cidr: u8, leaf: u32) {
        let depth = self.node(node).depth;
        if cidr < depth + STRIDE {
            self.set_prefix(node, prefix_slot(key, cidr, depth), leaf & !LEAF);
        } else {
            self.node_mut(node).children[key.chunk(depth)] = leaf;
        }
    }

    /// The longest of `node`'s own prefixes containing addresses whose next
    /// bits are `chunk`, as an entry index.
    #[inline]
    fn longest_prefix(&self, node: &Node<K>, chunk: usize) -> Option<u32> {
        let containing = node.prefix_bits & CONTAINING_PREFIXES[chunk];
        if containing == 0 {
            return None;
        }
        // Longer prefixes sit at higher positions: take the highest bit.
        let longest = u16::BITS - 1 - containing.leading_zeros();
        let block = self.blocks.get(node.prefix_block as usize)?;
        block.get(longest as usize).copied()
    }

    /// The entry at `position` among `node`'s own prefixes, or `NONE`.
    fn prefix_at(&self, node: &Node<K>, position: usize) -> u32 {
        if position >= NODE_PREFIXES || node.prefix_bits & (1 << position) == 0 {
            return NONE;
        }
        self.blocks
            .get(node.prefix_block as usize)
            .map_or(NONE, |block| block[position])
    }

    /// Stores `entry` (or `NONE` to clear) at `position` among the node's own
    /// prefixes, taking or returning its prefix block as needed.
    fn set_prefix(&mut self, node: u32, position: usize, entry: u32) {
        let mut block = self.node(node).prefix_block;
        if block == NONE {
            if entry == NONE {
                return;
            }
            block = self.allocate_block();
            self.node_mut(node).prefix_block = block;
        }
        self.blocks[block as usize][position] = entry;
        let target = self.node_mut(node);
        if entry == NONE {
            target.prefix_bits &= !(1 << position);
        } else {
            target.prefix_bits |= 1 << position;
        }
        if target.prefix_bits == 0 {
            target.prefix_block = NONE;
            self.free_blocks.push(block);
        }
    }

    fn allocate_block(&mut self) -> u32 {
        if let Some(index) = self.free_blocks.pop() {
            return index;
        }
        let index = arena_index(self.blocks.len());
        self.blocks.push([NONE; NODE_PREFIXES]);
        index
    }

    /// The root slot if `parent` is `NONE`, else child `chunk` of `parent`.
    fn slot(&self, parent: u32, chunk: usize) -> u32 {
        if parent == NONE {
            self.root
        } else {
            self.node(parent).children[chunk]
        }
    }

    fn set_slot(&mut self, parent: u32, chunk: usize, value: u32) {
        if parent == NONE {
            self.root = value;
        } else {
            self.node_mut(parent).children[chunk] = value;
        }
    }

    /// A new, empty node at `depth` covering `key`.
    fn allocate(&mut self, key: K, depth: u8) -> u32 {
        let node = Node {
            key: key.masked(depth),
            prefix_bits: 0,
            depth,
            prefix_block: NONE,
            children: [NONE; FANOUT],
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
        if self.root & LEAF != 0 {
            // No node is reachable any more: drop the arena contents instead
            // of keeping a free list of everything.
            let root = self.root;
            self.clear();
            self.root = root;
            return;
        }
        let block = self.node(index).prefix_block;
        if block != NONE {
            self.node_mut(index).prefix_block = NONE;
            self.free_blocks.push(block);
        }
        self.free.push(index);
    }
}

/// Converts an arena length into the index of the next slot.
///
/// Indices must stay below `LEAF | ...` tagging limits (2^31 - 1). Reaching
/// that many slots would take over 60 GB; memory runs out long before, so
/// this is not reachable from any input.
fn arena_index(len: usize) -> u32 {
    u32::try_from(len)
        .ok()
        .filter(|&index| index < !LEAF)
        .expect("allowedips arena exceeds 2^31 - 1 slots")
}

/// Address family of an entry, selecting its trie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

/// One prefix and its owner, linked into the owner's list.
#[derive(Debug, Clone, Copy)]
struct Entry<T> {
    /// The masked address (an IPv4 address in the low 32 bits).
    key: u128,
    value: T,
    /// Neighbours in the value's insertion-ordered list.
    prev: u32,
    next: u32,
    cidr: u8,
    family: Family,
}

impl<T> Entry<T> {
    fn prefix(&self) -> (IpAddr, u8) {
        let addr = match self.family {
            Family::V4 => IpAddr::V4(Ipv4Addr::from(u32::from_stored(self.key))),
            Family::V6 => IpAddr::V6(Ipv6Addr::from(self.key)),
        };
        (addr, self.cidr)
    }
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
    /// Fx-hashed: its keys are peer ids the device hands out in sequence
    /// (nobody else picks them), and `get` looks one up per peer listed.
    by_value: HashMap<T, EntryList, FxBuildHasher>,
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
            by_value: HashMap::default(),
            len: 0,
        }
    }

    /// Makes room for `values` more owners and `prefixes` more prefixes,
    /// so that adding them does not grow the tables one step at a time
    /// (each step copies the whole table).
    pub fn reserve(&mut self, values: usize, prefixes: usize) {
        self.by_value.reserve(values);
        let reused = self.free_entries.len();
        self.entries.reserve(prefixes.saturating_sub(reused));
    }

    /// Routes `addr/cidr` (host bits ignored) to `value`.
    ///
    /// A prefix already owned by another value moves to `value` and goes to
    /// the end of its list; one already owned by `value` keeps its place.
    pub fn insert(&mut self, addr: IpAddr, cidr: u8, value: T) -> Result<(), AllowedIpsError> {
        let (family, key) = family_and_key(addr, cidr)?;
        let existing = match family {
            Family::V4 => self.v4.find(u32::from_stored(key), cidr, &self.entries),
            Family::V6 => self.v6.find(key, cidr, &self.entries),
        };
        match self.entry(existing).map(|entry| entry.value) {
            Some(owner) if owner == value => {}
            Some(_) => {
                self.unlink(existing);
                if let Some(entry) = self.entry_mut(existing) {
                    entry.value = value;
                }
                self.append(value, existing);
            }
            None => {
                let index = self.allocate_entry(Entry {
                    key,
                    value,
                    prev: NONE,
                    next: NONE,
                    cidr,
                    family,
                });
                match family {
                    Family::V4 => self
                        .v4
                        .insert(u32::from_stored(key), cidr, index, &self.entries),
                    Family::V6 => self.v6.insert(key, cidr, index, &self.entries),
                }
                self.append(value, index);
            }
        }
        #[cfg(feature = "debug-checks")]
        self.check_invariants();
        Ok(())
    }

    /// Removes `addr/cidr` (host bits ignored) if `value` owns it; returns
    /// whether it was removed.
    pub fn remove(&mut self, addr: IpAddr, cidr: u8, value: T) -> Result<bool, AllowedIpsError> {
        let (family, key) = family_and_key(addr, cidr)?;
        let index = match family {
            Family::V4 => self.v4.find(u32::from_stored(key), cidr, &self.entries),
            Family::V6 => self.v6.find(key, cidr, &self.entries),
        };
        match self.entry(index) {
            Some(entry) if entry.value == value => {}
            _ => return Ok(false),
        }
        self.unlink(index);
        self.remove_from_trie(index);
        self.release_entry(index);
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
        while let Some(next) = self.entry(index).map(|entry| entry.next) {
            self.remove_from_trie(index);
            self.release_entry(index);
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
        let entry = self.v4.lookup(u32::from_be_bytes(addr), &self.entries);
        self.entry(entry).map(|entry| entry.value)
    }

    /// The owner of the longest IPv6 prefix containing `addr` (network order,
    /// as in an IP header).
    #[inline]
    pub fn lookup_v6(&self, addr: [u8; 16]) -> Option<T> {
        let entry = self.v6.lookup(u128::from_be_bytes(addr), &self.entries);
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

    #[inline]
    fn entry(&self, index: u32) -> Option<&Entry<T>> {
        self.entries.get(index as usize)?.as_ref()
    }

    fn entry_mut(&mut self, index: u32) -> Option<&mut Entry<T>> {
        self.entries.get_mut(index as usize)?.as_mut()
    }

    /// Takes the prefix of entry `index` out of its trie.
    fn remove_from_trie(&mut self, index: u32) {
        let Some(&Entry {
            key, cidr, family, ..
        }) = self.entry(index)
        else {
            return;
        };
        let removed = match family {
            Family::V4 => self.v4.remove(u32::from_stored(key), cidr, &self.entries),
            Family::V6 => self.v6.remove(key, cidr, &self.entries),
        };
        debug_assert!(removed, "allowedips: entry {index} missing from its trie");
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
        if let Some(tail) = self.entry_mut(old_tail) {
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
        self.len += 1;
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

    /// Frees entry slot `index`, already out of its list and its trie.
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

/// Rejects a prefix length wider than the address; returns the family and
/// the address with its host bits cleared, in the entries' representation.
fn family_and_key(addr: IpAddr, cidr: u8) -> Result<(Family, u128), AllowedIpsError> {
    match addr {
        IpAddr::V4(addr) => Ok((Family::V4, masked_key(u32::from(addr), cidr)?.to_stored())),
        IpAddr::V6(addr) => Ok((Family::V6, masked_key(u128::from(addr), cidr)?)),
    }
}

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
        Some(entry.prefix())
    }
}

#[cfg(any(test, feature = "debug-checks"))]
mod invariants {
    //! Structural checks of the whole table, run after every mutation with
    //! the `debug-checks` feature and from the tests.

    use super::{
        prefix_slot, AllowedIps, Entry, Family, Key, Trie, LEAF, NODE_PREFIXES, NONE, STRIDE,
    };
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
        let mut check_entry =
            |index: u32, min_cidr: u8, max_cidr: u8, prefix: K, prefix_len: u8| {
                assert!(
                    seen.insert(index),
                    "allowedips {family:?}: entry {index} stored twice"
                );
                let entry = entries
                    .get(index as usize)
                    .and_then(Option::as_ref)
                    .unwrap_or_else(|| {
                        panic!("allowedips {family:?}: trie holds free entry {index}")
                    });
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
                    .unwrap_or_else(|| {
                        panic!("allowedips {family:?}: node {slot} block out of range")
                    })
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
        let free: HashSet<u32> = trie.free.iter().copied().collect();
        assert_eq!(
            free.len(),
            trie.free.len(),
            "allowedips {family:?}: duplicate free node"
        );
        assert!(
            free.is_disjoint(&seen_nodes),
            "allowedips {family:?}: a free node is reachable"
        );
        assert_eq!(
            seen_nodes.len() + free.len(),
            trie.nodes.len(),
            "allowedips {family:?}: leaked nodes"
        );
        let free_blocks: HashSet<u32> = trie.free_blocks.iter().copied().collect();
        assert_eq!(
            free_blocks.len(),
            trie.free_blocks.len(),
            "allowedips {family:?}: duplicate free block"
        );
        assert!(
            free_blocks.is_disjoint(&seen_blocks),
            "allowedips {family:?}: a free block is in use"
        );
        assert_eq!(
            seen_blocks.len() + free_blocks.len(),
            trie.blocks.len(),
            "allowedips {family:?}: leaked prefix blocks"
        );
    }
}

/// A reference model for tests, fuzzing and the self-tests: a list of
/// prefixes in insertion order, searched linearly, with masks built bit by
/// bit. Slow and obviously right. Public with the `reference-models` feature
/// (the fuzz targets compare the trie against it).
#[cfg(any(test, feature = "selftest", feature = "reference-models"))]
pub mod naive {
    use super::AllowedIpsError;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    /// A reference implementation with no cleverness: a list of prefixes in
    /// insertion order, searched linearly.
    #[derive(Default)]
    pub struct NaiveTable {
        /// (is_v6, masked address as an integer, cidr, value), oldest first.
        pub(crate) prefixes: Vec<(bool, u128, u8, u32)>,
    }

    /// (is IPv6, the address as an integer, its width in bits).
    pub(crate) fn naive_parts(addr: IpAddr) -> (bool, u128, u8) {
        match addr {
            IpAddr::V4(addr) => (false, u128::from(u32::from(addr)), 32),
            IpAddr::V6(addr) => (true, u128::from(addr), 128),
        }
    }

    /// Mask built bit by bit, independently of the trie's shift tricks
    /// (from a table: building it per call would dominate the test time).
    pub(crate) fn naive_mask(width: u8, cidr: u8) -> u128 {
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

        /// Like [`AllowedIps::insert`](super::AllowedIps::insert).
        pub fn insert(
            &mut self,
            addr: IpAddr,
            cidr: u8,
            value: u32,
        ) -> Result<(), AllowedIpsError> {
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

        /// Like [`AllowedIps::remove`](super::AllowedIps::remove).
        pub fn remove(
            &mut self,
            addr: IpAddr,
            cidr: u8,
            value: u32,
        ) -> Result<bool, AllowedIpsError> {
            let (is_v6, key) = Self::key(addr, cidr).ok_or(AllowedIpsError::InvalidCidr)?;
            match self.position(is_v6, key, cidr) {
                Some(at) if self.prefixes[at].3 == value => {
                    self.prefixes.remove(at);
                    Ok(true)
                }
                _ => Ok(false),
            }
        }

        /// Like [`AllowedIps::remove_by_value`](super::AllowedIps::remove_by_value).
        pub fn remove_by_value(&mut self, value: u32) {
            self.prefixes.retain(|&(_, _, _, owner)| owner != value);
        }

        /// Removes every prefix.
        pub fn clear(&mut self) {
            self.prefixes.clear();
        }

        /// The number of prefixes.
        pub fn len(&self) -> usize {
            self.prefixes.len()
        }

        /// True when there is no prefix.
        pub fn is_empty(&self) -> bool {
            self.prefixes.is_empty()
        }

        /// Like [`AllowedIps::lookup`](super::AllowedIps::lookup).
        pub fn lookup(&self, addr: IpAddr) -> Option<u32> {
            let (is_v6, bits, width) = naive_parts(addr);
            self.prefixes
                .iter()
                .filter(|&&(v6, key, cidr, _)| v6 == is_v6 && bits & naive_mask(width, cidr) == key)
                .max_by_key(|&&(_, _, cidr, _)| cidr)
                .map(|&(_, _, _, value)| value)
        }

        /// Like [`AllowedIps::prefixes_of`](super::AllowedIps::prefixes_of), oldest first.
        pub fn prefixes_of(&self, value: u32) -> Vec<(IpAddr, u8)> {
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

        #[cfg(test)]
        pub(crate) fn values(&self) -> Vec<u32> {
            let mut values: Vec<u32> = self.prefixes.iter().map(|p| p.3).collect();
            values.sort_unstable();
            values.dedup();
            values
        }
    }
}

/// Start-up self-test: masked read-back and longest-prefix cases of the
/// kernel's selftest, then a short randomized comparison (fixed seed) of
/// inserts, moves, removals and lookups against [`naive::NaiveTable`].
#[cfg(any(test, feature = "selftest"))]
pub(crate) fn selftest() -> Result<(), String> {
    use rand_core::{RngCore, SeedableRng};
    use std::net::{IpAddr, Ipv4Addr};
    let mut table = AllowedIps::new();
    let v4 = |a, b, c, d| IpAddr::V4(Ipv4Addr::new(a, b, c, d));
    let ok = |r: Result<(), AllowedIpsError>| r.map_err(|e| format!("{e:?}"));
    ok(table.insert(v4(192, 95, 5, 93), 27, 1u32))?;
    ok(table.insert(v4(192, 95, 5, 64), 27, 2))?;
    ok(table.insert(v4(192, 95, 0, 0), 16, 3))?;
    ok(table.insert(v4(0, 0, 0, 0), 0, 4))?;
    let read_back: Vec<_> = table.prefixes_of(2).collect();
    if read_back != [(v4(192, 95, 5, 64), 27)] || table.prefixes_of(1).count() != 0 {
        return Err(format!("masked insert or move: {read_back:?}"));
    }
    for (addr, want) in [
        (v4(192, 95, 5, 70), Some(2)),
        (v4(192, 95, 6, 1), Some(3)),
        (v4(10, 0, 0, 1), Some(4)),
    ] {
        if table.lookup(addr) != want {
            return Err(format!(
                "lookup {addr}: got {:?}, want {want:?}",
                table.lookup(addr)
            ));
        }
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0x5eed);
    let mut table = AllowedIps::new();
    let mut model = naive::NaiveTable::default();
    let random_addr = |rng: &mut rand_chacha::ChaCha8Rng| -> IpAddr {
        if rng.next_u32() % 2 == 0 {
            IpAddr::V4(Ipv4Addr::from(rng.next_u32() & 0xff00_ffff))
        } else {
            let high = u128::from(rng.next_u64() & 0xffff_0000_ffff_ffff) << 64;
            IpAddr::V6((high | u128::from(rng.next_u64())).into())
        }
    };
    for _ in 0..300 {
        let addr = random_addr(&mut rng);
        let cidr = (rng.next_u32() % if addr.is_ipv4() { 33 } else { 129 }) as u8;
        let value = rng.next_u32() % 20;
        match rng.next_u32() % 8 {
            0 => {
                let _ = table.remove(addr, cidr, value);
                let _ = model.remove(addr, cidr, value);
            }
            1 => {
                table.remove_by_value(value);
                model.remove_by_value(value);
            }
            _ => {
                ok(table.insert(addr, cidr, value))?;
                ok(model.insert(addr, cidr, value))?;
            }
        }
    }
    for _ in 0..3000 {
        let addr = random_addr(&mut rng);
        if table.lookup(addr) != model.lookup(addr) {
            return Err(format!("random lookup {addr} differs from the model"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::naive::NaiveTable;
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

    #[cfg(not(feature = "debug-checks"))]
    impl<T> AllowedIps<T> {
        /// Heap bytes used by live data, or held including `Vec` growth
        /// slack (`with_slack`).
        fn heap_bytes(&self, with_slack: bool) -> usize {
            use std::mem::size_of;
            fn held<X>(items: &Vec<X>, with_slack: bool) -> usize {
                size_of::<X>()
                    * if with_slack {
                        items.capacity()
                    } else {
                        items.len()
                    }
            }
            held(&self.v4.nodes, with_slack)
                + held(&self.v4.free, with_slack)
                + held(&self.v4.blocks, with_slack)
                + held(&self.v4.free_blocks, with_slack)
                + held(&self.v6.nodes, with_slack)
                + held(&self.v6.free, with_slack)
                + held(&self.v6.blocks, with_slack)
                + held(&self.v6.free_blocks, with_slack)
                + held(&self.entries, with_slack)
                + held(&self.free_entries, with_slack)
                // hashbrown: one control byte per bucket besides the pair.
                + self.by_value.capacity() * (size_of::<(T, super::EntryList)>() + 1)
        }
    }

    /// Memory stays lean for the shapes that matter: many peers with one
    /// host route each, and many random prefixes of either family.
    /// (Skipped with `debug-checks`: a full check after each of 300 000
    /// inserts would be quadratic.)
    #[test]
    #[cfg(not(feature = "debug-checks"))]
    fn memory_per_prefix() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut hosts = AllowedIps::new();
        for peer in 0..50_000u32 {
            hosts
                .insert(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | peer)), 32, peer)
                .unwrap();
            let v6 = Ipv6Addr::from(0xfd00_u128 << 112 | u128::from(peer));
            hosts.insert(IpAddr::V6(v6), 128, peer).unwrap();
        }
        let mut random_v4 = AllowedIps::new();
        while random_v4.len() < 100_000 {
            let cidr = 8 + (rng.next_u32() % 25) as u8;
            random_v4
                .insert(IpAddr::V4(Ipv4Addr::from(rng.next_u32())), cidr, 0u32)
                .unwrap();
        }
        let mut random_v6 = AllowedIps::new();
        while random_v6.len() < 100_000 {
            let cidr = 16 + (rng.next_u32() % 113) as u8;
            let addr = IpAddr::V6(Ipv6Addr::from(random_u128(&mut rng)));
            random_v6.insert(addr, cidr, rng.next_u32() % 1000).unwrap();
        }
        let tables = [
            ("host routes", &hosts),
            ("random v4", &random_v4),
            ("random v6", &random_v6),
        ];
        for (name, table) in tables {
            let live = table.heap_bytes(false) / table.len();
            let held = table.heap_bytes(true) / table.len();
            eprintln!("{name}: {live} bytes per prefix live, {held} with Vec slack");
            assert!(live < 100, "{name}: {live} bytes per prefix");
            assert!(
                held <= 2 * live,
                "{name}: {held} bytes held for {live} live"
            );
        }
    }

    #[test]
    fn start_up_selftest_passes() {
        assert_eq!(super::selftest(), Ok(()));
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
