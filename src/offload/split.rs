//! The TUN read path: GSO super-packets and partial checksums in, complete
//! IP packets out.

use super::packet::{
    parse_ip, pseudo_header_sum, read_u16, read_u32, write_u16, write_u32, IPV4_FRAGMENT_MASK,
    PROTO_TCP, PROTO_UDP, TCP_CHECKSUM_OFFSET, TCP_CWR, TCP_FIN, TCP_FLAGS_OFFSET,
    TCP_MIN_HEADER_LEN, TCP_PSH, UDP_CHECKSUM_OFFSET, UDP_HEADER_LEN,
};
use super::virtio::{
    VirtioNetHdr, VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6,
    VIRTIO_NET_HDR_GSO_UDP_L4,
};
use super::OffloadError;
use ferroguard_proto::packet::checksum;

/// Bytes left free in front of every segment: room for the 16-byte
/// WireGuard transport header (type, receiver index, counter).
pub const HEADROOM: usize = 16;
/// Bytes at least available after every segment: room for the zero padding
/// to a multiple of 16 (at most 15 bytes) and the 16-byte Poly1305 tag.
pub const TAILROOM: usize = 32;
/// The largest super-packet a TUN read returns (the device's GSO limit).
pub const MAX_SUPER_PACKET: usize = 65535;
/// The smallest segment payload the default limit admits: Linux never
/// sends a TCP segment with less (`net.ipv4.tcp_min_snd_mss`, default 48).
pub const MIN_SEGMENT_PAYLOAD: usize = 48;
/// Default limit on the segments one super-packet may produce: every
/// 64 KiB super-packet whose segments carry at least
/// [`MIN_SEGMENT_PAYLOAD`] bytes, so any MTU (576, 1000, …) splits. The
/// limit bounds the batch's buffers (about 200 KiB at the most), not the
/// MTU: a limit sized for MTU 1420 (64 segments) dropped every full
/// super-packet below MTU 1064, and TCP fell to 1 % of its speed there.
pub const MAX_SEGMENTS: usize = MAX_SUPER_PACKET.div_ceil(MIN_SEGMENT_PAYLOAD);

/// Reusable output of [`split`].
///
/// Layout: segment `i` lives in its own buffer, at
/// `buffer[HEADROOM..HEADROOM + len]`; the buffer holds at least
/// `HEADROOM + len + TAILROOM` bytes. The bytes outside the packet are
/// scratch space the caller may overwrite (header in front, padding and tag
/// behind), so a packet can be encrypted in place. Buffers keep their size
/// across calls, so splitting allocates nothing once they have grown.
#[derive(Debug)]
pub struct SegmentBatch {
    bufs: Vec<Vec<u8>>,
    lens: Vec<usize>,
    max_segments: usize,
}

impl Default for SegmentBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl SegmentBatch {
    /// An empty batch accepting up to [`MAX_SEGMENTS`] segments.
    pub fn new() -> Self {
        Self::with_max_segments(MAX_SEGMENTS)
    }

    /// An empty batch accepting up to `max_segments` segments per split.
    pub fn with_max_segments(max_segments: usize) -> Self {
        Self {
            bufs: Vec::new(),
            lens: Vec::with_capacity(max_segments),
            max_segments,
        }
    }

    /// Number of segments produced by the last [`split`].
    pub fn len(&self) -> usize {
        self.lens.len()
    }

    /// Whether the batch holds no segment.
    pub fn is_empty(&self) -> bool {
        self.lens.is_empty()
    }

    /// Forgets the segments, keeping the buffers.
    pub fn clear(&mut self) {
        self.lens.clear();
    }

    /// The IP packet of segment `index`.
    pub fn packet(&self, index: usize) -> Option<&[u8]> {
        let len = *self.lens.get(index)?;
        self.bufs.get(index)?.get(HEADROOM..HEADROOM + len)
    }

