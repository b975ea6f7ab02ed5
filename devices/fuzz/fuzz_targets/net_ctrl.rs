//! A guest's virtio-net control queue, which the VMM serves itself for a vhost-user NIC with
//! several queue pairs: the input is the guest's memory (descriptor table, rings, commands,
//! ack bytes) and the queue's size. Nothing may panic, and the backend is only ever asked to
//! run between 1 and the device's pairs.
//!
//!     cargo +nightly fuzz run net_ctrl        (from devices/)
#![no_main]

use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_devices::vhost_user::net_ctrl;

/// Guest memory: 64 KiB, rings and commands anywhere in it.
const MEM: usize = 64 * 1024;
const PAIRS: u16 = 4;

fuzz_target!(|data: &[u8]| {
    if data.len() < 7 {
        return;
    }
    // The first bytes choose the queue: its size and where its three parts live.
    let size = 1u16 << (data[0] % 7);
    let at = |i: usize| GuestAddress(u64::from(u16::from_le_bytes([data[i], data[i + 1]])) & !0xf);
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
    let image = &data[7..];
    mem.write_slice(&image[..image.len().min(MEM)], GuestAddress(0))
        .unwrap();
    if let Ok(asked) = net_ctrl::serve_once(&mem, size, [at(1), at(3), at(5)], PAIRS) {
        assert!(
            asked.iter().all(|n| (1..=PAIRS).contains(n)),
            "asked {asked:?} of a device with {PAIRS} pairs"
        );
    }
});
