//! seccomp-bpf filters (rust-vmm's `seccompiler`), installed once everything is open and
//! privileges are dropped: one for the whole process, and a narrower one on each thread that
//! reads what a guest, a frontend or a wire peer sends.
//!
//! # The process's filter
//! `vmm net-backend` installs [`net_backend_list`], `vmm` (the VM process) [`vm_list`], with
//! `SECCOMP_FILTER_FLAG_TSYNC` on every thread that exists then; threads created later
//! inherit it. It is what the main thread needs: the event loop, the control socket (`net
//! swap` opens transports, `net capture` files), set-up and teardown. With privileges kept
//! (`--keep-privileges`, or not root) `vmm` installs none, since `reboot` builds the VM again.
//!
//! # Each thread kind's filter
//! Filters stack: a thread confined as a [`ThreadKind`] runs under the process's filter *and*
//! its kind's list ([`ThreadKind::list`], always a subset of the process's), the stricter one
//! deciding. Once [`arm`]ed (after the privileges are dropped, since dropping them takes
//! calls no kind allows), each thread confines itself with [`confine`] where it next acts:
//! - [`ThreadKind::Vcpu`]: as the vCPU's loop starts. It activates devices when the guest
//!   says DRIVER_OK, so the virtio-blk worker it spawns runs under its list too;
//! - [`ThreadKind::Handler`] (the vhost-user protocol thread): at the first message after
//!   arming that reaches the device (every frontend starts with GET_FEATURES);
//! - [`ThreadKind::Worker`] (the datapath): at its first event after arming;
//! - [`ThreadKind::Relay`] (the thread between a frontend and the handler): before each
//!   message it reads.
//!
//! A relay thread waiting since before arming confines itself at the next message it reads
//! (the frontend's or the handler's).
//!
//! Some calls are allowed only with given arguments ([`ThreadKind::conditional`]): the
//! handler's `ioctl` (`TUNSETOFFLOAD`, `FIONBIO`) and `rt_sigaction` (SIGBUS), the worker's
//! `ioctl` (`FIONBIO`, `FIONREAD`, `TUNSETQUEUE`) and `setsockopt` (`PACKET_FANOUT_DATA`),
//! the vCPU's `tgkill` (our own process only). The vCPU's
//! `ioctl` is not narrowed by request: it is how KVM is driven.
//!
//! Per-thread filters are installed whatever the privileges, so a VM that keeps them still
//! confines what guests and peers reach.
//!
//! The lists were found by running the suites (every transport, hostile and reconnecting
//! frontends, reboots, swaps, captures, shutdown) with `--seccomp log` and reading the
//! kernel's audit records (type 1326, with each thread's name; auditd keeps them all where
//! the kernel log would rate-limit them).
//!
//! # A call off the list, by [`Mode`]
//! - `kill`: `SECCOMP_RET_TRAP`; the SIGSYS handler writes `vmm: seccomp: forbidden system
//!   call N (NAME)` to stderr (async-signal-safe `write`) and ends the process with status
//!   159 (128 + SIGSYS);
//! - `log`: `SECCOMP_RET_LOG`: allowed, and logged by the kernel (`audit: type=1326 ...
//!   comm="THREAD" ... syscall=N` in the kernel log);
//! - `off`: no filter.
//!
//! # Self-test
//! With `VMM_SECCOMP_SELFTEST=control` in the environment the process calls `uname` (on no
//! list) right after installing its filter; with `VMM_SECCOMP_SELFTEST=KIND` (`vcpu`,
//! `handler`, `worker`, `relay`) the first thread of that kind calls `listen(-1, 0)` (on the
//! process's list, not the kind's) right after confining itself. Tests see the violation end
//! the process (or, with `log`, not).

use std::cell::Cell;
use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicU8, Ordering};

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

#[cfg(target_arch = "x86_64")]
mod names_x86_64;

