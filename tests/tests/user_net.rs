//! `--net user` (libslirp) with the real-Linux guest, the VMM running as an ordinary user.
//!
//! The VMM runs as `nobody` with no supplementary groups, in a mount namespace of its own where
//! /dev/kvm is a node owned by `nobody` (mode 0600): the only privilege it has is opening KVM,
//! as a user in the `kvm` group would. One boot: the guest leases 10.0.2.15 by DHCP (busybox
//! udhcpc), fetches a file from a server on the host's loopback through the gateway 10.0.2.2,
//! then serves that file back through `hostfwd=`, which the host reaches on 127.0.0.1.
//!
//! Bad input (`hostfwd` garbage, an unknown key) is an exit 2 with one line naming key and
//! value, for `vmm --net` and `vmm net-backend` alike.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use vmm_tests::guest::{built, pvm_words, test_bytes, Guest};
use vmm_tests::process::vmm_bin;
use vmm_tests::TempDir;

const BOOT_TIMEOUT: Duration = Duration::from_secs(400);
const FILE_LEN: usize = 64 * 1024;
/// The port the guest serves on, behind the host's forward.
const GUEST_PORT: u16 = 8080;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Copies `files` into a directory `nobody` can read (the clone may sit under a home directory
/// it cannot enter); returns the copies' paths.
fn readable_by_nobody(dir: &TempDir, files: &[std::path::PathBuf]) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    let perm = |p: &std::path::Path, mode| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    perm(dir.path(), 0o755);
    files
        .iter()
        .map(|f| {
            let to = dir.path().join(f.file_name().unwrap());
            std::fs::copy(f, &to).unwrap_or_else(|e| panic!("copy {}: {e}", f.display()));
            perm(&to, 0o755);
            to.to_str().unwrap().to_string()
        })
        .collect()
}

/// `args` run as `nobody` (no groups) in a new mount namespace whose /dev/kvm is a private
/// node owned by `nobody`; the wrapper first prints the identity the program runs with.
fn as_nobody_with_kvm(program: &std::path::Path, args: &[String]) -> Command {
    let script = r#"set -e
d=$(mktemp -d)
mount -t tmpfs -o mode=0755 none "$d"
mknod -m 0600 "$d/kvm" c 10 232
chown 65534:65534 "$d/kvm"
mount --bind "$d/kvm" /dev/kvm
exec setpriv --reuid=65534 --regid=65534 --clear-groups -- sh -c \
  'echo "user-net-test: running as uid $(id -u) gid $(id -g) groups $(id -G)"; exec "$0" "$@"' "$@"
"#;
    let mut c = Command::new("unshare");
    c.args([
        "--mount",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        script,
        "sh",
    ])
    .arg(program)
    .args(args);
    c
}

/// Reads what the guest serves through the forward: the forward accepts at once even before
/// the guest listens (libslirp then resets the connection), so retry until a whole file comes.
fn fetch_through_forward(port: u16, guest: &Guest) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last = String::new();
    while Instant::now() < deadline {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(mut s) => {
                s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                let mut got = Vec::new();
                match s.read_to_end(&mut got) {
                    Ok(_) if got.len() >= FILE_LEN => return got,
                    Ok(_) => last = format!("{} bytes, then end of file", got.len()),
                    Err(e) => last = format!("{e} after {} bytes", got.len()),
                }
            }
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!(
        "nothing came through hostfwd 127.0.0.1:{port} (last: {last}); console:\n{}",
        guest.console()
    );
}

