//! `transport=xdp`: AF_XDP sockets on the receive queues of an existing interface (QEMU 8.2's
//! `-netdev af-xdp`, in our vector form): queue pair N of the device serves receive queue N.
//!
//! Frames arriving on those queues are redirected to the sockets by our XDP program
//! ([`super::xdp_prog`]) before the host's stack sees them; frames the guest sends are copied
//! into the socket's UMEM and handed straight to the driver, past the qdisc and the packet
//! taps. Both save the per-frame work of an AF_PACKET socket's `recvmmsg`/`sendmmsg`, which
//! is what bounds `transport=raw`'s packet rate. There is no `virtio_net_hdr` on this path:
//! the backend segments in software, and with `gro=1` coalesces, as on the tunnels.
//!
//! With `queues=N`, which queue a frame arrives on is the NIC's choice (its RSS hash, or a
//! veth's transmit queue on the other end), not ours: a frame can only be redirected to the
//! socket bound to its own queue. While the guest does not serve a pair, its queue's frames
//! are dropped and counted as unserved, not moved to another pair. `ethtool -L IF combined N`
//! makes the NIC use only as many queues as the guest serves.

use std::os::fd::RawFd;
use std::sync::Arc;

use super::sys;
use super::xdp_prog::Redirect;
use super::xsk::{Geometry, Xsk};
use super::{
    Frames, GatherBatch, Offloads, Opening, PacketBatch, QueueGroup, QueueSlot, Steering,
    Transport, TransportError, TransportStats,
};
use crate::config::{TransportConfig, XdpMode};

const NAME: &str = "xdp";

/// The program and socket map of a device, shared by its queue pairs' transports: the
/// program stays on the interface until the last of them is gone.
#[derive(Clone, Debug)]
pub struct Shared(Arc<Redirect>);

/// Two handles are equal when they are the same attachment.
impl PartialEq for Shared {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Shared {}

pub struct Xdp {
    // Declaration order is drop order: this pair's hold on the program goes before its
    // socket closes (the last pair's drop detaches it).
    redirect: Shared,
    xsk: Xsk,
    /// The receive queue this pair serves (its pair number).
    queue: u32,
    stats: TransportStats,
    /// Received frames whose partial checksum we completed (logged when the transport goes).
    checksums_completed: u64,
    /// The guest has left this pair unserved since we last said so (logged once per change).
    unserved_said: bool,
}

impl Drop for Xdp {
    fn drop(&mut self) {
        if self.checksums_completed > 0 {
            log::info!(
                "xdp: completed {} checksums that senders had left partial",
                self.checksums_completed
            );
        }
    }
}

/// The UMEM for one of `pairs` queue pairs of a device of `mtu` moving `depth` frames per
/// call: chunks of 2 KiB where a frame fits (4 KiB otherwise), twice `depth` of them each way
/// (64 to 256), so the kernel can fill one batch while we copy out the last; divided among
/// the pairs (at least 16 each way a pair), so a device's UMEMs stay within 512 KiB at MTU
/// 1500 for up to 4 pairs, and 1 MiB for 16.
pub fn geometry(mtu: u16, depth: usize, pairs: u16) -> Geometry {
    let frame = u32::from(mtu) + 18;
    let chunk = if frame + super::xsk::XDP_HEADROOM <= 2048 {
        2048
    } else {
        4096
    };
    let device = (2 * depth).next_power_of_two().clamp(64, 256) as u32;
    let frames = (device / u32::from(pairs.max(1)).next_power_of_two()).max(16);
    Geometry {
        chunk,
        rx: frames,
        tx: frames,
    }
}

impl Xdp {
    pub fn open(
        ifname: &str,
        mode: XdpMode,
        mtu: u16,
        depth: usize,
        slot: &QueueSlot,
    ) -> Result<Xdp, TransportError> {
        let interface = |source| TransportError::Interface {
            transport: NAME,
            ifname: ifname.to_string(),
            source,
        };
        let invalid = |reason: String| TransportError::Invalid {
            transport: NAME,
            reason: format!("interface `{ifname}`: {reason}"),
        };
        let ifindex = sys::ifindex(ifname).map_err(interface)? as u32;
        let pairs = slot.count.max(1);
        let queue = u32::from(slot.index);
        // Pair 0 checks the interface for the device; the others join what it checked.
        let queues = if queue == 0 { rx_queues(ifname) } else { None };
        if let Some(n) = queues {
            if u32::from(pairs) > n {
                return Err(invalid(format!(
                    "queues={pairs} needs {pairs} receive queues and it has {n} (`ethtool -l \
                     {ifname}` shows them; a veth takes `numrxqueues` when it is made)"
                )));
            }
        }
        let xsk = Xsk::open(ifindex, queue, geometry(mtu, depth, pairs)).map_err(interface)?;
        let redirect = match &slot.group {
            QueueGroup::Xdp(shared) => shared.clone(),
            _ => Shared(Arc::new(
                Redirect::attach(ifindex, u32::from(pairs), mode)
                    .map_err(|e| invalid(e.to_string()))?,
            )),
        };
        redirect
            .0
            .insert(queue, xsk.fd())
            .map_err(|e| invalid(e.to_string()))?;
        let g = xsk.geometry();
        log::info!(
            "xdp: {ifname} queue {queue}, {} hook, {}, UMEM {} KiB ({} + {} chunks of {} bytes)",
            redirect.0.mode(),
            if xsk.zero_copy() {
                "zero-copy"
            } else {
                "copying"
            },
            g.umem_len() / 1024,
            g.rx,
            g.tx,
            g.chunk
        );
        match queues {
            Some(n) if n > u32::from(pairs) => log::warn!(
                "xdp: {ifname} has {n} receive queues and only the first {pairs} reach the \
                 guest (the others' frames go to the host's stack): `ethtool -L {ifname} \
                 combined {pairs}` steers everything to them"
            ),
            _ => {}
        }
        Ok(Xdp {
            redirect,
            xsk,
            queue,
            stats: TransportStats::default(),
            checksums_completed: 0,
            unserved_said: false,
        })
    }

