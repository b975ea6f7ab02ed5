//! `transport=bess`: bare Ethernet frames over an `AF_UNIX`/`SOCK_SEQPACKET` socket, bound to
//! `src` when given and connected to `dst`, as UML's client side of a BESS unix port (BESS
//! listens; one client per port). A seqpacket socket keeps frame boundaries, so frames move in
//! batches with recvmmsg/sendmmsg like the other tunnels (through [`Tunnel`], with no header).
//!
//! When the switch side closes, the socket is no longer read (one warning, counted as "peer
//! hung up") instead of spinning on end-of-file; frames sent after that are dropped and counted.
//! A stale socket file at `src` (left by an earlier run) is not removed for the user: bind
//! then fails with "address in use", which names the path.

use std::os::fd::OwnedFd;

use super::ipsock::{self, SockAddr};
use super::sys;
use super::tunnel::{Bare, Tunnel, TunnelOpts};
use super::TransportError;
use super::{Opening, Transport};
use crate::config::BessConfig;
use crate::config::TransportConfig;

pub type Bess = Tunnel<Bare>;

fn invalid(reason: String) -> TransportError {
    TransportError::Invalid {
        transport: "bess",
        reason,
    }
}

pub fn open(config: &BessConfig, depth: usize) -> Result<Bess, TransportError> {
    let dst = SockAddr::unix(&config.dst).map_err(|e| invalid(e.to_string()))?;
    let fd: OwnedFd = match &config.src {
        Some(src) => {
            let src = SockAddr::unix(src).map_err(|e| invalid(e.to_string()))?;
            ipsock::bound_socket(libc::AF_UNIX, libc::SOCK_SEQPACKET, 0, &src, false).map_err(
                |source| TransportError::Socket {
                    transport: "bess",
                    source,
                },
            )?
        }
        None => sys::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET, 0)
            .map_err(|e| invalid(format!("socket: {e}")))?,
    };
    ipsock::connect(&fd, &dst).map_err(|e| {
        let hint = match e.raw_os_error() {
            Some(libc::ENOENT | libc::ECONNREFUSED) => {
                " (is the switch's unix port listening there?)"
            }
            Some(libc::EAGAIN) => " (the switch's port has a full accept queue)",
            _ => "",
        };
        invalid(format!("connect {}: {e}{hint}", config.dst.display()))
    })?;
    Ok(Tunnel::new(
        "bess",
        fd,
        Bare,
        depth,
        TunnelOpts {
            hangup_check: true,
            ..TunnelOpts::default()
        },
    ))
}

/// The opener of `transport=bess` (see [`crate::kind`]).
pub(crate) fn from_config(
    config: &TransportConfig,
    o: &Opening,
) -> Result<Box<dyn Transport>, TransportError> {
    let TransportConfig::Bess(c) = config else {
        return Err(super::wrong_config("bess"));
    };
    Ok(Box::new(open(c, o.depth)?))
}
