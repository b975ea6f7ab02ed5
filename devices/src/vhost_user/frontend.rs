//! The part of a vhost-user frontend that does not depend on the device type.
//!
//! The virtio transport (virtio-pci) owns what the guest sees: feature negotiation, the queue
//! registers, interrupts. A [`Connection`] speaks to the backend: SET_OWNER, the feature and
//! protocol-feature handshake, and when the guest sets DRIVER_OK it hands the backend the guest
//! memory (memfd regions), the rings' addresses and the kick/call eventfds, after which the VMM
//! is out of the datapath. A [`VhostUserDevice`] joins a connection to the device-specific part
//! (a [`DeviceKind`]: type, queues, config space) and is what the transport drives.
//!
//! Ring addresses in `SET_VRING_ADDR` are addresses in *this* process (QEMU's convention, which
//! every backend follows): the backend translates them through the `userspace_addr` of the
//! regions in `SET_MEM_TABLE`.
//!
//! A device made with [`VhostUserDevice::reconnecting`] outlives its backend: a monitor thread
//! sees the socket hang up, takes the link down (a configuration interrupt tells the guest),
//! connects again to the same path until a backend answers, hands it the same memory and
//! rings (each resumed at the index the guest's used ring shows), and brings the link back up.
//! The guest keeps its NIC throughout. Frames the old backend had taken but not completed are
//! lost, as on a cable pulled and plugged back.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use vhost::vhost_user::message::{
    VhostUserConfigFlags, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
};

use crate::virtio_pci::{ActivateError, QueueSetup, VirtioDevice};

/// `VHOST_USER_F_PROTOCOL_FEATURES`: a vhost-user bit, never offered to the guest.
const VHOST_USER_F_PROTOCOL_FEATURES: u64 = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();

/// Largest queue size a split virtqueue may have.
const MAX_QUEUE_SIZE: u16 = 32768;

/// Errors of a vhost-user frontend, whatever the device type.
#[derive(Debug, thiserror::Error)]
pub enum FrontendError {
    /// Nothing accepts connections at the socket (or it is not a socket).
    #[error("vhost-user backend at {path}: {source}")]
    Connect {
        path: String,
        #[source]
        source: vhost::Error,
    },
    /// The backend failed or refused a request.
    #[error("vhost-user {op}: {source}")]
    Protocol {
        op: &'static str,
        #[source]
        source: vhost::Error,
    },
    /// A legacy (pre-1.0) backend: our transport is modern only.
    #[error("vhost-user backend does not offer VIRTIO_F_VERSION_1 (features {0:#x})")]
    NotVersion1(u64),
    /// Guest memory that a backend process cannot map.
    #[error("guest memory region at {0:#x} is not backed by a file, a backend cannot map it")]
    AnonymousMemory(u64),
    /// The guest put a ring where there is no memory.
    #[error("queue {index}: ring address {addr:#x} is outside guest memory")]
    RingAddress { index: usize, addr: u64 },
    /// The guest chose a queue size the ring layout does not allow.
    #[error("queue {index}: size {size} is not a power of two in 1..=32768")]
    QueueSize { index: usize, size: u16 },
    /// An eventfd could not be made or duplicated (the host is out of descriptors).
    #[error("cannot create or duplicate an eventfd: {0}")]
    EventFd(#[source] std::io::Error),
    /// A backend that replaces a lost one lacks features the guest is using.
    #[error("the new backend lacks features the guest uses ({0:#x})")]
    LacksFeatures(u64),
    /// A backend that replaces a lost one serves fewer queues than the guest runs.
    #[error("the new backend serves {have} queues, the guest runs {want}")]
    TooFewQueues { have: usize, want: usize },
    /// A queue the frontend serves itself (virtio-net's control queue) could not start.
    #[error("queue {index} (the frontend's own): {reason}")]
    OwnQueue { index: usize, reason: String },
}

fn proto(op: &'static str) -> impl FnOnce(vhost::Error) -> FrontendError {
    move |source| FrontendError::Protocol { op, source }
}

/// A vhost-user backend after the handshake: SET_OWNER done, features and protocol features
/// known.
pub struct Connection {
    frontend: Frontend,
    /// Virtio features the backend offers, without the vhost-user bit.
    device_features: u64,
    protocol: VhostUserProtocolFeatures,
    /// Queues the backend serves (`GET_QUEUE_NUM` with the MQ protocol feature, else what the
    /// device was connected for).
    max_queues: usize,
    /// Rings handed over at the last activation; reset stops each of them.
    num_queues: usize,
    active: bool,
}

impl Connection {
    /// Connects to a backend listening on `path`, for a device of `num_queues` queues.
    pub fn connect(path: &Path, num_queues: usize) -> Result<Self, FrontendError> {
        let frontend = Frontend::connect(path, num_queues as u64).map_err(|source| {
            FrontendError::Connect {
                path: path.display().to_string(),
                source,
            }
        })?;
        Self::handshake(frontend, num_queues)
    }

