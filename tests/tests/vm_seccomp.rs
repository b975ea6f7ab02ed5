//! `vmm`'s own seccomp filter (the VM process): with the default (`--seccomp kill`), once the
//! VM is built and privileges dropped, every thread of `vmm` running the test guest is in
//! filter mode and the control socket still answers `info`, `pause`, `resume` and `halt`
//! (status 130), each vCPU thread with a filter of its own on top; the self-test
//! (`VMM_SECCOMP_SELFTEST=control`: `uname` right after the process's filter;
//! `VMM_SECCOMP_SELFTEST=vcpu`: `listen`, allowed to the process, from the vCPU thread) ends it
//! with status 159 naming the call; `--seccomp log` lets the same call through and the VM runs
//! on; with `--keep-privileges` only the vCPUs are filtered (one info line says so).

use std::path::Path;
use std::process::ExitStatus;
use std::time::Duration;

use vmm_tests::process::{test_vm_command_net, waiting_test_vm_command, Daemon};
use vmm_tests::{
    ctl_request, kvm_usable, require_root, status_field, thread_cpus, thread_statuses, TempDir,
};

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
    d.wait_for_log(vmm_test_guest::WAITING, Duration::from_secs(60))
}

/// Waits for `vmm` to exit by itself, its status.
fn exits(d: &mut Daemon) -> ExitStatus {
    d.wait_exit(Duration::from_secs(30), "vmm")
}

/// The name, `Seccomp:` mode and `Seccomp_filters:` count of every thread of `pid`.
fn modes(pid: u32) -> Vec<(String, Option<u32>, Option<u32>)> {
    thread_statuses(pid)
        .into_iter()
        .map(|(comm, status)| {
            (
                comm,
                status_field(&status, "Seccomp").parse().ok(),
                status_field(&status, "Seccomp_filters").parse().ok(),
            )
        })
        .collect()
}

/// A vCPU thread, or the worker KVM starts for the VM from a vCPU's first `KVM_RUN`
/// (`kvm-nx-lpage-recovery`, a task of the process that inherits that vCPU's filters).
fn vcpu_made(comm: &str) -> bool {
    comm.starts_with("vcpu") || comm.starts_with("kvm-")
}

