//! The vhost-user-net device: what vhost-user-backend's worker threads drive, one per queue
//! pair (`queues=N`), each with its own datapath and transport descriptor.
//!
//! The worker never holds the datapath lock while it signals the guest (the call eventfd is
//! made non-blocking by the relay's checks anyway), and the exit-event descriptor that
//! vhost-user-backend 0.24 leaks for each connection is closed here once the connection's
//! workers are gone ([`NetDevice::close_leaked_exit_fds`]). Its guest memory is watched by
//! the SIGBUS [guard](super::guard) while mapped: a fault there (a file the frontend shrank)
//! makes [`NetDevice::fault_fd`] readable, and the server drops that frontend.
//!
//! The device is a [`VhostUserBackend`] of its own (every method takes `&self`), not a
//! `VhostUserBackendMut` behind the crate's `RwLock`: that lock would run every worker's event
//! under one write lock of the whole device, so the pairs of a `queues=N` NIC would take turns
//! and a worker that busy-polls would hold the others off. Each worker locks only its own
//! pair's datapath; what the frontend's messages change is behind locks of its own.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_queue::QueueT;
use vm_memory::{
    GuestAddressSpace, GuestMemoryAtomic, GuestMemoryBackend, GuestMemoryLoadGuard,
    GuestMemoryMmap, GuestMemoryRegion,
};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};
use vmm_sys_util::eventfd::EventFd;

use super::affinity;
use super::busy::{BusyPoll, Pace};
use super::datapath::{Datapath, Step};
use super::features::{self, Negotiated};
use super::guard;
use super::steer::Steerer;
use crate::config::CpuSet;
use crate::seccomp::{self, ThreadKind};

/// A pair's queue indexes within its worker (pair `i`'s are `2i` and `2i + 1` on the device),
/// which are also the worker's event ids for their kicks.
pub const RX_QUEUE: u16 = 0;
pub const TX_QUEUE: u16 = 1;
/// Queues of one pair.
pub const PAIR_QUEUES: usize = 2;

/// The event ids of a transport's receive and transmit descriptors on a device of `pairs`
/// pairs: ids up to the device's queue count are the crate's (kicks, its exit event).
pub fn transport_events(pairs: usize) -> (u64, u64) {
    let queues = (pairs * PAIR_QUEUES) as u64;
    (queues + 1, queues + 2)
}

/// The largest queue a frontend may set up.
pub const MAX_QUEUE_SIZE: usize = 1024;

type Mem = GuestMemoryAtomic<GuestMemoryMmap>;

/// One frontend connection's view of the device; the datapaths (one per pair) are shared with
/// the server, which keeps them (and the transports) across connections.
pub struct NetDevice {
    dps: Vec<Arc<Mutex<Datapath>>>,
    steerer: Arc<Steerer>,
    /// The guest memory and its watches; declared before `fault`, which the watches write to,
    /// so they go first. A worker holds it for reading through its whole event, so a new
    /// table (the write lock) waits for the events that may still read the old one.
    memory: RwLock<Mapped>,
    /// Written by the SIGBUS guard when the frontend's memory file shrank under a mapping.
    fault: EventFd,
    offered: u64,
    config: [u8; 12],
    /// How the workers run (busy polling, CPUs).
    workers: Workers,
    /// Each worker's busy-polling window (`busy_poll=auto` adapts it), by pair.
    paces: Vec<Mutex<Pace>>,
    exit: (EventConsumer, EventNotifier),
    /// The exit-event consumers handed to the crate, by number (see `close_leaked_exit_fds`).
    handed_out: Mutex<Vec<RawFd>>,
    /// The backend-request channel, held (never written) for the connection's life: UML gives
    /// the write end of a pipe and treats its closing as the connection breaking, unplugging
    /// the device.
    backend_req: Mutex<Option<vhost::vhost_user::Backend>>,
}

/// How a device's workers run, from its spec; kept by the server across connections.
#[derive(Clone, Debug)]
pub struct Workers {
    /// The device's name, for what a worker logs.
    pub name: String,
    /// How long a worker keeps looking for work after an event (`busy_poll`).
    pub busy: BusyPoll,
    /// The CPUs each worker pins itself to at its first event (`affinity`; see
    /// [`super::affinity`]), or `None` to run where the process may.
    pub affinity: Option<CpuSet>,
}

