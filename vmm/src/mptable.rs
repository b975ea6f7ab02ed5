//! Intel MultiProcessor Specification 1.4 table, so guests (Linux with `acpi=off` or no ACPI,
//! and the test guest) find every vCPU, the IOAPIC and the ISA IRQ routing.
//!
//! Placed at [`EBDA_START`] (the last KiB of base memory, one of the places the spec tells the
//! OS to scan), which the e820 map marks reserved. The 1 KiB bounds the vCPU count to
//! [`MAX_CPUS`].

use vm_memory::{Bytes, GuestAddress};

use crate::boot::layout::{BASE_MEM_END, EBDA_START};
use crate::memory::GuestRam;

/// IOAPIC MMIO base (KVM's in-kernel IOAPIC).
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// LAPIC MMIO base.
pub const LAPIC_ADDR: u32 = 0xfee0_0000;
/// Most vCPUs the table can describe in its KiB (60 header + 20 per CPU + 160 fixed bytes).
pub const MAX_CPUS: u8 = 32;

const ISA_IRQS: u8 = 16;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;

/// Errors writing the table.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// More vCPUs than fit.
    #[error("the MP table holds at most {MAX_CPUS} vCPUs, {0} requested")]
    TooManyCpus(u8),
    /// Guest memory write failed.
    #[error("cannot write the MP table: {0}")]
    Write(#[source] vm_memory::GuestMemoryError),
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |a, b| a.wrapping_add(*b))
        .wrapping_neg()
}

/// The floating pointer structure and the configuration table, as bytes to put at
/// [`EBDA_START`].
pub fn build(cpus: u8) -> Result<Vec<u8>, Error> {
    if cpus == 0 || cpus > MAX_CPUS {
        return Err(Error::TooManyCpus(cpus));
    }
    let table_addr = EBDA_START as u32 + 16;
    let ioapic_id = cpus;

    let mut entries = Vec::new();
    let mut count: u16 = 0;
    for id in 0..cpus {
        // Processor: type 0, APIC id, version, flags (enabled, BSP), signature, features.
        entries.extend_from_slice(&[0, id, APIC_VERSION, 1 | if id == 0 { 2 } else { 0 }]);
        entries.extend_from_slice(&0x600u32.to_le_bytes()); // family 6
        entries.extend_from_slice(&0x201u32.to_le_bytes()); // FPU | APIC
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    // Bus 0: ISA.
    entries.extend_from_slice(&[1, 0]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    // IOAPIC: type 2, id, version, enabled, address.
    entries.extend_from_slice(&[2, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    count += 1;
    // I/O interrupts: ISA IRQ n -> IOAPIC pin n (type 3, INT, conforming polarity/trigger).
    for irq in 0..ISA_IRQS {
        entries.extend_from_slice(&[3, 0, 0, 0, 0, irq, ioapic_id, irq]);
        count += 1;
    }
    // Local interrupts: LINT0 = ExtINT, LINT1 = NMI, to all local APICs.
    entries.extend_from_slice(&[4, 3, 0, 0, 0, 0, 0xff, 0]);
    entries.extend_from_slice(&[4, 1, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let mut table = Vec::with_capacity(44 + entries.len());
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&((44 + entries.len()) as u16).to_le_bytes());
    table.push(4); // spec revision 1.4
    table.push(0); // checksum, below
    table.extend_from_slice(b"VMM     ");
    table.extend_from_slice(b"VMM-KVM     ");
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table
    table.extend_from_slice(&0u16.to_le_bytes());
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&LAPIC_ADDR.to_le_bytes());
    table.extend_from_slice(&[0; 4]); // extended table length, checksum, reserved
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut fp = Vec::with_capacity(16 + table.len());
    fp.extend_from_slice(b"_MP_");
    fp.extend_from_slice(&table_addr.to_le_bytes());
    fp.extend_from_slice(&[1, 4, 0, 0, 0, 0, 0, 0]); // length (16-byte units), rev, checksum, features
    fp[10] = checksum(&fp[..16]);
    fp.extend_from_slice(&table);
    debug_assert!(fp.len() as u64 <= BASE_MEM_END - EBDA_START);
    Ok(fp)
}

/// Writes the MP table for `cpus` vCPUs into guest memory.
pub fn write(ram: &GuestRam, cpus: u8) -> Result<(), Error> {
    let bytes = build(cpus)?;
    ram.memory()
        .write_slice(&bytes, GuestAddress(EBDA_START))
        .map_err(Error::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_and_counts() {
        for cpus in [1, 2, MAX_CPUS] {
            let t = build(cpus).unwrap();
            assert!(t.len() as u64 <= BASE_MEM_END - EBDA_START);
            assert_eq!(t[..16].iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
            let cfg = &t[16..];
            let len = u16::from_le_bytes([cfg[4], cfg[5]]) as usize;
            assert_eq!(cfg.len(), len);
            assert_eq!(cfg.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
            let procs = cfg[44..].chunks(8).filter(|c| c[0] == 0).count();
            assert!(procs >= cpus as usize);
        }
        assert!(build(0).is_err());
        assert!(build(MAX_CPUS + 1).is_err());
    }
}