/// How many filters this process has (the test harness may run under one).
fn our_filters() -> u32 {
    let ours = std::fs::read_to_string("/proc/self/status").unwrap();
    status_field(&ours, "Seccomp_filters").parse().unwrap_or(0)
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
    // Every thread has the process's filter; the vCPU its own on top.
    let threads = modes(vm.pid());
    assert!(threads.len() > 1, "{threads:?}");
    let process = our_filters() + 1;
    for (comm, mode, filters) in &threads {
        assert_eq!(*mode, Some(2), "{comm}: {threads:?}\n{}", vm.log());
        let own = u32::from(vcpu_made(comm));
        assert_eq!(*filters, Some(process + own), "{comm}: {threads:?}");
    }
    assert!(threads.iter().any(|(c, ..)| c == "vcpu0"), "{threads:?}");
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

/// The in-process NIC's threads confine themselves once they act: the test guest ARPs for
/// the user network's gateway (libslirp answers), then waits; by then the relay from the
/// frontend, the vhost-user handler (named after the device) and the datapath worker each
/// carry a filter of their own on top of the process's, like the vCPU. With two CPUs or more
/// the NIC has `affinity=` the last: the worker pinned itself under the process's filter,
/// and only the worker is pinned.
#[test]
fn the_nics_threads_are_confined_once_the_guest_uses_it() {
    require_root();
    if !kvm_usable() {
        return;
    }
    let own = vmm_net::backend::affinity::allowed().unwrap();
    let pinned = (own.cpus().len() >= 2).then(|| *own.cpus().last().unwrap());
    let net = pinned.map_or("user".to_string(), |cpu| format!("user,affinity={cpu}"));
    let dir = TempDir::new("vmseccomp");
    let api = dir.path().join("arp.sock");
    let cmd = test_vm_command_net(
        Path::new(vmm_test_guest::ELF_PATH),
        &api,
        "console=ttyS0 vmtest.arp=10.0.2.15,10.0.2.2 vmtest.wait",
        &net,
        &[],
    );
    let mut vm = Daemon::spawn(cmd, dir.path().join("arp.log"));
    assert!(guest_waits(&mut vm), "vmm exited:\n{}", vm.log());
    let threads = modes(vm.pid());
    let process = our_filters() + 1;
    let confined = ["vring_worker", "vec0", "vu-relay"];
    for (comm, mode, filters) in &threads {
        assert_eq!(*mode, Some(2), "{comm}: {threads:?}");
        let own = u32::from(vcpu_made(comm) || confined.contains(&comm.as_str()));
        assert_eq!(
            *filters,
            Some(process + own),
            "{comm}: {threads:?}\n{}",
            vm.log()
        );
    }
    for name in confined {
        assert!(
            threads.iter().any(|(c, ..)| c == name),
            "{name}: {threads:?}"
        );
    }
    if let Some(cpu) = pinned {
        // Not every thread: a task KVM starts in the process (kvm-nx-lpage-recovery) has the
        // affinity the kernel gives it.
        let cpus = thread_cpus(vm.pid());
        let of = |name: &str| {
            let found: Vec<_> = cpus.iter().filter(|(c, _)| c == name).collect();
            assert!(!found.is_empty(), "{name}: {cpus:?}");
            found.iter().map(|(_, l)| l.clone()).collect::<Vec<_>>()
        };
        for l in of("vring_worker") {
            assert_eq!(l, cpu.to_string(), "{cpus:?}\n{}", vm.log());
        }
        for name in ["vcpu0", "vec0", "vu-relay", "vmm"] {
            for l in of(name) {
                assert_eq!(l, own.to_string(), "{name}: {cpus:?}");
            }
        }
    }
    assert!(ctl_request(&api, "halt").contains("\"ok\":true"));
    assert_eq!(exits(&mut vm).code(), Some(130), "{}", vm.log());
    assert!(!vm.log().contains("forbidden"), "{}", vm.log());
}

#[test]
fn a_call_off_the_list_ends_vmm_naming_it_and_log_mode_lets_it_run() {
    require_root();
    if !kvm_usable() {
        return;
    }
    let dir = TempDir::new("vmseccomp");
    let (mut vm, _) = start(&dir, "selftest", &[], &[(SELFTEST, "control")]);
    let status = exits(&mut vm);
    assert_eq!(status.code(), Some(159), "{}", vm.log());
    assert!(
        vm.log()
            .contains("vmm: seccomp: forbidden system call 63 (uname)"),
        "{}",
        vm.log()
    );

    // The vCPU's own filter: `listen`, which the process's filter allows, ends it too.
    let (mut vm, _) = start(&dir, "vcpu", &[], &[(SELFTEST, "vcpu")]);
    let status = exits(&mut vm);
    assert_eq!(status.code(), Some(159), "{}", vm.log());
    let want = format!(
        "vmm: seccomp: forbidden system call {} (listen)",
        libc::SYS_listen
    );
    assert!(vm.log().lines().any(|l| l == want), "{}", vm.log());
    assert!(
        vm.log().contains("VMM_SECCOMP_SELFTEST=vcpu"),
        "{}",
        vm.log()
    );

    let (mut vm, api) = start(&dir, "log", &["--seccomp", "log"], &[(SELFTEST, "control")]);
    assert!(guest_waits(&mut vm), "vmm exited:\n{}", vm.log());
    assert!(modes(vm.pid()).iter().all(|(_, m, _)| *m == Some(2)));
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
        let (mut vm, api) = start(&dir, name, args, &[(SELFTEST, "control")]);
        assert!(guest_waits(&mut vm), "{name}: vmm exited:\n{}", vm.log());
        // With privileges kept the vCPU still confines itself; nothing else is filtered.
        let threads = modes(vm.pid());
        for (comm, mode, _) in &threads {
            let want = if name == "keep" && vcpu_made(comm) {
                2
            } else {
                0
            };
            assert_eq!(*mode, Some(want), "{name}: {comm}: {threads:?}");
        }
        if name == "keep" {
            assert!(
                vm.log()
                    .contains("no process-wide filter, privileges are kept"),
                "{}",
                vm.log()
            );
        }
        assert!(ctl_request(Path::new(&api), "halt").contains("\"ok\":true"));
        assert_eq!(exits(&mut vm).code(), Some(130), "{name}: {}", vm.log());
    }
}
