use super::*;

/// The Internet checksum over `parts`, as a receiver verifies it: all ones when valid.
pub(crate) fn verify(parts: &[&[u8]]) -> u16 {
    let bytes: Vec<u8> = parts.concat();
    let mut sum: u64 = 0;
    for w in bytes.chunks(2) {
        let hi = u64::from(w[0]) << 8;
        sum += hi | w.get(1).map_or(0, |&b| u64::from(b));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

pub(crate) fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// Ethernet, IPv4 (id 0x1234, DF), TCP (seq 0xfffff000, flags `flags`), `data`.
pub(crate) fn tcp4(data: &[u8], flags: u8) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00];
    let total = (20 + 20 + data.len()) as u16;
    f.extend_from_slice(&[0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, 6, 0, 0]);
    f[16..18].copy_from_slice(&total.to_be_bytes());
    f.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
    f.extend_from_slice(&[0x30, 0x39, 0x00, 0x50, 0xff, 0xff, 0xf0, 0x00, 0, 0, 0, 1]);
    f.extend_from_slice(&[0x50, flags, 0x10, 0x00, 0, 0, 0, 0]);
    f.extend_from_slice(data);
    f
}

/// Ethernet, IPv6, TCP (seq 7, flags `flags`), `data`.
pub(crate) fn tcp6(data: &[u8], flags: u8) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x86, 0xdd];
    let plen = (20 + data.len()) as u16;
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&plen.to_be_bytes());
    f.extend_from_slice(&[6, 64]);
    f.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    f.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    f.extend_from_slice(&[0x30, 0x39, 0x00, 0x50, 0, 0, 0, 7, 0, 0, 0, 1]);
    f.extend_from_slice(&[0x50, flags, 0x10, 0x00, 0, 0, 0, 0]);
    f.extend_from_slice(data);
    f
}

pub(crate) fn segments(frame: &[u8], gso: u8, mss: u16) -> Vec<Vec<u8>> {
    let p = plan(frame, gso, mss, 64).expect("plan");
    (0..p.count)
        .map(|i| {
            let mut out = vec![0u8; p.max_segment_len()];
            let n = write_segment(frame, &p, i, &mut out);
            out.truncate(n);
            out
        })
        .collect()
}

/// IPv4: 5000 bytes at MSS 1448 are four segments whose payloads concatenate to the
/// original; lengths, identifications, sequence numbers (wrapping), flags and both checksums
/// are what a receiver checks.
#[test]
fn ipv4_segments_carry_the_payload_with_valid_headers() {
    let data = payload(5000);
    let psh_fin_ack = 0x08 | 0x01 | 0x10;
    let segs = segments(&tcp4(&data, psh_fin_ack), GSO_TCPV4, 1448);
    assert_eq!(segs.len(), 4);
    let mut joined = Vec::new();
    for (i, s) in segs.iter().enumerate() {
        let body = &s[54..];
        assert_eq!(body.len(), if i < 3 { 1448 } else { 5000 - 3 * 1448 });
        joined.extend_from_slice(body);
        let ip = &s[14..34];
        assert_eq!(verify(&[ip]), 0xffff, "segment {i}: IPv4 header checksum");
        assert_eq!(
            usize::from(u16::from_be_bytes([ip[2], ip[3]])),
            s.len() - 14
        );
        assert_eq!(u16::from_be_bytes([ip[4], ip[5]]), 0x1234 + i as u16);
        let tcp = &s[34..];
        let seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
        assert_eq!(seq, 0xffff_f000u32.wrapping_add(1448 * i as u32));
        let flags = tcp[13];
        assert_eq!(flags & 0x10, 0x10, "ACK everywhere");
        assert_eq!(
            flags & 0x09 != 0,
            i == 3,
            "segment {i}: PSH and FIN on the last only"
        );
        let pseudo = [&ip[12..20], &[0, 6], &(tcp.len() as u16).to_be_bytes()[..]].concat();
        assert_eq!(verify(&[&pseudo, tcp]), 0xffff, "segment {i}: TCP checksum");
    }
    assert_eq!(joined, data);
}

