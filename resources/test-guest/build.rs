//! Builds the test guest from `src/guest.S` with the system C compiler (for the preprocessor and
//! assembler), `ld` and `objcopy`, into `OUT_DIR`:
//! - `test-guest.elf`: ELF64 with a PVH note (XEN_ELFNOTE_PHYS32_ENTRY);
//! - `test-guest.bzImage`: a setup header (boot protocol 2.15, `XLF_KERNEL_64`) followed by the
//!   flat image of the same code, whose 64-bit entry is at +0x200.
//!
//! No rustup target and nothing downloaded: only binutils and `cc`, present wherever Rust links.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

include!("src/abi.rs");

fn run(cmd: &mut Command) {
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("test-guest build: cannot run {cmd:?}: {e}"));
    assert!(
        status.success(),
        "test-guest build: {cmd:?} failed: {status}"
    );
}

/// Bytes of the real-mode setup area: `(setup_sects + 1) * 512`.
const SETUP_SECTS: u8 = 1;

fn put16(buf: &mut [u8], off: usize, v: u16) {
    buf[off..off + 2].copy_from_slice(&v.to_le_bytes());
}
fn put32(buf: &mut [u8], off: usize, v: u32) {
    buf[off..off + 4].copy_from_slice(&v.to_le_bytes());
}
fn put64(buf: &mut [u8], off: usize, v: u64) {
    buf[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

/// The bzImage setup area: only the header matters (we never run real-mode setup code); the
/// field offsets are those of Documentation/arch/x86/boot.rst.
fn setup_header(payload_len: usize) -> Vec<u8> {
    let mut s = vec![0u8; (usize::from(SETUP_SECTS) + 1) * 512];
    s[0x1f1] = SETUP_SECTS;
    let syssize = u32::try_from(payload_len.div_ceil(16)).expect("guest too large");
    put32(&mut s, 0x1f4, syssize);
    put16(&mut s, 0x1fa, 0xffff); // vid_mode: normal
    put16(&mut s, 0x1fe, 0xaa55); // boot_flag
                                  // 0x200: real-mode entry: `jmp 0x280`, where `cli; hlt; jmp .` waits forever.
    s[0x200] = 0xeb;
    s[0x201] = (0x280 - 0x202) as u8;
    s[0x280..0x284].copy_from_slice(&[0xfa, 0xf4, 0xeb, 0xfc]);
    s[0x202..0x206].copy_from_slice(b"HdrS");
    put16(&mut s, 0x206, 0x020f); // protocol 2.15
    let version = b"vmm-test-guest\0";
    s[0x2a0..0x2a0 + version.len()].copy_from_slice(version);
    put16(&mut s, 0x20e, 0x2a0 - 0x200); // kernel_version (offset from 0x200)
    s[0x211] = 0x01; // loadflags: LOADED_HIGH
    put32(&mut s, 0x214, LOAD_ADDR as u32); // code32_start
    put32(&mut s, 0x22c, 0x7fff_ffff); // initrd_addr_max
    put32(&mut s, 0x230, 0x20_0000); // kernel_alignment
    s[0x234] = 0; // relocatable_kernel: no, it runs where it is linked
    s[0x235] = 12; // min_alignment
    put16(&mut s, 0x236, 0x1); // xloadflags: XLF_KERNEL_64
    put32(&mut s, 0x238, 2047); // cmdline_size
    put64(&mut s, 0x258, LOAD_ADDR); // pref_address
    let init_size = u32::try_from(payload_len.div_ceil(4096) * 4096).expect("guest too large");
    put32(&mut s, 0x260, init_size);
    s
}

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let src = Path::new("src");
    for f in ["guest.S", "guest.ld", "abi.rs"] {
        println!("cargo:rerun-if-changed=src/{f}");
    }
    let cc = env::var("VMM_GUEST_CC").unwrap_or_else(|_| "cc".into());
    let obj = out.join("guest.o");
    run(Command::new(&cc)
        .args(["-c", "-nostdinc", "-ffreestanding", "-m64"])
        .arg(format!("-DDEBUG_EXIT_PORT={DEBUG_EXIT_PORT:#x}"))
        .arg(format!("-DEXIT_SUCCESS={EXIT_SUCCESS:#x}"))
        .arg(format!("-DEXIT_NET_FAILED={EXIT_NET_FAILED:#x}"))
        .arg(format!("-DAP_TRAMPOLINE={AP_TRAMPOLINE:#x}"))
        .arg(src.join("guest.S"))
        .arg("-o")
        .arg(&obj));
    let elf = out.join("test-guest.elf");
    run(Command::new("ld")
        .args([
            "-nostdlib",
            "-static",
            "--build-id=none",
            "-z",
            "max-page-size=4096",
        ])
        .arg("-T")
        .arg(src.join("guest.ld"))
        .arg("-o")
        .arg(&elf)
        .arg(&obj));
    let bin = out.join("test-guest.bin");
    run(Command::new("objcopy")
        .args(["-O", "binary", "-R", ".note.pvh"])
        .arg(&elf)
        .arg(&bin));
    let payload = fs::read(&bin).expect("read flat guest image");
    let mut bz = setup_header(payload.len());
    bz.extend_from_slice(&payload);
    fs::write(out.join("test-guest.bzImage"), bz).expect("write bzImage");
}
