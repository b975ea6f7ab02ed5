//! The vhost-user relay's normaliser on arbitrary frontend messages: a sequence of
//! (request, flags, payload) taken from the input. It must never panic, never grow its held-back
//! state without bound, and never make a payload longer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmm_net::backend::interop::{Message, Normaliser};

fuzz_target!(|data: &[u8]| {
    let mut norm = Normaliser::default();
    let mut rest = data;
    while rest.len() >= 9 {
        let request = u32::from(rest[0] % 48);
        let flags = u32::from_le_bytes([rest[1], rest[2], rest[3], rest[4]]);
        let len = usize::from(rest[5]).min(rest.len() - 6);
        let payload = rest[6..6 + len].to_vec();
        rest = &rest[6 + len..];
        let before = payload.len();
        let mut msg = Message {
            request,
            flags,
            payload,
            fds: Vec::new(),
        };
        let _ = norm.frontend_message(&mut msg);
        assert!(msg.payload.len() <= before);
        assert!(norm.replay().len() <= 64);
    }
});