    /// All segments' IP packets, in order.
    pub fn packets(&self) -> impl ExactSizeIterator<Item = &[u8]> + '_ {
        self.bufs
            .iter()
            .zip(&self.lens)
            .map(|(buf, &len)| buf.get(HEADROOM..HEADROOM + len).unwrap_or_default())
    }

    /// Segment `index`'s whole buffer and its packet length: the packet is
    /// at `HEADROOM..HEADROOM + len`, and at least [`HEADROOM`] bytes before
    /// and [`TAILROOM`] bytes after it are free for the caller (transport
    /// header, padding, tag), so it can encrypt in place.
    pub fn buffer_mut(&mut self, index: usize) -> Option<(&mut [u8], usize)> {
        let len = *self.lens.get(index)?;
        Some((self.bufs.get_mut(index)?.as_mut_slice(), len))
    }

    /// Appends a segment of `len` bytes and returns its packet area.
    fn push_segment(&mut self, len: usize) -> Result<&mut [u8], OffloadError> {
        let index = self.lens.len();
        if index >= self.max_segments {
            return Err(OffloadError::TooManySegments);
        }
        if self.bufs.len() <= index {
            self.bufs.push(Vec::new());
        }
        let buf = &mut self.bufs[index];
        let needed = HEADROOM + len + TAILROOM;
        if buf.len() < needed {
            buf.resize(needed, 0);
        }
        self.lens.push(len);
        Ok(&mut buf[HEADROOM..HEADROOM + len])
    }

    /// With `debug-checks`: every segment is in bounds and valid.
    #[cfg(feature = "debug-checks")]
    fn assert_valid(&self) {
        assert!(self.lens.len() <= self.max_segments && self.lens.len() <= self.bufs.len());
        for (index, (buf, &len)) in self.bufs.iter().zip(&self.lens).enumerate() {
            assert!(
                buf.len() >= HEADROOM + len + TAILROOM,
                "segment {index} buffer too small"
            );
        }
    }
}

/// Turns one packet read from the TUN (after its virtio-net header) into
/// complete IP packets in `out` (cleared first) and returns their number.
///
/// * `gso_type` NONE: the packet is copied; with `NEEDS_CSUM` its partial
///   checksum at `csum_start + csum_offset` is completed first.
/// * TCPV4/TCPV6/UDP_L4: cut into segments of `gso_size` payload bytes each
///   (the last may be shorter), with IPv4 total length, ID (+1 per segment)
///   and header checksum, IPv6 payload length, TCP sequence numbers (FIN
///   and PSH kept only on the last segment, CWR only on the first), UDP
///   length and the transport checksum computed in full.
///
/// `hdr_len` from the kernel is ignored; the header length is `csum_start`
/// (which must equal the IP header length) plus the TCP data offset or 8.
/// On error `out` is left empty.
pub fn split(
    hdr: &VirtioNetHdr,
    packet: &[u8],
    out: &mut SegmentBatch,
) -> Result<usize, OffloadError> {
    out.clear();
    let result = match hdr.gso_kind() {
        VIRTIO_NET_HDR_GSO_NONE if hdr.needs_csum() => complete_checksum(hdr, packet, out),
        VIRTIO_NET_HDR_GSO_NONE => copy_whole(packet, out),
        VIRTIO_NET_HDR_GSO_TCPV4 | VIRTIO_NET_HDR_GSO_TCPV6 | VIRTIO_NET_HDR_GSO_UDP_L4 => {
            segment(hdr, packet, out)
        }
        other => Err(OffloadError::UnsupportedGsoType(other)),
    };
    if result.is_err() {
        out.clear();
    }
    #[cfg(feature = "debug-checks")]
    if result.is_ok() {
        out.assert_valid();
    }
    result
}

/// A plain packet: one segment, unchanged.
fn copy_whole(packet: &[u8], out: &mut SegmentBatch) -> Result<usize, OffloadError> {
    if packet.is_empty() {
        return Err(OffloadError::EmptyPacket);
    }
    out.push_segment(packet.len())?.copy_from_slice(packet);
    Ok(1)
}

/// `NEEDS_CSUM` without GSO: the checksum field holds the pseudo-header sum;
/// sum from `csum_start` to the end (that field included) and store the
/// complement.
fn complete_checksum(
    hdr: &VirtioNetHdr,
    packet: &[u8],
    out: &mut SegmentBatch,
) -> Result<usize, OffloadError> {
    let start = usize::from(hdr.csum_start);
    let field = start + usize::from(hdr.csum_offset);
    // Checksum fields sit at even offsets from where summing starts.
    if field + 2 > packet.len() || hdr.csum_offset % 2 != 0 {
        return Err(OffloadError::BadChecksumPosition);
    }
    let segment = out.push_segment(packet.len())?;
    segment.copy_from_slice(packet);
    let mut value = !checksum::sum(&segment[start..]);
    if value == 0 && is_udp_checksum_field(segment, start, field) {
        // RFC 768: a computed zero is sent as all ones (zero means "none").
        value = 0xffff;
    }
    write_u16(segment, field, value);
    // Whether the packet verifies depends on the partial sum the sender put
    // in the field; what this code guarantees is that the range now sums,
    // together with that partial sum, to all ones.
    #[cfg(feature = "debug-checks")]
    {
        let initial = read_u16(packet, field).unwrap_or(0);
        let completed = checksum::add(checksum::sum(&segment[start..]), initial);
        assert_eq!(completed, 0xffff, "checksum not completed");
    }
    Ok(1)
}

