//! `--fs` and `--share` for a VM (the device layer's virtio-fs file): each is a virtio-fs device (virtio-pci) whose backend is
//! virtiofsd, either one the user runs (`--fs tag=TAG,socket=PATH`) or one the VMM starts for
//! a directory (`--share DIR[,tag=TAG][,readonly=on]`) and stops when the VM ends.
//!
//! virtiofsd's sandbox: `namespace` (its default: the daemon pivots into the shared directory in
//! new mount, pid and net namespaces) when we run as root, `none` otherwise, since the namespace
//! sandbox needs privileges (or user namespaces) an ordinary user may not have; with `none`,
//! virtiofsd has exactly the user's rights on the host, no more.

use std::fmt;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vmm_devices::vhost_user::fs::{check_tag, FsError, VhostUserFsDevice};
use vmm_devices::vhost_user::FrontendError;

/// How long virtiofsd may take to create its socket.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a stopped virtiofsd may take to exit before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(2);

/// One `--fs` or `--share` argument, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FsArg {
    /// A running backend listening on `socket`.
    Socket { tag: String, socket: PathBuf },
    /// A directory the VMM shares through a virtiofsd it starts.
    Share {
        dir: PathBuf,
        tag: String,
        readonly: bool,
    },
}

/// Why a `--fs`/`--share` argument cannot be used; every message names the option and value.
#[derive(Debug)]
pub struct FsArgError {
    option: &'static str,
    arg: String,
    msg: String,
    /// Bad input (exit 2) rather than a run-time failure (exit 1).
    pub usage: bool,
}

impl fmt::Display for FsArgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.option, self.arg, self.msg)
    }
}

impl FsArg {
    /// The option the argument came from.
    fn option(&self) -> &'static str {
        match self {
            FsArg::Socket { .. } => "--fs",
            FsArg::Share { .. } => "--share",
        }
    }

    /// The tag the guest mounts.
    pub fn tag(&self) -> &str {
        match self {
            FsArg::Socket { tag, .. } | FsArg::Share { tag, .. } => tag,
        }
    }

    /// `--fs tag=TAG,socket=PATH`.
    pub fn parse_fs(arg: &str) -> Result<FsArg, FsArgError> {
        let err = |msg: String| usage("--fs", arg, msg);
        let (mut tag, mut socket) = (None, None);
        for kv in arg.split(',') {
            match kv.split_once('=') {
                Some(("tag", t)) => {
                    if tag.replace(t.to_string()).is_some() {
                        return Err(err("tag given twice".into()));
                    }
                }
                Some(("socket", p)) if !p.is_empty() => {
                    if socket.replace(PathBuf::from(p)).is_some() {
                        return Err(err("socket given twice".into()));
                    }
                }
                Some(("socket", _)) => return Err(err("socket= needs a path".into())),
                _ => {
                    return Err(err(format!(
                        "unknown option '{kv}' (--fs takes tag=TAG,socket=PATH)"
                    )))
                }
            }
        }
        let tag = tag.ok_or_else(|| err("needs tag=TAG".into()))?;
        check_tag(&tag).map_err(|e| err(format!("tag '{tag}': {e}")))?;
        let socket = socket.ok_or_else(|| err("needs socket=PATH".into()))?;
        Ok(FsArg::Socket { tag, socket })
    }

    /// `--share DIR[,tag=TAG][,readonly=on]`: the tag defaults to the directory's basename
    /// (`root` for `/`). The directory must exist (a mistyped path would otherwise surface as
    /// a guest mount error a minute into the boot).
    pub fn parse_share(arg: &str) -> Result<FsArg, FsArgError> {
        let err = |msg: String| usage("--share", arg, msg);
        let mut parts = arg.split(',');
        let dir = PathBuf::from(parts.next().unwrap_or_default());
        if dir.as_os_str().is_empty() {
            return Err(err("needs a directory".into()));
        }
        let (mut tag, mut readonly) = (None, false);
        for kv in parts {
            match kv.split_once('=') {
                Some(("tag", t)) => {
                    if tag.replace(t.to_string()).is_some() {
                        return Err(err("tag given twice".into()));
                    }
                }
                Some(("readonly", "on")) => readonly = true,
                Some(("readonly", "off")) => readonly = false,
                Some(("readonly", v)) => {
                    return Err(err(format!("readonly={v}: say on or off")));
                }
                _ => {
                    return Err(err(format!(
                        "unknown option '{kv}' (--share takes DIR[,tag=TAG][,readonly=on])"
                    )))
                }
            }
        }
        match std::fs::metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(err(format!("{} is not a directory", dir.display()))),
            Err(e) => return Err(err(format!("{}: {e}", dir.display()))),
        }
        let tag = match tag {
            Some(t) => t,
            None => default_tag(&dir),
        };
        check_tag(&tag).map_err(|e| err(format!("tag '{tag}': {e}")))?;
        Ok(FsArg::Share { dir, tag, readonly })
    }
}

