//! A port on a unix-socket switch, `daemon`'s (uml_switch) or `vde`'s (vde_switch): both
//! switches take a control connection on a stream socket, answer a request naming our data
//! socket with the address of theirs, and then move one bare Ethernet frame per unix datagram.
//! Here are the pieces they share (the request's magic and version, the `sockaddr_un`
//! plumbing, the handshake) and [`SwitchPort`], the transport either opens; each transport's
//! own request is in its file.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use super::sys::{cvt, Mmsg};
use super::{
    Frames, GatherBatch, Offloads, PacketBatch, Peer, Transport, TransportError, TransportStats,
};

/// `SWITCH_MAGIC` of uml_switch and vde_switch.
pub(super) const SWITCH_MAGIC: u32 = 0xfeed_face;
/// The request version both switches expect.
pub(super) const SWITCH_VERSION: u32 = 3;
/// `sizeof(struct sockaddr_un)` on Linux: 2 bytes of family, 108 of path.
pub(super) const SUN_LEN: usize = std::mem::size_of::<libc::sockaddr_un>();

/// How long the control handshake may take before the switch is declared unresponsive.
const CTL_TIMEOUT: Duration = Duration::from_secs(5);

/// A `sockaddr_un` as raw bytes (exactly [`SUN_LEN`] of them), the unit of both protocols.
pub(super) fn sockaddr_bytes(addr: &libc::sockaddr_un) -> [u8; SUN_LEN] {
    let mut out = [0u8; SUN_LEN];
    out[..2].copy_from_slice(&addr.sun_family.to_ne_bytes());
    for (o, c) in out[2..].iter_mut().zip(addr.sun_path.iter()) {
        *o = *c as u8;
    }
    out
}

/// Parses the switch's reply: a whole `sockaddr_un` of family `AF_UNIX`.
pub(super) fn parse_sockaddr(bytes: &[u8; SUN_LEN]) -> Result<libc::sockaddr_un, String> {
    let family = u16::from_ne_bytes([bytes[0], bytes[1]]);
    if i32::from(family) != libc::AF_UNIX {
        return Err(format!(
            "the switch replied with address family {family}, not AF_UNIX"
        ));
    }
    if bytes[2..].iter().all(|&b| b == 0) {
        return Err("the switch replied with an empty address".into());
    }
    // SAFETY: sockaddr_un is a plain C struct; all-zero is valid.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = family;
    for (p, b) in addr.sun_path.iter_mut().zip(&bytes[2..]) {
        *p = *b as libc::c_char;
    }
    Ok(addr)
}

/// Binds `fd` to `addr` with the whole structure's length.
pub(super) fn bind_un(fd: RawFd, addr: &libc::sockaddr_un) -> std::io::Result<()> {
    // SAFETY: `addr` is a live, initialised sockaddr_un and its exact size is passed.
    cvt(unsafe {
        libc::bind(
            fd,
            (addr as *const libc::sockaddr_un).cast(),
            SUN_LEN as libc::socklen_t,
        )
    })?;
    Ok(())
}

/// Connects datagram socket `fd` to `addr` (whole structure length, as the switches send it).
/// The port's data socket: a unix datagram socket, each frame one message.
pub(crate) fn data_socket(transport: &'static str) -> Result<OwnedFd, TransportError> {
    super::sys::socket(libc::AF_UNIX, libc::SOCK_DGRAM, 0).map_err(|source| TransportError::Io {
        transport,
        op: "socket(AF_UNIX, SOCK_DGRAM)",
        source,
    })
}

fn connect_un(fd: RawFd, addr: &libc::sockaddr_un) -> std::io::Result<()> {
    // SAFETY: as in `bind_un`.
    cvt(unsafe {
        libc::connect(
            fd,
            (addr as *const libc::sockaddr_un).cast(),
            SUN_LEN as libc::socklen_t,
        )
    })?;
    Ok(())
}

/// A readable rendering of a unix address for messages (`@name` for abstract ones).
pub(super) fn describe(addr: &libc::sockaddr_un) -> String {
    let path: Vec<u8> = addr.sun_path.iter().map(|&c| c as u8).collect();
    match path.first() {
        Some(0) => {
            let name: Vec<u8> = path[1..].iter().copied().take_while(|&b| b != 0).collect();
            format!("@{}", String::from_utf8_lossy(&name))
        }
        _ => {
            let end = path.iter().position(|&b| b == 0).unwrap_or(path.len());
            String::from_utf8_lossy(&path[..end]).into_owned()
        }
    }
}

/// Connects the control stream with timeouts, so a stuck switch cannot hang `open`.
pub(super) fn connect_ctl(
    transport: &'static str,
    ctl: &Path,
) -> Result<UnixStream, TransportError> {
    let ctl_err = |what: &str, e: std::io::Error| TransportError::Invalid {
        transport,
        reason: format!("control socket {}: {what}: {e}", ctl.display()),
    };
    let stream = UnixStream::connect(ctl).map_err(|e| ctl_err("connect", e))?;
    stream
        .set_read_timeout(Some(CTL_TIMEOUT))
        .and_then(|_| stream.set_write_timeout(Some(CTL_TIMEOUT)))
        .map_err(|e| ctl_err("timeouts", e))?;
    Ok(stream)
}

