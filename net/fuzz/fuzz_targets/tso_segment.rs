//! Software TSO (`backend::segment`) on arbitrary guest frames: the frame the guest hands over
//! is hostile, so planning must refuse or succeed without panicking, and every segment of a
//! plan must be written inside its buffer, carry at most the MSS of payload, and together
//! carry the frame's payload in order.
//!
//! Input: byte 0 = the GSO type (TCPv4 or TCPv6, with or without ECN, by its low bits),
//! bytes 1..3 = gso_size (little-endian), the rest = the frame from its Ethernet header on.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmm_net::backend::segment::{plan, write_segment};

fuzz_target!(|data: &[u8]| {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    let Some((mss, frame)) = rest.split_first_chunk::<2>() else {
        return;
    };
    let gso = [1u8, 4, 0x81, 0x84, 3][usize::from(kind) % 5];
    let mss = u16::from_le_bytes(*mss);
    let Ok(p) = plan(frame, gso, mss, 64) else {
        return;
    };
    let headers = p.max_segment_len() - usize::from(mss);
    let mut payload = Vec::new();
    for i in 0..p.count {
        let mut out = vec![0u8; p.max_segment_len()];
        let n = write_segment(frame, &p, i, &mut out);
        assert!(n >= headers && n <= out.len());
        assert!(n - headers <= usize::from(mss));
        payload.extend_from_slice(&out[headers..n]);
    }
    assert_eq!(payload, frame[headers..]);
});
