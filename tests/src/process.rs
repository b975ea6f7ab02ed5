//! The `vmm` binary, run as a child process that is stopped on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `vmm` binary cargo built beside the test executable (`target/<profile>/vmm`).
pub fn vmm_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> -> target/<profile>/vmm
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("vmm"))
        .expect("target directory");
    assert!(
        bin.exists(),
        "{} not built: run the tests with `cargo test --workspace`",
        bin.display()
    );
    bin
}

/// A child process with its stderr in a file, SIGTERMed (then killed) on drop.
pub struct Daemon {
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    /// Starts `cmd` with stdout and stderr sent to `log`.
    pub fn spawn(mut cmd: Command, log: PathBuf) -> Daemon {
        let file = std::fs::File::create(&log).expect("create log");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("dup log"))
            .stderr(file)
            .spawn()
            .expect("spawn daemon");
        Daemon {
            child: Some(child),
            log,
        }
    }

    /// What the process has written so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Waits until `path` exists (a socket the daemon binds), or panics with its log.
    pub fn wait_for_path(&mut self, path: &Path, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let pid = self.pid();
        while !path.exists() || !unix_socket_ready(pid, path) {
            assert!(
                self.running(),
                "daemon exited before creating {}:\n{}",
                path.display(),
                self.log()
            );
            assert!(
                Instant::now() < deadline,
                "daemon did not create {} in {timeout:?}:\n{}",
                path.display(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the log holds `text` (true) or the process exits first (false); panics,
    /// with the log, after `timeout`.
    pub fn wait_for_log(&mut self, text: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.log().contains(text) {
            if !self.running() {
                return false;
            }
            assert!(
                Instant::now() < deadline,
                "no `{text}` in {timeout:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// Waits for the process to exit by itself; its status. Panics, saying `what` and with the
    /// log, if it still runs after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration, what: &str) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return status;
            }
            assert!(self.child.is_some(), "{what}: already reaped");
            assert!(
                Instant::now() < deadline,
                "{what}: still running after {timeout:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process still runs, then SIGTERM ends it with status 0 within 5 s, and its log
    /// names no seccomp violation (`what` says which in a failure).
    pub fn stops_cleanly(&mut self, what: &str) {
        assert!(self.running(), "{what}: died:\n{}", self.log());
        let status = self.terminate(Duration::from_secs(5));
        assert_eq!(
            status.and_then(|s| s.code()),
            Some(0),
            "{what}:\n{}",
            self.log()
        );
        assert!(!self.log().contains("forbidden"), "{what}:\n{}", self.log());
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        // SAFETY: kill(2) on our own child's pid; a stale pid is harmless since we have not
        // reaped it yet (try_wait below reaps).
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                self.child = None;
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.terminate(Duration::from_secs(3));
    }
}

/// `vmm net-backend --socket SOCK SPEC`, in namespace `netns` if given.
pub fn net_backend(netns: Option<&str>, socket: &Path, spec: &str, log: PathBuf) -> Daemon {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(vmm_bin());
            c
        }
        None => Command::new(vmm_bin()),
    };
    cmd.arg("net-backend").arg("--socket").arg(socket).arg(spec);
    cmd.env("RUST_LOG", "info");
    let mut d = Daemon::spawn(cmd, log);
    d.wait_for_path(socket, Duration::from_secs(10));
    d
}

/// A namespace with a tap on a fresh `/24` (its host side `.1`), and `vmm net-backend` serving
/// `vec0:transport=tap` on it. Fields drop in order: the backend stops before its socket's
/// directory and the namespace go.
pub struct TapBackend {
    pub backend: Daemon,
    pub sock: PathBuf,
    /// The tap's address, which a guest pings.
    pub peer_ip: String,
    /// The address (with prefix) for the guest.
    pub guest_cidr: String,
    pub dir: crate::TempDir,
    pub ns: crate::netns::NetNs,
}

impl TapBackend {
    /// Sets it all up; `prefix` names the temporary directory.
    pub fn start(prefix: &str) -> TapBackend {
        Self::with_queues(prefix, 1)
    }

    /// [`TapBackend::start`] with `queues` queue pairs (a multi-queue tap when more than 1).
    pub fn with_queues(prefix: &str, queues: u16) -> TapBackend {
        let ns = crate::netns::NetNs::new();
        let (a, b) = crate::unique_subnet();
        let peer_ip = format!("10.{a}.{b}.1");
        let tap = ns.tap_with(Some(&format!("{peer_ip}/24")), queues > 1);
        let dir = crate::TempDir::new(prefix);
        let sock = dir.path().join("net.sock");
        let backend = net_backend(
            Some(ns.name()),
            &sock,
            &format!("vec0:transport=tap,ifname={tap},queues={queues}"),
            dir.path().join("backend.log"),
        );
        TapBackend {
            backend,
            sock,
            peer_ip,
            guest_cidr: format!("10.{a}.{b}.2/24"),
            dir,
            ns,
        }
    }
}

/// `vmm net-backend --socket DIR/net.sock vec0:transport=fd,fd=3`, `fd` becoming its
/// descriptor 3, with RLIMIT_NOFILE `nofile` if given. Returns once the socket exists.
pub fn fd_net_backend(
    dir: &Path,
    fd: std::os::fd::OwnedFd,
    nofile: Option<u64>,
) -> (Daemon, PathBuf) {
    fd_net_backend_opts(dir, fd, nofile, "")
}

/// [`fd_net_backend`] with `opts` (`,key=value...`) after the spec's `fd=3`.
pub fn fd_net_backend_opts(
    dir: &Path,
    fd: std::os::fd::OwnedFd,
    nofile: Option<u64>,
    opts: &str,
) -> (Daemon, PathBuf) {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let sock = dir.join("net.sock");
    let mut cmd = Command::new(vmm_bin());
    cmd.arg("net-backend")
        .arg("--socket")
        .arg(&sock)
        .arg(format!("vec0:transport=fd,fd=3{opts}"))
        .env("RUST_LOG", "info");
    let raw = fd.as_raw_fd();
    // SAFETY: between fork and exec the closure only calls async-signal-safe functions
    // (dup2, fcntl, setrlimit) on integers and a local struct. dup2 clears close-on-exec on
    // descriptor 3, so the child inherits exactly that one; when the socket already is
    // descriptor 3, dup2 would do nothing and the flag is cleared by hand.
    unsafe {
        cmd.pre_exec(move || {
            let rc = if raw == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(raw, 3)
            };
            if rc < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(n) = nofile {
                let lim = libc::rlimit {
                    rlim_cur: n,
                    rlim_max: n,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut d = Daemon::spawn(cmd, dir.join("backend.log"));
    drop(fd);
    d.wait_for_path(&sock, Duration::from_secs(10));
    (d, sock)
}

/// Whether `path` is ready to be connected to, as process `pid` (in its own network
/// namespace) sees it: a path that is not a socket is ready once it exists; a stream socket
/// once it listens (between `bind` and `listen` the path exists but a connect is refused); a
/// datagram socket once it is bound.
pub fn unix_socket_ready(pid: u32, path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {}
        Ok(_) => return true,
        Err(_) => return false,
    }
    let Ok(table) = std::fs::read_to_string(format!("/proc/{pid}/net/unix")) else {
        return true;
    };
    let want = path.to_string_lossy();
    // `Num RefCount Protocol Flags Type St Inode Path`; Flags 0x10000 is __SO_ACCEPTCON
    // (listening), Type 1 is SOCK_STREAM, 5 SOCK_SEQPACKET.
    table.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 8 || f[7] != want {
            return false;
        }
        let flags = u32::from_str_radix(f[3], 16).unwrap_or(0);
        let stream = matches!(f[4], "0001" | "0005");
        !stream || flags & 0x10000 != 0
    })
}

/// virtiofsd on PATH or in ~/.cargo/bin, as resources/setup.sh installs it.
pub fn find_virtiofsd() -> Option<PathBuf> {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(home.map(|h| h.join(".cargo/bin")))
        .map(|d| d.join("virtiofsd"))
        .find(|p| p.is_file())
}

/// A virtiofsd of the test's own (for frontends other than `vmm`, which starts its own),
/// serving `dir` at `socket` without a sandbox; killed and reaped when dropped.
pub struct TestVirtiofsd(std::process::Child);

impl TestVirtiofsd {
    /// Starts `bin` and waits (10 s at most) until its socket listens.
    pub fn start(bin: &Path, dir: &Path, socket: &Path, readonly: bool) -> TestVirtiofsd {
        let mut cmd = Command::new(bin);
        cmd.arg("--socket-path")
            .arg(socket)
            .arg("--shared-dir")
            .arg(dir)
            .args([
                "--sandbox",
                "none",
                "--cache",
                "auto",
                "--log-level",
                "error",
            ])
            .stdin(std::process::Stdio::null());
        if readonly {
            cmd.arg("--readonly");
        }
        let child = cmd.spawn().expect("start virtiofsd");
        let pid = child.id();
        let d = TestVirtiofsd(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !unix_socket_ready(pid, socket) || !socket.exists() {
            assert!(
                Instant::now() < deadline,
                "virtiofsd did not listen on {} in 10 s",
                socket.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }
}

impl Drop for TestVirtiofsd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Variables of ours a test's `vmm` must not inherit from whoever runs the tests: the seccomp
/// self-test, and sudo's invoking user (which `vmm` would switch to).
const FOREIGN_ENV: [&str; 3] = ["VMM_SECCOMP_SELFTEST", "SUDO_UID", "SUDO_GID"];

/// `vmm net-backend ARGS... --socket SOCK SPEC` (in `ns` if given), logging at info.
pub fn net_backend_command(
    ns: Option<&crate::netns::NetNs>,
    sock: &Path,
    spec: &str,
    args: &[&str],
) -> Command {
    let mut cmd = match ns {
        Some(ns) => ns.command(vmm_bin().to_str().unwrap()),
        None => Command::new(vmm_bin()),
    };
    cmd.arg("net-backend")
        .args(args)
        .arg("--socket")
        .arg(sock)
        .arg(spec)
        .env("RUST_LOG", "info");
    for k in FOREIGN_ENV {
        cmd.env_remove(k);
    }
    cmd
}

/// `vmm` running the test guest (`kernel`: vmm_test_guest::ELF_PATH, a dev-dependency of the
/// tests) kept up (`vmtest.wait`) with a `user` NIC, `args` and the control socket at `api`,
/// logging at info.
pub fn waiting_test_vm_command(kernel: &Path, api: &Path, args: &[&str]) -> Command {
    test_vm_command_with(kernel, api, "console=ttyS0 vmtest.wait", args)
}

/// [`waiting_test_vm_command`] with the kernel command line `cmdline`.
pub fn test_vm_command_with(kernel: &Path, api: &Path, cmdline: &str, args: &[&str]) -> Command {
    test_vm_command_net(kernel, api, cmdline, "user", args)
}

/// [`test_vm_command_with`] with the NIC `--net net` (a `user` one there).
pub fn test_vm_command_net(
    kernel: &Path,
    api: &Path,
    cmdline: &str,
    net: &str,
    args: &[&str],
) -> Command {
    let mut cmd = Command::new(vmm_bin());
    cmd.arg("--kernel")
        .arg(kernel)
        .args(["--cmdline", cmdline, "--mem", "64"])
        .args(["--net", net, "--timeout", "120"])
        .args(args)
        .arg("--api")
        .arg(api)
        .env("RUST_LOG", "info");
    for k in FOREIGN_ENV {
        cmd.env_remove(k);
    }
    cmd
}
