//! Guest RAM: one memfd, mapped `MAP_SHARED`, split around the 32-bit PCI hole.
//!
//! A memfd (rather than anonymous memory) is what lets a vhost-user backend map the very same
//! pages: the frontend sends the fd and each region's offset in `SET_MEM_TABLE`. Each region's
//! [`FileOffset`] records that offset, so the regions describe themselves. The memfd's size is
//! sealed (`F_SEAL_SHRINK`, `F_SEAL_GROW`): a backend that maps it can check that it will never
//! shrink under its mapping (which would be a SIGBUS there).
//!
//! Layout (x86_64): RAM from 0 up to [`MMIO_HOLE_START`] (3 GiB); whatever is left continues at
//! 4 GiB. The hole holds PCI BARs, the IOAPIC (0xfec00000), the LAPIC (0xfee00000) and KVM's TSS
//! pages.

use std::ffi::CStr;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::Arc;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{Address, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

/// The guest memory type used throughout the VMM.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

/// Start of the 32-bit MMIO hole (no RAM from here up to 4 GiB).
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO hole; RAM beyond [`MMIO_HOLE_START`] resumes here.
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;
/// Smallest guest the VMM builds: room for boot structures below 1 MiB and a small kernel.
pub const MIN_MEM_MIB: u64 = 2;
/// Largest guest: keeps `mem_mib << 20` far from overflow and within sane memfd sizes.
pub const MAX_MEM_MIB: u64 = 1 << 24;

const MIB: u64 = 1 << 20;

/// Errors setting up guest memory.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The requested size is outside what the VMM supports.
    #[error("guest memory of {mib} MiB is out of range ({MIN_MEM_MIB}..={MAX_MEM_MIB} MiB)")]
    BadSize {
        /// Requested size.
        mib: u64,
    },
    /// memfd_create failed.
    #[error("cannot create the guest memory memfd: {0}")]
    Memfd(#[source] std::io::Error),
    /// Sizing the memfd failed.
    #[error("cannot size the guest memory memfd to {size} bytes: {source}")]
    Truncate {
        /// Requested size in bytes.
        size: u64,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Sealing the memfd's size failed.
    #[error("cannot seal the guest memory memfd's size: {0}")]
    Seal(#[source] std::io::Error),
    /// Mapping the memfd failed.
    #[error("cannot map guest memory: {0}")]
    Mmap(#[from] vm_memory::mmap::FromRangesError),
    /// KVM refused a memory slot.
    #[error("KVM_SET_USER_MEMORY_REGION for slot {slot} failed: {source}")]
    SetMemoryRegion {
        /// Slot number.
        slot: u32,
        /// Underlying error.
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// Guest RAM and the memfd behind it.
pub struct GuestRam {
    memory: GuestMemoryMmap,
    file: Arc<File>,
    size: u64,
}

/// The RAM ranges `(guest address, length, offset in the memfd)` for `size` bytes of RAM.
pub fn ram_ranges(size: u64) -> Vec<(u64, u64, u64)> {
    let low = size.min(MMIO_HOLE_START);
    let mut ranges = vec![(0, low, 0)];
    if size > low {
        ranges.push((MMIO_HOLE_END, size - low, low));
    }
    ranges
}

impl GuestRam {
    /// Creates `mem_mib` MiB of guest RAM in a fresh memfd.
    pub fn new(mem_mib: u64) -> Result<Self, Error> {
        if !(MIN_MEM_MIB..=MAX_MEM_MIB).contains(&mem_mib) {
            return Err(Error::BadSize { mib: mem_mib });
        }
        let size = mem_mib * MIB;
        let file = Arc::new(memfd(c"vmm-guest-ram")?);
        file.set_len(size)
            .map_err(|source| Error::Truncate { size, source })?;
        seal_size(&file)?;
        let memory = GuestMemoryMmap::from_ranges_with_files(ram_ranges(size).into_iter().map(
            |(gpa, len, off)| {
                (
                    GuestAddress(gpa),
                    len as usize,
                    Some(FileOffset::from_arc(file.clone(), off)),
                )
            },
        ))?;
        Ok(Self { memory, file, size })
    }

    /// The mapped guest memory.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    /// The memfd backing every region (for vhost-user `SET_MEM_TABLE`).
    pub fn file(&self) -> &Arc<File> {
        &self.file
    }

    /// Total RAM in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// End (exclusive) of the RAM below the 32-bit hole.
    pub fn low_end(&self) -> u64 {
        self.size.min(MMIO_HOLE_START)
    }

    /// Registers every region with KVM, one slot each (slots 0..n).
    pub fn register(&self, vm: &VmFd) -> Result<(), Error> {
        for (slot, region) in self.memory.iter().enumerate() {
            let slot = slot as u32;
            let host = self
                .memory
                .get_host_address(region.start_addr())
                .map_err(|_| Error::SetMemoryRegion {
                    slot,
                    source: kvm_ioctls::Error::new(libc::EFAULT),
                })?;
            let mr = kvm_userspace_memory_region {
                slot,
                flags: 0,
                guest_phys_addr: region.start_addr().raw_value(),
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: `host..host + len` is a live mapping owned by `self.memory`. The VMM keeps
            // this `GuestRam` alive until after the VM fd (and so every use of the slot by KVM)
            // is dropped: `Vmm` declares its VM before its memory, and fields drop in order.
            unsafe { vm.set_user_memory_region(mr) }
                .map_err(|source| Error::SetMemoryRegion { slot, source })?;
        }
        Ok(())
    }
}

fn memfd(name: &CStr) -> Result<File, Error> {
    // SAFETY: `name` is a valid NUL-terminated string; the flags are plain constants.
    let fd =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(Error::Memfd(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just returned by memfd_create and nothing else owns it.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Seals the memfd's size (`F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL`): a vhost-user backend
/// maps it, and a file that shrank under a mapping would SIGBUS the backend (and us). With the
/// seals a backend can check (`F_GET_SEALS`) that it never will.
fn seal_size(file: &File) -> Result<(), Error> {
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
    // SAFETY: fcntl on a descriptor we own, with an integer argument.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
        return Err(Error::Seal(std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn layout_splits_around_the_hole() {
        assert_eq!(ram_ranges(256 * MIB), vec![(0, 256 * MIB, 0)]);
        assert_eq!(
            ram_ranges(4096 * MIB),
            vec![
                (0, MMIO_HOLE_START, 0),
                (MMIO_HOLE_END, 1024 * MIB, MMIO_HOLE_START)
            ]
        );
    }

    #[test]
    fn memory_is_shared_through_the_memfd() {
        use std::os::unix::fs::FileExt;
        let ram = GuestRam::new(4).unwrap();
        ram.memory()
            .write_obj(0xabcd_u16, GuestAddress(0x1234))
            .unwrap();
        let mut b = [0u8; 2];
        ram.file().read_exact_at(&mut b, 0x1234).unwrap();
        assert_eq!(u16::from_le_bytes(b), 0xabcd);
        assert_eq!(ram.low_end(), 4 * MIB);
        assert!(matches!(GuestRam::new(1), Err(Error::BadSize { mib: 1 })));
    }

    #[test]
    fn the_memfd_cannot_shrink_or_grow() {
        let ram = GuestRam::new(4).unwrap();
        assert!(ram.file().set_len(MIB).is_err(), "shrink allowed");
        assert!(ram.file().set_len(8 * MIB).is_err(), "grow allowed");
        // SAFETY: fcntl on a descriptor the test owns, no pointer argument.
        let seals = unsafe { libc::fcntl(ram.file().as_raw_fd(), libc::F_GET_SEALS) };
        assert_eq!(seals & libc::F_SEAL_SHRINK, libc::F_SEAL_SHRINK);
    }
}
