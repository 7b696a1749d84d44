//! Tests of split and coalesce against independently built packets and an
//! independent (naive) checksum.

use super::virtio::*;
use super::*;
use proptest::prelude::*;

// ---- independent helpers -------------------------------------------------

/// Byte-pair ones-complement sum, no shortcuts.
fn naive_sum(data: &[u8]) -> u32 {
    let mut total: u64 = 0;
    for pair in data.chunks(2) {
        total += (u64::from(pair[0]) << 8) | pair.get(1).map_or(0, |&b| u64::from(b));
    }
    while total > 0xffff {
        total = (total & 0xffff) + (total >> 16);
    }
    total as u32
}

/// Whether the transport checksum of `packet` verifies, computed naively
/// with an explicitly assembled pseudo-header.
fn naive_transport_ok(packet: &[u8]) -> bool {
    let (pseudo, transport) = if packet[0] >> 4 == 4 {
        let ihl = usize::from(packet[0] & 15) * 4;
        let transport = &packet[ihl..];
        let mut pseudo = packet[12..20].to_vec();
        pseudo.extend_from_slice(&[0, packet[9]]);
        pseudo.extend_from_slice(&(transport.len() as u16).to_be_bytes());
        (pseudo, transport)
    } else {
        let transport = &packet[40..];
        let mut pseudo = packet[8..40].to_vec();
        pseudo.extend_from_slice(&(transport.len() as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, packet[6]]);
        (pseudo, transport)
    };
    let mut all = pseudo;
    all.extend_from_slice(transport);
    naive_sum(&all) == 0xffff
}

fn naive_ipv4_header_ok(packet: &[u8]) -> bool {
    naive_sum(&packet[..usize::from(packet[0] & 15) * 4]) == 0xffff
}

fn be16(bytes: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([bytes[at], bytes[at + 1]])
}

fn be32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap())
}

/// Stores the naive transport checksum (and IPv4 header checksum).
fn fill_checksums(packet: &mut [u8], field: usize) {
    packet[field] = 0;
    packet[field + 1] = 0;
    let is_v4 = packet[0] >> 4 == 4;
    let start = if is_v4 {
        usize::from(packet[0] & 15) * 4
    } else {
        40
    };
    if is_v4 {
        packet[10] = 0;
        packet[11] = 0;
        let value = !(naive_sum(&packet[..start]) as u16);
        packet[10..12].copy_from_slice(&value.to_be_bytes());
    }
    let mut pseudo = if is_v4 {
        let mut p = packet[12..20].to_vec();
        p.extend_from_slice(&[0, packet[9]]);
        p.extend_from_slice(&((packet.len() - start) as u16).to_be_bytes());
        p
    } else {
        let mut p = packet[8..40].to_vec();
        p.extend_from_slice(&((packet.len() - start) as u32).to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, packet[6]]);
        p
    };
    pseudo.extend_from_slice(&packet[start..]);
    let mut value = !(naive_sum(&pseudo) as u16);
    if value == 0 {
        value = 0xffff;
    }
    packet[field..field + 2].copy_from_slice(&value.to_be_bytes());
}

/// IP header (no checksum yet) for `payload_len` bytes after it.
fn ip_header(is_v6: bool, protocol: u8, transport_len: usize, id: u16, ttl: u8) -> Vec<u8> {
    if is_v6 {
        let mut h = vec![0x60, 0, 0, 0];
        h.extend_from_slice(&(transport_len as u16).to_be_bytes());
        h.extend_from_slice(&[protocol, ttl]);
        h.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        h.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        h
    } else {
        let total = (20 + transport_len) as u16;
        let mut h = vec![0x45, 0];
        h.extend_from_slice(&total.to_be_bytes());
        h.extend_from_slice(&id.to_be_bytes());
        h.extend_from_slice(&[0x40, 0, ttl, protocol, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
        h
    }
}

/// Parameters of a TCP segment built by [`tcp_packet`].
#[derive(Clone, Debug)]
struct Tcp {
    is_v6: bool,
    src_port: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    options: Vec<u8>,
    ttl: u8,
    id: u16,
}

impl Tcp {
    fn v4() -> Self {
        Tcp {
            is_v6: false,
            src_port: 40000,
            seq: 0xfffff000, // wraps within a super-packet
            ack: 77,
            flags: 0x10,
            options: vec![],
            ttl: 64,
            id: 0xfffe,
        }
    }
    fn v6() -> Self {
        Tcp {
            is_v6: true,
            options: timestamp_option(),
            ..Self::v4()
        }
    }
}

fn timestamp_option() -> Vec<u8> {
    vec![1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 7]
}

fn payload(len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt))
        .collect()
}

/// A complete TCP packet with valid checksums.
fn tcp_packet(t: &Tcp, data: &[u8]) -> Vec<u8> {
    let tcp_len = 20 + t.options.len() + data.len();
    let mut packet = ip_header(t.is_v6, 6, tcp_len, t.id, t.ttl);
    let ihl = packet.len();
    packet.extend_from_slice(&t.src_port.to_be_bytes());
    packet.extend_from_slice(&443u16.to_be_bytes());
    packet.extend_from_slice(&t.seq.to_be_bytes());
    packet.extend_from_slice(&t.ack.to_be_bytes());
    packet.push((((20 + t.options.len()) / 4) as u8) << 4);
    packet.push(t.flags);
    packet.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]);
    packet.extend_from_slice(&t.options);
    packet.extend_from_slice(data);
    fill_checksums(&mut packet, ihl + 16);
    packet
}

