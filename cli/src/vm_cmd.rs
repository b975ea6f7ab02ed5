//! `vmm --kernel ...`: boot a guest on KVM. The exit status is the guest's (its debug-exit
//! byte, 0 after an i8042 reset), 1 for a triple fault or a VMM failure, 2 for bad input, 124
//! after `--timeout`, 130 when stopped by SIGINT/SIGTERM, 134 when the guest kernel panicked
//! (or, with `--fail-on`, reported an oops or warning).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use vmm_devices::ExitRequest;
use vmm_vmm::watch::{FailOn, FailureKind};

use crate::{fail, signals, vm_net, EXIT_USAGE};

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
    /// Guest memory in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 256)]
    mem: u64,
    /// vCPUs (each a thread; the guest finds them in the MP table).
    #[arg(long, value_name = "N", default_value_t = 1)]
    cpus: u8,
    /// A virtio-net device (repeatable, one PCI slot each): `vecN:transport=...` or `ethN=...`
    /// served by a backend thread of the VMM (the grammar is below), or
    /// `vhost-user,socket=PATH` for an external vhost-user backend (e.g. `vmm net-backend`).
    #[arg(long = "net", value_name = "SPEC")]
    net: Vec<String>,
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
    /// Do not offer the pvpanic PCI device (1b36:0011). A panic is still caught from the
    /// console's panic banner.
    #[arg(long)]
    no_pvpanic: bool,
}

/// `--timeout`: a positive, finite number of seconds.
fn parse_timeout(s: &str) -> Result<Duration, String> {
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
    let mut nets = Vec::new();
    for arg in &args.net {
        match vm_net::NetArg::parse(arg) {
            Ok(n) => nets.push((arg, n)),
            Err(e) => return fail(EXIT_USAGE, e),
        }
    }
    let timeout = match args.timeout.as_deref().map(parse_timeout).transpose() {
        Ok(t) => t,
        Err(e) => return fail(EXIT_USAGE, e),
    };
    let fail_on = match args.fail_on.as_deref().map(parse_fail_on).transpose() {
        Ok(f) => f.unwrap_or_default(),
        Err(e) => return fail(EXIT_USAGE, e),
    };
    let mut config = vmm_vmm::VmConfig::new(kernel);
    config.timeout = timeout;
    config.console_log = args.console_log;
    config.fail_on = fail_on;
    config.pvpanic = !args.no_pvpanic;
    config.initrd = args.initrd;
    config.cmdline = args.cmdline;
    config.mem_mib = args.mem;
    config.cpus = args.cpus;
    let mut vmm = match vmm_vmm::Vmm::new(config) {
        Ok(v) => v,
        Err(e) => return fail(exit_status(&e), e),
    };
    let mut backends = Vec::new();
    for (arg, net) in nets {
        let (dev, thread) = match vm_net::open(arg, net, vmm.guest_ram().memory()) {
            Ok(d) => d,
            Err(e) => return fail(if e.usage { EXIT_USAGE } else { 1 }, e),
        };
        backends.extend(thread);
        if let Err(e) = vmm.add_virtio_device(Box::new(dev)) {
            return fail(1, format_args!("--net {arg}: {e}"));
        }
    }
    // SIGINT/SIGTERM stop the VM (status 130, "stopped by the host").
    let stop = match signals::install() {
        Ok(fd) => fd,
        Err(e) => return fail(1, format_args!("installing signal handlers: {e}")),
    };
    let notifier = vmm.exit_notifier().clone();
    std::thread::spawn(move || {
        let mut p = libc::pollfd {
            fd: std::os::fd::AsRawFd::as_raw_fd(&stop),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one live pollfd; the eventfd outlives this thread (moved into it).
        while unsafe { libc::poll(&mut p, 1, -1) } <= 0 {}
        notifier.request(ExitRequest::Stop);
    });
    let result = vmm.run();
    // The VM (and with it every frontend) is gone: each backend sees its connection close,
    // logs its counters and ends.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    for b in backends {
        b.join(deadline);
    }
    match result {
        Ok(report) => {
            log::info!("{:?} after {:?}", report.exit, report.elapsed);
            match report.exit {
                vmm_vmm::VmExit::Shutdown => eprintln!(
                    "vmm: the guest triple-faulted after {:?} (or rebooted with reboot=t)",
                    report.elapsed
                ),
                vmm_vmm::VmExit::Stopped => eprintln!("vmm: stopped by a signal"),
                vmm_vmm::VmExit::Timeout => eprintln!(
                    "vmm: timeout: the guest was still running after --timeout {}",
                    args.timeout.as_deref().unwrap_or("?")
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
            ExitCode::from(report.exit_code().clamp(0, 255) as u8)
        }
        Err(e) => fail(exit_status(&e), e),
    }
}

/// Bad input (the kernel or initrd file, sizes, counts) is status 2; the rest is 1.
fn exit_status(e: &vmm_vmm::VmmError) -> u8 {
    match e {
        vmm_vmm::VmmError::Config(_)
        | vmm_vmm::VmmError::Boot(_)
        | vmm_vmm::VmmError::ConsoleLog { .. }
        | vmm_vmm::VmmError::Memory(vmm_vmm::memory::Error::BadSize { .. }) => EXIT_USAGE,
        _ => 1,
    }
}
