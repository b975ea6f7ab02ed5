//! Completing the checksums a sender left partial, for transports that carry no checksum
//! state (`xdp`).
//!
//! A Linux stack that offloads checksums (every veth, and a tap or NIC with `tx-checksum-*`
//! on) sends TCP and UDP with `CHECKSUM_PARTIAL`: the checksum field holds only the
//! pseudo-header's sum, for the device to finish. An AF_PACKET socket with `PACKET_VNET_HDR`
//! says so in the frame's header (`NEEDS_CSUM`), which the backend passes to the guest; an
//! AF_XDP socket gets the bytes alone, and a guest would drop every such segment as corrupt
//! (a TCP handshake from the host never completes). So each received TCP or UDP frame whose
//! checksum field holds exactly its pseudo-header sum, and does not verify, is completed here.
//! The test costs a pseudo-header sum per frame; only the frames that match pay the full sum.

use super::vnet::ones_complement_sum;

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

/// Where a frame's transport header is, and what it needs for the pseudo-header.
struct L4 {
    /// Offset of the TCP or UDP header.
    start: usize,
    /// Its length with the payload, as the IP header says (Ethernet padding excluded).
    len: usize,
    /// Offset of the checksum field.
    field: usize,
    /// The pseudo-header's sum (addresses, protocol, length), folded.
    pseudo: u32,
    udp: bool,
}

/// Finds the TCP or UDP header of an unfragmented IPv4 or IPv6 frame (one 802.1Q tag at
/// most; IPv6 without extension headers), or `None`.
fn locate(frame: &[u8]) -> Option<L4> {
    let mut l3 = ETH_HLEN;
    let mut ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    if ethertype == ETH_P_8021Q {
        ethertype = u16::from_be_bytes([*frame.get(16)?, *frame.get(17)?]);
        l3 += 4;
    }
    let (start, len, proto, addrs) = match ethertype {
        ETH_P_IP => {
            let ip = frame.get(l3..l3 + 20)?;
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
            // More fragments, or an offset: not a whole datagram.
            let fragmented = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0;
            if ip[0] >> 4 != 4 || ihl < 20 || total < ihl || fragmented {
                return None;
            }
            (l3 + ihl, total - ihl, ip[9], l3 + 12..l3 + 20)
        }
        ETH_P_IPV6 => {
            let ip = frame.get(l3..l3 + 40)?;
            if ip[0] >> 4 != 6 {
                return None;
            }
            let payload = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
            (l3 + 40, payload, ip[6], l3 + 8..l3 + 40)
        }
        _ => return None,
    };
    let (field, min) = match proto {
        IPPROTO_TCP => (start + 16, 20),
        IPPROTO_UDP => (start + 6, 8),
        _ => return None,
    };
    if len < min || start + len > frame.len() {
        return None;
    }
    let pseudo = ones_complement_sum(&frame[addrs], u32::from(proto) + len as u32);
    Some(L4 {
        start,
        len,
        field,
        pseudo,
        udp: proto == IPPROTO_UDP,
    })
}

