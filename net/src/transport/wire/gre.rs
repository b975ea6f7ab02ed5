//! GRE with Transparent Ethernet Bridging (EtherType 0x6558), as UML's `transport=gre`.
//!
//! UML supports the key (K) and sequence number (S) fields only: checksum, routing and any
//! other flag combination are dropped on receive, which the 32-bit flags+protocol comparison
//! does in one step.

use super::reader::Reader;
use super::{encode_in_headroom, ipv4, WireError, IPPROTO_GRE};
use crate::config::GreConfig;

/// GRE flag: a key field follows the protocol type.
pub const GRE_KEY: u16 = 0x2000;
/// GRE flag: a sequence number field follows (after the key, if any).
pub const GRE_SEQ: u16 = 0x1000;
/// GRE protocol type of Ethernet frames (Transparent Ethernet Bridging).
pub const GRE_PROTO_TEB: u16 = 0x6558;

/// Encoder and checker of one tunnel's GRE headers.
///
/// Cheap to build and `Clone`: the transport keeps one per device. Encoding needs `&mut`
/// because the sequence number advances per packet.
#[derive(Clone, Debug)]
pub struct GreCodec {
    flags: u16,
    keys: Option<(u32, u32)>,
    sequence: bool,
    pin_sequence: bool,
    /// The last sequence number sent; the next packet carries this plus one (wrapping).
    last_sequence: u32,
    v6: bool,
}

impl GreCodec {
    /// A codec for the tunnel `config` describes. `pin_sequence` only matters with `sequence`.
    pub fn new(config: &GreConfig) -> Self {
        let mut flags = 0;
        if config.keys.is_some() {
            flags |= GRE_KEY;
        }
        if config.sequence {
            flags |= GRE_SEQ;
        }
        GreCodec {
            flags,
            keys: config.keys.map(|k| (k.rx, k.tx)),
            sequence: config.sequence,
            pin_sequence: config.pin_sequence,
            last_sequence: 0,
            v6: config.v6,
        }
    }

    /// Bytes of GRE header in front of every frame sent (and expected after any IP header on
    /// receive): 4, plus 4 for the key, plus 4 for the sequence number.
    pub fn header_len(&self) -> usize {
        4 + 4 * usize::from(self.keys.is_some()) + 4 * usize::from(self.sequence)
    }

    /// Whether this tunnel's raw socket delivers an IPv4 header in front of each datagram
    /// (IPv4 does, IPv6 does not): the value to pass to [`GreCodec::decode`].
    pub fn rx_ipv4_header(&self) -> bool {
        !self.v6
    }

    /// Writes the header of the next packet into the start of `out` and returns its length,
    /// [`GreCodec::header_len`]. The sequence number is 1 for the first packet and advances by
    /// one per call, wrapping after `u32::MAX` to 0; with `pin_sequence` it is always 0 (as in
    /// UML, for peers that would otherwise drop reordered packets).
    ///
    /// If `out` is shorter than the header nothing is written, the sequence does not advance,
    /// and 0 is returned.
    #[must_use]
    pub fn encode_header(&mut self, out: &mut [u8]) -> usize {
        let len = self.header_len();
        let Some(out) = out.get_mut(..len) else {
            return 0;
        };
        out[0..2].copy_from_slice(&self.flags.to_be_bytes());
        out[2..4].copy_from_slice(&GRE_PROTO_TEB.to_be_bytes());
        let mut at = 4;
        if let Some((_, tx)) = self.keys {
            out[at..at + 4].copy_from_slice(&tx.to_be_bytes());
            at += 4;
        }
        if self.sequence {
            let seq = if self.pin_sequence {
                0
            } else {
                self.last_sequence = self.last_sequence.wrapping_add(1);
                self.last_sequence
            };
            out[at..at + 4].copy_from_slice(&seq.to_be_bytes());
        }
        len
    }

    /// Writes the next header directly in front of the frame that starts at `frame_start` in
    /// `buf` (the transport's reserved headroom) and returns where the packet starts, or `None`
    /// if fewer than [`GreCodec::header_len`] bytes precede the frame.
    pub fn encode_before(&mut self, buf: &mut [u8], frame_start: usize) -> Option<usize> {
        let len = self.header_len();
        encode_in_headroom(buf, frame_start, len, |room| self.encode_header(room))
    }

    /// Checks a received datagram and returns the Ethernet frame inside it.
    ///
    /// With `ipv4_header_present` (IPv4 raw sockets) the IPv4 header is validated and skipped
    /// first. Then the flags and protocol type must be exactly those this tunnel sends, the key
    /// must be `rx_key` when keyed, and at least an Ethernet header must remain.
    ///
    /// The sequence number, if present, is skipped without a check: UML neither enforces nor
    /// tracks ordering (and peers with `pin_sequence` send 0 throughout), so dropping
    /// out-of-order packets here would only break interoperability; TCP inside the tunnel
    /// copes with reordering.
    pub fn decode<'a>(
        &self,
        packet: &'a [u8],
        ipv4_header_present: bool,
    ) -> Result<&'a [u8], WireError> {
        let gre = if ipv4_header_present {
            ipv4::strip(packet, IPPROTO_GRE)?
        } else {
            packet
        };
        let mut r = Reader::new(gre);
        let flags = r.u16("GRE flags")?;
        let protocol = r.u16("GRE protocol type")?;
        if flags != self.flags {
            return Err(WireError::WrongFlags {
                got: flags,
                expected: self.flags,
            });
        }
        if protocol != GRE_PROTO_TEB {
            return Err(WireError::WrongProtocol { got: protocol });
        }
        if let Some((rx, _)) = self.keys {
            let key = r.u32("GRE key")?;
            if key != rx {
                return Err(WireError::WrongKey {
                    got: key,
                    expected: rx,
                });
            }
        }
        if self.sequence {
            r.u32("GRE sequence number")?;
        }
        r.frame()
    }
}

#[cfg(test)]
mod tests;