    fn send_frames<F: Frames + ?Sized>(&mut self, frames: &F) -> Result<usize, TransportError> {
        self.xsk
            .send(frames, &mut self.stats.tx_dropped)
            .map_err(|source| TransportError::Io {
                transport: NAME,
                op: "sendto",
                source,
            })
    }
}

impl Transport for Xdp {
    fn name(&self) -> &'static str {
        NAME
    }

    fn vnet_hdr_len(&self) -> usize {
        0
    }

    fn rx_fd(&self) -> RawFd {
        self.xsk.fd()
    }

    /// The sending socket, apart from the receiving one so that the worker's epoll sits on
    /// it only while frames wait ([`super::xsk`]).
    fn tx_fd(&self) -> RawFd {
        self.xsk.tx_fd()
    }

    /// Copies what the rx ring holds into the batch, completing checksums the sender left
    /// partial ([`super::csum`]); a frame larger than a batch buffer is dropped and counted.
    /// Reads on while everything read so far was dropped, so a 0 means the ring is empty.
    fn recv(&mut self, batch: &mut PacketBatch) -> Result<usize, TransportError> {
        batch.clear();
        let truncated = &mut self.stats.rx_dropped_truncated;
        let completed = &mut self.checksums_completed;
        loop {
            let room = batch.depth() - batch.count();
            let taken = self.xsk.receive(room, |frame| match batch.next_free() {
                Some(buf) if frame.len() <= buf.capacity() => {
                    let len = frame.len();
                    buf.space()[..len].copy_from_slice(frame);
                    buf.set_len(len);
                    if super::csum::complete_partial(&mut buf.space()[..len]) {
                        *completed += 1;
                    }
                    batch.commit();
                }
                _ => *truncated += 1,
            });
            if taken == 0 || batch.count() > 0 {
                return Ok(batch.count());
            }
        }
    }

    fn send(&mut self, batch: &PacketBatch) -> Result<usize, TransportError> {
        self.send_frames(batch)
    }

    /// The guest's buffers are copied straight into the UMEM: no batch in between.
    fn gathers(&self) -> bool {
        true
    }

    fn send_gather(&mut self, frames: &GatherBatch) -> Result<usize, TransportError> {
        self.send_frames(frames)
    }

    /// No header crosses this transport: the backend does the guest's offloads itself.
    fn set_offloads(&mut self, _offloads: Offloads) -> Result<(), TransportError> {
        Ok(())
    }

    fn buffer_bytes(&self) -> usize {
        self.xsk.geometry().umem_len()
    }

    fn queue_group(&self) -> QueueGroup {
        QueueGroup::Xdp(self.redirect.clone())
    }

