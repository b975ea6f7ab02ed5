//! `vmm net-backend`'s seccomp filter: with the default (`--seccomp kill`) frames still cross
//! fd, raw, tap and pcap (receive-only) byte-exact, and user networking (libslirp) answers the
//! guest's ARP, while every thread of the backend is in filter mode; a system
//! call off the allow-list ends it with one line naming the call (the self-test:
//! `VMM_SECCOMP_SELFTEST=control` makes the backend call `uname` right after installing the
//! filter); the datapath worker, the vhost-user handler and the relay each have a filter of
//! their own on top, narrower (`VMM_SECCOMP_SELFTEST=worker|handler|relay`: `listen`, allowed
//! to the process, ends it when that thread calls it);
//! with `--seccomp log` the same call is allowed (the kernel logs it) and the backend serves
//! on; `--seccomp off` installs nothing.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vmm_tests::netns::NetNs;
use vmm_tests::peer::{test_frame, PacketPeer, TEST_ETHERTYPE};
use vmm_tests::process::{fd_net_backend, net_backend_command, vmm_bin, Daemon};
use vmm_tests::rig::{
    frontend, guest_receives, guest_receives_matching, guest_sends, guest_sends_frame,
    transport_pair, Rig, HDR, TX_BUF,
};
use vmm_tests::{require_root, status_field, TempDir};

const GUEST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x41];
const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x42];
const SELFTEST: &str = "VMM_SECCOMP_SELFTEST";

