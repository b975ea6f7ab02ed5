//! `struct virtio_net_hdr` as tap and AF_PACKET carry it (10 bytes, little-endian, no
//! `num_buffers`), and the one piece of offload work done in software: completing a partial
//! checksum when the guest did not agree to receive one.

/// Bytes of the header the host side carries: `struct virtio_net_hdr`.
pub const HDR_LEN: usize = std::mem::size_of::<virtio_bindings::virtio_net::virtio_net_hdr>();

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the checksum at csum_start+csum_offset is partial.
pub const F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_F_DATA_VALID`.
pub const F_DATA_VALID: u8 = 2;

pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
pub const GSO_UDP: u8 = 3;
pub const GSO_TCPV6: u8 = 4;
pub const GSO_ECN: u8 = 0x80;

/// The fields of a header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHdr {
    /// Reads the first 10 bytes; `None` if there are fewer.
    pub fn parse(b: &[u8]) -> Option<VnetHdr> {
        let b: &[u8; HDR_LEN] = b.get(..HDR_LEN)?.try_into().ok()?;
        let u16le = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Some(VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16le(2),
            gso_size: u16le(4),
            csum_start: u16le(6),
            csum_offset: u16le(8),
        })
    }

    /// Writes the header into the first 10 bytes of `out` (which must hold them).
    pub fn write(&self, out: &mut [u8]) {
        if let Some(o) = out.get_mut(..HDR_LEN) {
            o[0] = self.flags;
            o[1] = self.gso_type;
            o[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
            o[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
            o[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
            o[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        }
    }

    /// Whether the packet is a GSO super-frame.
    pub fn is_gso(&self) -> bool {
        self.gso_type & !GSO_ECN != GSO_NONE
    }
}

/// The ones'-complement sum of `data` added to `sum`, folded to 16 bits, as the Internet
/// checksum needs (a folded sum can be fed back in as `sum`).
pub(crate) fn ones_complement_sum(data: &[u8], mut sum: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum
}

/// Completes a partial checksum in `frame`: the sum over `frame[csum_start..]` (which already
/// holds the pseudo-header sum in its checksum field, as the kernel leaves it) is stored at
/// `csum_start + csum_offset`. Returns false when the offsets do not fit the frame (a hostile
/// or broken header), leaving the frame untouched.
pub fn complete_checksum(frame: &mut [u8], csum_start: u16, csum_offset: u16) -> bool {
    let start = usize::from(csum_start);
    let at = start + usize::from(csum_offset);
    if at + 2 > frame.len() || start >= frame.len() {
        return false;
    }
    let sum = ones_complement_sum(&frame[start..], 0);
    let csum = !(sum as u16);
    frame[at..at + 2].copy_from_slice(&csum.to_be_bytes());
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let h = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: 54,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
        };
        let mut b = [0u8; 10];
        h.write(&mut b);
        assert_eq!(VnetHdr::parse(&b), Some(h));
        assert!(h.is_gso());
        assert_eq!(VnetHdr::parse(&b[..9]), None);
    }

    #[test]
    fn completed_checksum_verifies_with_the_pseudo_header() {
        // A transport-layer region at offset 10 whose checksum field (offset 6 in it) holds a
        // pseudo-header sum, as the kernel leaves it for a partial checksum.
        let seed = [0x00u8, 0x10];
        let mut frame = vec![0u8; 20];
        frame[10..].copy_from_slice(&[0x12, 0x34, 0, 8, 0xab, 0xcd, seed[0], seed[1], 0xde, 0xad]);
        assert!(complete_checksum(&mut frame, 10, 6));
        // A receiver sums the region (checksum included) plus the pseudo-header: all ones.
        let region = ones_complement_sum(&frame[10..], 0);
        assert_eq!(ones_complement_sum(&seed, region), 0xffff);
        // Offsets outside the frame are refused, the frame left alone.
        let before = frame.clone();
        assert!(!complete_checksum(&mut frame, 19, 4));
        assert!(!complete_checksum(&mut frame, 40, 0));
        assert_eq!(frame, before);
    }
}
