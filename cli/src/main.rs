//! `vmm`: a KVM VMM whose networking is User-Mode Linux's transport set, and the same
//! transports as a stand-alone vhost-user net backend for QEMU, Cloud Hypervisor or UML.
//!
//! Exit status: 0 on success (for a VM: the guest's status), 1 on a run-time failure, 2 on bad
//! input (options, device specifications, files), with a one-line message.

mod backend_cmd;
mod ctl_cmd;
mod privs;
mod run_cmd;
mod vm_cmd;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// Exit status for bad input, as clap uses for usage errors.
const EXIT_USAGE: u8 = 2;

#[derive(Parser)]
#[command(
    name = "vmm",
    version,
    about = "A KVM VMM whose networking is User-Mode Linux's transport set",
    long_about = "A KVM VMM whose networking is User-Mode Linux's transport set.\n\n\
        Every network device's packets run through a vhost-user datapath whose host side is one \
        of UML's transports (tap, hybrid, raw, gre, l2tpv3, bess, fd, and the legacy tuntap, \
        mcast, ucast, pcap, daemon, vde), configured with UML's own syntax, plus `user`: \
        rootless user networking through libslirp (`--net user`).",
    after_long_help = vmm_net::config::SPEC_HELP,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    vm: vm_cmd::VmArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run CMD in a VM that sees the host's files: the root file system read-only over
    /// virtio-fs, tmpfs on /tmp, /run and /var/tmp, the current directory (and each --share)
    /// writable; CMD runs there as you, its output on stdout, its exit status ours.
    #[command(
        long_about = "Run CMD in a VM that sees the host's files, like `vng -- CMD`.\n\n\
            The host's root file system is the guest's root, read-only over virtio-fs \
            (virtiofsd, started and stopped by the VMM); tmpfs covers /tmp, /run and /var/tmp; \
            the current directory and each --share are mounted writable at their own paths. \
            CMD runs in the current directory as your uid and gid; its output is on stdout and \
            its exit status is vmm's (125: the run could not start in the guest). The kernel \
            needs virtio-pci, virtio-fs and FUSE (built in, or modules it loads from an initramfs \
            built from the kernel's module tree: --modules), DEVTMPFS_MOUNT and DEVPORT.\n\n\
            Example:\n  vmm run --kernel bzImage -- sh -c 'uname -r; exit 7'"
    )]
    Run(Box<run_cmd::RunArgs>),
    /// Serve one network device to vhost-user frontends (QEMU, Cloud Hypervisor, UML's
    /// virtio_uml) over a unix socket.
    #[command(
        long_about = "Serve one network device to vhost-user frontends over a unix socket.\n\n\
            The transport is opened once and kept while frontends come and go: one frontend at \
            a time; when it disconnects the next one is served. SIGINT or SIGTERM stops the \
            backend cleanly and removes the socket.\n\n\
            Example:\n  vmm net-backend --socket /tmp/vec0.sock vec0:transport=tap,ifname=tap0\n  \
            qemu-system-x86_64 ... -chardev socket,id=c0,path=/tmp/vec0.sock \\\n    \
            -netdev vhost-user,id=n0,chardev=c0 -device virtio-net-pci,netdev=n0",
        after_long_help = vmm_net::config::SPEC_HELP
    )]
    NetBackend {
        /// The unix socket to listen on, created mode 0600 (only this user can connect). A
        /// stale socket there (nobody listening) is replaced; anything else is refused.
        #[arg(long, value_name = "PATH")]
        socket: PathBuf,
        /// Share the socket: its mode, in octal (e.g. 0660 with --socket-group).
        #[arg(long, value_name = "OCTAL")]
        socket_mode: Option<String>,
        /// Share the socket: its group (a name or gid), whose members --socket-mode lets in.
        #[arg(long, value_name = "GROUP")]
        socket_group: Option<String>,
        #[command(flatten)]
        privileges: privs::PrivilegeArgs,
        /// Once privileges are dropped, a seccomp filter allows only the system calls the
        /// backend needs while it serves, in every thread. A call off the list: `kill` ends the
        /// backend (status 159) naming the call on stderr; `log` allows it and the kernel logs
        /// it (audit type 1326); `off` installs no filter.
        #[arg(long, value_name = "kill|log|off", default_value = "kill")]
        seccomp: vmm_vmm::seccomp::Mode,
        /// The device: `vecN:transport=NAME,key=value,...` or `ethN=TRANSPORT,...`.
        #[arg(value_name = "SPEC")]
        spec: String,
    },
    /// Send one request to a running VM's control socket (`vmm --api PATH`) and print the
    /// JSON reply.
    #[command(
        long_about = "Send one request to a running VM's control socket (`vmm --api PATH`) and \
            print its one-line JSON reply. Exit status 0 when the reply says \"ok\":true, 1 \
            otherwise.\n\n\
            Verbs:\n  \
            info                          the VM, its devices (slot, link, backend, counters)\n  \
            net link NIC up|down          the guest sees its link go down or up\n  \
            net swap NIC SPEC             replace the NIC's transport while the guest runs\n  \
            net capture NIC FILE [FILTER] pcap of every frame both ways (tcpdump filter)\n  \
            net capture NIC stop          end the capture, print its counters\n  \
            net bpf NIC FILE              FILE's classic BPF program (bpffile= format) becomes\n  \
            \x20                             the receive filter of a raw/hybrid NIC with bpfflash=1\n  \
            halt                          end the VM (status 130)\n  \
            reboot                        boot the same VM afresh\n  \
            sysrq KEY                     a serial BREAK and KEY: Linux's magic SysRq\n  \
            pause | resume                stop and restart the vCPUs\n\n\
            Example:\n  vmm --kernel bzImage --net user --api /tmp/vm.sock &\n  \
            vmm ctl /tmp/vm.sock net capture vec0 /tmp/vec0.pcap udp port 53"
    )]
    Ctl {
        /// The control socket.
        #[arg(value_name = "PATH")]
        socket: PathBuf,
        /// The verb and its arguments.
        #[arg(value_name = "VERB", required = true, num_args = 1.., trailing_var_arg = true)]
        words: Vec<String>,
    },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp_millis()
        .init();
    // A peer closing a socket must be an error to handle, not a signal that kills us.
    // SAFETY: setting SIGPIPE's disposition to ignore has no preconditions.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    let cli = Cli::parse();
    match cli.command {
        Some(Command::NetBackend {
            socket,
            socket_mode,
            socket_group,
            privileges,
            seccomp,
            spec,
        }) => backend_cmd::run(
            &socket,
            &spec,
            &privileges,
            seccomp,
            socket_mode.as_deref(),
            socket_group.as_deref(),
        ),
        Some(Command::Run(args)) => run_cmd::run(*args),
        Some(Command::Ctl { socket, words }) => ctl_cmd::run(&socket, &words),
        None => vm_cmd::run(cli.vm),
    }
}

/// Prints a one-line error and returns the exit status for it.
fn fail(status: u8, msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("vmm: {msg}");
    ExitCode::from(status)
}
