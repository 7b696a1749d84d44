//! Splits arbitrary input as if read from a TUN with offloads (the first 10
//! bytes are the virtio-net header), then coalesces the segments as if
//! written back. The library is built with `debug-checks`, so every produced
//! packet is parsed back and its checksums verified; besides "no panic" the
//! target checks that GRO never loses or invents a packet: splitting the
//! coalesced output again yields as many packets as were pushed.
#![no_main]

use ferroguard::offload::virtio::VIRTIO_NET_HDR_LEN;
use ferroguard::offload::{split, Coalescer, SegmentBatch, VirtioNetHdr, MAX_COALESCED_SEGMENTS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&uso, data)) = data.split_first() else {
        return;
    };
    let Ok(hdr) = VirtioNetHdr::decode(data) else {
        return;
    };
    let packet = &data[VIRTIO_NET_HDR_LEN..];
    let mut batch = SegmentBatch::new();
    let Ok(count) = split(&hdr, packet, &mut batch) else {
        assert!(batch.is_empty());
        return;
    };
    assert_eq!(count, batch.len());

    let mut coalescer = Coalescer::new(uso & 1 == 1);
    for segment in batch.packets() {
        coalescer.push(segment);
    }
    // Also feed the raw input: arbitrary bytes must be harmless too.
    coalescer.push(packet);
    let outputs: Vec<Vec<u8>> = coalescer.finish().map(<[u8]>::to_vec).collect();
    assert!(outputs.len() <= count + 1);

    let mut again = SegmentBatch::with_max_segments(MAX_COALESCED_SEGMENTS);
    let mut total = 0;
    for output in &outputs {
        let hdr = VirtioNetHdr::decode(output).expect("every output starts with a header");
        let written = &output[VIRTIO_NET_HDR_LEN..];
        if hdr == VirtioNetHdr::default() {
            total += 1;
        } else {
            total += split(&hdr, written, &mut again).expect("a merged packet splits again");
        }
    }
    assert_eq!(total, count + 1, "GRO lost or invented packets");
});
