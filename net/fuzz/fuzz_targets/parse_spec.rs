//! The device-specification parser on arbitrary input: it must return, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    if let Ok(spec) = vmm_net::config::parse_spec(&s) {
        // A parsed spec always has a device name of the accepted forms.
        assert!(spec.name.starts_with("vec") || spec.name.starts_with("eth"));
    }
});
