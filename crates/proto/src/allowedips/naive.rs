//! A reference model for tests, fuzzing and the self-tests: a list of
//! prefixes in insertion order, searched linearly, with masks built bit by
//! bit. Slow and obviously right. Public with the `reference-models` feature
//! (the fuzz targets compare the trie against it).

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
    pub fn insert(&mut self, addr: IpAddr, cidr: u8, value: u32) -> Result<(), AllowedIpsError> {
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
    pub fn remove(&mut self, addr: IpAddr, cidr: u8, value: u32) -> Result<bool, AllowedIpsError> {
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
