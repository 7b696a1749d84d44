//! Fuzzes the allowed-IPs table against the crate's reference model
//! (`allowedips::naive`: a list of prefixes in insertion order searched linearly). The library is built with
//! `debug-checks`, so every mutation also re-validates the trie's structure.
#![no_main]

use arbitrary::Arbitrary;
use ferroguard_proto::allowedips::naive::NaiveTable;
use ferroguard_proto::allowedips::AllowedIps;
use libfuzzer_sys::fuzz_target;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Number of distinct values (peers) the operations use.
const VALUES: u32 = 8;

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
    Insert { addr: Address, cidr: u8, value: u32 },
    Remove { addr: Address, cidr: u8, value: u32 },
    RemoveByValue { value: u32 },
    Lookup { addr: Address },
    Clear,
}

fuzz_target!(|ops: Vec<Op>| {
    let mut table = AllowedIps::new();
    let mut naive = NaiveTable::default();
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
                naive.remove_by_value(value % VALUES);
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
                naive.clear();
            }
        }
        assert_eq!(table.len(), naive.len());
        assert_eq!(table.is_empty(), naive.is_empty());
    }
    for value in 0..VALUES {
        let got: Vec<_> = table.prefixes_of(value).collect();
        assert_eq!(got, naive.prefixes_of(value), "prefixes_of({value})");
    }
});