/// A complete UDP datagram with valid checksums.
fn udp_packet(is_v6: bool, src_port: u16, data: &[u8]) -> Vec<u8> {
    let udp_len = 8 + data.len();
    let mut packet = ip_header(is_v6, 17, udp_len, 1, 64);
    let ihl = packet.len();
    packet.extend_from_slice(&src_port.to_be_bytes());
    packet.extend_from_slice(&4433u16.to_be_bytes());
    packet.extend_from_slice(&(udp_len as u16).to_be_bytes());
    packet.extend_from_slice(&[0, 0]);
    packet.extend_from_slice(data);
    fill_checksums(&mut packet, ihl + 6);
    packet
}

fn tcp_gso_header(is_v6: bool, gso_size: u16, header_len: usize) -> VirtioNetHdr {
    VirtioNetHdr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
        gso_type: if is_v6 {
            VIRTIO_NET_HDR_GSO_TCPV6
        } else {
            VIRTIO_NET_HDR_GSO_TCPV4
        },
        hdr_len: header_len as u16,
        gso_size,
        csum_start: if is_v6 { 40 } else { 20 },
        csum_offset: 16,
    }
}

fn collect(batch: &SegmentBatch) -> Vec<Vec<u8>> {
    batch.packets().map(<[u8]>::to_vec).collect()
}

// ---- split ---------------------------------------------------------------

/// Splits a TCP super-packet of 10 × 1380 + 700 bytes and checks every field
/// of every segment independently.
fn check_tcp_split(template: Tcp) {
    const MSS: usize = 1380;
    let data = payload(10 * MSS + 700, 3);
    let mut tcp = template.clone();
    tcp.flags = 0x10 | 0x08 | 0x01 | 0x80; // ACK PSH FIN CWR
    let super_packet = tcp_packet(&tcp, &data);
    let ip_len = if tcp.is_v6 { 40 } else { 20 };
    let header_len = ip_len + 20 + tcp.options.len();
    let mut hdr = tcp_gso_header(tcp.is_v6, MSS as u16, 0); // bogus hdr_len: ignored
    hdr.gso_type |= VIRTIO_NET_HDR_GSO_ECN;
    let mut batch = SegmentBatch::new();
    assert_eq!(split(&hdr, &super_packet, &mut batch), Ok(11));
    assert_eq!(batch.len(), 11);
    for (i, segment) in batch.packets().enumerate() {
        let chunk = &data[i * MSS..((i + 1) * MSS).min(data.len())];
        assert_eq!(segment.len(), header_len + chunk.len());
        assert_eq!(&segment[header_len..], chunk, "payload of segment {i}");
        if tcp.is_v6 {
            assert_eq!(usize::from(be16(segment, 4)), segment.len() - 40);
        } else {
            assert_eq!(usize::from(be16(segment, 2)), segment.len());
            assert_eq!(be16(segment, 4), tcp.id.wrapping_add(i as u16));
            assert!(naive_ipv4_header_ok(segment), "IPv4 header checksum {i}");
        }
        let th = &segment[ip_len..];
        assert_eq!(
            be32(th, 4),
            tcp.seq.wrapping_add((i * MSS) as u32),
            "seq {i}"
        );
        assert_eq!(be32(th, 8), tcp.ack);
        let last = i == 10;
        assert_eq!(th[13] & 0x09 != 0, last, "FIN/PSH only on the last ({i})");
        assert_eq!(th[13] & 0x09 == 0x09, last);
        assert_eq!(th[13] & 0x80 != 0, i == 0, "CWR only on the first ({i})");
        assert_eq!(th[13] & 0x10, 0x10, "ACK kept");
        assert_eq!(&th[20..20 + tcp.options.len()], &tcp.options[..]);
        assert!(naive_transport_ok(segment), "TCP checksum {i}");
        assert_eq!(verify_packet(segment), Ok(()));
    }
}

#[test]
fn split_tcpv4_super_packet() {
    check_tcp_split(Tcp::v4());
}

#[test]
fn split_tcpv6_super_packet_with_options() {
    check_tcp_split(Tcp::v6());
}

