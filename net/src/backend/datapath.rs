//! Frames between a frontend's virtqueues and a transport.
//!
//! Receive (transport → guest, queue 0): a batch from the transport is written into the
//! guest's buffers, each frame after a `virtio_net_hdr` (12 bytes with VERSION_1), spread over
//! several buffers with MRG_RXBUF. When the guest has no buffers, the frames wait here and the
//! transport is not read again until the guest posts buffers: nothing is dropped for lack of
//! room, and backpressure reaches the host side's socket.
//!
//! Transmit (guest → transport, queue 1): chains are copied into a batch (the guest gets its
//! buffers back at once) and sent with one multi-packet call. When the host would block, the
//! rest of the batch waits for the descriptor to become writable and no more chains are taken.
//!
//! The guest is hostile: a descriptor outside guest memory, in the wrong direction, too short
//! for a header, or a chain too long for a frame makes that chain come back empty and is
//! counted; nothing panics and nothing blocks. No heap allocation per packet: descriptors are
//! walked directly (virtio-queue's Reader/Writer allocate per chain).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::features::Negotiated;
use crate::transport::vnet::{self, VnetHdr};
use crate::transport::{PacketBatch, Transport, TransportError};

/// Counters of one device, shared with whoever wants to report them.
#[derive(Debug, Default)]
pub struct NetStats {
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    /// Received frames dropped: too big for the guest's buffer without MRG_RXBUF.
    pub rx_dropped_too_big: AtomicU64,
    /// Received GSO frames the guest did not agree to take (no GUEST_TSO4/6).
    pub rx_dropped_gso: AtomicU64,
    /// Partial checksums completed in software for a guest without GUEST_CSUM.
    pub rx_csum_completed: AtomicU64,
    /// Received frames with a header that makes no sense (offsets outside the frame).
    pub rx_dropped_bad_header: AtomicU64,
    /// Descriptor chains that were malformed (bad address, wrong direction, too short).
    pub bad_chains: AtomicU64,
    /// Transmitted frames dropped: larger than a buffer, or shorter than an Ethernet header.
    pub tx_dropped_bad_size: AtomicU64,
}

impl NetStats {
    fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// One line for the log.
    pub fn summary(&self) -> String {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "rx {} pkts {} bytes, tx {} pkts {} bytes; dropped: rx too-big {} gso {} bad-header {}, tx bad-size {}; bad chains {}; csum completed {}",
            g(&self.rx_packets),
            g(&self.rx_bytes),
            g(&self.tx_packets),
            g(&self.tx_bytes),
            g(&self.rx_dropped_too_big),
            g(&self.rx_dropped_gso),
            g(&self.rx_dropped_bad_header),
            g(&self.tx_dropped_bad_size),
            g(&self.bad_chains),
            g(&self.rx_csum_completed),
        )
    }
}

/// What happened to one received frame.
enum Delivery {
    Delivered,
    Dropped,
    /// The guest has no (or not enough) buffers: try again after it posts more.
    NoBuffers,
}

/// Bytes a batch buffer holds: a transport header, the largest frame, headroom to spare.
pub fn buffer_capacity(headroom: u16) -> usize {
    vnet::HDR_LEN + 65_535 + 14 + usize::from(headroom)
}

/// The datapath of one device. It outlives frontend connections, as the transport does.
pub struct Datapath {
    transport: Box<dyn Transport>,
    /// Frames received from the transport; `rx_next` is the first not yet delivered.
    rx: PacketBatch,
    rx_next: usize,
    /// Frames taken from the guest, not yet accepted by the transport.
    tx: PacketBatch,
    negotiated: Negotiated,
    /// Descriptors (address, length) of the first chain of the frame being received, to patch
    /// `num_buffers` once the frame's buffers are counted. Capacity kept across frames.
    first_chain: Vec<(GuestAddress, usize)>,
    /// Chains used by the frame being received (head, bytes written). Capacity kept.
    used: Vec<(u16, u32)>,
    stats: Arc<NetStats>,
}