    /// Uses an already connected stream (e.g. one end of a socketpair whose other end a backend
    /// thread of this process serves).
    pub fn from_stream(stream: UnixStream, num_queues: usize) -> Result<Self, FrontendError> {
        Self::handshake(Frontend::from_stream(stream, num_queues as u64), num_queues)
    }

    /// SET_OWNER and the feature and protocol-feature handshake.
    fn handshake(mut frontend: Frontend, num_queues: usize) -> Result<Self, FrontendError> {
        frontend.set_owner().map_err(proto("SET_OWNER"))?;
        let features = frontend.get_features().map_err(proto("GET_FEATURES"))?;
        let mut max_queues = num_queues;
        if features & (1 << VIRTIO_F_VERSION_1) == 0 {
            return Err(FrontendError::NotVersion1(features));
        }
        let mut protocol = VhostUserProtocolFeatures::empty();
        if features & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
            // Ack the vhost-user bit before using protocol features, as the spec requires (and
            // as strict backends check).
            frontend
                .set_features(VHOST_USER_F_PROTOCOL_FEATURES)
                .map_err(proto("SET_FEATURES"))?;
            let offered = frontend
                .get_protocol_features()
                .map_err(proto("GET_PROTOCOL_FEATURES"))?;
            protocol = offered
                & (VhostUserProtocolFeatures::CONFIG
                    | VhostUserProtocolFeatures::REPLY_ACK
                    | VhostUserProtocolFeatures::MQ);
            frontend
                .set_protocol_features(protocol)
                .map_err(proto("SET_PROTOCOL_FEATURES"))?;
            if protocol.contains(VhostUserProtocolFeatures::MQ) {
                let n = frontend.get_queue_num().map_err(proto("GET_QUEUE_NUM"))?;
                max_queues = usize::try_from(n).unwrap_or(usize::MAX);
            }
        }
        Ok(Connection {
            frontend,
            device_features: features & !VHOST_USER_F_PROTOCOL_FEATURES,
            protocol,
            max_queues,
            num_queues,
            active: false,
        })
    }

    /// The virtio features the backend offers (the vhost-user bit removed).
    pub fn device_features(&self) -> u64 {
        self.device_features
    }

    /// How many queues the backend serves (`GET_QUEUE_NUM`, when it speaks the MQ protocol
    /// feature; otherwise the count the device was connected for).
    pub fn max_queues(&self) -> usize {
        self.max_queues
    }

    /// Whether rings can be switched on and off (`SET_VRING_ENABLE`, which needs protocol
    /// features): without it a backend runs every ring it is given.
    pub fn can_disable_rings(&self) -> bool {
        !self.protocol.is_empty()
    }

    /// Enables the first `enabled` rings handed over and disables the others.
    pub fn set_enabled(&mut self, enabled: usize) -> Result<(), FrontendError> {
        if self.protocol.is_empty() {
            return Ok(());
        }
        for index in 0..self.num_queues {
            self.frontend
                .set_vring_enable(index, index < enabled)
                .map_err(proto("SET_VRING_ENABLE"))?;
        }
        Ok(())
    }

    /// The backend's config space (its first `len` bytes), when it serves one
    /// (VHOST_USER_PROTOCOL_F_CONFIG); `None` when the frontend must supply it.
    pub fn backend_config(&mut self, len: usize) -> Result<Option<Vec<u8>>, FrontendError> {
        if !self.protocol.contains(VhostUserProtocolFeatures::CONFIG) {
            return Ok(None);
        }
        let zeros = vec![0u8; len];
        let (_, data) = self
            .frontend
            .get_config(0, len as u32, VhostUserConfigFlags::empty(), &zeros)
            .map_err(proto("GET_CONFIG"))?;
        Ok(Some(data))
    }

