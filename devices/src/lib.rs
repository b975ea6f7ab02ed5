//! The VMM's devices.

pub mod vhost_user;
