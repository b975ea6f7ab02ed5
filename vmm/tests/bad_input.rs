//! Bad `--kernel`/`--initrd`/`--mem` input gives a typed error that names the file and says
//! what is wrong. None of these needs /dev/kvm: files are checked before KVM is opened.

use std::path::{Path, PathBuf};

use vmm_vmm::boot::Error as BootError;
use vmm_vmm::{run, Console, VmConfig, VmmError};

fn scratch(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vmm-bad-input-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn config(kernel: &Path) -> VmConfig {
    let mut c = VmConfig::new(kernel);
    c.mem_mib = 16;
    c.console = Console::Null;
    c
}

fn boot_err(c: VmConfig) -> BootError {
    let shown = c.kernel.clone();
    match run(c) {
        Err(VmmError::Boot(e)) => e,
        other => panic!("{}: expected a boot error, got {other:?}", shown.display()),
    }
}

fn guest(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

#[test]
fn missing_kernel() {
    let p = Path::new("/nonexistent/vmlinuz");
    let e = boot_err(config(p));
    assert!(
        matches!(&e, BootError::KernelOpen { path, .. } if path == p),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("/nonexistent/vmlinuz") && msg.contains("No such file"),
        "{msg}"
    );
}

#[test]
fn empty_and_non_kernel_files() {
    let empty = scratch("empty", b"");
    let e = boot_err(config(&empty));
    assert!(matches!(e, BootError::NotAKernel { .. }), "{e:?}");
    assert!(e.to_string().contains("empty"), "{e}");

    let text = scratch("text", &b"#!/bin/sh\necho I am not a kernel\n".repeat(100));
    let e = boot_err(config(&text));
    assert!(matches!(e, BootError::NotAKernel { .. }), "{e:?}");
    assert!(e.to_string().contains(&*text.to_string_lossy()), "{e}");
}

#[test]
fn truncated_images() {
    let elf = guest(vmm_test_guest::ELF_PATH);
    for cut in [3, 40, 2000] {
        let p = scratch(&format!("elf-cut-{cut}"), &elf[..cut]);
        let e = boot_err(config(&p));
        assert!(
            matches!(e, BootError::Truncated { .. }),
            "cut at {cut}: {e:?}"
        );
        assert!(e.to_string().contains("truncated"), "{e}");
    }
    let bz = guest(vmm_test_guest::BZIMAGE_PATH);
    for cut in [0x300, 1024, 1500] {
        let p = scratch(&format!("bz-cut-{cut}"), &bz[..cut]);
        let e = boot_err(config(&p));
        assert!(
            matches!(e, BootError::Truncated { .. }),
            "cut at {cut}: {e:?}"
        );
    }
}

#[test]
fn unsupported_images() {
    // A 32-bit ELF.
    let mut elf = guest(vmm_test_guest::ELF_PATH);
    elf[4] = 1;
    let p = scratch("elf32", &elf);
    let e = boot_err(config(&p));
    assert!(matches!(e, BootError::UnsupportedKernel { .. }), "{e:?}");
    // A bzImage without a 64-bit entry point.
    let mut bz = guest(vmm_test_guest::BZIMAGE_PATH);
    bz[0x236] = 0;
    let p = scratch("bz-no64", &bz);
    let e = boot_err(config(&p));
    assert!(e.to_string().contains("XLF_KERNEL_64"), "{e}");
}

#[test]
fn memory_too_small_for_kernel() {
    // The same guest, claiming (like a real bzImage) it needs 32 MiB to decompress.
    let mut bz = guest(vmm_test_guest::BZIMAGE_PATH);
    bz[0x260..0x264].copy_from_slice(&(32u32 << 20).to_le_bytes());
    let p = scratch("bz-big", &bz);
    let e = boot_err(config(&p));
    assert!(matches!(e, BootError::KernelDoesNotFit { .. }), "{e:?}");
    assert!(e.to_string().contains("more memory"), "{e}");
}

#[test]
fn memory_too_small_for_initrd() {
    let initrd = scratch("initrd-3m", &vec![0x5a; 3 << 20]);
    let mut c = config(Path::new(vmm_test_guest::ELF_PATH));
    c.mem_mib = 4;
    c.initrd = Some(initrd.clone());
    let e = boot_err(c);
    assert!(
        matches!(&e, BootError::InitrdDoesNotFit { path, .. } if *path == initrd),
        "{e:?}"
    );

    let mut c = config(Path::new(vmm_test_guest::ELF_PATH));
    c.initrd = Some("/nonexistent/initrd".into());
    let e = boot_err(c);
    assert!(e.to_string().contains("/nonexistent/initrd"), "{e}");
}

#[test]
fn bad_sizes() {
    let mut c = config(Path::new(vmm_test_guest::ELF_PATH));
    c.mem_mib = 1;
    let e = run(c).unwrap_err();
    assert!(
        matches!(e, VmmError::Memory(_)) && e.is_bad_input(),
        "{e:?}"
    );
    let mut c = config(Path::new(vmm_test_guest::ELF_PATH));
    c.cpus = 0;
    let e = run(c).unwrap_err();
    assert!(
        matches!(e, VmmError::CpuCount { requested: 0, .. }) && e.is_bad_input(),
        "{e:?}"
    );
    let mut c = config(Path::new(vmm_test_guest::ELF_PATH));
    c.cmdline = "x".repeat(10_000);
    let e = run(c).unwrap_err();
    assert!(
        matches!(e, VmmError::Boot(BootError::Cmdline(_))) && e.is_bad_input(),
        "{e:?}"
    );
}

/// Offset of the PVH entry in the test guest's ELF: the descriptor right after the "Xen" name of
/// its XEN_ELFNOTE_PHYS32_ENTRY note.
fn pvh_entry_offset(elf: &[u8]) -> usize {
    elf.windows(4).position(|w| w == b"Xen\0").unwrap() + 4
}

/// Found by the `kernel_load` fuzz target: an image whose entry point lies outside it was
/// accepted, and the guest ran into whatever memory held there (a triple fault, exit status 1,
/// reported as a guest crash instead of bad input).
#[test]
fn entry_point_outside_the_image() {
    // PVH: the note's entry, inside RAM but past the image.
    let mut elf = guest(vmm_test_guest::ELF_PATH);
    let at = pvh_entry_offset(&elf);
    elf[at..at + 4].copy_from_slice(&0x00f0_0000u32.to_le_bytes());
    let p = scratch("elf-pvh-entry-out", &elf);
    let e = boot_err(config(&p));
    assert!(
        matches!(
            e,
            BootError::EntryOutsideImage {
                entry: 0x00f0_0000,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("outside its image"), "{e}");

    // No PVH note (its type changed): the ELF header's entry, here far past RAM.
    let mut elf = guest(vmm_test_guest::ELF_PATH);
    let at = pvh_entry_offset(&elf);
    elf[at - 8] = 0x7f; // n_type, was 18 (XEN_ELFNOTE_PHYS32_ENTRY)
    elf[24..32].copy_from_slice(&0x0a00_0000_0010_0200u64.to_le_bytes());
    let p = scratch("elf-entry-out", &elf);
    let e = boot_err(config(&p));
    assert!(matches!(e, BootError::EntryOutsideImage { .. }), "{e:?}");

    // No PVH note, the header's own entry: the 64-bit Linux protocol enters at e_entry.
    let mut elf = guest(vmm_test_guest::ELF_PATH);
    let at = pvh_entry_offset(&elf);
    elf[at - 8] = 0x7f;
    let e_entry = u64::from_le_bytes(elf[24..32].try_into().unwrap());
    let p = scratch("elf-no-pvh", &elf);
    let ram = vmm_vmm::GuestRam::new(16).unwrap();
    let spec = vmm_vmm::boot::BootSpec {
        kernel: &p,
        initrd: None,
        cmdline: "",
    };
    let entry = vmm_vmm::boot::load(&ram, &spec).unwrap();
    assert_eq!(entry.rip, e_entry);
    assert!(matches!(entry.mode, vmm_vmm::EntryMode::Linux64 { .. }));

    // The unmodified images still load (their entries are inside).
    for img in [vmm_test_guest::ELF_PATH, vmm_test_guest::BZIMAGE_PATH] {
        let ram = vmm_vmm::GuestRam::new(16).unwrap();
        let spec = vmm_vmm::boot::BootSpec {
            kernel: Path::new(img),
            initrd: None,
            cmdline: "",
        };
        vmm_vmm::boot::load(&ram, &spec).unwrap();
    }
}