    /// Whether the backend currently runs the queues.
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// Hands the datapath to the backend: features the guest acked, guest memory, and the
    /// queues it serves, the first `enabled` of them enabled. Called when the guest sets
    /// DRIVER_OK.
    pub fn activate(
        &mut self,
        acked_features: u64,
        mem: &GuestMemoryMmap,
        queues: &[QueueSetup],
        enabled: usize,
    ) -> Result<(), FrontendError> {
        self.activate_at(acked_features, mem, queues, &vec![0; queues.len()], enabled)
    }

    /// As [`Connection::activate`], each queue starting at `bases[i]` (SET_VRING_BASE): a
    /// backend that takes over rings another one served resumes where the used rings are.
    pub fn activate_at(
        &mut self,
        acked_features: u64,
        mem: &GuestMemoryMmap,
        queues: &[QueueSetup],
        bases: &[u16],
        enabled: usize,
    ) -> Result<(), FrontendError> {
        let protocol_bit = if self.protocol.is_empty() {
            0
        } else {
            VHOST_USER_F_PROTOCOL_FEATURES
        };
        self.frontend
            .set_features((acked_features & self.device_features) | protocol_bit)
            .map_err(proto("SET_FEATURES"))?;

        let mut regions = Vec::new();
        for region in mem.iter() {
            let info = VhostUserMemoryRegionInfo::from_guest_region(region)
                .map_err(|_| FrontendError::AnonymousMemory(region.start_addr().0))?;
            regions.push(info);
        }
        self.frontend
            .set_mem_table(&regions)
            .map_err(proto("SET_MEM_TABLE"))?;

        for (index, q) in queues.iter().enumerate() {
            if q.size == 0 || q.size > MAX_QUEUE_SIZE || !q.size.is_power_of_two() {
                return Err(FrontendError::QueueSize {
                    index,
                    size: q.size,
                });
            }
            let host = |addr: GuestAddress| {
                mem.get_host_address(addr).map(|p| p as u64).map_err(|_| {
                    FrontendError::RingAddress {
                        index,
                        addr: addr.0,
                    }
                })
            };
            let config = VringConfigData {
                queue_max_size: q.size,
                queue_size: q.size,
                flags: 0,
                desc_table_addr: host(q.desc_table)?,
                used_ring_addr: host(q.used_ring)?,
                avail_ring_addr: host(q.avail_ring)?,
                log_addr: None,
            };
            self.frontend
                .set_vring_num(index, q.size)
                .map_err(proto("SET_VRING_NUM"))?;
            self.frontend
                .set_vring_addr(index, &config)
                .map_err(proto("SET_VRING_ADDR"))?;
            self.frontend
                .set_vring_base(index, bases.get(index).copied().unwrap_or(0))
                .map_err(proto("SET_VRING_BASE"))?;
            self.frontend
                .set_vring_call(index, q.call)
                .map_err(proto("SET_VRING_CALL"))?;
            self.frontend
                .set_vring_kick(index, q.kick)
                .map_err(proto("SET_VRING_KICK"))?;
        }
        self.num_queues = queues.len();
        self.set_enabled(enabled)?;
        self.active = true;
        Ok(())
    }

    /// Stops the queues (the guest reset the device): GET_VRING_BASE stops each ring in the
    /// backend, which then drops its mapping state until the next activation.
    pub fn reset(&mut self) -> Result<(), FrontendError> {
        if !self.active {
            return Ok(());
        }
        self.active = false;
        for index in 0..self.num_queues {
            if !self.protocol.is_empty() {
                self.frontend
                    .set_vring_enable(index, false)
                    .map_err(proto("SET_VRING_ENABLE"))?;
            }
            self.frontend
                .get_vring_base(index)
                .map_err(proto("GET_VRING_BASE"))?;
        }
        Ok(())
    }
}