/// Completes the frame's TCP or UDP checksum if the sender left it partial (the field holds
/// the pseudo-header sum and the whole does not verify). Returns whether it did.
pub fn complete_partial(frame: &mut [u8]) -> bool {
    let Some(l4) = locate(frame) else {
        return false;
    };
    let field = u16::from_be_bytes([frame[l4.field], frame[l4.field + 1]]);
    if u32::from(field) != l4.pseudo {
        return false;
    }
    let segment = &frame[l4.start..l4.start + l4.len];
    if ones_complement_sum(segment, l4.pseudo) == 0xffff {
        // Whole already: its checksum happens to equal the pseudo-header sum.
        return false;
    }
    // The field holds the pseudo-header sum, so the segment's own sum is the whole.
    let mut csum = !(ones_complement_sum(segment, 0) as u16);
    if l4.udp && csum == 0 {
        // 0 means "no checksum" in UDP; the ones'-complement alternative is all ones.
        csum = 0xffff;
    }
    frame[l4.field..l4.field + 2].copy_from_slice(&csum.to_be_bytes());
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Ethernet + IPv4 (or IPv6) + `proto` frame with `payload`, its L4 checksum whole
    /// (`partial` false) or left as a sender offloading it leaves it, then `pad` bytes of
    /// Ethernet padding.
    fn frame(v6: bool, proto: u8, payload: &[u8], partial: bool, pad: usize) -> Vec<u8> {
        let l4_len = if proto == IPPROTO_TCP { 20 } else { 8 } + payload.len();
        let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2];
        let (addrs, l4) = if v6 {
            f.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
            f.extend_from_slice(&[0x60, 0, 0, 0]);
            f.extend_from_slice(&(l4_len as u16).to_be_bytes());
            f.extend_from_slice(&[proto, 64]);
            f.extend((0..32).map(|i| i as u8 + 1));
            (ETH_HLEN + 8..ETH_HLEN + 40, ETH_HLEN + 40)
        } else {
            f.extend_from_slice(&ETH_P_IP.to_be_bytes());
            f.extend_from_slice(&[0x45, 0]);
            f.extend_from_slice(&((20 + l4_len) as u16).to_be_bytes());
            f.extend_from_slice(&[0, 1, 0x40, 0, 64, proto, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
            (ETH_HLEN + 12..ETH_HLEN + 20, ETH_HLEN + 20)
        };
        let mut hdr = vec![0u8; l4_len - payload.len()];
        hdr[..4].copy_from_slice(&[0x30, 0x39, 0x00, 0x50]);
        if proto == IPPROTO_UDP {
            hdr[4..6].copy_from_slice(&(l4_len as u16).to_be_bytes());
        } else {
            hdr[12] = 0x50;
        }
        f.extend_from_slice(&hdr);
        f.extend_from_slice(payload);
        let field = l4 + if proto == IPPROTO_TCP { 16 } else { 6 };
        let pseudo = ones_complement_sum(&f[addrs], u32::from(proto) + l4_len as u32);
        let whole = !(ones_complement_sum(&f[l4..], pseudo) as u16);
        let value = if partial { pseudo as u16 } else { whole };
        f[field..field + 2].copy_from_slice(&value.to_be_bytes());
        f.extend(std::iter::repeat_n(0xee, pad));
        f
    }

    #[test]
    fn partial_checksums_are_completed_to_what_the_sender_would_have_sent() {
        for v6 in [false, true] {
            for proto in [IPPROTO_TCP, IPPROTO_UDP] {
                for len in [0, 1, 6, 1000, 1001] {
                    let payload: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
                    let pad = if len < 10 { 4 } else { 0 };
                    let whole = frame(v6, proto, &payload, false, pad);
                    let mut partial = frame(v6, proto, &payload, true, pad);
                    assert_ne!(whole, partial);
                    assert!(
                        complete_partial(&mut partial),
                        "v6 {v6} proto {proto} len {len}"
                    );
                    assert_eq!(partial, whole, "v6 {v6} proto {proto} len {len}");
                    // A whole checksum is left alone.
                    let mut again = whole.clone();
                    assert!(!complete_partial(&mut again));
                    assert_eq!(again, whole);
                }
            }
        }
    }

    #[test]
    fn other_frames_are_left_alone() {
        let payload = [1u8; 40];
        // A corrupted checksum that is not the pseudo-header sum: the guest drops it.
        let mut f = frame(false, IPPROTO_TCP, &payload, false, 0);
        f[ETH_HLEN + 20 + 16] ^= 0x55;
        let before = f.clone();
        assert!(!complete_partial(&mut f));
        assert_eq!(f, before);
        // A fragment: its checksum covers the whole datagram.
        let mut f = frame(false, IPPROTO_UDP, &payload, true, 0);
        f[ETH_HLEN + 6] = 0x20; // more fragments
        assert!(!complete_partial(&mut f));
        // Truncated, lying lengths, not IP: nothing read out of bounds, nothing changed.
        let whole = frame(true, IPPROTO_TCP, &payload, true, 0);
        for cut in 0..whole.len() {
            let mut f = whole[..cut].to_vec();
            assert!(!complete_partial(&mut f), "cut at {cut}");
        }
        let mut f = frame(false, IPPROTO_TCP, &payload, true, 0);
        f[ETH_HLEN + 2..ETH_HLEN + 4].copy_from_slice(&9000u16.to_be_bytes());
        assert!(!complete_partial(&mut f));
        let mut arp = vec![0u8; 60];
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert!(!complete_partial(&mut arp));
    }

    #[test]
    fn a_vlan_tag_is_looked_through() {
        let payload = [9u8; 100];
        let tag = |mut f: Vec<u8>| {
            f.splice(12..12, [0x81, 0x00, 0x00, 0x05]);
            f
        };
        let whole = tag(frame(false, IPPROTO_UDP, &payload, false, 0));
        let mut partial = tag(frame(false, IPPROTO_UDP, &payload, true, 0));
        assert!(complete_partial(&mut partial));
        assert_eq!(partial, whole);
    }
}
