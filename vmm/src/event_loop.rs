//! The VMM's own event loop, on rust-vmm's `event-manager`: everything the main thread waits
//! for while the vCPUs run. Each source is a subscriber of its own:
//! - the exit request (any device or vCPU ending the VM) and the console's failure watch, which
//!   only wake the loop so it can look at them;
//! - SIGINT/SIGTERM, which stop the VM (status 130);
//! - devices whose configuration changes on their own (a vhost-user NIC whose backend went
//!   away or came back, a link set down by the control socket): a configuration interrupt;
//! - stdin, fed to the serial console as the guest drains its FIFO;
//! - the control socket and its clients (`crate::control`).
//!
//! Deadlines (`--timeout`, the grace after a panic banner) are the loop's own: it wakes for the
//! nearest one.

use std::cell::RefCell;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use vmm_devices::serial::SerialConsole;
use vmm_devices::virtio_pci::VirtioPciDevice;
use vmm_devices::{ExitNotifier, ExitRequest};
use vmm_sys_util::eventfd::EventFd;

use crate::console;

/// Errors of the loop itself.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The event manager (epoll) could not be created or waited on.
    #[error("event loop: {0}")]
    Manager(#[from] event_manager::Error),
}

/// A subscriber of the loop.
pub type Subscriber = Box<dyn MutEventSubscriber>;

/// How much console input may wait for the guest.
const MAX_PENDING: usize = 4096;
/// While input waits for room in the UART's FIFO, the loop polls this often.
const INPUT_RETRY: Duration = Duration::from_millis(20);

/// Wakes the loop when `fd` is readable; reads it (an eventfd) when `drain`.
struct Wake {
    fd: RawFd,
    drain: Option<Arc<dyn Fn() + Send + Sync>>,
}

impl MutEventSubscriber for Wake {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        if let Some(drain) = &self.drain {
            drain();
        }
    }
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new_raw(self.fd, EventSet::IN)) {
            log::error!("event loop: cannot watch fd {}: {e:?}", self.fd);
        }
    }
}

/// SIGINT/SIGTERM (through `crate::signals`' eventfd): stop the VM.
struct SignalStop {
    fd: EventFd,
    exit: Arc<ExitNotifier>,
}

impl MutEventSubscriber for SignalStop {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.fd.read();
        self.exit.request(ExitRequest::Stop);
    }
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.fd, EventSet::IN)) {
            log::error!("event loop: cannot watch the signal eventfd: {e:?}");
        }
    }
}

/// A device's configuration-change eventfd: each change becomes a configuration interrupt.
struct ConfigChange {
    fd: RawFd,
    dev: Arc<Mutex<VirtioPciDevice>>,
}

impl MutEventSubscriber for ConfigChange {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let mut dev = self.dev.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = dev.config_events() {
            let _ = e.read();
        }
        dev.config_changed();
    }
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new_raw(self.fd, EventSet::IN)) {
            log::error!("event loop: cannot watch a device's configuration events: {e:?}");
        }
    }
}

/// stdin to the serial console. Input the UART has no room for waits (up to
/// [`MAX_PENDING`] bytes; stdin is not read meanwhile, so nothing is lost).
pub struct StdinInput {
    serial: Arc<Mutex<SerialConsole>>,
    pending: Vec<u8>,
    open: bool,
}

impl StdinInput {
    /// Hands waiting input to the UART; true while some still waits.
    fn flush(&mut self) -> bool {
        if !self.pending.is_empty() {
            let taken = self
                .serial
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .enqueue_input(&self.pending);
            self.pending.drain(..taken);
        }
        !self.pending.is_empty()
    }
}

impl MutEventSubscriber for StdinInput {
    fn process(&mut self, _events: Events, ops: &mut EventOps) {
        if !self.open || self.pending.len() >= MAX_PENDING {
            return;
        }
        let mut buf = [0u8; 256];
        match console::read_stdin(&mut buf) {
            Ok(Some(k)) => self.pending.extend_from_slice(&buf[..k]),
            Ok(None) | Err(_) => {
                let _ = ops.remove(Events::empty_raw(libc::STDIN_FILENO));
                self.open = false;
            }
        }
    }
    fn init(&mut self, ops: &mut EventOps) {
        // epoll refuses regular files and /dev/null (EPERM): then there is simply no input.
        match ops.add(Events::new_raw(libc::STDIN_FILENO, EventSet::IN)) {
            Ok(()) => self.open = true,
            Err(e) => log::debug!("stdin not pollable ({e:?}); console input disabled"),
        }
    }
}

