//! The device-specific part of a vhost-user virtio-net device: a receive and a transmit queue
//! per pair, and the config space the backend serves (MAC, status, pairs, MTU). A backend
//! with several pairs (`VIRTIO_NET_F_MQ`, `vmm net-backend ... queues=N` or the VM's own NIC
//! with `queues=N`) gets a control queue besides, which the VMM serves
//! ([`net_ctrl`](super::net_ctrl)). Everything else is the generic
//! [`frontend`](super::frontend).

use std::mem::{offset_of, size_of};
use std::os::unix::net::UnixStream;
use std::path::Path;

use virtio_bindings::virtio_net::virtio_net_config;
use vm_memory::GuestMemoryMmap;

use super::frontend::{Connection, DeviceKind, FrontendError, RingSwitch, VhostUserDevice};
use super::net_ctrl::{self, CtrlQueue};
use crate::virtio_pci::QueueSetup;

/// Queues of a single-pair virtio-net device: receive, transmit.
pub const NUM_QUEUES: usize = 2;

/// Size of `struct virtio_net_config` that we expose: mac, status, max_virtqueue_pairs, mtu.
pub const CONFIG_SIZE: usize = offset_of!(virtio_net_config, mtu) + size_of::<u16>();

/// Largest queue the guest may ask for (Linux's virtio-net sizes its rings to this).
pub const QUEUE_MAX_SIZE: u16 = 256;

/// `VIRTIO_NET_F_MAC`: the config space's MAC is valid.
const VIRTIO_NET_F_MAC: u64 = 1 << 5;
/// `VIRTIO_NET_F_STATUS`: the config space's status (link up) is valid.
const VIRTIO_NET_F_STATUS: u64 = 1 << 16;
/// `VIRTIO_NET_F_MQ`: several queue pairs, chosen through the control queue.
const VIRTIO_NET_F_MQ: u64 = 1 << 22;
/// `VIRTIO_NET_F_CTRL_VQ`: the control queue (after the pairs' queues).
const VIRTIO_NET_F_CTRL_VQ: u64 = 1 << 17;
/// The most pairs served (as many as `queues=` allows).
pub const MAX_PAIRS: u16 = 16;
/// Offset of `max_virtqueue_pairs` in `struct virtio_net_config`.
const PAIRS_OFFSET: usize = offset_of!(virtio_net_config, max_virtqueue_pairs);
/// Offset of `status` in `struct virtio_net_config`.
const STATUS_OFFSET: usize = offset_of!(virtio_net_config, status);

/// virtio-net as a [`DeviceKind`]: its config space is the backend's, read once at connection
/// (ours is static), with the MAC replaced where the user gave one.
pub struct Net {
    config: [u8; CONFIG_SIZE],
    /// Two queues per pair, then the control queue when there are several pairs.
    max_sizes: Vec<u16>,
    /// Queue pairs offered to the guest: the backend's, when it offers MQ and can have its
    /// rings switched; else 1.
    pairs: u16,
    /// The control queue's thread while the device runs with several pairs.
    ctrl: Option<CtrlQueue>,
    /// The MAC is ours (`mac=`), not the backend's: offer `VIRTIO_NET_F_MAC` whatever the
    /// backend offers. DPDK's vhost PMD offers no MAC, and without one the guest's NIC gets
    /// 00:00:00:00:00:00 (Linux then picks a random one) on every boot.
    own_mac: bool,
}

impl DeviceKind for Net {
    const DEVICE_TYPE: u16 = virtio_bindings::virtio_ids::VIRTIO_ID_NET as u16;
    const NAME: &'static str = "net";

    fn queue_max_sizes(&self) -> &[u16] {
        &self.max_sizes
    }

    fn config(&self) -> &[u8] {
        &self.config
    }

    /// Never forwarded to a backend that did not offer it: the frontend masks what it acks to
    /// the backend with the backend's own features.
    fn features(&self, backend: u64) -> u64 {
        // MQ needs the control queue, which is ours; a backend's MQ that cannot be used (one
        // pair decided at connection) is not passed on, or the guest would look for a control
        // queue that is not there (Linux then refuses the device).
        let mut f = if self.pairs > 1 {
            backend | VIRTIO_NET_F_CTRL_VQ
        } else {
            backend & !VIRTIO_NET_F_MQ
        };
        if self.own_mac {
            f |= VIRTIO_NET_F_MAC;
        }
        // The link status is ours, whatever the backend offers: the device reports the link
        // going down and up when the host sets it (the control socket) and, for a device that
        // survives its backend, when the backend goes away and comes back.
        f | VIRTIO_NET_F_STATUS
    }