/// What a call off the allow-list does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Mode {
    /// Ends the process, naming the call on stderr.
    #[default]
    Kill,
    /// Allowed, logged by the kernel.
    Log,
    /// No filter at all.
    Off,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "kill" => Ok(Mode::Kill),
            "log" => Ok(Mode::Log),
            "off" => Ok(Mode::Off),
            other => Err(format!("{other}: expected kill, log or off")),
        }
    }
}

/// The environment variable of the self-test (see the module's documentation).
pub const SELFTEST_ENV: &str = "VMM_SECCOMP_SELFTEST";

/// The exit status after a forbidden call in `kill` mode (128 + SIGSYS).
pub const EXIT_STATUS: i32 = 128 + libc::SIGSYS;

/// The threads that read what is outside the process, each confined by a list of its own on
/// top of the process's (see the module's documentation for where each confines itself).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadKind {
    /// Runs the guest (`KVM_RUN`), emulates its device registers and activates devices,
    /// which spawns the virtio-blk worker and sends the vhost-user set-up messages.
    Vcpu,
    /// vhost-user-backend's protocol thread: the frontend's messages, mapping its memory.
    Handler,
    /// The datapath: guest queues and the transport's socket. `sockets`: the transport opens
    /// sockets as it runs (`transport=user`: libslirp's connections for the guest).
    Worker { sockets: bool },
    /// The interop relay between a frontend and the handler: reads and writes messages.
    Relay,
}

impl ThreadKind {
    /// The kind's name, as `VMM_SECCOMP_SELFTEST` takes it.
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Handler => "handler",
            ThreadKind::Worker { .. } => "worker",
            ThreadKind::Relay => "relay",
        }
    }

    /// The calls the kind may make only with certain arguments (not on [`ThreadKind::list`]).
    pub fn conditional(self) -> &'static [Conditional] {
        match self {
            ThreadKind::Handler => HANDLER_CONDITIONAL,
            ThreadKind::Worker { .. } => WORKER_CONDITIONAL,
            ThreadKind::Vcpu => VCPU_CONDITIONAL,
            ThreadKind::Relay => &[],
        }
    }

    /// The calls the kind may make: [`THREAD_BASE`] and its own.
    pub fn list(self) -> Vec<(i64, &'static str)> {
        let own: &[&[(i64, &str)]] = match self {
            ThreadKind::Vcpu => &[SPAWN, VCPU],
            ThreadKind::Handler => &[HANDLER],
            ThreadKind::Worker { sockets: false } => &[MESSAGES, WORKER],
            ThreadKind::Worker { sockets: true } => &[MESSAGES, WORKER, WORKER_SOCKETS],
            ThreadKind::Relay => &[RELAY],
        };
        THREAD_BASE
            .iter()
            .chain(own.iter().flat_map(|l| l.iter()))
            .copied()
            .collect()
    }
}

/// A call allowed only when one argument has one of a few values (an ioctl's request, a
/// signal's number, our own process).
#[derive(Clone, Copy, Debug)]
pub struct Conditional {
    pub nr: i64,
    pub name: &'static str,
    /// Which argument, from 0.
    pub arg: u8,
    pub values: Values,
}

