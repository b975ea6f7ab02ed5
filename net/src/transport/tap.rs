//! `transport=tap` and legacy `ethN=tuntap`: both directions through one tap descriptor.

use std::os::fd::RawFd;

use super::tapdev::TapDev;
use super::{GatherBatch, Offloads, PacketBatch, Transport, TransportError, TransportStats};
use super::{Opening, QueueGroup, QueueSlot, Steering};
use crate::config::TransportConfig;

pub struct Tap {
    dev: TapDev,
    /// `vec=0` reads one packet per wake-up, like UML; otherwise up to the batch's depth.
    burst: usize,
    stats: TransportStats,
    name: &'static str,
    /// The tap's `tx_dropped` when we attached (a persistent tap keeps its counters).
    tx_dropped_at_open: u64,
    /// Which queue of the tap this is (`queues=N`); only queue 0 reports the interface's
    /// counters, which all queues share.
    queue: u16,
    multi_queue: bool,
    /// Whether the queue is attached (`TUNSETQUEUE`): the kernel hands it frames.
    attached: bool,
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
    /// Opens queue `slot` of tap `ifname` (a new one when `None` and this is queue 0). The
    /// queues of a multi-queue device after the first start detached: see [`Tap::steer`].
    pub fn open(
        name: &'static str,
        ifname: Option<&str>,
        vec: bool,
        slot: &QueueSlot,
    ) -> Result<Tap, TransportError> {
        let multi_queue = slot.count > 1;
        let ifname = match &slot.group {
            QueueGroup::Tap(first) => Some(first.as_str()),
            _ => ifname,
        };
        let shown = || ifname.unwrap_or("(new)").to_string();
        let dev = TapDev::open(ifname, multi_queue).map_err(|source| {
            if multi_queue && source.raw_os_error() == Some(libc::EINVAL) {
                TransportError::Invalid {
                    transport: name,
                    reason: format!(
                        "interface `{}`: queues={} needs a multi-queue tap, which the kernel \
                         says it is not (make it with `ip tuntap add dev {0} mode tap \
                         multi_queue`, or leave ifname out for a new one): {source}",
                        shown(),
                        slot.count
                    ),
                }
            } else {
                TransportError::Interface {
                    transport: name,
                    ifname: shown(),
                    source,
                }
            }
        })?;
        let io = |op, source| TransportError::Io {
            transport: name,
            op,
            source,
        };
        let attached = slot.index == 0;
        if !attached {
            dev.set_attached(false)
                .map_err(|e| io("TUNSETQUEUE (detach)", e))?;
        }
        if multi_queue {
            log::info!(
                "{name}: queue {} of {} attached to {}",
                slot.index,
                slot.count,
                dev.ifname()
            );
        } else {
            log::info!("{name}: attached to {}", dev.ifname());
        }
        // Only queue 0 reports the interface's counter (see `stats`).
        let tx_dropped_at_open = if slot.index == 0 {
            tap_tx_dropped(dev.ifname()).unwrap_or(0)
        } else {
            0
        };
        Ok(Tap {
            dev,
            burst: if vec { usize::MAX } else { 1 },
            stats: TransportStats::default(),
            name,
            tx_dropped_at_open,
            queue: slot.index,
            multi_queue,
            attached,
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

    fn scatters(&self) -> bool {
        true
    }

    /// A tap hands over one frame per read, and cuts one longer than the buffers while
    /// returning its whole length: such a frame is counted here (`rx_dropped_truncated`, as
    /// [`TapDev::recv`] counts it) and dropped by the caller.
    unsafe fn recv_into(&mut self, iovs: &[libc::iovec]) -> Result<Option<usize>, TransportError> {
        let total: usize = iovs.iter().map(|v| v.iov_len).sum();
        // SAFETY: the caller vouches for the iovecs.
        match unsafe { self.dev.recv_into(iovs) } {
            Ok(Some(len)) if len >= total => {
                self.stats.rx_dropped_truncated += 1;
                Ok(Some(len))
            }
            Ok(r) => Ok(r),
            Err(source) => Err(TransportError::Io {
                transport: self.name,
                op: "readv",
                source,
            }),
        }
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

    /// Offloads are the tap's, not a queue's: set through an attached queue (the kernel refuses
    /// the call on a detached one). Queue 0 is always attached and sets them for all.
    fn set_offloads(&mut self, offloads: Offloads) -> Result<(), TransportError> {
        if !self.attached {
            return Ok(());
        }
        self.dev
            .set_offloads(offloads)
            .map_err(|source| TransportError::Io {
                transport: self.name,
                op: "TUNSETOFFLOAD",
                source,
            })
    }

    fn stats(&self) -> TransportStats {
        let interface = if self.queue == 0 {
            tap_tx_dropped(self.dev.ifname())
        } else {
            None
        };
        TransportStats {
            rx_dropped_kernel: interface.map_or(0, |n| n.saturating_sub(self.tx_dropped_at_open)),
            ..self.stats
        }
    }

    /// A queue is attached while its pair's receive ring is served, detached otherwise, so
    /// the kernel never hashes a flow onto a queue nobody reads. Queue 0 stays attached.
    fn steer(&mut self, steering: Steering) -> Result<(), TransportError> {
        let attach = self.queue == 0 || steering.served;
        if !self.multi_queue || attach == self.attached {
            return Ok(());
        }
        self.dev
            .set_attached(attach)
            .map_err(|source| TransportError::Io {
                transport: self.name,
                op: "TUNSETQUEUE",
                source,
            })?;
        self.attached = attach;
        Ok(())
    }

    fn queue_group(&self) -> QueueGroup {
        QueueGroup::Tap(self.dev.ifname().to_string())
    }
}

/// The opener of `transport=tap` and `ethN=tuntap` (see [`crate::kind`]).
pub(crate) fn from_config(
    config: &TransportConfig,
    o: &Opening,
) -> Result<Box<dyn Transport>, TransportError> {
    Ok(Box::new(match config {
        TransportConfig::Tap(c) => Tap::open("tap", c.ifname.as_deref(), o.vec, &o.queue)?,
        TransportConfig::TunTap(c) => Tap::open("tuntap", Some(&c.ifname), o.vec, &o.queue)?,
        _ => return Err(super::wrong_config("tap")),
    }))
}
