//! The virtio-pci modern transport (virtio 1.x §4.1): what a guest's `virtio_pci` driver sees of
//! a device, in PCI configuration space and in one memory BAR.
//!
//! The datapath is not here. At DRIVER_OK the transport hands the device (a [`VirtioDevice`],
//! in practice the vhost-user frontend) the queues' addresses, one *kick* eventfd per queue
//! (KVM signals it through an ioeventfd on the queue's notify address) and one *call* eventfd per
//! queue (the irqfd of the queue's MSI-X vector). From then on guest and backend talk through
//! guest memory and those eventfds; a vCPU only exits here for configuration.
//!
//! Layout of BAR 0 (64-bit, non-prefetchable, [`BAR_SIZE`] bytes):
//!
//! | offset   | structure                                    |
//! |----------|----------------------------------------------|
//! | `0x0000` | common configuration (`virtio_pci_common_cfg`) |
//! | `0x1000` | ISR status                                   |
//! | `0x2000` | device-specific configuration                |
//! | `0x3000` | notifications: queue `n` at `n * 4`          |
//! | `0x4000` | MSI-X table                                  |
//! | `0x5000` | MSI-X pending-bit array                      |
//!
//! Interrupts are MSI-X only: no INTx pin is advertised, so a guest booted with `pci=nomsi`
//! gets no interrupts from this device (Linux's driver polls nothing; it would stall). Every
//! kernel that can drive virtio-pci modern devices can use MSI-X.
//!
//! The BAR's address is assigned by the VMM and fixed: a guest may size it (write all ones,
//! read the mask back) but moving it elsewhere is logged and ignored, because the ioeventfds
//! and the MMIO mapping are set up once. Linux keeps firmware-assigned BARs, so it never tries.
//!
//! Everything here is driven by the guest: any access of any size at any offset is answered
//! without panicking, and queue parameters are validated when the device is activated.

pub mod msix;

use std::sync::Arc;

use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

pub use msix::{MsiMessage, MsiRouter, MsixTable};

use crate::pci::{ConfigSpace, PciDevice};
use crate::BusDevice;

/// PCI vendor ID of virtio devices.
pub const VIRTIO_VENDOR_ID: u16 = 0x1af4;
/// Modern virtio devices are 0x1040 + the virtio device type.
pub const VIRTIO_DEVICE_ID_BASE: u16 = 0x1040;
/// Size of BAR 0.
pub const BAR_SIZE: u64 = 0x8000;
/// Offsets of the structures in BAR 0.
pub const COMMON_OFFSET: u64 = 0x0000;
/// ISR status byte.
pub const ISR_OFFSET: u64 = 0x1000;
/// Device-specific configuration.
pub const DEVICE_CFG_OFFSET: u64 = 0x2000;
/// Notification area.
pub const NOTIFY_OFFSET: u64 = 0x3000;
/// MSI-X table.
pub const MSIX_TABLE_OFFSET: u64 = 0x4000;
/// MSI-X pending-bit array.
pub const MSIX_PBA_OFFSET: u64 = 0x5000;
/// Bytes between two queues' notify addresses (`notify_off_multiplier`).
pub const NOTIFY_MULTIPLIER: u32 = 4;
/// Size of each structure's window.
const REGION: u64 = 0x1000;
/// `virtio_pci_common_cfg` is 0x38 bytes.
const COMMON_LEN: u32 = 0x38;
/// "No MSI-X vector" in `msix_config` / `queue_msix_vector`.
pub const NO_VECTOR: u16 = 0xffff;
/// Most queues a device may have: one MSI-X vector each plus one for configuration must fit the
/// table's window (256 entries of 16 bytes).
pub const MAX_QUEUES: usize = (REGION / msix::ENTRY_SIZE) as usize - 1;

/// Device status bits (virtio 1.x §2.1).
pub mod status {
    /// The guest noticed the device.
    pub const ACKNOWLEDGE: u8 = 1;
    /// The guest has a driver for it.
    pub const DRIVER: u8 = 2;
    /// The driver is ready: the device may run.
    pub const DRIVER_OK: u8 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u8 = 8;
    /// The device hit an error it cannot recover from without a reset.
    pub const DEVICE_NEEDS_RESET: u8 = 0x40;
    /// The driver gave up on the device.
    pub const FAILED: u8 = 0x80;
}