/// The frontend's memory table, and the SIGBUS guard's watches over its mappings.
#[derive(Default)]
struct Mapped {
    /// The table as it was when watched: the crate swaps its own copy before it tells us,
    /// and a worker reading that one could touch a mapping not yet watched.
    mem: Option<GuestMemoryLoadGuard<GuestMemoryMmap>>,
    /// Held for their drop, which ends the watching.
    _watches: Vec<guard::Watch>,
}

impl NetDevice {
    pub fn new(
        dps: Vec<Arc<Mutex<Datapath>>>,
        steerer: Arc<Steerer>,
        offered: u64,
        config: [u8; 12],
        workers: Workers,
    ) -> io::Result<NetDevice> {
        Ok(NetDevice {
            paces: (0..dps.len()).map(|_| Mutex::default()).collect(),
            dps,
            steerer,
            memory: RwLock::new(Mapped::default()),
            fault: EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?,
            offered,
            config,
            workers,
            exit: new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC)?,
            handed_out: Mutex::new(Vec::new()),
            backend_req: Mutex::new(None),
        })
    }

    /// Readable once the SIGBUS guard absorbed a fault in this connection's guest memory.
    pub fn fault_fd(&self) -> RawFd {
        self.fault.as_raw_fd()
    }

    /// Wakes the worker thread so it exits (the crate's exit event).
    pub fn notify_exit(&self) {
        let _ = self.exit.1.notify();
    }

    /// Closes the exit-event descriptors vhost-user-backend leaks, one per connection: its
    /// `VringEpollHandler::new` turns the consumer [`exit_event`](VhostUserBackend::exit_event)
    /// returns into a raw descriptor for its epoll and never closes it (0.24; after ~1000
    /// connections a process with RLIMIT_NOFILE 1024 could accept no more). Call it only once
    /// the connection's workers are gone (the daemon dropped). A number is closed only while it
    /// still refers to our exit event (`kcmp`), so if a later crate closes it itself, a number
    /// reused by something else is left alone. Returns how many were closed.
    pub fn close_leaked_exit_fds(&self) -> usize {
        let ours = self.exit.0.as_raw_fd();
        let mut handed = self.handed_out.lock().unwrap_or_else(|p| p.into_inner());
        handed
            .drain(..)
            .filter(|&fd| same_file(ours, fd))
            // SAFETY: `fd` is the number of a consumer we handed the crate, which gave up its
            // ownership (into_raw_fd) and whose workers are gone; kcmp just confirmed that the
            // number still refers to our exit event, so nothing else owns it.
            .map(|fd| drop(unsafe { OwnedFd::from_raw_fd(fd) }))
            .count()
    }
}

/// Whether two descriptors of this process refer to the same open file (`kcmp` KCMP_FILE).
fn same_file(a: RawFd, b: RawFd) -> bool {
    const KCMP_FILE: libc::c_int = 0;
    // SAFETY: getpid cannot fail.
    let pid = unsafe { libc::getpid() };
    // SAFETY: kcmp only compares kernel objects named by integers; no memory is passed.
    let rc = unsafe { libc::syscall(libc::SYS_kcmp, pid, pid, KCMP_FILE, a, b) };
    rc == 0
}

/// Locks the datapath (or a worker's pace); a panic elsewhere while it was held leaves
/// counters at worst, so the lock is taken over rather than propagated.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs one queue; returns whether the guest is to be signalled (after the datapath lock is
/// released). A transmit call's signals on the way ([`Step::Tell`]) are sent at once, under
/// the locks: the call eventfd is non-blocking ([`signal`]).
fn run_queue(dp: &mut Datapath, vring: &VringRwLock, mem: &GuestMemoryMmap, rx: bool) -> bool {
    let mut state = vring.get_mut();
    // A ring the frontend disabled (SET_VRING_ENABLE 0) is not touched until it is enabled.
    if !state.get_queue().ready() || !state.is_enabled() {
        return false;
    }
    let result = if rx {
        dp.process_rx(state.get_queue_mut(), mem)
    } else {
        loop {
            match dp.transmit(state.get_queue_mut(), mem) {
                // Told on the way, so that the guest frees and queues more while the rest
                // is sent (datapath::TELL_EVERY).
                Ok(Step::Tell) => signalled(state.signal_used_queue()),
                Ok(Step::Done(notify)) => break Ok(notify),
                Err(e) => break Err(e),
            }
        }
    };
    match result {
        Ok(used) => used,
        // A transport error is the host's problem, not the frontend's: log it and keep the
        // worker alive (an error returned here would end it).
        Err(e) => {
            log::warn!("{e}");
            false
        }
    }
}

