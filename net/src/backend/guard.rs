//! A SIGBUS guard over mapped guest memory, for files the frontend could still shrink.
//!
//! A memory region's file is checked against the region when it arrives (`policy.rs`) and
//! sealed against shrinking where the kernel allows. What cannot be sealed is accepted, because
//! refusing it would refuse UML (it maps an unlinked temporary file, which has no seals); but
//! such a file can be truncated by the frontend at any time, and the next access to a page
//! past its new end raises SIGBUS, which by default kills the process.
//!
//! So while a connection's memory is mapped its ranges are [watched](watch): on a SIGBUS inside
//! one, the handler maps a private zero page over the faulting page (`MAP_FIXED`), so the access
//! that faulted completes (reads see zeros, writes go nowhere), and signals the connection's
//! eventfd; the server then drops that frontend with a warning. A SIGBUS anywhere else goes to
//! the disposition that was there before (Rust's runtime handler, or the default: the process
//! dies as it would have).
//!
//! Limits: at most [`SLOTS`] ranges are watched at once (regions beyond that are served
//! unguarded, with a warning); a hugetlbfs mapping cannot take a 4 KiB page over it, so a
//! truncated hugetlbfs file still kills the process.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::sync::OnceLock;

/// How many ranges can be watched at once (8 regions for each of 8 connections).
pub const SLOTS: usize = 64;

struct Slot {
    busy: AtomicBool,
    start: AtomicUsize,
    /// 0 while the slot is not (yet, or any more) watched.
    len: AtomicUsize,
    notify: AtomicI32,
}

#[allow(clippy::declare_interior_mutable_const)]
const FREE: Slot = Slot {
    busy: AtomicBool::new(false),
    start: AtomicUsize::new(0),
    len: AtomicUsize::new(0),
    notify: AtomicI32::new(-1),
};

static TABLE: [Slot; SLOTS] = [FREE; SLOTS];
static PAGE: AtomicUsize = AtomicUsize::new(4096);
/// The SIGBUS disposition before ours, restored for faults outside the watched ranges.
static PREVIOUS: OnceLock<Result<libc::sigaction, i32>> = OnceLock::new();

/// A watched range; unwatched on drop.
#[derive(Debug)]
pub struct Watch {
    slot: usize,
}

impl Drop for Watch {
    fn drop(&mut self) {
        let s = &TABLE[self.slot];
        s.len.store(0, Ordering::Release);
        s.notify.store(-1, Ordering::Release);
        s.busy.store(false, Ordering::Release);
    }
}

/// Watches `len` bytes at `start` (a mapping of guest memory): a SIGBUS there is absorbed and
/// `notify` (an eventfd that outlives the returned [`Watch`]) is written.
pub fn watch(start: usize, len: usize, notify: RawFd) -> io::Result<Watch> {
    install()?;
    for (slot, s) in TABLE.iter().enumerate() {
        if s.busy
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            s.start.store(start, Ordering::Release);
            s.notify.store(notify, Ordering::Release);
            s.len.store(len, Ordering::Release);
            return Ok(Watch { slot });
        }
    }
    Err(io::Error::other(format!(
        "all {SLOTS} SIGBUS guard slots are in use"
    )))
}

/// Installs the handler once per process.
fn install() -> io::Result<()> {
    let previous = PREVIOUS.get_or_init(|| {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if let Ok(p) = usize::try_from(page) {
            if p.is_power_of_two() {
                PAGE.store(p, Ordering::Relaxed);
            }
        }
        // SAFETY: an all-zero sigaction is a valid value of this plain C struct.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = on_sigbus as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        // SAFETY: as above.
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: both structs are live; sigemptyset and sigaction only write into them.
        let rc = unsafe {
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(libc::SIGBUS, &action, &mut old)
        };
        if rc == 0 {
            Ok(old)
        } else {
            Err(io::Error::last_os_error().raw_os_error().unwrap_or(0))
        }
    });
    match previous {
        Ok(_) => Ok(()),
        Err(errno) => Err(io::Error::from_raw_os_error(*errno)),
    }
}

/// The SIGBUS handler. Only async-signal-safe work: atomic loads, `mmap`, `write`,
/// `sigaction`, `raise` (all plain system calls).
extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let (addr, code) = unsafe { ((*info).si_addr() as usize, (*info).si_code) };
    // A SIGBUS raised by the hardware (si_code > 0) at an address we watch.
    if code > 0 {
        let page_size = PAGE.load(Ordering::Relaxed);
        for s in TABLE.iter() {
            let len = s.len.load(Ordering::Acquire);
            let start = s.start.load(Ordering::Acquire);
            if len == 0 || addr < start || addr - start >= len {
                continue;
            }
            let page = addr & !(page_size - 1);
            // SAFETY: the page lies inside a guest-memory mapping of this process (a watched
            // range), which nothing but volatile guest-memory accessors touch; replacing it
            // with a private anonymous page of the same protection keeps every pointer into
            // the mapping valid.
            let p = unsafe {
                libc::mmap(
                    page as *mut libc::c_void,
                    page_size,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_FIXED | libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            if p == libc::MAP_FAILED {
                break;
            }
            let fd = s.notify.load(Ordering::Acquire);
            if fd >= 0 {
                let one = 1u64;
                // SAFETY: writes 8 bytes from a live local to a descriptor the watch's owner
                // keeps open while the watch exists.
                unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
            }
            return;
        }
    }
    // Not ours: hand it to the previous disposition (or the default), and make it happen.
    match PREVIOUS.get() {
        // SAFETY: restores a sigaction the kernel gave us.
        Some(Ok(old)) => unsafe {
            libc::sigaction(libc::SIGBUS, old, std::ptr::null_mut());
        },
        // SAFETY: SIG_DFL needs no handler.
        _ => unsafe {
            libc::signal(libc::SIGBUS, libc::SIG_DFL);
        },
    }
    if code <= 0 {
        // Sent by kill(2) or similar: returning would not repeat it.
        // SAFETY: raise has no memory preconditions.
        unsafe { libc::raise(sig) };
    }
    // A hardware fault repeats when we return, now under the previous disposition.
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use vmm_sys_util::eventfd::EventFd;

    #[test]
    fn a_truncated_mapping_reads_zeros_and_notifies() {
        // SAFETY: literal name, plain flags.
        let fd = unsafe { libc::memfd_create(c"g".as_ptr(), 0) };
        assert!(fd >= 0);
        // SAFETY: fresh descriptor, ours alone.
        let file = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        file.set_len(0x4000).unwrap();
        // SAFETY: a fresh shared mapping of the file; unmapped below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                0x4000,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        let notify = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let w = watch(p as usize, 0x4000, notify.as_raw_fd()).unwrap();
        let base = p.cast::<u8>();
        // SAFETY: inside the mapping.
        unsafe { base.add(0x3000).write_volatile(7) };
        file.set_len(0x1000).unwrap();
        // SAFETY: inside the mapping; past the file's end now, so this faults and is absorbed.
        let v = unsafe { base.add(0x3000).read_volatile() };
        assert_eq!(v, 0);
        assert_eq!(notify.read().unwrap(), 1);
        // SAFETY: still backed by the file.
        assert_eq!(unsafe { base.read_volatile() }, 0);
        drop(w);
        // SAFETY: our own mapping.
        unsafe { libc::munmap(p, 0x4000) };
    }
}
