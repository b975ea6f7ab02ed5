//! Sockets only their owner can reach, and privileges dropped once everything is open: `vmm
//! net-backend --user nobody` (and root without --user) runs with no capabilities while frames
//! still cross raw, tap and gre both ways; `vmm --user nobody` runs the test guest the same
//! way; another local user cannot connect to a 0600 socket, a member of `--socket-group` /
//! `--api-group` can with mode 0660; what is not a socket at the path is refused and kept;
//! an unknown user is a one-line error.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use vmm_net::config::parse_spec;
use vmm_net::transport::{self, Transport};
use vmm_tests::batch::{recv_kept, send_at_once};
use vmm_tests::netns::NetNs;
use vmm_tests::peer::{is_test_frame, test_frame, PacketPeer};
use vmm_tests::process::{net_backend_command, vmm_bin, waiting_test_vm_command, Daemon};
use vmm_tests::rig::{frontend, guest_receives, guest_sends};
use vmm_tests::{ctl_request, kvm_usable, require_root, status_field, TempDir};

const NOBODY: u32 = 65534;
/// Another local user, neither root nor nobody, and a group it may be put in.
const OTHER: u32 = 65533;
const SHARED_GROUP: u32 = 54321;
const GUEST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x21];
const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x22];

/// `vmm net-backend ARGS... --socket SOCK SPEC` (in `ns` if given), started and its socket
/// there.
fn backend(ns: Option<&NetNs>, sock: &Path, spec: &str, args: &[&str], log: PathBuf) -> Daemon {
    let mut d = Daemon::spawn(net_backend_command(ns, sock, spec, args), log);
    d.wait_for_path(sock, Duration::from_secs(10));
    d
}

