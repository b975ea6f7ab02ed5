//! The kernel loaders (`vmm/src/boot`: our header checks, then linux-loader's bzImage and ELF
//! loaders, then the zero page or PVH start info) on arbitrary kernel images, into a 2 MiB
//! guest, with a 4 KiB initrd. No KVM is involved: the image goes through a memfd to
//! `boot::load_file`, as a file given with `--kernel` would.
//!
//! Checked on every input:
//! - nothing panics;
//! - nothing is written outside what the loader may touch: the boot structures below 1 MiB,
//!   the kernel's range as its headers declare it (and only if that range is accepted), and the
//!   initrd's page at the top of RAM. Guest memory is filled with a canary before each run and
//!   every other byte must still hold it afterwards;
//! - an accepted image enters at an address inside what was loaded, through the protocol its
//!   format implies, and its initrd is where the loader put it;
//! - a refused image is refused with an error that names a problem with the image (not a
//!   failed guest-memory write, which would mean a header check let through a layout it should
//!   have refused).
//!
//! The first input byte picks what the rest is: the image itself (`% 4` is 0 or 1), or edits
//! to the real test guest's PVH ELF (2) or bzImage (3), so that the fuzzer starts past the
//! magic numbers and explores headers that are almost right. Edits: a 3-byte length to cut the
//! image to, then (3-byte offset, byte) pairs.
//!
//!     cargo +nightly fuzz run kernel_load        (from vmm/)
#![no_main]

use std::fs::File;
use std::os::fd::FromRawFd;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use vmm_vmm::boot::image::{self, KernelFormat};
use vmm_vmm::boot::layout::{
    CMDLINE_ADDR, CMDLINE_MAX, GDT_ADDR, HIMEM_START, PD_ADDR, PVH_INFO_ADDR, ZERO_PAGE_ADDR,
};
use vmm_vmm::boot::{self, BootSpec, EntryMode, Error};
use vmm_vmm::GuestRam;

const MEM_MIB: u64 = 2;
const CANARY: u8 = 0xa5;
const INITRD_LEN: usize = 4096;
/// Boot structures: GDT, then PVH start info through the last page-table page, then the command
/// line (see `boot::layout`).
const BOOT_REGIONS: [(u64, u64); 3] = [
    (GDT_ADDR, GDT_ADDR + 0x100),
    (PVH_INFO_ADDR, PD_ADDR + 4 * 0x1000),
    (CMDLINE_ADDR, CMDLINE_ADDR + CMDLINE_MAX as u64),
];

struct State {
    ram: GuestRam,
    kernel: File,
    initrd_path: PathBuf,
    initrd: Vec<u8>,
    elf: Vec<u8>,
    bzimage: Vec<u8>,
}

fn memfd(name: &std::ffi::CStr) -> File {
    // SAFETY: `name` is a valid NUL-terminated string; the call has no other inputs.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), 0) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` was just created and is owned by nothing else.
    unsafe { File::from_raw_fd(fd) }
}

fn state() -> &'static Mutex<State> {
    static STATE: OnceLock<Mutex<State>> = OnceLock::new();
    STATE.get_or_init(|| {
        let initrd: Vec<u8> = (0..INITRD_LEN).map(|i| (i * 7 + 1) as u8).collect();
        let rd = memfd(c"fuzz-initrd");
        rd.write_all_at(&initrd, 0).expect("initrd memfd");
        let initrd_path = PathBuf::from(format!("/proc/self/fd/{}", {
            use std::os::fd::AsRawFd;
            rd.as_raw_fd()
        }));
        // The descriptor must stay open for the path to resolve.
        std::mem::forget(rd);
        let ram = GuestRam::new(MEM_MIB).expect("guest RAM");
        ram.memory()
            .write_slice(canary(), GuestAddress(0))
            .expect("canary");
        Mutex::new(State {
            ram,
            kernel: memfd(c"fuzz-kernel"),
            initrd_path,
            initrd,
            elf: std::fs::read(vmm_test_guest::ELF_PATH).expect("test guest ELF"),
            bzimage: std::fs::read(vmm_test_guest::BZIMAGE_PATH).expect("test guest bzImage"),
        })
    })
}

