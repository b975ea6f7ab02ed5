//! The VMM's test guest: paths of the images built by `build.rs`, and the guest's ABI.
//!
//! The guest is assembly (`src/guest.S`), linked at [`LOAD_ADDR`]; see that file for what it
//! does. Both images come from the same object, so a test booting each form exercises the VMM's
//! PVH path and its 64-bit Linux boot protocol path on identical guest code.

include!("abi.rs");

/// ELF64 image with a PVH note (XEN_ELFNOTE_PHYS32_ENTRY): boots through the PVH protocol.
pub const ELF_PATH: &str = concat!(env!("OUT_DIR"), "/test-guest.elf");
/// bzImage (boot protocol 2.15, XLF_KERNEL_64): boots through the 64-bit Linux boot protocol.
pub const BZIMAGE_PATH: &str = concat!(env!("OUT_DIR"), "/test-guest.bzImage");
/// First line the guest prints on COM1, before naming the entry it came through.
pub const BANNER: &str = "vmm-test-guest: hello from the ";
/// Last line the guest prints before reporting [`EXIT_SUCCESS`].
pub const DONE: &str = "vmm-test-guest: done";
/// What the guest prints when its ARP request was answered, followed by `PEER is-at MAC`.
pub const ARP_REPLY: &str = "vmm-test-guest: net: arp reply from ";
/// What the guest prints when `vmtest.wait` keeps it up until the host ends the VM.
pub const WAITING: &str = "vmm-test-guest: waiting for the host";
/// What the guest prints once the rx queue's MSI-X message has reached its local APIC.
pub const MSIX_RECEIVED: &str = "vmm-test-guest: net: msi-x interrupt received";
