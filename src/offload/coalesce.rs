//! The TUN write path: GRO. Decrypted IP packets in, buffers that each start
//! with a virtio-net header out.

use super::packet::{
    parse_ip, pseudo_header_sum, read_u16, read_u32, transport_checksum_ok, write_u16,
    IPV4_FRAGMENT_MASK, IPV4_MIN_HEADER_LEN, PROTO_TCP, PROTO_UDP, TCP_CHECKSUM_OFFSET, TCP_CWR,
    TCP_FIN, TCP_FLAGS_OFFSET, TCP_MIN_HEADER_LEN, TCP_PSH, TCP_RST, TCP_SYN, TCP_URG,
    UDP_CHECKSUM_OFFSET, UDP_HEADER_LEN,
};
use super::virtio::{
    VirtioNetHdr, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6,
    VIRTIO_NET_HDR_GSO_UDP_L4, VIRTIO_NET_HDR_LEN,
};
use ferroguard_proto::packet::checksum;

/// Largest IP packet a super-packet may become.
pub const MAX_COALESCED_LEN: usize = 65535;
/// Most packets merged into one super-packet (as Linux's UDP GRO).
pub const MAX_COALESCED_SEGMENTS: usize = 64;

/// TCP flags that keep a segment out of any merge.
const TCP_UNMERGEABLE_FLAGS: u8 = TCP_SYN | TCP_FIN | TCP_RST | TCP_URG | TCP_CWR;
/// ICMP and ICMPv6, which belong to no TCP/UDP flow.
const PROTO_ICMP: u8 = 1;
const PROTO_ICMPV6: u8 = 58;
/// IPv6 "no next header".
const PROTO_NONE_V6: u8 = 59;

/// Merges TCP segments (and UDP datagrams if USO is on) of one flow into GSO
/// super-packets for one TUN write each. Reuse it across batches: buffers
/// are kept, so a warmed-up coalescer does not allocate.
///
/// Usage per batch: [`push`](Self::push) every packet in order, then write
/// every buffer yielded by [`finish`](Self::finish), then
/// [`clear`](Self::clear).
///
/// Rules: packets of a flow (same IP version, protocol, addresses, ports)
/// merge into the flow's latest output only, so the order within a flow is
/// kept; packets of other flows may be written earlier or later than they
/// came. A TCP segment joins when its IP ToS/TTL (IPv6: first word and hop
/// limit) and DF bit, TCP header length, options, ACK number and flags
/// (PSH aside) equal the first segment's, its sequence number follows, its
/// payload is no larger than the first's, no SYN/FIN/RST/URG/CWR is set,
/// and both checksums verify (the kernel will recompute them, hiding any
/// corruption otherwise). A shorter payload or PSH ends the super-packet.
/// IPv4 with options or fragments never merges; neither does a packet that
/// would make the super-packet exceed [`MAX_COALESCED_LEN`] or
/// [`MAX_COALESCED_SEGMENTS`]. Anything else passes through with an
/// all-zero header. A super-packet keeps the first segment's headers (IPv4
/// ID, TCP window), as Linux GRO does.
#[derive(Debug, Default)]
pub struct Coalescer {
    udp_gso: bool,
    items: Vec<Item>,
    /// `bufs[i]` holds `items[i]`: virtio-net header then the IP packet.
    bufs: Vec<Vec<u8>>,
    open_flows: Vec<OpenFlow>,
}

/// Identifies a TCP/UDP flow in one direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FlowKey {
    is_v6: bool,
    protocol: u8,
    addresses: AddressPair,
    src_port: u16,
    dst_port: u16,
}

/// Source and destination address (IPv4 in the first 4 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct AddressPair {
    src: [u8; 16],
    dst: [u8; 16],
}

/// The output item a flow's next packet may merge into.
#[derive(Clone, Copy, Debug)]
struct OpenFlow {
    key: FlowKey,
    item: usize,
}

/// Whether a checksum has been verified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChecksumState {
    Unknown,
    Valid,
    Invalid,
}

/// Book-keeping for one output buffer.
#[derive(Clone, Copy, Debug)]
struct Item {
    /// `None` for a pass-through packet that nothing merges into.
    protocol: Option<u8>,
    is_v6: bool,
    ip_header_len: usize,
    transport_header_len: usize,
    /// Payload bytes of the first packet: the GSO size.
    segment_size: usize,
    segments: usize,
    /// TCP sequence number the next segment must carry.
    next_seq: u32,
    /// Nothing may be appended any more.
    closed: bool,
    head_checksum: ChecksumState,
}