/// The device-specific part of a vhost-user device: what the guest sees besides the queues'
/// datapath, which the backend serves.
pub trait DeviceKind: Send {
    /// The virtio device type.
    const DEVICE_TYPE: u16;
    /// A short name for log lines ("net", "fs").
    const NAME: &'static str;
    /// Largest size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// The device config space; reads past it are zero.
    fn config(&self) -> &[u8];
    /// The features to offer the guest, out of those the backend offers.
    fn features(&self, backend: u64) -> u64 {
        backend
    }
    /// Where the config space holds a link status (a little-endian u16 whose bit 0 is "link
    /// up", as virtio-net's `status`), for a device that can lose its backend and get it back.
    fn link_status_offset(&self) -> Option<usize> {
        None
    }
    /// How many of the queues, from the first, the backend serves; the others are the
    /// frontend's own (virtio-net's control queue), run by [`DeviceKind::start_own`].
    fn backend_queues(&self) -> usize {
        self.queue_max_sizes().len()
    }
    /// How many of the backend's rings run from activation on (virtio-net with several queue
    /// pairs: the first pair, until the guest asks for more).
    fn enabled_at_start(&self) -> usize {
        self.backend_queues()
    }
    /// Starts serving the frontend's own queues (after the backend took its rings); `rings`
    /// switches the backend's rings on and off for the guest.
    fn start_own(
        &mut self,
        queues: &[QueueSetup],
        mem: &GuestMemoryMmap,
        rings: RingSwitch,
    ) -> Result<(), FrontendError> {
        let _ = (queues, mem, rings);
        Ok(())
    }
    /// Stops serving the frontend's own queues (the guest reset the device).
    fn stop_own(&mut self) {}
}

/// Switches the backend's rings on and off on the guest's behalf (virtio-net's
/// `VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET`), also across a reconnection to a new backend.
#[derive(Clone)]
pub struct RingSwitch {
    shared: Arc<Shared>,
}

impl RingSwitch {
    /// Enables the first `rings` of the backend's rings and disables the rest.
    pub fn enable_first(&self, rings: usize) -> Result<(), FrontendError> {
        self.shared.enabled.store(rings, Ordering::SeqCst);
        let mut conn = lock(&self.shared.conn);
        if conn.is_active() {
            conn.set_enabled(rings)?;
        }
        Ok(())
    }
}

/// A queue as the guest set it up, kept to hand to a backend that replaces the first one.
struct SavedQueue {
    size: u16,
    desc_table: GuestAddress,
    avail_ring: GuestAddress,
    used_ring: GuestAddress,
    kick: EventFd,
    call: EventFd,
}

/// What the guest activated: enough to resume on a new backend.
struct Activation {
    acked: u64,
    /// The features of the backend that was activated: a replacement must offer those the
    /// guest uses.
    backend_features: u64,
    queues: Vec<SavedQueue>,
}

/// State shared by the device and its reconnection monitor. Lock order: `activation`, then
/// `conn`.
struct Shared {
    conn: Mutex<Connection>,
    activation: Mutex<Option<Activation>>,
    link_up: AtomicBool,
    /// The link as the host's administrator set it (the control socket's `net link`): the
    /// guest sees the link up only when this and `link_up` both are.
    admin_up: AtomicBool,
    /// Written when the link goes down or up: the transport interrupts the guest.
    config_evt: EventFd,
    stop: AtomicBool,
    /// How many of the backend's rings the guest runs now (see [`RingSwitch`]).
    enabled: AtomicUsize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A vhost-user backend as a virtio device: the transport drives it, the [`DeviceKind`] says
/// what kind of device it is, and this supplies the guest memory the backend must map at
/// activation.
pub struct VhostUserDevice<K> {
    shared: Arc<Shared>,
    kind: K,
    mem: GuestMemoryMmap,
    /// The reconnection monitor, for a device that survives its backend.
    monitor: Option<JoinHandle<()>>,
}

impl<K: DeviceKind> VhostUserDevice<K> {
    /// `mem` must be the VM's memfd-backed memory (the backend maps the same pages).
    pub fn new(conn: Connection, kind: K, mem: GuestMemoryMmap) -> Result<Self, FrontendError> {
        Ok(Self {
            shared: Arc::new(Shared {
                conn: Mutex::new(conn),
                activation: Mutex::new(None),
                link_up: AtomicBool::new(true),
                admin_up: AtomicBool::new(true),
                config_evt: EventFd::new(EFD_NONBLOCK).map_err(FrontendError::EventFd)?,
                stop: AtomicBool::new(false),
                enabled: AtomicUsize::new(0),
            }),
            kind,
            mem,
            monitor: None,
        })
    }

    /// Whether the backend currently runs the queues.
    pub fn is_active(&self) -> bool {
        lock(&self.shared.conn).is_active()
    }

    /// The device-specific part.
    pub fn kind(&self) -> &K {
        &self.kind
    }

    /// Whether the guest sees the link up: the backend is there and the host has not set the
    /// link down.
    pub fn link_up(&self) -> bool {
        self.shared.link_up.load(Ordering::SeqCst) && self.shared.admin_up.load(Ordering::SeqCst)
    }

