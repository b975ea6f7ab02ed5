//! Dropping privileges once the devices, transports and sockets are open.
//!
//! Root is needed to open what a VM or a backend uses (raw and GRE sockets, taps, `/dev/kvm`
//! on many hosts) but not to move frames afterwards. [`plan`] decides at start-up what to
//! become; [`drop_privileges`] does it once everything is open, in **every thread** of the
//! process (credentials and capability sets are per thread in Linux):
//!
//! - `--user USER` (or, run by root under sudo without `--user`, the invoking user from
//!   `SUDO_UID`/`SUDO_GID`): supplementary groups (the user's), gid and uid (real, effective,
//!   saved) become the user's;
//! - root with neither: uid 0 stays;
//!
//! and in both cases the bounding, effective, permitted, inheritable and ambient capability
//! sets are emptied and `PR_SET_NO_NEW_PRIVS` is set, so nothing the process executes can get
//! them back. The result is checked in `/proc/self/task/*/status`; a thread left with anything
//! is an error (the caller exits rather than run half-dropped).
//!
//! Afterwards [`refusal`] says why the control socket's `reboot` and `net swap` (which open
//! devices and transports again) are refused.

use std::ffi::{CStr, CString};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// What to become once everything is open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Nothing to drop: not root, or root with `--keep-privileges`.
    Keep,
    /// Root without `--user`: uid 0 stays, every capability goes.
    Root,
    /// Switch to this user, with no capabilities.
    User(Account),
}

/// A user to switch to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    /// The name (or the uid as text when the password database has none).
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (the user's, from the group database).
    pub groups: Vec<libc::gid_t>,
    /// Taken from `SUDO_UID`/`SUDO_GID` rather than `--user`.
    pub from_sudo: bool,
}

/// Why privileges cannot be planned or dropped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `--user NAME` names nobody in the password database.
    #[error("--user {0}: no such user")]
    NoSuchUser(String),
    /// A group option names no group.
    #[error("{option} {name}: no such group")]
    NoSuchGroup {
        /// The option (`--socket-group`, `--api-group`).
        option: &'static str,
        /// What it said.
        name: String,
    },
    /// Only root can become another user.
    #[error("--user {name}: only root can switch users (running as uid {uid})")]
    NotRoot {
        /// The user asked for.
        name: String,
        /// Who we are.
        uid: u32,
    },
    /// `SUDO_UID`/`SUDO_GID` are set but not numbers.
    #[error("SUDO_UID/SUDO_GID: not a uid/gid ({0}); give --user USER")]
    BadSudo(String),
    /// A system call failed.
    #[error("dropping privileges: {op}: {source}")]
    Sys {
        /// What was being done.
        op: &'static str,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// A thread kept credentials or capabilities it should have lost.
    #[error("dropping privileges: {0}")]
    Incomplete(String),
}

impl Error {
    /// Bad input (the user or group names, the environment): exit status 2.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            Error::NoSuchUser(_)
                | Error::NoSuchGroup { .. }
                | Error::NotRoot { .. }
                | Error::BadSudo(_)
        )
    }
}

impl Plan {
    /// The uid the process will run as, when it changes (sockets are given to it so that it
    /// can still use and remove them).
    pub fn new_owner(&self) -> Option<(u32, u32)> {
        match self {
            Plan::User(a) => Some((a.uid, a.gid)),
            _ => None,
        }
    }

    /// One line for the log at start-up, `None` when nothing will change.
    pub fn describe(&self) -> Option<String> {
        match self {
            Plan::Keep => None,
            Plan::Root => Some(
                "running as root without --user: once the devices are open uid 0 stays but \
                 every capability is dropped (--user USER runs as USER; --keep-privileges keeps \
                 them)"
                    .into(),
            ),
            Plan::User(a) => Some(format!(
                "once the devices are open, running as {} (uid {}, gid {}{}) with no capabilities",
                a.name,
                a.uid,
                a.gid,
                if a.from_sudo {
                    ", the user who ran sudo"
                } else {
                    ""
                }
            )),
        }
    }
}

