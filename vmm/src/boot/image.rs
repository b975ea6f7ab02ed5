//! Recognising and sanity-checking kernel images before linux-loader touches guest memory.
//!
//! linux-loader reports a truncated or misplaced image as a bare "failed to read" at some
//! offset. Checking the headers here first lets the VMM say what is wrong with which file
//! (not a kernel, truncated, does not fit in RAM), which is what a user needs.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use super::Error;

/// Formats the VMM boots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelFormat {
    /// ELF64 x86_64 (vmlinux, or anything with a PVH note).
    Elf,
    /// bzImage (boot protocol >= 2.12 with a 64-bit entry).
    BzImage,
}

/// What a kernel image claims about itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelInfo {
    /// Its format.
    pub format: KernelFormat,
    /// Lowest guest-physical address it occupies.
    pub start: u64,
    /// End (exclusive) of the memory it needs, including bss / decompression room.
    pub end: u64,
}

const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const EM_X86_64: u16 = 62;
const PT_LOAD: u32 = 1;
const EHDR_LEN: usize = 64;
const PHDR_LEN: usize = 56;
/// Refuse absurd program header counts rather than read them all.
const MAX_PHDRS: u16 = 128;
const BZ_HEADER_END: usize = 0x268;
const XLF_KERNEL_64: u16 = 1;
const LOADED_HIGH: u8 = 1;

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}
fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}
fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap_or([0; 8]))
}

/// Reads as much of the file's first `len` bytes as exist.
fn read_head(file: &mut File, path: &Path, len: usize) -> Result<Vec<u8>, Error> {
    let mut buf = Vec::with_capacity(len);
    file.seek(SeekFrom::Start(0))
        .and_then(|_| file.take(len as u64).read_to_end(&mut buf))
        .map_err(|source| Error::KernelRead {
            path: path.to_owned(),
            source,
        })?;
    Ok(buf)
}

/// Identifies `file` and checks its headers against its length.
pub fn probe(file: &mut File, path: &Path) -> Result<KernelInfo, Error> {
    let file_len = file
        .metadata()
        .map_err(|source| Error::KernelRead {
            path: path.to_owned(),
            source,
        })?
        .len();
    let head = read_head(file, path, BZ_HEADER_END)?;
    if head.is_empty() {
        return Err(Error::NotAKernel {
            path: path.to_owned(),
            reason: "the file is empty".into(),
        });
    }
    if head.starts_with(ELF_MAGIC) {
        return probe_elf(file, path, &head, file_len);
    }
    if head.len() >= 0x206 && &head[0x202..0x206] == b"HdrS" {
        return probe_bzimage(path, &head, file_len);
    }
    if head.len() < 0x206 && ELF_MAGIC.starts_with(&head[..head.len().min(4)]) {
        return Err(truncated(path, "the ELF header is cut short"));
    }
    Err(Error::NotAKernel {
        path: path.to_owned(),
        reason: "neither an ELF image nor a bzImage (no \\x7fELF magic, no \"HdrS\" at 0x202)"
            .into(),
    })
}

fn truncated(path: &Path, what: &str) -> Error {
    Error::Truncated {
        path: path.to_owned(),
        what: what.into(),
    }
}

fn unsupported(path: &Path, reason: String) -> Error {
    Error::UnsupportedKernel {
        path: path.to_owned(),
        reason,
    }
}

