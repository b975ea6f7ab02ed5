//! UML's network transports behind a vhost-user net backend.
//!
//! - [`kind`]: the table of transports (name, forms, options, opener) that the grammar, the
//!   help text and the factory read.
//! - [`config`]: the grammar of UML's `vecN:transport=...` and legacy `ethN=...` device
//!   specifications, parsed into typed configuration.
//! - [`transport`]: the host side of a device: sockets and tap descriptors that move Ethernet
//!   frames (optionally prefixed with a `virtio_net_hdr`) in batches.
//! - [`backend`]: the vhost-user-net device that moves frames between a frontend's virtqueues
//!   and a transport, and the server that accepts frontends.
//! - [`unix_socket`]: listening sockets bound 0600, shared only on purpose.

pub mod backend;
pub mod config;
pub mod kind;
pub mod seccomp;
pub mod transport;
pub mod unix_socket;
