//! ICMP "destination unreachable" errors for packets that have no peer.
//!
//! When the TUN hands us a packet whose destination matches no peer's
//! allowed IPs (or whose peer has no endpoint), the kernel driver drops it
//! and answers with ICMP host unreachable (IPv4: type 3 code 1) or ICMPv6
//! address unreachable (type 1 code 3). The daemon does the same by writing
//! the packet built here back into the TUN, so `ping` reports "Destination
//! Host Unreachable" instead of silence.
//!
//! The error quotes as much of the original packet as fits in 576 bytes
//! (IPv4, RFC 1812 §4.3.2.3) or 1280 bytes (IPv6, RFC 4443 §2.4 c) in total.
//! No error is built where RFC 1122 §3.2.2 / RFC 4443 §2.4 e forbid one, nor
//! for input that is not a well-formed IP packet.
//!
//! Pure functions: no I/O, no allocation beyond the returned packet.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ferroguard_proto::packet::{
    checksum, ipv4_address, ipv6_address, read_u16, IPV4_MIN_HEADER_LEN as IPV4_HEADER_LEN,
    IPV6_HEADER_LEN, PROTO_ICMP, PROTO_ICMPV6,
};

/// Hop limit / TTL of the errors we build.
const TTL: u8 = 64;

const ICMP_HEADER_LEN: usize = 8;
/// Largest IPv4 ICMP error, RFC 1812 §4.3.2.3.
const IPV4_ERROR_MAX_LEN: usize = 576;
const ICMP_DESTINATION_UNREACHABLE: u8 = 3;
const ICMP_HOST_UNREACHABLE: u8 = 1;
/// "Don't fragment" in the flags/offset word; with it set the identification
/// field may be zero (RFC 6864 §4.1, atomic datagrams).
const IPV4_DONT_FRAGMENT: u16 = 0x4000;
const IPV4_FRAGMENT_OFFSET_MASK: u16 = 0x1fff;
/// The kernel's `IPTOS_PREC_INTERNETCONTROL`: ICMP errors travel with the
/// "internetwork control" precedence, keeping the original's TOS bits.
const IPV4_PRECEDENCE_INTERNET_CONTROL: u8 = 0xc0;
const IPV4_TOS_MASK: u8 = 0x1e;

const ICMPV6_HEADER_LEN: usize = 8;
/// Largest ICMPv6 error: the IPv6 minimum MTU, RFC 4443 §2.4 (c).
const IPV6_ERROR_MAX_LEN: usize = 1280;
const ICMPV6_DESTINATION_UNREACHABLE: u8 = 1;
const ICMPV6_ADDRESS_UNREACHABLE: u8 = 3;
/// ICMPv6 types below this are errors (RFC 4443 §2.1).
const ICMPV6_FIRST_INFORMATIONAL: u8 = 128;
const ICMPV6_REDIRECT: u8 = 137;

/// Builds an unreachable error for `packet` (an IP packet read from the TUN),
/// or `None` if no error may be sent for it: not for ICMP errors (nor
/// ICMPv6 redirects), not for non-first fragments, not to multicast,
/// broadcast, unspecified or loopback sources, not for packets sent to
/// multicast or broadcast addresses, and not for malformed input (IPv4
/// header with a bad length or checksum, lengths beyond the buffer,
/// truncated extension headers).
///
/// `reply_source` is the address the error claims to come from (the tunnel
/// interface's address when the daemon knows one); when it is `None`, of
/// the other family, or not a unicast address, the original packet's
/// destination is used. Bytes after the IP packet's own length (padding)
/// are neither quoted nor inspected.
pub fn unreachable_for(packet: &[u8], reply_source: Option<IpAddr>) -> Option<Vec<u8>> {
    let reply_source = reply_source.map(|ip| ip.to_canonical());
    match packet.first()? >> 4 {
        4 => {
            let source = match reply_source {
                Some(IpAddr::V4(ip)) => Some(ip),
                _ => None,
            };
            ipv4_host_unreachable(packet, source)
        }
        6 => {
            let source = match reply_source {
                Some(IpAddr::V6(ip)) => Some(ip),
                _ => None,
            };
            ipv6_address_unreachable(packet, source)
        }
        _ => None,
    }
}

