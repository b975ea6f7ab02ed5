use super::*;
use crate::backend::segment::tests::{payload, segments, tcp4, tcp6, verify};
use crate::backend::segment::{plan, write_segment};
use crate::transport::vnet::{complete_checksum, GSO_TCPV4, GSO_TCPV6};

const MSS: u16 = 1448;

/// Coalesces `segs` the way the datapath does (first train only): the merged frame, its
/// virtio-net header, and how many segments it took.
fn merge(segs: &[Vec<u8>]) -> (Vec<u8>, VnetHdr, usize) {
    let first = parse(&segs[0]).expect("first segment parses");
    let mut last = first;
    let mut n = 1;
    while n < segs.len() {
        match parse(&segs[n]) {
            Some(s) if follows(&segs[0], &first, &last, &segs[n], &s) => {
                last = s;
                n += 1;
            }
            _ => break,
        }
    }
    let total: usize = segs[..n].iter().map(|f| f.len() - first.payload).sum();
    let mut out = vec![0u8; MAX_HEADERS];
    let (hlen, h) = train_header(&segs[0], &first, total, pushed(&last), &mut out);
    out.truncate(hlen);
    for f in &segs[..n] {
        out.extend_from_slice(super::payload(f, &parse(f).unwrap()));
    }
    (out, h, n)
}

/// What the guest's stack does with a merged frame before trusting it: complete the partial
/// checksum where the header says.
fn completed(frame: &[u8], h: &VnetHdr) -> Vec<u8> {
    let mut f = frame.to_vec();
    assert!(complete_checksum(&mut f, h.csum_start, h.csum_offset));
    f
}

#[test]
fn a_train_merges_and_segments_back_byte_exact_v4_and_v6() {
    for (big, gso) in [
        (tcp4(&payload(10 * 1448 + 300), 0x18), GSO_TCPV4),
        (tcp6(&payload(7 * 1448 + 1), 0x18), GSO_TCPV6),
    ] {
        let segs = segments(&big, gso, MSS);
        assert!(segs.iter().all(|s| parse(s).is_some()), "TSO output parses");
        let (merged, h, n) = merge(&segs);
        assert_eq!(n, segs.len(), "the whole train");
        assert_eq!((h.gso_type, h.gso_size), (gso, MSS));
        assert_eq!(h.flags, vnet::F_NEEDS_CSUM);
        assert_eq!(
            usize::from(h.hdr_len),
            if gso == GSO_TCPV4 { 54 } else { 74 }
        );
        assert_eq!(
            merged.len(),
            big.len(),
            "the train is the frame it was cut from"
        );
        // The guest's view: a valid checksum over the whole train once completed.
        let done = completed(&merged, &h);
        let l4 = usize::from(h.csum_start);
        let l3 = ETH_HLEN;
        let pseudo = pseudo_header(&done, l3, gso == GSO_TCPV4, done.len() - l4);
        assert_eq!(ones_complement_sum(&done[l4..], pseudo), 0xffff);
        if gso == GSO_TCPV4 {
            assert_eq!(verify(&[&done[l3..l4]]), 0xffff, "IPv4 header checksum");
        }
        // Segmenting it again (what the guest would do forwarding it) gives the segments.
        let p = plan(&done, h.gso_type, h.gso_size, 64).unwrap();
        assert_eq!(p.count, segs.len());
        for (i, s) in segs.iter().enumerate() {
            let mut out = vec![0u8; p.max_segment_len()];
            let len = write_segment(&done, &p, i, &mut out);
            assert_eq!(&out[..len], &s[..], "segment {i}");
        }
    }
}

#[test]
fn what_may_not_join_ends_the_train() {
    let big = tcp4(&payload(4 * 1448), 0x10);
    let segs = segments(&big, GSO_TCPV4, MSS);
    let with = |i: usize, edit: &dyn Fn(&mut Vec<u8>)| {
        let mut s = segs.clone();
        edit(&mut s[i]);
        merge(&s).2
    };
    assert_eq!(merge(&segs).2, 4);
    // A corrupted payload byte: its checksum fails, it does not parse, the train stops.
    assert_eq!(with(2, &|f| *f.last_mut().unwrap() ^= 1), 2);
    // Another port, another acknowledgement, another window, another TTL.
    assert_eq!(with(1, &|f| reseal(f, 34, 0x99)), 1);
    assert_eq!(with(1, &|f| reseal(f, 34 + 8, 0x99)), 1);
    assert_eq!(with(1, &|f| reseal(f, 34 + 14, 0x99)), 1);
    assert_eq!(with(3, &|f| reseal(f, 14 + 8, 1)), 3);
    // A gap in the sequence numbers.
    assert_eq!(
        with(2, &|f| {
            let v = f[34 + 7].wrapping_add(1);
            reseal(f, 34 + 7, v)
        }),
        2
    );
    // PSH ends a train after the segment that has it.
    assert_eq!(with(1, &|f| reseal(f, 34 + 13, 0x18)), 2);
    // SYN, FIN, RST, URG, ECE, CWR: not a candidate at all.
    for flag in [0x02, 0x01, 0x04, 0x20, 0x40, 0x80] {
        assert_eq!(
            with(2, &|f| reseal(f, 34 + 13, 0x10 | flag)),
            2,
            "{flag:#x}"
        );
    }
    // Segments longer than the first: they would not fit its gso_size.
    let half = segments(&big, GSO_TCPV4, MSS / 2);
    let mixed = [half[0].clone(), half[1].clone(), segs[1].clone()];
    assert_eq!(merge(&mixed).2, 2);
}

