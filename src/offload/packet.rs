//! IPv4/IPv6/TCP/UDP header layout and a full validity check.

use super::OffloadError;
use ferroguard_proto::packet::checksum;
pub(crate) use ferroguard_proto::packet::{
    read_u16, read_u32, write_u16, write_u32, IPV4_MIN_HEADER_LEN, IPV6_HEADER_LEN, PROTO_TCP,
    PROTO_UDP,
};

pub(crate) const TCP_MIN_HEADER_LEN: usize = 20;
pub(crate) const UDP_HEADER_LEN: usize = 8;
/// Offset of the checksum inside the TCP header.
pub(crate) const TCP_CHECKSUM_OFFSET: usize = 16;
/// Offset of the checksum inside the UDP header.
pub(crate) const UDP_CHECKSUM_OFFSET: usize = 6;
/// Offset of the flags byte inside the TCP header.
pub(crate) const TCP_FLAGS_OFFSET: usize = 13;

pub(crate) const TCP_FIN: u8 = 0x01;
pub(crate) const TCP_SYN: u8 = 0x02;
pub(crate) const TCP_RST: u8 = 0x04;
pub(crate) const TCP_PSH: u8 = 0x08;
pub(crate) const TCP_URG: u8 = 0x20;
pub(crate) const TCP_CWR: u8 = 0x80;

/// IPv4 "more fragments" flag and fragment offset, in the 16-bit word at 6.
pub(crate) const IPV4_FRAGMENT_MASK: u16 = 0x3fff;

/// Pseudo-header sum for a packet whose IP header has been validated
/// (at least 20 bytes for IPv4, 40 for IPv6).
pub(crate) fn pseudo_header_sum(
    packet: &[u8],
    is_v6: bool,
    protocol: u8,
    transport_len: usize,
) -> u16 {
    if is_v6 {
        let mut src = [0; 16];
        let mut dst = [0; 16];
        src.copy_from_slice(&packet[8..24]);
        dst.copy_from_slice(&packet[24..40]);
        checksum::pseudo_header_v6(&src, &dst, protocol, transport_len as u32)
    } else {
        let mut src = [0; 4];
        let mut dst = [0; 4];
        src.copy_from_slice(&packet[12..16]);
        dst.copy_from_slice(&packet[16..20]);
        checksum::pseudo_header_v4(&src, &dst, protocol, transport_len as u16)
    }
}

/// Whether the transport checksum of `packet[ip_header_len..]` verifies.
/// An IPv4 UDP checksum of zero means "none" and is accepted.
pub(crate) fn transport_checksum_ok(
    packet: &[u8],
    is_v6: bool,
    protocol: u8,
    ip_header_len: usize,
) -> bool {
    let Some(transport) = packet.get(ip_header_len..) else {
        return false;
    };
    if protocol == PROTO_UDP && !is_v6 && read_u16(transport, UDP_CHECKSUM_OFFSET) == Some(0) {
        return true;
    }
    let pseudo = pseudo_header_sum(packet, is_v6, protocol, transport.len());
    checksum::sum_with(transport, pseudo) == 0xffff
}

/// The IP layer of a packet: version, header length, protocol and the
/// length the IP header claims (which may be shorter than the buffer).
#[derive(Clone, Copy, Debug)]
pub(crate) struct IpLayer {
    pub is_v6: bool,
    pub header_len: usize,
    pub protocol: u8,
    pub total_len: usize,
}

/// Parses the IP header: lengths must be consistent with the buffer. IPv6
/// extension headers are not followed (`protocol` is the first next header).
pub(crate) fn parse_ip(packet: &[u8]) -> Result<IpLayer, OffloadError> {
    let first = *packet.first().ok_or(OffloadError::EmptyPacket)?;
    let layer = match first >> 4 {
        4 => {
            let header_len = usize::from(first & 0x0f) * 4;
            let total_len = usize::from(read_u16(packet, 2).ok_or(OffloadError::BadIpHeader)?);
            if header_len < IPV4_MIN_HEADER_LEN || total_len < header_len {
                return Err(OffloadError::BadIpHeader);
            }
            IpLayer {
                is_v6: false,
                header_len,
                protocol: packet.get(9).copied().unwrap_or(0),
                total_len,
            }
        }
        6 => {
            let payload_len = usize::from(read_u16(packet, 4).ok_or(OffloadError::BadIpHeader)?);
            IpLayer {
                is_v6: true,
                header_len: IPV6_HEADER_LEN,
                protocol: packet.get(6).copied().unwrap_or(0),
                total_len: IPV6_HEADER_LEN + payload_len,
            }
        }
        _ => return Err(OffloadError::BadIpVersion),
    };
    if layer.total_len > packet.len() {
        return Err(OffloadError::BadIpHeader);
    }
    Ok(layer)
}

/// Checks that `packet` is exactly one complete IP packet whose IPv4 header
/// checksum and (for TCP/UDP) transport length and checksum are valid.
/// Other protocols are only checked at the IP layer. Used by the tests and
/// the `debug-checks` assertions; the daemon may use it for diagnostics.
pub fn verify_packet(packet: &[u8]) -> Result<(), OffloadError> {
    let ip = parse_ip(packet)?;
    if ip.total_len != packet.len() {
        return Err(OffloadError::BadIpHeader);
    }
    if !ip.is_v6 && checksum::sum(&packet[..ip.header_len]) != 0xffff {
        return Err(OffloadError::BadChecksum);
    }
    let transport = &packet[ip.header_len..];
    match ip.protocol {
        PROTO_TCP => {
            let data_offset = transport
                .get(12)
                .map(|&byte| usize::from(byte >> 4) * 4)
                .ok_or(OffloadError::BadTransportHeader)?;
            if data_offset < TCP_MIN_HEADER_LEN || data_offset > transport.len() {
                return Err(OffloadError::BadTransportHeader);
            }
        }
        PROTO_UDP => {
            if read_u16(transport, 4).map(usize::from) != Some(transport.len()) {
                return Err(OffloadError::BadTransportHeader);
            }
        }
        _ => return Ok(()),
    }
    if transport_checksum_ok(packet, ip.is_v6, ip.protocol, ip.header_len) {
        Ok(())
    } else {
        Err(OffloadError::BadChecksum)
    }
}