/// The fields of a well-formed IPv4 packet that decide whether it may be
/// answered.
struct Ipv4Packet<'a> {
    /// The packet cut to its total length.
    bytes: &'a [u8],
    header_len: usize,
    tos: u8,
    fragment_offset: u16,
    protocol: u8,
    source: Ipv4Addr,
    destination: Ipv4Addr,
}

fn parse_ipv4(packet: &[u8]) -> Option<Ipv4Packet<'_>> {
    let first = *packet.first()?;
    let header_len = usize::from(first & 0x0f) * 4;
    if first >> 4 != 4 || header_len < IPV4_HEADER_LEN {
        return None;
    }
    let header = packet.get(..header_len)?;
    if checksum::sum(header) != 0xffff {
        return None;
    }
    let total_len = usize::from(read_u16(header, 2)?);
    if total_len < header_len {
        return None;
    }
    Some(Ipv4Packet {
        bytes: packet.get(..total_len)?,
        header_len,
        tos: *header.get(1)?,
        fragment_offset: read_u16(header, 6)? & IPV4_FRAGMENT_OFFSET_MASK,
        protocol: *header.get(9)?,
        source: ipv4_address(header, 12)?,
        destination: ipv4_address(header, 16)?,
    })
}

/// RFC 1122 §3.2.2: the source must name a single host (not 0.0.0.0/8,
/// loopback, multicast, or class E which includes the limited broadcast).
fn is_single_host_v4(ip: Ipv4Addr) -> bool {
    let first_octet = ip.octets()[0];
    first_octet != 0 && !ip.is_loopback() && !ip.is_multicast() && first_octet < 240
}

/// ICMP types that are not errors and that we know (RFC 792, RFC 950,
/// RFC 1256). Unknown types are treated like errors, as the kernel does.
fn is_icmp_query(icmp_type: u8) -> bool {
    matches!(icmp_type, 0 | 8 | 9 | 10 | 13 | 14 | 15 | 16 | 17 | 18)
}

fn may_answer_ipv4(packet: &Ipv4Packet<'_>) -> bool {
    if packet.fragment_offset != 0
        || !is_single_host_v4(packet.source)
        || packet.destination.is_multicast()
        || packet.destination.is_broadcast()
        || packet.destination.is_unspecified()
    {
        return false;
    }
    if packet.protocol == PROTO_ICMP {
        // A first fragment or whole packet must show its ICMP type.
        return match packet.bytes.get(packet.header_len) {
            Some(&icmp_type) => is_icmp_query(icmp_type),
            None => false,
        };
    }
    true
}

fn ipv4_host_unreachable(packet: &[u8], reply_source: Option<Ipv4Addr>) -> Option<Vec<u8>> {
    let original = parse_ipv4(packet)?;
    if !may_answer_ipv4(&original) {
        return None;
    }
    let source = reply_source
        .filter(|ip| is_single_host_v4(*ip))
        .unwrap_or(original.destination);
    let quote_len = original
        .bytes
        .len()
        .min(IPV4_ERROR_MAX_LEN - IPV4_HEADER_LEN - ICMP_HEADER_LEN);
    let quoted = original.bytes.get(..quote_len)?;
    let total_len = IPV4_HEADER_LEN + ICMP_HEADER_LEN + quote_len;

    let mut out = Vec::with_capacity(total_len);
    out.push(0x45); // version 4, 5 words of header
    out.push((original.tos & IPV4_TOS_MASK) | IPV4_PRECEDENCE_INTERNET_CONTROL);
    out.extend_from_slice(&u16::try_from(total_len).ok()?.to_be_bytes());
    out.extend_from_slice(&[0, 0]); // identification
    out.extend_from_slice(&IPV4_DONT_FRAGMENT.to_be_bytes());
    out.extend_from_slice(&[TTL, PROTO_ICMP, 0, 0]);
    out.extend_from_slice(&source.octets());
    out.extend_from_slice(&original.source.octets());
    let header_checksum = !checksum::sum(out.get(..IPV4_HEADER_LEN)?);
    out.get_mut(10..12)?
        .copy_from_slice(&header_checksum.to_be_bytes());

    out.extend_from_slice(&[ICMP_DESTINATION_UNREACHABLE, ICMP_HOST_UNREACHABLE]);
    out.extend_from_slice(&[0, 0, 0, 0, 0, 0]); // checksum, then 4 unused bytes
    out.extend_from_slice(quoted);
    let icmp_checksum = !checksum::sum(out.get(IPV4_HEADER_LEN..)?);
    out.get_mut(IPV4_HEADER_LEN + 2..IPV4_HEADER_LEN + 4)?
        .copy_from_slice(&icmp_checksum.to_be_bytes());
    Some(out)
}

