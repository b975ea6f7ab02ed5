//! `affinity=CPUS`: the device's workers (`vring_worker`, one per queue pair) run on the CPUs
//! given, the backend's other threads where the process may; frames still cross byte-exact
//! under the default seccomp filter (the worker pins itself before its own filter closes
//! in); a CPU the process may not run on (past the machine's, or outside a `taskset` around
//! it) is refused at start-up, naming the option, with exit status 2.

use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use vmm_net::backend::affinity;
use vmm_net::config::{CpuSet, MAX_CPUS};
use vmm_tests::process::{fd_net_backend_opts, vmm_bin};
use vmm_tests::rig::{transport_pair, Rig};
use vmm_tests::{assert_workers_on, TempDir};

#[test]
fn the_workers_run_on_the_cpus_given_and_frames_cross_under_the_filter() {
    let own = affinity::allowed().expect("this process's CPUs");
    if own.cpus().len() < 2 {
        // Pinned to the one CPU there is, the workers could not be told from the rest.
        eprintln!("skipped: this process may run on one CPU only ({own}); pinning needs two");
        return;
    }
    let last = *own.cpus().last().unwrap();
    let dir = TempDir::new("aff");
    let (theirs, peer) = transport_pair();
    let (mut d, sock) = fd_net_backend_opts(dir.path(), theirs, None, &format!(",affinity={last}"));
    let stream = UnixStream::connect(&sock).expect("connect");
    let mut rig = Rig::connect(stream, peer);
    // Both ways, byte-exact: the workers took events, so each pinned itself.
    rig.frames_flow();
    assert_workers_on(d.pid(), &last.to_string(), &own.to_string(), &|| d.log());
    assert!(
        d.log().contains(&format!("workers on CPUs {last}")),
        "the start-up line names the CPUs:\n{}",
        d.log()
    );
    drop(rig);
    d.stops_cleanly("fd");
}

/// `vmm net-backend` with `affinity={asked}`, run on `cpu` (a `taskset` around it) if given:
/// its exit status and standard error.
fn refused(asked: &str, cpu: Option<u16>) -> (Option<i32>, String) {
    let dir = TempDir::new("affno");
    let mut cmd = Command::new(vmm_bin());
    cmd.arg("net-backend")
        .arg("--socket")
        .arg(dir.path().join("net.sock"))
        .arg(format!("vec0:transport=fd,fd=0,affinity={asked}"))
        .stdin(Stdio::null());
    if let Some(cpu) = cpu {
        let set = CpuSet::new([cpu]).expect("a CPU below MAX_CPUS");
        // SAFETY: between fork and exec the closure only calls affinity::pin, which fills a
        // bit array on the stack from the set built before the fork and calls
        // sched_setaffinity: no allocation, no lock, async-signal-safe.
        unsafe {
            cmd.pre_exec(move || affinity::pin(&set));
        }
    }
    let out = cmd.output().expect("run vmm net-backend");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_cpu_the_process_may_not_run_on_is_refused_at_start_up() {
    let own = affinity::allowed().expect("this process's CPUs");
    // Past the CPUs this process may run on (the machine's, its cgroup's).
    if let Some(outside) = (0..MAX_CPUS).find(|c| own.cpus().binary_search(c).is_err()) {
        let asked = format!("{}-{outside}", own.cpus()[0]);
        let (code, err) = refused(&asked, None);
        assert_eq!(code, Some(2), "{err}");
        assert!(
            err.contains(&format!(
                "vec0: option `affinity={}`",
                CpuSet::new(own.cpus()[0]..=outside).unwrap()
            )) && err.contains(&format!(
                "CPU {outside} is not one this process may run on (it may run on {own})"
            )),
            "{err}"
        );
    }
    // Inside the machine's CPUs, outside a taskset around the backend.
    if own.cpus().len() >= 2 {
        let (first, last) = (own.cpus()[0], *own.cpus().last().unwrap());
        let (code, err) = refused(&last.to_string(), Some(first));
        assert_eq!(code, Some(2), "{err}");
        assert!(
            err.contains(&format!(
                "CPU {last} is not one this process may run on (it may run on {first})"
            )),
            "{err}"
        );
    } else {
        eprintln!("skipped the taskset case: this process may run on one CPU only ({own})");
    }
    // A bad list is the grammar's: named, status 2.
    let (code, err) = refused("3-1", None);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("`affinity=3-1`: range 3-1 runs backwards"),
        "{err}"
    );
}
