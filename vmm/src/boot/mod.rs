//! x86_64 boot: load the kernel (and initrd), describe memory, and say how to enter it.
//!
//! Two entry protocols:
//! - **PVH** (ELF with `XEN_ELFNOTE_PHYS32_ENTRY`): 32-bit protected mode, paging off,
//!   `rbx` = `hvm_start_info`. Preferred for ELF images because it needs no zero page.
//! - **64-bit Linux boot protocol** (bzImage, or an ELF vmlinux without PVH note): long mode
//!   with the VMM's identity page tables, `rsi` = zero page; the bzImage entry is its load
//!   address + 0x200.

pub mod image;
pub mod layout;
mod linux;
mod pvh;
pub mod regs;

use std::fs::File;
use std::path::{Path, PathBuf};

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::{self, BzImage, Elf, KernelLoader, PvhBootCapability};
use vm_memory::{Bytes, GuestAddress};

use crate::memory::GuestRam;
use image::{KernelFormat, KernelInfo};
use layout::*;

/// Most memory-map entries the VMM writes.
pub const E820_MAX: usize = 8;
/// e820 type: usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type: reserved.
pub const E820_RESERVED: u32 = 2;

/// Errors loading a kernel or initrd or writing boot structures. File errors name the file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kernel file could not be opened.
    #[error("cannot open kernel {path}: {source}")]
    KernelOpen {
        /// The file.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Reading the kernel file failed.
    #[error("cannot read kernel {path}: {source}")]
    KernelRead {
        /// The file.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a kernel image the VMM knows.
    #[error("{path} is not a kernel image: {reason}")]
    NotAKernel {
        /// The file.
        path: PathBuf,
        /// What is missing.
        reason: String,
    },
    /// A kernel image of an unsupported kind.
    #[error("{path}: unsupported kernel image: {reason}")]
    UnsupportedKernel {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The file ends before its headers say it should.
    #[error("{path} is truncated: {what}")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// What is cut short.
        what: String,
    },
    /// The kernel needs memory the guest does not have.
    #[error(
        "kernel {path} needs guest memory {start:#x}..{end:#x} but RAM ends at {ram_end:#x}: \
         give the guest more memory"
    )]
    KernelDoesNotFit {
        /// The file.
        path: PathBuf,
        /// First byte it occupies.
        start: u64,
        /// End of what it needs.
        end: u64,
        /// End of low RAM.
        ram_end: u64,
    },
    /// The kernel wants to load below 1 MiB, over the VMM's boot structures.
    #[error("kernel {path} loads at {start:#x}, below 1 MiB where boot structures live")]
    KernelTooLow {
        /// The file.
        path: PathBuf,
        /// Its lowest address.
        start: u64,
    },
    /// The image's entry point is not inside the memory the image occupies.
    #[error("kernel {path} enters at {entry:#x}, outside its image {start:#x}..{end:#x}")]
    EntryOutsideImage {
        /// The file.
        path: PathBuf,
        /// The entry point (PVH note, ELF header, or a bzImage's load address + 0x200).
        entry: u64,
        /// First byte of the image in guest memory.
        start: u64,
        /// End of the memory it occupies.
        end: u64,
    },
    /// linux-loader rejected the image.
    #[error("cannot load kernel {path}: {source}")]
    Load {
        /// The file.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: loader::Error,
    },
    /// The initrd could not be opened or read.
    #[error("cannot read initrd {path}: {source}")]
    Initrd {
        /// The file.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The initrd does not fit between the kernel and the top of low RAM.
    #[error(
        "initrd {path} ({size} bytes) does not fit in guest RAM between the kernel end \
         {kernel_end:#x} and {limit:#x}: give the guest more memory"
    )]
    InitrdDoesNotFit {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// End of the kernel.
        kernel_end: u64,
        /// Highest address the initrd may end at.
        limit: u64,
    },
    /// The command line is too long or malformed.
    #[error("invalid kernel command line: {0}")]
    Cmdline(#[source] linux_loader::cmdline::Error),
    /// Writing boot structures into guest memory failed.
    #[error("cannot write {what} into guest memory: {source}")]
    GuestWrite {
        /// Which structure.
        what: &'static str,
        /// Underlying error.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    /// linux-loader's configurator failed writing boot parameters.
    #[error("cannot write boot parameters: {0}")]
    BootParams(#[source] linux_loader::configurator::Error),
}

/// How the BSP enters the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryMode {
    /// 64-bit Linux boot protocol: long mode, `rsi` = zero page.
    Linux64 {
        /// Guest address of `boot_params`.
        zero_page: u64,
    },
    /// PVH: 32-bit protected mode, paging off, `rbx` = `hvm_start_info`.
    Pvh {
        /// Guest address of `hvm_start_info`.
        start_info: u64,
    },
}

/// Everything the vCPU setup needs to start the BSP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootEntry {
    /// First instruction.
    pub rip: u64,
    /// Protocol.
    pub mode: EntryMode,
    /// Image format that was loaded.
    pub format: KernelFormat,
}