/// `VIRTIO_F_VERSION_1`: a modern device cannot work without it.
const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Why a queue the VMM serves itself (virtio-blk's, virtio-net's control queue) could not be
/// set up from what the driver programmed.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// virtio-queue refused the size or an address (not a power of two, misaligned).
    #[error("queue setup: {0:?}")]
    Queue(virtio_queue::Error),
    /// A ring lies outside guest memory.
    #[error("the rings are not in guest memory")]
    OutsideMemory,
}

/// The split virtqueue a driver programmed, `size` descriptors (at most `max`) with its
/// descriptor table, available and used rings at `rings`, checked against guest memory and
/// ready to serve: for a device that serves its queue in the VMM.
pub fn ready_queue(
    mem: &vm_memory::GuestMemoryMmap,
    max: u16,
    size: u16,
    [desc_table, avail_ring, used_ring]: [GuestAddress; 3],
) -> Result<virtio_queue::Queue, QueueError> {
    use virtio_queue::QueueT;
    let mut queue = virtio_queue::Queue::new(max).map_err(QueueError::Queue)?;
    queue.try_set_size(size).map_err(QueueError::Queue)?;
    queue
        .try_set_desc_table_address(desc_table)
        .map_err(QueueError::Queue)?;
    queue
        .try_set_avail_ring_address(avail_ring)
        .map_err(QueueError::Queue)?;
    queue
        .try_set_used_ring_address(used_ring)
        .map_err(QueueError::Queue)?;
    queue.set_ready(true);
    if !queue.is_valid(mem) {
        return Err(QueueError::OutsideMemory);
    }
    Ok(queue)
}

/// Waits until the guest kicks (`kick` readable: Ok(true), the kick consumed) or `stop` is
/// signalled (Ok(false)); an interrupted wait waits again. For the thread of a queue the VMM
/// serves itself.
pub fn wait_kick(kick: &EventFd, stop: &EventFd) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    let mut fds = [kick.as_raw_fd(), stop.as_raw_fd()].map(|fd| libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    });
    loop {
        // SAFETY: two live pollfds in an array of that length; the eventfds outlive the call.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if fds[1].revents != 0 {
            return Ok(false);
        }
        if fds[0].revents != 0 {
            let _ = kick.read();
            return Ok(true);
        }
    }
}

impl QueueSetup<'_> {
    /// Where the driver put the descriptor table, available and used rings.
    pub fn rings(&self) -> [GuestAddress; 3] {
        [self.desc_table, self.avail_ring, self.used_ring]
    }
}

/// What the guest programmed for one queue, handed to the device at activation.
pub struct QueueSetup<'a> {
    /// Number of descriptors (a power of two, at most the device's maximum).
    pub size: u16,
    /// Descriptor table.
    pub desc_table: GuestAddress,
    /// Available (driver) ring.
    pub avail_ring: GuestAddress,
    /// Used (device) ring.
    pub used_ring: GuestAddress,
    /// Signalled (by KVM, through an ioeventfd) when the guest notifies the queue.
    pub kick: &'a EventFd,
    /// Signalled by the device to interrupt the guest (the irqfd of the queue's vector).
    pub call: &'a EventFd,
}

