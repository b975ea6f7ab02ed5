//! How devices (and vCPUs) ask the VMM to stop the VM.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Why the VM should stop. The first request wins; later ones are ignored, so a guest that
/// writes the debug-exit port and then resets keeps the status it asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitRequest {
    /// The guest wrote this byte to the debug-exit port.
    DebugExit(u8),
    /// The guest asked for a reset (i8042 command 0xFE, or KVM reported a reset event).
    Reset,
    /// A vCPU triple-faulted or KVM reported a shutdown event (Linux's `reboot=t` path).
    Shutdown,
    /// The guest kernel panicked: it said so through pvpanic, or the VMM saw its panic banner
    /// (or, with `--fail-on`, an oops or warning) on the console.
    GuestPanic,
    /// A vCPU failed; the VMM holds the error.
    VcpuFailed,
    /// The host asked the VM to stop (a signal to the VMM process).
    Stop,
    /// The host's administrator halted the VM (the control socket's `halt`).
    Halt,
    /// The host's administrator asked for a fresh boot of the same VM (the control socket's
    /// `reboot`): the VM ends and its owner builds it again.
    Reboot,
    /// The VM ran longer than the time it was given.
    Timeout,
}

/// Shared by every device and vCPU thread: records the first [`ExitRequest`] and wakes the
/// VMM's event loop through an eventfd.
#[derive(Debug)]
pub struct ExitNotifier {
    requested: AtomicBool,
    request: Mutex<Option<ExitRequest>>,
    evt: EventFd,
}

impl ExitNotifier {
    /// Creates a notifier with no pending request.
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            requested: AtomicBool::new(false),
            request: Mutex::new(None),
            evt: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    /// Records `req` unless a request is already pending, and wakes the event loop.
    pub fn request(&self, req: ExitRequest) {
        {
            let mut slot = self.request.lock().unwrap_or_else(|p| p.into_inner());
            if slot.is_none() {
                *slot = Some(req);
            }
        }
        self.requested.store(true, Ordering::SeqCst);
        if let Err(e) = self.evt.write(1) {
            log::error!("exit notifier: cannot signal the event loop: {e}");
        }
    }

    /// Cheap check for vCPU loops: has anyone asked to stop?
    pub fn is_requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    /// The first request made, if any.
    pub fn pending(&self) -> Option<ExitRequest> {
        *self.request.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Readable once a request was made (for epoll).
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_request_wins() {
        let n = ExitNotifier::new().unwrap();
        assert!(!n.is_requested());
        assert_eq!(n.pending(), None);
        n.request(ExitRequest::DebugExit(7));
        n.request(ExitRequest::Reset);
        assert!(n.is_requested());
        assert_eq!(n.pending(), Some(ExitRequest::DebugExit(7)));
        assert!(n.eventfd().read().unwrap() >= 1);
    }
}