/// Whether `field` is the UDP checksum of the transport header at `start`.
fn is_udp_checksum_field(packet: &[u8], start: usize, field: usize) -> bool {
    parse_ip(packet).is_ok_and(|ip| {
        ip.protocol == PROTO_UDP && ip.header_len == start && field == start + UDP_CHECKSUM_OFFSET
    })
}

/// The validated shape of a GSO super-packet.
#[derive(Clone, Copy, Debug)]
struct GsoLayout {
    is_v6: bool,
    protocol: u8,
    ip_header_len: usize,
    /// IP + transport header length.
    header_len: usize,
    gso_size: usize,
}

/// Checks everything about a GSO super-packet before anything is written.
fn gso_layout(hdr: &VirtioNetHdr, packet: &[u8]) -> Result<GsoLayout, OffloadError> {
    let (want_v6, protocol, checksum_offset) = match hdr.gso_kind() {
        VIRTIO_NET_HDR_GSO_TCPV4 => (Some(false), PROTO_TCP, TCP_CHECKSUM_OFFSET),
        VIRTIO_NET_HDR_GSO_TCPV6 => (Some(true), PROTO_TCP, TCP_CHECKSUM_OFFSET),
        _ => (None, PROTO_UDP, UDP_CHECKSUM_OFFSET),
    };
    let ip = ip_layer_for_gso(packet)?;
    if want_v6.is_some_and(|want| want != ip.is_v6) {
        return Err(OffloadError::BadIpVersion);
    }
    if ip.protocol != protocol {
        return Err(OffloadError::ProtocolMismatch);
    }
    if protocol == PROTO_UDP && hdr.gso_type != hdr.gso_kind() {
        // The ECN bit only makes sense for TCP.
        return Err(OffloadError::UnsupportedGsoType(hdr.gso_type));
    }
    if usize::from(hdr.csum_start) != ip.header_len
        || usize::from(hdr.csum_offset) != checksum_offset
    {
        return Err(OffloadError::BadChecksumPosition);
    }
    let transport_header_len = if protocol == PROTO_TCP {
        let data_offset = packet
            .get(ip.header_len + 12)
            .map(|&byte| usize::from(byte >> 4) * 4)
            .ok_or(OffloadError::BadTransportHeader)?;
        if data_offset < TCP_MIN_HEADER_LEN {
            return Err(OffloadError::BadTransportHeader);
        }
        data_offset
    } else {
        UDP_HEADER_LEN
    };
    let header_len = ip.header_len + transport_header_len;
    if header_len > packet.len() {
        return Err(OffloadError::BadTransportHeader);
    }
    let gso_size = usize::from(hdr.gso_size);
    if gso_size == 0 {
        return Err(OffloadError::ZeroGsoSize);
    }
    let payload_len = packet.len() - header_len;
    if payload_len == 0 {
        return Err(OffloadError::EmptyPayload);
    }
    let largest = header_len + gso_size.min(payload_len);
    let largest_length_field = if ip.is_v6 {
        largest - ip.header_len
    } else {
        largest
    };
    if largest_length_field > usize::from(u16::MAX) {
        return Err(OffloadError::SegmentTooLarge);
    }
    Ok(GsoLayout {
        is_v6: ip.is_v6,
        protocol,
        ip_header_len: ip.header_len,
        header_len,
        gso_size,
    })
}

