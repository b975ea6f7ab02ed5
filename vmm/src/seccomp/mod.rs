//! seccomp-bpf filters (rust-vmm's `seccompiler`), installed once everything is open and
//! privileges are dropped.
//!
//! `vmm net-backend` runs one process-wide allow-list ([`NET_BACKEND`]): installed with
//! `SECCOMP_FILTER_FLAG_TSYNC` on every thread that exists then, and inherited by every thread
//! created later (the per-connection vhost-user handler, the vring workers, relay and capture
//! threads). The list was found by tracing the backend's test suites (all transports,
//! reconnecting and hostile frontends, SIGTERM shutdown) with `--seccomp log` and the kernel's
//! audit records, and `strace -f`.
//!
//! `vmm` (the VM process) installs [`vm_list`] the same way once the VM is built and
//! privileges are dropped, before the vCPUs run; with privileges kept (`--keep-privileges`, or
//! not root) it installs none, since `reboot` and `net swap` build devices again.
//!
//! A call off the list, by [`Mode`]:
//! - `kill`: `SECCOMP_RET_TRAP`; the SIGSYS handler writes `vmm: seccomp: forbidden system
//!   call N (NAME)` to stderr (async-signal-safe `write`) and ends the process with status
//!   159 (128 + SIGSYS);
//! - `log`: `SECCOMP_RET_LOG`: allowed, and logged by the kernel (`audit: type=1326 ...
//!   syscall=N` in the kernel log);
//! - `off`: no filter.
//!
//! Self-test: with `VMM_SECCOMP_SELFTEST=1` in the environment the process calls `uname`
//! (not on the list) right after installing the filter, so that tests can see a violation
//! end it (or, with `log`, not).

use std::collections::BTreeMap;
use std::io;

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

macro_rules! syscalls {
    ($($name:ident),* $(,)?) => {
        &[$((libc::$name, stringify!($name))),*]
    };
}

/// What `vmm net-backend` needs once it serves: the datapath (reads, writes, socket and
/// message calls on the transport, eventfds, epoll), the vhost-user protocol (messages with
/// descriptors, mapping the frontend's memory), threads coming and going (one handler and
/// its vring workers per frontend), libslirp's and glib's timers and polls, libpcap's
/// reads, the capture writer, and shutdown (removing the socket). Plus `kcmp` with
/// `KCMP_FILE` only (see `compile`).
pub const NET_BACKEND: &[(i64, &str)] = syscalls![
    // Descriptors and I/O.
    SYS_read,
    SYS_write,
    SYS_readv,
    SYS_writev,
    SYS_pread64,
    SYS_pwrite64,
    SYS_close,
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
    SYS_recvfrom,
    SYS_recvmsg,
    SYS_recvmmsg,
    SYS_sendto,
    SYS_sendmsg,
    SYS_sendmmsg,
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
    SYS_futex,
    SYS_nanosleep,
    SYS_clock_nanosleep,
    SYS_clock_gettime,
    SYS_gettimeofday,
    SYS_sched_yield,
    // Memory.
    SYS_brk,
    SYS_mmap,
    SYS_munmap,
    SYS_mremap,
    SYS_mprotect,
    SYS_madvise,
    // Threads and signals.
    SYS_clone,
    SYS_clone3,
    SYS_set_robust_list,
    SYS_rseq,
    SYS_sigaltstack,
    SYS_prctl,
    SYS_sched_getaffinity,
    SYS_getrandom,
    SYS_gettid,
    SYS_getpid,
    SYS_getuid,
    SYS_geteuid,
    SYS_getgid,
    SYS_getegid,
    SYS_tgkill,
    SYS_rt_sigaction,
    SYS_rt_sigprocmask,
    SYS_rt_sigreturn,
    SYS_restart_syscall,
    SYS_exit,
    SYS_exit_group,
];

/// What `vmm` (the VM process) needs besides [`NET_BACKEND`] (its in-process backends serve
/// with that list) once the VM is built and privileges are dropped; KVM's calls are ioctls,
/// already there. Found by running the suites that start `vmm` with `--seccomp log` and
/// [`NET_BACKEND`] alone, reading the kernel's audit records (type 1326).
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

/// The whole list of `vmm` (the VM process): [`NET_BACKEND`] and [`VM_EXTRA`].
pub fn vm_list() -> Vec<(i64, &'static str)> {
    NET_BACKEND.iter().chain(VM_EXTRA).copied().collect()
}

/// Compiles `list` for this machine: allowed calls, anything else by `mode`.
fn compile(list: &[(i64, &str)], mode: Mode) -> Result<BpfProgram, String> {
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
    let kcmp_file = SeccompCondition::new(2, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, 0)
        .and_then(|c| SeccompRule::new(vec![c]))
        .map_err(|e| e.to_string())?;
    rules.insert(libc::SYS_kcmp, vec![kcmp_file]);
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
    let program = compile(list, mode)?;
    if mode == Mode::Kill {
        install_sigsys_handler().map_err(|e| format!("SIGSYS handler: {e}"))?;
    }
    seccompiler::apply_filter_all_threads(&program).map_err(|e| e.to_string())?;
    if std::env::var_os(SELFTEST_ENV).is_some_and(|v| v == "1") {
        log::warn!("{SELFTEST_ENV}=1: calling uname, which the filter forbids");
        // SAFETY: uname writes into the zeroed struct we own.
        unsafe {
            let mut u: libc::utsname = std::mem::zeroed();
            libc::uname(&mut u);
        }
    }
    Ok(())
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
        assert!(!NET_BACKEND.iter().any(|&(nr, _)| nr == libc::SYS_uname));
        for &(nr, n) in NET_BACKEND {
            assert_eq!(name(nr), n.trim_start_matches("SYS_"), "{n}");
        }
        assert!(compile(NET_BACKEND, Mode::Kill).is_ok());
        assert!(compile(NET_BACKEND, Mode::Log).is_ok());
        let vm = vm_list();
        assert!(!vm.iter().any(|&(nr, _)| nr == libc::SYS_uname));
        for &(nr, n) in VM_EXTRA {
            assert_eq!(name(nr), n.trim_start_matches("SYS_"), "{n}");
            assert!(!NET_BACKEND.iter().any(|&(m, _)| m == nr), "{n} twice");
        }
        assert!(compile(&vm, Mode::Kill).is_ok());
    }

    #[test]
    fn modes() {
        assert_eq!("kill".parse(), Ok(Mode::Kill));
        assert_eq!("log".parse(), Ok(Mode::Log));
        assert_eq!("off".parse(), Ok(Mode::Off));
        assert!("allow".parse::<Mode>().is_err());
    }
}