/// Sets byte `at` of a segment to `v` and makes its checksums valid again (so only the
/// change itself decides).
fn reseal(f: &mut [u8], at: usize, v: u8) {
    f[at] = v;
    let (l3, l4) = (14, 34);
    f[l3 + 10..l3 + 12].fill(0);
    let ip = !(ones_complement_sum(&f[l3..l4], 0) as u16);
    f[l3 + 10..l3 + 12].copy_from_slice(&ip.to_be_bytes());
    f[l4 + 16..l4 + 18].fill(0);
    let pseudo = pseudo_header(f, l3, true, f.len() - l4);
    let sum = !(ones_complement_sum(&f[l4..], pseudo) as u16);
    f[l4 + 16..l4 + 18].copy_from_slice(&sum.to_be_bytes());
}

#[test]
fn frames_that_are_not_plain_tcp_segments_go_up_unchanged() {
    let seg = segments(&tcp4(&payload(100), 0x10), GSO_TCPV4, MSS).remove(0);
    assert!(parse(&seg).is_some());
    // IPv4 options, a fragment, padding after the IP packet, no payload, UDP, a VLAN tag.
    let mut opts = seg.clone();
    opts[14] = 0x46;
    assert!(parse(&opts).is_none());
    let mut frag = seg.clone();
    reseal(&mut frag, 14 + 6, 0x20);
    assert!(parse(&frag).is_none());
    let mut padded = seg.clone();
    padded.push(0);
    assert!(parse(&padded).is_none());
    let empty = segments(&tcp4(&[], 0x10), GSO_TCPV4, MSS).remove(0);
    assert!(parse(&empty).is_none());
    let mut udp = seg.clone();
    udp[14 + 9] = 17;
    assert!(parse(&udp).is_none());
    let mut tagged = seg.clone();
    tagged[12..14].copy_from_slice(&0x8100u16.to_be_bytes());
    assert!(parse(&tagged).is_none());
}

#[test]
fn a_train_stays_within_64_kib() {
    let big = tcp4(&payload(60 * 1448), 0x10);
    // 60 segments of 1448 bytes would be 86,880 bytes of payload.
    let p = plan(&big, GSO_TCPV4, MSS, 64).unwrap();
    let segs: Vec<Vec<u8>> = (0..60)
        .map(|i| {
            let mut out = vec![0u8; p.max_segment_len()];
            let n = write_segment(&big, &p, i, &mut out);
            out.truncate(n);
            out
        })
        .collect();
    let (merged, _, n) = merge(&segs);
    assert_eq!(n, 45, "(65,535 - 40) / 1448 whole segments");
    assert!(merged.len() - ETH_HLEN <= 65_535);
}

#[test]
fn arbitrary_frames_never_panic() {
    let mut x: u32 = 0x9e37_79b9;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x
    };
    let segs = segments(&tcp4(&payload(3 * 1448), 0x10), GSO_TCPV4, MSS);
    for _ in 0..20_000 {
        let mut s = segs.clone();
        for _ in 0..(next() % 4) {
            let f = &mut s[next() as usize % 3];
            let at = next() as usize % f.len();
            f[at] = next() as u8;
        }
        let k = next() as usize % 3;
        let cut = next() as usize % (s[k].len() + 1);
        s[k].truncate(cut);
        if let Some(first) = parse(&s[0]) {
            let mut last = first;
            for f in &s[1..] {
                if let Some(n) = parse(f) {
                    if follows(&s[0], &first, &last, f, &n) {
                        last = n;
                    }
                }
            }
            let mut out = vec![0u8; MAX_HEADERS];
            let _ = train_header(&s[0], &first, last_end(&first, &last), false, &mut out);
        }
    }
}
