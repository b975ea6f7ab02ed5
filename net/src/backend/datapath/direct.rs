//! Receive without the batch: a transport that reads one whole frame per call into any gather
//! list ([`Transport::scatters`]: tap) reads it straight into the guest's receive buffers,
//! so the frame is copied once (kernel → guest), not twice (kernel → batch → guest).
//!
//! The frame's length is not known before the read, and a tap cuts a frame longer than the
//! buffers it is given, so the read's gather list always covers the longest frame the batch
//! path takes ([`Geometry::rx_capacity`]): first the guest's chains, as many as the frames
//! seen lately needed (a guess that grows at once and shrinks slowly), then the receive
//! batch's first buffer for the rest. The usual frame lands wholly in the guest's chains;
//! those it did not need go back to the ring untouched. When the guest has fewer buffers than
//! the guess, the frame is read into the batch as before, which waits for more. A frame the
//! guest cannot take as it is (longer than the chains popped, a header the guest did not
//! negotiate, a runt) is ejected: gathered into the batch, where the copying path delivers,
//! fixes or drops and counts it exactly as before. Nothing is lost for lack of buffers: when
//! the guest has none, nothing is read.
//!
//! The transport's header is 10 bytes; the guest's is 12 with `num_buffers` (VERSION_1 or
//! MRG_RXBUF). The gather list skips those two bytes, which are written once the frame's
//! chains are counted.

use super::*;

/// Guest-memory pieces one read may gather, besides the batch buffer behind them.
const MAX_PIECES: usize = 64;

/// Frames are received directly only while the guess is at least this long: GSO frames,
/// longer than a full Ethernet frame. Measured (`backend_pps`, tap host→guest, one core, six
/// alternating runs): 64 KiB GSO frames arrive about 8 % faster directly (median), 1514-byte
/// frames about 15 % slower. The kernel's copy into guest memory costs nearly what its copy
/// into the hot batch buffer and ours out of it cost together, so what is saved is a
/// per-frame constant that a small frame does not earn back.
pub(super) const MIN_GUESS: usize = 2048;

/// The guess after a frame of `len` bytes: the frame's length if longer, else the old guess
/// less a sixteenth (a burst of small frames after large ones forgets them in a few dozen).
pub(super) fn next_guess(guess: usize, len: usize) -> usize {
    len.max(guess - guess / 16)
}

/// What one direct receive did.
pub(super) enum Direct {
    /// A frame went to the guest.
    Delivered,
    /// A frame was read and dropped: cut short by the kernel (the transport counts it), or
    /// not readable back from the guest's buffers to eject it (a bad chain, counted).
    Dropped,
    /// The transport has nothing to read.
    Drained,
    /// A frame is in the receive batch, for the copying path.
    Ejected,
    /// The guest has no receive buffer; nothing was read.
    NoBuffers,
    /// The guest has fewer buffers than the frames lately needed; nothing was read. The
    /// caller receives through the batch, which waits for buffers without a third copy.
    Short,
}

/// The guest's buffers a read gathers into: the transport's byte stream (its header, then
/// the frame) as guest-memory pieces, the chains they belong to, and where the guest's
/// `num_buffers` lies. Kept by the datapath between frames (its 2.6 KiB are not cleared
/// for each): only the first `count`, `nchains` and `nhole` entries mean anything.
pub(super) struct Gather {
    iovs: [libc::iovec; MAX_PIECES + 1],
    /// The pieces as guest addresses, for reading the header back and for ejecting.
    pieces: [(GuestAddress, usize); MAX_PIECES],
    count: usize,
    /// Chains popped, in order: (head, bytes of the guest's stream in it).
    chains: [(u16, u32); MAX_PIECES],
    nchains: usize,
    /// The guest's `num_buffers` bytes (at most two pieces).
    hole: [(GuestAddress, usize); 2],
    nhole: usize,
    /// Bytes of the guest's stream covered (its header, then the frame).
    guest: usize,
    /// Bytes of the transport's stream covered by the guest's pieces.
    transport: usize,
}

