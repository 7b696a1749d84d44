//! The Internet checksum (RFC 1071): the ones-complement sum of 16-bit
//! big-endian words, complemented.
//!
//! Sums are returned "folded" (16 bits, not complemented) so that they can
//! be combined with [`add`]; the checksum to store in a header is
//! `!sum`. Combining the sums of two byte ranges is only valid if the second
//! range starts at an even offset of the checksummed data.
//!
//! [`sum`] reads 8 bytes at a time in native byte order and adds them into
//! `u64` accumulators with end-around carry. The ones-complement sum does not
//! depend on byte order except for a final byte swap (RFC 1071 §2(B)), which
//! `u16::from_be` performs on little-endian hosts.

/// Ones-complement sum of `data` (an odd trailing byte is padded with a zero
/// byte), folded to 16 bits, as a big-endian word value.
pub fn sum(data: &[u8]) -> u16 {
    u16::from_be(fold_native(sum_native(data)))
}

/// `add(initial, sum(data))`.
pub fn sum_with(data: &[u8], initial: u16) -> u16 {
    add(initial, sum(data))
}

/// Ones-complement addition of two folded sums.
pub fn add(a: u16, b: u16) -> u16 {
    let (total, carry) = a.overflowing_add(b);
    total + u16::from(carry)
}

/// Sum of the IPv4 pseudo-header (RFC 793/768): addresses, protocol and
/// transport length.
pub fn pseudo_header_v4(src: &[u8; 4], dst: &[u8; 4], protocol: u8, transport_len: u16) -> u16 {
    let words = [
        u16::from_be_bytes([src[0], src[1]]),
        u16::from_be_bytes([src[2], src[3]]),
        u16::from_be_bytes([dst[0], dst[1]]),
        u16::from_be_bytes([dst[2], dst[3]]),
        u16::from(protocol),
        transport_len,
    ];
    fold32(words.iter().map(|&word| u32::from(word)).sum())
}

/// Sum of the IPv6 pseudo-header (RFC 8200 §8.1): addresses, upper-layer
/// length and next header.
pub fn pseudo_header_v6(src: &[u8; 16], dst: &[u8; 16], protocol: u8, transport_len: u32) -> u16 {
    let address_words = src
        .chunks_exact(2)
        .chain(dst.chunks_exact(2))
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], pair[1]])));
    let mut total: u32 = address_words.sum();
    total += (transport_len >> 16) + (transport_len & 0xffff) + u32::from(protocol);
    fold32(total)
}

/// Folds a 32-bit accumulator of 16-bit words.
fn fold32(mut total: u32) -> u16 {
    while total > 0xffff {
        total = (total & 0xffff) + (total >> 16);
    }
    total as u16
}

/// Adds `value` to `acc` with end-around carry. Cannot overflow: with a
/// carry, the wrapped sum is at most `2^64 - 2`.
#[inline(always)]
fn add_with_carry(acc: u64, value: u64) -> u64 {
    let (total, carry) = acc.overflowing_add(value);
    total + u64::from(carry)
}

/// Reads up to 8 bytes as a native-endian `u64`, zero-padded at the end.
#[inline(always)]
fn load(bytes: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    let len = bytes.len().min(8);
    word[..len].copy_from_slice(&bytes[..len]);
    u64::from_ne_bytes(word)
}

/// Ones-complement sum of native-endian 16-bit words, unfolded. Four
/// independent accumulators over 32-byte blocks keep the carry chains short.
fn sum_native(data: &[u8]) -> u64 {
    let mut lanes = [0u64; 4];
    let mut blocks = data.chunks_exact(32);
    for block in &mut blocks {
        for (lane, word) in lanes.iter_mut().zip(block.chunks_exact(8)) {
            *lane = add_with_carry(*lane, load(word));
        }
    }
    let mut acc = lanes.iter().fold(0, |acc, &lane| add_with_carry(acc, lane));
    for word in blocks.remainder().chunks(8) {
        acc = add_with_carry(acc, load(word));
    }
    acc
}

