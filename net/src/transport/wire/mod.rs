//! Tunnel wire formats as UML's `gre` and `l2tpv3` transports speak them: pure encode/decode
//! code, no sockets.
//!
//! The transports' send paths reserve [`GreCodec::header_len`] / [`L2tpv3Codec::header_len`]
//! bytes of headroom in front of every frame and let the codec write the header there, so the
//! header and the frame go out in one buffer without a copy or an allocation. The receive paths
//! hand every datagram to `decode`, which returns the inner Ethernet frame as a sub-slice of the
//! datagram, or a [`WireError`] saying why the datagram is dropped (one variant per reason, so
//! drops can be counted by reason).
//!
//! All header fields are big-endian. The layouts, as UML's `vector_transports.c` builds and
//! checks them:
//!
//! ```text
//! GRE (IP protocol 47):     flags(2) 0x6558(2) [key(4)] [sequence(4)] frame
//! L2TPv3 over IP (115):     session(4) [cookie(4|8)] [counter(4)] frame
//! L2TPv3 over UDP:          0x00030000(4) session(4) [cookie(4|8)] [counter(4)] frame
//! ```
//!
//! An IPv4 raw socket delivers the IP header in front of the datagram; IPv6 raw sockets and
//! UDP sockets do not. UML assumes a 20-byte IPv4 header; we skip the real one (IHL × 4).

mod error;
pub mod gre;
mod ipv4;
pub mod l2tpv3;
mod reader;
#[cfg(test)]
mod test_util;

pub use error::WireError;
pub use gre::GreCodec;
pub use l2tpv3::L2tpv3Codec;

/// The smallest Ethernet frame `decode` hands on: destination, source and EtherType.
pub const ETH_HLEN: usize = 14;

/// IP protocol number of GRE.
pub const IPPROTO_GRE: u8 = 47;

/// IP protocol number of L2TPv3 over IP.
pub const IPPROTO_L2TP: u8 = 115;

/// Writes a header of `header_len` bytes directly in front of the frame that starts at
/// `frame_start` in `buf`, so that the packet is `buf[start..]` with no copy of the frame.
/// Returns `start`, or `None` (writing nothing) if the headroom is too small.
fn encode_in_headroom(
    buf: &mut [u8],
    frame_start: usize,
    header_len: usize,
    write: impl FnOnce(&mut [u8]) -> usize,
) -> Option<usize> {
    let start = frame_start.checked_sub(header_len)?;
    let room = buf.get_mut(start..frame_start)?;
    (write(room) == header_len).then_some(start)
}