/// The directory's basename, `root` for `/`, cut to a tag's 36 bytes.
fn default_tag(dir: &Path) -> String {
    let base = std::fs::canonicalize(dir)
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "root".to_string());
    let mut end = base.len().min(vmm_devices::vhost_user::fs::TAG_LEN);
    while !base.is_char_boundary(end) {
        end -= 1;
    }
    base[..end].to_string()
}

fn usage(option: &'static str, arg: &str, msg: String) -> FsArgError {
    FsArgError {
        option,
        arg: arg.to_string(),
        msg,
        usage: true,
    }
}

/// Finds virtiofsd: `explicit` (`--virtiofsd PATH`), else on PATH, else in ~/.cargo/bin
/// (where `cargo install virtiofsd`, as resources/setup.sh runs it, puts it). `share` is the
/// `--share` argument that needs it, for the message.
pub fn find_virtiofsd(explicit: Option<&Path>, share: &str) -> Result<PathBuf, FsArgError> {
    let executable = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| {
                m.is_file()
                    && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
            })
            .unwrap_or(false)
    };
    if let Some(p) = explicit {
        return if executable(p) {
            Ok(p.to_path_buf())
        } else {
            Err(usage(
                "--virtiofsd",
                &p.display().to_string(),
                "not an executable file".into(),
            ))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let cargo_bin = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin"));
    std::env::split_paths(&path)
        .chain(cargo_bin)
        .map(|d| d.join("virtiofsd"))
        .find(|p| executable(p))
        .ok_or_else(|| {
            usage(
                "--share",
                share,
                "virtiofsd not found on PATH nor in ~/.cargo/bin (run resources/setup.sh, or \
                 give --virtiofsd PATH)"
                    .into(),
            )
        })
}

/// A virtiofsd the VMM started: SIGTERMed, waited for and its socket directory removed on
/// drop; it also gets SIGTERM should the VMM die first (PR_SET_PDEATHSIG), so it never
/// outlives the VM.
pub struct Virtiofsd {
    child: Child,
    dir: PathBuf,
}

impl Virtiofsd {
    /// Starts `bin` sharing `dir` on a socket in a private directory, and waits for the socket.
    fn start(bin: &Path, share: &Path, readonly: bool) -> Result<(Virtiofsd, PathBuf), String> {
        if readonly && !supports_readonly(bin) {
            return Err(format!(
                "readonly=on: {} has no --readonly (install virtiofsd 1.6 or later)",
                bin.display()
            ));
        }
        let dir = private_dir().map_err(|e| format!("creating a socket directory: {e}"))?;
        let socket = dir.join("virtiofsd.sock");
        let log_path = dir.join("virtiofsd.log");
        let log = std::fs::File::create(&log_path)
            .map_err(|e| format!("creating {}: {e}", log_path.display()))?;
        let log2 = log
            .try_clone()
            .map_err(|e| format!("{}: {e}", log_path.display()))?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        let mut cmd = Command::new(bin);
        cmd.arg("--socket-path")
            .arg(&socket)
            .arg("--shared-dir")
            .arg(share)
            .args(["--cache", "auto", "--log-level", "warn"])
            .args(["--sandbox", if root { "namespace" } else { "none" }])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        if readonly {
            cmd.arg("--readonly");
        }
        // SAFETY: getpid has no preconditions and cannot fail.
        let parent = unsafe { libc::getpid() };
        // SAFETY: the closure runs in the child between fork and exec and calls only prctl,
        // getppid and _exit, which are async-signal-safe; it touches no memory of the parent.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The VMM may have died before the prctl: then nothing would ever stop us.
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| {
            let _ = std::fs::remove_dir_all(&dir);
            format!("starting {}: {e}", bin.display())
        })?;
        let mut d = Virtiofsd { child, dir };
        let deadline = Instant::now() + SOCKET_TIMEOUT;
        while !socket.exists() {
            if let Ok(Some(status)) = d.child.try_wait() {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                let last = log.lines().last().unwrap_or("no output");
                return Err(format!("virtiofsd exited ({status}): {last}"));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "virtiofsd did not create its socket in {SOCKET_TIMEOUT:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok((d, socket))
    }
}

impl Drop for Virtiofsd {
    fn drop(&mut self) {
        // It normally exits by itself when the VM (its one frontend) goes away.
        if let Ok(None) = self.child.try_wait() {
            if let Ok(pid) = i32::try_from(self.child.id()) {
                // SAFETY: the pid is our child's, not yet reaped, so it names no other process.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
            let deadline = Instant::now() + STOP_TIMEOUT;
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if let Ok(None) = self.child.try_wait() {
                let _ = self.child.kill();
            }
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether this virtiofsd knows `--readonly` (older ones do not: sharing read-write instead
/// would be the wrong thing to do silently).
fn supports_readonly(bin: &Path) -> bool {
    Command::new(bin)
        .arg("--help")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("--readonly"))
        .unwrap_or(false)
}

/// A fresh directory only we can use, under the temporary directory.
pub fn private_dir() -> std::io::Result<PathBuf> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "vmm-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map(|()| dir)
}

/// Opens the device's backend (starting virtiofsd for `--share`) and returns the virtio device
/// to plug in, with the virtiofsd to keep alive while the VM runs.
pub fn open(
    arg: &str,
    fs: &FsArg,
    virtiofsd: Option<&Path>,
    mem: &crate::memory::GuestMemoryMmap,
) -> Result<(VhostUserFsDevice, Option<Virtiofsd>), FsArgError> {
    let option = fs.option();
    let runtime = |msg: String| FsArgError {
        option,
        arg: arg.to_string(),
        msg,
        usage: false,
    };
    let (socket, daemon) = match fs {
        FsArg::Socket { socket, .. } => (socket.clone(), None),
        FsArg::Share { dir, readonly, .. } => {
            let bin = find_virtiofsd(virtiofsd, arg)?;
            let (d, socket) = Virtiofsd::start(&bin, dir, *readonly).map_err(|msg| FsArgError {
                // A virtiofsd too old for readonly=on is the user's choice to fix.
                usage: msg.starts_with("readonly=on"),
                ..runtime(msg)
            })?;
            (socket, Some(d))
        }
    };
    let dev =
        VhostUserFsDevice::connect(&socket, fs.tag(), mem.clone()).map_err(|e| FsArgError {
            // Nothing listening at a --fs socket is the user's input.
            usage: daemon.is_none()
                && matches!(e, FsError::Frontend(FrontendError::Connect { .. })),
            ..runtime(e.to_string())
        })?;
    Ok((dev, daemon))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fs_syntax() {
        assert_eq!(
            FsArg::parse_fs("tag=host,socket=/tmp/v.sock").ok(),
            Some(FsArg::Socket {
                tag: "host".into(),
                socket: "/tmp/v.sock".into()
            })
        );
        for (bad, why) in [
            ("socket=/x", "needs tag=TAG"),
            ("tag=a", "needs socket=PATH"),
            ("tag=,socket=/x", "the tag is empty"),
            ("tag=a,tag=b,socket=/x", "twice"),
            ("tag=a,socket=", "needs a path"),
            ("tag=a,sock=/x", "unknown option 'sock=/x'"),
        ] {
            let e = FsArg::parse_fs(bad).err().unwrap();
            assert!(e.usage);
            let msg = e.to_string();
            assert!(msg.starts_with(&format!("--fs {bad}: ")), "{msg}");
            assert!(msg.contains(why), "{msg}");
        }
        let long = format!("tag={},socket=/x", "t".repeat(37));
        assert!(FsArg::parse_fs(&long)
            .err()
            .unwrap()
            .to_string()
            .contains("at most 36"));
    }

    #[test]
    fn share_syntax_and_default_tag() {
        let dir = std::env::temp_dir();
        let d = dir.display().to_string();
        assert_eq!(
            FsArg::parse_share(&format!("{d},readonly=on,tag=x")).ok(),
            Some(FsArg::Share {
                dir: dir.clone(),
                tag: "x".into(),
                readonly: true
            })
        );
        let base = std::fs::canonicalize(&dir).unwrap();
        let base = base.file_name().unwrap().to_str().unwrap();
        assert_eq!(FsArg::parse_share(&d).unwrap().tag(), base);
        assert_eq!(FsArg::parse_share("/").unwrap().tag(), "root");
        for (bad, why) in [
            ("/nonexistent/dir", "No such file"),
            ("/proc/version", "not a directory"),
            ("", "needs a directory"),
        ] {
            let e = FsArg::parse_share(bad).err().unwrap();
            assert!(e.usage);
            assert!(
                e.to_string().starts_with(&format!("--share {bad}: ")),
                "{e}"
            );
            assert!(e.to_string().contains(why), "{e}");
        }
        for (opt, why) in [("readonly=yes", "on or off"), ("ro", "unknown option 'ro'")] {
            let e = FsArg::parse_share(&format!("{d},{opt}")).err().unwrap();
            assert!(e.to_string().contains(why), "{e}");
        }
    }
}
