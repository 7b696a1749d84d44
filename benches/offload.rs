//! TUN offload costs: splitting a 64 KiB TCP super-packet into 1380-byte
//! segments, coalescing 44 segments back, and the checksum itself.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ferroguard::offload::virtio::{
    VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_LEN,
};
use ferroguard::offload::{split, Coalescer, SegmentBatch, VirtioNetHdr};
use ferroguard_proto::packet::checksum;

const MSS: usize = 1380;
const HEADERS: usize = 40;

/// An IPv4/TCP packet with `payload_len` bytes of payload and valid
/// checksums.
fn tcp_packet(payload_len: usize) -> Vec<u8> {
    let total = HEADERS + payload_len;
    let mut packet = vec![0x45, 0];
    packet.extend_from_slice(&(total as u16).to_be_bytes());
    packet.extend_from_slice(&[0x12, 0x34, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
    packet.extend_from_slice(&[0x9c, 0x40, 0x01, 0xbb, 0, 0, 0x10, 0, 0, 0, 0, 1]);
    packet.extend_from_slice(&[0x50, 0x10, 0xff, 0xff, 0, 0, 0, 0]);
    packet.extend((0..payload_len).map(|i| (i * 7) as u8));
    let header_checksum = !checksum::sum(&packet[..20]);
    packet[10..12].copy_from_slice(&header_checksum.to_be_bytes());
    let pseudo = checksum::pseudo_header_v4(&[10, 0, 0, 1], &[10, 0, 0, 2], 6, (total - 20) as u16);
    let tcp_checksum = !checksum::sum_with(&packet[20..], pseudo);
    packet[36..38].copy_from_slice(&tcp_checksum.to_be_bytes());
    packet
}

fn gso_header() -> VirtioNetHdr {
    VirtioNetHdr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
        gso_type: VIRTIO_NET_HDR_GSO_TCPV4,
        hdr_len: HEADERS as u16,
        gso_size: MSS as u16,
        csum_start: 20,
        csum_offset: 16,
    }
}

fn bench_split(c: &mut Criterion) {
    let super_packet = tcp_packet(65535 - HEADERS);
    let hdr = gso_header();
    let mut batch = SegmentBatch::new();
    let mut group = c.benchmark_group("offload_split");
    group.throughput(Throughput::Bytes(super_packet.len() as u64));
    group.bench_function("tcp4_64KiB_mss1380", |b| {
        b.iter(|| split(&hdr, black_box(&super_packet), &mut batch).unwrap())
    });
    group.finish();
}

fn bench_coalesce(c: &mut Criterion) {
    let super_packet = tcp_packet(44 * MSS);
    let mut batch = SegmentBatch::new();
    assert_eq!(split(&gso_header(), &super_packet, &mut batch), Ok(44));
    let segments: Vec<Vec<u8>> = batch.packets().map(<[u8]>::to_vec).collect();
    let mut coalescer = Coalescer::new(false);
    let mut group = c.benchmark_group("offload_coalesce");
    group.throughput(Throughput::Bytes(
        segments.iter().map(Vec::len).sum::<usize>() as u64,
    ));
    group.bench_function("tcp4_44x1380", |b| {
        b.iter(|| {
            coalescer.clear();
            for segment in &segments {
                coalescer.push(black_box(segment));
            }
            let written: usize = coalescer.finish().map(<[u8]>::len).sum();
            assert_eq!(written, super_packet.len() + VIRTIO_NET_HDR_LEN);
        })
    });
    group.finish();
}

fn bench_checksum(c: &mut Criterion) {
    let mut group = c.benchmark_group("offload_checksum");
    for len in [1500usize, 65535] {
        let data: Vec<u8> = (0..len).map(|i| (i * 13) as u8).collect();
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_function(format!("sum_{len}"), |b| {
            b.iter(|| checksum::sum(black_box(&data)))
        });
    }
    group.finish();
}

criterion_group!(benches, bench_split, bench_coalesce, bench_checksum);
criterion_main!(benches);