fn probe_elf(
    file: &mut File,
    path: &Path,
    head: &[u8],
    file_len: u64,
) -> Result<KernelInfo, Error> {
    if head.len() < EHDR_LEN {
        return Err(truncated(path, "the ELF header is cut short"));
    }
    if head[4] != 2 {
        return Err(unsupported(
            path,
            "32-bit ELF; an ELF64 x86_64 image is needed".into(),
        ));
    }
    if head[5] != 1 {
        return Err(unsupported(path, "big-endian ELF".into()));
    }
    let machine = u16_at(head, 18);
    if machine != EM_X86_64 {
        return Err(unsupported(
            path,
            format!("ELF machine {machine}, not x86_64 ({EM_X86_64})"),
        ));
    }
    let phoff = u64_at(head, 32);
    let phentsize = u16_at(head, 54);
    let phnum = u16_at(head, 56);
    if usize::from(phentsize) != PHDR_LEN || phnum == 0 || phnum > MAX_PHDRS {
        return Err(unsupported(
            path,
            format!("bad program headers (size {phentsize}, count {phnum})"),
        ));
    }
    let ph_len = u64::from(phnum) * PHDR_LEN as u64;
    if phoff.checked_add(ph_len).is_none_or(|end| end > file_len) {
        return Err(truncated(
            path,
            "the program headers lie past the end of the file",
        ));
    }
    let mut phdrs = vec![0u8; ph_len as usize];
    file.seek(SeekFrom::Start(phoff))
        .and_then(|_| file.read_exact(&mut phdrs))
        .map_err(|source| Error::KernelRead {
            path: path.to_owned(),
            source,
        })?;
    let (mut start, mut end) = (u64::MAX, 0u64);
    for ph in phdrs.chunks_exact(PHDR_LEN) {
        if u32_at(ph, 0) != PT_LOAD {
            continue;
        }
        let (offset, paddr) = (u64_at(ph, 8), u64_at(ph, 24));
        let (filesz, memsz) = (u64_at(ph, 32), u64_at(ph, 40));
        if offset.checked_add(filesz).is_none_or(|e| e > file_len) {
            return Err(truncated(
                path,
                &format!("a segment at file offset {offset:#x} (+{filesz:#x}) lies past the end"),
            ));
        }
        let seg_end = paddr
            .checked_add(memsz.max(filesz))
            .ok_or_else(|| unsupported(path, format!("segment at {paddr:#x} overflows")))?;
        start = start.min(paddr);
        end = end.max(seg_end);
    }
    if end == 0 {
        return Err(Error::NotAKernel {
            path: path.to_owned(),
            reason: "the ELF file has no loadable segments".into(),
        });
    }
    Ok(KernelInfo {
        format: KernelFormat::Elf,
        start,
        end,
    })
}

fn probe_bzimage(path: &Path, head: &[u8], file_len: u64) -> Result<KernelInfo, Error> {
    if head.len() < BZ_HEADER_END {
        return Err(truncated(path, "the bzImage setup header is cut short"));
    }
    let version = u16_at(head, 0x206);
    if version < 0x020c {
        return Err(unsupported(
            path,
            format!(
                "bzImage boot protocol {}.{:02} is too old (2.12 or later has the 64-bit entry)",
                version >> 8,
                version & 0xff
            ),
        ));
    }
    if head[0x211] & LOADED_HIGH == 0 {
        return Err(unsupported(
            path,
            "zImage (not loaded high); a bzImage is needed".into(),
        ));
    }
    if u16_at(head, 0x236) & XLF_KERNEL_64 == 0 {
        return Err(unsupported(
            path,
            "no 64-bit entry point (XLF_KERNEL_64 is clear)".into(),
        ));
    }
    let setup_sects = match head[0x1f1] {
        0 => 4,
        n => u64::from(n),
    };
    let setup_len = (setup_sects + 1) * 512;
    let payload = file_len.saturating_sub(setup_len);
    let syssize = u64::from(u32_at(head, 0x1f4)) * 16;
    if payload == 0 || syssize > payload + 15 {
        return Err(truncated(
            path,
            &format!("the protected-mode kernel is {payload} bytes but the header says {syssize}"),
        ));
    }
    let start = u64::from(u32_at(head, 0x214));
    let init_size = u64::from(u32_at(head, 0x260));
    Ok(KernelInfo {
        format: KernelFormat::BzImage,
        start,
        end: start + payload.max(init_size),
    })
}
