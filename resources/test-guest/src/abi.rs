// The contract between the test guest and the tests that boot it. `build.rs` includes this
// file too and passes the values to the assembler, so the guest and the tests cannot drift.

/// I/O port of the VMM's debug-exit device: a byte `V` written there makes the VMM exit with
/// status `V`.
pub const DEBUG_EXIT_PORT: u16 = 0xf4;
/// The status the guest reports through the debug-exit port once every check has run.
pub const EXIT_SUCCESS: u8 = 0x31;
/// The status the guest reports when its virtio-net check (`vmtest.arp=` on its command line)
/// fails: no device, a device that does not start, no completion, or no ARP reply.
pub const EXIT_NET_FAILED: u8 = 0x33;
/// Guest-physical address the guest links and runs at (the bzImage's `code32_start`).
pub const LOAD_ADDR: u64 = 0x10_0000;
/// Guest-physical page where the BSP copies the 16-bit AP start-up trampoline (SIPI vector
/// `AP_TRAMPOLINE >> 12`).
pub const AP_TRAMPOLINE: u64 = 0x1_0000;