/// The values a [`Conditional`] argument may take.
#[derive(Clone, Copy, Debug)]
pub enum Values {
    Fixed(&'static [u64]),
    /// This process's id, as the filter is compiled (a signal only to our own threads).
    OwnPid,
}

/// The vCPU's `tgkill`: to our own threads only (kicking the other vCPUs), never another
/// process.
const VCPU_CONDITIONAL: &[Conditional] = &[Conditional {
    nr: libc::SYS_tgkill,
    name: "SYS_tgkill",
    arg: 0,
    values: Values::OwnPid,
}];

/// The process-wide filter's `sched_setaffinity`: on the calling thread only (pid 0), which
/// is how a worker pins itself (`affinity=`, see `backend::affinity`) before its own filter,
/// which has no such call, closes in; no thread may move another process.
const PROCESS_CONDITIONAL: &[Conditional] = &[Conditional {
    nr: libc::SYS_sched_setaffinity,
    name: "SYS_sched_setaffinity",
    arg: 0,
    values: Values::Fixed(&[0]),
}];

/// The handler's `ioctl`s: `TUNSETOFFLOAD` (mirroring the offloads the guest acked on a tap),
/// `FIONBIO` (non-blocking sockets); its `rt_sigaction`: SIGBUS only (the guard on the
/// frontend's memory, installed at the first memory table).
const HANDLER_CONDITIONAL: &[Conditional] = &[
    Conditional {
        nr: libc::SYS_ioctl,
        name: "SYS_ioctl",
        arg: 1,
        values: Values::Fixed(&[libc::TUNSETOFFLOAD, libc::FIONBIO]),
    },
    Conditional {
        nr: libc::SYS_rt_sigaction,
        name: "SYS_rt_sigaction",
        arg: 0,
        values: Values::Fixed(&[libc::SIGBUS as u64]),
    },
];

/// The worker's `ioctl`s: `FIONBIO` and `FIONREAD` (libslirp's and glib's sockets),
/// `TUNSETQUEUE` (attaching and detaching a multi-queue tap's queue as the guest enables its
/// pair); its `setsockopt`: `PACKET_FANOUT_DATA` only (spreading a multi-queue raw device's
/// flows over the pairs the guest enabled; a worker whose transport opens sockets may call
/// it unrestricted, see [`WORKER_SOCKETS`]).
const WORKER_CONDITIONAL: &[Conditional] = &[
    Conditional {
        nr: libc::SYS_ioctl,
        name: "SYS_ioctl",
        arg: 1,
        values: Values::Fixed(&[libc::FIONBIO, libc::FIONREAD, libc::TUNSETQUEUE]),
    },
    Conditional {
        nr: libc::SYS_setsockopt,
        name: "SYS_setsockopt",
        arg: 2,
        values: Values::Fixed(&[libc::PACKET_FANOUT_DATA as u64]),
    },
];

macro_rules! syscalls {
    ($($name:ident),* $(,)?) => {
        &[$((libc::$name, stringify!($name))),*]
    };
}

/// What every confined thread needs: memory, locks, the clock, logging to stderr, closing
/// descriptors, signals returning, and ending (the thread, or the process from the SIGSYS
/// handler).
pub const THREAD_BASE: &[(i64, &str)] = syscalls![
    SYS_write,
    SYS_close,
    SYS_futex,
    SYS_brk,
    SYS_mmap,
    SYS_munmap,
    SYS_mremap,
    SYS_mprotect,
    SYS_madvise,
    SYS_clock_gettime,
    SYS_gettimeofday,
    SYS_sched_yield,
    SYS_getpid,
    SYS_gettid,
    SYS_getrandom,
    SYS_rt_sigprocmask,
    SYS_rt_sigreturn,
    SYS_restart_syscall,
    SYS_sigaltstack,
    SYS_exit,
    SYS_exit_group,
];

/// Starting a thread (Rust's std through glibc's `pthread_create`: the new thread names
/// itself, registers its robust list and rseq area, asks how many CPUs it may use). Children
/// inherit every filter of their parent, so a thread kind that spawns grants no more than
/// it has.
pub const SPAWN: &[(i64, &str)] = syscalls![
    SYS_clone,
    SYS_clone3,
    SYS_set_robust_list,
    SYS_rseq,
    SYS_prctl,
    SYS_sched_getaffinity,
];

/// A vCPU, besides [`THREAD_BASE`] and [`SPAWN`]: `KVM_RUN` and the other KVM ioctls
/// (ioeventfds and irqfds at activation), eventfds, serial output, the vhost-user frontend's
/// set-up messages, spawning a device's worker at activation, and the virtio-blk worker's own
/// calls (it inherits this list); and kicking the other vCPUs (`tgkill`, see
/// `VCPU_CONDITIONAL`).
pub const VCPU: &[(i64, &str)] = syscalls![
    SYS_ioctl,
    SYS_read,
    SYS_readv,
    SYS_writev,
    SYS_eventfd2,
    SYS_fcntl,
    SYS_dup,
    SYS_sendmsg,
    SYS_recvmsg,
    SYS_poll,
    SYS_ppoll,
    SYS_epoll_create1,
    SYS_epoll_ctl,
    SYS_epoll_wait,
    SYS_epoll_pwait,
    SYS_nanosleep,
    SYS_clock_nanosleep,
    SYS_pread64,
    SYS_pwrite64,
    SYS_preadv,
    SYS_pwritev,
    SYS_fdatasync,
    SYS_fsync,
    SYS_fallocate,
    SYS_lseek,
    SYS_fstat,
];

/// vhost-user-backend's protocol thread, besides [`THREAD_BASE`]: messages with descriptors,
/// the frontend's memory (checking, mapping), the workers' epoll and their wake-ups; plus
/// `kcmp` with `KCMP_FILE` only (see `compile`).
pub const HANDLER: &[(i64, &str)] = syscalls![
    SYS_read,
    SYS_recvmsg,
    SYS_sendmsg,
    SYS_fstat,
    SYS_newfstatat,
    SYS_fcntl,
    SYS_dup,
    SYS_epoll_ctl,
    SYS_shutdown,
    SYS_getsockopt,
];

/// Datagram and message I/O, one or many at a time: the transports' batches, the vhost-user
/// messages.
pub const MESSAGES: &[(i64, &str)] = syscalls![
    SYS_recvfrom,
    SYS_recvmsg,
    SYS_recvmmsg,
    SYS_sendto,
    SYS_sendmsg,
    SYS_sendmmsg,
];

/// The datapath, besides [`THREAD_BASE`] and [`MESSAGES`]: its epoll, the queues' eventfds, and the
/// transports' reads and writes (packet and datagram sockets in batches, tap reads and
/// writes, libpcap's, libslirp's turn).
pub const WORKER: &[(i64, &str)] = syscalls![
    SYS_read,
    SYS_readv,
    SYS_writev,
    SYS_poll,
    SYS_ppoll,
    SYS_epoll_wait,
    SYS_epoll_pwait,
    SYS_epoll_ctl,
    SYS_timerfd_settime,
    SYS_timerfd_gettime,
    SYS_fcntl,
    SYS_getsockopt,
];

/// A datapath whose transport opens sockets as it runs (libslirp's connections on the
/// guest's behalf), besides [`WORKER`].
pub const WORKER_SOCKETS: &[(i64, &str)] = syscalls![
    SYS_socket,
    SYS_connect,
    SYS_bind,
    SYS_accept,
    SYS_accept4,
    SYS_setsockopt,
    SYS_getsockname,
    SYS_getpeername,
    SYS_shutdown,
];

/// The interop relay, besides [`THREAD_BASE`]: messages with descriptors both ways, waiting
/// on them, checking a memory region's file (its size, its name in `/proc/self/fd` for the
/// warning) and a call descriptor's kind (a unix socket's domain), and ending the connection.
pub const RELAY: &[(i64, &str)] = syscalls![
    SYS_read,
    SYS_recvfrom,
    SYS_recvmsg,
    SYS_fstat,
    SYS_newfstatat,
    SYS_readlink,
    SYS_sendmsg,
    SYS_poll,
    SYS_ppoll,
    SYS_shutdown,
    SYS_fcntl,
    SYS_getsockopt,
];

/// What `vmm net-backend` needs once it serves, besides [`THREAD_BASE`], [`SPAWN`] and
/// [`MESSAGES`]: the datapath (reads, writes, socket calls on the transport, eventfds,
/// epoll), the vhost-user protocol (descriptors, mapping the frontend's memory), threads
/// coming and going (one handler and its vring workers per frontend), libslirp's and glib's
/// timers and polls, libpcap's reads, the capture writer, and shutdown (removing the
/// socket). Plus `kcmp` with `KCMP_FILE` only (see `compile`).
const NET_BACKEND_EXTRA: &[(i64, &str)] = syscalls![
    // Descriptors and I/O.
    SYS_read,
    SYS_readv,
    SYS_writev,
    SYS_pread64,
    SYS_pwrite64,
    SYS_dup,
    SYS_dup3,
    SYS_fcntl,
    SYS_ioctl,
    SYS_lseek,
    SYS_fstat,
    SYS_newfstatat,
    SYS_statx,
    SYS_openat,
    SYS_unlink,
    SYS_readlink,
    SYS_readlinkat,
    SYS_umask,
    SYS_chmod,
    SYS_fchmod,
    SYS_fchmodat,
    SYS_unlinkat,
    SYS_rmdir,
    SYS_mkdir,
    SYS_fsync,
    SYS_fdatasync,
    SYS_ftruncate,
    SYS_eventfd2,
    SYS_timerfd_create,
    SYS_timerfd_settime,
    SYS_timerfd_gettime,
    SYS_pipe2,
    // Sockets.
    SYS_socket,
    SYS_socketpair,
    SYS_bind,
    SYS_listen,
    SYS_connect,
    SYS_accept,
    SYS_accept4,
    SYS_shutdown,
    SYS_getsockopt,
    SYS_setsockopt,
    SYS_getsockname,
    SYS_getpeername,
    // Waiting.
    SYS_poll,
    SYS_ppoll,
    SYS_select,
    SYS_pselect6,
    SYS_epoll_create1,
    SYS_epoll_ctl,
    SYS_epoll_wait,
    SYS_epoll_pwait,
    SYS_epoll_pwait2,
    SYS_nanosleep,
    SYS_clock_nanosleep,
    // Signals, identities; a thread confining itself further (see `confine`): a filter
    // can only narrow.
    SYS_seccomp,
    SYS_getuid,
    SYS_geteuid,
    SYS_getgid,
    SYS_getegid,
    SYS_tgkill,
    SYS_rt_sigaction,
];

/// What `vmm` (the VM process) needs besides [`net_backend_list`] (its in-process backends serve
/// with that list) once the VM is built and privileges are dropped; KVM's calls are ioctls,
/// already there. Found by running the suites that start `vmm` with `--seccomp log` and
/// [`net_backend_list`] alone, reading the kernel's audit records (type 1326).
pub const VM_EXTRA: &[(i64, &str)] = syscalls![
    // The virtio-blk worker: vectored positioned I/O, hole punching (discard, write zeroes).
    SYS_preadv,
    SYS_pwritev,
    SYS_fallocate,
    // Stopping virtiofsd at exit.
    SYS_kill,
    SYS_wait4,
    // Removing `vmm run`'s directory at exit (remove_dir_all).
    SYS_getdents64,
];

/// The whole list of `vmm net-backend`: [`THREAD_BASE`], which every thread needs,
/// [`SPAWN`], [`MESSAGES`], and what serving needs besides.
pub fn net_backend_list() -> Vec<(i64, &'static str)> {
    [THREAD_BASE, SPAWN, MESSAGES, NET_BACKEND_EXTRA].concat()
}

/// The whole list of `vmm` (the VM process): [`net_backend_list`] and [`VM_EXTRA`].
pub fn vm_list() -> Vec<(i64, &'static str)> {
    let mut list = net_backend_list();
    list.extend_from_slice(VM_EXTRA);
    list
}

/// Compiles `list` for this machine: allowed calls, the `conditional` ones only with one of
/// their argument values, anything else by `mode`.
fn compile(
    list: &[(i64, &str)],
    conditional: &[Conditional],
    mode: Mode,
) -> Result<BpfProgram, String> {
    let mismatch = match mode {
        Mode::Kill => SeccompAction::Trap,
        Mode::Log => SeccompAction::Log,
        Mode::Off => return Err("no filter in mode off".into()),
    };
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(|e| e.to_string())?;
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        list.iter().map(|&(nr, _)| (nr, Vec::new())).collect();
    // kcmp only compares two of our descriptors (KCMP_FILE: whether a transport descriptor
    // and a frontend's are the same file), nothing else about any process.
    let kcmp = Conditional {
        nr: libc::SYS_kcmp,
        name: "SYS_kcmp",
        arg: 2,
        values: Values::Fixed(&[0]),
    };
    // SAFETY: getpid has no preconditions.
    let own_pid = [u64::from(unsafe { libc::getpid() }.unsigned_abs())];
    for c in conditional.iter().chain([&kcmp]) {
        // A call the list allows outright stays allowed outright.
        if list.iter().any(|&(nr, _)| nr == c.nr) {
            continue;
        }
        let values: &[u64] = match c.values {
            Values::Fixed(v) => v,
            Values::OwnPid => &own_pid,
        };
        let alternatives = values
            .iter()
            .map(|&v| {
                let len = if v > u64::from(u32::MAX) {
                    SeccompCmpArgLen::Qword
                } else {
                    SeccompCmpArgLen::Dword
                };
                SeccompCondition::new(c.arg, len, SeccompCmpOp::Eq, v)
                    .and_then(|cond| SeccompRule::new(vec![cond]))
                    .map_err(|e| e.to_string())
            })
            .collect::<Result<Vec<_>, _>>()?;
        rules.insert(c.nr, alternatives);
    }
    let filter = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, arch)
        .map_err(|e| e.to_string())?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| e.to_string())
}