// SAFETY: the iovecs' pointers point into guest memory that the caller of
// `Datapath::receive_direct` holds for that call only; they are rewritten before each read
// and never dereferenced by this struct, so moving it to another thread is sound.
unsafe impl Send for Gather {}

impl Gather {
    pub(super) fn new() -> Gather {
        Gather {
            iovs: [libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            }; MAX_PIECES + 1],
            pieces: [(GuestAddress(0), 0); MAX_PIECES],
            count: 0,
            chains: [(0, 0); MAX_PIECES],
            nchains: 0,
            hole: [(GuestAddress(0), 0); 2],
            nhole: 0,
            guest: 0,
            transport: 0,
        }
    }

    /// What a chain may be abandoned back to.
    fn mark(&self) -> (usize, usize, usize, usize) {
        (self.count, self.nhole, self.guest, self.transport)
    }

    fn reset(&mut self, mark: (usize, usize, usize, usize)) {
        (self.count, self.nhole, self.guest, self.transport) = mark;
    }

    /// Empties it for the next frame.
    fn clear(&mut self) {
        self.reset((0, 0, 0, 0));
        self.nchains = 0;
    }

    /// Adds `len` bytes of guest memory at `addr` to the guest's stream, up to the
    /// transport's `limit` bytes in all. `Ok(false)`: no more pieces fit.
    fn push(
        &mut self,
        mem: &GuestMemoryMmap,
        addr: GuestAddress,
        len: usize,
        hdr: (usize, usize),
        limit: usize,
    ) -> Result<bool, ChainError> {
        let (thl, ghl) = hdr;
        let (mut addr, mut len) = (addr, len);
        while len > 0 && self.transport < limit {
            let k = if (thl..ghl).contains(&self.guest) {
                // The guest's num_buffers: not the transport's to write.
                let k = len.min(ghl - self.guest);
                if self.nhole == self.hole.len() {
                    return Ok(false);
                }
                self.hole[self.nhole] = (addr, k);
                self.nhole += 1;
                k
            } else {
                let mut k = len.min(limit - self.transport);
                if self.guest < thl {
                    k = k.min(thl - self.guest);
                }
                let mut at = addr;
                for slice in mem.get_slices(addr, k) {
                    let slice = slice.map_err(|_| ChainError::BadAddress)?;
                    if self.count == MAX_PIECES {
                        // What was pushed of this descriptor stays; the rest is not used.
                        self.guest += (at.0 - addr.0) as usize;
                        return Ok(false);
                    }
                    self.iovs[self.count] = libc::iovec {
                        iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                        iov_len: slice.len(),
                    };
                    self.pieces[self.count] = (at, slice.len());
                    self.count += 1;
                    self.transport += slice.len();
                    at = GuestAddress(at.0.wrapping_add(slice.len() as u64));
                }
                k
            };
            self.guest += k;
            addr = GuestAddress(addr.0.wrapping_add(k as u64));
            len -= k;
        }
        Ok(self.transport < limit)
    }

    /// Reads bytes `from..from + out.len()` of the transport's stream back from the guest.
    fn read(&self, mem: &GuestMemoryMmap, from: usize, out: &mut [u8]) -> bool {
        let mut skip = from;
        let mut done = 0;
        for &(addr, len) in &self.pieces[..self.count] {
            if done == out.len() {
                break;
            }
            if skip >= len {
                skip -= len;
                continue;
            }
            let k = (len - skip).min(out.len() - done);
            let at = GuestAddress(addr.0.wrapping_add(skip as u64));
            if mem.read_slice(&mut out[done..done + k], at).is_err() {
                return false;
            }
            done += k;
            skip = 0;
        }
        done == out.len()
    }
}

