//! `struct virtio_net_hdr` (Linux `include/uapi/linux/virtio_net.h`), the
//! 10-byte header that precedes every packet read from or written to a TUN
//! device opened with `IFF_VNET_HDR`.
//!
//! Byte order: the kernel's TUN driver uses the byte order of the virtio
//! "legacy" interface, which is the host's native order unless
//! `TUNSETVNETBE`/`TUNSETVNETLE` changes it. Every Linux target Ferroguard
//! supports (x86_64, aarch64, riscv64, armv7 little-endian) is little-endian,
//! so the fields are encoded and decoded as little-endian here. A big-endian
//! port would have to call `TUNSETVNETLE` on the device first.

use super::OffloadError;

/// Length in bytes of `struct virtio_net_hdr` (without `num_buffers`).
pub const VIRTIO_NET_HDR_LEN: usize = 10;

/// `flags`: the transport checksum is partial and must be completed: sum
/// everything from `csum_start` to the end and store the complement at
/// `csum_start + csum_offset`.
pub const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
/// `flags`: the checksum has already been validated.
pub const VIRTIO_NET_HDR_F_DATA_VALID: u8 = 2;

/// `gso_type`: not a GSO packet.
pub const VIRTIO_NET_HDR_GSO_NONE: u8 = 0;
/// `gso_type`: IPv4 TCP segmentation (TSO).
pub const VIRTIO_NET_HDR_GSO_TCPV4: u8 = 1;
/// `gso_type`: IPv4/IPv6 UDP fragmentation offload (UFO); never produced
/// for a TUN without `TUN_F_UFO` and not supported here.
pub const VIRTIO_NET_HDR_GSO_UDP: u8 = 3;
/// `gso_type`: IPv6 TCP segmentation (TSO).
pub const VIRTIO_NET_HDR_GSO_TCPV6: u8 = 4;
/// `gso_type`: UDP segmentation (USO, `TUN_F_USO4`/`TUN_F_USO6`, Linux ≥ 6.2).
pub const VIRTIO_NET_HDR_GSO_UDP_L4: u8 = 5;
/// `gso_type` bit: the TCP super-packet carries CWR (ECN); only the first
/// segment may keep it.
pub const VIRTIO_NET_HDR_GSO_ECN: u8 = 0x80;

/// A decoded `struct virtio_net_hdr`. All-zero (`Default`) means a plain
/// packet that needs nothing done to it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VirtioNetHdr {
    /// `VIRTIO_NET_HDR_F_*` bits.
    pub flags: u8,
    /// `VIRTIO_NET_HDR_GSO_*` value, possibly with [`VIRTIO_NET_HDR_GSO_ECN`].
    pub gso_type: u8,
    /// Length of the IP + transport headers as claimed by the sender (a hint
    /// only: the splitter recomputes it).
    pub hdr_len: u16,
    /// Payload bytes per segment (the MSS for TCP).
    pub gso_size: u16,
    /// Offset of the transport header, where checksumming starts.
    pub csum_start: u16,
    /// Offset of the checksum field from `csum_start` (16 for TCP, 6 for UDP).
    pub csum_offset: u16,
}

impl VirtioNetHdr {
    /// Decodes the first [`VIRTIO_NET_HDR_LEN`] bytes of `bytes`; the rest
    /// (normally the packet) is ignored.
    pub fn decode(bytes: &[u8]) -> Result<Self, OffloadError> {
        let header: &[u8; VIRTIO_NET_HDR_LEN] = bytes
            .get(..VIRTIO_NET_HDR_LEN)
            .and_then(|head| head.try_into().ok())
            .ok_or(OffloadError::ShortVirtioHeader)?;
        let field = |at: usize| u16::from_le_bytes([header[at], header[at + 1]]);
        Ok(Self {
            flags: header[0],
            gso_type: header[1],
            hdr_len: field(2),
            gso_size: field(4),
            csum_start: field(6),
            csum_offset: field(8),
        })
    }

    /// Writes the header in the kernel's layout.
    pub fn encode(&self, out: &mut [u8; VIRTIO_NET_HDR_LEN]) {
        out[0] = self.flags;
        out[1] = self.gso_type;
        out[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        out[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        out[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        out[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
    }

    /// The encoded header as an array.
    pub fn to_bytes(&self) -> [u8; VIRTIO_NET_HDR_LEN] {
        let mut out = [0; VIRTIO_NET_HDR_LEN];
        self.encode(&mut out);
        out
    }

    /// The GSO type without the ECN bit.
    pub fn gso_kind(&self) -> u8 {
        self.gso_type & !VIRTIO_NET_HDR_GSO_ECN
    }

    /// Whether [`VIRTIO_NET_HDR_F_NEEDS_CSUM`] is set.
    pub fn needs_csum(&self) -> bool {
        self.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_round_trip_and_layout() {
        let hdr = VirtioNetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            gso_type: VIRTIO_NET_HDR_GSO_TCPV4 | VIRTIO_NET_HDR_GSO_ECN,
            hdr_len: 0x0102,
            gso_size: 1380,
            csum_start: 20,
            csum_offset: 16,
        };
        let bytes = hdr.to_bytes();
        assert_eq!(bytes, [1, 0x81, 0x02, 0x01, 0x64, 0x05, 20, 0, 16, 0]);
        let mut with_packet = bytes.to_vec();
        with_packet.extend_from_slice(&[0x45, 0, 0, 20]);
        assert_eq!(VirtioNetHdr::decode(&with_packet), Ok(hdr));
        assert_eq!(hdr.gso_kind(), VIRTIO_NET_HDR_GSO_TCPV4);
        assert!(hdr.needs_csum());
    }

    #[test]
    fn short_header_is_an_error() {
        for len in 0..VIRTIO_NET_HDR_LEN {
            assert_eq!(
                VirtioNetHdr::decode(&vec![0; len]),
                Err(OffloadError::ShortVirtioHeader)
            );
        }
        assert_eq!(VirtioNetHdr::decode(&[0; 10]), Ok(VirtioNetHdr::default()));
    }
}
