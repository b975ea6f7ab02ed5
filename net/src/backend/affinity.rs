//! Pinning a device's workers to host CPUs (`affinity=CPUS`).
//!
//! A worker wakes for every kick and every readable transport, and where the scheduler puts
//! it decides how far each wake-up travels and whose core it takes. Pinned, it can be kept
//! off the cores the guest's vCPUs (or a UML guest's process) use, or beside them: on this
//! project's 2-core machine a pinned worker moved host→guest TCP over tap and hybrid faster
//! and made round trips longer (the scheduler can no longer wake it on the waker's core);
//! pinned to the guest's own core it made round trips shorter and host→guest slower. So it
//! is an option, off by default (the README's Performance section has the numbers).
//! `taskset` around the whole backend would pin the threads that answer the frontend's
//! messages and the relay too; this pins only the workers, one per queue pair, each to the
//! whole set given, when it takes its first event and before its seccomp filter (which has
//! no `sched_setaffinity`) closes in.
//!
//! The set is checked against the CPUs the process may run on when the device opens, so a
//! typo or a CPU outside the process's cgroup is a start-up error naming the option, not a
//! worker that silently runs anywhere.

use std::cell::Cell;
use std::io;

use crate::config::{CpuSet, MAX_CPUS};

/// Why an `affinity=` set cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AffinityError {
    /// A CPU of the set is offline, absent, or outside the process's own affinity (its
    /// cgroup's cpuset, a `taskset` around it).
    #[error("option `affinity={asked}`: CPU {cpu} is not one this process may run on (it may run on {allowed})")]
    NotAllowed {
        asked: CpuSet,
        cpu: u16,
        allowed: CpuSet,
    },
    /// The process's own affinity could not be read.
    #[error("option `affinity={asked}`: reading the CPUs this process may run on: {source}")]
    Query {
        asked: CpuSet,
        #[source]
        source: io::Error,
    },
}

/// The CPUs the calling thread may run on.
pub fn allowed() -> io::Result<CpuSet> {
    // SAFETY: cpu_set_t is a plain bit array, for which all-zero is valid; the kernel writes
    // at most the size we pass.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a live cpu_set_t of the size passed.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: CPU_ISSET reads bit `c` of `set`; c < MAX_CPUS = CPU_SETSIZE, its size in bits.
    let cpus = (0..MAX_CPUS).filter(|&c| unsafe { libc::CPU_ISSET(usize::from(c), &set) });
    // A thread always may run somewhere.
    CpuSet::new(cpus).ok_or_else(|| io::Error::other("the kernel returned an empty CPU set"))
}

/// Whether every CPU of `asked` is one the calling thread (at start-up, the process) may run
/// on.
pub fn check(asked: &CpuSet) -> Result<(), AffinityError> {
    let allowed = allowed().map_err(|source| AffinityError::Query {
        asked: asked.clone(),
        source,
    })?;
    match asked
        .cpus()
        .iter()
        .find(|c| allowed.cpus().binary_search(c).is_err())
    {
        Some(&cpu) => Err(AffinityError::NotAllowed {
            asked: asked.clone(),
            cpu,
            allowed,
        }),
        None => Ok(()),
    }
}

/// Restricts the calling thread to `set`.
pub fn pin(set: &CpuSet) -> io::Result<()> {
    // SAFETY: as in `allowed`.
    let mut mask: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in set.cpus() {
        // SAFETY: CPU_SET writes bit `c` of `mask`; c < MAX_CPUS = CPU_SETSIZE (CpuSet's rule).
        unsafe { libc::CPU_SET(usize::from(c), &mut mask) };
    }
    // SAFETY: the kernel reads a cpu_set_t of the size passed.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mask) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

thread_local! {
    /// Whether this thread was pinned (or tried to be) already.
    static PINNED: Cell<bool> = const { Cell::new(false) };
}

/// Pins the calling thread to `set` the first time it is called on this thread; later calls
/// cost one thread-local read. A failure (a CPU taken away since start-up, by a cpuset
/// change or hot-unplug) leaves the worker where it may run, with a warning naming `dev`.
pub fn pin_once(set: &CpuSet, dev: &str) {
    if PINNED.with(|p| p.replace(true)) {
        return;
    }
    match pin(set) {
        Ok(()) => log::debug!("{dev}: worker pinned to CPUs {set}"),
        Err(e) => log::warn!("{dev}: pinning a worker to affinity={set}: {e}; it runs unpinned"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_own_cpus_pass_and_one_past_them_is_named() {
        let own = allowed().unwrap();
        check(&own).unwrap();
        // The first CPU number the process may not run on (there is one below MAX_CPUS on
        // any machine this runs on).
        let Some(outside) = (0..MAX_CPUS).find(|c| own.cpus().binary_search(c).is_err()) else {
            eprintln!("skipped: this process may run on all {MAX_CPUS} CPUs a set can name");
            return;
        };
        let asked = CpuSet::new([own.cpus()[0], outside]).unwrap();
        let e = check(&asked).unwrap_err().to_string();
        assert!(e.contains(&format!("affinity={asked}")), "{e}");
        assert!(e.contains(&format!("CPU {outside} is not")), "{e}");
        assert!(e.contains(&format!("may run on {own})")), "{e}");
    }

    #[test]
    fn a_pinned_thread_runs_on_the_set_and_only_once_pins() {
        let own = allowed().unwrap();
        let last = CpuSet::new([*own.cpus().last().unwrap()]).unwrap();
        let first = CpuSet::new([own.cpus()[0]]).unwrap();
        let seen = std::thread::spawn(move || {
            pin_once(&last, "vec0");
            let after_first = allowed().unwrap();
            // Already pinned: a second call leaves the thread where the first put it.
            pin_once(&first, "vec0");
            (after_first, allowed().unwrap())
        })
        .join()
        .unwrap();
        let last = CpuSet::new([*own.cpus().last().unwrap()]).unwrap();
        assert_eq!(seen, (last.clone(), last));
        // Other threads keep theirs.
        assert_eq!(allowed().unwrap(), own);
    }
}