/// Whether the guest takes a received header as the transport wrote it: its GSO type is one
/// the guest negotiated, and without GUEST_CSUM it claims no checksum state. Anything else
/// is for [`guest_header`] to fix or refuse.
fn takes_as_is(h: &VnetHdr, n: &Negotiated) -> bool {
    (!h.is_gso() || gso_accepted(h, n))
        && (n.rx.csum || h.flags & (vnet::F_NEEDS_CSUM | vnet::F_DATA_VALID) == 0)
}

impl Datapath {
    /// Whether frames are received straight into the guest's buffers: the transport can,
    /// its header is the one the guest's starts with (a guest has negotiated one), no
    /// capture wants a copy, and the frames lately were large enough to pay.
    pub(super) fn receives_direct(&self) -> bool {
        self.zero_copy
            && self.rx_guess >= self.direct_from
            && self.negotiated.hdr_len >= vnet::HDR_LEN
            && self.capture.is_none()
            && self.transport.scatters()
            && self.transport.vnet_hdr_len() == vnet::HDR_LEN
    }

    /// Receives one frame into the guest's buffers (see the module's comment).
    pub(super) fn receive_direct(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<Direct, TransportError> {
        // Lent out of `self` for the call, so both can be borrowed; put back on every path.
        let mut g = self
            .gather
            .take()
            .unwrap_or_else(|| Box::new(Gather::new()));
        g.clear();
        let r = self.receive_into(&mut g, queue, mem);
        self.gather = Some(g);
        r
    }

    fn receive_into(
        &mut self,
        g: &mut Gather,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<Direct, TransportError> {
        let n = self.negotiated;
        let thl = vnet::HDR_LEN;
        let ghl = n.hdr_len.max(thl);
        let limit = self.geometry.rx_capacity;
        let want = ghl + self.rx_guess;
        let queue_size = queue.size();
        let mut full = false;
        let mut ran_out = false;
        while !full && g.guest < want && g.nchains < MAX_PIECES && (g.nchains == 0 || n.mrg_rxbuf) {
            let before = queue.next_avail();
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                ran_out = true;
                break;
            };
            let head = chain.head_index();
            let mark = g.mark();
            let mut bad = None;
            // Whether the chains so far cover the guess: the rest of this one is not walked,
            // as the copying path stops at the frame's end (a fault beyond it is not ours).
            let mut covered = false;
            let mut walk = Walk::new(chain, queue_size);
            for desc in walk.by_ref() {
                if !desc.is_write_only() {
                    bad = Some(ChainError::WrongDirection);
                    break;
                }
                match g.push(mem, desc.addr(), desc.len() as usize, (thl, ghl), limit) {
                    Ok(true) if g.guest >= want => {
                        covered = true;
                        break;
                    }
                    Ok(true) => {}
                    Ok(false) => {
                        full = true;
                        break;
                    }
                    Err(e) => {
                        bad = Some(e);
                        break;
                    }
                }
            }
            if bad.is_none() && !full && !covered {
                bad = walk.error();
            }
            if let Some(e) = bad {
                g.reset(mark);
                if g.nchains == 0 {
                    // The first chain is malformed: it goes back empty and counted, as on the
                    // copying path, and the next one is tried.
                    self.stats.bad_chains.count(e);
                    let _ = self.rx_ring.publish(queue, mem, &[(head, 0)]);
                    continue;
                }
                // A later one: left in the ring for the next frame, which meets it first.
                queue.set_next_avail(before);
                break;
            }
            let bytes = g.guest - mark.2;
            g.chains[g.nchains] = (head, bytes as u32);
            g.nchains += 1;
        }
        if g.nchains == 0 {
            return Ok(Direct::NoBuffers);
        }
        // The start after any malformed chains given back above.
        let first = queue.next_avail().wrapping_sub(g.nchains as u16);
        if ran_out && g.guest < want {
            // A frame as long as the last ones would not fit: rather than read it here and
            // copy it out again, leave the chains and let the batch take it.
            queue.set_next_avail(first);
            return Ok(Direct::Short);
        }
        let bounce = self.rx.bufs_mut()[0].space();
        let rest = limit.saturating_sub(g.transport).min(bounce.len());
        let mut niov = g.count;
        if rest > 0 {
            g.iovs[niov] = libc::iovec {
                iov_base: bounce.as_mut_ptr().cast(),
                iov_len: rest,
            };
            niov += 1;
        }
        // SAFETY: the guest's pieces are guest memory mapped for as long as `mem`, which the
        // caller holds for the whole call, and checked writable by the guest's descriptors;
        // the last piece is the batch's own buffer, `rest` bytes long and not otherwise
        // borrowed during the call.
        let read = unsafe { self.transport.recv_into(&g.iovs[..niov]) };
        let len = match read {
            Ok(Some(len)) => len,
            Ok(None) => {
                queue.set_next_avail(first);
                return Ok(Direct::Drained);
            }
            Err(e) => {
                queue.set_next_avail(first);
                return Err(e);
            }
        };
        if len >= limit {
            queue.set_next_avail(first);
            return Ok(Direct::Dropped);
        }
        let frame = len.saturating_sub(thl);
        self.rx_guess = next_guess(self.rx_guess, frame);
        let mut raw = [0u8; vnet::HDR_LEN];
        let whole = len <= g.transport && len >= thl + ETH_HLEN && g.read(mem, 0, &mut raw);
        let as_is = whole && VnetHdr::parse(&raw).is_some_and(|h| takes_as_is(&h, &n));
        if !as_is {
            queue.set_next_avail(first);
            return Ok(self.eject(g, len, mem));
        }
        // The chains the frame filled, and what each holds.
        let need = ghl + frame;
        let mut at = 0usize;
        let mut used = 0usize;
        self.used.clear();
        for &(head, bytes) in &g.chains[..g.nchains] {
            if at >= need {
                break;
            }
            let k = (bytes as usize).min(need - at);
            self.used.push((head, k as u32));
            at += k;
            used += 1;
        }
        queue.set_next_avail(first.wrapping_add(used as u16));
        if n.hdr_len == GUEST_HDR_LEN {
            let count = u16::try_from(used).unwrap_or(u16::MAX).to_le_bytes();
            if write_at(mem, &g.hole[..g.nhole], 0, &count).is_err() {
                self.stats.bad_chains.count(ChainError::BadAddress);
            }
        }
        let _ = self.rx_ring.publish(queue, mem, &self.used);
        let stats = &*self.stats;
        stats.rx_packets.fetch_add(1, Ordering::Relaxed);
        stats.rx_bytes.fetch_add(frame as u64, Ordering::Relaxed);
        stats.rx_direct.fetch_add(1, Ordering::Relaxed);
        Ok(Direct::Delivered)
    }

    /// Receives directly once the guess reaches `bytes` ([`MIN_GUESS`] unless set here); 0:
    /// every frame. For tests, fuzz targets and benches, whose frames are small.
    pub fn set_direct_from(&mut self, bytes: usize) {
        self.direct_from = bytes;
    }

    /// Puts a frame read by [`Datapath::receive_direct`] into the receive batch: the part the
    /// guest's pieces hold is read back behind the part the batch buffer already holds.
    fn eject(&mut self, g: &Gather, len: usize, mem: &GuestMemoryMmap) -> Direct {
        let in_guest = len.min(g.transport);
        let buf = &mut self.rx.bufs_mut()[0];
        let space = buf.space();
        space.copy_within(0..len - in_guest, in_guest);
        if !g.read(mem, 0, &mut space[..in_guest]) {
            self.stats.bad_chains.count(ChainError::BadAddress);
            return Direct::Dropped;
        }
        buf.set_len(len);
        self.rx.set_count(1);
        self.rx_next = 0;
        self.next_segment = None;
        Direct::Ejected
    }
}