/// Installs `list` by `mode` on every thread of the process (TSYNC); threads created later
/// inherit it. Sets `PR_SET_NO_NEW_PRIVS` (which the kernel requires) if not already set.
pub fn install_all_threads(list: &[(i64, &str)], mode: Mode) -> Result<(), String> {
    if mode == Mode::Off {
        return Ok(());
    }
    let program = compile(list, PROCESS_CONDITIONAL, mode)?;
    if mode == Mode::Kill {
        install_sigsys_handler().map_err(|e| format!("SIGSYS handler: {e}"))?;
    }
    seccompiler::apply_filter_all_threads(&program).map_err(|e| e.to_string())?;
    if selftest_asked("control") {
        log::warn!("{SELFTEST_ENV}=control: calling uname, which the filter forbids");
        // SAFETY: uname writes into the zeroed struct we own.
        unsafe {
            let mut u: libc::utsname = std::mem::zeroed();
            libc::uname(&mut u);
        }
    }
    Ok(())
}

/// The mode [`confine`] installs by: 0 until [`arm`]ed (nothing), then 1 kill, 2 log.
static ARMED: AtomicU8 = AtomicU8::new(0);

thread_local! {
    /// Whether this thread is confined already (a filter, once on, stays for its life).
    static CONFINED: Cell<bool> = const { Cell::new(false) };
}

