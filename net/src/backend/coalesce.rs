//! Software GRO: consecutive TCP segments of one flow, received on a transport without a
//! virtio-net header (the tunnels, fd, the switches, user networking), handed to a guest
//! that takes GSO frames (GUEST_TSO4/6 with GUEST_CSUM) as one frame of up to 64 KiB, so the
//! guest's stack runs once per train rather than once per 1500 bytes. The counterpart of
//! [`super::segment`] on transmit.
//!
//! A segment joins a train as Linux's own GRO (`tcp_gro_receive`) would let it: the same
//! Ethernet header, the same IP header but for length, identification and checksum (IPv4
//! without options or fragments, IPv6 without extension headers), the same ports,
//! acknowledgement, window and TCP options (timestamps included), only ACK set (PSH allowed
//! on the last), a sequence number that continues the train, a payload no longer than the
//! first's (a shorter one ends the train), and a TCP checksum that verifies: the merged frame
//! goes up with a partial checksum, which the guest trusts, so a corrupted segment must not
//! be merged (it goes up alone, and the guest drops it). Everything else goes up unchanged.
//! The frames come from the network: every offset is checked against the frame.

use crate::transport::vnet::{self, ones_complement_sum, VnetHdr};
use crate::transport::wire::ETH_HLEN;

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const IPPROTO_TCP: u8 = 6;
const IPV4_HLEN: usize = 20;
const IPV6_HLEN: usize = 40;
const TCP_MIN_HLEN: usize = 20;
const TCP_ACK: u8 = 0x10;
const TCP_PSH: u8 = 0x08;

/// The longest IP packet a train may become.
const MAX_IP_LEN: usize = 65_535;

/// Most segments in one train (a 64 KiB frame of 1448-byte segments is 45).
pub const MAX_TRAIN: usize = 64;

/// A received frame that may take part in a train.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Offsets of the IP header, the TCP header and the payload.
    l3: usize,
    l4: usize,
    payload: usize,
    ipv4: bool,
    seq: u32,
    flags: u8,
    /// Bytes of TCP payload.
    pub len: usize,
}

impl Segment {
    /// The sequence number a segment continuing this one carries.
    fn next_seq(&self) -> u32 {
        self.seq.wrapping_add(self.len as u32)
    }
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    b.get(at..at + 2).map(|s| u16::from_be_bytes([s[0], s[1]]))
}

/// `frame` as a segment that may join or start a train: untagged Ethernet, IPv4 without
/// options or fragments (or IPv6 without extension headers), TCP with ACK and at most PSH
/// besides, a payload, IP lengths that account for the frame exactly, and a TCP checksum
/// that verifies. `None` for anything else: it goes up as it came.
pub fn parse(frame: &[u8]) -> Option<Segment> {
    let ethertype = be16(frame, 12)?;
    let l3 = ETH_HLEN;
    let (ipv4, l4) = match ethertype {
        ETHERTYPE_IPV4 => {
            let ip = frame.get(l3..l3 + IPV4_HLEN)?;
            let total = usize::from(be16(ip, 2)?);
            let fragment = be16(ip, 6)? & 0x3fff;
            if ip[0] != 0x45 || fragment != 0 || ip[9] != IPPROTO_TCP || l3 + total != frame.len() {
                return None;
            }
            (true, l3 + IPV4_HLEN)
        }
        ETHERTYPE_IPV6 => {
            let ip = frame.get(l3..l3 + IPV6_HLEN)?;
            let payload_len = usize::from(be16(ip, 4)?);
            if ip[0] >> 4 != 6
                || ip[6] != IPPROTO_TCP
                || l3 + IPV6_HLEN + payload_len != frame.len()
            {
                return None;
            }
            (false, l3 + IPV6_HLEN)
        }
        _ => return None,
    };
    let tcp = frame.get(l4..l4 + TCP_MIN_HLEN)?;
    let doff = usize::from(tcp[12] >> 4) * 4;
    let payload = l4 + doff;
    let flags = tcp[13];
    if doff < TCP_MIN_HLEN || payload >= frame.len() || flags & !TCP_PSH != TCP_ACK {
        return None;
    }
    if !checksum_ok(frame, l3, l4, ipv4) {
        return None;
    }
    Some(Segment {
        l3,
        l4,
        payload,
        ipv4,
        seq: u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
        flags,
        len: frame.len() - payload,
    })
}

/// The ones'-complement sum of the TCP pseudo-header for a TCP segment of `tcp_len` bytes.
fn pseudo_header(frame: &[u8], l3: usize, ipv4: bool, tcp_len: usize) -> u32 {
    let addrs = if ipv4 {
        &frame[l3 + 12..l3 + 20]
    } else {
        &frame[l3 + 8..l3 + 40]
    };
    // A TCP length over 16 bits (IPv6 jumbograms) cannot occur: the train stays within 64 KiB.
    ones_complement_sum(addrs, u32::from(IPPROTO_TCP) + tcp_len as u32)
}