/// What to boot.
#[derive(Clone, Debug)]
pub struct BootSpec<'a> {
    /// Kernel image (ELF or bzImage).
    pub kernel: &'a Path,
    /// Optional initrd.
    pub initrd: Option<&'a Path>,
    /// Kernel command line.
    pub cmdline: &'a str,
}

/// A contiguous piece of the guest-physical memory map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    /// Start.
    pub addr: u64,
    /// Length.
    pub size: u64,
    /// [`E820_RAM`] or [`E820_RESERVED`].
    pub kind: u32,
}

/// The memory map the guest is told about: base memory, the MP-table KiB (reserved), RAM from
/// 1 MiB, and RAM above 4 GiB.
pub fn e820_map(ram: &GuestRam) -> Vec<E820Entry> {
    let mut map = vec![
        E820Entry {
            addr: 0,
            size: EBDA_START,
            kind: E820_RAM,
        },
        E820Entry {
            addr: EBDA_START,
            size: BASE_MEM_END - EBDA_START,
            kind: E820_RESERVED,
        },
    ];
    for (gpa, len, _) in crate::memory::ram_ranges(ram.size()) {
        let start = gpa.max(HIMEM_START);
        let end = gpa + len;
        if end > start {
            map.push(E820Entry {
                addr: start,
                size: end - start,
                kind: E820_RAM,
            });
        }
    }
    map
}

fn write(ram: &GuestRam, what: &'static str, data: &[u8], addr: u64) -> Result<(), Error> {
    ram.memory()
        .write_slice(data, GuestAddress(addr))
        .map_err(|source| Error::GuestWrite { what, source })
}

/// Loads the kernel, command line and initrd into `ram` and writes the boot structures for the
/// protocol the image supports. Returns how to enter it.
pub fn load(ram: &GuestRam, spec: &BootSpec<'_>) -> Result<BootEntry, Error> {
    let mut file = File::open(spec.kernel).map_err(|source| Error::KernelOpen {
        path: spec.kernel.to_owned(),
        source,
    })?;
    load_file(ram, &mut file, spec)
}