/// Decides what to become: `user` (`--user`, a name or a uid), else under sudo the invoking
/// user when `sudo` allows it, else, as root, root without capabilities unless `keep`.
pub fn plan(user: Option<&str>, keep: bool, sudo: bool) -> Result<Plan, Error> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if let Some(name) = user {
        let account = lookup_user(name)?.ok_or_else(|| Error::NoSuchUser(name.to_string()))?;
        if euid != 0 {
            return if account.uid == euid {
                Ok(Plan::Keep)
            } else {
                Err(Error::NotRoot {
                    name: name.to_string(),
                    uid: euid,
                })
            };
        }
        return Ok(if account.uid == 0 {
            Plan::Root
        } else {
            Plan::User(account)
        });
    }
    if euid != 0 || keep {
        return Ok(Plan::Keep);
    }
    if sudo {
        if let Some(account) = sudo_account()? {
            return Ok(Plan::User(account));
        }
    }
    Ok(Plan::Root)
}

/// The user who ran sudo, from `SUDO_UID` and `SUDO_GID` (none when unset or root).
fn sudo_account() -> Result<Option<Account>, Error> {
    let Ok(uid) = std::env::var("SUDO_UID") else {
        return Ok(None);
    };
    let uid: u32 = uid
        .trim()
        .parse()
        .map_err(|_| Error::BadSudo(format!("SUDO_UID={uid}")))?;
    if uid == 0 {
        return Ok(None);
    }
    let mut account = lookup_user(&uid.to_string())?.unwrap_or(Account {
        name: uid.to_string(),
        uid,
        gid: uid,
        groups: Vec::new(),
        from_sudo: true,
    });
    if let Ok(gid) = std::env::var("SUDO_GID") {
        account.gid = gid
            .trim()
            .parse()
            .map_err(|_| Error::BadSudo(format!("SUDO_GID={gid}")))?;
    }
    if account.groups.is_empty() {
        account.groups.push(account.gid);
    }
    account.from_sudo = true;
    Ok(Some(account))
}

/// A user by name, or by uid when `name` is a number.
fn lookup_user(name: &str) -> Result<Option<Account>, Error> {
    let mut pwd: libc::passwd = {
        // SAFETY: passwd is plain C data (integers and pointers); all zeros is a valid value.
        unsafe { std::mem::zeroed() }
    };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    let rc = if let Ok(uid) = name.parse::<u32>() {
        // SAFETY: every pointer is to live memory of the stated size; getpwuid_r writes the
        // entry into `pwd` and `buf` and sets `found` to `&pwd` or null.
        unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut found) }
    } else {
        let Ok(c) = CString::new(name) else {
            return Ok(None);
        };
        // SAFETY: as above, with a NUL-terminated name.
        unsafe {
            libc::getpwnam_r(
                c.as_ptr(),
                &mut pwd,
                buf.as_mut_ptr(),
                buf.len(),
                &mut found,
            )
        }
    };
    if rc != 0 || found.is_null() {
        return Ok(None);
    }
    // SAFETY: `found` is `&pwd`, whose pw_name points into `buf`, NUL-terminated.
    let pw_name = unsafe { CStr::from_ptr(pwd.pw_name) }.to_owned();
    let (uid, gid) = (pwd.pw_uid, pwd.pw_gid);
    let mut groups = vec![0 as libc::gid_t; 256];
    let mut n = groups.len() as libc::c_int;
    // SAFETY: `pw_name` is NUL-terminated, `groups` holds `n` gids; getgrouplist writes at
    // most `n` and sets `n` to the number it found.
    let rc = unsafe { libc::getgrouplist(pw_name.as_ptr(), gid, groups.as_mut_ptr(), &mut n) };
    if rc < 0 {
        groups.truncate(1);
        groups[0] = gid;
    } else {
        groups.truncate(n.max(0) as usize);
    }
    Ok(Some(Account {
        name: pw_name.to_string_lossy().into_owned(),
        uid,
        gid,
        groups,
        from_sudo: false,
    }))
}