/// The IP header of a super-packet: no IPv4 fragments. Its length fields
/// are ignored (they are rewritten per segment); the buffer length counts.
fn ip_layer_for_gso(packet: &[u8]) -> Result<super::packet::IpLayer, OffloadError> {
    let first = *packet.first().ok_or(OffloadError::EmptyPacket)?;
    match first >> 4 {
        4 => {
            let header_len = usize::from(first & 0x0f) * 4;
            if header_len < 20 || header_len > packet.len() {
                return Err(OffloadError::BadIpHeader);
            }
            let fragment = read_u16(packet, 6).ok_or(OffloadError::BadIpHeader)?;
            if fragment & IPV4_FRAGMENT_MASK != 0 {
                return Err(OffloadError::Fragmented);
            }
            Ok(super::packet::IpLayer {
                is_v6: false,
                header_len,
                protocol: packet[9],
                total_len: packet.len(),
            })
        }
        6 if packet.len() >= 40 => Ok(super::packet::IpLayer {
            is_v6: true,
            header_len: 40,
            protocol: packet[6],
            total_len: packet.len(),
        }),
        6 => Err(OffloadError::BadIpHeader),
        _ => Err(OffloadError::BadIpVersion),
    }
}

/// Cuts a validated super-packet into segments.
fn segment(
    hdr: &VirtioNetHdr,
    packet: &[u8],
    out: &mut SegmentBatch,
) -> Result<usize, OffloadError> {
    let layout = gso_layout(hdr, packet)?;
    let (headers, payload) = packet.split_at(layout.header_len);
    let count = payload.len().div_ceil(layout.gso_size);
    if count > out.max_segments {
        return Err(OffloadError::TooManySegments);
    }
    let first_id = read_u16(packet, 4).unwrap_or(0);
    let first_seq = read_u32(packet, layout.ip_header_len + 4).unwrap_or(0);
    for (index, chunk) in payload.chunks(layout.gso_size).enumerate() {
        let segment = out.push_segment(layout.header_len + chunk.len())?;
        segment[..layout.header_len].copy_from_slice(headers);
        segment[layout.header_len..].copy_from_slice(chunk);
        let position = SegmentPosition {
            index,
            is_last: index + 1 == count,
        };
        fix_ip_header(segment, &layout, first_id, position);
        if layout.protocol == PROTO_TCP {
            fix_tcp_header(segment, &layout, first_seq, position);
        } else {
            let udp_len = segment.len() - layout.ip_header_len;
            write_u16(segment, layout.ip_header_len + 4, udp_len as u16);
        }
        fill_transport_checksum(segment, &layout);
        #[cfg(feature = "debug-checks")]
        super::verify_packet(segment).expect("split produced an invalid segment");
    }
    Ok(count)
}

/// Where a segment sits in its super-packet.
#[derive(Clone, Copy)]
struct SegmentPosition {
    index: usize,
    is_last: bool,
}

/// IPv4: total length, ID + index, header checksum. IPv6: payload length.
fn fix_ip_header(segment: &mut [u8], layout: &GsoLayout, first_id: u16, position: SegmentPosition) {
    if layout.is_v6 {
        write_u16(segment, 4, (segment.len() - layout.ip_header_len) as u16);
        return;
    }
    write_u16(segment, 2, segment.len() as u16);
    write_u16(segment, 4, first_id.wrapping_add(position.index as u16));
    write_u16(segment, 10, 0);
    let header_checksum = !checksum::sum(&segment[..layout.ip_header_len]);
    write_u16(segment, 10, header_checksum);
}

/// Sequence number, and FIN/PSH only on the last, CWR only on the first.
fn fix_tcp_header(
    segment: &mut [u8],
    layout: &GsoLayout,
    first_seq: u32,
    position: SegmentPosition,
) {
    let tcp = layout.ip_header_len;
    let advance = (position.index as u32).wrapping_mul(layout.gso_size as u32);
    write_u32(segment, tcp + 4, first_seq.wrapping_add(advance));
    let mut cleared = 0;
    if !position.is_last {
        cleared |= TCP_FIN | TCP_PSH;
    }
    if position.index > 0 {
        cleared |= TCP_CWR;
    }
    segment[tcp + TCP_FLAGS_OFFSET] &= !cleared;
}

/// Computes the TCP/UDP checksum in full over pseudo-header and segment.
fn fill_transport_checksum(segment: &mut [u8], layout: &GsoLayout) {
    let start = layout.ip_header_len;
    let field = start
        + if layout.protocol == PROTO_TCP {
            TCP_CHECKSUM_OFFSET
        } else {
            UDP_CHECKSUM_OFFSET
        };
    write_u16(segment, field, 0);
    let pseudo = pseudo_header_sum(
        segment,
        layout.is_v6,
        layout.protocol,
        segment.len() - start,
    );
    let mut value = !checksum::sum_with(&segment[start..], pseudo);
    if value == 0 && layout.protocol == PROTO_UDP {
        value = 0xffff;
    }
    write_u16(segment, field, value);
}
