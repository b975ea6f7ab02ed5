//! `transport=tap` and legacy `ethN=tuntap`: both directions through one tap descriptor.

use std::os::fd::RawFd;

use super::tapdev::TapDev;
use super::Opening;
use super::{GatherBatch, Offloads, PacketBatch, Transport, TransportError, TransportStats};
use crate::config::TransportConfig;

pub struct Tap {
    dev: TapDev,
    /// `vec=0` reads one packet per wake-up, like UML; otherwise up to the batch's depth.
    burst: usize,
    stats: TransportStats,
    name: &'static str,
    /// The tap's `tx_dropped` when we attached (a persistent tap keeps its counters).
    tx_dropped_at_open: u64,
}

/// The tap's own `tx_dropped`: frames the host sent towards us that the kernel dropped because
/// the tap's queue (`txqueuelen`) was full, i.e. lost before we could read them. A tap has no
/// socket counter: the interface's statistics are where the kernel counts them.
fn tap_tx_dropped(ifname: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/sys/class/net/{ifname}/statistics/tx_dropped"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

impl Tap {
    pub fn open(
        name: &'static str,
        ifname: Option<&str>,
        vec: bool,
    ) -> Result<Tap, TransportError> {
        let dev = TapDev::open(ifname).map_err(|source| TransportError::Interface {
            transport: name,
            ifname: ifname.unwrap_or("(new)").to_string(),
            source,
        })?;
        log::info!("{name}: attached to {}", dev.ifname());
        let tx_dropped_at_open = tap_tx_dropped(dev.ifname()).unwrap_or(0);
        Ok(Tap {
            dev,
            burst: if vec { usize::MAX } else { 1 },
            stats: TransportStats::default(),
            name,
            tx_dropped_at_open,
        })
    }
}

impl Transport for Tap {
    fn name(&self) -> &'static str {
        self.name
    }

    fn vnet_hdr_len(&self) -> usize {
        super::vnet::HDR_LEN
    }

    fn rx_fd(&self) -> RawFd {
        self.dev.fd()
    }

    fn tx_fd(&self) -> RawFd {
        self.dev.fd()
    }

    fn recv(&mut self, batch: &mut PacketBatch) -> Result<usize, TransportError> {
        let n = self
            .dev
            .recv(batch, self.burst, &mut self.stats.rx_dropped_truncated)
            .map_err(|source| TransportError::Io {
                transport: self.name,
                op: "read",
                source,
            })?;
        Ok(n)
    }

    fn send(&mut self, batch: &PacketBatch) -> Result<usize, TransportError> {
        self.dev.send(self.name, batch, &mut self.stats.tx_dropped)
    }

    fn gathers(&self) -> bool {
        true
    }

    fn send_gather(&mut self, frames: &GatherBatch) -> Result<usize, TransportError> {
        self.dev.send(self.name, frames, &mut self.stats.tx_dropped)
    }

    fn set_offloads(&mut self, offloads: Offloads) -> Result<(), TransportError> {
        self.dev
            .set_offloads(offloads)
            .map_err(|source| TransportError::Io {
                transport: self.name,
                op: "TUNSETOFFLOAD",
                source,
            })
    }

    fn stats(&self) -> TransportStats {
        TransportStats {
            rx_dropped_kernel: tap_tx_dropped(self.dev.ifname())
                .map_or(0, |n| n.saturating_sub(self.tx_dropped_at_open)),
            ..self.stats
        }
    }
}

/// The opener of `transport=tap` and `ethN=tuntap` (see [`crate::kind`]).
pub(crate) fn from_config(
    config: &TransportConfig,
    o: &Opening,
) -> Result<Box<dyn Transport>, TransportError> {
    Ok(Box::new(match config {
        TransportConfig::Tap(c) => Tap::open("tap", c.ifname.as_deref(), o.vec)?,
        TransportConfig::TunTap(c) => Tap::open("tuntap", Some(&c.ifname), o.vec)?,
        _ => return Err(super::wrong_config("tap")),
    }))
}
