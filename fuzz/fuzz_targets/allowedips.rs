//! Fuzzes the allowed-IPs table against a naive model: a list of prefixes in
//! insertion order searched linearly. The library is built with
//! `debug-checks`, so every mutation also re-validates the trie's structure.
#![no_main]

use arbitrary::Arbitrary;
use ferroguard_proto::allowedips::{AllowedIps, AllowedIpsError};
use libfuzzer_sys::fuzz_target;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Number of distinct values (peers) the operations use.
const VALUES: u8 = 8;

#[derive(Arbitrary, Debug)]
struct Address {
    v6: bool,
    octets: [u8; 16],
}

impl Address {
    fn ip(&self) -> IpAddr {
        if self.v6 {
            IpAddr::V6(Ipv6Addr::from(self.octets))
        } else {
            let [a, b, c, d, ..] = self.octets;
            IpAddr::V4(Ipv4Addr::new(a, b, c, d))
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    Insert { addr: Address, cidr: u8, value: u8 },
    Remove { addr: Address, cidr: u8, value: u8 },
    RemoveByValue { value: u8 },
    Lookup { addr: Address },
    Clear,
}

/// The reference: (is_v6, masked address, cidr, value), oldest first.
#[derive(Default)]
struct Naive {
    prefixes: Vec<(bool, u128, u8, u8)>,
}

fn parts(addr: IpAddr) -> (bool, u128, u8) {
    match addr {
        IpAddr::V4(addr) => (false, u128::from(u32::from(addr)), 32),
        IpAddr::V6(addr) => (true, u128::from(addr), 128),
    }
}

/// The first `cidr` of `width` bits set, built bit by bit.
fn mask(width: u8, cidr: u8) -> u128 {
    (0..cidr).fold(0, |mask, bit| mask | 1u128 << (width - 1 - bit))
}

impl Naive {
    fn key(addr: IpAddr, cidr: u8) -> Result<(bool, u128), AllowedIpsError> {
        let (v6, bits, width) = parts(addr);
        if cidr > width {
            return Err(AllowedIpsError::InvalidCidr);
        }
        Ok((v6, bits & mask(width, cidr)))
    }

    fn position(&self, v6: bool, key: u128, cidr: u8) -> Option<usize> {
        self.prefixes
            .iter()
            .position(|&(f, k, c, _)| f == v6 && k == key && c == cidr)
    }

    fn insert(&mut self, addr: IpAddr, cidr: u8, value: u8) -> Result<(), AllowedIpsError> {
        let (v6, key) = Self::key(addr, cidr)?;
        if let Some(at) = self.position(v6, key, cidr) {
            if self.prefixes[at].3 == value {
                return Ok(());
            }
            self.prefixes.remove(at);
        }
        self.prefixes.push((v6, key, cidr, value));
        Ok(())
    }

    fn remove(&mut self, addr: IpAddr, cidr: u8, value: u8) -> Result<bool, AllowedIpsError> {
        let (v6, key) = Self::key(addr, cidr)?;
        match self.position(v6, key, cidr) {
            Some(at) if self.prefixes[at].3 == value => {
                self.prefixes.remove(at);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn lookup(&self, addr: IpAddr) -> Option<u8> {
        let (v6, bits, width) = parts(addr);
        self.prefixes
            .iter()
            .filter(|&&(f, key, cidr, _)| f == v6 && bits & mask(width, cidr) == key)
            .max_by_key(|&&(_, _, cidr, _)| cidr)
            .map(|&(_, _, _, value)| value)
    }

    fn prefixes_of(&self, value: u8) -> Vec<(IpAddr, u8)> {
        self.prefixes
            .iter()
            .filter(|&&(_, _, _, owner)| owner == value)
            .map(|&(v6, key, cidr, _)| {
                let addr = if v6 {
                    IpAddr::V6(Ipv6Addr::from(key))
                } else {
                    // IPv4 keys are below 2^32.
                    IpAddr::V4(Ipv4Addr::from(key as u32))
                };
                (addr, cidr)
            })
            .collect()
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let mut table = AllowedIps::new();
    let mut naive = Naive::default();
    for op in &ops {
        match op {
            Op::Insert { addr, cidr, value } => {
                let (addr, value) = (addr.ip(), value % VALUES);
                assert_eq!(
                    table.insert(addr, *cidr, value),
                    naive.insert(addr, *cidr, value)
                );
            }
            Op::Remove { addr, cidr, value } => {
                let (addr, value) = (addr.ip(), value % VALUES);
                assert_eq!(
                    table.remove(addr, *cidr, value),
                    naive.remove(addr, *cidr, value)
                );
            }
            Op::RemoveByValue { value } => {
                table.remove_by_value(value % VALUES);
                naive
                    .prefixes
                    .retain(|&(_, _, _, owner)| owner != value % VALUES);
            }
            Op::Lookup { addr } => {
                let addr = addr.ip();
                assert_eq!(table.lookup(addr), naive.lookup(addr), "lookup {addr}");
                let by_octets = match addr {
                    IpAddr::V4(v4) => table.lookup_v4(v4.octets()),
                    IpAddr::V6(v6) => table.lookup_v6(v6.octets()),
                };
                assert_eq!(by_octets, naive.lookup(addr));
            }
            Op::Clear => {
                table.clear();
                naive.prefixes.clear();
            }
        }
        assert_eq!(table.len(), naive.prefixes.len());
        assert_eq!(table.is_empty(), naive.prefixes.is_empty());
    }
    for value in 0..VALUES {
        let got: Vec<_> = table.prefixes_of(value).collect();
        assert_eq!(got, naive.prefixes_of(value), "prefixes_of({value})");
    }
});
