//! `transport=hybrid`: transmit through a tap, receive through AF_PACKET on the same tap.
//!
//! What the host sends towards the guest is *transmitted* on the tap, so the packet socket
//! keeps `PACKET_OUTGOING` frames; the frames we inject through the tap descriptor appear on it
//! as incoming and are dropped. The tap descriptor's own receive queue is never read: the
//! kernel drops from it when full, as it does for UML.

use std::os::fd::RawFd;

use super::bpf::BpfProgram;
use super::packet::{Direction, Fanout, PacketSocket};
use super::tapdev::TapDev;
use super::Opening;
use super::{GatherBatch, Offloads, PacketBatch, Transport, TransportError, TransportStats};
use crate::config::TransportConfig;

pub struct Hybrid {
    tap: TapDev,
    sock: PacketSocket,
    stats: TransportStats,
}

impl Hybrid {
    pub fn open(
        ifname: &str,
        depth: usize,
        filter: Option<&BpfProgram>,
    ) -> Result<Hybrid, TransportError> {
        let err = |source| TransportError::Interface {
            transport: "hybrid",
            ifname: ifname.to_string(),
            source,
        };
        let tap = TapDev::open(Some(ifname), false).map_err(err)?;
        let sock = PacketSocket::open(ifname, depth, Direction::Outgoing, filter, Fanout::None)
            .map_err(err)?;
        Ok(Hybrid {
            tap,
            sock,
            stats: TransportStats::default(),
        })
    }
}

impl Transport for Hybrid {
    fn name(&self) -> &'static str {
        "hybrid"
    }

    fn vnet_hdr_len(&self) -> usize {
        super::vnet::HDR_LEN
    }

    fn rx_fd(&self) -> RawFd {
        self.sock.fd()
    }

    fn tx_fd(&self) -> RawFd {
        self.tap.fd()
    }

    fn recv(&mut self, batch: &mut PacketBatch) -> Result<usize, TransportError> {
        self.sock.recv_for("hybrid", batch, &mut self.stats)
    }

    fn send(&mut self, batch: &PacketBatch) -> Result<usize, TransportError> {
        self.tap.send("hybrid", batch, &mut self.stats.tx_dropped)
    }

    fn gathers(&self) -> bool {
        true
    }

    fn send_gather(&mut self, frames: &GatherBatch) -> Result<usize, TransportError> {
        self.tap.send("hybrid", frames, &mut self.stats.tx_dropped)
    }

    /// The tap's offloads decide what the host may transmit on it, and so what the packet
    /// socket sees.
    fn set_offloads(&mut self, offloads: Offloads) -> Result<(), TransportError> {
        self.tap
            .set_offloads(offloads)
            .map_err(|source| TransportError::Io {
                transport: "hybrid",
                op: "TUNSETOFFLOAD",
                source,
            })
    }

    fn stats(&self) -> TransportStats {
        self.sock.stats_with(&self.stats)
    }

    fn replace_filter(&mut self, program: &BpfProgram) -> Result<(), TransportError> {
        self.sock.replace_filter_for("hybrid", program)
    }
}

/// The opener of `transport=hybrid` (see [`crate::kind`]).
pub(crate) fn from_config(
    config: &TransportConfig,
    o: &Opening,
) -> Result<Box<dyn Transport>, TransportError> {
    let TransportConfig::Hybrid(c) = config else {
        return Err(super::wrong_config("hybrid"));
    };
    Ok(Box::new(Hybrid::open(
        &c.ifname,
        o.depth,
        o.filter.as_ref(),
    )?))
}