impl Datapath {
    pub fn new(transport: Box<dyn Transport>, depth: usize, headroom: u16) -> Datapath {
        let cap = buffer_capacity(headroom);
        Datapath {
            transport,
            rx: PacketBatch::new(depth, cap),
            rx_next: 0,
            tx: PacketBatch::new(depth, cap),
            negotiated: Negotiated::default(),
            first_chain: Vec::with_capacity(64),
            used: Vec::with_capacity(64),
            stats: Arc::new(NetStats::default()),
        }
    }

    pub fn transport(&self) -> &dyn Transport {
        self.transport.as_ref()
    }

    pub fn stats(&self) -> Arc<NetStats> {
        self.stats.clone()
    }

    /// Applies what the guest negotiated, mirroring its receive offloads on the host side.
    pub fn set_negotiated(&mut self, n: Negotiated) -> Result<(), TransportError> {
        self.negotiated = n;
        self.transport.set_offloads(n.rx)
    }

    /// Forgets frames that were waiting for the previous frontend's buffers (its memory is
    /// gone) and the transmit leftovers (already returned to it). Called between frontends.
    pub fn reset(&mut self) {
        let pending = self.rx.count() - self.rx_next.min(self.rx.count()) + self.tx.count();
        if pending > 0 {
            log::info!(
                "{}: {pending} frames pending at disconnect dropped",
                self.transport.name()
            );
        }
        self.rx.clear();
        self.rx_next = 0;
        self.tx.clear();
        self.negotiated = Negotiated::default();
    }

