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
//! cache, so each dependent load can miss; BENCHMARKS.md ("Allowed-IPs
//! table") has the measured lookup times of both designs.
//!
//! Owner records ("entries") hold the prefix (address, length, family) and the
//! value, and form per value an intrusive doubly linked list in insertion
//! order, reached through a `HashMap<T, list>`. This gives `prefixes_of` its
//! order and makes moving a prefix O(1) (the trie stores entry indices, so a
//! move does not touch it), and removing a value's prefixes O(its prefixes ×
//! depth): a removal walks from the root, so nodes need no parent index.
//!
//! Memory, with a `u32` value: an entry is 32 bytes, an IPv4 node 76, an IPv6
//! node 96 and a prefix block 60: the test `memory_per_prefix` bounds the
//! live bytes per prefix at 100 (BENCHMARKS.md has the measured figures). The
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

    /// Makes room for the nodes and prefix blocks of `prefixes` more
    /// prefixes at worst: every node holds two things or more, so there
    /// are fewer nodes than prefixes, and at most a block per node.
    fn reserve(&mut self, prefixes: usize) {
        self.nodes.reserve(prefixes.saturating_sub(self.free.len()));
        self.blocks
            .reserve(prefixes.saturating_sub(self.free_blocks.len()));
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

    /// Makes room for `values` more owners and `v4_prefixes` plus
    /// `v6_prefixes` more prefixes, trie nodes and prefix blocks included,
    /// so that adding them does not grow the tables one step at a time
    /// (each step copies the whole table: at 2^20 prefixes a copy of tens
    /// of megabytes). The tries are reserved for their worst case, a node
    /// per prefix; room that is never filled costs address space only, its
    /// pages are never touched.
    pub fn reserve(&mut self, values: usize, v4_prefixes: usize, v6_prefixes: usize) {
        self.by_value.reserve(values);
        let reused = self.free_entries.len();
        let prefixes = v4_prefixes.saturating_add(v6_prefixes);
        self.entries.reserve(prefixes.saturating_sub(reused));
        self.v4.reserve(v4_prefixes);
        self.v6.reserve(v6_prefixes);
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
mod invariants;

#[cfg(any(test, feature = "selftest", feature = "reference-models"))]
pub mod naive;

#[cfg(any(test, feature = "selftest"))]
mod selftest;
#[cfg(any(test, feature = "selftest"))]
pub(crate) use selftest::selftest;

#[cfg(test)]
mod tests;