/// A full 64 KiB super-packet splits at every MSS the kernel may choose:
/// the MSS of MTU 576, 1000, 1280, 1420 and 8920, and Linux's smallest (48).
/// (Regression: a fixed limit of 64 segments dropped every full super-packet
/// below MTU 1064, and TCP through the tunnel fell to 1 % of its speed.)
#[test]
fn split_full_super_packets_at_every_mtu() {
    for is_v6 in [false, true] {
        let template = if is_v6 { Tcp::v6() } else { Tcp::v4() };
        let headers = if is_v6 { 60 } else { 40 } + template.options.len();
        let data = payload(MAX_SUPER_PACKET - headers, 9);
        let super_packet = tcp_packet(&template, &data);
        for mtu in [88, 576, 1000, 1280, 1420, 8920] {
            if is_v6 && mtu < 1280 {
                continue;
            }
            let mss = mtu - headers;
            let hdr = tcp_gso_header(is_v6, mss as u16, headers);
            let mut batch = SegmentBatch::new();
            let want = data.len().div_ceil(mss);
            assert_eq!(
                split(&hdr, &super_packet, &mut batch),
                Ok(want),
                "MTU {mtu}"
            );
            let mut joined = Vec::with_capacity(data.len());
            for segment in batch.packets() {
                assert!(
                    segment.len() <= mtu,
                    "MTU {mtu}: segment of {}",
                    segment.len()
                );
                assert_eq!(verify_packet(segment), Ok(()), "MTU {mtu}");
                joined.extend_from_slice(&segment[headers..]);
            }
            assert_eq!(joined, data, "MTU {mtu}: payload in order");
        }
    }
}

#[test]
fn split_places_segments_at_headroom_with_tailroom() {
    let data = payload(3000, 1);
    let packet = tcp_packet(&Tcp::v4(), &data);
    let mut batch = SegmentBatch::new();
    assert_eq!(
        split(&tcp_gso_header(false, 1000, 40), &packet, &mut batch),
        Ok(3)
    );
    for i in 0..3 {
        let expected = batch.packet(i).unwrap().to_vec();
        let (buf, len) = batch.buffer_mut(i).unwrap();
        assert!(buf.len() >= HEADROOM + len + TAILROOM);
        assert_eq!(&buf[HEADROOM..HEADROOM + len], &expected[..]);
        // Writing around the packet does not disturb it.
        buf[..HEADROOM].fill(0xaa);
        buf[HEADROOM + len..].fill(0xbb);
    }
    for i in 0..3 {
        assert_eq!(verify_packet(batch.packet(i).unwrap()), Ok(()));
    }
    assert!(batch.packet(3).is_none());
}

#[test]
fn split_keeps_ipv4_options_in_every_segment() {
    let mut packet = vec![0x47]; // IHL 7: 8 bytes of options
    let plain = tcp_packet(&Tcp::v4(), &payload(2500, 2));
    packet.extend_from_slice(&plain[1..20]);
    packet.extend_from_slice(&[0x94, 0x04, 0, 0, 1, 1, 1, 0]); // router alert, NOPs
    packet.extend_from_slice(&plain[20..]);
    let hdr = VirtioNetHdr {
        csum_start: 28,
        ..tcp_gso_header(false, 1000, 0)
    };
    let mut batch = SegmentBatch::new();
    assert_eq!(split(&hdr, &packet, &mut batch), Ok(3));
    for (i, segment) in batch.packets().enumerate() {
        assert_eq!(&segment[20..28], &packet[20..28], "options of segment {i}");
        assert!(naive_ipv4_header_ok(segment));
        assert!(naive_transport_ok(segment));
        assert_eq!(
            &segment[48..],
            &packet[48 + i * 1000..(48 + (i + 1) * 1000).min(packet.len())]
        );
    }
}

#[test]
fn split_udp_gso_v4_and_v6() {
    for is_v6 in [false, true] {
        let data = payload(5 * 1200 + 1, 9);
        let packet = udp_packet(is_v6, 5000, &data);
        let ip_len = if is_v6 { 40 } else { 20 };
        let hdr = VirtioNetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            gso_type: VIRTIO_NET_HDR_GSO_UDP_L4,
            hdr_len: 0,
            gso_size: 1200,
            csum_start: ip_len as u16,
            csum_offset: 6,
        };
        let mut batch = SegmentBatch::new();
        assert_eq!(split(&hdr, &packet, &mut batch), Ok(6));
        for (i, segment) in batch.packets().enumerate() {
            let chunk = &data[i * 1200..((i + 1) * 1200).min(data.len())];
            assert_eq!(&segment[ip_len + 8..], chunk);
            assert_eq!(
                usize::from(be16(segment, ip_len + 4)),
                8 + chunk.len(),
                "UDP length"
            );
            assert_ne!(be16(segment, ip_len + 6), 0, "UDP checksum present");
            assert!(naive_transport_ok(segment), "UDP checksum {i} (v6 {is_v6})");
            if !is_v6 {
                assert!(naive_ipv4_header_ok(segment));
                assert_eq!(be16(segment, 4), 1u16.wrapping_add(i as u16));
            }
        }
    }
}

/// The kernel's NEEDS_CSUM form: pseudo-header sum (not complemented) in
/// the checksum field.
fn with_partial_checksum(mut packet: Vec<u8>, start: usize, field: usize) -> Vec<u8> {
    let mut pseudo = if start == 20 {
        let mut p = packet[12..20].to_vec();
        p.extend_from_slice(&[0, packet[9]]);
        p.extend_from_slice(&((packet.len() - start) as u16).to_be_bytes());
        p
    } else {
        let mut p = packet[8..40].to_vec();
        p.extend_from_slice(&((packet.len() - start) as u32).to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, packet[6]]);
        p
    };
    pseudo.truncate(pseudo.len());
    let partial = naive_sum(&pseudo) as u16;
    packet[field..field + 2].copy_from_slice(&partial.to_be_bytes());
    packet
}

