//! The frontend half of a vhost-user virtio-net device.
//!
//! The virtio transport (virtio-pci) owns what the guest sees: feature negotiation, the queue
//! registers, interrupts. This type speaks to the backend: it learns the backend's features and
//! configuration, and when the guest sets DRIVER_OK hands it the guest memory (memfd regions),
//! the rings' addresses and the kick/call eventfds, after which the VMM is out of the datapath.
//!
//! Ring addresses in `SET_VRING_ADDR` are addresses in *this* process (QEMU's convention, which
//! every backend follows): the backend translates them through the `userspace_addr` of the
//! regions in `SET_MEM_TABLE`.

use std::os::unix::net::UnixStream;
use std::path::Path;

use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserProtocolFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::virtio_pci::{ActivateError, QueueSetup, VirtioDevice};

/// `VHOST_USER_F_PROTOCOL_FEATURES`: a vhost-user bit, never offered to the guest.
const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;

/// Queues of a single-pair virtio-net device: receive, transmit.
pub const NUM_QUEUES: usize = 2;

/// Size of `struct virtio_net_config` that we expose: mac(6) status(2) max_pairs(2) mtu(2).
pub const CONFIG_SIZE: usize = 12;

/// Errors of the vhost-user net frontend.
#[derive(Debug, thiserror::Error)]
pub enum FrontendError {
    #[error("vhost-user backend at {path}: {source}")]
    Connect {
        path: String,
        #[source]
        source: vhost::Error,
    },
    #[error("vhost-user {op}: {source}")]
    Protocol {
        op: &'static str,
        #[source]
        source: vhost::Error,
    },
    #[error("vhost-user backend does not offer VIRTIO_F_VERSION_1 (features {0:#x})")]
    NotVersion1(u64),
    #[error("guest memory region at {0:#x} is not backed by a file, a backend cannot map it")]
    AnonymousMemory(u64),
    #[error("queue {index}: ring address {addr:#x} is outside guest memory")]
    RingAddress { index: usize, addr: u64 },
    #[error("queue {index}: size {size} is not a power of two in 1..=32768")]
    QueueSize { index: usize, size: u16 },
}

fn proto(op: &'static str) -> impl FnOnce(vhost::Error) -> FrontendError {
    move |source| FrontendError::Protocol { op, source }
}

/// A connected vhost-user net backend.
pub struct VhostUserNet {
    frontend: Frontend,
    /// Virtio features the backend offers, without the vhost-user bit.
    device_features: u64,
    protocol: VhostUserProtocolFeatures,
    /// The backend's config space, read once at connection (ours is static).
    config: [u8; CONFIG_SIZE],
    active: bool,
}

impl VhostUserNet {
    /// Connects to a backend listening on `path`.
    pub fn connect(path: &Path) -> Result<Self, FrontendError> {
        let frontend = Frontend::connect(path, NUM_QUEUES as u64).map_err(|source| {
            FrontendError::Connect {
                path: path.display().to_string(),
                source,
            }
        })?;
        Self::setup(frontend)
    }

    /// Uses an already connected stream (e.g. one end of a socketpair whose other end a backend
    /// thread of this process serves).
    pub fn from_stream(stream: UnixStream) -> Result<Self, FrontendError> {
        Self::setup(Frontend::from_stream(stream, NUM_QUEUES as u64))
    }

    /// SET_OWNER, the feature and protocol-feature handshake, and the config space.
    fn setup(mut frontend: Frontend) -> Result<Self, FrontendError> {
        frontend.set_owner().map_err(proto("SET_OWNER"))?;
        let features = frontend.get_features().map_err(proto("GET_FEATURES"))?;
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
        }
        let mut dev = VhostUserNet {
            frontend,
            device_features: features & !VHOST_USER_F_PROTOCOL_FEATURES,
            protocol,
            config: [0; CONFIG_SIZE],
            active: false,
        };
        if protocol.contains(VhostUserProtocolFeatures::CONFIG) {
            let (_, data) = dev
                .frontend
                .get_config(
                    0,
                    CONFIG_SIZE as u32,
                    VhostUserConfigFlags::empty(),
                    &[0u8; CONFIG_SIZE],
                )
                .map_err(proto("GET_CONFIG"))?;
            let n = data.len().min(CONFIG_SIZE);
            dev.config[..n].copy_from_slice(&data[..n]);
        }
        Ok(dev)
    }

    /// The virtio features to offer the guest.
    pub fn device_features(&self) -> u64 {
        self.device_features
    }

    /// Reads the device config space; bytes outside it read as zero (a guest may probe
    /// anywhere).
    pub fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i as u64)
                .and_then(|o| usize::try_from(o).ok())
                .and_then(|o| self.config.get(o).copied())
                .unwrap_or(0);
        }
    }

    /// Whether the backend currently runs the queues.
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// Hands the datapath to the backend: features the guest acked, guest memory, and every
    /// queue. Called when the guest sets DRIVER_OK.
    pub fn activate(
        &mut self,
        acked_features: u64,
        mem: &GuestMemoryMmap,
        queues: &[QueueSetup],
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
            if q.size == 0 || q.size > 32768 || !q.size.is_power_of_two() {
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
                .set_vring_base(index, 0)
                .map_err(proto("SET_VRING_BASE"))?;
            self.frontend
                .set_vring_call(index, q.call)
                .map_err(proto("SET_VRING_CALL"))?;
            self.frontend
                .set_vring_kick(index, q.kick)
                .map_err(proto("SET_VRING_KICK"))?;
        }
        if !self.protocol.is_empty() {
            for index in 0..queues.len() {
                self.frontend
                    .set_vring_enable(index, true)
                    .map_err(proto("SET_VRING_ENABLE"))?;
            }
        }
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
        for index in 0..NUM_QUEUES {
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

/// Largest queue the guest may ask for (Linux's virtio-net sizes its rings to this).
pub const QUEUE_MAX_SIZE: u16 = 256;

/// A [`VhostUserNet`] as a virtio device: the transport drives it, this supplies the guest
/// memory the backend must map at activation.
pub struct VhostUserNetDevice {
    net: VhostUserNet,
    mem: GuestMemoryMmap,
    max_sizes: [u16; NUM_QUEUES],
}

impl VhostUserNetDevice {
    /// `mem` must be the VM's memfd-backed memory (the backend maps the same pages).
    pub fn new(net: VhostUserNet, mem: GuestMemoryMmap) -> Self {
        Self {
            net,
            mem,
            max_sizes: [QUEUE_MAX_SIZE; NUM_QUEUES],
        }
    }
}

impl VirtioDevice for VhostUserNetDevice {
    fn device_type(&self) -> u16 {
        virtio_bindings::virtio_ids::VIRTIO_ID_NET as u16
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.max_sizes
    }

    fn features(&self) -> u64 {
        self.net.device_features()
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        self.net.read_config(offset, data)
    }

    fn activate(&mut self, acked: u64, queues: &[QueueSetup]) -> Result<(), ActivateError> {
        self.net
            .activate(acked, &self.mem, queues)
            .map_err(ActivateError::from)
    }

    fn reset(&mut self) {
        if let Err(e) = self.net.reset() {
            log::warn!("vhost-user net: reset: {e}");
        }
    }
}