    /// Moves frames from the transport to the guest until the transport is drained or the
    /// guest is out of buffers. Returns whether the guest must be notified.
    pub fn process_rx(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<bool, TransportError> {
        let mut delivered = false;
        // Whether we already looked again after the guest's ring claimed more buffers without
        // yielding any: a hostile avail index (more than a ring ahead) makes enable_notification
        // report work that pop never returns, so we retry once, then wait for the next kick.
        let mut rechecked = false;
        loop {
            if self.rx_next >= self.rx.count() {
                self.rx_next = 0;
                if self.transport.recv(&mut self.rx)? == 0 {
                    break;
                }
            }
            while self.rx_next < self.rx.count() {
                match self.deliver(self.rx_next, queue, mem) {
                    Delivery::Delivered => {
                        delivered = true;
                        rechecked = false;
                        self.rx_next += 1;
                    }
                    Delivery::Dropped => self.rx_next += 1,
                    Delivery::NoBuffers => {
                        // Ask the guest to kick us when it adds buffers; if some appeared in
                        // the meantime, go on.
                        match queue.enable_notification(mem) {
                            Ok(true) if !rechecked => {
                                rechecked = true;
                                continue;
                            }
                            _ => return Ok(delivered && self.must_notify(queue, mem)),
                        }
                    }
                }
            }
        }
        Ok(delivered && self.must_notify(queue, mem))
    }

    fn must_notify(&self, queue: &mut Queue, mem: &GuestMemoryMmap) -> bool {
        queue.needs_notification(mem).unwrap_or(true)
    }

    /// Writes frame `index` of the receive batch into the guest's buffers.
    fn deliver(&mut self, index: usize, queue: &mut Queue, mem: &GuestMemoryMmap) -> Delivery {
        let n = self.negotiated;
        let thl = self.transport.vnet_hdr_len();
        let stats = &*self.stats;
        let packet = &mut self.rx.bufs_mut()[index];
        let len = packet.len();
        if len < thl + 14 {
            NetStats::inc(&stats.rx_dropped_bad_header);
            return Delivery::Dropped;
        }
        // The header the guest gets: the transport's, adjusted to what the guest accepts.
        let mut hdr = [0u8; 12];
        if thl > 0 {
            let Some(mut h) = VnetHdr::parse(packet.data()) else {
                NetStats::inc(&stats.rx_dropped_bad_header);
                return Delivery::Dropped;
            };
            if h.is_gso() {
                let ok = match h.gso_type & !vnet::GSO_ECN {
                    vnet::GSO_TCPV4 => n.rx.tso4,
                    vnet::GSO_TCPV6 => n.rx.tso6,
                    _ => false,
                } && (h.gso_type & vnet::GSO_ECN == 0 || n.rx.ecn);
                if !ok {
                    NetStats::inc(&stats.rx_dropped_gso);
                    return Delivery::Dropped;
                }
            }
            if h.flags & vnet::F_NEEDS_CSUM != 0 && !n.rx.csum {
                let frame = &mut packet.space()[thl..len];
                if !vnet::complete_checksum(frame, h.csum_start, h.csum_offset) {
                    NetStats::inc(&stats.rx_dropped_bad_header);
                    return Delivery::Dropped;
                }
                NetStats::inc(&stats.rx_csum_completed);
                h.flags &= !vnet::F_NEEDS_CSUM;
            }
            if !n.rx.csum {
                h.flags &= !vnet::F_DATA_VALID;
            }
            h.write(&mut hdr);
        }
        hdr[10..12].copy_from_slice(&1u16.to_le_bytes());
        let hdr = &hdr[..n.hdr_len];
        let frame = &packet.data()[thl..];
        let total = hdr.len() + frame.len();

        let start = queue.next_avail();
        self.first_chain.clear();
        self.used.clear();
        let mut written = 0usize;
        let mut bad = false;
        while written < total {
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                // Not enough buffers for the whole frame: give back what we took and wait.
                queue.set_next_avail(start);
                return Delivery::NoBuffers;
            };
            let head = chain.head_index();
            let first = self.used.is_empty();
            let mut in_chain = 0usize;
            for desc in chain {
                if !desc.is_write_only() {
                    bad = true;
                    break;
                }
                let take = (desc.len() as usize).min(total - written);
                if write_span(mem, desc.addr(), hdr, frame, written, take).is_err() {
                    bad = true;
                    break;
                }
                if first {
                    self.first_chain.push((desc.addr(), take));
                }
                written += take;
                in_chain += take;
                if written == total {
                    break;
                }
            }
            self.used.push((head, in_chain as u32));
            if bad || (!n.mrg_rxbuf && written < total) {
                break;
            }
        }
        if bad || written < total {
            // A malformed chain, or a frame larger than one buffer without MRG_RXBUF: every
            // chain taken for it goes back empty.
            let counter = if bad {
                &stats.bad_chains
            } else {
                &stats.rx_dropped_too_big
            };
            NetStats::inc(counter);
            for &(head, _) in &self.used {
                let _ = queue.add_used(mem, head, 0);
            }
            return Delivery::Dropped;
        }
        if n.hdr_len == 12 && self.used.len() > 1 {
            let count = (self.used.len() as u16).to_le_bytes();
            if write_at(mem, &self.first_chain, 10, &count).is_err() {
                NetStats::inc(&stats.bad_chains);
            }
        }
        for &(head, len) in &self.used {
            let _ = queue.add_used(mem, head, len);
        }
        stats.rx_packets.fetch_add(1, Ordering::Relaxed);
        stats
            .rx_bytes
            .fetch_add(frame.len() as u64, Ordering::Relaxed);
        Delivery::Delivered
    }