#[test]
fn needs_csum_is_completed() {
    let cases = [
        (tcp_packet(&Tcp::v4(), &payload(999, 4)), 20usize, 16usize),
        (tcp_packet(&Tcp::v6(), &payload(1001, 5)), 40, 16),
        (udp_packet(false, 7, &payload(333, 6)), 20, 6),
        (udp_packet(true, 7, &payload(334, 7)), 40, 6),
    ];
    for (valid, start, offset) in cases {
        let partial = with_partial_checksum(valid.clone(), start, start + offset);
        assert!(!naive_transport_ok(&partial));
        let hdr = VirtioNetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            csum_start: start as u16,
            csum_offset: offset as u16,
            ..VirtioNetHdr::default()
        };
        let mut batch = SegmentBatch::new();
        assert_eq!(split(&hdr, &partial, &mut batch), Ok(1));
        let out = batch.packet(0).unwrap();
        assert!(naive_transport_ok(out));
        assert_eq!(out, &valid[..], "completion equals the full computation");
    }
}

#[test]
fn plain_packet_is_copied_unchanged() {
    let packet = tcp_packet(&Tcp::v4(), &payload(100, 0));
    let mut batch = SegmentBatch::new();
    assert_eq!(split(&VirtioNetHdr::default(), &packet, &mut batch), Ok(1));
    assert_eq!(batch.packet(0).unwrap(), &packet[..]);
}

#[test]
fn split_rejects_inconsistent_input() {
    let packet = tcp_packet(&Tcp::v4(), &payload(5000, 0));
    let good = tcp_gso_header(false, 1000, 40);
    let mut batch = SegmentBatch::new();
    let mut check = |hdr: VirtioNetHdr, packet: &[u8], want: OffloadError| {
        assert_eq!(split(&hdr, packet, &mut batch), Err(want), "{hdr:?}");
        assert!(batch.is_empty(), "nothing left behind on error");
    };
    check(
        VirtioNetHdr {
            gso_size: 0,
            ..good
        },
        &packet,
        OffloadError::ZeroGsoSize,
    );
    check(
        VirtioNetHdr {
            csum_start: 24,
            ..good
        },
        &packet,
        OffloadError::BadChecksumPosition,
    );
    check(
        VirtioNetHdr {
            csum_offset: 6,
            ..good
        },
        &packet,
        OffloadError::BadChecksumPosition,
    );
    check(
        VirtioNetHdr {
            gso_size: 3,
            ..good
        },
        &packet,
        OffloadError::TooManySegments,
    );
    check(
        VirtioNetHdr {
            gso_type: VIRTIO_NET_HDR_GSO_TCPV6,
            ..good
        },
        &packet,
        OffloadError::BadIpVersion,
    );
    check(
        VirtioNetHdr {
            gso_type: VIRTIO_NET_HDR_GSO_UDP_L4,
            csum_offset: 6,
            ..good
        },
        &packet,
        OffloadError::ProtocolMismatch,
    );
    check(
        VirtioNetHdr {
            gso_type: VIRTIO_NET_HDR_GSO_UDP,
            ..good
        },
        &packet,
        OffloadError::UnsupportedGsoType(VIRTIO_NET_HDR_GSO_UDP),
    );
    check(good, &packet[..39], OffloadError::BadTransportHeader);
    check(good, &packet[..40], OffloadError::EmptyPayload);
    check(good, &[], OffloadError::EmptyPacket);
    let mut fragment = packet.clone();
    fragment[6] |= 0x20; // MF
    check(good, &fragment, OffloadError::Fragmented);
    let mut bad_offset = packet.clone();
    bad_offset[32] = 0x40; // data offset 16 < 20
    check(good, &bad_offset, OffloadError::BadTransportHeader);
    let needs_csum = VirtioNetHdr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
        csum_start: 5030,
        csum_offset: 16,
        ..VirtioNetHdr::default()
    };
    check(needs_csum, &packet, OffloadError::BadChecksumPosition);
    let mut small = SegmentBatch::with_max_segments(4);
    assert_eq!(
        split(&good, &packet, &mut small),
        Err(OffloadError::TooManySegments)
    );
}

// ---- coalesce ------------------------------------------------------------

/// Splits every output of the coalescer back into plain packets: GSO
/// outputs through `split`, others as they are.
fn outputs(coalescer: &mut Coalescer) -> Vec<(VirtioNetHdr, Vec<u8>)> {
    coalescer
        .finish()
        .map(|buf| {
            (
                VirtioNetHdr::decode(buf).unwrap(),
                buf[VIRTIO_NET_HDR_LEN..].to_vec(),
            )
        })
        .collect()
}

fn segments(tcp: &Tcp, count: usize, size: usize, tail: usize) -> Vec<Vec<u8>> {
    let mut t = tcp.clone();
    let mut packets = Vec::new();
    for i in 0..count {
        let len = if i + 1 == count && tail > 0 {
            tail
        } else {
            size
        };
        packets.push(tcp_packet(&t, &payload(len, i as u8)));
        t.seq = t.seq.wrapping_add(len as u32);
        t.id = t.id.wrapping_add(1);
    }
    packets
}

