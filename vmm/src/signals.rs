//! SIGINT and SIGTERM turned into a readable event, so a blocking loop can stop cleanly.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// The eventfd the handler writes to; -1 until installed.
static SIGNAL_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(_signo: libc::c_int) {
    let fd = SIGNAL_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        let one: u64 = 1;
        // SAFETY: write(2) is async-signal-safe; the buffer is a live 8-byte local and `fd` is
        // the eventfd kept open for the life of the process by `install`.
        unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
    }
}

/// Installs handlers for SIGINT and SIGTERM; the returned eventfd becomes readable when one
/// arrives. Call once.
pub fn install() -> std::io::Result<EventFd> {
    let event = EventFd::new(EFD_NONBLOCK)?;
    // The handler's copy: leaked on purpose, it must outlive every signal.
    let handler_copy = event.try_clone()?;
    let fd: RawFd = handler_copy.as_raw_fd();
    std::mem::forget(handler_copy);
    SIGNAL_FD.store(fd, Ordering::Relaxed);
    for signo in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction with a valid handler and an empty mask is well formed;
        // `on_signal` only does async-signal-safe work.
        let rc = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            sa.sa_flags = libc::SA_RESTART;
            libc::sigaction(signo, &sa, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(event)
}
