//! Initial CPU state for the BSP: GDT, identity page tables, segment and control registers.

use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress};

use super::layout::*;
use super::{EntryMode, Error};
use crate::memory::GuestRam;

/// Selector of the flat code segment (`__BOOT_CS` in the Linux boot protocol).
pub const CODE_SELECTOR: u16 = 0x10;
/// Selector of the flat data segment (`__BOOT_DS`).
pub const DATA_SELECTOR: u16 = 0x18;
/// Selector of the TSS.
pub const TSS_SELECTOR: u16 = 0x20;

const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// Builds a GDT descriptor from flags (bits 55:52 and 47:40 packed as `0xF0FF`), base, limit.
const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
        | ((limit as u64 & 0x000f_0000) << 32)
        | ((flags as u64 & 0xf0ff) << 40)
}

/// The GDT for `mode`: null, null, code (64-bit for Linux64, 32-bit for PVH), data, TSS.
pub fn gdt(mode: EntryMode) -> [u64; 5] {
    let code = match mode {
        EntryMode::Linux64 { .. } => gdt_entry(0xa09b, 0, 0xfffff), // L=1, accessed
        EntryMode::Pvh { .. } => gdt_entry(0xc09b, 0, 0xfffff),     // D=1, 4 GiB
    };
    [
        0,
        0,
        code,
        gdt_entry(0xc093, 0, 0xfffff),
        gdt_entry(0x008b, 0, 0x67),
    ]
}

/// Decodes descriptor `entry` into the form KVM wants for a segment register.
pub fn segment(entry: u64, selector: u16) -> kvm_segment {
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let raw_limit = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    let g = ((entry >> 55) & 1) as u8;
    kvm_segment {
        base,
        limit: if g == 1 {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: u8::from((entry >> 47) & 1 == 0),
        padding: 0,
    }
}

/// Writes the GDT for `mode` at [`GDT_ADDR`].
pub fn write_gdt(ram: &GuestRam, mode: EntryMode) -> Result<(), Error> {
    let bytes: Vec<u8> = gdt(mode).iter().flat_map(|e| e.to_le_bytes()).collect();
    super::write(ram, "the GDT", &bytes, GDT_ADDR)
}

/// Identity-maps the low 4 GiB with 2 MiB pages: the 64-bit protocol needs the kernel, zero
/// page and command line mapped, and covering the 32-bit hole lets early code reach MMIO.
pub fn write_page_tables(ram: &GuestRam) -> Result<(), Error> {
    let mem = ram.memory();
    let w = |v: u64, a: u64| {
        mem.write_obj(v, GuestAddress(a))
            .map_err(|source| Error::GuestWrite {
                what: "the page tables",
                source,
            })
    };
    w(PDPT_ADDR | 0x3, PML4_ADDR)?;
    for i in 0..4u64 {
        w((PD_ADDR + i * 0x1000) | 0x3, PDPT_ADDR + i * 8)?;
    }
    let pd: Vec<u8> = (0..2048u64)
        .flat_map(|i| ((i << 21) | 0x83).to_le_bytes())
        .collect();
    super::write(ram, "the page tables", &pd, PD_ADDR)
}

/// Special registers for entering in `mode`, starting from KVM's reset state `sregs`.
pub fn boot_sregs(mut sregs: kvm_sregs, mode: EntryMode) -> kvm_sregs {
    let table = gdt(mode);
    let code = segment(table[2], CODE_SELECTOR);
    let data = segment(table[3], DATA_SELECTOR);
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (std::mem::size_of_val(&table) - 1) as u16;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(table[4], TSS_SELECTOR);
    match mode {
        EntryMode::Linux64 { .. } => {
            sregs.cr0 = CR0_PE | CR0_ET | CR0_PG;
            sregs.cr3 = PML4_ADDR;
            sregs.cr4 = CR4_PAE;
            sregs.efer = EFER_LME | EFER_LMA;
        }
        EntryMode::Pvh { .. } => {
            sregs.cr0 = CR0_PE | CR0_ET;
            sregs.cr3 = 0;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
    }
    sregs
}

/// General registers for entering at `rip` in `mode`.
pub fn boot_regs(rip: u64, mode: EntryMode) -> kvm_regs {
    let mut regs = kvm_regs {
        rflags: 0x2,
        rip,
        ..Default::default()
    };
    match mode {
        EntryMode::Linux64 { zero_page } => {
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
            regs.rsi = zero_page;
        }
        EntryMode::Pvh { start_info } => regs.rbx = start_info,
    }
    regs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_decode() {
        let code = segment(gdt_entry(0xa09b, 0, 0xfffff), CODE_SELECTOR);
        assert_eq!(
            (code.l, code.db, code.g, code.type_, code.s),
            (1, 0, 1, 0xb, 1)
        );
        assert_eq!(
            (code.limit, code.present, code.unusable),
            (0xffff_ffff, 1, 0)
        );
        let data = segment(gdt_entry(0xc093, 0, 0xfffff), DATA_SELECTOR);
        assert_eq!((data.l, data.db, data.type_), (0, 1, 3));
        let tss = segment(gdt_entry(0x008b, 0, 0x67), TSS_SELECTOR);
        assert_eq!((tss.limit, tss.s, tss.type_, tss.g), (0x67, 0, 0xb, 0));
    }
}