/// The fields of a well-formed IPv6 packet that decide whether it may be
/// answered.
struct Ipv6Packet<'a> {
    /// The packet cut to its header plus payload length.
    bytes: &'a [u8],
    source: Ipv6Addr,
    destination: Ipv6Addr,
}

fn parse_ipv6(packet: &[u8]) -> Option<Ipv6Packet<'_>> {
    if packet.first()? >> 4 != 6 {
        return None;
    }
    let payload_len = usize::from(read_u16(packet, 4)?);
    Some(Ipv6Packet {
        bytes: packet.get(..IPV6_HEADER_LEN + payload_len)?,
        source: ipv6_address(packet, 8)?,
        destination: ipv6_address(packet, 24)?,
    })
}

/// RFC 4443 §2.4 (e): the source must identify a single node.
fn is_single_node_v6(ip: Ipv6Addr) -> bool {
    !ip.is_unspecified() && !ip.is_multicast() && !ip.is_loopback()
}

/// Extension headers whose length is `(byte 1 + 1) * 8` (RFC 8200 §4).
fn is_generic_extension_header(next_header: u8) -> bool {
    const HOP_BY_HOP: u8 = 0;
    const ROUTING: u8 = 43;
    const DESTINATION_OPTIONS: u8 = 60;
    const MOBILITY: u8 = 135;
    const HOST_IDENTITY: u8 = 139;
    const SHIM6: u8 = 140;
    matches!(
        next_header,
        HOP_BY_HOP | ROUTING | DESTINATION_OPTIONS | MOBILITY | HOST_IDENTITY | SHIM6
    )
}

/// Walks the extension headers of `packet` (a whole IPv6 packet) and decides
/// whether its payload may be answered: `None` for a truncated header chain,
/// a non-first fragment, an ICMPv6 error or redirect.
fn ipv6_payload_may_be_answered(packet: &[u8]) -> Option<()> {
    const FRAGMENT: u8 = 44;
    const AUTHENTICATION: u8 = 51;
    let mut next_header = *packet.get(6)?;
    let mut at = IPV6_HEADER_LEN;
    loop {
        match next_header {
            nh if is_generic_extension_header(nh) => {
                let header = packet.get(at..at + 2)?;
                next_header = header[0];
                at += (usize::from(header[1]) + 1) * 8;
            }
            AUTHENTICATION => {
                // RFC 4302: the length counts 4-byte words, minus 2.
                let header = packet.get(at..at + 2)?;
                next_header = header[0];
                at += (usize::from(header[1]) + 2) * 4;
            }
            FRAGMENT => {
                let header = packet.get(at..at + 8)?;
                if read_u16(header, 2)? >> 3 != 0 {
                    return None;
                }
                next_header = header[0];
                at += 8;
            }
            PROTO_ICMPV6 => {
                let icmp_type = *packet.get(at)?;
                let answerable =
                    icmp_type >= ICMPV6_FIRST_INFORMATIONAL && icmp_type != ICMPV6_REDIRECT;
                return answerable.then_some(());
            }
            _ => return (at <= packet.len()).then_some(()),
        }
        if at > packet.len() {
            return None;
        }
    }
}

