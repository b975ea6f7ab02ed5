//! Software TSO: a GSO TCP frame from the guest cut into frames of at most `gso_size` bytes
//! of payload, for a transport that carries no virtio-net header (the tunnels, fd, the
//! switches, user networking), so that the guest may hand over 64 KiB at a time there too
//! and each of its frames pays the vhost-user hop once rather than once per 1500 bytes.
//!
//! Each segment gets the frame's Ethernet, IP and TCP headers with what the kernel's own
//! segmentation (`tcp_gso_segment`) changes: IPv4 total length, identification (+1 per
//! segment) and header checksum; IPv6 payload length; TCP sequence number; FIN and PSH on
//! the last segment only, CWR on the first only; and a full TCP checksum. The frame comes
//! from the guest: [`plan`] checks every offset it uses against the frame, and refuses
//! what it does not understand (IP options are kept; IPv6 extension headers, IPv4
//! fragments, a header length or MSS that does not fit are refused).

use thiserror::Error;

use crate::transport::vnet::{ones_complement_sum, GSO_ECN, GSO_TCPV4, GSO_TCPV6};
use crate::transport::wire::ETH_HLEN;

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETHERTYPE_VLAN: u16 = 0x8100;
const IPPROTO_TCP: u8 = 6;
const IPV6_HLEN: usize = 40;
const TCP_MIN_HLEN: usize = 20;
const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

/// Why a GSO frame cannot be segmented (it is dropped and counted).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SegmentError {
    #[error("GSO type {0:#x} is not TCP over IPv4 or IPv6")]
    GsoType(u8),
    #[error("the frame's network header does not match its GSO type")]
    NetworkHeader,
    #[error("the frame's TCP header does not fit it")]
    TcpHeader,
    #[error("gso_size 0")]
    NoMss,
    #[error("{0} segments, more than {1}")]
    TooManySegments(usize, usize),
}

/// Where the headers of a GSO frame are and how it is cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Offset of the IP header.
    l3: usize,
    /// Offset of the TCP header.
    l4: usize,
    /// Offset of the payload (the end of the headers every segment repeats).
    payload: usize,
    ipv4: bool,
    mss: usize,
    /// How many segments; at least one.
    pub count: usize,
}

impl Plan {
    /// The longest segment: the headers and one MSS of payload.
    pub fn max_segment_len(&self) -> usize {
        self.payload + self.mss
    }
}

/// Checks `frame` (Ethernet onwards) against the guest's GSO type and size and plans its
/// segments; at most `max_segments` of them.
pub fn plan(
    frame: &[u8],
    gso_type: u8,
    gso_size: u16,
    max_segments: usize,
) -> Result<Plan, SegmentError> {
    let ipv4 = match gso_type & !GSO_ECN {
        GSO_TCPV4 => true,
        GSO_TCPV6 => false,
        other => return Err(SegmentError::GsoType(other)),
    };
    let be16 = |at: usize| -> Option<u16> {
        frame
            .get(at..at + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
    };
    let mut l3 = ETH_HLEN;
    let mut ethertype = be16(12).ok_or(SegmentError::NetworkHeader)?;
    if ethertype == ETHERTYPE_VLAN {
        ethertype = be16(16).ok_or(SegmentError::NetworkHeader)?;
        l3 += 4;
    }
    let l4 = if ipv4 {
        let ip = frame.get(l3..l3 + 20).ok_or(SegmentError::NetworkHeader)?;
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        let fragment = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff;
        if ethertype != ETHERTYPE_IPV4
            || ip[0] >> 4 != 4
            || ihl < 20
            || fragment != 0
            || ip[9] != IPPROTO_TCP
        {
            return Err(SegmentError::NetworkHeader);
        }
        l3 + ihl
    } else {
        let ip = frame
            .get(l3..l3 + IPV6_HLEN)
            .ok_or(SegmentError::NetworkHeader)?;
        if ethertype != ETHERTYPE_IPV6 || ip[0] >> 4 != 6 || ip[6] != IPPROTO_TCP {
            return Err(SegmentError::NetworkHeader);
        }
        l3 + IPV6_HLEN
    };
    let doff = frame
        .get(l4 + 12)
        .map(|b| usize::from(b >> 4) * 4)
        .ok_or(SegmentError::TcpHeader)?;
    let payload = l4 + doff;
    if doff < TCP_MIN_HLEN || payload > frame.len() {
        return Err(SegmentError::TcpHeader);
    }
    let mss = usize::from(gso_size);
    if mss == 0 {
        return Err(SegmentError::NoMss);
    }
    let count = (frame.len() - payload).div_ceil(mss).max(1);
    if count > max_segments {
        return Err(SegmentError::TooManySegments(count, max_segments));
    }
    Ok(Plan {
        l3,
        l4,
        payload,
        ipv4,
        mss,
        count,
    })
}

/// Writes segment `i` of `frame` (planned by [`plan`]) into `out`, which must hold
/// [`Plan::max_segment_len`] bytes; returns its length.
pub fn write_segment(frame: &[u8], plan: &Plan, i: usize, out: &mut [u8]) -> usize {
    let p = plan;
    let start = p.payload + i * p.mss;
    let chunk = &frame[start.min(frame.len())..(start + p.mss).min(frame.len())];
    let len = p.payload + chunk.len();
    out[..p.payload].copy_from_slice(&frame[..p.payload]);
    out[p.payload..len].copy_from_slice(chunk);

    let ip = &mut out[p.l3..p.l4];
    if p.ipv4 {
        let total = (len - p.l3) as u16;
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        let id = u16::from_be_bytes([ip[4], ip[5]]).wrapping_add(i as u16);
        ip[4..6].copy_from_slice(&id.to_be_bytes());
        ip[10..12].fill(0);
        let sum = !(ones_complement_sum(ip, 0) as u16);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
    } else {
        let payload_len = (len - p.l4) as u16;
        ip[4..6].copy_from_slice(&payload_len.to_be_bytes());
    }

    let tcp = &mut out[p.l4..len];
    let seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]).wrapping_add((i * p.mss) as u32);
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    if i + 1 < p.count {
        tcp[13] &= !(TCP_FIN | TCP_PSH);
    }
    if i > 0 {
        tcp[13] &= !TCP_CWR;
    }
    tcp[16..18].fill(0);
    let tcp_len = tcp.len();
    let ip = &out[p.l3..p.l4];
    let pseudo = if p.ipv4 {
        ones_complement_sum(&ip[12..20], u32::from(IPPROTO_TCP) + tcp_len as u32)
    } else {
        ones_complement_sum(&ip[8..40], u32::from(IPPROTO_TCP) + tcp_len as u32)
    };
    let sum = !(ones_complement_sum(&out[p.l4..len], pseudo) as u16);
    out[p.l4 + 16..p.l4 + 18].copy_from_slice(&sum.to_be_bytes());
    len
}

#[cfg(test)]
pub(crate) mod tests;