/// A group by name, or a gid when `name` is a number; `option` names the option for errors.
pub fn lookup_group(option: &'static str, name: &str) -> Result<u32, Error> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(gid);
    }
    let no_such = || Error::NoSuchGroup {
        option,
        name: name.to_string(),
    };
    let c = CString::new(name).map_err(|_| no_such())?;
    let mut grp: libc::group = {
        // SAFETY: group is plain C data (integers and pointers); all zeros is a valid value.
        unsafe { std::mem::zeroed() }
    };
    let mut buf = vec![0 as libc::c_char; 64 * 1024];
    let mut found: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is to live memory of the stated size; getgrnam_r writes the entry
    // into `grp` and `buf` and sets `found` to `&grp` or null.
    let rc = unsafe {
        libc::getgrnam_r(
            c.as_ptr(),
            &mut grp,
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        )
    };
    if rc != 0 || found.is_null() {
        return Err(no_such());
    }
    Ok(grp.gr_gid)
}

/// Whether [`drop_privileges`] has run.
static DROPPED: AtomicBool = AtomicBool::new(false);

/// Why a request that opens devices or transports again is refused: `Some` once privileges
/// were dropped.
pub fn refusal() -> Option<&'static str> {
    DROPPED.load(Ordering::Relaxed).then_some(
        "refused: privileges were dropped once the VM was built (--user, sudo, or root's \
         capabilities); start vmm as root with --keep-privileges to allow it",
    )
}

/// What every thread becomes; set once, read by the signal handler.
struct Target {
    /// uid, gid, supplementary groups; `None`: the ids stay.
    switch: Option<(u32, u32, Vec<libc::gid_t>)>,
    /// The highest capability number the kernel knows.
    last_cap: libc::c_ulong,
}

static TARGET: OnceLock<Target> = OnceLock::new();
/// Threads that ran the handler in this round.
static DONE: AtomicUsize = AtomicUsize::new(0);
/// The first errno a thread failed with (0: none).
static FAILED: AtomicI32 = AtomicI32::new(0);

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_VERSION_3: u32 = 0x2008_0522;

/// Drops everything in the calling thread with raw system calls only (it runs in a signal
/// handler). Returns the errno of the first failure.
fn drop_this_thread(t: &Target) -> Result<(), i32> {
    // SAFETY (whole function): raw system calls on integers and pointers to live local or
    // static memory of the sizes the kernel expects; each acts on the calling thread only.
    let check = |rc: libc::c_long| {
        if rc < 0 {
            // SAFETY: __errno_location returns the calling thread's errno slot.
            Err(unsafe { *libc::__errno_location() })
        } else {
            Ok(())
        }
    };
    for cap in 0..=t.last_cap {
        // SAFETY: see above.
        let has = unsafe { libc::syscall(libc::SYS_prctl, libc::PR_CAPBSET_READ, cap, 0, 0, 0) };
        if has == 1 {
            // SAFETY: see above.
            check(unsafe { libc::syscall(libc::SYS_prctl, libc::PR_CAPBSET_DROP, cap, 0, 0, 0) })?;
        }
    }
    if let Some((uid, gid, groups)) = &t.switch {
        // SAFETY: see above.
        let now = unsafe { libc::syscall(libc::SYS_getuid) };
        if now != libc::c_long::from(*uid) {
            // SAFETY: see above; `groups` is a live slice of gid_t of the length passed.
            check(unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) })?;
            // SAFETY: see above.
            check(unsafe { libc::syscall(libc::SYS_setresgid, *gid, *gid, *gid) })?;
            // SAFETY: see above.
            check(unsafe { libc::syscall(libc::SYS_setresuid, *uid, *uid, *uid) })?;
        }
    }
    let mut header = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: see above; version 3 takes two data structs.
    check(unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) })?;
    // SAFETY: see above.
    check(unsafe {
        libc::syscall(
            libc::SYS_prctl,
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    })?;
    // SAFETY: see above.
    check(unsafe { libc::syscall(libc::SYS_prctl, libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })
}

extern "C" fn on_drop_signal(_: libc::c_int) {
    // SAFETY: __errno_location returns this thread's errno slot; it is restored below so the
    // interrupted code sees its own.
    let saved = unsafe { *libc::__errno_location() };
    if let Some(t) = TARGET.get() {
        if let Err(e) = drop_this_thread(t) {
            let _ = FAILED.compare_exchange(0, e, Ordering::SeqCst, Ordering::SeqCst);
        }
    }
    DONE.fetch_add(1, Ordering::SeqCst);
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = saved };
}

/// The signal that makes other threads drop theirs (a real-time one the VMM does not use).
fn drop_signal() -> libc::c_int {
    libc::SIGRTMAX() - 1
}

