//! `vmm run [OPTIONS] -- CMD [ARGS]`: runs one command in a VM that sees the host's own files,
//! like `vng -- CMD`. The host's root file system is the guest's root, read-only over
//! virtio-fs (the kernel mounts it itself: `root=vmmroot rootfstype=virtiofs`, so there is no
//! initramfs to unpack); tmpfs covers /tmp, /run and /var/tmp; the current directory and each
//! `--share` are mounted writable at their own paths. Our init (resources/run/init) runs CMD
//! there as the caller's uid and gid, its output on the console (our stdout), and its exit
//! status becomes ours through the debug-exit port.
//!
//! The kernel needs virtio-pci, virtio-fs and FUSE, DEVTMPFS_MOUNT and DEVPORT. Built in,
//! it boots with no initramfs (fastest). As modules (a distribution's kernel), they are loaded
//! from an initramfs built for the run (vmm/src/initramfs.rs) out of the kernel's module tree,
//! whose init (resources/run/initramfs-init) mounts the root and hands over to ours.

use std::fmt::Write as _;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;

use vmm_vmm::builder::fs::{private_dir, FsArg};
use vmm_vmm::builder::{shares, DeviceConfig};

use crate::privs::Lockdown;
use crate::vm_cmd::{boot, parse_devices, parse_mem, parse_timeout};
use crate::{fail, EXIT_USAGE};

/// The init script, written beside its `env` for each run.
const INIT: &str = include_str!("../../resources/run/init");
/// The initramfs's init, for kernels that need modules: loads them, mounts the root, runs INIT.
const STAGE1: &str = include_str!("../../resources/run/initramfs-init");
/// The static busybox both inits run on (busybox-static, installed by resources/setup.sh).
const BUSYBOX: &str = "/bin/busybox";

/// The tag of the host's root file system.
const ROOT_TAG: &str = "vmmroot";
/// The tag of the current directory.
const CWD_TAG: &str = "vmmcwd";

#[derive(Args)]
pub struct RunArgs {
    /// The kernel (with virtio-pci, virtio-fs and FUSE built in or as modules); default: the
    /// newest /boot/vmlinuz-*.
    #[arg(long, value_name = "PATH")]
    kernel: Option<PathBuf>,
    /// More kernel command-line words (e.g. what the kernel needs on this machine).
    #[arg(long, value_name = "WORDS")]
    append: Option<String>,
    /// Also share DIR writable at the same path in the guest (repeatable); `readonly=on` for a
    /// read-only one.
    #[arg(long = "share", value_name = "DIR[,tag=TAG][,readonly=on]")]
    share: Vec<String>,
    /// A virtio-net device, as for `vmm --net`.
    #[arg(long = "net", value_name = "SPEC")]
    net: Vec<String>,
    /// The virtiofsd binary (default: on PATH, else ~/.cargo/bin/virtiofsd).
    #[arg(long, value_name = "PATH")]
    virtiofsd: Option<PathBuf>,
    /// Guest memory: `512M`, `1G`, `1.5G` (a plain number is MiB).
    #[arg(long, value_name = "SIZE", default_value = "256M")]
    mem: String,
    /// vCPUs.
    #[arg(long, value_name = "N", default_value_t = 1)]
    cpus: u8,
    /// Stop the guest after SECONDS: exit status 124.
    #[arg(long, value_name = "SECONDS", allow_negative_numbers = true)]
    timeout: Option<String>,
    /// Also write everything the guest prints on its console to FILE.
    #[arg(long, value_name = "FILE")]
    console_log: Option<PathBuf>,
    /// The kernel's module tree, for a kernel that has what `vmm run` needs (virtio-pci,
    /// virtio-fs, FUSE) as modules: they are loaded from an initramfs built for the run.
    /// Default: /lib/modules/RELEASE, the release read from the kernel.
    #[arg(long, value_name = "DIR")]
    modules: Option<PathBuf>,
    /// Also load the module NAME (and what it needs) from the module tree before CMD runs
    /// (repeatable).
    #[arg(long = "module", value_name = "NAME")]
    module: Vec<String>,
    /// The seccomp filter once the VM is built, as for `vmm --seccomp` (as root only: the
    /// filter goes with dropped capabilities).
    #[arg(long, value_name = "kill|log|off", default_value = "kill")]
    seccomp: vmm_vmm::seccomp::Mode,
    /// The command to run in the guest, and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    cmd: Vec<String>,
}

/// The newest `/boot/vmlinuz-*` by modification time.
fn default_kernel() -> Option<PathBuf> {
    std::fs::read_dir("/boot")
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("vmlinuz-"))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .max()
        .map(|(_, p)| p)
}

/// `'text'` for sh, whatever the text holds.
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// The run's private host directory (init and env), removed when the run ends.
struct RunDir(PathBuf);

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The `env` fragment init sources: who, where, what, and which shares to mount.
fn env_script(cwd: &Path, shares: &[(String, PathBuf)], cmd: &[String]) -> String {
    // SAFETY: getuid and getgid have no preconditions and cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let var =
        |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_string());
    let mut s = String::new();
    let _ = writeln!(s, "VMRUN_CWD={}", quote(&cwd.to_string_lossy()));
    let _ = writeln!(s, "VMRUN_UID={uid}\nVMRUN_GID={gid}");
    let _ = writeln!(s, "PATH={}", quote(&var("PATH", "/usr/bin:/bin")));
    let _ = writeln!(s, "HOME={}", quote(&var("HOME", "/")));
    let _ = writeln!(s, "TERM={}", quote(&var("TERM", "dumb")));
    s.push_str("vmrun_shares() {\n    :\n");
    for (tag, dir) in shares {
        let _ = writeln!(
            s,
            "    vmrun_mount {} {}",
            quote(tag),
            quote(&dir.to_string_lossy())
        );
    }
    s.push_str("}\nset --");
    for arg in cmd {
        s.push(' ');
        s.push_str(&quote(arg));
    }
    s.push('\n');
    s
}

