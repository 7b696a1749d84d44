//! TUN offloads (`IFF_VNET_HDR` + `TUNSETOFFLOAD`): pure packet surgery, no
//! I/O and no `unsafe`.
//!
//! * Read path: the kernel hands over a [`VirtioNetHdr`] and an IP packet
//!   that is either a GSO "super-packet" of up to 64 KiB (TCP or UDP) or a
//!   packet whose transport checksum is still partial. [`split`] turns it
//!   into complete, valid IP packets in a reusable [`SegmentBatch`], each at
//!   offset [`HEADROOM`] of its own buffer so that the WireGuard transport
//!   header can be written in front and the packet encrypted in place.
//! * Write path: [`Coalescer`] takes a batch of decrypted IP packets and
//!   merges sequence-adjacent TCP segments (and, if the kernel has USO, UDP
//!   datagrams) of one flow into GSO super-packets (GRO); every output
//!   buffer starts with the virtio-net header the TUN expects.
//!
//! With the `debug-checks` feature every produced packet is parsed back and
//! its checksums verified (a panic means a bug here, never bad input).
#![forbid(unsafe_code)]

mod coalesce;
mod packet;
mod split;
pub mod virtio;

pub use coalesce::{Coalescer, MAX_COALESCED_LEN, MAX_COALESCED_SEGMENTS};
pub use packet::verify_packet;
pub use split::{
    split, SegmentBatch, HEADROOM, MAX_SEGMENTS, MAX_SUPER_PACKET, MIN_SEGMENT_PAYLOAD, TAILROOM,
};
pub use virtio::{VirtioNetHdr, VIRTIO_NET_HDR_LEN};

use std::fmt;

/// Why a packet (or a virtio-net header) was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OffloadError {
    /// Fewer than [`VIRTIO_NET_HDR_LEN`] bytes.
    ShortVirtioHeader,
    /// The packet is empty.
    EmptyPacket,
    /// Not IPv4/IPv6, or the IP version does not match the GSO type.
    BadIpVersion,
    /// The IP header is truncated or one of its length fields is
    /// inconsistent with the buffer.
    BadIpHeader,
    /// An IPv4 fragment, which cannot be segmented.
    Fragmented,
    /// A `gso_type` this module does not handle (the value).
    UnsupportedGsoType(u8),
    /// The IP protocol / IPv6 next header does not match the GSO type (also
    /// IPv6 extension headers, which are not supported with GSO).
    ProtocolMismatch,
    /// `csum_start`/`csum_offset` do not point inside the packet at the
    /// transport checksum.
    BadChecksumPosition,
    /// The TCP/UDP header is truncated or its length field is invalid.
    BadTransportHeader,
    /// `gso_size` is zero.
    ZeroGsoSize,
    /// A GSO packet with no payload after its headers.
    EmptyPayload,
    /// Splitting would produce more segments than the batch allows.
    TooManySegments,
    /// A segment would not fit the 16-bit IP or UDP length fields.
    SegmentTooLarge,
    /// An IP header or transport checksum does not verify.
    BadChecksum,
}

impl fmt::Display for OffloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            Self::ShortVirtioHeader => "virtio-net header truncated",
            Self::EmptyPacket => "empty packet",
            Self::BadIpVersion => "IP version missing or inconsistent with the GSO type",
            Self::BadIpHeader => "IP header truncated or inconsistent",
            Self::Fragmented => "IPv4 fragment",
            Self::UnsupportedGsoType(kind) => return write!(f, "unsupported GSO type {kind}"),
            Self::ProtocolMismatch => "IP protocol does not match the GSO type",
            Self::BadChecksumPosition => "checksum start/offset outside the packet",
            Self::BadTransportHeader => "transport header truncated or inconsistent",
            Self::ZeroGsoSize => "GSO size is zero",
            Self::EmptyPayload => "GSO packet without payload",
            Self::TooManySegments => "too many segments",
            Self::SegmentTooLarge => "segment larger than the IP length fields allow",
            Self::BadChecksum => "checksum does not verify",
        };
        f.write_str(text)
    }
}

impl std::error::Error for OffloadError {}

#[cfg(test)]
mod tests;