/// From now on, each thread that calls [`confine`] gets its kind's filter by `mode` (nothing
/// with `off`). Call it once privileges are dropped: dropping them in a thread takes calls
/// that no kind allows. In `kill` mode it installs the SIGSYS handler that names the call.
pub fn arm(mode: Mode) -> Result<(), String> {
    let code = match mode {
        Mode::Off => return Ok(()),
        Mode::Kill => {
            install_sigsys_handler().map_err(|e| format!("SIGSYS handler: {e}"))?;
            1
        }
        Mode::Log => 2,
    };
    settle_malloc_arenas();
    ARMED.store(code, Ordering::SeqCst);
    Ok(())
}

/// glibc sizes its malloc arenas lazily: the first thread that needs a ninth one reads
/// `/sys/devices/system/cpu/online` (an `openat`) to learn the limit, 8 per CPU. That thread
/// may be a confined one started late (the virtio-net control queue's, once enough queue
/// pairs' threads exist), which its filter then ends for a read it never asked for. Setting
/// the same limit now, before any thread is confined, keeps that read out of them.
fn settle_malloc_arenas() {
    #[cfg(target_env = "gnu")]
    {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let limit = i32::try_from(8 * cpus).unwrap_or(i32::MAX);
        // SAFETY: mallopt only sets a malloc tunable; no memory is passed.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, limit) };
    }
}

