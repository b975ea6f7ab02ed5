//! Where the VMM puts boot structures in guest-physical memory (x86_64).
//!
//! Everything the VMM writes lives below 640 KiB, away from the kernel (at or above
//! [`HIMEM_START`]) and the initrd (top of low RAM).

/// GDT (5 entries: null, null, code at 0x10, data at 0x18, TSS at 0x20).
pub const GDT_ADDR: u64 = 0x500;
/// PVH `hvm_start_info`.
pub const PVH_INFO_ADDR: u64 = 0x6000;
/// PVH memory map (up to [`super::E820_MAX`] entries of 24 bytes).
pub const PVH_MEMMAP_ADDR: u64 = 0x6100;
/// PVH module list (the initrd).
pub const PVH_MODLIST_ADDR: u64 = 0x6800;
/// Linux zero page (`boot_params`).
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Initial stack pointer for the BSP (the kernel switches to its own at once).
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity page tables: PML4, one PDPT, four PDs (2 MiB pages covering 4 GiB).
pub const PML4_ADDR: u64 = 0x9000;
/// See [`PML4_ADDR`].
pub const PDPT_ADDR: u64 = 0xa000;
/// See [`PML4_ADDR`]; four consecutive pages.
pub const PD_ADDR: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_ADDR: u64 = 0x2_0000;
/// Longest command line the VMM accepts (bytes, including the NUL).
pub const CMDLINE_MAX: usize = 4096;
/// Start of the "EBDA": the last KiB of base memory, where the MP table goes.
pub const EBDA_START: u64 = 0x9_fc00;
/// End of base memory (the legacy VGA hole starts here).
pub const BASE_MEM_END: u64 = 0xa_0000;
/// Kernels load at or above 1 MiB.
pub const HIMEM_START: u64 = 0x10_0000;
