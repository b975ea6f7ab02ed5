//! `transport=tap` and legacy `ethN=tuntap`: both directions through one tap descriptor.

use std::os::fd::RawFd;

use super::tapdev::TapDev;
use super::{Offloads, PacketBatch, Transport, TransportError, TransportStats};

pub struct Tap {
    dev: TapDev,
    /// `vec=0` reads one packet per wake-up, like UML; otherwise up to the batch's depth.
    burst: usize,
    stats: TransportStats,
    name: &'static str,
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
        Ok(Tap {
            dev,
            burst: if vec { usize::MAX } else { 1 },
            stats: TransportStats::default(),
            name,
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
        self.dev
            .send(batch, &mut self.stats.tx_dropped)
            .map_err(|source| TransportError::Io {
                transport: self.name,
                op: "write",
                source,
            })
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
        self.stats
    }
}
