//! `vmm run`'s initramfs on Debian's stock kernel, whose virtio-pci, virtio-fs and FUSE are
//! modules: what `vmm run` would build for it (vmm/src/initramfs.rs: the modules it plans from
//! the kernel's real module tree, and resources/run/initramfs-init) boots that kernel under
//! QEMU/TCG with the host's root served by virtiofsd, loads the modules, mounts the root and
//! hands over to a second-stage init on the host's file system.
//!
//! QEMU stands in for our VMM here because a stock kernel cannot boot on this project's PVM
//! machines in useful time; where KVM is hardware, `vmm run` boots it itself (the same archive).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use vmm_tests::guest::{built, module_tree, Guest};
use vmm_tests::process::{find_virtiofsd, TestVirtiofsd};
use vmm_tests::{say, TempDir};
use vmm_vmm::initramfs;

/// The stock kernel's boot under TCG (seconds here) plus loading the modules.
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

#[test]
fn the_stock_kernel_loads_its_modules_and_mounts_the_hosts_root() {
    vmm_tests::require_root();
    let virtiofsd = find_virtiofsd().expect("virtiofsd (resources/setup.sh installs it)");
    let kernel = built("stock/vmlinuz");
    let tree = module_tree("stock/modules");

    // What vmm run plans for this kernel: its configuration (beside it) has them as modules.
    let modules = initramfs::plan(&kernel, Some(&tree), &[], false).expect("plan");
    let names: Vec<&str> = modules.iter().map(|m| m.name.as_str()).collect();
    let at = |n: &str| {
        names
            .iter()
            .position(|m| *m == n)
            .unwrap_or_else(|| panic!("{n} is not planned: {names:?}"))
    };
    assert!(at("virtio") < at("virtio_pci"), "{names:?}");
    assert!(at("fuse") < at("virtiofs"), "{names:?}");
    at("pvpanic_pci");

    let dir = TempDir::new("stockrun");
    let cpio = dir.path().join("initramfs.cpio");
    let file = std::fs::File::create(&cpio).unwrap();
    initramfs::write(
        std::io::BufWriter::new(file),
        include_str!("../../resources/run/initramfs-init"),
        Path::new("/bin/busybox"),
        &modules,
    )
    .expect("write the initramfs");
    // The second stage lives on the host's root, which the guest sees read-only.
    let stage2 = dir.path().join("stage2");
    std::fs::write(
        &stage2,
        "#!/bin/busybox sh\n\
         /bin/busybox mount -t proc proc /proc\n\
         /bin/busybox cat /proc/modules\n\
         [ -e /dev/console ] && [ -f \"$0\" ] && echo STAGE2-ON-HOST-ROOT\n\
         /bin/busybox poweroff -f\n",
    )
    .unwrap();
    std::fs::set_permissions(&stage2, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();

    let sock = dir.path().join("fs.sock");
    let _daemon = TestVirtiofsd::start(&virtiofsd, Path::new("/"), &sock, true);

    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(["-M", "q35", "-accel", "tcg", "-m", "512", "-nographic"])
        .args(["-no-reboot"])
        .args(["-object", "memory-backend-memfd,id=mem,size=512M,share=on"])
        .args(["-numa", "node,memdev=mem"])
        .arg("-chardev")
        .arg(format!("socket,id=fs0,path={}", sock.display()))
        // No MSI-X: QEMU 7.2 under TCG crashes starting a vhost device with it (guest.rs).
        .args([
            "-device",
            "vhost-user-fs-pci,chardev=fs0,tag=vmmroot,vectors=0",
        ])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=1"])
        .arg("-kernel")
        .arg(&kernel)
        .arg("-initrd")
        .arg(&cpio)
        .arg("-append")
        .arg(format!(
            "console=ttyS0 quiet panic=-1 rdinit=/init vmrun_init={}",
            stage2.display()
        ));
    let start = Instant::now();
    let mut guest = Guest::command(qemu);
    guest.expect("STAGE2-ON-HOST-ROOT", BOOT_TIMEOUT);
    let _ = guest.wait_process(Duration::from_secs(30));
    say(&format!(
        "stock kernel: modules loaded, root mounted, stage 2 ran after {:.1} s (TCG)",
        start.elapsed().as_secs_f64()
    ));
    let console = guest.console();
    // A /proc/modules line: `NAME SIZE REFS DEPS STATE ADDR`; it may follow the firmware's
    // terminal escapes and its last words on the same line ("Booting from ROM..ESC[2Jname").
    let loaded = |m: &str| {
        console.lines().filter(|l| l.contains(" Live ")).any(|l| {
            l.match_indices(m).any(|(at, _)| {
                // Module names are lower case: an escape's final letter (`ESC[2J`) is not.
                let before_ok = !l[..at]
                    .ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
                let after = &l[at + m.len()..];
                before_ok
                    && after.starts_with(' ')
                    && after[1..].starts_with(|c: char| c.is_ascii_digit())
            })
        })
    };
    for m in ["virtiofs", "fuse", "virtio_pci", "pvpanic_pci"] {
        assert!(loaded(m), "{m} is not in /proc/modules:\n{console}");
    }
}