/// Why a device could not be started; the transport logs it and sets DEVICE_NEEDS_RESET, so the
/// guest sees a broken device rather than a hung one.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver set DRIVER_OK with a queue it never enabled.
    #[error("queue {0} is not enabled")]
    QueueNotEnabled(usize),
    /// The driver chose a size the queue cannot have.
    #[error("queue {index}: size {size} is not a power of two in 1..={max}")]
    QueueSize {
        /// The queue.
        index: usize,
        /// The size the driver wrote.
        size: u16,
        /// The device's largest size for it.
        max: u16,
    },
    /// A vhost-user frontend (net, fs): the backend failed or refused the rings.
    #[error(transparent)]
    VhostUser(#[from] crate::vhost_user::FrontendError),
    /// The virtio-blk device could not start its worker.
    #[error(transparent)]
    Blk(#[from] crate::virtio_blk::BlkError),
    /// A device from outside this crate (an embedder's own [`VirtioDevice`]), with its own
    /// error.
    #[error(transparent)]
    External(Box<dyn std::error::Error + Send + Sync>),
}

/// A virtio device behind the transport.
pub trait VirtioDevice: Send {
    /// The virtio device type (1 = net).
    fn device_type(&self) -> u16;
    /// Largest size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits the device offers.
    fn features(&self) -> u64;
    /// Reads the device-specific configuration at `offset` (any offset: out of range is zero).
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device-specific configuration (ignored by devices with a read-only one).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Starts the datapath with the features the guest accepted and every queue.
    fn activate(&mut self, acked_features: u64, queues: &[QueueSetup])
        -> Result<(), ActivateError>;
    /// Stops the datapath (the guest reset the device).
    fn reset(&mut self);
    /// Readable when the device's configuration changed on its own (a link going down or up):
    /// the VMM then calls [`VirtioPciDevice::config_changed`], which interrupts the guest.
    fn config_events(&self) -> Option<&EventFd> {
        None
    }
}

/// Errors building the transport.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The device has no queues or more than the notify area holds.
    #[error("a virtio device needs 1..={MAX_QUEUES} queues, this one has {0}")]
    QueueCount(usize),
    /// The number of GSIs given does not match the vectors needed (queues + 1).
    #[error("{queues} queues need {} MSI-X vectors, {gsis} GSIs were given", queues + 1)]
    VectorCount {
        /// Queues of the device.
        queues: usize,
        /// GSIs handed over.
        gsis: usize,
    },
    /// The BAR address is not aligned to its size.
    #[error("BAR address {0:#x} is not aligned to {BAR_SIZE:#x}")]
    BarAlignment(u64),
    /// Creating an eventfd failed.
    #[error("cannot create an eventfd: {0}")]
    EventFd(#[source] std::io::Error),
}

#[derive(Default)]
struct Queue {
    max: u16,
    size: u16,
    vector: u16,
    enabled: bool,
    desc: u64,
    driver: u64,
    device: u64,
}

impl Queue {
    fn new(max: u16) -> Self {
        Self {
            max,
            size: max,
            vector: NO_VECTOR,
            ..Default::default()
        }
    }
}

/// Configuration-space registers (32-bit index) of the header and our capabilities.
mod reg {
    pub const COMMAND: usize = 1;
    pub const BAR0: usize = 4;
    pub const BAR1: usize = 5;
    pub const SUBSYSTEM: usize = 0x0b;
    pub const CAP_PTR: usize = 0x0d;
    pub const INTERRUPT: usize = 0x0f;
    /// First capability at 0x40.
    pub const CAPS: usize = 0x10;
}
/// Register index of the MSI-X capability's first word (id, next, message control).
const MSIX_CAP_REG: usize = reg::CAPS + 17;
/// PCI command register: memory space, bus master, INTx disable.
const COMMAND_WRITABLE: u32 = 0x0406;
const COMMAND_MEMORY: u32 = 0x2;
/// Status register bit: capability list present.
const STATUS_CAP_LIST: u32 = 1 << 20;

/// A virtio device on the PCI bus: its configuration space ([`PciDevice`]) and BAR 0
/// ([`BusDevice`], to be mapped at [`VirtioPciDevice::bar_address`]).
pub struct VirtioPciDevice {
    config: ConfigSpace,
    bar: u64,
    dev: Box<dyn VirtioDevice>,
    msix: MsixTable,
    queues: Vec<Queue>,
    kicks: Vec<EventFd>,
    /// The call eventfd of a queue without an MSI-X vector: nobody listens.
    no_vector_call: EventFd,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    msix_config: u16,
    status: u8,
    config_generation: u8,
    queue_select: u16,
    warned_relocation: bool,
}

impl VirtioPciDevice {
    /// Wraps `dev`, with BAR 0 at `bar` and MSI-X vector `i` on GSI `gsis[i]` (one vector per
    /// queue plus one for configuration changes).
    pub fn new(
        dev: Box<dyn VirtioDevice>,
        bar: u64,
        gsis: &[u32],
        router: Arc<dyn MsiRouter>,
    ) -> Result<Self, Error> {
        let maxes = dev.queue_max_sizes().to_vec();
        if maxes.is_empty() || maxes.len() > MAX_QUEUES {
            return Err(Error::QueueCount(maxes.len()));
        }
        if gsis.len() != maxes.len() + 1 {
            return Err(Error::VectorCount {
                queues: maxes.len(),
                gsis: gsis.len(),
            });
        }
        if bar % BAR_SIZE != 0 {
            return Err(Error::BarAlignment(bar));
        }
        let msix = MsixTable::new(gsis, router).map_err(Error::EventFd)?;
        let kicks = maxes
            .iter()
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<Result<Vec<_>, _>>()
            .map_err(Error::EventFd)?;
        let config = Self::config_space(dev.device_type(), bar, maxes.len(), msix.len());
        Ok(Self {
            config,
            bar,
            dev,
            msix,
            queues: maxes.into_iter().map(Queue::new).collect(),
            kicks,
            no_vector_call: EventFd::new(EFD_NONBLOCK).map_err(Error::EventFd)?,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            msix_config: NO_VECTOR,
            status: 0,
            config_generation: 0,
            queue_select: 0,
            warned_relocation: false,
        })
    }

    /// The type-0 header and the capability chain: common, notify, ISR, device (vendor
    /// capabilities 0x09) and MSI-X (0x11).
    fn config_space(device_type: u16, bar: u64, queues: usize, vectors: usize) -> ConfigSpace {
        let mut c = ConfigSpace::new(
            VIRTIO_VENDOR_ID,
            VIRTIO_DEVICE_ID_BASE + device_type,
            class_of(device_type),
            0,
            0,
        );
        c.set(reg::COMMAND, STATUS_CAP_LIST, COMMAND_WRITABLE);
        // Revision 1: a modern-only device.
        let class = c.read(2);
        c.set(2, class | 1, 0);
        c.set(reg::BAR0, (bar as u32) | 0x4, !(BAR_SIZE as u32 - 1));
        c.set(reg::BAR1, (bar >> 32) as u32, 0xffff_ffff);
        c.set(
            reg::SUBSYSTEM,
            u32::from(VIRTIO_VENDOR_ID) | (0x1100 << 16),
            0,
        );
        c.set(reg::CAP_PTR, (reg::CAPS * 4) as u32, 0);
        // Interrupt line is scratch space the guest may write; no pin.
        c.set(reg::INTERRUPT, 0, 0xff);

        // (cfg_type, offset, length, capability length in registers)
        let caps: [(u32, u64, u32, usize); 4] = [
            (1, COMMON_OFFSET, COMMON_LEN, 4),
            (2, NOTIFY_OFFSET, (queues as u32) * NOTIFY_MULTIPLIER, 5),
            (3, ISR_OFFSET, 1, 4),
            (4, DEVICE_CFG_OFFSET, REGION as u32, 4),
        ];
        let mut r = reg::CAPS;
        for (cfg_type, offset, length, regs) in caps {
            let next = (r + regs) * 4;
            let cap_len = (regs * 4) as u32;
            c.set(
                r,
                0x09 | ((next as u32) << 8) | (cap_len << 16) | (cfg_type << 24),
                0,
            );
            c.set(r + 1, 0, 0); // BAR 0
            c.set(r + 2, offset as u32, 0);
            c.set(r + 3, length, 0);
            if regs == 5 {
                c.set(r + 4, NOTIFY_MULTIPLIER, 0);
            }
            r += regs;
        }
        debug_assert_eq!(r, MSIX_CAP_REG);
        c.set(
            MSIX_CAP_REG,
            0x11 | ((vectors as u32 - 1) << 16),
            u32::from(msix::CTRL_ENABLE | msix::CTRL_FUNCTION_MASK) << 16,
        );
        c.set(MSIX_CAP_REG + 1, MSIX_TABLE_OFFSET as u32, 0);
        c.set(MSIX_CAP_REG + 2, MSIX_PBA_OFFSET as u32, 0);
        c
    }

    /// Guest-physical address of BAR 0.
    pub fn bar_address(&self) -> u64 {
        self.bar
    }

    /// (offset in BAR 0, eventfd) of each queue's notification, for the VMM to register as
    /// ioeventfds. Writes that reach [`BusDevice::write`] instead signal the same eventfd.
    pub fn notifiers(&self) -> impl Iterator<Item = (u64, &EventFd)> {
        self.kicks
            .iter()
            .enumerate()
            .map(|(i, e)| (NOTIFY_OFFSET + i as u64 * u64::from(NOTIFY_MULTIPLIER), e))
    }

    /// The guest-visible device status.
    pub fn device_status(&self) -> u8 {
        self.status
    }

    /// The device's "my configuration changed" eventfd, if it has one (see
    /// [`VirtioDevice::config_events`]).
    pub fn config_events(&self) -> Option<&EventFd> {
        self.dev.config_events()
    }

    /// The device's configuration changed: a new `config_generation` (so a driver reading
    /// across the change retries) and, once the driver runs, an interrupt on the
    /// configuration vector it chose. Without a vector the driver sees it at its next read.
    pub fn config_changed(&mut self) {
        self.config_generation = self.config_generation.wrapping_add(1);
        if self.status & status::DRIVER_OK == 0 || self.msix_config == NO_VECTOR {
            return;
        }
        if let Some(irq) = self.msix.irqfd(self.msix_config) {
            if let Err(e) = irq.write(1) {
                log::warn!("virtio-pci: cannot signal the configuration vector: {e}");
            }
        }
    }

    fn memory_enabled(&self) -> bool {
        self.config.read(reg::COMMAND) & COMMAND_MEMORY != 0
    }

    fn selected(&self) -> Option<&Queue> {
        self.queues.get(usize::from(self.queue_select))
    }

    fn common_read(&self, offset: u64, len: usize) -> u64 {
        let q = self.selected();
        let features = self.dev.features();
        match (offset, len) {
            (0x00, 4) => u64::from(self.device_feature_select),
            (0x04, 4) => match self.device_feature_select {
                0 => features & 0xffff_ffff,
                1 => features >> 32,
                _ => 0,
            },
            (0x08, 4) => u64::from(self.driver_feature_select),
            (0x0c, 4) => match self.driver_feature_select {
                0 => self.driver_features & 0xffff_ffff,
                1 => self.driver_features >> 32,
                _ => 0,
            },
            (0x10, 2) => u64::from(self.msix_config),
            (0x12, 2) => self.queues.len() as u64,
            (0x14, 1) => u64::from(self.status),
            (0x15, 1) => u64::from(self.config_generation),
            (0x16, 2) => u64::from(self.queue_select),
            (0x18, 2) => q.map_or(0, |q| u64::from(q.size)),
            (0x1a, 2) => q.map_or(u64::from(NO_VECTOR), |q| u64::from(q.vector)),
            (0x1c, 2) => q.map_or(0, |q| u64::from(q.enabled)),
            // Queue n notifies at n * multiplier.
            (0x1e, 2) => q.map_or(0, |_| u64::from(self.queue_select)),
            (0x20 | 0x28 | 0x30, 8) => q.map_or(0, |q| queue_addr(q, offset)),
            (0x20 | 0x28 | 0x30, 4) => q.map_or(0, |q| queue_addr(q, offset) & 0xffff_ffff),
            (0x24 | 0x2c | 0x34, 4) => q.map_or(0, |q| queue_addr(q, offset - 4) >> 32),
            _ => 0,
        }
    }

    fn common_write(&mut self, offset: u64, len: usize, value: u64) {
        let running = self.status & status::DRIVER_OK != 0;
        let negotiated = self.status & status::FEATURES_OK != 0;
        let vectors = self.msix.len();
        let vector = |v: u64| {
            let v = v as u16;
            if usize::from(v) < vectors {
                v
            } else {
                NO_VECTOR
            }
        };
        match (offset, len) {
            (0x00, 4) => self.device_feature_select = value as u32,
            (0x08, 4) => self.driver_feature_select = value as u32,
            (0x0c, 4) if !negotiated => {
                let (shift, mask) = match self.driver_feature_select {
                    0 => (0, 0xffff_ffffu64),
                    1 => (32, 0xffff_ffff_0000_0000),
                    _ => return,
                };
                // Bits the device does not offer cannot be accepted.
                let v = (value << shift) & mask & self.dev.features();
                self.driver_features = (self.driver_features & !mask) | v;
            }
            (0x10, 2) => self.msix_config = vector(value),
            (0x14, 1) => self.set_status(value as u8),
            (0x16, 2) => self.queue_select = value as u16,
            _ if running => {
                log::debug!("virtio-pci: queue write at {offset:#x} after DRIVER_OK ignored")
            }
            (0x18, 2) => self.with_queue(|q| q.size = value as u16),
            (0x1a, 2) => {
                let v = vector(value);
                self.with_queue(|q| q.vector = v)
            }
            (0x1c, 2) => self.with_queue(|q| q.enabled = value & 1 == 1),
            (0x20 | 0x28 | 0x30, 8) => self.with_queue(|q| set_queue_addr(q, offset, value, !0)),
            (0x20 | 0x28 | 0x30, 4) => {
                self.with_queue(|q| set_queue_addr(q, offset, value, 0xffff_ffff))
            }
            (0x24 | 0x2c | 0x34, 4) => self
                .with_queue(|q| set_queue_addr(q, offset - 4, value << 32, 0xffff_ffff_0000_0000)),
            _ => {}
        }
    }

    fn with_queue(&mut self, f: impl FnOnce(&mut Queue)) {
        if let Some(q) = self.queues.get_mut(usize::from(self.queue_select)) {
            f(q);
        }
    }

    fn set_status(&mut self, value: u8) {
        if value == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        // NEEDS_RESET is the device's to set.
        let mut new = value & !status::DEVICE_NEEDS_RESET;
        let mut needs_reset = old & status::DEVICE_NEEDS_RESET;
        if new & status::FEATURES_OK != 0 && old & status::FEATURES_OK == 0 {
            // Accept the feature set only if it is one we can run: VERSION_1 is mandatory for
            // a modern device. Leaving FEATURES_OK clear is how the spec says "no".
            if self.driver_features & VIRTIO_F_VERSION_1 == 0 {
                log::warn!(
                    "virtio-pci: guest did not accept VIRTIO_F_VERSION_1 (features {:#x})",
                    self.driver_features
                );
                new &= !status::FEATURES_OK;
            }
        }
        if new & status::DRIVER_OK != 0 && old & status::DRIVER_OK == 0 {
            if (old | new) & status::FEATURES_OK == 0 {
                log::warn!("virtio-pci: DRIVER_OK without FEATURES_OK; device not started");
                new &= !status::DRIVER_OK;
                needs_reset = status::DEVICE_NEEDS_RESET;
            } else if let Err(e) = self.activate() {
                log::error!("virtio-pci: cannot start the device: {e}");
                needs_reset = status::DEVICE_NEEDS_RESET;
            }
        }
        // Short of a reset, the driver only ever adds bits.
        self.status = old | new | needs_reset;
    }

    fn activate(&mut self) -> Result<(), ActivateError> {
        let mut setups = Vec::with_capacity(self.queues.len());
        for (i, q) in self.queues.iter().enumerate() {
            if !q.enabled {
                return Err(ActivateError::QueueNotEnabled(i));
            }
            if q.size == 0 || q.size > q.max || !q.size.is_power_of_two() {
                return Err(ActivateError::QueueSize {
                    index: i,
                    size: q.size,
                    max: q.max,
                });
            }
            let call = self.msix.irqfd(q.vector).unwrap_or(&self.no_vector_call);
            setups.push(QueueSetup {
                size: q.size,
                desc_table: GuestAddress(q.desc),
                avail_ring: GuestAddress(q.driver),
                used_ring: GuestAddress(q.device),
                kick: &self.kicks[i],
                call,
            });
        }
        if self.queues.iter().any(|q| q.vector == NO_VECTOR) {
            log::debug!("virtio-pci: a queue has no MSI-X vector; it will not interrupt");
        }
        self.dev.activate(self.driver_features, &setups)
    }

    fn reset(&mut self) {
        if self.status & status::DRIVER_OK != 0 {
            self.dev.reset();
        }
        for q in &mut self.queues {
            *q = Queue::new(q.max);
        }
        for k in &self.kicks {
            // Drain stale kicks so the next activation starts clean.
            let _ = k.read();
        }
        self.driver_features = 0;
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.msix_config = NO_VECTOR;
        self.queue_select = 0;
        self.status = 0;
    }

    fn bar_read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        match offset {
            o if o < COMMON_OFFSET + REGION && data.len() <= 8 => {
                let v = self.common_read(o, data.len()).to_le_bytes();
                data.copy_from_slice(&v[..data.len()]);
            }
            o if o < COMMON_OFFSET + REGION => {}
            // Reading ISR clears it; with MSI-X it is never set.
            o if o < ISR_OFFSET + REGION => {}
            o if o < DEVICE_CFG_OFFSET + REGION => {
                self.dev.read_config(o - DEVICE_CFG_OFFSET, data)
            }
            o if o < NOTIFY_OFFSET + REGION => {}
            o if o < MSIX_TABLE_OFFSET + REGION => self.msix.read(o - MSIX_TABLE_OFFSET, data),
            o if o < MSIX_PBA_OFFSET + REGION => self.msix.read_pba(data),
            _ => {}
        }
    }

    fn bar_write(&mut self, offset: u64, data: &[u8]) {
        match offset {
            o if o < COMMON_OFFSET + REGION && data.len() <= 8 => {
                let mut v = [0u8; 8];
                v[..data.len()].copy_from_slice(data);
                self.common_write(o, data.len(), u64::from_le_bytes(v));
            }
            o if o < COMMON_OFFSET + REGION => {}
            o if o < ISR_OFFSET + REGION => {}
            o if o < DEVICE_CFG_OFFSET + REGION => {
                self.dev.write_config(o - DEVICE_CFG_OFFSET, data)
            }
            o if o < NOTIFY_OFFSET + REGION => {
                // Only without an ioeventfd (KVM consumes registered notifications).
                let q = (o - NOTIFY_OFFSET) / u64::from(NOTIFY_MULTIPLIER);
                if let Some(k) = usize::try_from(q).ok().and_then(|q| self.kicks.get(q)) {
                    let _ = k.write(1);
                }
            }
            o if o < MSIX_TABLE_OFFSET + REGION => self.msix.write(o - MSIX_TABLE_OFFSET, data),
            _ => {}
        }
    }
}

