//! The device-specific part of a vhost-user virtio-fs device (virtio 1.2 §5.11): a high-priority
//! queue and one request queue, and a config space the VMM provides, since virtiofsd serves
//! none: the tag the guest mounts (`mount -t virtiofs TAG DIR`) and the number of request
//! queues. Everything else is the generic [`frontend`](super::frontend).

use std::path::Path;

use vm_memory::GuestMemoryMmap;

use super::frontend::{Connection, DeviceKind, FrontendError, VhostUserDevice};

/// The virtio device type of a file system device.
pub const DEVICE_TYPE: u16 = 26;

/// hiprio and one request queue.
pub const NUM_QUEUES: usize = 2;

/// Request queues among them (the config space's `num_request_queues`).
const NUM_REQUEST_QUEUES: u32 = (NUM_QUEUES - 1) as u32;

/// Bytes of the tag in the config space (NUL-padded, not NUL-terminated when full).
pub const TAG_LEN: usize = 36;

/// `struct virtio_fs_config` without `notify_buf_size` (we never offer notifications).
const CONFIG_SIZE: usize = TAG_LEN + 4;

/// Largest queue the guest may ask for.
pub const QUEUE_MAX_SIZE: u16 = 256;

/// `VIRTIO_FS_F_NOTIFICATION`: a notification queue we do not create, so never offered.
const VIRTIO_FS_F_NOTIFICATION: u64 = 1 << 0;

/// Why a tag cannot name a virtio-fs device.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TagError {
    /// The guest could not name the device in `mount`.
    #[error("the tag is empty")]
    Empty,
    /// It does not fit the config space.
    #[error("the tag is {0} bytes, at most {TAG_LEN} fit")]
    TooLong(usize),
    /// The guest would read it cut at the NUL.
    #[error("the tag contains a NUL byte")]
    Nul,
}

/// Checks that `tag` can be a virtio-fs tag.
pub fn check_tag(tag: &str) -> Result<(), TagError> {
    if tag.is_empty() {
        Err(TagError::Empty)
    } else if tag.len() > TAG_LEN {
        Err(TagError::TooLong(tag.len()))
    } else if tag.contains('\0') {
        Err(TagError::Nul)
    } else {
        Ok(())
    }
}

/// Errors connecting a virtio-fs device.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The tag given for it is unusable.
    #[error("tag '{tag}': {source}")]
    Tag {
        tag: String,
        #[source]
        source: TagError,
    },
    /// The vhost-user connection failed.
    #[error(transparent)]
    Frontend(#[from] FrontendError),
}

/// virtio-fs as a [`DeviceKind`].
pub struct Fs {
    config: [u8; CONFIG_SIZE],
    max_sizes: [u16; NUM_QUEUES],
}

impl Fs {
    /// The device the guest mounts as `tag`.
    pub fn new(tag: &str) -> Result<Fs, TagError> {
        check_tag(tag)?;
        let mut config = [0u8; CONFIG_SIZE];
        config[..tag.len()].copy_from_slice(tag.as_bytes());
        config[TAG_LEN..].copy_from_slice(&NUM_REQUEST_QUEUES.to_le_bytes());
        Ok(Fs {
            config,
            max_sizes: [QUEUE_MAX_SIZE; NUM_QUEUES],
        })
    }
}

impl DeviceKind for Fs {
    const DEVICE_TYPE: u16 = DEVICE_TYPE;
    const NAME: &'static str = "fs";

    fn queue_max_sizes(&self) -> &[u16] {
        &self.max_sizes
    }

    fn config(&self) -> &[u8] {
        &self.config
    }

    fn features(&self, backend: u64) -> u64 {
        backend & !VIRTIO_FS_F_NOTIFICATION
    }
}

/// A vhost-user virtio-fs device (e.g. served by virtiofsd).
pub type VhostUserFsDevice = VhostUserDevice<Fs>;

impl VhostUserDevice<Fs> {
    /// Connects to a backend listening on `path` for the device the guest mounts as `tag`;
    /// `mem` must be the VM's memfd-backed memory.
    pub fn connect(path: &Path, tag: &str, mem: GuestMemoryMmap) -> Result<Self, FsError> {
        let kind = Fs::new(tag).map_err(|source| FsError::Tag {
            tag: tag.to_string(),
            source,
        })?;
        let conn = Connection::connect(path, NUM_QUEUES)?;
        Ok(VhostUserDevice::new(conn, kind, mem)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vhost_user::frontend::read_config_bytes;

    #[test]
    fn config_space_is_the_tag_then_one_request_queue() {
        let fs = Fs::new("hostshare").unwrap();
        let mut tag = [0xffu8; TAG_LEN];
        read_config_bytes(fs.config(), 0, &mut tag);
        assert_eq!(&tag[..9], b"hostshare");
        assert!(tag[9..].iter().all(|&b| b == 0));
        let mut n = [0u8; 4];
        read_config_bytes(fs.config(), TAG_LEN as u64, &mut n);
        assert_eq!(u32::from_le_bytes(n), 1);
        // Past the end (notify_buf_size, which we never offer) and far away: zero.
        let mut past = [0xffu8; 8];
        read_config_bytes(fs.config(), CONFIG_SIZE as u64, &mut past);
        assert_eq!(past, [0; 8]);
        read_config_bytes(fs.config(), u64::MAX, &mut past);
        assert_eq!(past, [0; 8]);
    }

    #[test]
    fn tags_that_cannot_work_are_refused() {
        assert_eq!(Fs::new("").err(), Some(TagError::Empty));
        assert_eq!(Fs::new(&"x".repeat(37)).err(), Some(TagError::TooLong(37)));
        assert_eq!(Fs::new("a\0b").err(), Some(TagError::Nul));
        let full = "y".repeat(TAG_LEN);
        let fs = Fs::new(&full).unwrap();
        assert_eq!(&fs.config()[..TAG_LEN], full.as_bytes());
    }

    #[test]
    fn notifications_are_never_offered() {
        let fs = Fs::new("t").unwrap();
        assert_eq!(fs.features(u64::MAX) & VIRTIO_FS_F_NOTIFICATION, 0);
        assert_eq!(fs.features(1 << 32), 1 << 32);
    }
}
