//! Boots a stock Linux kernel, where that can work.
//!
//! Skipped (with the reason printed) when:
//! - the host's KVM is PVM (`/sys/module/kvm_pvm`): ordinary guests are instruction-emulated
//!   at ~1 MIPS there, so a stock kernel takes minutes to reach FPU init and then hits
//!   instructions the emulator lacks;
//! - no kernel is available: `resources/setup.sh` builds Debian's cloud kernel and its
//!   initramfs into `resources/out/stock/`; `VMM_STOCK_KERNEL` / `VMM_STOCK_INITRD` override;
//! - `/dev/kvm` is not usable.
//!
//! With the stock initramfs, its init runs `uname -r` and writes the status to the debug-exit
//! port, so the VM must end with `DebugExit(0)` after the init printed `VMTEST-EXIT=0`. Without
//! an initrd the kernel panics at "VFS: Unable to mount root fs", and `panic=1 reboot=k` turn
//! that into an i8042 reset: the VMM must then return [`VmExit::Reset`] after the banner. A watchdog stops the VM after `VMM_STOCK_TIMEOUT_S` (default
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
    let p = stock_dir().join("vmlinuz");
    p.exists().then_some(p)
}

fn stock_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../resources/out/stock")
}

/// Says why the test is skipped where CI's log shows it: straight to the stderr handle, which
/// the test harness does not capture (it captures `eprintln!`).
fn skip(why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED stock-kernel boot: {why}");
}

#[test]
fn stock_kernel_boots_and_reboots() {
    if vmm_vmm::kvm::is_pvm() {
        skip(
            "KVM here is PVM (/sys/module/kvm_pvm): stock kernels are emulated at ~1 MIPS and \
             cannot boot in useful time; this test runs where KVM is VT-x/AMD-V",
        );
        return;
    }
    let Some(kernel) = stock_kernel() else {
        skip("no kernel: run resources/setup.sh (or set VMM_STOCK_KERNEL)");
        return;
    };
    if let Err(e) = vmm_vmm::kvm::device_usable() {
        skip(&format!("/dev/kvm is not usable ({e})"));
        return;
    }
    let timeout = std::env::var("VMM_STOCK_TIMEOUT_S")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120u64);

    let out = ConsoleBuffer::new();
    let mut cfg = VmConfig::new(&kernel);
    cfg.initrd = std::env::var_os("VMM_STOCK_INITRD")
        .map(PathBuf::from)
        .or_else(|| Some(stock_dir().join("initramfs.cpio.gz")).filter(|p| p.exists()));
    let with_init = cfg.initrd.is_some();
    cfg.cmdline = "console=ttyS0 reboot=k panic=1 i8042.noaux i8042.nomux \
                   vmtest.cmd=uname,-r vmtest.exitport=0xf4"
        .into();
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
    if with_init {
        assert!(
            text.contains("VMTEST-EXIT=0"),
            "init did not finish:\n{text}"
        );
        assert_eq!(report.exit, VmExit::DebugExit(0), "{text}");
    }
}
