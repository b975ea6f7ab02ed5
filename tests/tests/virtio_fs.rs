//! virtio-fs on the real-Linux tier: Linux 6.1 built for PVM (resources/kernel) mounts host
//! directories that `vmm --share` serves through a real virtiofsd it starts, and `vmm run`
//! boots the host's own root file system read-only with the current directory writable.
//!
//! A boot costs one to two minutes here (the kernel is emulated at ~1 MIPS), so each boot does
//! as much as it can: one `--share` boot reads, copies and writes through a writable share and
//! is refused a write through a read-only one.

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use vmm_tests::guest::{built, linux_steps_command, module_tree, pvm_words, test_bytes, Guest};
use vmm_tests::process::vmm_bin;
use vmm_tests::TempDir;

/// Boot to the end of the test steps; PVM measured ~60-90 s to /init.
const BOOT_TIMEOUT: Duration = Duration::from_secs(400);
/// Size of the file the guest copies: every byte value, incompressible, several FUSE reads.
const FILE_LEN: usize = 300 * 1024;

/// Writes where CI's log shows it (the harness captures `eprintln!` of passing tests).
fn say(text: &str) {
    let _ = writeln!(std::io::stderr(), "{text}");
}

/// Whether this machine can run the tier (KVM usable); fails where virtiofsd is missing.
fn usable() -> Option<PathBuf> {
    if let Err(e) = vmm_vmm::kvm::device_usable() {
        say(&format!("SKIPPED: /dev/kvm is not usable here ({e})"));
        return None;
    }
    // Not a skip: virtiofsd is software that resources/setup.sh installs.
    let found = vmm_tests::process::find_virtiofsd();
    assert!(
        found.is_some(),
        "virtiofsd is not installed (resources/setup.sh installs it)"
    );
    found
}

#[test]
fn share_reads_writes_and_readonly_refuses() {
    let Some(_) = usable() else { return };
    let dir = TempDir::new("fs");
    let rw = dir.path().join("rw");
    let ro = dir.path().join("ro");
    std::fs::create_dir_all(&rw).unwrap();
    std::fs::create_dir_all(&ro).unwrap();
    let data = test_bytes(FILE_LEN, 0x2545_f491_4f6c_dd1d);
    std::fs::write(rw.join("in.bin"), &data).unwrap();
    let hello = "written-by-the-host";
    std::fs::write(ro.join("hello.txt"), format!("{hello}\n")).unwrap();

    let steps = "mount:rw:/tmp/rw,mount:ro:/tmp/ro,cat:/tmp/ro/hello.txt,\
                 copy:/tmp/rw/in.bin:/tmp/rw/out.bin,write:/tmp/rw/note.txt:written-by-the-guest,\
                 nowrite:/tmp/ro/nope.txt";
    let mut cmd = linux_steps_command(steps);
    cmd.arg("--share")
        .arg(format!("{},tag=rw", rw.display()))
        .arg("--share")
        .arg(format!("{},tag=ro,readonly=on", ro.display()))
        .env("RUST_LOG", "warn");
    let mut guest = Guest::command(cmd);
    guest.expect("vmtest: /init started", BOOT_TIMEOUT);
    let code = guest.wait_process(Duration::from_secs(300));
    say(&format!(
        "--share: timeline (host wall clock from vmm's start)\n{}",
        guest.timeline(&[
            ("kernel banner", "Linux version"),
            ("/init started", "vmtest: /init started"),
            ("mounted", "vmtest: mounted virtio-fs ro"),
            ("steps done", "VMTEST-EXIT="),
        ])
    ));
    let console = guest.console();
    assert_eq!(code, Some(0), "exit status\n{console}");
    assert!(
        console.contains(&format!(
            "vmtest: cat /tmp/ro/hello.txt:\n{hello}\nvmtest: cat end"
        )),
        "the guest printed the host's file\n{console}"
    );
    let out = std::fs::read(rw.join("out.bin")).expect("the guest's copy is on the host");
    assert!(out == data, "the guest's copy differs from the host's file");
    assert_eq!(
        std::fs::read_to_string(rw.join("note.txt")).expect("the guest's note is on the host"),
        "written-by-the-guest\n"
    );
    assert!(
        console.contains("vmtest: nowrite: writing /tmp/ro/nope.txt failed, as it must"),
        "{console}"
    );
    assert!(
        !ro.join("nope.txt").exists(),
        "the read-only share was written"
    );
    // virtiofsd ends with the VM: no daemon is left sharing our directories.
    let ps = Command::new("ps").args(["-eo", "args"]).output().unwrap();
    let ps = String::from_utf8_lossy(&ps.stdout);
    assert!(
        !ps.lines()
            .any(|l| l.contains("virtiofsd") && l.contains(dir.path().to_str().unwrap())),
        "a virtiofsd outlived the VM:\n{ps}"
    );
}

