//! `transport=raw`: AF_PACKET on an existing interface (a veth end, a NIC), multi-packet both
//! ways. Copies of our own transmissions are dropped (UML's default filter compares source
//! MACs instead, which also drops legitimate frames and misses forwarded ones). Frames go out
//! through a second socket that only sends ([`PacketSender`] says why).

use std::os::fd::RawFd;

use super::bpf::BpfProgram;
use super::packet::{Direction, Fanout, PacketSender, PacketSocket};
use super::{
    Frames, GatherBatch, Offloads, PacketBatch, Transport, TransportError, TransportStats,
};
use super::{Opening, QueueGroup, QueueSlot, Steering};
use crate::config::TransportConfig;

pub struct Raw {
    /// Receives (and is in the pair's fanout group).
    sock: PacketSocket,
    /// Sends.
    tx: PacketSender,
    stats: TransportStats,
}

impl Raw {
    /// Opens pair `slot`'s socket: a socket of its own for a single-queue device; for several
    /// pairs, pair 0 makes a fanout group and the others join it (see
    /// [`super::fanout`]), every frame going to pair 0 until [`Raw::steer`] spreads them.
    pub fn open(
        ifname: &str,
        depth: usize,
        filter: Option<&BpfProgram>,
        slot: &QueueSlot,
    ) -> Result<Raw, TransportError> {
        let fanout = match (&slot.group, slot.count) {
            (_, 0 | 1) => Fanout::None,
            (QueueGroup::Fanout(id), _) => Fanout::Join(*id),
            _ => Fanout::Create,
        };
        let sock = PacketSocket::open(ifname, depth, Direction::Incoming, filter, fanout).map_err(
            |source| TransportError::Interface {
                transport: "raw",
                ifname: ifname.to_string(),
                source,
            },
        )?;
        let tx = PacketSender::open(ifname, depth).map_err(|source| TransportError::Interface {
            transport: "raw",
            ifname: ifname.to_string(),
            source,
        })?;
        if let Some(id) = sock.group() {
            log::info!(
                "raw: pair {} of {} on {ifname}, fanout group {id}",
                slot.index,
                slot.count
            );
        }
        Ok(Raw {
            sock,
            tx,
            stats: TransportStats::default(),
        })
    }
}

impl Transport for Raw {
    fn name(&self) -> &'static str {
        "raw"
    }

    fn vnet_hdr_len(&self) -> usize {
        super::vnet::HDR_LEN
    }

    fn rx_fd(&self) -> RawFd {
        self.sock.fd()
    }

    fn tx_fd(&self) -> RawFd {
        self.tx.fd()
    }

    fn recv(&mut self, batch: &mut PacketBatch) -> Result<usize, TransportError> {
        self.sock.recv_for("raw", batch, &mut self.stats)
    }

    fn send(&mut self, batch: &PacketBatch) -> Result<usize, TransportError> {
        send_all(&mut self.tx, batch, &mut self.stats.tx_dropped, "raw")
    }

    fn gathers(&self) -> bool {
        true
    }

    fn send_gather(&mut self, frames: &GatherBatch) -> Result<usize, TransportError> {
        send_all(&mut self.tx, frames, &mut self.stats.tx_dropped, "raw")
    }

    /// Nothing to mirror: the interface's own offloads are the host's business, and
    /// PACKET_VNET_HDR already tells us about partial and GSO frames.
    fn set_offloads(&mut self, _offloads: Offloads) -> Result<(), TransportError> {
        Ok(())
    }

    fn stats(&self) -> TransportStats {
        self.sock.stats_with(&self.stats)
    }

    fn replace_filter(&mut self, program: &BpfProgram) -> Result<(), TransportError> {
        self.sock.replace_filter_for("raw", program)
    }

    /// The group spreads flows over the pairs served from 0 on without a gap; the program is
    /// the group's, so whichever pair sees the count change replaces it.
    fn steer(&mut self, steering: Steering) -> Result<(), TransportError> {
        if self.sock.group().is_none() {
            return Ok(());
        }
        self.sock
            .spread(steering.leading.max(1))
            .map_err(|source| TransportError::Io {
                transport: "raw",
                op: "PACKET_FANOUT_DATA",
                source,
            })
    }

    fn queue_group(&self) -> QueueGroup {
        self.sock
            .group()
            .map_or(QueueGroup::None, QueueGroup::Fanout)
    }
}

/// Sends a whole batch through an AF_PACKET socket: a frame the kernel refuses outright
/// (EMSGSIZE, EINVAL: larger than the interface allows, a bad header; EFAULT: guest memory
/// the kernel could not read) or drops on the way (ENOBUFS: the device dropped it, as a veth
/// does when its peer's backlog is full; ENOMEM) is dropped and counted so one frame cannot
/// wedge the queue; a would-block stops and reports what was taken. Any other error would
/// leave the guest's ring stopped until its next kick, which a guest with a full ring never
/// sends.
pub fn send_all<F: Frames + ?Sized>(
    sock: &mut PacketSender,
    batch: &F,
    dropped: &mut u64,
    transport: &'static str,
) -> Result<usize, TransportError> {
    let mut done = 0;
    while done < batch.count() {
        match sock.send(batch, done) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(
                        libc::EMSGSIZE
                            | libc::EINVAL
                            | libc::ENETDOWN
                            | libc::ENXIO
                            | libc::EFAULT
                            | libc::ENOBUFS
                            | libc::ENOMEM
                    )
                ) =>
            {
                *dropped += 1;
                done += 1;
            }
            Err(source) => {
                return Err(TransportError::Io {
                    transport,
                    op: "sendmmsg",
                    source,
                })
            }
        }
    }
    Ok(done)
}

/// The opener of `transport=raw` (see [`crate::kind`]).
pub(crate) fn from_config(
    config: &TransportConfig,
    o: &Opening,
) -> Result<Box<dyn Transport>, TransportError> {
    let TransportConfig::Raw(c) = config else {
        return Err(super::wrong_config("raw"));
    };
    Ok(Box::new(Raw::open(
        &c.ifname,
        o.depth,
        o.filter.as_ref(),
        &o.queue,
    )?))
}