    /// Moves frames from the guest to the transport until the guest has none left or the
    /// transport would block. Returns whether the guest must be notified.
    pub fn process_tx(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<bool, TransportError> {
        let mut returned = false;
        // See process_rx: a ring that claims chains it never yields gets one look, not a spin.
        let mut rechecked = false;
        loop {
            // Leftovers first: while the host refuses them, take nothing more from the guest.
            if self.tx.count() > 0 {
                let sent = self.transport.send(&self.tx)?;
                self.tx.consume(sent);
                if self.tx.count() > 0 {
                    break;
                }
            }
            let _ = queue.disable_notification(mem);
            while self.tx.count() < self.tx.depth() {
                let Some(chain) = queue.pop_descriptor_chain(mem) else {
                    break;
                };
                let head = chain.head_index();
                self.gather(chain, mem);
                let _ = queue.add_used(mem, head, 0);
                returned = true;
            }
            if self.tx.count() == 0 {
                // Nothing taken: re-arm notifications; chains that raced in are taken now.
                match queue.enable_notification(mem) {
                    Ok(true) if !rechecked => {
                        rechecked = true;
                        continue;
                    }
                    _ => break,
                }
            } else {
                rechecked = false;
            }
        }
        Ok(returned && self.must_notify(queue, mem))
    }

    /// Copies one transmit chain into the next free batch buffer, converting the header.
    fn gather(
        &mut self,
        chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>,
        mem: &GuestMemoryMmap,
    ) {
        let ghl = self.negotiated.hdr_len.max(10);
        let thl = self.transport.vnet_hdr_len();
        let stats = &*self.stats;
        let Some(buf) = self.tx.next_free() else {
            return;
        };
        let space = buf.space();
        let cap = space.len();
        let mut ghdr = [0u8; 12];
        let mut pos = 0usize;
        let mut verdict: Option<&AtomicU64> = None;
        for desc in chain {
            if desc.is_write_only() {
                verdict = Some(&stats.bad_chains);
                break;
            }
            let mut addr = desc.addr();
            let mut len = desc.len() as usize;
            if pos < ghl {
                let k = len.min(ghl - pos);
                if mem.read_slice(&mut ghdr[pos..pos + k], addr).is_err() {
                    verdict = Some(&stats.bad_chains);
                    break;
                }
                pos += k;
                len -= k;
                addr = GuestAddress(addr.0.wrapping_add(k as u64));
            }
            if len == 0 {
                continue;
            }
            let at = thl + (pos - ghl);
            if at + len > cap {
                verdict = Some(&stats.tx_dropped_bad_size);
                break;
            }
            if mem.read_slice(&mut space[at..at + len], addr).is_err() {
                verdict = Some(&stats.bad_chains);
                break;
            }
            pos += len;
        }
        if verdict.is_none() && pos < ghl + 14 {
            verdict = Some(&stats.tx_dropped_bad_size);
        }
        if let Some(counter) = verdict {
            NetStats::inc(counter);
            return;
        }
        let frame_len = pos - ghl;
        if thl > 0 {
            space[..vnet::HDR_LEN].copy_from_slice(&ghdr[..vnet::HDR_LEN]);
        }
        buf.set_len(thl + frame_len);
        self.tx.commit();
        stats.tx_packets.fetch_add(1, Ordering::Relaxed);
        stats
            .tx_bytes
            .fetch_add(frame_len as u64, Ordering::Relaxed);
    }

    /// Whether frames wait for the transport to become writable.
    pub fn tx_pending(&self) -> bool {
        self.tx.count() > 0
    }
}

/// Writes bytes `off..off+n` of the logical stream `hdr ++ frame` at `addr`.
fn write_span(
    mem: &GuestMemoryMmap,
    addr: GuestAddress,
    hdr: &[u8],
    frame: &[u8],
    off: usize,
    n: usize,
) -> Result<(), vm_memory::GuestMemoryError> {
    let mut addr = addr;
    let mut off = off;
    let mut n = n;
    if off < hdr.len() {
        let k = n.min(hdr.len() - off);
        mem.write_slice(&hdr[off..off + k], addr)?;
        addr = GuestAddress(addr.0.wrapping_add(k as u64));
        off += k;
        n -= k;
    }
    if n > 0 {
        let f = off - hdr.len();
        mem.write_slice(&frame[f..f + n], addr)?;
    }
    Ok(())
}

/// Writes `bytes` at byte `offset` of a chain given as (address, length) pieces.
fn write_at(
    mem: &GuestMemoryMmap,
    pieces: &[(GuestAddress, usize)],
    offset: usize,
    bytes: &[u8],
) -> Result<(), vm_memory::GuestMemoryError> {
    let mut skip = offset;
    let mut rest = bytes;
    for &(addr, len) in pieces {
        if rest.is_empty() {
            break;
        }
        if skip >= len {
            skip -= len;
            continue;
        }
        let k = rest.len().min(len - skip);
        mem.write_slice(&rest[..k], GuestAddress(addr.0.wrapping_add(skip as u64)))?;
        rest = &rest[k..];
        skip = 0;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