/// Whether [`arm`] was called with a filter (threads confine themselves as they act).
pub fn armed() -> bool {
    ARMED.load(Ordering::Relaxed) != 0
}

/// Confines the calling thread as `kind`, once, if [`arm`] was called; otherwise (and in
/// every later call) does nothing, at the cost of two loads. A filter that cannot be
/// installed ends the process (status 1, naming the kind): a thread that reads hostile input
/// unconfined after the user asked for a filter is worse than no VM.
pub fn confine(kind: ThreadKind) {
    confine_with(|| kind)
}

/// [`confine`], asking `kind` only when the thread is about to be confined (where finding the
/// kind takes a lock).
pub fn confine_with(kind: impl FnOnce() -> ThreadKind) {
    let mode = match ARMED.load(Ordering::Relaxed) {
        0 => return,
        1 => Mode::Kill,
        _ => Mode::Log,
    };
    if CONFINED.with(|c| c.replace(true)) {
        return;
    }
    let kind = kind();
    let applied = compile(&kind.list(), kind.conditional(), mode)
        .and_then(|program| seccompiler::apply_filter(&program).map_err(|e| e.to_string()));
    if let Err(e) = applied {
        log::error!("seccomp: confining a {} thread: {e}", kind.name());
        // SAFETY: _exit ends the process at once; nothing is left half-done that matters
        // more than not running unconfined.
        unsafe { libc::_exit(1) };
    }
    log::debug!("seccomp: {} thread confined", kind.name());
    if selftest_asked(kind.name()) {
        log::warn!(
            "{SELFTEST_ENV}={}: calling listen, which the thread's filter forbids",
            kind.name()
        );
        // SAFETY: listen takes no pointers; on descriptor -1 it fails with EBADF when allowed.
        unsafe { libc::listen(-1, 0) };
    }
}

