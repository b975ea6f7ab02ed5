//! `vmm --kernel ...`: boot a guest on KVM. The exit status is the guest's (its debug-exit
//! byte, 0 after an i8042 reset), 1 for a triple fault or a VMM failure, 2 for bad input, 124
//! after `--timeout`, 130 when stopped by SIGINT/SIGTERM, 134 when the guest kernel panicked
//! (or, with `--fail-on`, reported an oops or warning).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use vmm_vmm::watch::{FailOn, FailureKind};

use vmm_vmm::builder::{DeviceConfig, DeviceError};
use vmm_vmm::privileges::Plan;
use vmm_vmm::seccomp;

use crate::privs::Lockdown;
use crate::{fail, EXIT_USAGE};

#[derive(Args)]
pub struct VmArgs {
    /// The kernel: a bzImage (64-bit boot protocol) or an ELF vmlinux with a PVH note.
    #[arg(long, value_name = "PATH", required = true)]
    kernel: Option<PathBuf>,
    /// An initrd (initramfs) loaded at the top of low memory.
    #[arg(long, value_name = "PATH")]
    initrd: Option<PathBuf>,
    /// The kernel command line. The guest ends the VM with `reboot=k` (i8042 reset, status 0)
    /// or by writing its status to I/O port 0xf4 (the VMM exits with that byte).
    #[arg(long, value_name = "STRING", default_value = vmm_vmm::DEFAULT_CMDLINE)]
    cmdline: String,
    /// Guest memory: `512M`, `1G`, `1.5G` (a plain number is MiB).
    #[arg(long, value_name = "SIZE", default_value = "256M")]
    mem: String,
    /// vCPUs (each a thread; the guest finds them in the MP table).
    #[arg(long, value_name = "N", default_value_t = 1)]
    cpus: u8,
    /// A virtio-net device (repeatable, one PCI slot each): `vecN:transport=...` or `ethN=...`
    /// served by a backend thread of the VMM (the grammar is below; `user[,hostfwd=...]` is
    /// rootless user networking, the next free vecN), or
    /// `vhost-user,socket=PATH[,mac=MAC]` for an external vhost-user backend (e.g. `vmm
    /// net-backend`, DPDK); `mac=` gives the guest that MAC whatever the backend offers.
    #[arg(long = "net", value_name = "SPEC")]
    net: Vec<String>,
    /// A virtio-fs device served by a running virtiofsd (repeatable): `tag=TAG,socket=PATH`;
    /// the guest mounts it with `mount -t virtiofs TAG DIR`.
    #[arg(long = "fs", value_name = "tag=TAG,socket=PATH")]
    fs: Vec<String>,
    /// Share a host directory as a virtio-fs device (repeatable): the VMM starts virtiofsd for
    /// it and stops it when the VM ends. The tag defaults to the directory's basename (`root`
    /// for /); `readonly=on` makes the guest's writes fail (EROFS).
    #[arg(long = "share", value_name = "DIR[,tag=TAG][,readonly=on]")]
    share: Vec<String>,
    /// A virtio-blk disk (repeatable, /dev/vda, vdb, ... in order): a raw image unless
    /// `format=qcow2`; without `format=` a file with a qcow2 header is refused (say which it is:
    /// the format is never guessed). `readonly=on` opens the file read-only and fails the
    /// guest's writes; `snapshot=on` sends writes to a temporary overlay, leaving the file as it
    /// was; `serial=` is what the guest reads as the disk's serial (default: the file's name).
    #[arg(
        long = "disk",
        value_name = "path=FILE[,readonly=on][,format=raw|qcow2][,snapshot=on][,serial=ID]"
    )]
    disk: Vec<String>,
    /// The virtiofsd binary for --share (default: on PATH, else ~/.cargo/bin/virtiofsd).
    #[arg(long, value_name = "PATH")]
    virtiofsd: Option<PathBuf>,
    /// Stop the guest after SECONDS (a positive number, fractions allowed): exit status 124.
    #[arg(long, value_name = "SECONDS", allow_negative_numbers = true)]
    timeout: Option<String>,
    /// Also write everything the guest prints on its console to FILE (created or truncated).
    #[arg(long, value_name = "FILE")]
    console_log: Option<PathBuf>,
    /// Besides a panic (always a failure, status 134), fail on these console reports:
    /// `oops` (BUG:, Oops:, general protection fault, sanitizer reports), `warn` (WARNING:),
    /// comma-separated.
    #[arg(long, value_name = "KINDS")]
    fail_on: Option<String>,
    /// Serve a control socket at PATH (mode 0600) while the VM runs: `vmm ctl PATH VERB` (see
    /// `vmm ctl --help`) inspects the VM, sets a NIC's link, swaps its transport, captures its
    /// frames, pauses, halts or reboots the VM, sends SysRq.
    #[arg(long, value_name = "PATH")]
    api: Option<PathBuf>,
    /// Share the control socket: its mode, in octal (e.g. 0660 with --api-group).
    #[arg(long, value_name = "OCTAL", requires = "api")]
    api_mode: Option<String>,
    /// Share the control socket: its group (a name or gid), whose members --api-mode lets in.
    #[arg(long, value_name = "GROUP", requires = "api")]
    api_group: Option<String>,
    #[command(flatten)]
    privileges: crate::privs::PrivilegeArgs,
    /// Once privileges are dropped (all devices open, before the vCPUs run), a seccomp filter
    /// allows only the system calls the VM needs, in every thread. A call off the list: `kill`
    /// ends vmm (status 159) naming the call on stderr; `log` allows it and the kernel logs it
    /// (audit type 1326); `off` installs no filter. With privileges kept (--keep-privileges,
    /// or not root) there is no filter: `reboot` and `net swap` open devices again.
    #[arg(long, value_name = "kill|log|off", default_value = "kill")]
    seccomp: vmm_vmm::seccomp::Mode,
    /// Do not offer the pvpanic PCI device (1b36:0011). A panic is still caught from the
    /// console's panic banner.
    #[arg(long)]
    no_pvpanic: bool,
}

