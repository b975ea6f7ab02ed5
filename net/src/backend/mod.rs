//! The vhost-user-net backend: moves frames between a frontend's virtqueues and a transport.
//!
//! - [`affinity`]: pinning the workers to host CPUs (`affinity=`);
//! - [`features`]: what the device offers and its config space;
//! - [`datapath`]: the receive and transmit paths;
//! - [`device`]: the device as vhost-user-backend drives it;
//! - [`interop`]: a relay that lets real frontends (UML, QEMU) past the `vhost` crate's
//!   strictness, and holds every frontend to [`policy`];
//! - [`policy`]: what a frontend may send (memory regions that fit their files, eventfds,
//!   rings and queue sizes that exist, offered protocol features);
//! - [`guard`]: a SIGBUS guard over guest memory whose file could not be sealed;
//! - [`server`]: the listening socket, reconnection, and the connection API the VMM uses;
//! - [`control`]: the run-time handle the VMM's control socket uses (counters, transport
//!   swap, receive-filter flash, capture);
//! - [`capture`]: frames into a pcap file, filtered, without ever blocking the datapath;
//! - [`steer`]: which queue pairs of a multi-queue device the guest serves, and steering the
//!   host's frames to them;
//! - [`used`]: chains back to the guest, a received frame's all at once, and the notification
//!   test;
//! - [`watch`]: what a pair's worker listens for on its transport's descriptors (writability
//!   only while the host refuses frames).

pub mod affinity;
pub mod busy;
pub mod capture;
pub mod coalesce;
pub mod control;
pub mod datapath;
pub mod device;
pub mod features;
pub mod guard;
pub mod interop;
pub mod policy;
pub mod segment;
pub mod server;
pub mod steer;
pub mod used;
pub mod watch;

pub use capture::{CaptureError, CaptureSummary};
pub use control::{FlashError, NetControl, NetStats, PairStats, SwapError};
pub use datapath::NetCounters;
pub use server::{serve, serve_with, NetBackend};

use crate::transport::TransportError;

/// Errors of the backend.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The listening socket (`--socket PATH`) cannot be bound: bad input, exit status 2.
    #[error("--socket {path}: {source}")]
    Socket {
        path: String,
        #[source]
        source: crate::unix_socket::BindError,
    },
    /// Sharing the socket or dropping privileges before serving failed.
    #[error("{0}")]
    Setup(String),
    #[error("{op}: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("vhost-user daemon: {0}")]
    Daemon(String),
    /// `affinity=` names a CPU the process may not run on: bad input, exit status 2.
    #[error("{dev}: {source}")]
    Affinity {
        dev: String,
        #[source]
        source: affinity::AffinityError,
    },
}

impl BackendError {
    /// The process exit status for this error: 2 for a problem with what the user gave
    /// (a descriptor or filter file that cannot be used), 1 for a run-time failure.
    pub fn exit_status(&self) -> u8 {
        match self {
            BackendError::Transport(
                TransportError::Invalid { .. } | TransportError::Bpf { .. },
            ) => 2,
            BackendError::Socket { .. } | BackendError::Affinity { .. } => 2,
            _ => 1,
        }
    }
}