/// The loop: its subscribers and deadlines.
pub struct EventLoop {
    em: EventManager<Subscriber>,
    stdin: Option<Rc<RefCell<StdinInput>>>,
}

/// Adapts a shared subscriber to the manager's boxed one.
struct Shared<T>(Rc<RefCell<T>>);

impl<T: MutEventSubscriber> MutEventSubscriber for Shared<T> {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        self.0.borrow_mut().process(events, ops);
    }
    fn init(&mut self, ops: &mut EventOps) {
        self.0.borrow_mut().init(ops);
    }
}

impl EventLoop {
    /// A loop that wakes on the exit request and the failure watch.
    pub fn new(
        exit: &ExitNotifier,
        failures: &Arc<crate::watch::FailureWatch>,
    ) -> Result<Self, Error> {
        let mut em: EventManager<Subscriber> = EventManager::new()?;
        em.add_subscriber(Box::new(Wake {
            fd: exit.eventfd().as_raw_fd(),
            drain: None,
        }));
        let f = failures.clone();
        em.add_subscriber(Box::new(Wake {
            fd: failures.eventfd().as_raw_fd(),
            drain: Some(Arc::new(move || {
                let _ = f.eventfd().read();
            })),
        }));
        Ok(EventLoop { em, stdin: None })
    }

    /// Stops the VM on SIGINT/SIGTERM.
    pub fn stop_on(&mut self, signals: EventFd, exit: Arc<ExitNotifier>) {
        self.em
            .add_subscriber(Box::new(SignalStop { fd: signals, exit }));
    }

    /// Turns `dev`'s configuration changes into configuration interrupts.
    pub fn watch_config(&mut self, dev: &Arc<Mutex<VirtioPciDevice>>) {
        let fd = dev
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .config_events()
            .map(|e| e.as_raw_fd());
        if let Some(fd) = fd {
            self.em.add_subscriber(Box::new(ConfigChange {
                fd,
                dev: dev.clone(),
            }));
        }
    }

    /// Feeds stdin to `serial`.
    pub fn console_input(&mut self, serial: Arc<Mutex<SerialConsole>>) {
        let s = Rc::new(RefCell::new(StdinInput {
            serial,
            pending: Vec::new(),
            open: false,
        }));
        self.em.add_subscriber(Box::new(Shared(s.clone())));
        self.stdin = Some(s);
    }

    /// Adds any other subscriber (the control socket).
    pub fn add(&mut self, s: Subscriber) {
        self.em.add_subscriber(s);
    }

    /// Runs until `exit` is requested, requesting it itself when `timeout` passes
    /// ([`ExitRequest::Timeout`]) or the failure watch's grace ends ([`ExitRequest::GuestPanic`]).
    pub fn run(
        &mut self,
        exit: &ExitNotifier,
        failures: &crate::watch::FailureWatch,
        deadline: Option<Instant>,
    ) -> Result<(), Error> {
        while !exit.is_requested() {
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                exit.request(ExitRequest::Timeout);
                break;
            }
            let failed_at = failures.deadline();
            if failed_at.is_some_and(|d| now >= d) {
                exit.request(ExitRequest::GuestPanic);
                break;
            }
            let waiting = self.stdin.as_ref().is_some_and(|s| s.borrow_mut().flush());
            // Wake for the nearest deadline (the failure watch's eventfd says when a new one
            // starts), and every INPUT_RETRY while input waits for the guest to drain the FIFO.
            let mut wake = [deadline, failed_at]
                .into_iter()
                .flatten()
                .min()
                .map(|d| d.saturating_duration_since(now));
            if waiting {
                wake = Some(wake.map_or(INPUT_RETRY, |w| w.min(INPUT_RETRY)));
            }
            let ms = wake.map_or(-1, |w| w.as_millis().min(i32::MAX as u128 - 1) as i32 + 1);
            // EINTR (a vCPU kick, a signal) is a wake-up with no events.
            self.em.run_with_timeout(ms)?;
            if let Some(s) = &self.stdin {
                s.borrow_mut().flush();
            }
        }
        Ok(())
    }
}