/// Waits until every thread of `pid` runs as `uid` (all four ids) with no capabilities and
/// no_new_privs, or panics with what it saw and the log.
fn assert_dropped(pid: u32, uid: u32, log: &dyn Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut bad = Vec::new();
        let tasks: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/task"))
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(!tasks.is_empty(), "no process {pid}:\n{}", log());
        for task in tasks {
            let Ok(status) = std::fs::read_to_string(task.join("status")) else {
                continue;
            };
            for (name, want) in [
                ("Uid", format!("{uid}\t{uid}\t{uid}\t{uid}")),
                ("CapEff", "0000000000000000".into()),
                ("CapPrm", "0000000000000000".into()),
                ("CapInh", "0000000000000000".into()),
                ("CapAmb", "0000000000000000".into()),
                ("NoNewPrivs", "1".into()),
            ] {
                let got = status_field(&status, name);
                if got != want {
                    bad.push(format!("{}: {name} {got}", task.display()));
                }
            }
            if uid != 0 {
                let gid = status_field(&status, "Gid");
                if gid != format!("{uid}\t{uid}\t{uid}\t{uid}") {
                    bad.push(format!("{}: Gid {gid}", task.display()));
                }
            }
        }
        if bad.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "{bad:?}\n{}", log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Connects to `path` from a forked child running as `uid`/`gid` with supplementary `groups`:
/// `Ok` or the errno.
fn connect_as(path: &Path, uid: u32, gid: u32, groups: &[libc::gid_t]) -> Result<(), i32> {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: sockaddr_un is plain data; all zeros is valid.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = c.as_bytes_with_nul();
    assert!(bytes.len() <= addr.sun_path.len(), "path too long");
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: the child only makes async-signal-safe system calls on data prepared before the
    // fork, then _exits; the parent waits for it.
    unsafe {
        let pid = libc::fork();
        assert!(pid >= 0, "fork");
        if pid == 0 {
            let code = if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                || libc::setresgid(gid, gid, gid) != 0
                || libc::setresuid(uid, uid, uid) != 0
            {
                200
            } else {
                let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                if fd < 0 {
                    201
                } else if libc::connect(
                    fd,
                    (&addr as *const libc::sockaddr_un).cast(),
                    std::mem::size_of::<libc::sockaddr_un>() as u32,
                ) == 0
                {
                    0
                } else {
                    *libc::__errno_location()
                }
            };
            libc::_exit(code);
        }
        let mut status = 0;
        assert_eq!(libc::waitpid(pid, &mut status, 0), pid);
        assert!(libc::WIFEXITED(status), "child: {status:#x}");
        match libc::WEXITSTATUS(status) {
            0 => Ok(()),
            200 | 201 => panic!("the child could not become uid {uid}"),
            e => Err(e),
        }
    }
}

/// Another user is refused (EACCES); with `shared`, a member of SHARED_GROUP gets in.
fn assert_access(path: &Path, owner: u32, shared: bool) {
    let other = if owner == OTHER { NOBODY } else { OTHER };
    assert_eq!(
        connect_as(path, other, other, &[other]),
        Err(libc::EACCES),
        "another user connected to {}",
        path.display()
    );
    let member = connect_as(path, other, other, &[other, SHARED_GROUP]);
    if shared {
        assert_eq!(member, Ok(()), "a member of the group");
    } else {
        assert_eq!(member, Err(libc::EACCES), "a member of another group");
    }
}

/// Frames cross raw (veth), tap and gre both ways while `vmm net-backend --user nobody` (or
/// root without --user: `user` None) serves them with no capabilities.
fn backend_without_privileges_moves_frames(user: Option<&str>, uid: u32) {
    require_root();
    let dir = TempDir::new("privnb");
    let args: Vec<&str> = user.map(|u| vec!["--user", u]).unwrap_or_default();
    for kind in ["raw", "tap", "gre"] {
        let ns = NetNs::new();
        let sock = dir.path().join(format!("{kind}.sock"));
        let log = dir.path().join(format!("{kind}.log"));
        // What the backend serves, and the test's end of the wire.
        enum Wire {
            Packet(PacketPeer),
            Gre(Box<dyn Transport>),
        }
        let (spec, wire_if) = match kind {
            "raw" => {
                let (peer_end, dp_end) = ns.veth_pair(None);
                (
                    format!("vec0:transport=raw,ifname={dp_end}"),
                    Some(peer_end),
                )
            }
            "tap" => {
                let tap = ns.tap(None);
                (format!("vec0:transport=tap,ifname={tap}"), Some(tap))
            }
            _ => {
                ns.ip(&["addr", "add", "127.0.0.2/8", "dev", "lo"]);
                (
                    "vec0:transport=gre,src=127.0.0.1,dst=127.0.0.2".to_string(),
                    None,
                )
            }
        };
        let mut d = backend(Some(&ns), &sock, &spec, &args, log);
        let mut wire = match &wire_if {
            Some(ifname) => Wire::Packet(ns.enter(|| PacketPeer::open(ifname, false))),
            None => Wire::Gre(ns.enter(|| {
                let s = parse_spec("vec1:transport=gre,src=127.0.0.2,dst=127.0.0.1").unwrap();
                transport::open(&s).expect("the test's gre end")
            })),
        };
        let mut rig = frontend(&sock);
        if let Some(ifname) = &wire_if {
            ns.wait_link_up(ifname);
        }
        let mut rx = 0;
        for round in 0..2u8 {
            // Out of the guest, onto the wire.
            let sent = guest_sends(&mut rig, u16::from(round), 10 + round, GUEST_MAC, HOST_MAC);
            let got = match &mut wire {
                Wire::Packet(p) => p.recv_matching(Duration::from_secs(5), |f| f == sent),
                Wire::Gre(t) => {
                    recv_kept(t.as_mut(), 1, Duration::from_secs(5), 2048, |f| f == sent).pop()
                }
            };
            assert!(got.is_some(), "{kind}: the guest's frame not on the wire");
            // From the wire, into the guest.
            let frame = test_frame(600, HOST_MAC, GUEST_MAC, 20 + round);
            assert!(is_test_frame(&frame, 0));
            match &mut wire {
                Wire::Packet(p) => p.send(&frame),
                Wire::Gre(t) => send_at_once(t.as_mut(), std::slice::from_ref(&frame), 2048),
            }
            guest_receives(&mut rig, &mut rx, &frame);
        }
        assert_dropped(d.pid(), uid, &|| d.log());
        drop(rig);
        d.stops_cleanly(kind);
    }
}

#[test]
fn net_backend_as_nobody_has_no_capabilities_and_frames_flow_over_raw_tap_gre() {
    backend_without_privileges_moves_frames(Some("nobody"), NOBODY);
}

#[test]
fn net_backend_as_root_without_user_keeps_uid_0_but_no_capabilities() {
    backend_without_privileges_moves_frames(None, 0);
}

#[test]
fn net_backend_socket_is_0600_unless_shared_with_a_group() {
    require_root();
    let dir = TempDir::new("privsock");
    let private = dir.path().join("private.sock");
    let mut d = backend(
        None,
        &private,
        "vec0:transport=user",
        &[],
        dir.path().join("p.log"),
    );
    assert_dropped(d.pid(), 0, &|| d.log());
    let mode = std::fs::metadata(&private).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(mode.mode() & 0o777, 0o600);
    assert_access(&private, 0, false);

    let shared = dir.path().join("shared.sock");
    let group = SHARED_GROUP.to_string();
    let mut s = backend(
        None,
        &shared,
        "vec0:transport=user",
        &["--socket-mode", "0660", "--socket-group", &group],
        dir.path().join("s.log"),
    );
    assert_dropped(s.pid(), 0, &|| s.log());
    let m = std::fs::metadata(&shared).unwrap();
    assert_eq!((m.mode() & 0o777, m.gid()), (0o660, SHARED_GROUP));
    assert_access(&shared, 0, true);

    // --user: the socket becomes the user's (it can still remove it), others stay out.
    let owned = dir.path().join("owned.sock");
    let mut o = backend(
        None,
        &owned,
        "vec0:transport=user",
        &["--user", "nobody"],
        dir.path().join("o.log"),
    );
    assert_dropped(o.pid(), NOBODY, &|| o.log());
    let m = std::fs::metadata(&owned).unwrap();
    assert_eq!((m.mode() & 0o777, m.uid()), (0o600, NOBODY));
    assert_access(&owned, NOBODY, false);
    for d in [&mut d, &mut s, &mut o] {
        assert!(d.running(), "{}", d.log());
    }
}

#[test]
fn what_is_not_a_socket_is_refused_and_kept_and_unknown_users_are_errors() {
    let dir = TempDir::new("privbad");
    let file = dir.path().join("file");
    std::fs::write(&file, "not a socket").unwrap();
    let subdir = dir.path().join("dir");
    std::fs::create_dir(&subdir).unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&file, &link).unwrap();
    let run = |args: &[&std::ffi::OsStr]| {
        let out = Command::new(vmm_bin())
            .args(args)
            .env_remove("SUDO_UID")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        err
    };
    for path in [&file, &subdir, &link] {
        let err = run(&[
            "net-backend".as_ref(),
            "--socket".as_ref(),
            path.as_os_str(),
            "vec0:transport=user".as_ref(),
        ]);
        assert!(
            err.contains(&format!(
                "--socket {}: exists and is not a socket",
                path.display()
            )),
            "{err}"
        );
        let err = run(&[
            "--kernel".as_ref(),
            vmm_test_guest::ELF_PATH.as_ref(),
            "--api".as_ref(),
            path.as_os_str(),
        ]);
        assert!(
            err.contains(&format!(
                "--api {}: exists and is not a socket",
                path.display()
            )),
            "{err}"
        );
    }
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "not a socket");
    assert!(subdir.is_dir());
    assert_eq!(std::fs::read_link(&link).unwrap(), file);

    let sock = dir.path().join("s.sock");
    let err = run(&[
        "net-backend".as_ref(),
        "--user".as_ref(),
        "vmm-no-such-user".as_ref(),
        "--socket".as_ref(),
        sock.as_os_str(),
        "vec0:transport=user".as_ref(),
    ]);
    assert!(
        err.contains("--user vmm-no-such-user: no such user"),
        "{err}"
    );
    assert!(!sock.exists());
    let err = run(&[
        "--kernel".as_ref(),
        vmm_test_guest::ELF_PATH.as_ref(),
        "--user".as_ref(),
        "vmm-no-such-user".as_ref(),
    ]);
    assert!(
        err.contains("--user vmm-no-such-user: no such user"),
        "{err}"
    );
    let err = run(&[
        "net-backend".as_ref(),
        "--socket-mode".as_ref(),
        "0689".as_ref(),
        "--socket".as_ref(),
        sock.as_os_str(),
        "vec0:transport=user".as_ref(),
    ]);
    assert!(
        err.contains("--socket-mode 0689: not an octal mode"),
        "{err}"
    );
    let err = run(&[
        "net-backend".as_ref(),
        "--socket-group".as_ref(),
        "vmm-no-such-group".as_ref(),
        "--socket".as_ref(),
        sock.as_os_str(),
        "vec0:transport=user".as_ref(),
    ]);
    assert!(
        err.contains("--socket-group vmm-no-such-group: no such group"),
        "{err}"
    );
}