/// The PCI class of a virtio device type: network controller for net, mass storage for block,
/// "other" otherwise.
fn class_of(device_type: u16) -> u8 {
    match device_type {
        1 => 0x02,
        2 => 0x01,
        _ => 0xff,
    }
}

fn queue_addr(q: &Queue, offset: u64) -> u64 {
    match offset {
        0x20 => q.desc,
        0x28 => q.driver,
        _ => q.device,
    }
}

fn set_queue_addr(q: &mut Queue, offset: u64, value: u64, mask: u64) {
    let field = match offset {
        0x20 => &mut q.desc,
        0x28 => &mut q.driver,
        _ => &mut q.device,
    };
    *field = (*field & !mask) | (value & mask);
}

impl PciDevice for VirtioPciDevice {
    fn read_config(&mut self, reg: usize) -> u32 {
        if reg == MSIX_CAP_REG {
            let base = self.config.read(reg) & 0xffff;
            return base | (u32::from(self.msix.control()) << 16);
        }
        self.config.read(reg)
    }

    fn write_config(&mut self, reg: usize, offset: usize, data: &[u8]) {
        self.config.write(reg, offset, data);
        match reg {
            MSIX_CAP_REG => {
                let control = (self.config.read(reg) >> 16) as u16;
                self.msix.set_control(control);
            }
            reg::BAR0 | reg::BAR1 | reg::COMMAND => {
                let lo = u64::from(self.config.read(reg::BAR0) & !0xf);
                let hi = u64::from(self.config.read(reg::BAR1));
                let programmed = lo | (hi << 32);
                // Sizing writes all ones with decoding off; only an enabled move matters.
                if programmed != self.bar && self.memory_enabled() && !self.warned_relocation {
                    self.warned_relocation = true;
                    log::warn!(
                        "virtio-pci: guest moved BAR 0 from {:#x} to {programmed:#x}; the \
                         device stays at {:#x}",
                        self.bar,
                        self.bar
                    );
                }
            }
            _ => {}
        }
    }
}

impl BusDevice for VirtioPciDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if !self.memory_enabled() {
            data.fill(0xff);
            return;
        }
        self.bar_read(offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if self.memory_enabled() {
            self.bar_write(offset, data);
        }
    }
}

impl Drop for VirtioPciDevice {
    fn drop(&mut self) {
        self.msix.mask_all();
    }
}

#[cfg(test)]
mod tests;