/// IPv6 (with ECN: CWR on the first segment only), and an exact multiple of the MSS.
#[test]
fn ipv6_segments_and_cwr_on_the_first_only() {
    let data = payload(3000);
    let segs = segments(&tcp6(&data, 0x80 | 0x10), GSO_TCPV6 | GSO_ECN, 1000);
    assert_eq!(segs.len(), 3);
    let mut joined = Vec::new();
    for (i, s) in segs.iter().enumerate() {
        let ip = &s[14..54];
        let tcp = &s[54..];
        assert_eq!(usize::from(u16::from_be_bytes([ip[4], ip[5]])), tcp.len());
        assert_eq!(tcp[13] & 0x80 != 0, i == 0, "segment {i}: CWR");
        let pseudo = [
            &ip[8..40],
            &[0, 0, 0, 6],
            &(tcp.len() as u32).to_be_bytes()[..],
        ]
        .concat();
        assert_eq!(verify(&[&pseudo, tcp]), 0xffff, "segment {i}: TCP checksum");
        joined.extend_from_slice(&tcp[20..]);
    }
    assert_eq!(joined, data);
}

/// A VLAN-tagged frame keeps its tag; a frame with no payload is one segment.
#[test]
fn vlan_tags_and_empty_payloads() {
    let mut f = tcp4(&payload(100), 0x10);
    f.splice(12..12, [0x81, 0x00, 0x00, 0x05]);
    let segs = segments(&f, GSO_TCPV4, 60);
    assert_eq!(segs.len(), 2);
    assert_eq!(&segs[1][12..16], &[0x81, 0x00, 0x00, 0x05]);
    assert_eq!(verify(&[&segs[1][18..38]]), 0xffff);
    assert_eq!(segments(&tcp4(&[], 0x10), GSO_TCPV4, 1448).len(), 1);
}

#[test]
fn what_cannot_be_segmented_is_refused() {
    let f4 = tcp4(&payload(3000), 0x10);
    let f6 = tcp6(&payload(3000), 0x10);
    assert_eq!(plan(&f4, 3, 1448, 64), Err(SegmentError::GsoType(3)));
    assert_eq!(
        plan(&f4, GSO_TCPV6, 1448, 64),
        Err(SegmentError::NetworkHeader)
    );
    assert_eq!(
        plan(&f6, GSO_TCPV4, 1448, 64),
        Err(SegmentError::NetworkHeader)
    );
    assert_eq!(plan(&f4, GSO_TCPV4, 0, 64), Err(SegmentError::NoMss));
    assert_eq!(
        plan(&f4, GSO_TCPV4, 10, 64),
        Err(SegmentError::TooManySegments(300, 64))
    );
    let mut frag = f4.clone();
    frag[20] |= 0x20; // more fragments
    assert_eq!(
        plan(&frag, GSO_TCPV4, 1448, 64),
        Err(SegmentError::NetworkHeader)
    );
    let mut udp = f4.clone();
    udp[23] = 17;
    assert_eq!(
        plan(&udp, GSO_TCPV4, 1448, 64),
        Err(SegmentError::NetworkHeader)
    );
    let mut ext = f6.clone();
    ext[20] = 0; // hop-by-hop options first
    assert_eq!(
        plan(&ext, GSO_TCPV6, 1448, 64),
        Err(SegmentError::NetworkHeader)
    );
    let mut doff = f4.clone();
    doff[46] = 0x40; // 16-byte TCP header
    assert_eq!(
        plan(&doff, GSO_TCPV4, 1448, 64),
        Err(SegmentError::TcpHeader)
    );
    doff[46] = 0xf0; // 60 bytes, past a truncated frame
    assert_eq!(
        plan(&doff[..80], GSO_TCPV4, 1448, 64),
        Err(SegmentError::TcpHeader)
    );
    for cut in 0..54 {
        assert!(
            plan(&f4[..cut], GSO_TCPV4, 1448, 64).is_err(),
            "cut at {cut}"
        );
    }
}

/// Arbitrary bytes: a plan, when there is one, always writes within its bounds.
#[test]
fn arbitrary_frames_never_write_out_of_bounds() {
    let mut x: u32 = 0x1234_5678;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x
    };
    let base = tcp4(&payload(600), 0x19);
    for _ in 0..20_000 {
        let mut f = base.clone();
        for _ in 0..(next() % 6) {
            let at = next() as usize % f.len();
            f[at] = next() as u8;
        }
        f.truncate(next() as usize % (f.len() + 1));
        let gso = [GSO_TCPV4, GSO_TCPV6, GSO_TCPV4 | GSO_ECN][next() as usize % 3];
        if let Ok(p) = plan(&f, gso, (next() % 700) as u16, 64) {
            for i in 0..p.count {
                let mut out = vec![0u8; p.max_segment_len()];
                assert!(write_segment(&f, &p, i, &mut out) <= out.len());
            }
        }
    }
}