/// Carries out `plan` in every thread of the process, then checks them all. Call it once
/// everything that needs privileges is open. `Plan::Keep` does nothing.
pub fn drop_privileges(plan: &Plan) -> Result<(), Error> {
    let switch = match plan {
        Plan::Keep => return Ok(()),
        Plan::Root => None,
        Plan::User(a) => Some((a.uid, a.gid, a.groups.clone())),
    };
    let last_cap = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(63);
    if TARGET.set(Target { switch, last_cap }).is_err() {
        return Err(Error::Incomplete("already dropped once".into()));
    }
    let t = TARGET.get().expect("just set");
    drop_this_thread(t).map_err(|e| Error::Sys {
        op: "this thread",
        source: io::Error::from_raw_os_error(e),
    })?;
    DROPPED.store(true, Ordering::SeqCst);
    // SAFETY: a zeroed sigaction is valid; the handler only makes raw system calls and
    // touches atomics, and it stays installed (a signal still pending for a thread must not
    // meet the default action, which would end the process).
    let rc = unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_drop_signal as *const () as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(drop_signal(), &sa, std::ptr::null_mut())
    };
    if rc != 0 {
        return Err(Error::Sys {
            op: "sigaction",
            source: io::Error::last_os_error(),
        });
    }
    // SAFETY: gettid and getpid have no preconditions.
    let (me, pid) = unsafe { (libc::gettid(), libc::getpid()) };
    for _round in 0..5 {
        let pending: Vec<libc::pid_t> = tasks()
            .into_iter()
            .filter(|&tid| tid != me && lacks(tid, t).is_some())
            .collect();
        if pending.is_empty() {
            break;
        }
        DONE.store(0, Ordering::SeqCst);
        let mut sent = 0;
        for tid in pending {
            // SAFETY: tgkill sends a signal to one of our own threads; a thread that has
            // exited in the meantime makes it fail with ESRCH, which is fine.
            if unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, drop_signal()) } == 0 {
                sent += 1;
            }
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while DONE.load(Ordering::SeqCst) < sent && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        let failed = FAILED.load(Ordering::SeqCst);
        if failed != 0 {
            return Err(Error::Sys {
                op: "another thread",
                source: io::Error::from_raw_os_error(failed),
            });
        }
    }
    for tid in tasks() {
        if let Some(what) = lacks(tid, t) {
            return Err(Error::Incomplete(format!("thread {tid} still has {what}")));
        }
    }
    Ok(())
}

/// Our threads' ids.
fn tasks() -> Vec<libc::pid_t> {
    std::fs::read_dir("/proc/self/task")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// What thread `tid` still has that `t` takes away (`None`: nothing, or it is gone).
fn lacks(tid: libc::pid_t, t: &Target) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
            .unwrap_or("")
    };
    for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        let v = field(cap);
        if u64::from_str_radix(v, 16) != Ok(0) {
            return Some(format!("{cap} {v}"));
        }
    }
    if field("NoNewPrivs") != "1" {
        return Some("no NoNewPrivs".into());
    }
    if let Some((uid, gid, _)) = &t.switch {
        for (name, want) in [("Uid", uid), ("Gid", gid)] {
            let ids = field(name);
            if !ids.split_whitespace().all(|id| id == want.to_string()) {
                return Some(format!("{name} {ids}"));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_and_groups_resolve_by_name_and_number() {
        let root = lookup_user("root").unwrap().expect("root");
        assert_eq!((root.uid, root.gid), (0, 0));
        assert_eq!(lookup_user("0").unwrap().unwrap().name, "root");
        assert!(lookup_user("vmm-no-such-user").unwrap().is_none());
        assert_eq!(lookup_group("--socket-group", "root").unwrap(), 0);
        assert_eq!(lookup_group("--socket-group", "1234").unwrap(), 1234);
        let e = lookup_group("--socket-group", "vmm-no-such-group").unwrap_err();
        assert_eq!(
            e.to_string(),
            "--socket-group vmm-no-such-group: no such group"
        );
        assert!(e.is_usage());
        let e = plan(Some("vmm-no-such-user"), false, false).unwrap_err();
        assert_eq!(e.to_string(), "--user vmm-no-such-user: no such user");
    }
}