/// One look of a busy-polling worker ([`super::busy`]): the transmit ring if the guest added
/// chains, the receive side if the transport has frames or the datapath holds some; the
/// guest is signalled as after an event. Whether either ring moved (chains used).
fn look(dp: &Mutex<Datapath>, rx: &VringRwLock, tx: &VringRwLock, mem: &GuestMemoryMmap) -> bool {
    let (signal_rx, signal_tx, moved) = {
        let mut dp = lock(dp);
        let before = (next_used(rx), next_used(tx));
        let signal_tx = has_new_chains(tx, mem) && run_queue(&mut dp, tx, mem, false);
        let signal_rx = (dp.rx_waiting() || readable(dp.transport().rx_fd()))
            && run_queue(&mut dp, rx, mem, true);
        dp.sync_watch();
        (
            signal_rx,
            signal_tx,
            (next_used(rx), next_used(tx)) != before,
        )
    };
    if signal_rx {
        signal(rx);
    }
    if signal_tx {
        signal(tx);
    }
    moved
}

fn next_used(vring: &VringRwLock) -> u16 {
    vring.get_ref().get_queue().next_used()
}

/// The guest made chains available that the datapath has not taken (on a ring it serves).
fn has_new_chains(vring: &VringRwLock, mem: &GuestMemoryMmap) -> bool {
    let state = vring.get_ref();
    let queue = state.get_queue();
    queue.ready()
        && state.is_enabled()
        && queue
            .avail_idx(mem, Ordering::Acquire)
            .is_ok_and(|idx| idx.0 != queue.next_avail())
}

/// `fd` has something to read now (`poll` with no wait).
fn readable(fd: RawFd) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd we own, for the length we pass; a zero timeout never blocks.
    let ready = unsafe { libc::poll(&mut p, 1, 0) };
    ready > 0 && p.revents & libc::POLLIN != 0
}

/// Signals the guest. The call eventfd is non-blocking (policy.rs), so this cannot block; it
/// fails only when the frontend let the counter reach its maximum, which costs it nothing but
/// this interrupt.
fn signal(vring: &VringRwLock) {
    signalled(vring.signal_used_queue());
}

/// What became of a signal to the guest ([`signal`]): a failure is only logged.
fn signalled(result: io::Result<()>) {
    if let Err(e) = result {
        log::debug!("signalling the guest: {e}");
    }
}

