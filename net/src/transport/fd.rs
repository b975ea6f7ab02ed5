//! `transport=fd`: an inherited descriptor used both ways, bare Ethernet frames.
//!
//! Vector mode needs message boundaries: a datagram or seqpacket socket (e.g. one end of a
//! `socketpair`), driven with recvmmsg/sendmmsg. With `vec=0` any descriptor that keeps frame
//! boundaries per read/write works, such as a tap opened without a vnet header. A stream socket
//! is refused: it has no frame boundaries.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::sys::{self, Mmsg};
use super::Opening;
use super::{
    Frames, GatherBatch, Offloads, PacketBatch, Peer, Transport, TransportError, TransportStats,
};
use crate::config::TransportConfig;

pub struct Fd {
    fd: OwnedFd,
    /// `None`: plain read/write, one frame per call.
    mmsg: Option<Mmsg>,
    stats: TransportStats,
    /// A seqpacket peer can hang up; a datagram one cannot (it never reads as end-of-file).
    peer: Peer,
}

fn invalid(reason: String) -> TransportError {
    TransportError::Invalid {
        transport: "fd",
        reason,
    }
}

impl Fd {
    /// Takes ownership of descriptor `fd` (inherited from the parent; it is closed when the
    /// transport is dropped).
    pub fn open(fd: i32, depth: usize, vec: bool) -> Result<Fd, TransportError> {
        if fd < 0 || !sys::is_open(fd) {
            return Err(invalid(format!("fd={fd} is not an open descriptor")));
        }
        if fd <= 2 {
            return Err(invalid(format!(
                "fd={fd} is standard input, output or error"
            )));
        }
        let ty = sys::socket_type(fd).map_err(|source| TransportError::Io {
            transport: "fd",
            op: "getsockopt(SO_TYPE)",
            source,
        })?;
        let mmsg = match ty {
            Some(libc::SOCK_DGRAM | libc::SOCK_SEQPACKET) if vec => Some(Mmsg::new(depth)),
            Some(libc::SOCK_DGRAM | libc::SOCK_SEQPACKET) | Some(libc::SOCK_RAW) => None,
            Some(libc::SOCK_STREAM) => {
                return Err(invalid(format!(
                    "fd={fd} is a stream socket: frames need a datagram or seqpacket socket"
                )))
            }
            Some(other) => {
                return Err(invalid(format!("fd={fd}: unsupported socket type {other}")))
            }
            None if vec => {
                return Err(invalid(format!(
                    "fd={fd} is not a socket: multi-packet I/O needs one (use vec=0 for a tap)"
                )))
            }
            None => None,
        };
        sys::set_nonblocking(fd).map_err(|source| TransportError::Io {
            transport: "fd",
            op: "fcntl(O_NONBLOCK)",
            source,
        })?;
        // SAFETY: the descriptor is open (checked above) and, by the user's contract for
        // `fd=N`, handed to us to own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Fd {
            fd,
            mmsg,
            stats: TransportStats::default(),
            peer: Peer::default(),
        })
    }

    fn io(op: &'static str) -> impl FnOnce(std::io::Error) -> TransportError {
        move |source| TransportError::Io {
            transport: "fd",
            op,
            source,
        }
    }
}

impl Transport for Fd {
    fn name(&self) -> &'static str {
        "fd"
    }

    fn vnet_hdr_len(&self) -> usize {
        0
    }

    fn rx_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    fn tx_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    fn recv(&mut self, batch: &mut PacketBatch) -> Result<usize, TransportError> {
        let fd = self.fd.as_raw_fd();
        if self.peer.rx_gone() {
            batch.set_count(0);
            return Ok(0);
        }
        match &mut self.mmsg {
            Some(mmsg) => {
                mmsg.recv(fd, batch, |_| true, &mut self.stats.rx_dropped_truncated)
                    .map_err(Self::io("recvmmsg"))?;
                self.peer.check_eof("fd", fd, batch, &mut self.stats);
                Ok(batch.count())
            }
            None => {
                let buf = &mut batch.bufs_mut()[0];
                let cap = buf.capacity();
                match sys::read(fd, buf.space()) {
                    Ok(0) if sys::peer_hung_up(fd) => {
                        self.peer.rx_hung_up("fd", "end of file", &mut self.stats);
                        batch.set_count(0);
                        Ok(0)
                    }
                    Ok(len) if len < cap => {
                        buf.set_len(len);
                        batch.set_count(1);
                        Ok(1)
                    }
                    Ok(_) => {
                        self.stats.rx_dropped_truncated += 1;
                        batch.set_count(0);
                        Ok(0)
                    }
                    Err(e) if sys::would_block(&e) => {
                        batch.set_count(0);
                        Ok(0)
                    }
                    Err(e) => Err(Self::io("read")(e)),
                }
            }
        }
    }

    fn send(&mut self, batch: &PacketBatch) -> Result<usize, TransportError> {
        self.send_frames(batch)
    }

    fn gathers(&self) -> bool {
        true
    }

    fn send_gather(&mut self, frames: &GatherBatch) -> Result<usize, TransportError> {
        self.send_frames(frames)
    }

    fn set_offloads(&mut self, _offloads: Offloads) -> Result<(), TransportError> {
        Ok(())
    }

    fn stats(&self) -> TransportStats {
        TransportStats {
            rx_dropped_kernel: super::kernel_drops(self.fd.as_raw_fd()),
            ..self.stats
        }
    }
}

impl Fd {
    /// Sends frames (a batch, or gather lists): every message the peer takes or refuses
    /// outright counts as sent; fewer than all means it would block.
    fn send_frames<F: Frames + ?Sized>(&mut self, batch: &F) -> Result<usize, TransportError> {
        let fd = self.fd.as_raw_fd();
        let mut done = 0;
        while done < batch.count() {
            if self.peer.tx_gone() {
                self.stats.tx_dropped_peer_gone += (batch.count() - done) as u64;
                return Ok(batch.count());
            }
            let r = match &mut self.mmsg {
                Some(mmsg) => mmsg.send(fd, batch, done, None),
                None => match sys::write_frame(fd, batch, done) {
                    Ok(_) => Ok(1),
                    Err(e) if sys::would_block(&e) => Ok(0),
                    Err(e) => Err(e),
                },
            };
            match r {
                Ok(0) => break,
                Ok(n) => done += n,
                // EFAULT: memory the kernel could not read (the guest's, gone bad).
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EMSGSIZE | libc::EINVAL | libc::EFAULT)
                    ) =>
                {
                    self.stats.tx_dropped += 1;
                    done += 1;
                }
                Err(e) if sys::peer_gone(&e) => self.peer.tx_hung_up("fd", &e, &mut self.stats),
                Err(e) => return Err(Self::io("send")(e)),
            }
        }
        Ok(done)
    }
}

/// The opener of `transport=fd` (see [`crate::kind`]).
pub(crate) fn from_config(
    config: &TransportConfig,
    o: &Opening,
) -> Result<Box<dyn Transport>, TransportError> {
    let TransportConfig::Fd(c) = config else {
        return Err(super::wrong_config("fd"));
    };
    Ok(Box::new(Fd::open(c.fd, o.depth, o.vec)?))
}
