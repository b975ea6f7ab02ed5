//! Completing partial checksums (`transport::csum`, what `xdp` does to every frame it
//! receives from the wire) on arbitrary frames: no panic, no read past the frame, and when a
//! frame is completed only its two checksum bytes change and the result is whole (completing
//! it again changes nothing).
//!
//! Input: one frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmm_net::transport::csum::complete_partial;

fuzz_target!(|data: &[u8]| {
    let mut frame = data.to_vec();
    if !complete_partial(&mut frame) {
        assert_eq!(frame, data, "a frame left alone changed");
        return;
    }
    let changed: Vec<usize> = (0..frame.len()).filter(|&i| frame[i] != data[i]).collect();
    assert!(
        changed.len() <= 2 && changed.windows(2).all(|w| w[1] == w[0] + 1),
        "more than the checksum changed: {changed:?}"
    );
    let once = frame.clone();
    assert!(!complete_partial(&mut frame), "a completed checksum is still partial");
    assert_eq!(frame, once);
});
