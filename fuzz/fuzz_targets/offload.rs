//! Splits input as if read from a TUN with offloads, then coalesces the
//! segments as if written back. The input is either raw (virtio-net header
//! then packet bytes) or a well-formed TCP/UDP super-packet built from a few
//! parameters and then mutated, so that the fuzzer reaches the deep paths
//! (many segments, merging) without a seed corpus.
//!
//! The library is built with `debug-checks`, so every produced packet is
//! parsed back and its checksums verified. Besides "no panic" the target
//! checks that GRO never loses or invents a packet: splitting the coalesced
//! output again yields as many packets as were pushed.
#![no_main]

use arbitrary::Arbitrary;
use ferroguard::offload::virtio::{
    VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6,
    VIRTIO_NET_HDR_GSO_UDP_L4, VIRTIO_NET_HDR_LEN,
};
use ferroguard::offload::{split, Coalescer, SegmentBatch, VirtioNetHdr, MAX_COALESCED_SEGMENTS};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
enum Input {
    /// A virtio-net header followed by the packet, as read from the TUN.
    Raw { uso: bool, bytes: Vec<u8> },
    /// A super-packet built from parameters, then mutated.
    Built(Template),
}

#[derive(Debug, Arbitrary)]
struct Template {
    uso: bool,
    is_v6: bool,
    udp: bool,
    gso_size: u16,
    payload_len: u16,
    tcp_flags: u8,
    /// TCP options length in 4-byte words (0..=10).
    option_words: u8,
    /// (position, new byte) applied to the packet after building it.
    mutations: Vec<(u16, u8)>,
}

impl Template {
    fn build(&self) -> (VirtioNetHdr, Vec<u8>) {
        let transport_header_len = if self.udp {
            8
        } else {
            20 + 4 * usize::from(self.option_words % 11)
        };
        let payload_len = usize::from(self.payload_len);
        let transport_len = transport_header_len + payload_len;
        let ip_header_len = if self.is_v6 { 40 } else { 20 };
        let protocol = if self.udp { 17 } else { 6 };
        let mut packet = if self.is_v6 {
            let mut ip = vec![0x60, 0, 0, 0];
            ip.extend_from_slice(&(transport_len as u16).to_be_bytes());
            ip.extend_from_slice(&[protocol, 64]);
            ip.extend((0..32).map(|i| i as u8));
            ip
        } else {
            let mut ip = vec![0x45, 0];
            ip.extend_from_slice(&((ip_header_len + transport_len) as u16).to_be_bytes());
            ip.extend_from_slice(&[0, 9, 0x40, 0, 64, protocol, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
            ip
        };
        packet.extend_from_slice(&[0x9c, 0x40, 0x01, 0xbb]);
        if self.udp {
            packet.extend_from_slice(&(transport_len as u16).to_be_bytes());
            packet.extend_from_slice(&[0, 0]);
        } else {
            packet.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 2]);
            packet.push(((transport_header_len / 4) as u8) << 4);
            packet.push(self.tcp_flags);
            packet.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]);
            packet.extend(std::iter::repeat_n(1u8, transport_header_len - 20));
        }
        packet.extend((0..payload_len).map(|i| (i * 7) as u8));
        for &(at, value) in &self.mutations {
            let at = usize::from(at) % packet.len();
            packet[at] = value;
        }
        let gso_type = match (self.udp, self.is_v6) {
            (true, _) => VIRTIO_NET_HDR_GSO_UDP_L4,
            (false, false) => VIRTIO_NET_HDR_GSO_TCPV4,
            (false, true) => VIRTIO_NET_HDR_GSO_TCPV6,
        };
        let hdr = VirtioNetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            gso_type,
            hdr_len: (ip_header_len + transport_header_len) as u16,
            gso_size: self.gso_size,
            csum_start: ip_header_len as u16,
            csum_offset: if self.udp { 6 } else { 16 },
        };
        (hdr, packet)
    }
}

fuzz_target!(|input: Input| {
    let (uso, hdr, packet) = match input {
        Input::Raw { uso, bytes } => match VirtioNetHdr::decode(&bytes) {
            Ok(hdr) => (uso, hdr, bytes[VIRTIO_NET_HDR_LEN..].to_vec()),
            Err(_) => return,
        },
        Input::Built(template) => {
            let (hdr, packet) = template.build();
            (template.uso, hdr, packet)
        }
    };
    let mut batch = SegmentBatch::new();
    let Ok(count) = split(&hdr, &packet, &mut batch) else {
        assert!(batch.is_empty());
        return;
    };
    assert_eq!(count, batch.len());

    let mut coalescer = Coalescer::new(uso);
    for segment in batch.packets() {
        coalescer.push(segment);
    }
    // Also feed the input packet itself: arbitrary bytes must be harmless.
    coalescer.push(&packet);
    let outputs: Vec<Vec<u8>> = coalescer.finish().map(<[u8]>::to_vec).collect();
    assert!(outputs.len() <= count + 1);

    let mut again = SegmentBatch::with_max_segments(MAX_COALESCED_SEGMENTS);
    let mut total = 0;
    for output in &outputs {
        let hdr = VirtioNetHdr::decode(output).expect("every output starts with a header");
        if hdr == VirtioNetHdr::default() {
            total += 1;
        } else {
            let written = &output[VIRTIO_NET_HDR_LEN..];
            total += split(&hdr, written, &mut again).expect("a merged packet splits again");
        }
    }
    assert_eq!(total, count + 1, "GRO lost or invented packets");
});
