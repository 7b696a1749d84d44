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