fn tcp_payload(packet: &[u8]) -> &[u8] {
    let ihl = if packet[0] >> 4 == 4 {
        usize::from(packet[0] & 15) * 4
    } else {
        40
    };
    &packet[ihl + usize::from(packet[ihl + 12] >> 4) * 4..]
}

#[test]
fn split_then_coalesce_round_trip() {
    for template in [Tcp::v4(), Tcp::v6()] {
        let ip_len = if template.is_v6 { 40 } else { 20 };
        let header_len = ip_len + 20 + template.options.len();
        let data = payload(10 * 1380 + 77, 11);
        let mut tcp = template.clone();
        tcp.flags = 0x18; // ACK PSH
        let super_packet = tcp_packet(&tcp, &data);
        let hdr = tcp_gso_header(tcp.is_v6, 1380, header_len);
        let mut batch = SegmentBatch::new();
        assert_eq!(split(&hdr, &super_packet, &mut batch), Ok(11));
        let first_split = collect(&batch);

        let mut coalescer = Coalescer::new(false);
        for segment in &first_split {
            coalescer.push(segment);
        }
        let out = outputs(&mut coalescer);
        assert_eq!(out.len(), 1);
        let (vnet, merged) = &out[0];
        assert_eq!(vnet.gso_kind(), hdr.gso_kind());
        assert_eq!(vnet.flags, VIRTIO_NET_HDR_F_NEEDS_CSUM);
        assert_eq!(vnet.gso_size, 1380);
        assert_eq!(usize::from(vnet.hdr_len), header_len);
        assert_eq!(usize::from(vnet.csum_start), ip_len);
        assert_eq!(vnet.csum_offset, 16);
        assert_eq!(&merged[header_len..], &data[..], "payload preserved");
        assert_eq!(merged[ip_len + 13], 0x18, "PSH of the last segment carried");
        if !tcp.is_v6 {
            assert_eq!(usize::from(be16(merged, 2)), merged.len());
            assert!(naive_ipv4_header_ok(merged));
        } else {
            assert_eq!(usize::from(be16(merged, 4)), merged.len() - 40);
        }
        // The checksum field holds the (uncomplemented) pseudo-header sum.
        let partial = with_partial_checksum(merged.clone(), ip_len, ip_len + 16);
        assert_eq!(be16(merged, ip_len + 16), be16(&partial, ip_len + 16));
        // Segmenting it again gives exactly the same packets.
        assert_eq!(split(vnet, merged, &mut batch), Ok(11));
        assert_eq!(collect(&batch), first_split);
    }
}

fn assert_plain(out: &[(VirtioNetHdr, Vec<u8>)], expected: &[&Vec<u8>]) {
    assert_eq!(out.len(), expected.len());
    for ((vnet, packet), want) in out.iter().zip(expected) {
        assert_eq!(*vnet, VirtioNetHdr::default());
        assert_eq!(packet, *want);
    }
}

/// Coalescing `packets` (without UDP GSO) leaves every one of them as it was.
fn assert_none_merged(packets: &[Vec<u8>]) {
    assert_plain(
        &coalesce(packets, false),
        &packets.iter().collect::<Vec<_>>(),
    );
}

fn coalesce(packets: &[Vec<u8>], udp_gso: bool) -> Vec<(VirtioNetHdr, Vec<u8>)> {
    let mut coalescer = Coalescer::new(udp_gso);
    for packet in packets {
        coalescer.push(packet);
    }
    outputs(&mut coalescer)
}

#[test]
fn coalesce_refuses_sequence_gap() {
    let mut packets = segments(&Tcp::v4(), 2, 1000, 0);
    let mut later = Tcp::v4();
    later.seq = later.seq.wrapping_add(3000);
    packets.push(tcp_packet(&later, &payload(1000, 2)));
    let out = coalesce(&packets, false);
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].0.gso_kind(), VIRTIO_NET_HDR_GSO_TCPV4);
    assert_eq!(out[0].1.len(), 40 + 2000);
    assert_plain(&out[1..], &[&packets[2]]);
}

#[test]
fn coalesce_refuses_differing_headers() {
    let base = Tcp::v4();
    let variants: [fn(&mut Tcp); 4] = [
        |t| t.ttl = 63,
        |t| t.flags |= 0x40, // ECE
        |t| t.options = timestamp_option(),
        |t| t.ack += 1,
    ];
    // The AE (accurate ECN) bit lives next to the data offset.
    let mut packets = segments(&base, 2, 1000, 0);
    packets[1][32] |= 0x01;
    fill_checksums(&mut packets[1], 36);
    assert_none_merged(&packets);
    for change in variants {
        let mut packets = segments(&base, 1, 1000, 0);
        let mut second = base.clone();
        second.seq = second.seq.wrapping_add(1000);
        change(&mut second);
        packets.push(tcp_packet(&second, &payload(1000, 1)));
        let out = coalesce(&packets, false);
        assert_plain(&out, &[&packets[0], &packets[1]]);
    }
}