/// A TCP or UDP packet, trimmed to its IP length.
#[derive(Clone, Copy, Debug)]
struct FlowPacket<'a> {
    packet: &'a [u8],
    key: FlowKey,
    ip_header_len: usize,
    transport_header_len: usize,
    payload_len: usize,
    seq: u32,
    tcp_flags: u8,
    /// May start or join a super-packet.
    mergeable: bool,
}

/// What a pushed packet is, as far as GRO cares.
enum Classified<'a> {
    /// Part of a TCP/UDP flow.
    Flow(FlowPacket<'a>),
    /// An IP packet whose ports cannot be read (IPv4 non-first fragment,
    /// IPv6 extension headers, truncated transport header): it might belong
    /// to any flow between these addresses.
    Unknown(bool, AddressPair),
    /// Not IP, or IP with no flow (ICMP, …).
    Opaque,
}

impl Coalescer {
    /// A coalescer; `udp_gso` says whether the TUN accepted `TUN_F_USO4` and
    /// `TUN_F_USO6` (without it, UDP datagrams pass through).
    pub fn new(udp_gso: bool) -> Self {
        Self {
            udp_gso,
            ..Self::default()
        }
    }

    /// Switches UDP coalescing on or off (for the next pushes).
    pub fn set_udp_gso(&mut self, udp_gso: bool) {
        self.udp_gso = udp_gso;
    }

    /// Number of output buffers so far.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether nothing has been pushed since the last [`clear`](Self::clear).
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Starts a new batch, keeping the buffers.
    pub fn clear(&mut self) {
        self.items.clear();
        self.open_flows.clear();
    }

    /// Adds the next decrypted packet. Anything (even garbage) is accepted;
    /// bytes after the IP length (WireGuard's zero padding) are dropped from
    /// TCP/UDP packets.
    pub fn push(&mut self, packet: &[u8]) {
        match classify(packet, self.udp_gso) {
            Classified::Opaque => {
                self.push_plain(packet);
            }
            Classified::Unknown(is_v6, addresses) => {
                self.open_flows
                    .retain(|flow| flow.key.is_v6 != is_v6 || flow.key.addresses != addresses);
                self.push_plain(packet);
            }
            Classified::Flow(flow_packet) => self.push_flow_packet(&flow_packet),
        }
    }