fn may_answer_ipv6(packet: &Ipv6Packet<'_>) -> bool {
    is_single_node_v6(packet.source)
        && !packet.destination.is_multicast()
        && !packet.destination.is_unspecified()
        && ipv6_payload_may_be_answered(packet.bytes).is_some()
}

fn ipv6_address_unreachable(packet: &[u8], reply_source: Option<Ipv6Addr>) -> Option<Vec<u8>> {
    let original = parse_ipv6(packet)?;
    if !may_answer_ipv6(&original) {
        return None;
    }
    let source = reply_source
        .filter(|ip| is_single_node_v6(*ip))
        .unwrap_or(original.destination);
    let quote_len = original
        .bytes
        .len()
        .min(IPV6_ERROR_MAX_LEN - IPV6_HEADER_LEN - ICMPV6_HEADER_LEN);
    let quoted = original.bytes.get(..quote_len)?;
    let icmp_len = ICMPV6_HEADER_LEN + quote_len;

    let mut out = Vec::with_capacity(IPV6_HEADER_LEN + icmp_len);
    out.extend_from_slice(&[0x60, 0, 0, 0]); // version 6, traffic class 0, flow label 0
    out.extend_from_slice(&u16::try_from(icmp_len).ok()?.to_be_bytes());
    out.extend_from_slice(&[PROTO_ICMPV6, TTL]);
    out.extend_from_slice(&source.octets());
    out.extend_from_slice(&original.source.octets());

    out.extend_from_slice(&[ICMPV6_DESTINATION_UNREACHABLE, ICMPV6_ADDRESS_UNREACHABLE]);
    out.extend_from_slice(&[0, 0, 0, 0, 0, 0]); // checksum, then 4 unused bytes
    out.extend_from_slice(quoted);
    let checksum = icmpv6_checksum(source, original.source, out.get(IPV6_HEADER_LEN..)?)?;
    out.get_mut(IPV6_HEADER_LEN + 2..IPV6_HEADER_LEN + 4)?
        .copy_from_slice(&checksum.to_be_bytes());
    Some(out)
}

