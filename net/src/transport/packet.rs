//! AF_PACKET sockets bound to one interface, with `PACKET_VNET_HDR` (always: the header tells
//! the backend about partial checksums and GSO frames, which an AF_PACKET socket can see even
//! when we asked for no offloads) and multi-packet I/O: [`PacketSocket`] receives, through an
//! optional classic BPF filter; [`PacketSender`] sends.

use std::cell::Cell;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use super::bpf::BpfProgram;
use super::sys::{self, Mmsg, RecvMeta};
use super::{Frames, PacketBatch, TransportError, TransportStats};

/// Which frames the socket keeps, by `sll_pkttype`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Frames arriving on the interface (raw: our own transmissions are dropped).
    Incoming,
    /// Frames the host transmits on the interface (hybrid: what the host sends to the tap).
    Outgoing,
}

/// Whether the socket is one of a fanout group (a multi-queue `raw` device: see
/// [`super::fanout`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fanout {
    /// A socket of its own.
    None,
    /// The first socket of a new group.
    Create,
    /// A socket joining group `id`.
    Join(u16),
}

pub struct PacketSocket {
    fd: OwnedFd,
    /// The fanout group this socket is in, if any.
    group: Option<u16>,
    mmsg: Mmsg,
    keep: Direction,
    drops: KernelDrops,
}

/// Frames the kernel dropped on an AF_PACKET socket (its receive queue was full), summed:
/// `PACKET_STATISTICS` resets on every read, so each read is added here. A `Cell` because
/// the statistics are read through `&self` ([`super::Transport::stats`]).
#[derive(Debug, Default)]
pub struct KernelDrops(Cell<u64>);

impl KernelDrops {
    /// Adds what the kernel dropped since the previous read; returns the total.
    pub fn read(&self, fd: RawFd) -> u64 {
        let total = self.0.get() + sys::packet_drops(fd).map_or(0, u64::from);
        self.0.set(total);
        total
    }
}

impl PacketSocket {
    /// Opens the socket on `ifname`. The socket is made with protocol 0 (it receives nothing)
    /// and only starts receiving at `bind`, after the filter is attached, so no frame from
    /// another interface or one the filter rejects is ever queued. A socket of a fanout group
    /// binds with a filter that drops everything, joins the group (which needs a bound
    /// socket), and only then takes its real filter: between bind and join it would be a
    /// socket of its own, getting copies of frames the group also gets.
    pub fn open(
        ifname: &str,
        depth: usize,
        keep: Direction,
        filter: Option<&BpfProgram>,
        fanout: Fanout,
    ) -> io::Result<PacketSocket> {
        let index = sys::ifindex(ifname)?;
        let fd = sys::socket(libc::AF_PACKET, libc::SOCK_RAW, 0)?;
        let raw = fd.as_raw_fd();
        sys::setsockopt_int(raw, libc::SOL_PACKET, libc::PACKET_VNET_HDR, 1)?;
        // Best effort: skipping the qdisc is a speed-up, not a requirement.
        let _ = sys::setsockopt_int(raw, libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, 1);
        if keep == Direction::Incoming {
            // Linux >= 4.20; the pkttype check in `recv` covers older kernels.
            let _ = sys::setsockopt_int(raw, libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, 1);
        }
        sys::widen_rcvbuf(&format!("packet socket on {ifname}"), raw);
        let prog = Self::compose(keep, filter)?;
        if fanout == Fanout::None {
            if let Some(prog) = &prog {
                sys::attach_filter(raw, prog.instructions())?;
            }
            sys::bind_packet(raw, index)?;
        } else {
            const DROP_ALL: libc::sock_filter = libc::sock_filter {
                code: 0x06,
                jt: 0,
                jf: 0,
                k: 0,
            };
            sys::attach_filter(raw, &[DROP_ALL])?;
            sys::bind_packet(raw, index)?;
        }
        let group = match fanout {
            Fanout::None => None,
            Fanout::Create => Some(super::fanout::create(raw)?),
            Fanout::Join(id) => {
                super::fanout::join(raw, id)?;
                Some(id)
            }
        };
        if group.is_some() {
            match &prog {
                Some(prog) => sys::attach_filter(raw, prog.instructions())?,
                None => sys::detach_filter(raw)?,
            }
        }
        Ok(PacketSocket {
            fd,
            group,
            mmsg: Mmsg::new(depth),
            keep,
            drops: KernelDrops::default(),
        })
    }