    /// A handle that sets the link down and up while the VM runs (the control socket's
    /// `net link`). Only a device whose kind reports a link status has one.
    pub fn link_control(&self) -> Option<LinkControl> {
        self.kind.link_status_offset().map(|_| LinkControl {
            shared: self.shared.clone(),
        })
    }

    /// Makes the device survive its backend: when the connection hangs up, the link goes
    /// down and a monitor thread connects to `path` again until a backend answers, then
    /// resumes the rings there and brings the link up.
    pub fn reconnecting(mut self, path: PathBuf) -> Self {
        let shared = self.shared.clone();
        let mem = self.mem.clone();
        let num_queues = self.kind.backend_queues();
        let spawned = std::thread::Builder::new()
            .name(format!("vu-{}-monitor", K::NAME))
            .spawn(move || monitor(&shared, &path, &mem, num_queues, K::NAME));
        match spawned {
            Ok(h) => self.monitor = Some(h),
            Err(e) => log::warn!(
                "vhost-user {}: no reconnection monitor ({e}): the device will not survive \
                 its backend",
                K::NAME
            ),
        }
        self
    }
}

impl<K> Drop for VhostUserDevice<K> {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.monitor.take() {
            let _ = h.join();
        }
    }
}

/// How often the monitor looks at the connection and retries a lost backend (at most).
const MONITOR_POLL: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(1);

/// Whether the backend's end of `conn` hung up within `timeout`.
fn hung_up(conn: &Mutex<Connection>, timeout: Duration) -> bool {
    let fd = lock(conn).frontend.as_raw_fd();
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one live pollfd for the duration of the call. The descriptor stays open: only
    // this thread replaces the connection (and with it the socket).
    let n = unsafe { libc::poll(&mut p, 1, timeout.as_millis() as libc::c_int) };
    n > 0 && p.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
}

/// Sets a device's link down or up on the host's behalf; the guest gets a configuration
/// interrupt and sees the change in the config space's status.
#[derive(Clone)]
pub struct LinkControl {
    shared: Arc<Shared>,
}

impl LinkControl {
    /// Sets the administrative link state; reports whether it changed.
    pub fn set(&self, up: bool) -> bool {
        let was = self.shared.admin_up.swap(up, Ordering::SeqCst);
        if was != up {
            if let Err(e) = self.shared.config_evt.write(1) {
                log::warn!("vhost-user: cannot report the link change: {e}");
            }
        }
        was != up
    }

    /// The administrative state (what [`LinkControl::set`] last set).
    pub fn admin_up(&self) -> bool {
        self.shared.admin_up.load(Ordering::SeqCst)
    }

    /// Whether the backend is there (a lost one is being reconnected while this is false).
    pub fn backend_up(&self) -> bool {
        self.shared.link_up.load(Ordering::SeqCst)
    }
}

fn set_link(shared: &Shared, up: bool) {
    shared.link_up.store(up, Ordering::SeqCst);
    if let Err(e) = shared.config_evt.write(1) {
        log::warn!("vhost-user: cannot report the link change: {e}");
    }
}

/// The reconnection monitor's loop (see [`VhostUserDevice::reconnecting`]).
fn monitor(shared: &Shared, path: &Path, mem: &GuestMemoryMmap, num_queues: usize, name: &str) {
    while !shared.stop.load(Ordering::SeqCst) {
        if !hung_up(&shared.conn, MONITOR_POLL) {
            continue;
        }
        log::warn!(
            "vhost-user {name}: the backend at {} went away: link down, reconnecting",
            path.display()
        );
        set_link(shared, false);
        let mut delay = Duration::from_millis(50);
        let mut tries = 0u32;
        while !shared.stop.load(Ordering::SeqCst) {
            std::thread::sleep(delay);
            delay = (delay * 2).min(RETRY_MAX);
            tries += 1;
            match resume(shared, path, mem, num_queues) {
                Ok(()) => {
                    log::warn!(
                        "vhost-user {name}: reconnected to {} after {tries} tries: link up",
                        path.display()
                    );
                    set_link(shared, true);
                    break;
                }
                Err(e) if tries % 30 == 1 => {
                    log::info!("vhost-user {name}: {} not back yet: {e}", path.display())
                }
                Err(_) => {}
            }
        }
    }
}

