//! `vmm`'s own seccomp filter (the VM process): with the default (`--seccomp kill`), once the
//! VM is built and privileges dropped, every thread of `vmm` running the test guest is in
//! filter mode and the control socket still answers `info`, `pause`, `resume` and `halt`
//! (status 130); the self-test (`VMM_SECCOMP_SELFTEST=1`: `uname` right after the filter)
//! ends it with status 159 naming the call; `--seccomp log` lets the same call through and the
//! VM runs on; with `--keep-privileges` there is no filter (one info line says so).

use std::path::Path;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use vmm_tests::process::{waiting_test_vm_command, Daemon};
use vmm_tests::{ctl_request, kvm_usable, require_root, status_field, TempDir};

const SELFTEST: &str = "VMM_SECCOMP_SELFTEST";

/// `vmm` with the test guest kept up (`vmtest.wait`), `args`, `env` and a control socket.
fn start(dir: &TempDir, name: &str, args: &[&str], env: &[(&str, &str)]) -> (Daemon, String) {
    let api = dir.path().join(format!("{name}.sock"));
    let mut cmd = waiting_test_vm_command(Path::new(vmm_test_guest::ELF_PATH), &api, args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let d = Daemon::spawn(cmd, dir.path().join(format!("{name}.log")));
    (d, api.to_str().unwrap().to_string())
}

/// Waits until the guest waits (or `vmm` exits: false).
fn guest_waits(d: &mut Daemon) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !d.log().contains(vmm_test_guest::WAITING) {
        if !d.running() {
            return false;
        }
        assert!(
            Instant::now() < deadline,
            "the guest did not wait:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// Waits for `vmm` to exit by itself, its status.
fn exits(d: &mut Daemon) -> ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(30);
    while d.running() {
        assert!(Instant::now() < deadline, "vmm still runs:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    d.terminate(Duration::from_secs(1)).expect("status")
}

/// The `Seccomp:` mode of every thread of `pid`.
fn modes(pid: u32) -> Vec<(String, Option<u32>)> {
    let tasks: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    tasks
        .into_iter()
        .filter_map(|t| {
            let status = std::fs::read_to_string(t.join("status")).ok()?;
            let comm = std::fs::read_to_string(t.join("comm")).unwrap_or_default();
            Some((
                comm.trim().to_string(),
                status_field(&status, "Seccomp").parse().ok(),
            ))
        })
        .collect()
}

#[test]
fn vmm_runs_the_guest_filtered_in_every_thread_and_answers_its_control_socket() {
    require_root();
    if !kvm_usable() {
        return;
    }
    let dir = TempDir::new("vmseccomp");
    let (mut vm, api) = start(&dir, "kill", &[], &[]);
    assert!(guest_waits(&mut vm), "vmm exited:\n{}", vm.log());
    let threads = modes(vm.pid());
    assert!(threads.len() > 1, "{threads:?}");
    assert!(
        threads.iter().all(|(_, m)| *m == Some(2)),
        "{threads:?}\n{}",
        vm.log()
    );
    let info = ctl_request(Path::new(&api), "info");
    assert!(info.contains("\"ok\":true"), "{info}\n{}", vm.log());
    let pause = ctl_request(Path::new(&api), "pause");
    assert!(pause.contains("\"paused\""), "{pause}\n{}", vm.log());
    let resume = ctl_request(Path::new(&api), "resume");
    assert!(resume.contains("\"running\""), "{resume}\n{}", vm.log());
    assert!(ctl_request(Path::new(&api), "info").contains("\"ok\":true"));
    assert!(ctl_request(Path::new(&api), "halt").contains("\"ok\":true"));
    let status = exits(&mut vm);
    assert_eq!(status.code(), Some(130), "{}", vm.log());
    assert!(!vm.log().contains("forbidden"), "{}", vm.log());
    assert!(!Path::new(&api).exists(), "the control socket stays");
}

#[test]
fn a_call_off_the_list_ends_vmm_naming_it_and_log_mode_lets_it_run() {
    require_root();
    if !kvm_usable() {
        return;
    }
    let dir = TempDir::new("vmseccomp");
    let (mut vm, _) = start(&dir, "selftest", &[], &[(SELFTEST, "1")]);
    let status = exits(&mut vm);
    assert_eq!(status.code(), Some(159), "{}", vm.log());
    assert!(
        vm.log()
            .contains("vmm: seccomp: forbidden system call 63 (uname)"),
        "{}",
        vm.log()
    );

    let (mut vm, api) = start(&dir, "log", &["--seccomp", "log"], &[(SELFTEST, "1")]);
    assert!(guest_waits(&mut vm), "vmm exited:\n{}", vm.log());
    assert!(modes(vm.pid()).iter().all(|(_, m)| *m == Some(2)));
    assert!(ctl_request(Path::new(&api), "info").contains("\"ok\":true"));
    assert!(ctl_request(Path::new(&api), "halt").contains("\"ok\":true"));
    assert_eq!(exits(&mut vm).code(), Some(130), "{}", vm.log());
}

#[test]
fn no_filter_with_seccomp_off_or_kept_privileges() {
    require_root();
    if !kvm_usable() {
        return;
    }
    let dir = TempDir::new("vmseccomp");
    for (name, args) in [
        ("off", &["--seccomp", "off"][..]),
        ("keep", &["--keep-privileges"][..]),
    ] {
        let (mut vm, api) = start(&dir, name, args, &[(SELFTEST, "1")]);
        assert!(guest_waits(&mut vm), "{name}: vmm exited:\n{}", vm.log());
        let threads = modes(vm.pid());
        assert!(
            threads.iter().all(|(_, m)| *m == Some(0)),
            "{name}: {threads:?}"
        );
        if name == "keep" {
            assert!(
                vm.log().contains("seccomp: no filter, privileges are kept"),
                "{}",
                vm.log()
            );
        }
        assert!(ctl_request(Path::new(&api), "halt").contains("\"ok\":true"));
        assert_eq!(exits(&mut vm).code(), Some(130), "{name}: {}", vm.log());
    }
}