/// Whether `VMM_SECCOMP_SELFTEST` names `what`.
fn selftest_asked(what: &str) -> bool {
    std::env::var_os(SELFTEST_ENV).is_some_and(|v| v == what)
}

/// The name of system call `nr` on this machine ("?" when unknown).
pub fn name(nr: i64) -> &'static str {
    #[cfg(target_arch = "x86_64")]
    if let Ok(i) = names_x86_64::NAMES.binary_search_by_key(&nr, |&(n, _)| n) {
        return names_x86_64::NAMES[i].1;
    }
    "?"
}

fn install_sigsys_handler() -> io::Result<()> {
    // SAFETY: a zeroed sigaction is valid; the handler only formats into a stack buffer,
    // calls write and _exit, all async-signal-safe.
    let rc = unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigsys as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut())
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The byte offset of `si_syscall` in a SIGSYS siginfo: after si_signo, si_errno, si_code
/// (and padding to the union's 8-byte alignment on 64-bit), `_sigsys { void *_call_addr; int
/// _syscall; unsigned _arch; }`.
const SI_SYSCALL_OFFSET: usize = 16 + std::mem::size_of::<usize>();

extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SIGSYS (SA_SIGINFO); si_syscall is an int
    // at SI_SYSCALL_OFFSET of it.
    let nr = unsafe { *(info as *const u8).add(SI_SYSCALL_OFFSET).cast::<i32>() };
    let mut buf = [0u8; 128];
    let mut len = 0;
    for part in [
        "vmm: seccomp: forbidden system call ".as_bytes(),
        itoa(nr as i64, &mut [0u8; 24]),
        b" (",
        name(nr as i64).as_bytes(),
        b")\n",
    ] {
        let n = part.len().min(buf.len() - len);
        buf[len..len + n].copy_from_slice(&part[..n]);
        len += n;
    }
    // SAFETY: write from a live buffer, then _exit: both async-signal-safe and on the list.
    unsafe {
        libc::write(2, buf.as_ptr().cast(), len);
        libc::_exit(EXIT_STATUS);
    }
}