/// [`load`] with the kernel already open: `spec.kernel` only names it in errors. This is what
/// the `kernel_load` fuzz target drives, with images written to a memfd.
pub fn load_file(ram: &GuestRam, file: &mut File, spec: &BootSpec<'_>) -> Result<BootEntry, Error> {
    let path = spec.kernel;
    // The headers are read here before linux-loader reads them again, on purpose: a truncated,
    // foreign or oversized image is reported by name and cause before guest memory is touched
    // (linux-loader says "failed to read" at an offset), and `info.end` counts what the kernel
    // needs beyond its file (bss, a bzImage's init_size), which linux-loader's `kernel_end`
    // does not. Everything linux-loader returns (load address, ELF entry, PVH note, setup
    // header) is taken from its result.
    let info = image::probe(file, path)?;
    check_fits(ram, path, &info)?;

    let himem = Some(GuestAddress(HIMEM_START));
    let result = match info.format {
        KernelFormat::Elf => Elf::load(ram.memory(), None, file, himem),
        KernelFormat::BzImage => BzImage::load(ram.memory(), None, file, himem),
    }
    .map_err(|source| Error::Load {
        path: path.to_owned(),
        source,
    })?;
    let kernel_end = result.kernel_end.max(info.end);
    let pvh_entry = match result.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(addr) if info.format == KernelFormat::Elf => Some(addr),
        _ => None,
    };
    let rip = match (pvh_entry, info.format) {
        (Some(addr), _) => addr.0,
        // The 64-bit entry of a bzImage is 0x200 past the start of its protected-mode part.
        (None, KernelFormat::BzImage) => result.kernel_load.0 + 0x200,
        // linux-loader's ELF result: `kernel_load` is the header's `e_entry` (no load offset
        // is passed), already checked to be at or above HIMEM_START.
        (None, KernelFormat::Elf) => result.kernel_load.0,
    };
    // An entry outside the image would run whatever the guest's memory holds there and end in a
    // triple fault (exit status 1, "the guest crashed"); it is bad input (status 2).
    if !(info.start..kernel_end).contains(&rip) {
        return Err(Error::EntryOutsideImage {
            path: path.to_owned(),
            entry: rip,
            start: info.start,
            end: kernel_end,
        });
    }

    let cmdline_cap = match result.setup_header {
        Some(hdr) if hdr.cmdline_size > 0 => (hdr.cmdline_size as usize + 1).min(CMDLINE_MAX),
        _ => CMDLINE_MAX,
    };
    let cmdline = Cmdline::try_from(spec.cmdline, cmdline_cap).map_err(Error::Cmdline)?;
    loader::load_cmdline(ram.memory(), GuestAddress(CMDLINE_ADDR), &cmdline).map_err(|source| {
        Error::Load {
            path: path.to_owned(),
            source,
        }
    })?;
    let cmdline_len = cmdline
        .as_cstring()
        .map(|c| c.as_bytes().len())
        .map_err(Error::Cmdline)?;

    let initrd_max = match result.setup_header {
        Some(hdr) if hdr.initrd_addr_max != 0 => u64::from(hdr.initrd_addr_max) + 1,
        _ => u64::MAX,
    };
    let initrd = match spec.initrd {
        Some(p) => Some(load_initrd(ram, p, kernel_end, initrd_max)?),
        None => None,
    };

    let e820 = e820_map(ram);
    let entry = if pvh_entry.is_some() {
        pvh::write_start_info(ram, &e820, initrd, CMDLINE_ADDR)?;
        BootEntry {
            rip,
            mode: EntryMode::Pvh {
                start_info: PVH_INFO_ADDR,
            },
            format: info.format,
        }
    } else {
        linux::write_zero_page(
            ram,
            result.setup_header,
            &e820,
            initrd,
            CMDLINE_ADDR,
            cmdline_len,
        )?;
        BootEntry {
            rip,
            mode: EntryMode::Linux64 {
                zero_page: ZERO_PAGE_ADDR,
            },
            format: info.format,
        }
    };
    regs::write_gdt(ram, entry.mode)?;
    regs::write_page_tables(ram)?;
    Ok(entry)
}

fn check_fits(ram: &GuestRam, path: &Path, info: &KernelInfo) -> Result<(), Error> {
    if info.start < HIMEM_START {
        return Err(Error::KernelTooLow {
            path: path.to_owned(),
            start: info.start,
        });
    }
    if info.end > ram.low_end() {
        return Err(Error::KernelDoesNotFit {
            path: path.to_owned(),
            start: info.start,
            end: info.end,
            ram_end: ram.low_end(),
        });
    }
    Ok(())
}

/// A loaded initrd: guest address and size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InitrdPlacement {
    /// Guest address.
    pub addr: u64,
    /// Bytes.
    pub size: u64,
}

/// Puts the initrd as high as possible in low RAM (page aligned, below `max_end`), as
/// bootloaders do, keeping the space above the kernel free for its decompression and bss.
fn load_initrd(
    ram: &GuestRam,
    path: &Path,
    kernel_end: u64,
    max_end: u64,
) -> Result<InitrdPlacement, Error> {
    let err = |source| Error::Initrd {
        path: path.to_owned(),
        source,
    };
    let mut file = File::open(path).map_err(err)?;
    let size = file.metadata().map_err(err)?.len();
    let limit = ram.low_end().min(max_end);
    let kernel_end_aligned = kernel_end.next_multiple_of(4096);
    let addr = limit
        .checked_sub(size)
        .map(|a| a & !0xfff)
        .filter(|&a| a >= kernel_end_aligned);
    let Some(addr) = addr else {
        return Err(Error::InitrdDoesNotFit {
            path: path.to_owned(),
            size,
            kernel_end,
            limit,
        });
    };
    ram.memory()
        .read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(|e| match e {
            vm_memory::GuestMemoryError::IOError(io) => err(io),
            other => Error::GuestWrite {
                what: "the initrd",
                source: other,
            },
        })?;
    Ok(InitrdPlacement { addr, size })
}