    /// Finalises the merged packets (lengths, IPv4 header checksum, partial
    /// transport checksum, virtio-net header) and yields every output
    /// buffer in order: a virtio-net header followed by the IP packet.
    /// Pushing more afterwards continues the same batch.
    pub fn finish(&mut self) -> impl ExactSizeIterator<Item = &[u8]> + '_ {
        for (item, buf) in self.items.iter().zip(self.bufs.iter_mut()) {
            if item.segments > 1 {
                finalize(item, buf);
            }
        }
        #[cfg(feature = "debug-checks")]
        self.assert_valid();
        self.bufs[..self.items.len()].iter().map(Vec::as_slice)
    }

    fn push_flow_packet(&mut self, packet: &FlowPacket<'_>) {
        let open = self
            .open_flows
            .iter()
            .position(|flow| flow.key == packet.key);
        let mut checksum_known_bad = false;
        if let Some(position) = open {
            match self.try_append(self.open_flows[position].item, packet) {
                Append::Done => return,
                Append::BadChecksum => checksum_known_bad = true,
                Append::No => {}
            }
        }
        let index = if packet.mergeable && !checksum_known_bad {
            self.push_head(packet)
        } else {
            self.push_plain(packet.packet)
        };
        let starts_flow = packet.mergeable && !checksum_known_bad;
        match (open, starts_flow) {
            (Some(position), true) => self.open_flows[position].item = index,
            (Some(position), false) => {
                self.open_flows.swap_remove(position);
            }
            (None, true) => self.open_flows.push(OpenFlow {
                key: packet.key,
                item: index,
            }),
            (None, false) => {}
        }
    }

    /// A fresh output buffer holding an all-zero header and `packet`.
    fn new_buffer(&mut self, packet: &[u8]) -> usize {
        let index = self.items.len();
        if self.bufs.len() <= index {
            self.bufs.push(Vec::new());
        }
        let buf = &mut self.bufs[index];
        buf.clear();
        buf.extend_from_slice(&[0; VIRTIO_NET_HDR_LEN]);
        buf.extend_from_slice(packet);
        index
    }

    fn push_plain(&mut self, packet: &[u8]) -> usize {
        let index = self.new_buffer(packet);
        self.items.push(Item {
            protocol: None,
            is_v6: false,
            ip_header_len: 0,
            transport_header_len: 0,
            segment_size: 0,
            segments: 1,
            next_seq: 0,
            closed: true,
            head_checksum: ChecksumState::Unknown,
        });
        index
    }

    fn push_head(&mut self, packet: &FlowPacket<'_>) -> usize {
        let index = self.new_buffer(packet.packet);
        self.items.push(Item {
            protocol: Some(packet.key.protocol),
            is_v6: packet.key.is_v6,
            ip_header_len: packet.ip_header_len,
            transport_header_len: packet.transport_header_len,
            segment_size: packet.payload_len,
            segments: 1,
            next_seq: packet.seq.wrapping_add(packet.payload_len as u32),
            closed: packet.tcp_flags & TCP_PSH != 0,
            head_checksum: ChecksumState::Unknown,
        });
        index
    }

    /// Appends `packet`'s payload to item `index` if every rule allows it.
    fn try_append(&mut self, index: usize, packet: &FlowPacket<'_>) -> Append {
        let item = self.items[index];
        let head = &self.bufs[index][VIRTIO_NET_HDR_LEN..];
        if !packet.mergeable
            || !fits(&item, head.len(), packet)
            || !headers_match(&item, head, packet)
        {
            return Append::No;
        }
        if item.head_checksum == ChecksumState::Unknown {
            let valid = packet_checksums_ok(head, item.is_v6, item.ip_header_len);
            let state = if valid {
                ChecksumState::Valid
            } else {
                ChecksumState::Invalid
            };
            self.items[index].head_checksum = state;
            if !valid {
                self.items[index].closed = true;
                return Append::No;
            }
        }
        if !packet_checksums_ok(packet.packet, item.is_v6, item.ip_header_len) {
            return Append::BadChecksum;
        }
        let header_len = item.ip_header_len + item.transport_header_len;
        let buf = &mut self.bufs[index];
        buf.extend_from_slice(&packet.packet[header_len..]);
        let pushed = packet.tcp_flags & TCP_PSH != 0;
        if pushed {
            buf[VIRTIO_NET_HDR_LEN + item.ip_header_len + TCP_FLAGS_OFFSET] |= TCP_PSH;
        }
        let item = &mut self.items[index];
        item.segments += 1;
        item.next_seq = packet.seq.wrapping_add(packet.payload_len as u32);
        item.closed = pushed || packet.payload_len < item.segment_size;
        Append::Done
    }

    /// With `debug-checks`: every merged buffer is a consistent GSO packet
    /// that segments into valid packets.
    #[cfg(feature = "debug-checks")]
    fn assert_valid(&self) {
        let mut batch = super::SegmentBatch::with_max_segments(MAX_COALESCED_SEGMENTS);
        for (item, buf) in self.items.iter().zip(&self.bufs) {
            let hdr = VirtioNetHdr::decode(buf).expect("output shorter than its header");
            let packet = &buf[VIRTIO_NET_HDR_LEN..];
            if item.segments == 1 {
                assert_eq!(
                    hdr,
                    VirtioNetHdr::default(),
                    "single packet with a GSO header"
                );
                continue;
            }
            assert!(packet.len() <= MAX_COALESCED_LEN && item.segments <= MAX_COALESCED_SEGMENTS);
            let ip = parse_ip(packet).expect("merged packet has a bad IP header");
            assert_eq!(ip.total_len, packet.len(), "merged IP length");
            assert_eq!(usize::from(hdr.csum_start), ip.header_len);
            let field = usize::from(hdr.csum_start + hdr.csum_offset);
            let partial = read_u16(packet, field).expect("checksum field out of bounds");
            let pseudo =
                pseudo_header_sum(packet, ip.is_v6, ip.protocol, packet.len() - ip.header_len);
            assert_eq!(
                partial, pseudo,
                "partial checksum is not the pseudo-header sum"
            );
            let count =
                super::split(&hdr, packet, &mut batch).expect("merged packet does not split");
            assert_eq!(count, item.segments, "merged packet splits differently");
            for segment in batch.packets() {
                super::verify_packet(segment).expect("merged packet splits into bad packets");
            }
        }
    }
}

