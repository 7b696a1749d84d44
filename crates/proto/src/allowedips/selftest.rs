//! The allowed-IPs start-up self-test (the kernel keeps its own in
//! `selftest/allowedips.c`).

use super::naive;
use super::{AllowedIps, AllowedIpsError};

/// Start-up self-test: masked read-back and longest-prefix cases of the
/// kernel's selftest, then a short randomized comparison (fixed seed) of
/// inserts, moves, removals and lookups against [`naive::NaiveTable`].
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
