//! Boots the test guest (resources/test-guest) in both forms and checks what it reports.
//!
//! Needs /dev/kvm (CI runs as root on a KVM host); without it the tests say so and pass, since
//! there is nothing to test against.

use std::path::Path;
use std::time::Instant;

use vmm_vmm::{run, Console, ConsoleBuffer, RunReport, VmConfig, VmExit};

fn kvm_available() -> bool {
    match vmm_vmm::kvm::device_usable() {
        Ok(()) => true,
        Err(e) => {
            eprintln!("skipping: /dev/kvm is not usable here ({e})");
            false
        }
    }
}

fn boot(kernel: &str, cpus: u8) -> (RunReport, String) {
    let out = ConsoleBuffer::new();
    let mut cfg = VmConfig::new(kernel);
    cfg.mem_mib = 64;
    cfg.cpus = cpus;
    cfg.console = Console::Capture(out.clone());
    let t = Instant::now();
    let report =
        run(cfg).unwrap_or_else(|e| panic!("booting {kernel}: {e}\nconsole:\n{}", out.contents()));
    let text = out.contents();
    eprintln!(
        "{} ({} vCPU): exit {:?} after {:?} (guest ran {:?})\n{text}",
        Path::new(kernel).file_name().unwrap().to_string_lossy(),
        cpus,
        report.exit,
        t.elapsed(),
        report.elapsed
    );
    (report, text)
}

fn assert_guest_ok(report: &RunReport, text: &str, entry: &str) {
    assert!(
        text.contains(&format!("{}{entry}", vmm_test_guest::BANNER)),
        "banner missing: {text}"
    );
    assert!(
        text.contains("vmm-test-guest: pci 00:00.0 1b36:0008"),
        "host bridge not enumerated: {text}"
    );
    assert!(
        text.contains(vmm_test_guest::DONE),
        "guest did not finish: {text}"
    );
    assert_eq!(report.exit, VmExit::DebugExit(vmm_test_guest::EXIT_SUCCESS));
    assert_eq!(report.exit_code(), i32::from(vmm_test_guest::EXIT_SUCCESS));
}

#[test]
fn elf_pvh_boots() {
    if !kvm_available() {
        return;
    }
    let (report, text) = boot(vmm_test_guest::ELF_PATH, 1);
    assert_guest_ok(&report, &text, "PVH entry");
    assert!(text.contains("cpus in MP table: 1\n"), "{text}");
}

#[test]
fn bzimage_boots() {
    if !kvm_available() {
        return;
    }
    let (report, text) = boot(vmm_test_guest::BZIMAGE_PATH, 1);
    assert_guest_ok(&report, &text, "bzImage 64-bit entry");
}

#[test]
fn two_vcpus_both_run() {
    if !kvm_available() {
        return;
    }
    let (report, text) = boot(vmm_test_guest::ELF_PATH, 2);
    assert_guest_ok(&report, &text, "PVH entry");
    // The MP table the VMM wrote lists both vCPUs...
    assert!(text.contains("cpus in MP table: 2\n"), "{text}");
    // ...both vCPU threads entered KVM_RUN...
    assert_eq!(report.vcpus_entered, vec![true, true]);
    // ...and the AP actually executed guest code: the BSP's INIT/SIPI started it, and its
    // trampoline bumped the counter the BSP reports.
    assert!(text.contains("APs started: 1\n"), "AP did not run: {text}");
}

#[test]
fn bzimage_with_initrd_and_custom_cmdline_on_two_vcpus() {
    if !kvm_available() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("vmm-boot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let initrd = dir.join("initrd");
    std::fs::write(&initrd, vec![0xa5u8; 3 << 20]).unwrap();
    let out = ConsoleBuffer::new();
    let mut cfg = VmConfig::new(vmm_test_guest::BZIMAGE_PATH);
    cfg.mem_mib = 32;
    cfg.cpus = 2;
    cfg.initrd = Some(initrd);
    cfg.cmdline = "hello=world quiet".into();
    cfg.console = Console::Capture(out.clone());
    let report = run(cfg).unwrap();
    let text = out.contents();
    assert!(text.contains("cmdline: hello=world quiet\n"), "{text}");
    assert!(text.contains("APs started: 1\n"), "{text}");
    assert_eq!(report.exit, VmExit::DebugExit(vmm_test_guest::EXIT_SUCCESS));
}

#[test]
fn host_stop_ends_the_vm() {
    if !kvm_available() {
        return;
    }
    let mut cfg = VmConfig::new(vmm_test_guest::ELF_PATH);
    cfg.mem_mib = 16;
    cfg.console = Console::Null;
    let vmm = vmm_vmm::Vmm::new(cfg).unwrap();
    vmm.exit_notifier().request(vmm_devices::ExitRequest::Stop);
    let report = vmm.run().unwrap();
    assert_eq!(report.exit, VmExit::Stopped);
    assert_eq!(report.exit_code(), 130);
}

/// `vmtest.arp=` without a virtio-net device, or malformed: the guest says why and its failure
/// status is the VMM's.
#[test]
fn net_check_without_device_or_with_bad_argument_fails_cleanly() {
    if !kvm_available() {
        return;
    }
    for (cmdline, message) in [
        (
            "console=ttyS0 vmtest.arp=10.0.0.2,10.0.0.1",
            "net: no virtio-net device",
        ),
        ("vmtest.arp=10.0.0.256,10.0.0.1", "net: bad vmtest.arp"),
        ("vmtest.arp=10.0.0.2;10.0.0.1", "net: bad vmtest.arp"),
        ("vmtest.arp=10.0.0.2,10.0.0", "net: bad vmtest.arp"),
        ("vmtest.arp=10.0.0.2,10.0.0.1x", "net: bad vmtest.arp"),
    ] {
        let out = ConsoleBuffer::new();
        let mut cfg = VmConfig::new(vmm_test_guest::ELF_PATH);
        cfg.mem_mib = 64;
        cfg.cmdline = cmdline.into();
        cfg.console = Console::Capture(out.clone());
        let report = run(cfg).expect("boot");
        let text = out.contents();
        assert!(text.contains(message), "{cmdline}: {text}");
        assert!(!text.contains(vmm_test_guest::DONE), "{cmdline}: {text}");
        assert_eq!(
            report.exit,
            VmExit::DebugExit(vmm_test_guest::EXIT_NET_FAILED),
            "{cmdline}: {text}"
        );
    }
    // A token that merely ends in the key is not the key.
    let out = ConsoleBuffer::new();
    let mut cfg = VmConfig::new(vmm_test_guest::ELF_PATH);
    cfg.mem_mib = 64;
    cfg.cmdline = "xvmtest.arp=1.2.3.4,5.6.7.8".into();
    cfg.console = Console::Capture(out.clone());
    let report = run(cfg).expect("boot");
    assert_guest_ok(&report, &out.contents(), "PVH entry");
}