#[test]
fn coalesce_differing_options_content() {
    let mut first = Tcp::v6();
    let mut packets = segments(&first, 2, 1000, 0);
    first.seq = first.seq.wrapping_add(2000);
    first.options[11] ^= 1; // another timestamp
    packets.push(tcp_packet(&first, &payload(1000, 5)));
    let out = coalesce(&packets, false);
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].0.gso_kind(), VIRTIO_NET_HDR_GSO_TCPV6);
    assert_plain(&out[1..], &[&packets[2]]);
}

#[test]
fn psh_only_on_the_last_segment() {
    let mut tcp = Tcp::v4();
    let mut packets = vec![tcp_packet(&tcp, &payload(1000, 0))];
    tcp.seq = tcp.seq.wrapping_add(1000);
    tcp.flags = 0x18;
    packets.push(tcp_packet(&tcp, &payload(1000, 1)));
    tcp.seq = tcp.seq.wrapping_add(1000);
    tcp.flags = 0x10;
    packets.push(tcp_packet(&tcp, &payload(1000, 2)));
    let out = coalesce(&packets, false);
    assert_eq!(out.len(), 2, "nothing joins after PSH");
    assert_eq!(out[0].0.gso_kind(), VIRTIO_NET_HDR_GSO_TCPV4);
    assert_eq!(out[0].1[33], 0x18, "merged packet carries PSH");
    assert_plain(&out[1..], &[&packets[2]]);
}

#[test]
fn unmergeable_flags_pass_through() {
    for flags in [0x02u8, 0x11, 0x14, 0x30, 0x90] {
        let mut tcp = Tcp::v4();
        tcp.flags = flags;
        let packets = segments(&tcp, 3, 500, 0);
        assert_none_merged(&packets);
    }
}

#[test]
fn interleaved_flows_become_two_super_packets_in_order() {
    let flow_a = segments(&Tcp::v4(), 4, 1200, 0);
    let mut b = Tcp::v4();
    b.src_port = 40001;
    let flow_b = segments(&b, 4, 1200, 0);
    let mut packets = Vec::new();
    for i in 0..4 {
        packets.push(flow_a[i].clone());
        packets.push(flow_b[i].clone());
    }
    let out = coalesce(&packets, false);
    assert_eq!(out.len(), 2);
    for ((_, merged), flow) in out.iter().zip([&flow_a, &flow_b]) {
        let expected: Vec<u8> = flow.iter().flat_map(|p| tcp_payload(p).to_vec()).collect();
        assert_eq!(be16(merged, 20), be16(&flow[0], 20), "source port");
        assert_eq!(tcp_payload(merged), &expected[..]);
    }
}

#[test]
fn never_merges_across_a_packet_of_the_same_flow() {
    let packets = segments(&Tcp::v4(), 3, 1000, 0);
    // A pure ACK of the same flow between the first and second segment.
    let mut ack = Tcp::v4();
    ack.seq = ack.seq.wrapping_add(1000);
    let pure_ack = tcp_packet(&ack, &[]);
    let list = vec![
        packets[0].clone(),
        pure_ack.clone(),
        packets[1].clone(),
        packets[2].clone(),
    ];
    let out = coalesce(&list, false);
    assert_eq!(out.len(), 3);
    assert_eq!(out[0].1, packets[0]);
    assert_eq!(out[1].1, pure_ack);
    assert_eq!(
        tcp_payload(&out[2].1),
        [tcp_payload(&packets[1]), tcp_payload(&packets[2])].concat()
    );

    // Out of order: 0, 2, 1 — 1 must not jump back into 0.
    let list = vec![packets[0].clone(), packets[2].clone(), packets[1].clone()];
    let out = coalesce(&list, false);
    assert_plain(&out, &list.iter().collect::<Vec<_>>());
}

#[test]
fn shorter_segment_ends_the_super_packet() {
    let mut packets = segments(&Tcp::v4(), 3, 1000, 400);
    let mut next = Tcp::v4();
    next.seq = next.seq.wrapping_add(2400);
    packets.push(tcp_packet(&next, &payload(1000, 9)));
    let out = coalesce(&packets, false);
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].1.len(), 40 + 2400);
    assert_eq!(out[0].0.gso_size, 1000);
    assert_plain(&out[1..], &[&packets[3]]);
}

#[test]
fn larger_segment_does_not_join() {
    let mut packets = segments(&Tcp::v4(), 1, 500, 0);
    let mut next = Tcp::v4();
    next.seq = next.seq.wrapping_add(500);
    packets.push(tcp_packet(&next, &payload(600, 1)));
    assert_none_merged(&packets);
}

#[test]
fn super_packet_is_capped_at_65535_bytes() {
    let packets = segments(&Tcp::v4(), 50, 1380, 0);
    let out = coalesce(&packets, false);
    let per_packet = (65535 - 40) / 1380;
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].1.len(), 40 + per_packet * 1380);
    assert!(out[0].1.len() <= MAX_COALESCED_LEN);
    assert_eq!(out[1].1.len(), 40 + (50 - per_packet) * 1380);
}

#[test]
fn bad_checksum_never_merges() {
    let mut packets = segments(&Tcp::v4(), 3, 800, 0);
    let last = packets[1].len() - 1;
    packets[1][last] ^= 0xff;
    assert_none_merged(&packets);

    let mut packets = segments(&Tcp::v6(), 3, 800, 0);
    packets[0][100] ^= 0x01; // head corrupted
    let out = coalesce(&packets, false);
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].1, packets[0]);
    assert_eq!(out[1].0.gso_kind(), VIRTIO_NET_HDR_GSO_TCPV6);
}