/// RAM's worth of canary bytes, allocated once.
fn canary() -> &'static [u8] {
    static CANARY_BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    CANARY_BYTES.get_or_init(|| vec![CANARY; (MEM_MIB << 20) as usize])
}

fn u24(b: &[u8]) -> usize {
    usize::from(b[0]) | usize::from(b[1]) << 8 | usize::from(b[2]) << 16
}

/// The image an input stands for (see the module comment).
fn image_of(data: &[u8], st: &State) -> Vec<u8> {
    let (mode, rest) = match data.split_first() {
        Some((m, r)) => (m % 4, r),
        None => return Vec::new(),
    };
    let base = match mode {
        2 => &st.elf,
        3 => &st.bzimage,
        _ => return rest.to_vec(),
    };
    let mut img = base.clone();
    if rest.len() >= 3 {
        img.truncate(u24(rest).max(1));
    }
    if !img.is_empty() {
        for edit in rest.get(3..).unwrap_or(&[]).chunks_exact(4) {
            let at = u24(edit) % img.len();
            img[at] = edit[3];
        }
    }
    img
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

/// (guest address, file offset, length) of what an accepted image loads: a bzImage's
/// protected-mode part at its code32_start; an ELF's PT_LOAD file contents at their physical
/// addresses (only when no two overlap, as then the order of the copies would matter).
fn loaded_pieces(img: &[u8], format: KernelFormat) -> Vec<(usize, usize, usize)> {
    match format {
        KernelFormat::BzImage => {
            let sects = match img[0x1f1] {
                0 => 4,
                n => usize::from(n),
            };
            let setup = (sects + 1) * 512;
            let start = u32_at(img, 0x214).expect("accepted header") as usize;
            vec![(start, setup, img.len() - setup)]
        }
        KernelFormat::Elf => {
            let phoff = u64_at(img, 32) as usize;
            let phnum = usize::from(u16::from_le_bytes([img[56], img[57]]));
            let mut pieces: Vec<(usize, usize, usize)> = (0..phnum)
                .map(|i| &img[phoff + i * 56..phoff + i * 56 + 56])
                .filter(|ph| u32_at(ph, 0) == Some(1) && u64_at(ph, 32) != 0)
                .map(|ph| {
                    (
                        u64_at(ph, 24) as usize,
                        u64_at(ph, 8) as usize,
                        u64_at(ph, 32) as usize,
                    )
                })
                .collect();
            pieces.sort_unstable();
            if pieces.windows(2).any(|w| w[0].0 + w[0].2 > w[1].0) {
                return Vec::new();
            }
            pieces
        }
    }
}

fn guest_bytes(ram: &GuestRam) -> &[u8] {
    let host = ram
        .memory()
        .get_host_address(GuestAddress(0))
        .expect("RAM at 0");
    // SAFETY: the first region maps guest addresses 0..MEM_MIB MiB contiguously for as long
    // as `ram` lives, and nothing else writes it while the fuzzer (single-threaded) looks.
    unsafe { std::slice::from_raw_parts(host, (MEM_MIB << 20) as usize) }
}

fuzz_target!(|data: &[u8]| {
    let mut st = state().lock().unwrap_or_else(|p| p.into_inner());
    let img = image_of(data, &st);
    st.kernel.set_len(0).expect("truncate");
    st.kernel.write_all_at(&img, 0).expect("write image");

    let name = PathBuf::from("fuzz-kernel");
    let initrd_path = st.initrd_path.clone();
    let spec = BootSpec {
        kernel: &name,
        initrd: Some(&initrd_path),
        cmdline: vmm_vmm::DEFAULT_CMDLINE,
    };
    let info = image::probe(&mut st.kernel, &name).ok();
    let result = {
        let State { ram, kernel, .. } = &mut *st;
        boot::load_file(ram, kernel, &spec)
    };

    // Where the loader may have written.
    let ram_end = MEM_MIB << 20;
    let mut allowed: Vec<(u64, u64)> = BOOT_REGIONS.to_vec();
    let kernel = info.filter(|i| i.start >= HIMEM_START && i.end <= ram_end);
    if let Some(k) = kernel {
        allowed.push((k.start, k.end));
        // The initrd goes to the top of RAM, below the bzImage's initrd_addr_max.
        let max_end = match k.format {
            KernelFormat::BzImage => match u32_at(&img, 0x22c) {
                Some(m) if m != 0 => u64::from(m) + 1,
                _ => u64::MAX,
            },
            KernelFormat::Elf => u64::MAX,
        };
        if let Some(at) = ram_end.min(max_end).checked_sub(INITRD_LEN as u64) {
            let at = at & !0xfff;
            allowed.push((at, at + INITRD_LEN as u64));
        }
    }
    let mem = guest_bytes(&st.ram);
    let outside = |a: u64| !allowed.iter().any(|&(s, e)| (s..e).contains(&a));
    // Whole pages first (a memcmp each, none for pages the loader may write entirely), then
    // the bytes of any page that differs.
    let canary = canary();
    for (p, page) in mem.chunks_exact(4096).enumerate() {
        let (ps, pe) = ((p * 4096) as u64, (p * 4096 + 4096) as u64);
        let inside = allowed.iter().any(|&(s, e)| s <= ps && pe <= e);
        if !inside && page != &canary[..4096] {
            for (i, b) in page.iter().enumerate() {
                let a = (p * 4096 + i) as u64;
                assert!(
                    *b == CANARY || !outside(a),
                    "write at {a:#x} outside the allowed regions {allowed:#x?} \
                     (kernel {info:?}, result {result:?})"
                );
            }
        }
    }

    match &result {
        Ok(entry) => {
            let k = kernel.expect("an accepted kernel's range was within RAM");
            assert_eq!(entry.format, k.format);
            assert!(
                (k.start..k.end).contains(&entry.rip),
                "entry {:#x} outside the loaded image {:#x}..{:#x}",
                entry.rip,
                k.start,
                k.end
            );
            match entry.mode {
                EntryMode::Pvh { start_info } => {
                    assert_eq!(k.format, KernelFormat::Elf);
                    assert_eq!(start_info, PVH_INFO_ADDR);
                }
                EntryMode::Linux64 { zero_page } => assert_eq!(zero_page, ZERO_PAGE_ADDR),
            }
            // The image's bytes are where its headers put them.
            for (mem_at, file_at, len) in loaded_pieces(&img, k.format) {
                assert_eq!(
                    &mem[mem_at..mem_at + len],
                    &img[file_at..file_at + len],
                    "image bytes {file_at:#x}+{len:#x} not at {mem_at:#x}"
                );
            }
            // The initrd is in the last allowed region, byte for byte.
            let &(at, _) = allowed.last().expect("initrd region");
            assert!(at >= k.end, "initrd at {at:#x} overlaps the kernel");
            assert_eq!(&mem[at as usize..at as usize + INITRD_LEN], &st.initrd[..]);
        }
        Err(e) => {
            assert!(!e.to_string().is_empty());
            match e {
                Error::NotAKernel { .. }
                | Error::UnsupportedKernel { .. }
                | Error::Truncated { .. }
                | Error::KernelDoesNotFit { .. }
                | Error::KernelTooLow { .. }
                | Error::EntryOutsideImage { .. }
                | Error::InitrdDoesNotFit { .. }
                | Error::Cmdline(_) => {}
                // linux-loader refusing a header we passed is fine; failing to read the image
                // into guest memory is not: our checks should have said why first.
                Error::Load { source, .. } => {
                    let what = format!("{source:?}");
                    assert!(
                        !what.contains("ReadKernelImage")
                            && !what.contains("ReadBzImageCompressed"),
                        "linux-loader could not place an image our checks accepted: {e}"
                    );
                }
                other => panic!("not an error about the image: {other}"),
            }
        }
    }

    // Restore the canary where the loader may have written.
    for &(s, e) in &allowed {
        let (s, e) = (s.min(ram_end), e.min(ram_end));
        st.ram
            .memory()
            .write_slice(&canary[..(e - s) as usize], GuestAddress(s))
            .expect("canary");
    }
});