/// Folds a 64-bit ones-complement accumulator to 16 bits.
fn fold_native(acc: u64) -> u16 {
    let mut total = (acc & 0xffff_ffff) + (acc >> 32);
    while total > 0xffff {
        total = (total & 0xffff) + (total >> 16);
    }
    total as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The textbook definition: big-endian byte pairs, a wide accumulator,
    /// folded at the end.
    fn naive_sum(data: &[u8]) -> u16 {
        let mut total: u64 = 0;
        for pair in data.chunks(2) {
            let high = u64::from(pair[0]) << 8;
            let low = pair.get(1).map_or(0, |&b| u64::from(b));
            total += high | low;
        }
        while total > 0xffff {
            total = (total & 0xffff) + (total >> 16);
        }
        total as u16
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3: the sum of 00 01 f2 03 f4 f5 f6 f7 is ddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(sum(&data), 0xddf2);
        assert_eq!(naive_sum(&data), 0xddf2);
    }

    #[test]
    fn ipv4_header_checksum_known_value() {
        // A classic example header; its stored checksum is 0xb861.
        let header = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(!sum(&header), 0xb861);
    }

    #[test]
    fn all_ones_and_carries() {
        for len in 0..200 {
            let data = vec![0xff; len];
            assert_eq!(sum(&data), naive_sum(&data), "len {len}");
        }
    }

    #[test]
    fn pseudo_headers_match_naive_layout() {
        let src4 = [10, 0, 0, 1];
        let dst4 = [192, 168, 200, 254];
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&src4);
        pseudo.extend_from_slice(&dst4);
        pseudo.extend_from_slice(&[0, 6, 0x05, 0xdc]);
        assert_eq!(pseudo_header_v4(&src4, &dst4, 6, 1500), naive_sum(&pseudo));

        let src6 = [0xfe; 16];
        let dst6: [u8; 16] = std::array::from_fn(|i| i as u8 * 17);
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&src6);
        pseudo.extend_from_slice(&dst6);
        pseudo.extend_from_slice(&[0, 1, 0x23, 0x45, 0, 0, 0, 17]);
        assert_eq!(
            pseudo_header_v6(&src6, &dst6, 17, 0x12345),
            naive_sum(&pseudo)
        );
    }

    proptest! {
        #[test]
        fn fast_sum_equals_naive(data in proptest::collection::vec(any::<u8>(), 0..3000)) {
            prop_assert_eq!(sum(&data), naive_sum(&data));
        }

        #[test]
        fn sums_of_even_splits_combine(
            data in proptest::collection::vec(any::<u8>(), 0..600),
            cut in 0usize..300,
        ) {
            let cut = (cut * 2).min(data.len() & !1);
            let (head, tail) = data.split_at(cut);
            prop_assert_eq!(add(sum(head), sum(tail)), naive_sum(&data));
            prop_assert_eq!(sum_with(tail, sum(head)), naive_sum(&data));
        }

        #[test]
        fn pseudo_v4_equals_naive(src in any::<[u8; 4]>(), dst in any::<[u8; 4]>(), proto in any::<u8>(), len in any::<u16>()) {
            let mut pseudo = src.to_vec();
            pseudo.extend_from_slice(&dst);
            pseudo.extend_from_slice(&[0, proto]);
            pseudo.extend_from_slice(&len.to_be_bytes());
            prop_assert_eq!(pseudo_header_v4(&src, &dst, proto, len), naive_sum(&pseudo));
        }

        #[test]
        fn pseudo_v6_equals_naive(src in any::<[u8; 16]>(), dst in any::<[u8; 16]>(), proto in any::<u8>(), len in any::<u32>()) {
            let mut pseudo = src.to_vec();
            pseudo.extend_from_slice(&dst);
            pseudo.extend_from_slice(&len.to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, proto]);
            prop_assert_eq!(pseudo_header_v6(&src, &dst, proto, len), naive_sum(&pseudo));
        }
    }
}
