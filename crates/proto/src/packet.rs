//! IP packets as bytes: header fields, addresses and the Internet checksum,
//! shared by the engine (routing, inner-packet checks), the daemon's ICMP
//! errors and its TUN offloads, so that each field is read in one place.
//!
//! Everything here is a pure function of a byte slice; reads are bounds
//! checked and return `None` past the end, never panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub mod checksum;

/// Length of an IPv4 header without options.
pub const IPV4_MIN_HEADER_LEN: usize = 20;
/// Length of the fixed IPv6 header.
pub const IPV6_HEADER_LEN: usize = 40;
/// IP protocol number of ICMP.
pub const PROTO_ICMP: u8 = 1;
/// IP protocol number of TCP.
pub const PROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const PROTO_UDP: u8 = 17;
/// IPv6 next-header value of ICMPv6.
pub const PROTO_ICMPV6: u8 = 58;

/// Big-endian `u16` at `at`, if in bounds.
pub fn read_u16(bytes: &[u8], at: usize) -> Option<u16> {
    let pair = bytes.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes([pair[0], pair[1]]))
}

/// Big-endian `u32` at `at`, if in bounds.
pub fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let quad = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([quad[0], quad[1], quad[2], quad[3]]))
}

/// Writes a big-endian `u16` at `at`. Panics out of bounds: callers have
/// validated `at + 2 <= bytes.len()`.
pub fn write_u16(bytes: &mut [u8], at: usize, value: u16) {
    bytes[at..at + 2].copy_from_slice(&value.to_be_bytes());
}

/// Writes a big-endian `u32` at `at`. Panics out of bounds: callers have
/// validated `at + 4 <= bytes.len()`.
pub fn write_u32(bytes: &mut [u8], at: usize, value: u32) {
    bytes[at..at + 4].copy_from_slice(&value.to_be_bytes());
}

/// The IPv4 address at `at`, if in bounds.
pub fn ipv4_address(bytes: &[u8], at: usize) -> Option<Ipv4Addr> {
    let octets: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(Ipv4Addr::from(octets))
}

/// The IPv6 address at `at`, if in bounds.
pub fn ipv6_address(bytes: &[u8], at: usize) -> Option<Ipv6Addr> {
    let octets: [u8; 16] = bytes.get(at..at.checked_add(16)?)?.try_into().ok()?;
    Some(Ipv6Addr::from(octets))
}

/// The IP version in the first nibble (4 or 6 for packets we handle).
pub fn version(packet: &[u8]) -> Option<u8> {
    Some(packet.first()? >> 4)
}

/// The destination address of an IPv4 or IPv6 packet whose fixed header is
/// complete (no other check: routing needs only this).
pub fn destination_address(packet: &[u8]) -> Option<IpAddr> {
    match version(packet)? {
        4 if packet.len() >= IPV4_MIN_HEADER_LEN => ipv4_address(packet, 16).map(IpAddr::V4),
        6 if packet.len() >= IPV6_HEADER_LEN => ipv6_address(packet, 24).map(IpAddr::V6),
        _ => None,
    }
}

/// The length an IPv4 or IPv6 packet's header claims for the whole packet,
/// and its source address, if the fixed header is complete and that length
/// fits `packet` (what is behind it is padding). An IPv4 total length
/// below the minimal header is refused.
pub fn length_and_source(packet: &[u8]) -> Option<(usize, IpAddr)> {
    match version(packet)? {
        4 if packet.len() >= IPV4_MIN_HEADER_LEN => {
            let total = usize::from(read_u16(packet, 2)?);
            if !(IPV4_MIN_HEADER_LEN..=packet.len()).contains(&total) {
                return None;
            }
            Some((total, IpAddr::V4(ipv4_address(packet, 12)?)))
        }
        6 if packet.len() >= IPV6_HEADER_LEN => {
            let total = IPV6_HEADER_LEN + usize::from(read_u16(packet, 4)?);
            if total > packet.len() {
                return None;
            }
            Some((total, IpAddr::V6(ipv6_address(packet, 8)?)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(total_len: u16, len: usize) -> Vec<u8> {
        let mut p = vec![0u8; len];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&total_len.to_be_bytes());
        p[12..16].copy_from_slice(&[10, 0, 0, 1]);
        p[16..20].copy_from_slice(&[10, 0, 0, 2]);
        p
    }

    fn v6(payload_len: u16, len: usize) -> Vec<u8> {
        let mut p = vec![0u8; len];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&payload_len.to_be_bytes());
        p[8..24].copy_from_slice(&Ipv6Addr::LOCALHOST.octets());
        p[24..40].copy_from_slice(&"fd00::2".parse::<Ipv6Addr>().unwrap().octets());
        p
    }

    #[test]
    fn addresses_and_lengths_of_well_formed_headers() {
        let p = v4(28, 32);
        assert_eq!(destination_address(&p), Some("10.0.0.2".parse().unwrap()));
        assert_eq!(
            length_and_source(&p),
            Some((28, "10.0.0.1".parse().unwrap()))
        );
        let p = v6(8, 48);
        assert_eq!(destination_address(&p), Some("fd00::2".parse().unwrap()));
        assert_eq!(length_and_source(&p), Some((48, "::1".parse().unwrap())));
    }

    #[test]
    fn short_or_inconsistent_headers_are_none() {
        assert_eq!(destination_address(&[]), None);
        assert_eq!(destination_address(&v4(20, 20)[..19]), None);
        assert_eq!(destination_address(&v6(0, 40)[..39]), None);
        assert_eq!(
            length_and_source(&v4(33, 32)),
            None,
            "longer than the buffer"
        );
        assert_eq!(
            length_and_source(&v4(19, 32)),
            None,
            "shorter than a header"
        );
        assert_eq!(length_and_source(&v6(9, 48)), None);
        let mut other = v4(20, 20);
        other[0] = 0x55;
        assert_eq!(length_and_source(&other), None);
        assert_eq!(read_u16(&[1], 0), None);
        assert_eq!(read_u16(&[1, 2], usize::MAX), None);
        assert_eq!(read_u32(&[1, 2, 3, 4], 1), None);
    }
}