#[test]
fn ipv4_options_never_coalesce() {
    let packets: Vec<Vec<u8>> = segments(&Tcp::v4(), 3, 800, 0)
        .into_iter()
        .map(|p| {
            // Insert 4 bytes of NOP options into the IP header.
            let mut q = vec![0x46];
            q.extend_from_slice(&p[1..20]);
            q.extend_from_slice(&[1, 1, 1, 0]);
            q.extend_from_slice(&p[20..]);
            let total = q.len() as u16;
            q[2..4].copy_from_slice(&total.to_be_bytes());
            fill_checksums(&mut q, 24 + 16);
            q
        })
        .collect();
    assert_eq!(verify_packet(&packets[0]), Ok(()));
    assert_none_merged(&packets);
}

#[test]
fn padding_after_the_ip_length_is_dropped_when_merging() {
    let packets = segments(&Tcp::v4(), 3, 1000, 0);
    let padded: Vec<Vec<u8>> = packets
        .iter()
        .map(|p| [p.as_slice(), &[0, 0, 0, 0, 0, 0, 0, 0]].concat())
        .collect();
    let out = coalesce(&padded, false);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].1.len(), 40 + 3000);
}

#[test]
fn udp_coalesces_only_with_uso() {
    for is_v6 in [false, true] {
        let packets: Vec<Vec<u8>> = (0..4)
            .map(|i| udp_packet(is_v6, 6000, &payload(if i == 3 { 300 } else { 1200 }, i)))
            .collect();
        assert_none_merged(&packets);
        let out = coalesce(&packets, true);
        assert_eq!(out.len(), 1);
        let (vnet, merged) = &out[0];
        let ip_len = if is_v6 { 40 } else { 20 };
        assert_eq!(vnet.gso_kind(), VIRTIO_NET_HDR_GSO_UDP_L4);
        assert_eq!((vnet.gso_size, vnet.csum_offset), (1200, 6));
        assert_eq!(usize::from(be16(merged, ip_len + 4)), merged.len() - ip_len);
        let mut batch = SegmentBatch::new();
        assert_eq!(split(vnet, merged, &mut batch), Ok(4));
        for (segment, original) in batch.packets().zip(&packets) {
            assert_eq!(&segment[ip_len..], &original[ip_len..]);
        }
    }
}

#[test]
fn other_packets_pass_through_in_order() {
    let icmp = {
        let mut p = ip_header(false, 1, 8, 3, 64);
        p.extend_from_slice(&[8, 0, 0, 0, 0, 1, 0, 1]);
        p
    };
    let garbage = vec![0x00, 0x01, 0x02];
    let tcp = segments(&Tcp::v4(), 2, 600, 0);
    let list = vec![
        icmp.clone(),
        tcp[0].clone(),
        garbage.clone(),
        tcp[1].clone(),
        vec![],
    ];
    let out = coalesce(&list, true);
    assert_eq!(out.len(), 4);
    assert_eq!(out[0].1, icmp);
    assert_eq!(out[1].0.gso_kind(), VIRTIO_NET_HDR_GSO_TCPV4);
    assert_eq!(out[2].1, garbage);
    assert!(out[3].1.is_empty());
}

#[test]
fn coalescer_is_reusable() {
    let mut coalescer = Coalescer::new(false);
    for round in 0..3 {
        coalescer.clear();
        assert!(coalescer.is_empty());
        for packet in segments(&Tcp::v4(), 5 + round, 700, 0) {
            coalescer.push(&packet);
        }
        assert_eq!(coalescer.len(), 1);
        let out = outputs(&mut coalescer);
        assert_eq!(out[0].1.len(), 40 + (5 + round) * 700);
    }
}

// ---- properties ----------------------------------------------------------

fn arbitrary_header() -> impl Strategy<Value = VirtioNetHdr> {
    (
        prop_oneof![Just(0u8), Just(1), any::<u8>()],
        prop_oneof![
            Just(0u8),
            Just(1),
            Just(4),
            Just(5),
            Just(0x81),
            any::<u8>()
        ],
        any::<u16>(),
        prop_oneof![Just(0u16), 1u16..2000, any::<u16>()],
        prop_oneof![Just(20u16), Just(40), 0u16..100, any::<u16>()],
        prop_oneof![Just(6u16), Just(16), any::<u16>()],
    )
        .prop_map(
            |(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)| VirtioNetHdr {
                flags,
                gso_type,
                hdr_len,
                gso_size,
                csum_start,
                csum_offset,
            },
        )
}

/// A valid super-packet with random mutations at random places.
fn mutated_packet() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<bool>(),
        any::<bool>(),
        0usize..5000,
        proptest::collection::vec((any::<u16>(), any::<u8>()), 0..4),
        proptest::option::of(0usize..5100),
    )
        .prop_map(|(is_v6, udp, len, mutations, truncate)| {
            let mut packet = if udp {
                udp_packet(is_v6, 1, &payload(len, 0))
            } else {
                tcp_packet(
                    &(if is_v6 { Tcp::v6() } else { Tcp::v4() }),
                    &payload(len, 0),
                )
            };
            for (at, value) in mutations {
                let at = usize::from(at) % packet.len();
                packet[at] = value;
            }
            if let Some(len) = truncate {
                packet.truncate(len);
            }
            packet
        })
}