/// `n` in decimal, formatted into `buf` without allocating.
fn itoa(n: i64, buf: &mut [u8; 24]) -> &[u8] {
    let neg = n < 0;
    let mut v = n.unsigned_abs();
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    if neg {
        i -= 1;
        buf[i] = b'-';
    }
    &buf[i..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers() {
        assert_eq!(name(libc::SYS_read), "read");
        assert_eq!(name(libc::SYS_uname), "uname");
        assert_eq!(name(100_000), "?");
        assert_eq!(itoa(0, &mut [0; 24]), b"0");
        assert_eq!(itoa(-12, &mut [0; 24]), b"-12");
        assert_eq!(itoa(i64::MAX, &mut [0; 24]), b"9223372036854775807");
    }

    #[test]
    fn the_self_test_call_is_forbidden_and_the_list_compiles() {
        let backend = net_backend_list();
        assert!(!backend.iter().any(|&(nr, _)| nr == libc::SYS_uname));
        for &(nr, n) in &backend {
            assert_eq!(name(nr), n.trim_start_matches("SYS_"), "{n}");
            assert_eq!(
                backend.iter().filter(|&&(m, _)| m == nr).count(),
                1,
                "{n} twice"
            );
        }
        assert!(compile(&backend, &[], Mode::Kill).is_ok());
        assert!(compile(&backend, &[], Mode::Log).is_ok());
        let vm = vm_list();
        assert!(!vm.iter().any(|&(nr, _)| nr == libc::SYS_uname));
        for &(nr, n) in VM_EXTRA {
            assert_eq!(name(nr), n.trim_start_matches("SYS_"), "{n}");
            assert!(!backend.iter().any(|&(m, _)| m == nr), "{n} twice");
        }
        assert!(compile(&vm, &[], Mode::Kill).is_ok());
    }

    const KINDS: [ThreadKind; 5] = [
        ThreadKind::Vcpu,
        ThreadKind::Handler,
        ThreadKind::Worker { sockets: false },
        ThreadKind::Worker { sockets: true },
        ThreadKind::Relay,
    ];

    /// Each kind's list only narrows the process's: a call the process forbids is never
    /// allowed to one of its threads (the stricter filter decides anyway, but a list that
    /// claims more than it gets misleads whoever reads it). The self-test's `listen` is on
    /// the process's list and on no kind's, so the self-test shows the kind's own filter.
    #[test]
    fn each_kind_narrows_the_process_list() {
        let vm = vm_list();
        let backend = net_backend_list();
        for kind in KINDS {
            let process: &[(i64, &str)] = match kind {
                ThreadKind::Vcpu => &vm,
                _ => &backend,
            };
            let list = kind.list();
            for &(nr, n) in &list {
                assert_eq!(name(nr), n.trim_start_matches("SYS_"), "{n}");
                assert!(process.iter().any(|&(m, _)| m == nr), "{kind:?}: {n}");
                assert_eq!(
                    list.iter().filter(|&&(m, _)| m == nr).count(),
                    1,
                    "{n} twice"
                );
            }
            assert!(
                !list.iter().any(|&(nr, _)| nr == libc::SYS_listen),
                "{kind:?}"
            );
            assert!(process.iter().any(|&(nr, _)| nr == libc::SYS_listen));
            assert!(compile(&list, kind.conditional(), Mode::Kill).is_ok());
        }
    }

    #[test]
    fn modes() {
        assert_eq!("kill".parse(), Ok(Mode::Kill));
        assert_eq!("log".parse(), Ok(Mode::Log));
        assert_eq!("off".parse(), Ok(Mode::Off));
        assert!("allow".parse::<Mode>().is_err());
    }
}