    fn link_status_offset(&self) -> Option<usize> {
        Some(STATUS_OFFSET)
    }

    fn backend_queues(&self) -> usize {
        usize::from(self.pairs) * NUM_QUEUES
    }

    /// The first pair, until the guest's `VQ_PAIRS_SET` (virtio 1.2, 5.1.6.5.5).
    fn enabled_at_start(&self) -> usize {
        NUM_QUEUES
    }

    fn start_own(
        &mut self,
        queues: &[QueueSetup],
        mem: &GuestMemoryMmap,
        rings: RingSwitch,
    ) -> Result<(), FrontendError> {
        self.ctrl = None;
        let index = self.backend_queues();
        match queues {
            [] => Ok(()),
            [ctrl] => {
                self.ctrl = Some(CtrlQueue::start(ctrl, index, mem, self.pairs, rings)?);
                Ok(())
            }
            more => Err(FrontendError::OwnQueue {
                index,
                reason: format!("{} queues past the pairs, one expected", more.len()),
            }),
        }
    }

    fn stop_own(&mut self) {
        self.ctrl = None;
    }
}

/// A vhost-user virtio-net device.
pub type VhostUserNetDevice = VhostUserDevice<Net>;

impl VhostUserDevice<Net> {
    /// Connects to a backend listening on `path`; `mem` must be the VM's memfd-backed memory.
    /// `mac`, when given, is the guest's MAC whatever the backend says. The device survives
    /// the backend: if it goes away, the link goes down until one answers at `path` again
    /// (see [`VhostUserDevice::reconnecting`]).
    pub fn connect(
        path: &Path,
        mem: GuestMemoryMmap,
        mac: Option<[u8; 6]>,
    ) -> Result<Self, FrontendError> {
        let dev = Self::net(Connection::connect(path, MAX_QUEUES)?, mem, mac)?;
        Ok(dev.reconnecting(path.to_path_buf()))
    }

    /// Uses an already connected stream (e.g. one end of a socketpair whose other end a backend
    /// thread of this process serves).
    pub fn from_stream(stream: UnixStream, mem: GuestMemoryMmap) -> Result<Self, FrontendError> {
        Self::net(Connection::from_stream(stream, MAX_QUEUES)?, mem, None)
    }

    /// Reads the backend's config space (zero where it serves none or a shorter one).
    fn net(
        mut conn: Connection,
        mem: GuestMemoryMmap,
        mac: Option<[u8; 6]>,
    ) -> Result<Self, FrontendError> {
        let mut config = [0; CONFIG_SIZE];
        if let Some(data) = conn.backend_config(CONFIG_SIZE)? {
            let n = data.len().min(CONFIG_SIZE);
            config[..n].copy_from_slice(&data[..n]);
        }
        if let Some(mac) = mac {
            config[..6].copy_from_slice(&mac);
        }
        let pairs = pairs_offered(&conn, &config);
        config[PAIRS_OFFSET..PAIRS_OFFSET + 2].copy_from_slice(&pairs.to_le_bytes());
        let mut max_sizes = vec![QUEUE_MAX_SIZE; usize::from(pairs) * NUM_QUEUES];
        if pairs > 1 {
            max_sizes.push(net_ctrl::QUEUE_MAX);
        }
        let kind = Net {
            config,
            max_sizes,
            pairs,
            ctrl: None,
            own_mac: mac.is_some(),
        };
        VhostUserDevice::new(conn, kind, mem)
    }
}

/// The most queues a backend is connected for: [`MAX_PAIRS`] pairs (a backend that speaks the
/// MQ protocol feature says how many it has).
const MAX_QUEUES: usize = MAX_PAIRS as usize * NUM_QUEUES;

/// How many pairs to offer the guest: those the backend's config space says, when it offers
/// `VIRTIO_NET_F_MQ`, serves that many rings and can have them switched on and off; 1
/// otherwise.
fn pairs_offered(conn: &Connection, config: &[u8; CONFIG_SIZE]) -> u16 {
    if conn.device_features() & VIRTIO_NET_F_MQ == 0 || !conn.can_disable_rings() {
        return 1;
    }
    let said = u16::from_le_bytes([config[PAIRS_OFFSET], config[PAIRS_OFFSET + 1]]);
    let rings = (conn.max_queues() / NUM_QUEUES).min(usize::from(MAX_PAIRS)) as u16;
    said.min(rings).max(1)
}