pub fn run(args: RunArgs) -> ExitCode {
    let Some(kernel) = args.kernel.or_else(default_kernel) else {
        return fail(
            EXIT_USAGE,
            "--kernel: no /boot/vmlinuz-* here, give --kernel PATH",
        );
    };
    let modules = match vmm_vmm::initramfs::plan(
        &kernel,
        args.modules.as_deref(),
        &args.module,
        !args.net.is_empty(),
    ) {
        Ok(m) => m,
        Err(e) => return fail(EXIT_USAGE, e),
    };
    let timeout = match args.timeout.as_deref().map(parse_timeout).transpose() {
        Ok(t) => t,
        Err(e) => return fail(EXIT_USAGE, e),
    };
    let mut devices = match parse_devices(&args.net, &[], &args.share) {
        Ok(d) => d,
        Err(e) => return fail(EXIT_USAGE, e),
    };
    let cwd = match std::env::current_dir() {
        Ok(d) => d,
        Err(e) => return fail(1, format_args!("the current directory: {e}")),
    };
    // The guest mounts each writable share at its host path, the current directory first.
    let mut mounts = Vec::new();
    if cwd != Path::new("/") {
        mounts.push((CWD_TAG.to_string(), cwd.clone()));
        devices.push(DeviceConfig::Fs {
            arg: format!("{} (the current directory)", cwd.display()),
            fs: FsArg::Share {
                dir: cwd.clone(),
                tag: CWD_TAG.into(),
                readonly: false,
            },
        });
    }
    for (tag, dir) in shares(&devices) {
        if tag != CWD_TAG {
            mounts.push((tag.to_string(), dir.to_path_buf()));
        }
    }
    devices.push(DeviceConfig::Fs {
        arg: "/ (the root file system)".into(),
        fs: FsArg::Share {
            dir: PathBuf::from("/"),
            tag: ROOT_TAG.into(),
            readonly: true,
        },
    });

    let dir = match private_dir() {
        Ok(d) => RunDir(d),
        Err(e) => return fail(1, format_args!("creating the run directory: {e}")),
    };
    let init = dir.0.join("init");
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o755)
        .open(&init)
        .and_then(|mut f| std::io::Write::write_all(&mut f, INIT.as_bytes()))
        .and_then(|()| std::fs::write(dir.0.join("env"), env_script(&cwd, &mounts, &args.cmd)))
        // The guest's root reads it as whoever runs init there: readable by all, like /.
        .and_then(|()| std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)));
    if let Err(e) = written {
        return fail(1, format_args!("writing {}: {e}", dir.0.display()));
    }

    let mut cmdline = "console=ttyS0 quiet loglevel=1 reboot=k panic=-1 ".to_string();
    let mut initrd = None;
    if modules.is_empty() {
        // The kernel mounts the root itself: no initramfs to unpack.
        let _ = write!(
            cmdline,
            "root={ROOT_TAG} rootfstype=virtiofs ro init={}",
            init.display()
        );
    } else {
        let path = dir.0.join("initramfs.cpio");
        let written = std::fs::File::create(&path)
            .map_err(|e| format!("{}: {e}", path.display()))
            .and_then(|f| {
                vmm_vmm::initramfs::write(
                    std::io::BufWriter::new(f),
                    STAGE1,
                    Path::new(BUSYBOX),
                    &modules,
                )
                .map_err(|e| e.to_string())
            });
        if let Err(e) = written {
            return fail(1, format_args!("building the initramfs: {e}"));
        }
        log::info!(
            "initramfs with {}",
            modules
                .iter()
                .map(|m| m.name.as_str())
                .collect::<Vec<_>>()
                .join(" ")
        );
        initrd = Some(path);
        let _ = write!(cmdline, "rdinit=/init vmrun_init={}", init.display());
    }
    if let Some(extra) = &args.append {
        cmdline.push(' ');
        cmdline.push_str(extra);
    }
    let mut config = vmm_vmm::VmConfig::new(kernel);
    config.cmdline = cmdline;
    config.initrd = initrd;
    config.timeout = timeout;
    config.console_log = args.console_log;
    config.mem_mib = match parse_mem(&args.mem) {
        Ok(m) => m,
        Err(e) => return fail(EXIT_USAGE, e),
    };
    config.cpus = args.cpus;
    config.devices = devices;
    config.virtiofsd = args.virtiofsd;
    // As root, the run's capabilities go once the VM is built; uid 0 stays (the run's
    // directory is root's, and CMD runs as root in the guest).
    let status = boot(
        config,
        args.timeout.as_deref(),
        &Lockdown::root_only(),
        args.seccomp,
    );
    drop(dir);
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_any_argument() {
        assert_eq!(quote("it's"), r"'it'\''s'");
        let env = env_script(
            Path::new("/a b"),
            &[("t".into(), PathBuf::from("/x'y"))],
            &["sh".into(), "-c".into(), "exit 7".into()],
        );
        assert!(env.contains("VMRUN_CWD='/a b'\n"), "{env}");
        assert!(env.contains(r"vmrun_mount 't' '/x'\''y'"), "{env}");
        assert!(env.ends_with("set -- 'sh' '-c' 'exit 7'\n"), "{env}");
    }
}
