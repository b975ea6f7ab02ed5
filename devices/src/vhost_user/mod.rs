//! vhost-user frontends: devices whose datapath runs in a backend (ours, in a thread of the
//! VMM or in another process) that maps guest memory and serves the virtqueues directly.
//!
//! [`frontend`] is the protocol, the same for every device type; [`net`] and [`fs`] only say
//! what their device looks like to the guest (type, queues, config space); [`net_ctrl`] is
//! virtio-net's control queue, which a frontend serves itself.

pub mod frontend;
pub mod fs;
pub mod net;
pub mod net_ctrl;

pub use frontend::{Connection, DeviceKind, FrontendError, LinkControl, VhostUserDevice};