/// `vmm` running the test guest (kept up), with `args`; returns once the guest waits.
fn test_vm(api: &Path, args: &[&str], log: PathBuf) -> Daemon {
    let cmd = waiting_test_vm_command(Path::new(vmm_test_guest::ELF_PATH), api, args);
    let mut d = Daemon::spawn(cmd, log);
    assert!(
        d.wait_for_log(vmm_test_guest::WAITING, Duration::from_secs(30)),
        "vmm exited:\n{}",
        d.log()
    );
    d
}

#[test]
fn vmm_as_nobody_runs_the_guest_with_no_capabilities() {
    require_root();
    if !kvm_usable() {
        return;
    }
    let dir = TempDir::new("privvm");
    let api = dir.path().join("api.sock");
    let mut vm = test_vm(&api, &["--user", "nobody"], dir.path().join("vm.log"));
    assert_dropped(vm.pid(), NOBODY, &|| vm.log());
    assert!(
        vm.log().contains("running as nobody (uid 65534"),
        "{}",
        vm.log()
    );
    // The control socket is nobody's now, still 0600: usable, but not by another user.
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(&api).unwrap();
    assert_eq!((m.mode() & 0o777, m.uid()), (0o600, NOBODY));
    assert_access(&api, NOBODY, false);
    let info = ctl_request(&api, "info");
    assert!(info.contains("\"ok\":true"), "{info}");
    let reboot = ctl_request(&api, "reboot");
    assert!(
        reboot.contains("\"ok\":false") && reboot.contains("privileges were dropped"),
        "{reboot}"
    );
    let swap = ctl_request(&api, "net swap vec0 transport=user");
    assert!(swap.contains("privileges were dropped"), "{swap}");
    assert!(ctl_request(&api, "halt").contains("\"ok\":true"));
    assert!(vm.terminate(Duration::from_secs(10)).is_some());

    // Root without --user: uid 0, no capabilities; the socket shared with a group.
    let api = dir.path().join("api2.sock");
    let group = SHARED_GROUP.to_string();
    let mut vm = test_vm(
        &api,
        &["--api-mode", "0660", "--api-group", &group],
        dir.path().join("vm2.log"),
    );
    assert_dropped(vm.pid(), 0, &|| vm.log());
    let m = std::fs::metadata(&api).unwrap();
    assert_eq!((m.mode() & 0o777, m.gid()), (0o660, SHARED_GROUP));
    assert_access(&api, 0, true);
    assert!(ctl_request(&api, "info").contains("\"ok\":true"));
    assert!(vm.terminate(Duration::from_secs(10)).is_some());
}