/// `vmm net-backend ARGS... --socket SOCK SPEC` (in `ns` if given) with `env`.
fn backend_cmd(
    ns: Option<&NetNs>,
    sock: &Path,
    spec: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> Command {
    let mut cmd = net_backend_command(ns, sock, spec, args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

fn started(cmd: Command, sock: &Path, log: PathBuf) -> Daemon {
    let mut d = Daemon::spawn(cmd, log);
    d.wait_for_path(sock, Duration::from_secs(10));
    d
}

/// A number field of a /proc status file.
fn seccomp_field(status: &str, name: &str) -> Option<u32> {
    status_field(status, name).parse().ok()
}

/// Every thread of `pid` is in seccomp filter mode (2) with the process's filter (one more
/// than we have), and the threads that read a frontend's or a peer's input with their own on
/// top, by name: the datapath (`vring_worker`), the vhost-user handler (named after the
/// device, `device`) and the relay (`vu-relay`); they all acted by the time this is called.
/// `None`: no frontend came yet, so no thread of those kinds exists.
fn assert_filtered(pid: u32, device: Option<&str>, log: &dyn Fn() -> String) {
    let ours = std::fs::read_to_string("/proc/self/status").unwrap();
    let process = seccomp_field(&ours, "Seccomp_filters").unwrap_or(0) + 1;
    let tasks: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(!tasks.is_empty(), "no process {pid}:\n{}", log());
    let mut confined = Vec::new();
    for task in tasks {
        let Ok(status) = std::fs::read_to_string(task.join("status")) else {
            continue;
        };
        let comm = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
        let comm = comm.trim();
        assert_eq!(
            seccomp_field(&status, "Seccomp"),
            Some(2),
            "{} ({comm}):\n{status}\n{}",
            task.display(),
            log()
        );
        let own = comm == "vring_worker" || Some(comm) == device || comm == "vu-relay";
        assert_eq!(
            seccomp_field(&status, "Seccomp_filters"),
            Some(process + u32::from(own)),
            "{} ({comm})",
            task.display()
        );
        if own {
            confined.push(comm.to_string());
        }
    }
    confined.sort();
    confined.dedup();
    let mut want: Vec<_> = match device {
        Some(d) => vec![d, "vring_worker", "vu-relay"],
        None => Vec::new(),
    };
    want.sort();
    assert_eq!(confined, want, "{}", log());
}

#[test]
fn filtered_backend_moves_frames_over_fd() {
    let dir = TempDir::new("scfd");
    let (theirs, peer) = transport_pair();
    let (mut d, sock) = fd_net_backend(dir.path(), theirs, None);
    let stream = UnixStream::connect(&sock).expect("connect");
    let mut rig = Rig::connect(stream, peer);
    rig.frames_flow();
    // The connection's handler and vring worker threads, created after the filter, have it.
    assert_filtered(d.pid(), Some("vec0"), &|| d.log());
    d.stops_cleanly("fd");
    drop(rig);
}

#[test]
fn filtered_backend_moves_frames_over_raw_tap_pcap_and_xdp() {
    require_root();
    let dir = TempDir::new("scnet");
    for kind in ["raw", "tap", "pcap", "xdp"] {
        let ns = NetNs::new();
        let sock = dir.path().join(format!("{kind}.sock"));
        let (spec, ifname) = match kind {
            "raw" | "xdp" => {
                let (peer_end, dp_end) = ns.veth_pair(None);
                (format!("vec0:transport={kind},ifname={dp_end}"), peer_end)
            }
            "pcap" => {
                let (peer_end, dp_end) = ns.veth_pair(None);
                (
                    format!(
                        "eth0=pcap,{dp_end},ether proto {:#06x},nopromisc",
                        u16::from_be_bytes(TEST_ETHERTYPE)
                    ),
                    peer_end,
                )
            }
            _ => {
                let tap = ns.tap(None);
                (format!("vec0:transport=tap,ifname={tap}"), tap)
            }
        };
        let cmd = backend_cmd(Some(&ns), &sock, &spec, &[], &[]);
        let mut d = started(cmd, &sock, dir.path().join(format!("{kind}.log")));
        let wire = ns.enter(|| PacketPeer::open(&ifname, false));
        let mut rig = frontend(&sock);
        ns.wait_link_up(&ifname);
        let mut rx = 0;
        for round in 0..2u8 {
            let sent = guest_sends(&mut rig, u16::from(round), 10 + round, GUEST_MAC, HOST_MAC);
            // pcap is receive-only: what the guest sends is refused (and counted).
            if kind != "pcap" {
                let got = wire.recv_matching(Duration::from_secs(5), |f| f == sent);
                assert!(got.is_some(), "{kind}: the guest's frame not on the wire");
            }
            let frame = test_frame(600, HOST_MAC, GUEST_MAC, 20 + round);
            wire.send(&frame);
            guest_receives(&mut rig, &mut rx, &frame);
        }
        let device = if kind == "pcap" { "eth0" } else { "vec0" };
        assert_filtered(d.pid(), Some(device), &|| d.log());
        drop(rig);
        d.stops_cleanly(kind);
    }
}

/// libslirp and glib under the filter: the guest's ARP request for the gateway is answered.
#[test]
fn filtered_user_networking_answers_arp() {
    let dir = TempDir::new("scuser");
    let sock = dir.path().join("user.sock");
    let cmd = backend_cmd(None, &sock, "vec0:transport=user", &[], &[]);
    let mut d = started(cmd, &sock, dir.path().join("user.log"));
    let mut rig = frontend(&sock);
    let mut rx = 0;
    for round in 0..2u16 {
        let mut arp = vec![0xff; 6];
        arp.extend_from_slice(&GUEST_MAC);
        arp.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
        arp.extend_from_slice(&GUEST_MAC);
        arp.extend_from_slice(&[10, 0, 2, 15, 0, 0, 0, 0, 0, 0, 10, 0, 2, 2]);
        arp.resize(60, 0);
        guest_sends_frame(&mut rig, round, &arp);
        let reply = guest_receives_matching(&mut rig, &mut rx, |f| {
            f.len() >= 42 && f[12..14] == [0x08, 0x06] && f[20..22] == [0, 2]
        });
        assert_eq!(&reply[28..32], &[10, 0, 2, 2], "the gateway's reply");
        assert_eq!(&reply[0..6], &GUEST_MAC);
    }
    assert_filtered(d.pid(), Some("vec0"), &|| d.log());
    drop(rig);
    d.stops_cleanly("user");
}

#[test]
fn a_forbidden_call_ends_the_backend_naming_it() {
    let dir = TempDir::new("sckill");
    let sock = dir.path().join("net.sock");
    let mut child = backend_cmd(
        None,
        &sock,
        "vec0:transport=user",
        &[],
        &[(SELFTEST, "control")],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the backend survived a forbidden call");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(159), "{err}");
    let want = format!(
        "vmm: seccomp: forbidden system call {} (uname)",
        libc::SYS_uname
    );
    assert!(err.lines().any(|l| l == want), "{err}");
}

/// Each thread kind's own filter: with `VMM_SECCOMP_SELFTEST=KIND` the first thread of that
/// kind calls `listen` right after confining itself, a call the process's filter allows and
/// the kind's does not, and the backend ends with status 159 naming it. The relay confines
/// itself at the frontend's first message, the handler at the first that reaches the device,
/// the datapath worker at its first event (here the guest's frame).
#[test]
fn each_thread_kind_has_a_filter_of_its_own() {
    let dir = TempDir::new("sckinds");
    for kind in ["relay", "handler", "worker"] {
        let sock = dir.path().join(format!("{kind}.sock"));
        let cmd = backend_cmd(None, &sock, "vec0:transport=user", &[], &[(SELFTEST, kind)]);
        let mut d = started(cmd, &sock, dir.path().join(format!("{kind}.log")));
        // The frontend fails once the backend is gone: its thread is left to end by itself.
        std::thread::spawn(move || {
            let mut rig = frontend(&sock);
            rig.offer(1, 0, TX_BUF, (HDR + 60) as u32, 0);
            std::thread::sleep(Duration::from_secs(10));
        });
        let status = d.wait_exit(
            Duration::from_secs(10),
            &format!("{kind}: the backend survived its thread's forbidden call"),
        );
        assert_eq!(status.code(), Some(159), "{kind}:\n{}", d.log());
        let want = format!(
            "vmm: seccomp: forbidden system call {} (listen)",
            libc::SYS_listen
        );
        assert!(d.log().lines().any(|l| l == want), "{kind}:\n{}", d.log());
        assert!(
            d.log().contains(&format!("{SELFTEST}={kind}")),
            "{kind}:\n{}",
            d.log()
        );
    }
}

#[test]
fn log_mode_allows_the_call_and_off_installs_nothing() {
    let dir = TempDir::new("sclog");
    let sock = dir.path().join("log.sock");
    let cmd = backend_cmd(
        None,
        &sock,
        "vec0:transport=user",
        &["--seccomp", "log"],
        &[(SELFTEST, "control")],
    );
    let d = started(cmd, &sock, dir.path().join("log.log"));
    std::thread::sleep(Duration::from_millis(300));
    assert_filtered(d.pid(), None, &|| d.log());
    assert!(d.log().contains(SELFTEST), "{}", d.log());
    let mut d = d;
    assert!(d.running(), "{}", d.log());
    let status = d.terminate(Duration::from_secs(5));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", d.log());

    let sock = dir.path().join("off.sock");
    let cmd = backend_cmd(
        None,
        &sock,
        "vec0:transport=user",
        &["--seccomp", "off"],
        &[],
    );
    let mut d = started(cmd, &sock, dir.path().join("off.log"));
    let ours = std::fs::read_to_string("/proc/self/status").unwrap();
    let theirs = std::fs::read_to_string(format!("/proc/{}/status", d.pid())).unwrap();
    assert_eq!(
        seccomp_field(&theirs, "Seccomp_filters"),
        seccomp_field(&ours, "Seccomp_filters")
    );
    d.stops_cleanly("off");

    let out = Command::new(vmm_bin())
        .args(["net-backend", "--seccomp", "strict", "--socket"])
        .arg(dir.path().join("bad.sock"))
        .arg("vec0:transport=user")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