/// Outcome of [`Coalescer::try_append`].
enum Append {
    Done,
    No,
    /// The packet's own checksum is wrong: it must never merge.
    BadChecksum,
}

/// Size rules: protocol and version equal, item open, payload no larger
/// than the GSO size, caps respected, TCP sequence adjacent.
fn fits(item: &Item, head_len: usize, packet: &FlowPacket<'_>) -> bool {
    item.protocol == Some(packet.key.protocol)
        && item.is_v6 == packet.key.is_v6
        && !item.closed
        && item.ip_header_len == packet.ip_header_len
        && item.transport_header_len == packet.transport_header_len
        && packet.payload_len <= item.segment_size
        && item.segments < MAX_COALESCED_SEGMENTS
        && head_len + packet.payload_len <= MAX_COALESCED_LEN
        && (packet.key.protocol != PROTO_TCP || packet.seq == item.next_seq)
}

/// Header rules: IP fields the kernel would refuse to merge, and for TCP
/// the options, ACK number and flags other than PSH.
fn headers_match(item: &Item, head: &[u8], packet: &FlowPacket<'_>) -> bool {
    let other = packet.packet;
    let ip_equal = if item.is_v6 {
        head.get(..4) == other.get(..4) && head.get(7) == other.get(7)
    } else {
        head.get(1) == other.get(1)
            && head.get(8) == other.get(8)
            && head.get(6).map(|b| b & 0xe0) == other.get(6).map(|b| b & 0xe0)
    };
    if !ip_equal || packet.key.protocol != PROTO_TCP {
        return ip_equal;
    }
    let tcp = item.ip_header_len;
    let header_end = tcp + item.transport_header_len;
    // ACK number, then data offset with the reserved/AE bits.
    let ack_equal = head.get(tcp + 8..tcp + 13) == other.get(tcp + 8..tcp + 13);
    let flags_equal =
        head.get(tcp + TCP_FLAGS_OFFSET).map(|f| f & !TCP_PSH) == Some(packet.tcp_flags & !TCP_PSH);
    let options_equal = head.get(tcp + TCP_MIN_HEADER_LEN..header_end)
        == other.get(tcp + TCP_MIN_HEADER_LEN..header_end);
    ack_equal && flags_equal && options_equal
}

/// IPv4 header checksum (rewritten on merge) and transport checksum.
fn packet_checksums_ok(packet: &[u8], is_v6: bool, ip_header_len: usize) -> bool {
    let Ok(ip) = parse_ip(packet) else {
        return false;
    };
    let header_ok = is_v6 || checksum::sum(&packet[..ip_header_len]) == 0xffff;
    header_ok && transport_checksum_ok(packet, is_v6, ip.protocol, ip_header_len)
}

/// Turns a merged item into a GSO super-packet the kernel accepts.
fn finalize(item: &Item, buf: &mut [u8]) {
    let (header, packet) = buf.split_at_mut(VIRTIO_NET_HDR_LEN);
    let Some(protocol) = item.protocol else {
        return;
    };
    let ip_len = packet.len();
    if item.is_v6 {
        write_u16(packet, 4, (ip_len - item.ip_header_len) as u16);
    } else {
        write_u16(packet, 2, ip_len as u16);
        write_u16(packet, 10, 0);
        let header_checksum = !checksum::sum(&packet[..item.ip_header_len]);
        write_u16(packet, 10, header_checksum);
    }
    let transport_len = ip_len - item.ip_header_len;
    let (gso_type, checksum_offset) = if protocol == PROTO_TCP {
        let kind = if item.is_v6 {
            VIRTIO_NET_HDR_GSO_TCPV6
        } else {
            VIRTIO_NET_HDR_GSO_TCPV4
        };
        (kind, TCP_CHECKSUM_OFFSET)
    } else {
        write_u16(packet, item.ip_header_len + 4, transport_len as u16);
        (VIRTIO_NET_HDR_GSO_UDP_L4, UDP_CHECKSUM_OFFSET)
    };
    // NEEDS_CSUM: the field holds the pseudo-header sum, not complemented;
    // the kernel adds the rest when it segments.
    let pseudo = pseudo_header_sum(packet, item.is_v6, protocol, transport_len);
    write_u16(packet, item.ip_header_len + checksum_offset, pseudo);
    let vnet = VirtioNetHdr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
        gso_type,
        hdr_len: (item.ip_header_len + item.transport_header_len) as u16,
        gso_size: item.segment_size as u16,
        csum_start: item.ip_header_len as u16,
        csum_offset: checksum_offset as u16,
    };
    let mut encoded = [0; VIRTIO_NET_HDR_LEN];
    vnet.encode(&mut encoded);
    header.copy_from_slice(&encoded);
}