#[test]
fn linux_user_networking_as_an_unprivileged_user() {
    vmm_tests::require_root();
    if !vmm_tests::kvm_usable() {
        return;
    }
    let file = test_bytes(FILE_LEN, 0x51_1e_9d);
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    server.set_nonblocking(true).unwrap();
    let get_port = server.local_addr().unwrap().port();
    let hport = free_port();
    let cmdline = format!(
        "console=ttyS0 reboot=k panic=1 {} \
         vmtest.steps=dhcp,get:10.0.2.2:{get_port},serve:{GUEST_PORT} vmtest.exitport=0xf4",
        pvm_words()
    );
    let dir = TempDir::new("usernet");
    let copies = readable_by_nobody(
        &dir,
        &[
            vmm_bin(),
            built("linux/vmlinux"),
            built("linux/initramfs.cpio"),
        ],
    );
    let args: Vec<String> = [
        "--kernel",
        &copies[1],
        "--initrd",
        &copies[2],
        "--mem",
        "128",
        "--cmdline",
        &cmdline,
        "--net",
        &format!("user,hostfwd=tcp::{hport}-:{GUEST_PORT}"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut cmd = as_nobody_with_kvm(std::path::Path::new(&copies[0]), &args);
    cmd.env("RUST_LOG", "warn,vmm_net=info");
    let mut guest = Guest::command(cmd);

    guest.expect(
        "user-net-test: running as uid 65534 gid 65534",
        BOOT_TIMEOUT,
    );
    guest.expect("vmtest: /init started", BOOT_TIMEOUT);
    guest.expect(
        "vmtest: dhcp: 10.0.2.15/24 router 10.0.2.2",
        Duration::from_secs(180),
    );
    // The guest's `get`: our server on the host's loopback, reached as 10.0.2.2.
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut conn = loop {
        match server.accept() {
            Ok((s, peer)) => {
                assert!(peer.ip().is_loopback(), "{peer}");
                break s;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("accept: {e}"),
        }
        assert!(
            Instant::now() < deadline,
            "the guest never connected to 10.0.2.2:{get_port}; console:\n{}",
            guest.console()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    conn.set_nonblocking(false).unwrap();
    conn.write_all(&file).unwrap();
    drop(conn);
    guest.expect(
        &format!("vmtest: serve: listening on {GUEST_PORT}"),
        Duration::from_secs(180),
    );
    let back = fetch_through_forward(hport, &guest);
    let code = guest.wait_process(Duration::from_secs(180));
    let console = guest.console();
    assert!(
        console.contains(&format!(
            "vmtest: get 10.0.2.2:{get_port}: {FILE_LEN} bytes"
        )),
        "{console}"
    );
    assert!(back == file, "the file the guest served differs\n{console}");
    assert_eq!(code, Some(0), "{console}");
    vmm_tests::say(&format!(
        "user networking as nobody: timeline\n{}",
        guest.timeline(&[
            ("/init started", "vmtest: /init started"),
            ("DHCP lease", "vmtest: dhcp: "),
            ("file from the host's loopback", "vmtest: step get:"),
            ("guest listening", "vmtest: serve: listening"),
            ("test steps done", "VMTEST-EXIT="),
        ])
    ));
}

/// One line on stderr, exit 2, naming the key and the value: `vmm --net` and `vmm net-backend`.
#[test]
fn bad_user_options_exit_2_naming_key_and_value() {
    for (spec, needles) in [
        ("user,hostfwd=tcp:garbage", &["hostfwd=tcp:garbage"][..]),
        (
            "user,hostfwd=tcp::99999-:22",
            &["hostfwd=tcp::99999-:22", "port"],
        ),
        (
            "vec0:transport=user,colour=blue",
            &["colour=blue", "unknown"],
        ),
    ] {
        let runs = [
            Command::new(vmm_bin())
                .args(["--kernel", "/nonexistent", "--net", spec])
                .output()
                .unwrap(),
            Command::new(vmm_bin())
                .args(["net-backend", "--socket", "/tmp/user-net-bad.sock", spec])
                .output()
                .unwrap(),
        ];
        for out in runs {
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{spec}: {err}");
            assert_eq!(err.trim_end().lines().count(), 1, "{spec}: {err}");
            for n in needles {
                assert!(err.contains(n), "{spec}: `{err}` lacks `{n}`");
            }
        }
    }
}