/// `--timeout`: a positive, finite number of seconds.
pub(crate) fn parse_timeout(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("--timeout {s}: not a number of seconds"))?;
    if !(secs > 0.0 && secs.is_finite()) || Duration::try_from_secs_f64(secs).is_err() {
        return Err(format!(
            "--timeout {s}: must be a positive number of seconds"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// `--mem`: sizes as users type them, `512M`, `1G`, `1.5G`, `2GiB`, `65536K`; a plain number is
/// MiB, as it always was. Returns MiB; a size that is not a whole number of MiB is refused.
pub(crate) fn parse_mem(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let not_a_size = || format!("--mem {s}: not a size (e.g. 512M, 1G; a plain number is MiB)");
    if num.is_empty() {
        return Err(not_a_size());
    }
    let kib_per_unit: f64 = match unit.to_ascii_lowercase().as_str() {
        "" | "m" | "mb" | "mib" => 1024.0,
        "k" | "kb" | "kib" => 1.0,
        "g" | "gb" | "gib" => 1024.0 * 1024.0,
        "t" | "tb" | "tib" => 1024.0 * 1024.0 * 1024.0,
        _ => {
            return Err(format!(
                "--mem {s}: unknown unit '{unit}' (a number with K, M or G, e.g. 512M or 1G)"
            ))
        }
    };
    let value: f64 = num.parse().map_err(|_| not_a_size())?;
    let kib = value * kib_per_unit;
    if !kib.is_finite() || kib > (u64::MAX / 2) as f64 {
        return Err(format!("--mem {s}: too large"));
    }
    if kib % 1024.0 != 0.0 {
        return Err(format!("--mem {s}: not a whole number of MiB"));
    }
    Ok((kib / 1024.0) as u64)
}

/// `--fail-on oops,warn`.
fn parse_fail_on(s: &str) -> Result<FailOn, String> {
    let mut f = FailOn::default();
    for kind in s.split(',') {
        match kind.trim() {
            "oops" => f.oops = true,
            "warn" => f.warn = true,
            other => {
                return Err(format!(
                    "--fail-on {s}: unknown kind '{other}' (oops, warn, comma-separated)"
                ))
            }
        }
    }
    Ok(f)
}

pub fn run(args: VmArgs) -> ExitCode {
    let Some(kernel) = args.kernel else {
        return fail(EXIT_USAGE, "--kernel is required");
    };
    let devices = match parse_devices(&args.net, &args.fs, &args.share).and_then(|mut d| {
        for arg in &args.disk {
            d.push(DeviceConfig::disk(arg)?);
        }
        Ok(d)
    }) {
        Ok(d) => d,
        Err(e) => return fail(EXIT_USAGE, e),
    };
    let timeout = match args.timeout.as_deref().map(parse_timeout).transpose() {
        Ok(t) => t,
        Err(e) => return fail(EXIT_USAGE, e),
    };
    let fail_on = match args.fail_on.as_deref().map(parse_fail_on).transpose() {
        Ok(f) => f.unwrap_or_default(),
        Err(e) => return fail(EXIT_USAGE, e),
    };
    let mem_mib = match parse_mem(&args.mem) {
        Ok(m) => m,
        Err(e) => return fail(EXIT_USAGE, e),
    };
    let lockdown = match Lockdown::new(
        &args.privileges,
        ("--api-mode", args.api_mode.as_deref()),
        ("--api-group", args.api_group.as_deref()),
        true,
    ) {
        Ok(l) => l,
        Err(e) => return fail(EXIT_USAGE, e),
    };
    let mut config = vmm_vmm::VmConfig::new(kernel);
    config.timeout = timeout;
    config.console_log = args.console_log;
    config.fail_on = fail_on;
    config.pvpanic = !args.no_pvpanic;
    config.initrd = args.initrd;
    config.cmdline = args.cmdline;
    config.mem_mib = mem_mib;
    config.cpus = args.cpus;
    config.devices = devices;
    config.virtiofsd = args.virtiofsd;
    config.api = args.api;
    boot(config, args.timeout.as_deref(), &lockdown, args.seccomp)
}

/// `--net`, `--fs` and `--share`, in that order; the first bad one is the error (a one-line
/// message naming the option and value).
pub fn parse_devices(
    net: &[String],
    fs: &[String],
    share: &[String],
) -> Result<Vec<DeviceConfig>, DeviceError> {
    net.iter()
        .map(|a| DeviceConfig::net(a))
        .chain(fs.iter().map(|a| DeviceConfig::fs(a)))
        .chain(share.iter().map(|a| DeviceConfig::share(a)))
        .collect()
}

/// Builds the VM with its devices, runs it and turns the outcome into the exit status. A
/// `reboot` through the control socket builds the same VM again (its console log continues).
pub fn boot(
    mut config: vmm_vmm::VmConfig,
    timeout: Option<&str>,
    lockdown: &Lockdown,
    filter: seccomp::Mode,
) -> ExitCode {
    // The process's filter goes with dropped privileges: with them kept, `reboot` and `net
    // swap` build devices again, which its list does not cover. The threads that read the
    // guest's, frontends' and peers' input are confined either way.
    if matches!(lockdown.plan, Plan::Keep) && filter != seccomp::Mode::Off {
        log::info!(
            "seccomp: vCPU and datapath threads filtered; no process-wide filter, privileges \
             are kept (--keep-privileges, or not root)"
        );
    }
    loop {
        match boot_once(config.clone(), timeout, lockdown, filter) {
            Some(status) => return status,
            None => {
                eprintln!("vmm: rebooting (control socket)");
                config.console_log_append = true;
            }
        }
    }
}

/// One boot: the exit status, or `None` for a reboot.
fn boot_once(
    config: vmm_vmm::VmConfig,
    timeout: Option<&str>,
    lockdown: &Lockdown,
    filter: seccomp::Mode,
) -> Option<ExitCode> {
    let api = config.api.clone();
    let mut vmm = match vmm_vmm::Vmm::new(config) {
        Ok(v) => v,
        Err(e) => return Some(fail(exit_status(&e), e)),
    };
    // SIGINT/SIGTERM stop the VM (status 130, "stopped by the host").
    if let Err(e) = vmm.stop_on_signals() {
        return Some(fail(1, e));
    }
    // Everything is open (devices, transports, virtiofsd, the control socket): share the
    // socket as asked and drop privileges before the guest runs.
    if let Err(e) = lockdown.apply(api.as_deref(), "--api") {
        return Some(fail(1, e));
    }
    // Then the seccomp filters: the process's on every thread and those created later
    // (privileges dropped, so there is no reboot: this runs once); and each vCPU, datapath,
    // vhost-user and relay thread confines itself as it next acts.
    let process = if matches!(lockdown.plan, Plan::Keep) {
        seccomp::Mode::Off
    } else {
        filter
    };
    if let Err(e) = seccomp::install_all_threads(&seccomp::vm_list(), process)
        .and_then(|()| seccomp::arm(filter))
    {
        return Some(fail(1, format_args!("seccomp: {e}")));
    }
    match vmm.run() {
        Ok(report) => {
            log::info!("{:?} after {:?}", report.exit, report.elapsed);
            match report.exit {
                vmm_vmm::VmExit::Shutdown => eprintln!(
                    "vmm: the guest triple-faulted after {:?} (or rebooted with reboot=t)",
                    report.elapsed
                ),
                vmm_vmm::VmExit::Stopped => eprintln!("vmm: stopped by a signal"),
                vmm_vmm::VmExit::Halted => eprintln!("vmm: halted through the control socket"),
                vmm_vmm::VmExit::Reboot => return None,
                vmm_vmm::VmExit::Timeout => eprintln!(
                    "vmm: timeout: the guest was still running after --timeout {}",
                    timeout.unwrap_or("?")
                ),
                vmm_vmm::VmExit::GuestFailed => {
                    let (what, message) = match &report.failure {
                        Some(f) => (
                            match f.kind {
                                FailureKind::Panic => "panicked",
                                FailureKind::Oops => "oopsed (--fail-on oops)",
                                FailureKind::Warning => "warned (--fail-on warn)",
                            },
                            f.message.as_str(),
                        ),
                        None => ("panicked", "(no report)"),
                    };
                    eprintln!("vmm: guest kernel {what}: {message}");
                }
                _ => {}
            }
            Some(ExitCode::from(report.exit_code().clamp(0, 255) as u8))
        }
        Err(e) => Some(fail(exit_status(&e), e)),
    }
}

/// Bad input (the kernel or initrd file, sizes, counts) is status 2; the rest is 1.
fn exit_status(e: &vmm_vmm::VmmError) -> u8 {
    if e.is_bad_input() {
        EXIT_USAGE
    } else {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::parse_mem;

    #[test]
    fn memory_sizes_as_users_type_them() {
        for (s, mib) in [
            ("256", 256),
            ("512M", 512),
            ("512m", 512),
            ("512MiB", 512),
            ("1G", 1024),
            ("1.5G", 1536),
            ("2GiB", 2048),
            ("65536K", 64),
            (" 1g ", 1024),
        ] {
            assert_eq!(parse_mem(s), Ok(mib), "{s}");
        }
        for (s, why) in [
            ("12X", "unknown unit 'X'"),
            ("G", "not a size"),
            ("1.2.3G", "not a size"),
            ("1000K", "not a whole number of MiB"),
            ("0.1M", "not a whole number of MiB"),
            ("-1G", "not a size"),
            ("99999999999999999999T", "too large"),
        ] {
            let e = parse_mem(s).unwrap_err();
            assert!(e.starts_with(&format!("--mem {s}: ")), "{e}");
            assert!(e.contains(why), "{s}: {e}");
        }
    }
}
