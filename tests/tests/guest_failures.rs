//! A guest kernel's failure is the VMM's failure, at once, whatever its command line says: a
//! panic caught from the console banner (no pvpanic, no `panic=`: the kernel would spin
//! forever) and through pvpanic (`panic=1 reboot=k`: the kernel would reboot, which alone looks
//! like a clean exit). `--timeout` ends a guest that runs too long with 124. On the real-Linux
//! tier (resources/kernel), whose `/init` step `panic` makes PID 1 exit.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use vmm_tests::guest::{built, Guest};
use vmm_tests::process::vmm_bin;
use vmm_tests::TempDir;

/// Exit status for a guest kernel failure (vmm_vmm::EXIT_GUEST_FAILED).
const PANIC_STATUS: i32 = 134;
const PANIC_LINE: &str =
    "vmm: guest kernel panicked: Kernel panic - not syncing: Attempted to kill init!";

fn linux(args: &[&str], cmdline: &str) -> Guest {
    let words = std::fs::read_to_string(built("linux/cmdline")).expect("read linux/cmdline");
    let mut cmd = std::process::Command::new(vmm_bin());
    cmd.arg("--kernel")
        .arg(built("linux/vmlinux"))
        .arg("--initrd")
        .arg(built("linux/initramfs.cpio"))
        .args(["--mem", "128"])
        .args(args)
        .arg("--cmdline")
        .arg(format!("console=ttyS0 {} {cmdline}", words.trim()));
    Guest::command(cmd)
}

/// Waits for the panic banner, then for the VMM; checks the status, the line, and that the
/// VMM ended within `within` of the banner.
fn assert_fails_at_once(mut guest: Guest, within: Duration) -> Guest {
    guest.expect("vmtest: ending /init", Duration::from_secs(400));
    guest.expect("Kernel panic - not syncing", Duration::from_secs(120));
    let banner = guest.seen_at("Kernel panic - not syncing").unwrap();
    let code = guest.wait_process(Duration::from_secs(60));
    let ended = guest.since_start();
    let console = guest.console();
    assert_eq!(code, Some(PANIC_STATUS), "{console}");
    assert!(
        console.contains(PANIC_LINE),
        "no `{PANIC_LINE}`:\n{console}"
    );
    assert!(
        ended - banner < within,
        "the VMM ended {:?} after the panic banner (allowed {within:?})\n{console}",
        ended - banner
    );
    let _ = writeln!(
        std::io::stderr(),
        "panic banner at {:.1} s, vmm exited {:.1} s later",
        banner.as_secs_f64(),
        (ended - banner).as_secs_f64()
    );
    guest
}

/// No pvpanic device and no `panic=`: the kernel prints its banner and spins forever. The
/// console watch ends the VM after the trace's grace (or its end marker), and the console log
/// has everything the guest printed.
#[test]
fn a_panic_without_pvpanic_or_panic_param_fails_from_the_console() {
    if !vmm_tests::kvm_usable() {
        return;
    }
    let dir = TempDir::new("pan");
    let log: PathBuf = dir.path().join("console.log");
    let guest = linux(
        &[
            "--no-pvpanic",
            "--timeout",
            "600",
            "--console-log",
            log.to_str().unwrap(),
        ],
        "vmtest.steps=panic",
    );
    let guest = assert_fails_at_once(guest, vmm_vmm::watch::GRACE + Duration::from_secs(3));
    let logged = std::fs::read_to_string(&log).expect("console log");
    assert!(
        logged.contains("Kernel panic - not syncing: Attempted to kill init!")
            && logged.contains("Linux version"),
        "console log:\n{logged}\nconsole:\n{}",
        guest.console()
    );
}

/// pvpanic with `panic=1 reboot=k`: the kernel would reboot through the i8042 (status 0); its
/// panic notifier reaches pvpanic first and the VMM ends with the panic status.
#[test]
fn a_panic_with_pvpanic_and_reboot_fails_at_once() {
    if !vmm_tests::kvm_usable() {
        return;
    }
    let guest = linux(&[], "reboot=k panic=1 vmtest.steps=panic");
    let guest = assert_fails_at_once(guest, Duration::from_secs(3));
    assert!(
        !guest.console().contains("Rebooting in"),
        "pvpanic stopped it before the reboot:\n{}",
        guest.console()
    );
}

/// `--timeout` on a guest still booting: 124 and a line naming the option, close to the limit.
#[test]
fn timeout_ends_a_guest_that_runs_too_long() {
    if !vmm_tests::kvm_usable() {
        return;
    }
    let limit = 12.0;
    // The early console prints the kernel's first lines at once; the real console starts
    // late enough on an emulated CPU (17 s on a slow host) to miss the limit.
    let mut guest = linux(&["--timeout", "12"], "earlyprintk=serial,ttyS0,115200");
    let code = guest.wait_process(Duration::from_secs(60));
    let took = guest.since_start().as_secs_f64();
    let console = guest.console();
    assert_eq!(code, Some(124), "{console}");
    assert!(
        console.contains("vmm: timeout: the guest was still running after --timeout 12"),
        "{console}"
    );
    assert!(
        (limit..limit + 2.0).contains(&took),
        "ended after {took:.2} s for --timeout 12\n{console}"
    );
    assert!(
        console.contains("Linux version"),
        "the console came through: {console}"
    );
}