/// Connects to `path` and, if the guest had activated the device, hands the new backend the
/// memory and the rings, each resumed at the used ring's index; then makes it the device's
/// connection.
fn resume(
    shared: &Shared,
    path: &Path,
    mem: &GuestMemoryMmap,
    num_queues: usize,
) -> Result<(), FrontendError> {
    let mut conn = Connection::connect(path, num_queues)?;
    let activation = lock(&shared.activation);
    if let Some(a) = activation.as_ref() {
        let lacking = a.acked & a.backend_features & !conn.device_features();
        if lacking != 0 {
            return Err(FrontendError::LacksFeatures(lacking));
        }
        if conn.max_queues() < a.queues.len() {
            return Err(FrontendError::TooFewQueues {
                have: conn.max_queues(),
                want: a.queues.len(),
            });
        }
        let setups: Vec<QueueSetup> = a
            .queues
            .iter()
            .map(|q| QueueSetup {
                size: q.size,
                desc_table: q.desc_table,
                avail_ring: q.avail_ring,
                used_ring: q.used_ring,
                kick: &q.kick,
                call: &q.call,
            })
            .collect();
        // used.idx follows the flags word; a ring the guest moved outside memory reads as 0.
        let bases: Vec<u16> = a
            .queues
            .iter()
            .map(|q| {
                q.used_ring
                    .checked_add(2)
                    .and_then(|at| mem.read_obj::<u16>(at).ok())
                    .unwrap_or(0)
            })
            .collect();
        let enabled = shared.enabled.load(Ordering::SeqCst);
        conn.activate_at(a.acked, mem, &setups, &bases, enabled)?;
        // The rings may hold work the old backend never saw: kick them.
        for q in &a.queues {
            let _ = q.kick.write(1);
        }
    }
    *lock(&shared.conn) = conn;
    Ok(())
}

/// Copies `config[offset..]` into `data`, zero past its end (a guest may probe anywhere).
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = offset
            .checked_add(i as u64)
            .and_then(|o| usize::try_from(o).ok())
            .and_then(|o| config.get(o).copied())
            .unwrap_or(0);
    }
}

impl<K: DeviceKind> VirtioDevice for VhostUserDevice<K> {
    fn device_type(&self) -> u16 {
        K::DEVICE_TYPE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        self.kind.queue_max_sizes()
    }

    fn features(&self) -> u64 {
        self.kind
            .features(lock(&self.shared.conn).device_features())
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        match self.kind.link_status_offset() {
            Some(at) => {
                let mut config = self.kind.config().to_vec();
                if let Some(b) = config.get_mut(at) {
                    *b = (*b & !1) | u8::from(self.link_up());
                }
                read_config_bytes(&config, offset, data)
            }
            _ => read_config_bytes(self.kind.config(), offset, data),
        }
    }

    fn activate(&mut self, acked: u64, queues: &[QueueSetup]) -> Result<(), ActivateError> {
        let offered = self.features();
        let (theirs, ours) = queues.split_at(self.kind.backend_queues().min(queues.len()));
        let mut activation = lock(&self.shared.activation);
        let mut conn = lock(&self.shared.conn);
        let enabled = self.kind.enabled_at_start();
        self.shared.enabled.store(enabled, Ordering::SeqCst);
        conn.activate(acked & offered, &self.mem, theirs, enabled)?;
        drop(conn);
        self.kind.start_own(
            ours,
            &self.mem,
            RingSwitch {
                shared: self.shared.clone(),
            },
        )?;
        if self.monitor.is_some() {
            let queues = theirs
                .iter()
                .map(|q| {
                    Ok(SavedQueue {
                        size: q.size,
                        desc_table: q.desc_table,
                        avail_ring: q.avail_ring,
                        used_ring: q.used_ring,
                        kick: q.kick.try_clone()?,
                        call: q.call.try_clone()?,
                    })
                })
                .collect::<std::io::Result<Vec<_>>>()
                .map_err(FrontendError::EventFd)?;
            *activation = Some(Activation {
                acked: acked & offered,
                backend_features: lock(&self.shared.conn).device_features(),
                queues,
            });
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.kind.stop_own();
        let mut activation = lock(&self.shared.activation);
        *activation = None;
        if let Err(e) = lock(&self.shared.conn).reset() {
            log::warn!("vhost-user {}: reset: {e}", K::NAME);
        }
    }

    fn config_events(&self) -> Option<&EventFd> {
        self.kind
            .link_status_offset()
            .map(|_| &self.shared.config_evt)
    }
}
