//! Boots a stock Linux kernel, where that can work.
//!
//! Skipped (with the reason printed) when:
//! - the host's KVM is PVM (`/sys/module/kvm_pvm`): ordinary guests are instruction-emulated
//!   at ~1 MIPS there, so a stock kernel takes minutes to reach FPU init and then hits
//!   instructions the emulator lacks;
//! - no kernel is available: set `VMM_STOCK_KERNEL` (optionally `VMM_STOCK_INITRD`) or put one
//!   at `resources/out/vmlinuz`;
//! - `/dev/kvm` is not usable.
//!
//! Without an initrd the kernel panics at "VFS: Unable to mount root fs", and `panic=1
//! reboot=k` turn that into an i8042 reset: the VMM must then return [`VmExit::Reset`] after
//! printing the kernel banner. A watchdog stops the VM after `VMM_STOCK_TIMEOUT_S` (default
//! 120) seconds so a broken boot fails instead of hanging CI.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use vmm_devices::ExitRequest;
use vmm_vmm::{Console, ConsoleBuffer, VmConfig, VmExit, Vmm};

fn stock_kernel() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("VMM_STOCK_KERNEL") {
        return Some(PathBuf::from(p));
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../resources/out/vmlinuz");
    p.exists().then_some(p)
}

#[test]
fn stock_kernel_boots_and_reboots() {
    if vmm_vmm::kvm::is_pvm() {
        eprintln!(
            "skipping stock-kernel boot: KVM here is PVM: stock kernels are emulated at ~1 MIPS \
             and cannot boot in useful time"
        );
        return;
    }
    let Some(kernel) = stock_kernel() else {
        eprintln!(
            "skipping stock-kernel boot: no kernel (set VMM_STOCK_KERNEL or build \
             resources/out/vmlinuz)"
        );
        return;
    };
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        eprintln!("skipping stock-kernel boot: /dev/kvm is not usable ({e})");
        return;
    }
    let timeout = std::env::var("VMM_STOCK_TIMEOUT_S")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120u64);

    let out = ConsoleBuffer::new();
    let mut cfg = VmConfig::new(&kernel);
    cfg.initrd = std::env::var_os("VMM_STOCK_INITRD").map(PathBuf::from);
    cfg.cmdline = "console=ttyS0 reboot=k panic=1 i8042.noaux i8042.nomux".into();
    cfg.mem_mib = 512;
    cfg.cpus = 2;
    cfg.console = Console::Capture(out.clone());
    let vmm = Vmm::new(cfg).unwrap_or_else(|e| panic!("{}: {e}", kernel.display()));

    let exit = vmm.exit_notifier().clone();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if done_rx.recv_timeout(Duration::from_secs(timeout)).is_err() {
            exit.request(ExitRequest::Stop);
        }
    });
    let report = vmm.run();
    let _ = done_tx.send(());
    let _ = watchdog.join();

    let text = out.contents();
    let report = report.unwrap_or_else(|e| panic!("VM failed: {e}\nconsole:\n{text}"));
    eprintln!("stock kernel: {:?} after {:?}", report.exit, report.elapsed);
    assert!(text.contains("Linux version"), "no kernel banner:\n{text}");
    assert_ne!(
        report.exit,
        VmExit::Stopped,
        "timed out after {timeout} s:\n{text}"
    );
}