/// A few flows of mostly adjacent TCP segments, some out of order, some
/// with different flags, some corrupted.
fn packet_list() -> impl Strategy<Value = Vec<Vec<u8>>> {
    proptest::collection::vec(
        (
            0u16..3,
            any::<bool>(),
            0usize..4,
            prop_oneof![Just(0x10u8), Just(0x18), any::<u8>()],
            0u8..8,
        ),
        0..40,
    )
    .prop_map(|steps| {
        let mut next_seq = [0u32; 3];
        steps
            .into_iter()
            .map(|(flow, is_v6, size_class, flags, skip)| {
                let flow_index = usize::from(flow);
                let len = [0, 300, 1000, 1000][size_class];
                let mut tcp = if is_v6 { Tcp::v6() } else { Tcp::v4() };
                tcp.src_port = 1000 + flow;
                tcp.flags = flags;
                // skip 0: a gap; skip 1: a retransmission of older data.
                let jump = match skip {
                    0 => 1000,
                    1 => 1000u32.wrapping_neg(),
                    _ => 0,
                };
                tcp.seq = next_seq[flow_index].wrapping_add(jump);
                next_seq[flow_index] = tcp.seq.wrapping_add(len as u32);
                let mut packet = tcp_packet(&tcp, &payload(len, skip));
                if skip == 7 {
                    let last = packet.len() - 1;
                    packet[last] ^= 0x5a;
                }
                packet
            })
            .collect()
    })
}

/// What matters per packet after GRO + GSO: its flow, sequence number and
/// payload (IDs and flags other than PSH may be rewritten).
fn flow_view(packet: &[u8]) -> (Vec<u8>, u32, Vec<u8>) {
    let ihl = if packet[0] >> 4 == 4 { 20 } else { 40 };
    let mut flow = packet[..1].to_vec();
    flow.extend_from_slice(&packet[ihl..ihl + 4]);
    (flow, be32(packet, ihl + 4), tcp_payload(packet).to_vec())
}

proptest! {
    #[test]
    fn split_never_panics_on_arbitrary_input(
        hdr in arbitrary_header(),
        bytes in proptest::collection::vec(any::<u8>(), 0..3000),
    ) {
        let mut batch = SegmentBatch::new();
        let _ = split(&hdr, &bytes, &mut batch);
    }

    #[test]
    fn split_output_of_gso_is_always_valid(hdr in arbitrary_header(), packet in mutated_packet()) {
        let mut batch = SegmentBatch::new();
        if let Ok(count) = split(&hdr, &packet, &mut batch) {
            prop_assert_eq!(count, batch.len());
            if hdr.gso_kind() != VIRTIO_NET_HDR_GSO_NONE {
                let total: usize = batch.packets().map(|p| p.len() - usize::from(hdr.csum_start)).sum();
                prop_assert!(total >= packet.len() - usize::from(hdr.csum_start));
                for segment in batch.packets() {
                    prop_assert_eq!(verify_packet(segment), Ok(()));
                    prop_assert!(naive_transport_ok(segment));
                }
            }
        } else {
            prop_assert!(batch.is_empty());
        }
    }

    #[test]
    fn coalesce_never_panics_on_arbitrary_lists(
        packets in proptest::collection::vec(
            prop_oneof![mutated_packet(), proptest::collection::vec(any::<u8>(), 0..100)],
            0..20,
        ),
        udp_gso in any::<bool>(),
    ) {
        let mut coalescer = Coalescer::new(udp_gso);
        for packet in &packets {
            coalescer.push(packet);
        }
        let count = coalescer.finish().count();
        prop_assert!(count <= packets.len());
        for buf in coalescer.finish() {
            prop_assert!(VirtioNetHdr::decode(buf).is_ok());
        }
    }

    #[test]
    fn coalesce_keeps_every_flow_in_order(packets in packet_list()) {
        let out = coalesce(&packets, false);
        let mut batch = SegmentBatch::with_max_segments(MAX_COALESCED_SEGMENTS);
        let mut after = Vec::new();
        for (vnet, packet) in &out {
            if vnet.gso_kind() == VIRTIO_NET_HDR_GSO_NONE {
                prop_assert_eq!(*vnet, VirtioNetHdr::default());
                after.push(packet.clone());
            } else {
                prop_assert!(split(vnet, packet, &mut batch).is_ok());
                after.extend(collect(&batch));
            }
        }
        prop_assert_eq!(after.len(), packets.len());
        for flow in 0..3u16 {
            for version in [0x45u8, 0x60] {
                let of_flow = |list: &[Vec<u8>]| -> Vec<_> {
                    list.iter()
                        .filter(|p| p[0] == version && be16(p, if version == 0x45 { 20 } else { 40 }) == 1000 + flow)
                        .map(|p| flow_view(p))
                        .collect()
                };
                prop_assert_eq!(of_flow(&after), of_flow(&packets));
            }
        }
    }
}