/// `vmm run` with the PVM test kernel, in `cwd`: (exit status, stdout, stderr).
fn vmm_run(cwd: &std::path::Path, extra: &[&str], cmd: &[&str]) -> (Option<i32>, String, String) {
    let start = std::time::Instant::now();
    let out = Command::new(vmm_bin())
        .current_dir(cwd)
        .arg("run")
        .arg("--kernel")
        .arg(built("linux/vmlinux"))
        .args(["--append", &pvm_words(), "--mem", "256", "--timeout", "300"])
        .args(extra)
        .arg("--")
        .args(cmd)
        .env("RUST_LOG", "error")
        .output()
        .expect("run vmm run");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    say(&format!(
        "vmm run -- {}: status {:?} after {:.1} s",
        cmd.join(" "),
        out.status.code(),
        start.elapsed().as_secs_f64()
    ));
    (out.status.code(), stdout, stderr)
}

#[test]
fn run_exits_with_the_commands_status_and_writes_only_where_it_may() {
    let Some(_) = usable() else { return };
    let dir = TempDir::new("fsrun");
    let extra = TempDir::new("fsextra");
    std::fs::write(extra.path().join("x.txt"), "extra-share\n").unwrap();
    // In the current directory (writable), in a --share (writable, at its host path), on the
    // tmpfs /tmp; the root (read-only) must refuse; then exit 7.
    let script = format!(
        "echo in-cwd > out.txt && cat {e}/x.txt > {e}/y.txt && echo t > /tmp/t && \
         if echo no 2>/dev/null > /vmm-run-must-not-exist; then exit 1; fi; exit 7",
        e = extra.path().display()
    );
    let share = extra.path().display().to_string();
    let (code, stdout, stderr) = vmm_run(dir.path(), &["--share", &share], &["sh", "-c", &script]);
    let ctx = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_eq!(code, Some(7), "{ctx}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("out.txt"))
            .ok()
            .as_deref(),
        Some("in-cwd\n"),
        "{ctx}"
    );
    assert_eq!(
        std::fs::read_to_string(extra.path().join("y.txt"))
            .ok()
            .as_deref(),
        Some("extra-share\n"),
        "{ctx}"
    );
    assert!(!std::path::Path::new("/vmm-run-must-not-exist").exists());
}

#[test]
fn run_prints_a_host_file() {
    let Some(_) = usable() else { return };
    let dir = TempDir::new("fscat");
    let text = "line one\n\ttabbed line two\nlast line without a newline";
    std::fs::write(dir.path().join("host.txt"), text).unwrap();
    let (code, stdout, stderr) = vmm_run(dir.path(), &[], &["cat", "host.txt"]);
    assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout.contains(text),
        "stdout lacks the file byte for byte:\n{stdout:?}\nstderr:\n{stderr}"
    );
}

/// A kernel that needs modules boots through an initramfs `vmm run` builds from its module
/// tree: the test kernel's one module (dummy, resources/kernel/config.fragment) is loaded by
/// the initramfs's init before it mounts the host's root and hands over to the run's init.
#[test]
fn run_loads_modules_through_its_initramfs() {
    let Some(_) = usable() else { return };
    let dir = TempDir::new("fsmod");
    let tree = module_tree("linux/modules/lib/modules");
    let tree = tree.to_str().unwrap();
    let (code, stdout, stderr) = vmm_run(
        dir.path(),
        &["--modules", tree, "--module", "dummy"],
        &["cat", "/proc/modules"],
    );
    assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout.lines().any(|l| l.starts_with("dummy ")),
        "dummy is not loaded:\n{stdout}\nstderr:\n{stderr}"
    );
}
