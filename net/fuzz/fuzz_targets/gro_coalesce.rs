//! Software GRO (`backend::coalesce`) on arbitrary received frames: parsing must refuse or
//! succeed without panicking, and a train it builds must be what TSO would cut back into the
//! same segments: completing the merged frame's partial checksum and segmenting it at its
//! gso_size (`backend::segment`) gives each segment's payload and sequence number back, and
//! every segment of the result carries a valid TCP checksum.
//!
//! Input: frames, each as a little-endian u16 length then that many bytes (a shorter tail
//! ends the input). The fuzzer starts from nothing; `fuzz-all.sh` seeds it with a train.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmm_net::backend::coalesce::{
    follows, parse, payload, pushed, train_header, MAX_HEADERS, MAX_TRAIN,
};
use vmm_net::backend::segment::{plan, write_segment};
use vmm_net::transport::vnet::complete_checksum;

fn frames(mut data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while let Some((len, rest)) = data.split_first_chunk::<2>() {
        let len = usize::from(u16::from_le_bytes(*len));
        let Some((f, rest)) = rest.split_at_checked(len) else {
            break;
        };
        out.push(f);
        data = rest;
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let fs = frames(data);
    let Some((&ff, rest)) = fs.split_first() else {
        return;
    };
    let Some(first) = parse(ff) else {
        return;
    };
    let mut train = vec![ff];
    let mut last = first;
    for &f in rest.iter().take(MAX_TRAIN - 1) {
        match parse(f) {
            Some(s) if follows(ff, &first, &last, f, &s) => {
                last = s;
                train.push(f);
            }
            _ => break,
        }
    }
    let total: usize = train.iter().map(|f| payload(f, &parse(f).unwrap()).len()).sum();
    let mut merged = vec![0u8; MAX_HEADERS];
    let (hlen, h) = train_header(ff, &first, total, pushed(&last), &mut merged);
    merged.truncate(hlen);
    for f in &train {
        merged.extend_from_slice(payload(f, &parse(f).unwrap()));
    }
    assert!(merged.len() - 14 <= 65_535, "a train stays within an IP packet");
    assert!(complete_checksum(&mut merged, h.csum_start, h.csum_offset));
    let p = plan(&merged, h.gso_type, h.gso_size, 64).expect("a train segments");
    assert_eq!(p.count, train.len());
    for (i, f) in train.iter().enumerate() {
        let mut out = vec![0u8; p.max_segment_len()];
        let n = write_segment(&merged, &p, i, &mut out);
        let seg = parse(&out[..n]).expect("a segment of a train parses (checksums valid)");
        let orig = parse(f).unwrap();
        assert_eq!(payload(&out[..n], &seg), payload(f, &orig));
        let l4 = usize::from(h.csum_start);
        assert_eq!(out[l4 + 4..l4 + 8], f[l4 + 4..l4 + 8], "sequence number");
    }
});
