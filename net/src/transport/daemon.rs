//! Legacy `ethN=daemon,MAC,unix,CTL_PATH`: a port on a `uml_switch` (Debian's uml-utilities).
//!
//! The switch speaks a small control protocol on a unix stream socket (`CTL_PATH`, default
//! `/tmp/uml.ctl`) and moves frames as unix datagrams, one bare Ethernet frame per message:
//!
//! 1. We bind a datagram socket to an abstract unix address (no file to clean up, nothing for
//!    other users to open) and connect a stream socket to `CTL_PATH`.
//! 2. We write the version-3 request, 124 bytes in host byte order, laid out as
//!    `struct request_v3` in uml_switch's `uml_switch.h` and UML's `daemon_user.c`:
//!    `u32 magic 0xfeedface`, `u32 version 3`, `enum request_type` (an `int`, 0 =
//!    `REQ_NEW_CONTROL`), the 110-byte `struct sockaddr_un` of our data socket, and 2 bytes of
//!    tail padding (the struct is 4-byte aligned).
//! 3. The switch answers with the 110-byte `sockaddr_un` of its own data socket.
//! 4. The control connection stays open: the switch drops the port when it closes.
//!
//! The switch recognises a port by the sender address of each datagram, compared with the one
//! in the request as a whole `sockaddr_un`; so, like UML, we bind with the full structure
//! length (the abstract name then includes its trailing zero bytes) and the request carries
//! exactly the bound address.
//!
//! Unlike UML we also `connect` the data socket to the switch's address. uml_switch sends every
//! frame from that one socket, so nothing legitimate is lost; what we gain is that (a) no
//! other local process can inject frames into the port and (b) a connected unix datagram
//! socket reports itself writable only when the switch's receive queue has room, which is what
//! the backend's edge-triggered wait on [`Transport::tx_fd`] needs after a short send (an
//! unconnected sender gets `EAGAIN` with no later wake-up when the switch's queue is full).
//!
//! The control protocol and datagram plumbing are shared with `vde`
//! ([`switch_port`](super::switch_port)), whose switch speaks a close relative of the same
//! protocol.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

use super::switch_port::{
    bind_un, connect_ctl, describe, handshake, sockaddr_bytes, SwitchPort, SUN_LEN, SWITCH_MAGIC,
    SWITCH_VERSION,
};
use super::{Opening, Transport, TransportError};
use crate::config::TransportConfig;

/// `sizeof(struct request_v3)` for uml_switch: 3 × 4 + 110, padded to a multiple of 4.
pub const DAEMON_REQUEST_LEN: usize = 124;

/// The 124-byte uml_switch request announcing `data` as a new port.
pub fn daemon_request(data: &libc::sockaddr_un) -> [u8; DAEMON_REQUEST_LEN] {
    let mut req = [0u8; DAEMON_REQUEST_LEN];
    req[0..4].copy_from_slice(&SWITCH_MAGIC.to_ne_bytes());
    req[4..8].copy_from_slice(&SWITCH_VERSION.to_ne_bytes());
    // type: REQ_NEW_CONTROL = 0 (bytes 8..12 stay zero).
    req[12..12 + SUN_LEN].copy_from_slice(&sockaddr_bytes(data));
    req
}

/// A fresh abstract address, unique to this process and call: `\0vmm-<tag>-<pid>-<n>`, the
/// rest of `sun_path` zero (significant, as we bind with the whole structure).
fn abstract_addr(tag: &str) -> libc::sockaddr_un {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let name = format!("vmm-{tag}-{}-{n}", std::process::id());
    // SAFETY: sockaddr_un is a plain C struct; all-zero is valid.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (p, b) in addr.sun_path[1..].iter_mut().zip(name.bytes()) {
        *p = b as libc::c_char;
    }
    addr
}

/// `ethN=daemon`: see the module documentation.
/// Opens `daemon` ports; the port itself is a [`SwitchPort`], as for `vde`.
pub struct Daemon;

impl Daemon {
    pub fn open(ctl_path: &Path, depth: usize) -> Result<SwitchPort, TransportError> {
        const T: &str = "daemon";
        let data = super::switch_port::data_socket(T)?;
        let local = loop {
            let addr = abstract_addr("uml");
            match bind_un(data.as_raw_fd(), &addr) {
                Ok(()) => break addr,
                Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) => continue,
                Err(source) => {
                    return Err(TransportError::Io {
                        transport: T,
                        op: "binding the data socket",
                        source,
                    })
                }
            }
        };
        let mut ctl = connect_ctl(T, ctl_path)?;
        let peer = handshake(T, ctl_path, &mut ctl, &daemon_request(&local))?;
        log::info!(
            "daemon: port {} on uml_switch {} (switch data socket {})",
            describe(&local),
            ctl_path.display(),
            describe(&peer)
        );
        SwitchPort::new(T, ctl, data, &peer, depth)
    }
}

/// The opener of `ethN=daemon` (see [`crate::kind`]).
pub(crate) fn from_config(
    config: &TransportConfig,
    o: &Opening,
) -> Result<Box<dyn Transport>, TransportError> {
    let TransportConfig::Daemon(c) = config else {
        return Err(super::wrong_config("daemon"));
    };
    Ok(Box::new(Daemon::open(&c.ctl, o.depth)?))
}

#[cfg(test)]
mod tests {
    use super::super::switch_port::parse_sockaddr;
    use super::*;

    #[test]
    fn request_layout_matches_request_v3() {
        let addr = abstract_addr("t");
        let req = daemon_request(&addr);
        assert_eq!(req.len(), 124);
        assert_eq!(&req[0..4], &0xfeed_faceu32.to_ne_bytes());
        assert_eq!(&req[4..8], &3u32.to_ne_bytes());
        assert_eq!(&req[8..12], &[0, 0, 0, 0]);
        assert_eq!(
            &req[12..14],
            &(libc::AF_UNIX as libc::sa_family_t).to_ne_bytes()
        );
        assert_eq!(req[14], 0, "abstract address");
        assert!(req[15..].starts_with(b"vmm-t-"));
        assert_eq!(&req[122..], &[0, 0], "tail padding");
    }

    #[test]
    fn replies_are_checked() {
        let mut bad = [0u8; SUN_LEN];
        bad[..2].copy_from_slice(&2u16.to_ne_bytes());
        bad[2] = b'x';
        assert!(parse_sockaddr(&bad).unwrap_err().contains("family 2"));
        let mut empty = [0u8; SUN_LEN];
        empty[..2].copy_from_slice(&(libc::AF_UNIX as u16).to_ne_bytes());
        assert!(parse_sockaddr(&empty).unwrap_err().contains("empty"));
        let good = sockaddr_bytes(&abstract_addr("r"));
        let addr = parse_sockaddr(&good).unwrap();
        assert!(describe(&addr).starts_with("@vmm-r-"));
    }
}
