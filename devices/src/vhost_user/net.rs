//! The device-specific part of a vhost-user virtio-net device: two queues (receive, transmit)
//! and the config space the backend serves (MAC, status, pairs, MTU). Everything else is the
//! generic [`frontend`](super::frontend).

use std::os::unix::net::UnixStream;
use std::path::Path;

use vm_memory::GuestMemoryMmap;

use super::frontend::{Connection, DeviceKind, FrontendError, VhostUserDevice};

/// Queues of a single-pair virtio-net device: receive, transmit.
pub const NUM_QUEUES: usize = 2;

/// Size of `struct virtio_net_config` that we expose: mac(6) status(2) max_pairs(2) mtu(2).
pub const CONFIG_SIZE: usize = 12;

/// Largest queue the guest may ask for (Linux's virtio-net sizes its rings to this).
pub const QUEUE_MAX_SIZE: u16 = 256;

/// virtio-net as a [`DeviceKind`]: its config space is the backend's, read once at connection
/// (ours is static).
pub struct Net {
    config: [u8; CONFIG_SIZE],
    max_sizes: [u16; NUM_QUEUES],
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
}

/// A vhost-user virtio-net device.
pub type VhostUserNetDevice = VhostUserDevice<Net>;

impl VhostUserDevice<Net> {
    /// Connects to a backend listening on `path`; `mem` must be the VM's memfd-backed memory.
    pub fn connect(path: &Path, mem: GuestMemoryMmap) -> Result<Self, FrontendError> {
        Self::net(Connection::connect(path, NUM_QUEUES)?, mem)
    }

    /// Uses an already connected stream (e.g. one end of a socketpair whose other end a backend
    /// thread of this process serves).
    pub fn from_stream(stream: UnixStream, mem: GuestMemoryMmap) -> Result<Self, FrontendError> {
        Self::net(Connection::from_stream(stream, NUM_QUEUES)?, mem)
    }

    /// Reads the backend's config space (zero where it serves none or a shorter one).
    fn net(mut conn: Connection, mem: GuestMemoryMmap) -> Result<Self, FrontendError> {
        let mut config = [0; CONFIG_SIZE];
        if let Some(data) = conn.backend_config(CONFIG_SIZE)? {
            let n = data.len().min(CONFIG_SIZE);
            config[..n].copy_from_slice(&data[..n]);
        }
        let kind = Net {
            config,
            max_sizes: [QUEUE_MAX_SIZE; NUM_QUEUES],
        };
        Ok(VhostUserDevice::new(conn, kind, mem))
    }
}