impl VhostUserBackend for NetDevice {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        self.dps.len() * PAIR_QUEUES
    }

    /// One worker per pair: its receive and transmit queues.
    fn queues_per_thread(&self) -> Vec<u64> {
        (0..self.dps.len()).map(|i| 0b11 << (2 * i)).collect()
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        seccomp::confine(ThreadKind::Handler);
        self.offered
    }

    fn acked_features(&self, acked: u64) {
        seccomp::confine(ThreadKind::Handler);
        let n = Negotiated::from_features(acked & self.offered);
        let took = features::names(acked & self.offered);
        for (pair, dp) in self.dps.iter().enumerate() {
            let mut dp = lock(dp);
            if pair == 0 {
                log::info!(
                    "{}: the guest took offloads: {}",
                    dp.transport().name(),
                    if took.is_empty() {
                        "none".to_string()
                    } else {
                        took.join(" ")
                    }
                );
            }
            if let Err(e) = dp.set_negotiated(n) {
                log::warn!("mirroring the guest's offloads: {e}");
            }
        }
    }

    /// See [`features::PROTOCOL_FEATURES`] for what is offered and why.
    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        seccomp::confine(ThreadKind::Handler);
        VhostUserProtocolFeatures::from_bits_truncate(features::PROTOCOL_FEATURES)
    }

    fn reset_device(&self) {
        seccomp::confine(ThreadKind::Handler);
        for dp in &self.dps {
            lock(dp).reset();
        }
    }

    /// The crate sets EVENT_IDX on each queue itself.
    fn set_event_idx(&self, _enabled: bool) {}

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        seccomp::confine(ThreadKind::Handler);
        features::read_config(&self.config, offset, size)
    }

    fn set_backend_req_fd(&self, channel: vhost::vhost_user::Backend) {
        seccomp::confine(ThreadKind::Handler);
        *self.backend_req.lock().unwrap_or_else(|p| p.into_inner()) = Some(channel);
    }

    /// Takes the new memory and watches its mappings (the old watches go with the old table,
    /// once no worker is in an event that may still read it).
    fn update_memory(&self, mem: Mem) -> io::Result<()> {
        seccomp::confine(ThreadKind::Handler);
        let mut watches = Vec::new();
        let mem = mem.memory();
        for region in mem.iter() {
            match guard::watch(
                region.as_ptr() as usize,
                region.size(),
                self.fault.as_raw_fd(),
            ) {
                Ok(w) => watches.push(w),
                Err(e) => log::warn!(
                    "guest memory at {:#x}: no SIGBUS guard: {e}",
                    region.start_addr().0
                ),
            }
        }
        *self.memory.write().unwrap_or_else(|p| p.into_inner()) = Mapped {
            mem: Some(mem),
            _watches: watches,
        };
        Ok(())
    }

    /// Each call hands out a fresh duplicate; its number is kept for
    /// [`NetDevice::close_leaked_exit_fds`].
    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        let consumer = self.exit.0.try_clone().ok()?;
        let notifier = self.exit.1.try_clone().ok()?;
        self.handed_out
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(consumer.as_raw_fd());
        Some((consumer, notifier))
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock],
        thread_id: usize,
    ) -> io::Result<()> {
        // Before the filter, which has no sched_setaffinity.
        if let Some(set) = &self.workers.affinity {
            affinity::pin_once(set, &self.workers.name);
        }
        // The crate runs worker `i` for the pair of `queues_per_thread()[i]`.
        let Some(dp) = self.dps.get(thread_id) else {
            return Ok(());
        };
        seccomp::confine_with(|| ThreadKind::Worker {
            sockets: lock(dp).transport().opens_sockets(),
        });
        let memory = self.memory.read().unwrap_or_else(|p| p.into_inner());
        let (Some(mem), [rx, tx]) = (&memory.mem, vrings) else {
            return Ok(());
        };
        log::trace!("pair {thread_id}: event {device_event} {evset:?}");
        let mut pace = lock(&self.paces[thread_id]);
        let window = pace.wake(self.workers.busy);
        let (transport_rx, transport_tx) = transport_events(self.dps.len());
        let (signal_rx, signal_tx) = {
            let mut dp = lock(dp);
            let event = u64::from(device_event);
            // Steering is for several pairs only: a single-queue device's events skip it.
            if self.dps.len() > 1 {
                let served = {
                    let state = rx.get_ref();
                    state.get_queue().ready() && state.is_enabled()
                };
                let pair = thread_id as u16;
                self.steerer.observe(pair, served, &mut dp);
                if pair > 0 && !served && event == transport_rx && evset.contains(EventSet::IN) {
                    // Frames for a ring nobody serves: steered away from now, dropped and
                    // counted.
                    if let Err(e) = dp.discard_rx() {
                        log::warn!("{e}");
                    }
                }
            }
            let signals = match event {
                e if e == u64::from(RX_QUEUE) => (run_queue(&mut dp, rx, mem, true), false),
                e if e == u64::from(TX_QUEUE) => (false, run_queue(&mut dp, tx, mem, false)),
                e if e == transport_rx || e == transport_tx => (
                    evset.contains(EventSet::IN) && run_queue(&mut dp, rx, mem, true),
                    evset.contains(EventSet::OUT)
                        && dp.tx_pending()
                        && run_queue(&mut dp, tx, mem, false),
                ),
                other => {
                    log::debug!("unexpected event {other}");
                    (false, false)
                }
            };
            // Writability is listened for only while the host refuses frames (watch.rs).
            dp.sync_watch();
            signals
        };
        if signal_rx {
            signal(rx);
        }
        if signal_tx {
            signal(tx);
        }
        if window.is_zero() {
            pace.spin(window, || false);
        } else {
            let stats = {
                let mut dp = lock(dp);
                dp.hold_tx_kicks(true);
                dp.stats()
            };
            let spell = pace.spin(window, || look(dp, rx, tx, mem));
            let us = u64::try_from(spell.took.as_micros()).unwrap_or(u64::MAX);
            stats
                .busy_poll_finds
                .fetch_add(spell.finds, Ordering::Relaxed);
            stats.busy_poll_spells.fetch_add(1, Ordering::Relaxed);
            stats.busy_poll_us.fetch_add(us, Ordering::Relaxed);
            // Kicks back on before the worker sleeps (on a ring the guest disabled meanwhile
            // too); a round only if chains raced in, which takes them and re-arms again.
            let signal_tx = {
                let mut dp = lock(dp);
                dp.hold_tx_kicks(false);
                let raced = {
                    let mut state = tx.get_mut();
                    state.get_queue().ready()
                        && matches!(state.get_queue_mut().enable_notification(&**mem), Ok(true))
                };
                let signal = raced && run_queue(&mut dp, tx, mem, false);
                dp.sync_watch();
                signal
            };
            if signal_tx {
                signal(tx);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::IntoRawFd;
    use std::os::unix::net::UnixDatagram;
    use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
    use std::thread;
    use std::time::Duration;

    use vm_memory::GuestAddress;

    use super::*;
    use crate::transport::fd::Fd;

    /// Long enough for a spawned worker to reach the lock it waits on.
    const SETTLE: Duration = Duration::from_millis(100);

    /// A device of two pairs over `fd` transports, its guest memory set; the datapaths; and
    /// the transports' far ends (held open).
    fn two_pairs() -> (Arc<NetDevice>, Vec<Arc<Mutex<Datapath>>>, Vec<UnixDatagram>) {
        let mut peers = Vec::new();
        let dps = (0..2)
            .map(|_| {
                let (ours, theirs) = UnixDatagram::pair().unwrap();
                peers.push(theirs);
                let fd = Fd::open(ours.into_raw_fd(), 64, true).unwrap();
                Arc::new(Mutex::new(Datapath::new(Box::new(fd), 64, 2, 1500)))
            })
            .collect::<Vec<_>>();
        let dev = NetDevice::new(
            dps.clone(),
            Arc::new(Steerer::new(2)),
            0,
            [0; 12],
            Workers {
                name: "vec0".into(),
                busy: BusyPoll::Off,
                affinity: None,
            },
        )
        .unwrap();
        dev.update_memory(memory()).unwrap();
        (Arc::new(dev), dps, peers)
    }

    fn memory() -> Mem {
        GuestMemoryAtomic::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap())
    }

    /// Runs `f` on a thread of its own; whether it succeeded arrives on the receiver.
    fn on_thread(f: impl FnOnce() -> io::Result<()> + Send + 'static) -> Receiver<bool> {
        let (tell, told) = mpsc::channel();
        thread::spawn(move || tell.send(f().is_ok()));
        told
    }

    /// Pair `pair`'s worker handling a kick of its transmit queue, on a thread of its own.
    fn kick(dev: &Arc<NetDevice>, pair: usize) -> Receiver<bool> {
        let dev = dev.clone();
        let mem = memory();
        let vrings = [
            VringRwLock::new(mem.clone(), 256).unwrap(),
            VringRwLock::new(mem, 256).unwrap(),
        ];
        on_thread(move || dev.handle_event(TX_QUEUE, EventSet::IN, &vrings, pair))
    }

    /// The pairs of a `queues=N` NIC are served side by side: pair 1's event is handled while
    /// pair 0's worker waits for its datapath. Behind the crate's `RwLock` (what this device
    /// was), pair 0's worker held the whole device while it waited, and pair 1 waited behind.
    #[test]
    fn a_pairs_event_does_not_wait_for_another_pairs_worker() {
        let (dev, dps, _peers) = two_pairs();
        let held = lock(&dps[0]);
        let first = kick(&dev, 0);
        assert_eq!(
            first.recv_timeout(SETTLE),
            Err(RecvTimeoutError::Timeout),
            "pair 0's worker waits for its datapath"
        );
        let served = kick(&dev, 1).recv_timeout(Duration::from_secs(5));
        drop(held);
        assert_eq!(
            served,
            Ok(true),
            "pair 1's event waited for pair 0's worker"
        );
        assert_eq!(first.recv_timeout(Duration::from_secs(5)), Ok(true));
    }

    /// A new memory table waits for the workers' events in progress, which may still read the
    /// old one: its mappings' SIGBUS watches go only once none does.
    #[test]
    fn a_new_memory_table_waits_for_the_events_in_progress() {
        let (dev, dps, _peers) = two_pairs();
        let held = lock(&dps[0]);
        let worker = kick(&dev, 0);
        thread::sleep(SETTLE);
        let handler = dev.clone();
        let replaced = on_thread(move || handler.update_memory(memory()));
        assert_eq!(
            replaced.recv_timeout(SETTLE),
            Err(RecvTimeoutError::Timeout),
            "the table was replaced under a worker's event"
        );
        drop(held);
        assert_eq!(worker.recv_timeout(Duration::from_secs(5)), Ok(true));
        assert_eq!(replaced.recv_timeout(Duration::from_secs(5)), Ok(true));
    }
}
