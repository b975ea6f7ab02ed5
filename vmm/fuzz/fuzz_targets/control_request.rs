//! A control-socket client's bytes (`vmm --api`): each line, whatever it holds, parses into a
//! request or an error message; nothing may panic, and an error names what was wrong in one
//! line.
//!
//!     cargo +nightly fuzz run control_request        (from vmm/)
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for line in data.split(|&b| b == b'\n') {
        if line.len() > vmm_vmm::control::MAX_LINE {
            continue;
        }
        if let Err(e) = vmm_vmm::control::check_request(line) {
            assert!(!e.contains('\n'), "a multi-line error: {e:?}");
        }
    }
});