    /// The program the kernel runs for `keep` and the user's `filter`, `None` for none.
    ///
    /// Hybrid keeps only what the host transmits: checking the direction in the kernel spares
    /// a copy of every frame we inject through the tap (which the socket sees as incoming),
    /// 64 KiB each with TSO. Raw's own transmissions are kept out by `PACKET_IGNORE_OUTGOING`,
    /// a socket option no filter replaces. The check in `recv` stays as a second line for both.
    fn compose(
        keep: Direction,
        filter: Option<&BpfProgram>,
    ) -> io::Result<Option<std::borrow::Cow<'_, BpfProgram>>> {
        use std::borrow::Cow;
        Ok(match keep {
            Direction::Outgoing => Some(Cow::Owned(
                BpfProgram::only_pkttype(libc::PACKET_OUTGOING, filter)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?,
            )),
            Direction::Incoming => filter.map(Cow::Borrowed),
        })
    }

    /// Replaces the receive filter with `filter`, composed with the direction check as at
    /// open (`SO_ATTACH_FILTER` swaps programs atomically: every frame meets the old filter
    /// or the new one). Frames already queued passed the old filter and stay queued. On an
    /// error (the kernel's verifier refused the program) the old filter stays.
    pub fn set_filter(&mut self, filter: &BpfProgram) -> io::Result<()> {
        let prog = Self::compose(self.keep, Some(filter))?.expect("a filter was given");
        sys::attach_filter(self.fd(), prog.instructions())
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// The fanout group this socket is in, if any.
    pub fn group(&self) -> Option<u16> {
        self.group
    }

    /// Spreads the group's flows over its first `pairs` sockets (see [`super::fanout`]).
    pub fn spread(&self, pairs: u16) -> io::Result<()> {
        super::fanout::set_pairs(self.fd(), pairs)
    }

    /// [`PacketSocket::recv`] as `transport`'s [`Transport::recv`](super::Transport::recv):
    /// truncated frames counted in `stats`, an error named after the transport.
    pub fn recv_for(
        &mut self,
        transport: &'static str,
        batch: &mut PacketBatch,
        stats: &mut TransportStats,
    ) -> Result<usize, TransportError> {
        self.recv(batch, &mut stats.rx_dropped_truncated)
            .map_err(|source| TransportError::Io {
                transport,
                op: "recvmmsg",
                source,
            })
    }

    /// `stats` with the kernel's drops on this socket.
    pub fn stats_with(&self, stats: &TransportStats) -> TransportStats {
        TransportStats {
            rx_dropped_kernel: self.kernel_drops(),
            ..*stats
        }
    }

    /// [`PacketSocket::set_filter`] as `transport`'s
    /// [`Transport::replace_filter`](super::Transport::replace_filter).
    pub fn replace_filter_for(
        &mut self,
        transport: &'static str,
        program: &BpfProgram,
    ) -> Result<(), TransportError> {
        self.set_filter(program)
            .map_err(|source| TransportError::Io {
                transport,
                op: "SO_ATTACH_FILTER",
                source,
            })
    }

    /// Receives a batch, keeping only whole frames of the wanted direction, in order.
    /// `dropped_trunc` counts frames larger than a buffer.
    pub fn recv(&mut self, batch: &mut PacketBatch, dropped_trunc: &mut u64) -> io::Result<usize> {
        let keep = self.keep;
        let wanted = |m: &RecvMeta| {
            let outgoing = m.pkttype == libc::PACKET_OUTGOING;
            match keep {
                Direction::Incoming => !outgoing,
                Direction::Outgoing => outgoing,
            }
        };
        let fd = self.fd.as_raw_fd();
        loop {
            let (got, kept) = match self.mmsg.recv(fd, batch, wanted, dropped_trunc) {
                Ok(r) => r,
                // A packet socket reports ENETDOWN once when its interface goes (or was)
                // down: a link event, not a failure. With edge-triggered polling an error here
                // would leave frames queued behind it unread until the next arrival.
                Err(e) if e.raw_os_error() == Some(libc::ENETDOWN) => continue,
                Err(e) => return Err(e),
            };
            // A batch made only of dropped frames: look again rather than report "nothing
            // waiting" while more may be queued.
            if kept > 0 || got == 0 {
                return Ok(kept);
            }
        }
    }

    /// Frames the kernel dropped for us so far.
    pub fn kernel_drops(&self) -> u64 {
        self.drops.read(self.fd())
    }
}

/// An AF_PACKET socket on one interface that only sends (bound to protocol 0: the kernel
/// queues nothing to it and runs nothing for it on receive), with `PACKET_VNET_HDR` as
/// [`PacketSocket`] has.
///
/// Why `raw` sends through one of these and not through its receiving socket: the receiving
/// socket is always on the worker's epoll, and a socket on an epoll has a sleeper on its wait
/// queue, which every transmitted frame's buffer, freed, then wakes (`sock_def_write_space`
/// takes the queue's lock even when the epoll does not listen for writability). This one is
/// on the epoll only while the host refuses frames (`backend::watch`).
pub struct PacketSender {
    fd: OwnedFd,
    mmsg: Mmsg,
}

impl PacketSender {
    /// Opens the sender on `ifname`, `depth` frames per call.
    pub fn open(ifname: &str, depth: usize) -> io::Result<PacketSender> {
        let index = sys::ifindex(ifname)?;
        let fd = sys::socket(libc::AF_PACKET, libc::SOCK_RAW, 0)?;
        let raw = fd.as_raw_fd();
        sys::setsockopt_int(raw, libc::SOL_PACKET, libc::PACKET_VNET_HDR, 1)?;
        // Best effort, as for PacketSocket.
        let _ = sys::setsockopt_int(raw, libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, 1);
        sys::bind_packet_protocol(raw, index, 0)?;
        Ok(PacketSender {
            fd,
            mmsg: Mmsg::new(depth),
        })
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Sends the frames from `start`; returns how many the kernel took.
    pub fn send<F: Frames + ?Sized>(&mut self, frames: &F, start: usize) -> io::Result<usize> {
        self.mmsg.send(self.fd(), frames, start, None)
    }
}