/// Reads what GRO needs from a packet.
fn classify(packet: &[u8], udp_gso: bool) -> Classified<'_> {
    let Ok(ip) = parse_ip(packet) else {
        return Classified::Opaque;
    };
    let packet = &packet[..ip.total_len];
    let addresses = address_pair(packet, ip.is_v6);
    let fragment = if ip.is_v6 {
        0
    } else {
        read_u16(packet, 6).unwrap_or(0)
    };
    let first_fragment_or_whole = fragment & 0x1fff == 0;
    match ip.protocol {
        PROTO_TCP | PROTO_UDP if first_fragment_or_whole => {}
        PROTO_ICMP if !ip.is_v6 => return Classified::Opaque,
        PROTO_ICMPV6 | PROTO_NONE_V6 if ip.is_v6 => return Classified::Opaque,
        _ if !ip.is_v6 && first_fragment_or_whole => return Classified::Opaque,
        _ => return Classified::Unknown(ip.is_v6, addresses),
    }
    let transport = &packet[ip.header_len..];
    let (Some(src_port), Some(dst_port)) = (read_u16(transport, 0), read_u16(transport, 2)) else {
        return Classified::Unknown(ip.is_v6, addresses);
    };
    let key = FlowKey {
        is_v6: ip.is_v6,
        protocol: ip.protocol,
        addresses,
        src_port,
        dst_port,
    };
    let whole_simple_ip =
        ip.is_v6 || (ip.header_len == IPV4_MIN_HEADER_LEN && fragment & IPV4_FRAGMENT_MASK == 0);
    let mut flow_packet = FlowPacket {
        packet,
        key,
        ip_header_len: ip.header_len,
        transport_header_len: 0,
        payload_len: 0,
        seq: 0,
        tcp_flags: 0,
        mergeable: false,
    };
    if ip.protocol == PROTO_TCP {
        let data_offset = transport
            .get(12)
            .map_or(0, |&byte| usize::from(byte >> 4) * 4);
        let flags = transport.get(TCP_FLAGS_OFFSET).copied().unwrap_or(0);
        if data_offset < TCP_MIN_HEADER_LEN || data_offset > transport.len() {
            return Classified::Flow(flow_packet);
        }
        flow_packet.transport_header_len = data_offset;
        flow_packet.payload_len = transport.len() - data_offset;
        flow_packet.seq = read_u32(transport, 4).unwrap_or(0);
        flow_packet.tcp_flags = flags;
        flow_packet.mergeable =
            whole_simple_ip && flow_packet.payload_len > 0 && flags & TCP_UNMERGEABLE_FLAGS == 0;
    } else {
        let udp_len_ok = read_u16(transport, 4).map(usize::from) == Some(transport.len());
        if !udp_len_ok || transport.len() < UDP_HEADER_LEN {
            return Classified::Flow(flow_packet);
        }
        flow_packet.transport_header_len = UDP_HEADER_LEN;
        flow_packet.payload_len = transport.len() - UDP_HEADER_LEN;
        flow_packet.mergeable = udp_gso && whole_simple_ip && flow_packet.payload_len > 0;
    }
    Classified::Flow(flow_packet)
}

/// Source and destination address of a packet with a validated IP header.
fn address_pair(packet: &[u8], is_v6: bool) -> AddressPair {
    let mut pair = AddressPair {
        src: [0; 16],
        dst: [0; 16],
    };
    if is_v6 {
        pair.src.copy_from_slice(&packet[8..24]);
        pair.dst.copy_from_slice(&packet[24..40]);
    } else {
        pair.src[..4].copy_from_slice(&packet[12..16]);
        pair.dst[..4].copy_from_slice(&packet[16..20]);
    }
    pair
}