/// Sends `request` and reads the switch's data address.
pub(super) fn handshake(
    transport: &'static str,
    ctl_path: &Path,
    ctl: &mut UnixStream,
    request: &[u8],
) -> Result<libc::sockaddr_un, TransportError> {
    let err = |reason: String| TransportError::Invalid {
        transport,
        reason: format!("control socket {}: {reason}", ctl_path.display()),
    };
    ctl.write_all(request)
        .map_err(|e| err(format!("sending the request: {e}")))?;
    let mut reply = [0u8; SUN_LEN];
    ctl.read_exact(&mut reply).map_err(|e| {
        err(if e.kind() == std::io::ErrorKind::UnexpectedEof {
            "the switch closed the connection instead of replying (refused the port?)".into()
        } else {
            format!("reading the reply: {e}")
        })
    })?;
    parse_sockaddr(&reply).map_err(err)
}

/// One port on a unix-socket switch: the control connection (held), the data socket
/// (connected to the switch's) and the multi-packet state.
pub struct SwitchPort {
    transport: &'static str,
    /// Never read after the handshake: held because closing it unplugs the port.
    _ctl: UnixStream,
    data: OwnedFd,
    mmsg: Mmsg,
    stats: TransportStats,
    /// The switch went away (its data socket refuses us): neither read nor written again.
    peer: Peer,
}

impl SwitchPort {
    /// Finishes a port: connects `data` to the switch's `peer` address.
    pub(super) fn new(
        transport: &'static str,
        ctl: UnixStream,
        data: OwnedFd,
        peer: &libc::sockaddr_un,
        depth: usize,
    ) -> Result<SwitchPort, TransportError> {
        connect_un(data.as_raw_fd(), peer).map_err(|e| TransportError::Invalid {
            transport,
            reason: format!(
                "connecting to the switch's data socket {}: {e}",
                describe(peer)
            ),
        })?;
        Ok(SwitchPort {
            transport,
            _ctl: ctl,
            data,
            mmsg: Mmsg::new(depth),
            stats: TransportStats::default(),
            peer: Peer::default(),
        })
    }

    pub(super) fn fd(&self) -> RawFd {
        self.data.as_raw_fd()
    }

    pub(super) fn stats(&self) -> TransportStats {
        TransportStats {
            rx_dropped_kernel: super::kernel_drops(self.fd()),
            ..self.stats
        }
    }

    fn io(&self, op: &'static str) -> impl FnOnce(std::io::Error) -> TransportError {
        let transport = self.transport;
        move |source| TransportError::Io {
            transport,
            op,
            source,
        }
    }

    pub(super) fn recv(&mut self, batch: &mut PacketBatch) -> Result<usize, TransportError> {
        let fd = self.fd();
        if self.peer.rx_gone() {
            batch.set_count(0);
            return Ok(0);
        }
        let dropped = &mut self.stats.rx_dropped_truncated;
        match self.mmsg.recv(fd, batch, |_| true, dropped) {
            Ok((_, kept)) => Ok(kept),
            // The connected switch socket closed: reported once as an error on our socket.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ECONNRESET | libc::ECONNREFUSED)
                ) =>
            {
                let why = e.to_string();
                self.peer.rx_hung_up(self.transport, &why, &mut self.stats);
                batch.set_count(0);
                Ok(0)
            }
            Err(e) => Err(self.io("recvmmsg")(e)),
        }
    }

    /// Sends frames (a batch, or gather lists); fewer than all means it would block.
    pub(super) fn send<F: Frames + ?Sized>(&mut self, batch: &F) -> Result<usize, TransportError> {
        let mut done = 0;
        while done < batch.count() {
            if self.peer.tx_gone() {
                self.stats.tx_dropped_peer_gone += (batch.count() - done) as u64;
                return Ok(batch.count());
            }
            // Connected: no per-message address (for vde's path sockets that would be a path
            // lookup per frame).
            match self.mmsg.send(self.fd(), batch, done, None) {
                Ok(0) => break,
                Ok(n) => done += n,
                // Larger than a unix datagram may be, or (EFAULT) guest memory the kernel could
                // not read: this frame only.
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EMSGSIZE | libc::ENOBUFS | libc::EFAULT)
                    ) =>
                {
                    self.stats.tx_dropped += 1;
                    done += 1;
                }
                // The switch is gone: the port cannot come back, drop (counted) rather than
                // fail the device.
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ECONNREFUSED | libc::ECONNRESET | libc::ENOENT | libc::EPIPE)
                    ) =>
                {
                    self.peer.tx_hung_up(self.transport, &e, &mut self.stats);
                }
                Err(e) => return Err(self.io("sendmmsg")(e)),
            }
        }
        Ok(done)
    }
}

/// `daemon` and `vde` ports are the same thing once the switch has answered.
impl Transport for SwitchPort {
    fn name(&self) -> &'static str {
        self.transport
    }

    fn vnet_hdr_len(&self) -> usize {
        0
    }

    fn rx_fd(&self) -> RawFd {
        self.fd()
    }

    fn tx_fd(&self) -> RawFd {
        self.fd()
    }

    fn recv(&mut self, batch: &mut PacketBatch) -> Result<usize, TransportError> {
        SwitchPort::recv(self, batch)
    }

    fn send(&mut self, batch: &PacketBatch) -> Result<usize, TransportError> {
        SwitchPort::send(self, batch)
    }

    fn gathers(&self) -> bool {
        true
    }

    fn send_gather(&mut self, frames: &GatherBatch) -> Result<usize, TransportError> {
        SwitchPort::send(self, frames)
    }

    fn set_offloads(&mut self, _offloads: Offloads) -> Result<(), TransportError> {
        Ok(())
    }

    fn stats(&self) -> TransportStats {
        SwitchPort::stats(self)
    }
}
