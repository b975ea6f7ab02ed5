//! The vhost-user-net device: what vhost-user-backend's worker thread drives.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_backend::{VhostUserBackendMut, VringRwLock, VringT};
use virtio_queue::QueueT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryLoadGuard, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use super::datapath::Datapath;
use super::features::{self, Negotiated};

/// Queue indexes, which are also the worker's event ids for their kicks.
pub const RX_QUEUE: u16 = 0;
pub const TX_QUEUE: u16 = 1;
pub const NUM_QUEUES: usize = 2;
/// Event id of the transport's descriptor (ids up to NUM_QUEUES are the crate's).
pub const TRANSPORT_EVENT: u64 = NUM_QUEUES as u64 + 1;
/// Event id of the transport's transmit descriptor when it differs from the receive one.
pub const TRANSPORT_TX_EVENT: u64 = NUM_QUEUES as u64 + 2;

const MAX_QUEUE_SIZE: usize = 1024;

type Mem = GuestMemoryAtomic<GuestMemoryMmap>;

/// One frontend connection's view of the device; the datapath is shared with the server,
/// which keeps it (and the transport) across connections.
pub struct NetDevice {
    dp: Arc<Mutex<Datapath>>,
    mem: Option<Mem>,
    offered: u64,
    config: [u8; 12],
    exit: (EventConsumer, EventNotifier),
    /// The backend-request channel, held (never written) for the connection's life: UML gives
    /// the write end of a pipe and treats its closing as the connection breaking, unplugging
    /// the device.
    backend_req: Option<vhost::vhost_user::Backend>,
}

impl NetDevice {
    pub fn new(dp: Arc<Mutex<Datapath>>, offered: u64, config: [u8; 12]) -> io::Result<NetDevice> {
        Ok(NetDevice {
            dp,
            mem: None,
            offered,
            config,
            exit: new_event_consumer_and_notifier(EventFlag::NONBLOCK)?,
            backend_req: None,
        })
    }

    /// Wakes the worker thread so it exits (the crate's exit event).
    pub fn notify_exit(&self) {
        let _ = self.exit.1.notify();
    }
}

/// Locks the datapath; a panic elsewhere while it was held leaves counters at worst, so the
/// lock is taken over rather than propagated.
pub fn lock(dp: &Mutex<Datapath>) -> MutexGuard<'_, Datapath> {
    dp.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn run_queue(
    dp: &mut Datapath,
    vring: &VringRwLock,
    mem: &GuestMemoryLoadGuard<GuestMemoryMmap>,
    rx: bool,
) {
    let mut state = vring.get_mut();
    if !state.get_queue().ready() {
        return;
    }
    let result = if rx {
        dp.process_rx(state.get_queue_mut(), mem)
    } else {
        dp.process_tx(state.get_queue_mut(), mem)
    };
    match result {
        Ok(true) => {
            if let Err(e) = state.signal_used_queue() {
                log::warn!("signalling the guest: {e}");
            }
        }
        Ok(false) => {}
        // A transport error is the host's problem, not the frontend's: log it and keep the
        // worker alive (an error returned here would end it).
        Err(e) => log::warn!("{e}"),
    }
}

impl VhostUserBackendMut for NetDevice {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        self.offered
    }

    fn acked_features(&mut self, acked: u64) {
        let n = Negotiated::from_features(acked & self.offered);
        if let Err(e) = lock(&self.dp).set_negotiated(n) {
            log::warn!("mirroring the guest's offloads: {e}");
        }
    }

    /// BACKEND_REQ is offered for interop, not used: UML 6.1's virtio_uml allocates its
    /// interrupt only while setting up the backend-request channel, and without it requests
    /// IRQ 0 (the timer's) for the virtqueues, so its virtio-net probe fails with -EBUSY. We
    /// accept the channel and never send on it.
    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::BACKEND_REQ
    }

    fn reset_device(&mut self) {
        lock(&self.dp).reset();
    }

    /// The crate sets EVENT_IDX on each queue itself.
    fn set_event_idx(&mut self, _enabled: bool) {}

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        features::read_config(&self.config, offset, size)
    }

    fn set_backend_req_fd(&mut self, channel: vhost::vhost_user::Backend) {
        self.backend_req = Some(channel);
    }

    fn update_memory(&mut self, mem: Mem) -> io::Result<()> {
        self.mem = Some(mem);
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        Some((self.exit.0.try_clone().ok()?, self.exit.1.try_clone().ok()?))
    }

    fn handle_event(
        &mut self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        let (Some(mem), [rx, tx]) = (&self.mem, vrings) else {
            return Ok(());
        };
        let mem = mem.memory();
        log::trace!("event {device_event} {evset:?}");
        let mut dp = lock(&self.dp);
        match u64::from(device_event) {
            e if e == u64::from(RX_QUEUE) => run_queue(&mut dp, rx, &mem, true),
            e if e == u64::from(TX_QUEUE) => run_queue(&mut dp, tx, &mem, false),
            TRANSPORT_EVENT | TRANSPORT_TX_EVENT => {
                if evset.contains(EventSet::IN) {
                    run_queue(&mut dp, rx, &mem, true);
                }
                if evset.contains(EventSet::OUT) && dp.tx_pending() {
                    run_queue(&mut dp, tx, &mem, false);
                }
            }
            other => log::debug!("unexpected event {other}"),
        }
        Ok(())
    }
}