/// Whether the TCP checksum of the segment at `l4` (to the frame's end) verifies.
fn checksum_ok(frame: &[u8], l3: usize, l4: usize, ipv4: bool) -> bool {
    let tcp = &frame[l4..];
    let sum = ones_complement_sum(tcp, pseudo_header(frame, l3, ipv4, tcp.len()));
    sum == 0xffff
}

/// Whether `next` (frame `nf`) continues the train that `first` (frame `ff`) started and
/// whose last segment is `last`.
pub fn follows(ff: &[u8], first: &Segment, last: &Segment, nf: &[u8], next: &Segment) -> bool {
    if next.ipv4 != first.ipv4
        || next.payload != first.payload
        || last.flags & TCP_PSH != 0
        || last.len != first.len
        || next.len > first.len
        || next.seq != last.next_seq()
        || first.payload + (last_end(first, last) + next.len) > MAX_IP_LEN + first.l3
    {
        return false;
    }
    // The same Ethernet header; IP header but for length, identification, checksum; TCP
    // header but for sequence number, flags and checksum (options included).
    let same = |a: usize, b: usize| ff.get(a..b) == nf.get(a..b);
    let (l3, l4, end) = (first.l3, first.l4, first.payload);
    let ip_same = if first.ipv4 {
        same(l3, l3 + 2) && same(l3 + 6, l3 + 10) && same(l3 + 12, l4)
    } else {
        same(l3, l3 + 4) && same(l3 + 6, l4)
    };
    same(0, l3)
        && ip_same
        && same(l4, l4 + 4)
        && same(l4 + 8, l4 + 13)
        && same(l4 + 14, l4 + 16)
        && same(l4 + 18, end)
}

/// Payload bytes of a train from `first` to `last` (contiguous sequence numbers).
fn last_end(first: &Segment, last: &Segment) -> usize {
    last.next_seq().wrapping_sub(first.seq) as usize
}

/// The headers of a train that starts with `first` (in frame `ff`) and carries `payload`
/// bytes in segments of `first.len`, written into `out` (which must hold `first`'s headers):
/// the IP length and (IPv4) checksum for the whole train, PSH when `psh`, and in the TCP
/// checksum field the pseudo-header sum, to be completed by the guest. Returns the headers'
/// length and the virtio-net header that goes with them.
pub fn train_header(
    ff: &[u8],
    first: &Segment,
    payload: usize,
    psh: bool,
    out: &mut [u8],
) -> (usize, VnetHdr) {
    let (l3, l4, hlen) = (first.l3, first.l4, first.payload);
    out[..hlen].copy_from_slice(&ff[..hlen]);
    let tcp_len = hlen - l4 + payload;
    if first.ipv4 {
        let total = (hlen - l3 + payload) as u16;
        out[l3 + 2..l3 + 4].copy_from_slice(&total.to_be_bytes());
        out[l3 + 10..l3 + 12].fill(0);
        let sum = !(ones_complement_sum(&out[l3..l4], 0) as u16);
        out[l3 + 10..l3 + 12].copy_from_slice(&sum.to_be_bytes());
    } else {
        out[l3 + 4..l3 + 6].copy_from_slice(&(tcp_len as u16).to_be_bytes());
    }
    if psh {
        out[l4 + 13] |= TCP_PSH;
    }
    let partial = pseudo_header(out, l3, first.ipv4, tcp_len) as u16;
    out[l4 + 16..l4 + 18].copy_from_slice(&partial.to_be_bytes());
    let h = VnetHdr {
        flags: vnet::F_NEEDS_CSUM,
        gso_type: if first.ipv4 {
            vnet::GSO_TCPV4
        } else {
            vnet::GSO_TCPV6
        },
        hdr_len: hlen as u16,
        gso_size: first.len as u16,
        csum_start: l4 as u16,
        csum_offset: 16,
    };
    (hlen, h)
}

/// The payload of `frame` as parsed into `s`.
pub fn payload<'a>(frame: &'a [u8], s: &Segment) -> &'a [u8] {
    &frame[s.payload..]
}

/// Whether a segment is PSH'd (a train ending with it keeps PSH).
pub fn pushed(s: &Segment) -> bool {
    s.flags & TCP_PSH != 0
}

/// Whether the segment is TCP over IPv4 (else IPv6).
pub fn is_ipv4(s: &Segment) -> bool {
    s.ipv4
}

/// The longest headers a segment has: Ethernet, IPv6, TCP with the most options.
pub const MAX_HEADERS: usize = ETH_HLEN + IPV6_HLEN + 60;

#[cfg(test)]
mod tests;