/// The ICMPv6 checksum of `message` (with its checksum field zero), over the
/// RFC 8200 §8.1 pseudo-header: source, destination, upper-layer length and
/// the next header value 58.
fn icmpv6_checksum(source: Ipv6Addr, destination: Ipv6Addr, message: &[u8]) -> Option<u16> {
    let length = u32::try_from(message.len()).ok()?;
    let pseudo = checksum::pseudo_header_v6(
        &source.octets(),
        &destination.octets(),
        PROTO_ICMPV6,
        length,
    );
    Some(!checksum::sum_with(message, pseudo))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An independent checksum for verification: sums 16-bit words of a
    /// zero-padded copy with 32-bit wrap-around carries.
    fn reference_checksum(data: &[u8]) -> u16 {
        let mut padded = data.to_vec();
        if padded.len() % 2 == 1 {
            padded.push(0);
        }
        let mut sum: u32 = 0;
        for word in padded.chunks(2) {
            sum += (u32::from(word[0]) << 8) | u32::from(word[1]);
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    fn reference_icmpv6_checksum(src: &[u8], dst: &[u8], message: &[u8]) -> u16 {
        let mut buf = Vec::new();
        buf.extend_from_slice(src);
        buf.extend_from_slice(dst);
        buf.extend_from_slice(&(message.len() as u32).to_be_bytes());
        buf.extend_from_slice(&[0, 0, 0, 58]);
        buf.extend_from_slice(message);
        reference_checksum(&buf)
    }

    /// A field read back from a slice at a fixed offset.
    fn word(bytes: &[u8], at: usize) -> u16 {
        u16::from_be_bytes([bytes[at], bytes[at + 1]])
    }

    const V4_SRC: [u8; 4] = [10, 0, 0, 1];
    const V4_DST: [u8; 4] = [10, 0, 0, 99];

    /// An IPv4 packet with a correct header checksum.
    fn ipv4_packet(protocol: u8, src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
        let total = 20 + payload.len();
        let mut p = vec![0x45, 0x10];
        p.extend_from_slice(&(total as u16).to_be_bytes());
        p.extend_from_slice(&[0x12, 0x34, 0x40, 0x00, 63, protocol, 0, 0]);
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        let c = reference_checksum(&p);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p.extend_from_slice(payload);
        p
    }

    fn udp_datagram(payload_len: usize) -> Vec<u8> {
        let mut udp = vec![0xc0, 0x01, 0x00, 0x35];
        udp.extend_from_slice(&((8 + payload_len) as u16).to_be_bytes());
        udp.extend_from_slice(&[0xab, 0xcd]);
        udp.extend((0..payload_len).map(|i| i as u8));
        udp
    }

    fn v6(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    fn ipv6_packet(next_header: u8, src: Ipv6Addr, dst: Ipv6Addr, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x60, 0x01, 0x23, 0x45];
        p.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        p.extend_from_slice(&[next_header, 55]);
        p.extend_from_slice(&src.octets());
        p.extend_from_slice(&dst.octets());
        p.extend_from_slice(payload);
        p
    }

    fn tcp_segment(payload_len: usize) -> Vec<u8> {
        let mut tcp = vec![0xd2, 0x04, 0x01, 0xbb, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02];
        tcp.extend_from_slice(&[0xfa, 0xf0, 0, 0, 0, 0]);
        tcp.extend((0..payload_len).map(|i| (i * 7) as u8));
        tcp
    }

    /// Checks every field of an IPv4 host-unreachable answering `original`.
    fn assert_ipv4_error(out: &[u8], original: &[u8], expected_src: [u8; 4]) {
        let quoted = original.len().min(576 - 28);
        assert_eq!(out.len(), 28 + quoted);
        assert!(out.len() <= 576);
        assert_eq!(out[0], 0x45);
        assert_eq!(out[1], 0xc0 | (original[1] & 0x1e));
        assert_eq!(word(out, 2) as usize, out.len());
        assert_eq!(word(out, 4), 0, "identification");
        assert_eq!(word(out, 6), 0x4000, "DF, offset 0");
        assert_eq!(out[8], 64, "TTL");
        assert_eq!(out[9], 1, "protocol ICMP");
        assert_eq!(&out[12..16], &expected_src);
        assert_eq!(&out[16..20], &original[12..16], "sent back to the source");
        let mut header = out[..20].to_vec();
        header[10..12].fill(0);
        assert_eq!(word(out, 10), reference_checksum(&header));

        let icmp = &out[20..];
        assert_eq!((icmp[0], icmp[1]), (3, 1), "host unreachable");
        assert_eq!(&icmp[4..8], &[0, 0, 0, 0]);
        assert_eq!(&icmp[8..], &original[..quoted]);
        let mut zeroed = icmp.to_vec();
        zeroed[2..4].fill(0);
        assert_eq!(word(icmp, 2), reference_checksum(&zeroed));
    }

    /// Checks every field of an ICMPv6 address-unreachable answering `original`.
    fn assert_ipv6_error(out: &[u8], original: &[u8], expected_src: Ipv6Addr) {
        let quoted = original.len().min(1280 - 48);
        assert_eq!(out.len(), 48 + quoted);
        assert!(out.len() <= 1280);
        assert_eq!(&out[..4], &[0x60, 0, 0, 0]);
        assert_eq!(word(out, 4) as usize, out.len() - 40, "payload length");
        assert_eq!(out[6], 58, "next header ICMPv6");
        assert_eq!(out[7], 64, "hop limit");
        assert_eq!(&out[8..24], &expected_src.octets());
        assert_eq!(&out[24..40], &original[8..24], "sent back to the source");

        let icmp = &out[40..];
        assert_eq!((icmp[0], icmp[1]), (1, 3), "address unreachable");
        assert_eq!(&icmp[4..8], &[0, 0, 0, 0]);
        assert_eq!(&icmp[8..], &original[..quoted]);
        let mut zeroed = icmp.to_vec();
        zeroed[2..4].fill(0);
        assert_eq!(
            word(icmp, 2),
            reference_icmpv6_checksum(&out[8..24], &out[24..40], &zeroed)
        );
    }

    #[test]
    fn ipv4_udp_gets_host_unreachable() {
        let packet = ipv4_packet(17, V4_SRC, V4_DST, &udp_datagram(40));
        let out = unreachable_for(&packet, None).unwrap();
        assert_ipv4_error(&out, &packet, V4_DST);

        let tunnel = Ipv4Addr::new(10, 0, 0, 2);
        let out = unreachable_for(&packet, Some(tunnel.into())).unwrap();
        assert_ipv4_error(&out, &packet, tunnel.octets());
    }

    #[test]
    fn ipv4_quote_is_cut_to_576_bytes_and_padding_is_ignored() {
        let packet = ipv4_packet(17, V4_SRC, V4_DST, &udp_datagram(1200));
        let out = unreachable_for(&packet, None).unwrap();
        assert_eq!(out.len(), 576);
        assert_ipv4_error(&out, &packet, V4_DST);

        let small = ipv4_packet(17, V4_SRC, V4_DST, &udp_datagram(4));
        let mut padded = small.clone();
        padded.extend_from_slice(&[0xee; 10]);
        let out = unreachable_for(&padded, None).unwrap();
        assert_ipv4_error(&out, &small, V4_DST);
    }

    #[test]
    fn ipv4_with_options_and_odd_length_is_quoted_whole() {
        let mut packet = ipv4_packet(17, V4_SRC, V4_DST, &udp_datagram(3));
        // Insert 4 bytes of options (NOPs) and fix length and checksum.
        packet[0] = 0x46;
        packet.splice(20..20, [1, 1, 1, 1]);
        let total = packet.len() as u16;
        packet[2..4].copy_from_slice(&total.to_be_bytes());
        packet[10..12].fill(0);
        let c = reference_checksum(&packet[..24]);
        packet[10..12].copy_from_slice(&c.to_be_bytes());
        assert_eq!(packet.len() % 2, 1);
        let out = unreachable_for(&packet, None).unwrap();
        assert_ipv4_error(&out, &packet, V4_DST);
    }

    #[test]
    fn ipv6_tcp_gets_address_unreachable() {
        let src = v6("fd00::1");
        let dst = v6("fd00::63");
        let packet = ipv6_packet(6, src, dst, &tcp_segment(33));
        let out = unreachable_for(&packet, None).unwrap();
        assert_ipv6_error(&out, &packet, dst);

        let tunnel = v6("fd00::2");
        let out = unreachable_for(&packet, Some(tunnel.into())).unwrap();
        assert_ipv6_error(&out, &packet, tunnel);
    }

    #[test]
    fn ipv6_quote_is_cut_to_1280_bytes() {
        let packet = ipv6_packet(6, v6("fd00::1"), v6("fd00::63"), &tcp_segment(1400));
        let out = unreachable_for(&packet, None).unwrap();
        assert_eq!(out.len(), 1280);
        assert_ipv6_error(&out, &packet, v6("fd00::63"));
    }

    #[test]
    fn reply_source_of_the_wrong_family_or_not_unicast_is_ignored() {
        let packet = ipv4_packet(17, V4_SRC, V4_DST, &udp_datagram(8));
        for bad in [
            IpAddr::V6(v6("fd00::2")),
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V4(Ipv4Addr::new(224, 0, 0, 1)),
        ] {
            let out = unreachable_for(&packet, Some(bad)).unwrap();
            assert_ipv4_error(&out, &packet, V4_DST);
        }
        // An IPv4-mapped IPv6 address is the IPv4 address.
        let mapped = Ipv4Addr::new(10, 0, 0, 2).to_ipv6_mapped();
        let out = unreachable_for(&packet, Some(mapped.into())).unwrap();
        assert_ipv4_error(&out, &packet, [10, 0, 0, 2]);

        let packet6 = ipv6_packet(17, v6("fd00::1"), v6("fd00::63"), &udp_datagram(8));
        for bad in [
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
            IpAddr::V6(v6("ff02::1")),
        ] {
            let out = unreachable_for(&packet6, Some(bad)).unwrap();
            assert_ipv6_error(&out, &packet6, v6("fd00::63"));
        }
    }

    #[test]
    fn icmp_errors_get_no_answer_but_queries_do() {
        let echo = ipv4_packet(1, V4_SRC, V4_DST, &[8, 0, 0xf7, 0xff, 0, 0, 0, 0]);
        assert!(unreachable_for(&echo, None).is_some());
        for error_type in [3u8, 4, 5, 11, 12, 1, 2, 40, 255] {
            let error = ipv4_packet(1, V4_SRC, V4_DST, &[error_type, 0, 0, 0, 0, 0, 0, 0]);
            assert!(unreachable_for(&error, None).is_none(), "type {error_type}");
        }
        let no_icmp_header = ipv4_packet(1, V4_SRC, V4_DST, &[]);
        assert!(unreachable_for(&no_icmp_header, None).is_none());

        let (src, dst) = (v6("fd00::1"), v6("fd00::63"));
        let echo6 = ipv6_packet(58, src, dst, &[128, 0, 0, 0, 0, 0, 0, 0]);
        assert!(unreachable_for(&echo6, None).is_some());
        for error_type in [1u8, 2, 3, 4, 127, 137] {
            let error6 = ipv6_packet(58, src, dst, &[error_type, 0, 0, 0, 0, 0, 0, 0]);
            assert!(
                unreachable_for(&error6, None).is_none(),
                "type {error_type}"
            );
        }
        // An ICMPv6 error behind a destination-options header is still seen.
        let mut behind = vec![58, 0, 1, 4, 0, 0, 0, 0];
        behind.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0]);
        assert!(unreachable_for(&ipv6_packet(60, src, dst, &behind), None).is_none());
        behind[8] = 128;
        assert!(unreachable_for(&ipv6_packet(60, src, dst, &behind), None).is_some());
    }

    #[test]
    fn non_first_fragments_get_no_answer() {
        let mut first = ipv4_packet(17, V4_SRC, V4_DST, &udp_datagram(16));
        first[6] = 0x20; // MF, offset 0
        first[10..12].fill(0);
        let c = reference_checksum(&first[..20]);
        first[10..12].copy_from_slice(&c.to_be_bytes());
        assert!(unreachable_for(&first, None).is_some());

        let mut later = first.clone();
        later[7] = 0x10; // offset 16 × 8 bytes
        later[10..12].fill(0);
        let c = reference_checksum(&later[..20]);
        later[10..12].copy_from_slice(&c.to_be_bytes());
        assert!(unreachable_for(&later, None).is_none());

        let (src, dst) = (v6("fd00::1"), v6("fd00::63"));
        let mut fragment = vec![17, 0, 0x00, 0x01, 0, 0, 0, 7]; // offset 0, M = 1
        fragment.extend_from_slice(&udp_datagram(8));
        assert!(unreachable_for(&ipv6_packet(44, src, dst, &fragment), None).is_some());
        fragment[2..4].copy_from_slice(&((2u16 << 3) | 1).to_be_bytes());
        assert!(unreachable_for(&ipv6_packet(44, src, dst, &fragment), None).is_none());
    }

    #[test]
    fn multicast_broadcast_and_unspecified_addresses_get_no_answer() {
        let udp = udp_datagram(8);
        for src in [
            [224, 0, 0, 1],
            [255, 255, 255, 255],
            [0, 0, 0, 0],
            [127, 0, 0, 1],
        ] {
            assert!(unreachable_for(&ipv4_packet(17, src, V4_DST, &udp), None).is_none());
        }
        for dst in [[239, 1, 2, 3], [255, 255, 255, 255], [0, 0, 0, 0]] {
            assert!(unreachable_for(&ipv4_packet(17, V4_SRC, dst, &udp), None).is_none());
        }
        let ok = v6("fd00::1");
        for src in [v6("ff02::1"), v6("::"), v6("::1")] {
            assert!(unreachable_for(&ipv6_packet(17, src, ok, &udp), None).is_none());
        }
        for dst in [v6("ff02::1"), v6("::")] {
            assert!(unreachable_for(&ipv6_packet(17, ok, dst, &udp), None).is_none());
        }
    }

    #[test]
    fn malformed_input_gets_no_answer() {
        let packet = ipv4_packet(17, V4_SRC, V4_DST, &udp_datagram(16));
        for len in 0..packet.len() {
            assert!(
                unreachable_for(&packet[..len], None).is_none(),
                "v4 cut at {len}"
            );
        }
        let mut bad_checksum = packet.clone();
        bad_checksum[10] ^= 1;
        assert!(unreachable_for(&bad_checksum, None).is_none());
        let mut short_ihl = packet.clone();
        short_ihl[0] = 0x44;
        assert!(unreachable_for(&short_ihl, None).is_none());
        let mut wrong_version = packet.clone();
        wrong_version[0] = 0x55;
        assert!(unreachable_for(&wrong_version, None).is_none());

        let packet6 = ipv6_packet(6, v6("fd00::1"), v6("fd00::63"), &tcp_segment(10));
        for len in 0..packet6.len() {
            assert!(
                unreachable_for(&packet6[..len], None).is_none(),
                "v6 cut at {len}"
            );
        }
        // An extension header that claims more bytes than the packet has.
        let overlong = [6, 200, 0, 0, 0, 0, 0, 0];
        let packet6 = ipv6_packet(0, v6("fd00::1"), v6("fd00::63"), &overlong);
        assert!(unreachable_for(&packet6, None).is_none());
    }

    #[test]
    fn checksums_agree_with_the_reference() {
        for len in [0usize, 1, 7, 20, 41, 576] {
            let data: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(97)).collect();
            assert_eq!(
                !checksum::sum(&data),
                reference_checksum(&data),
                "{len} bytes"
            );
        }
        let message: Vec<u8> = (0..41u8).collect();
        let (src, dst) = (v6("fd00::1"), v6("fd00::63"));
        assert_eq!(
            icmpv6_checksum(src, dst, &message),
            Some(reference_icmpv6_checksum(
                &src.octets(),
                &dst.octets(),
                &message
            ))
        );
    }

    /// Every answer is a well-formed error of the expected kind.
    fn assert_well_formed(out: &[u8]) {
        match out[0] >> 4 {
            4 => {
                assert!(out.len() <= 576);
                assert_eq!(reference_checksum(&out[..20]), 0);
                assert_eq!(reference_checksum(&out[20..]), 0);
                assert_eq!((out[20], out[21]), (3, 1));
            }
            6 => {
                assert!(out.len() <= 1280);
                let mut zeroed = out[40..].to_vec();
                zeroed[2..4].fill(0);
                let c = reference_icmpv6_checksum(&out[8..24], &out[24..40], &zeroed);
                assert_eq!(word(out, 42), c);
                assert_eq!((out[40], out[41]), (1, 3));
            }
            v => panic!("answer with IP version {v}"),
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1600)) {
            if let Some(out) = unreachable_for(&bytes, None) {
                assert_well_formed(&out);
            }
        }

        /// Valid packets with a few bytes changed reach the deeper checks.
        #[test]
        fn mutated_packets_never_panic(
            v6_packet in any::<bool>(),
            payload_len in 0usize..1500,
            edits in proptest::collection::vec((0usize..1600, any::<u8>()), 0..4),
            cut in 0usize..1600,
        ) {
            let mut packet = if v6_packet {
                ipv6_packet(6, v6("fd00::1"), v6("fd00::63"), &tcp_segment(payload_len))
            } else {
                ipv4_packet(17, V4_SRC, V4_DST, &udp_datagram(payload_len))
            };
            for (at, value) in edits {
                if let Some(byte) = packet.get_mut(at) {
                    *byte = value;
                }
            }
            packet.truncate(cut.max(1));
            if let Some(out) = unreachable_for(&packet, None) {
                assert_well_formed(&out);
            }
        }
    }
}