    /// Frames cannot be steered away from a queue (a frame goes only to the socket bound to
    /// the queue it arrived on): while the guest leaves pair K (K > 0) unserved, the frames
    /// the interface puts on receive queue K are dropped and counted (`rx_dropped_unserved`),
    /// not moved to another pair. This says so in the log (info: a frontend that goes away
    /// leaves every pair unserved too), once per such spell.
    fn steer(&mut self, steering: Steering) -> Result<(), TransportError> {
        if steering.served {
            self.unserved_said = false;
        } else if self.queue > 0 && !self.unserved_said {
            self.unserved_said = true;
            log::info!(
                "xdp: the guest does not serve pair {q}: the frames the interface puts on \
                 receive queue {q} are dropped and counted (rx_dropped_unserved) until it \
                 does; `ethtool -L IF combined K` makes the NIC use only the K queues the \
                 guest serves",
                q = self.queue,
            );
        }
        Ok(())
    }

    fn stats(&self) -> TransportStats {
        let mut s = self.stats;
        if let Ok(k) = self.xsk.stats() {
            s.rx_dropped_kernel += k.rx_dropped + k.rx_ring_full;
            s.tx_dropped += k.tx_invalid;
        }
        s
    }
}

/// `struct ethtool_channels`.
#[repr(C)]
#[derive(Default)]
struct Channels {
    cmd: u32,
    max_rx: u32,
    max_tx: u32,
    max_other: u32,
    max_combined: u32,
    rx_count: u32,
    tx_count: u32,
    other_count: u32,
    combined_count: u32,
}

/// `SIOCETHTOOL` on `ifname` with the command structure `data` (its first field the
/// command); false where the driver does not answer.
fn ethtool<T>(ifname: &str, data: &mut T) -> bool {
    let Ok(sock) = sys::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) else {
        return false;
    };
    // SAFETY: ifreq is integers, arrays and a pointer union, for which all-zero is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let Ok(name) = sys::ifname_bytes(ifname) else {
        return false;
    };
    req.ifr_name = name;
    req.ifr_ifru.ifru_data = (data as *mut T).cast();
    // SAFETY: SIOCETHTOOL reads the request and writes the command structure `data` points
    // at, which is the right one for its command and outlives the call.
    let ret = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&sock),
            libc::SIOCETHTOOL,
            &mut req,
        )
    };
    ret == 0
}

/// How many receive queues `ifname` has (`ETHTOOL_GCHANNELS`), where its driver says.
fn rx_queues(ifname: &str) -> Option<u32> {
    let mut channels = Channels {
        cmd: 0x3c, // ETHTOOL_GCHANNELS
        ..Channels::default()
    };
    ethtool(ifname, &mut channels).then_some(channels.rx_count + channels.combined_count)
}

/// The opener of `transport=xdp` (see [`crate::kind`]).
pub(crate) fn from_config(
    config: &TransportConfig,
    o: &Opening,
) -> Result<Box<dyn Transport>, TransportError> {
    let TransportConfig::Xdp(c) = config else {
        return Err(super::wrong_config(NAME));
    };
    Ok(Box::new(Xdp::open(
        &c.ifname, c.mode, o.mtu, o.depth, &o.queue,
    )?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_fit_the_mtu_and_stay_small() {
        let g = geometry(1500, 64, 1);
        assert_eq!((g.chunk, g.rx, g.tx), (2048, 128, 128));
        assert!(g.frame_room() >= 1518);
        assert_eq!(g.umem_len(), 512 * 1024);
        let g = geometry(crate::config::XDP_MAX_MTU, 256, 1);
        assert_eq!(g.chunk, 4096);
        assert!(g.frame_room() >= usize::from(crate::config::XDP_MAX_MTU) + 18);
        assert!(g.umem_len() <= 2 * 1024 * 1024);
        assert_eq!(geometry(1500, 1, 1).rx, 64);
    }

    /// A device's pairs share its UMEM budget, down to 16 chunks each way a pair.
    #[test]
    fn pairs_share_the_devices_umem() {
        for (pairs, per_pair) in [(2, 64), (3, 32), (4, 32), (8, 16), (16, 16)] {
            let g = geometry(1500, 64, pairs);
            assert_eq!((g.rx, g.tx), (per_pair, per_pair), "{pairs} pairs");
            assert!(g.rx.is_power_of_two());
            assert!(
                g.umem_len() * usize::from(pairs) <= 1024 * 1024,
                "{pairs} pairs"
            );
        }
        assert_eq!(geometry(1500, 64, 2).umem_len() * 2, 512 * 1024);
    }
}
