//! vhost-user frontends: devices whose datapath runs in a backend (ours, in a thread of the
//! VMM or in another process) that maps guest memory and serves the virtqueues directly.

pub mod net;
