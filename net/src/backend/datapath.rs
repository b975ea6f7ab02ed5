//! Frames between a frontend's virtqueues and a transport.
//!
//! Receive (transport → guest, queue 0): a batch from the transport is written into the
//! guest's buffers, each frame after a `virtio_net_hdr` (12 bytes with VERSION_1), spread over
//! several buffers with MRG_RXBUF. When the guest has no buffers, the frames wait here and the
//! transport is not read again until the guest posts buffers: nothing is dropped for lack of
//! room, and backpressure reaches the host side's socket.
//!
//! Transmit (guest → transport, queue 1): on a transport that sends from gather lists (all
//! but pcap and user: [`Transport::gathers`]) the frames go from the guest's buffers to the
//! kernel in one multi-packet call, not copied (a frame of up to 256 bytes is copied inline,
//! which costs less than a second iovec): the transport header is a copy of the guest's
//! (checked once, out of the guest's reach), the frame bytes are the guest's. Chains are
//! returned once the kernel took them; when the host would block, the chains it did not take
//! go back to the ring (unconsumed) until the descriptor becomes writable, so no pointer into
//! guest memory outlives the call. Elsewhere, and for frames the backend must change (software
//! checksum and TSO for a transport without a header, a running capture), chains are copied
//! into a batch (the guest gets its buffers back at once) and sent the same way; when the host
//! would block, the rest of the batch waits for writability and no more chains are taken.
//!
//! The guest is hostile: a descriptor outside guest memory or in the wrong direction, a chain
//! that does not end (a loop: virtio-queue's iterator stops silently after the queue size, so
//! we check that the last descriptor really ended the chain) or has more descriptors than the
//! queue size, a frame shorter than an Ethernet header, longer than the MTU without GSO, or
//! GSO the guest did not negotiate: the chain comes back empty and is counted by reason in
//! [`NetCounters`]; nothing of it is sent, nothing panics and nothing blocks. Receive writes
//! `num_buffers` wherever the header landed, so buffers smaller than the header still get
//! the right count. No heap allocation per packet: descriptors are
//! walked directly (virtio-queue's Reader/Writer allocate per chain).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::capture::CaptureTap;
use super::coalesce;
use super::features::{Negotiated, GUEST_HDR_LEN, NUM_BUFFERS_OFFSET};
use super::segment;
use super::used::UsedRing;
use super::watch::{Poller, Watch};
use crate::transport::vnet::{self, VnetHdr};
use crate::transport::wire::ETH_HLEN;
use crate::transport::{
    Frames, GatherBatch, PacketBatch, PacketBuf, Transport, TransportError, INLINE_FRAME,
    MAX_FRAME_PIECES,
};

/// Why a descriptor chain was refused. Such a chain goes back to the guest empty and is
/// counted by reason ([`ChainDrops`]); nothing of it reaches the guest or the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("a buffer outside guest memory")]
    BadAddress,
    #[error("a buffer in the wrong direction (writable on transmit, read-only on receive)")]
    WrongDirection,
    /// virtio-queue's iterator stops silently after the queue size (or the indirect table's
    /// length) or at a link it cannot follow; we see a last descriptor that still says NEXT.
    #[error("a chain that does not end: a loop, or a link out of the descriptor table")]
    Unterminated,
    /// Only an indirect table can make this happen: a direct chain longer than the queue
    /// size must loop, and is [`ChainError::Unterminated`].
    #[error("a chain of more descriptors than the queue size")]
    TooLong,
    /// virtio-queue's iterator yields nothing for a head outside the descriptor table or an
    /// indirect table it cannot read; every real chain has a descriptor.
    #[error(
        "a chain of no descriptor: a head outside the descriptor table, or an unreadable \
         indirect table"
    )]
    Empty,
}

/// Refused descriptor chains, one counter per [`ChainError`].
#[derive(Debug, Default)]
pub struct ChainDrops {
    pub bad_address: AtomicU64,
    pub wrong_direction: AtomicU64,
    pub unterminated: AtomicU64,
    pub too_long: AtomicU64,
    pub empty: AtomicU64,
}

impl ChainDrops {
    pub fn count(&self, e: ChainError) {
        NetCounters::inc(match e {
            ChainError::BadAddress => &self.bad_address,
            ChainError::WrongDirection => &self.wrong_direction,
            ChainError::Unterminated => &self.unterminated,
            ChainError::TooLong => &self.too_long,
            ChainError::Empty => &self.empty,
        });
    }

    pub fn total(&self) -> u64 {
        [
            &self.bad_address,
            &self.wrong_direction,
            &self.unterminated,
            &self.too_long,
            &self.empty,
        ]
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .sum()
    }
}

/// Counters of one device, shared with whoever wants to report them. Every frame that does
/// not cross is in exactly one `*dropped*` counter (or in the transport's own).
#[derive(Debug, Default)]
pub struct NetCounters {
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
    /// Received TCP segments merged into the segment before them (software GRO on a
    /// transport without a header, see [`super::coalesce`]): the guest got them as part of
    /// one frame, counted once in `rx_packets`.
    pub rx_coalesced: AtomicU64,
    /// Frames received straight into the guest's buffers, without the batch copy (see
    /// `datapath::direct`); also counted in `rx_packets`.
    pub rx_direct: AtomicU64,
    /// Received frames with a header that makes no sense (offsets outside the frame), or
    /// shorter than an Ethernet header.
    pub rx_dropped_bad_header: AtomicU64,
    /// Descriptor chains refused, by reason; the frame they carried (or were to carry) is
    /// dropped with them.
    pub bad_chains: ChainDrops,
    /// Transmitted frames dropped: shorter than an Ethernet header.
    pub tx_dropped_runt: AtomicU64,
    /// Transmitted frames dropped: without GSO, longer than the MTU plus an Ethernet header
    /// and a VLAN tag (virtio 1.2, 5.1.6.2: the driver must not send them), or longer than any
    /// frame can be.
    pub tx_dropped_over_mtu: AtomicU64,
    /// Transmitted GSO frames whose kind (TSO4, TSO6, ECN, UDP) the guest did not negotiate.
    pub tx_dropped_gso: AtomicU64,
    /// Transmitted frames whose offload the backend could not do itself for a transport
    /// without a virtio-net header: a GSO frame it cannot segment (see
    /// [`super::segment::SegmentError`]), a partial checksum outside the frame.
    pub tx_dropped_bad_offload: AtomicU64,
    /// Frames waiting in the datapath (either way) when a frontend went away.
    pub dropped_at_disconnect: AtomicU64,
    /// Frames waiting in the datapath (either way) when the transport was replaced by one
    /// with another header length or batch size, which they no longer fit.
    pub dropped_at_swap: AtomicU64,
    /// Received frames dropped: they reached a queue pair whose receive ring the guest does
    /// not serve (not enabled yet, or disabled), before the host's frames were steered away
    /// from it (see [`super::steer`]).
    pub rx_dropped_unserved: AtomicU64,
    /// Looks of a busy-polling worker (`busy_poll`, see [`super::busy`]) that found work:
    /// chains taken or frames delivered without waiting for a wake-up.
    pub busy_poll_finds: AtomicU64,
    /// Spells of looking: events after which a worker looked for more work before it slept
    /// (with `busy_poll=auto`, those that found its window open).
    pub busy_poll_spells: AtomicU64,
    /// Microseconds the workers spent in those spells, by the clock, the work they found
    /// included. Their CPU time in them is less: a look that finds nothing yields the core
    /// to any thread waiting for it.
    pub busy_poll_us: AtomicU64,
}

impl NetCounters {
    fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// One line for the log.
    pub fn summary(&self) -> String {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let b = &self.bad_chains;
        format!(
            "rx {} pkts {} bytes ({} merged, {} direct), tx {} pkts {} bytes; dropped: rx too-big {} gso {} bad-header {}, tx runt {} over-mtu {} gso {} bad-offload {}, at disconnect {}, unserved pair {}; bad chains {} (bad-address {} wrong-direction {} unterminated {} too-long {} empty {}); csum completed {}; busy polling {} spells {} us {} finds",
            g(&self.rx_packets),
            g(&self.rx_bytes),
            g(&self.rx_coalesced),
            g(&self.rx_direct),
            g(&self.tx_packets),
            g(&self.tx_bytes),
            g(&self.rx_dropped_too_big),
            g(&self.rx_dropped_gso),
            g(&self.rx_dropped_bad_header),
            g(&self.tx_dropped_runt),
            g(&self.tx_dropped_over_mtu),
            g(&self.tx_dropped_gso),
            g(&self.tx_dropped_bad_offload),
            g(&self.dropped_at_disconnect),
            g(&self.rx_dropped_unserved),
            b.total(),
            g(&b.bad_address),
            g(&b.wrong_direction),
            g(&b.unterminated),
            g(&b.too_long),
            g(&b.empty),
            g(&self.rx_csum_completed),
            g(&self.busy_poll_spells),
            g(&self.busy_poll_us),
            g(&self.busy_poll_finds),
        )
    }
}

/// A descriptor chain's descriptors, with what virtio-queue's iterator ends on silently made
/// visible: after [`Iterator::next`] returns `None`, [`Walk::error`] says whether the chain
/// really ended. Bounded by the queue size, so a loop yields at most that many descriptors.
struct Walk<I> {
    chain: I,
    max: u32,
    seen: u32,
    /// The last descriptor yielded had NEXT set.
    more: bool,
    error: Option<ChainError>,
}

impl<I: Iterator<Item = Descriptor>> Walk<I> {
    fn new(chain: I, queue_size: u16) -> Self {
        Walk {
            chain,
            max: u32::from(queue_size),
            seen: 0,
            more: false,
            error: None,
        }
    }

    /// Why the walk ended early, if it did; only meaningful once `next` returned `None`.
    fn error(&self) -> Option<ChainError> {
        self.error
    }
}

impl<I: Iterator<Item = Descriptor>> Iterator for Walk<I> {
    type Item = Descriptor;

    fn next(&mut self) -> Option<Descriptor> {
        if self.error.is_some() {
            return None;
        }
        match self.chain.next() {
            Some(d) => {
                self.seen += 1;
                if self.seen > self.max {
                    self.error = Some(ChainError::TooLong);
                    return None;
                }
                self.more = d.has_next();
                Some(d)
            }
            None => {
                if self.more {
                    self.error = Some(ChainError::Unterminated);
                } else if self.seen == 0 {
                    self.error = Some(ChainError::Empty);
                }
                None
            }
        }
    }
}

/// What became of one transmit chain.
#[derive(Debug, PartialEq, Eq)]
enum Gathered {
    /// Taken: in the batch, or refused and counted.
    Taken,
    /// A GSO frame whose segments need more free buffers than the batch has: the chain goes
    /// back to the ring, to be taken again once the batch is sent.
    NoRoom,
}

/// Why a transmit chain is not sent: a malformed chain, or a frame the guest may not send
/// (the counter of the reason). Kept until the chain is returned, so a chain that goes back to
/// the ring is not counted twice.
#[derive(Clone, Copy)]
enum Refusal {
    Chain(ChainError),
    Frame(Counter),
}

/// One of [`NetCounters`]' counters.
type Counter = fn(&NetCounters) -> &AtomicU64;

impl Refusal {
    fn count(self, stats: &NetCounters) {
        match self {
            Refusal::Chain(e) => stats.bad_chains.count(e),
            Refusal::Frame(c) => NetCounters::inc(c(stats)),
        }
    }
}

/// What became of one transmit chain taken in a gathering round ([`Datapath::take`]).
#[derive(Clone, Copy)]
enum Took {
    /// Its frame (this many bytes, from Ethernet on) is the gather batch's next.
    Frame(usize),
    Refused(Refusal),
}

/// Why a transmit chain goes back to the ring untaken ([`Datapath::take`]).
enum Defer {
    /// The backend must change the frame (software offloads) or it has more pieces than a
    /// gather list takes: it goes through the copying path.
    Copy,
    /// The gather batch is out of pieces: the chain waits for the next round.
    Later,
}

/// A chain taken in a gathering round, returned (or put back) once the kernel answered.
struct TakenChain {
    head: u16,
    /// The ring position it was taken from, to put it (and those after it) back.
    at: u16,
    took: Took,
}

/// Pieces a gather batch holds per frame on average: a frame of 20 (the most a Linux guest
/// sends) or a batch of small ones fit.
const PIECES_PER_FRAME: usize = 20;

/// What software GRO makes of a received frame ([`Datapath::merge`]).
enum Merge {
    /// Nothing: no GRO negotiated, or not a TCP segment whose checksum verifies.
    No,
    /// A TCP segment whose checksum verified, going up alone.
    Verified,
    Train(Train),
}

/// Received frames that go to the guest as one GSO frame ([`super::coalesce`]).
struct Train {
    first: coalesce::Segment,
    last: coalesce::Segment,
    /// Frames it spans, at least 2.
    count: usize,
}

/// What happened to one received frame.
enum Delivery {
    Delivered,
    Dropped,
    /// The guest has no (or not enough) buffers: try again after it posts more.
    NoBuffers,
}

/// Bytes the buffers of one direction's batch may take in all: the depth shrinks for large
/// buffers, so a device's batches stay within 1 MiB whatever it negotiated. Small frames
/// (buffers of an MTU) keep the full depth; 64 KiB GSO frames go 7 at a time, which is
/// 450 KiB per system call. It is the device's, not a queue pair's: with `queues=N` each
/// pair's datapath gets 1/N of it (and of [`GATHER_BUDGET`]), down to one frame a batch.
pub const BATCH_BUDGET: usize = 512 * 1024;

/// The largest GSO frame: a 64 KiB IP packet behind an Ethernet header.
const GSO_FRAME: usize = 65_535 + ETH_HLEN;

/// The shape of a datapath's two batches: each direction's buffer size (the transport's
/// header, the longest frame that direction may carry under what the guest negotiated, the
/// headroom) and depth (the configured one, within [`BATCH_BUDGET`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub rx_capacity: usize,
    pub rx_depth: usize,
    pub tx_capacity: usize,
    pub tx_depth: usize,
    /// A GSO frame from the guest, before it is segmented in software (a transport without
    /// a virtio-net header, TSO negotiated), else 0.
    pub scratch: usize,
    /// Frames per round sent from the guest's buffers: the configured depth, whatever the
    /// buffers' size (a gather list holds at most an inline copy of a small frame), within
    /// [`GATHER_BUDGET`].
    pub gather_depth: usize,
}

impl Geometry {
    /// Receive buffers hold a GSO frame only when the guest takes them (GUEST_TSO4/6) and
    /// the transport hands them over (it has a header), else a frame of the MTU (at least
    /// 1500) with a VLAN tag, like a NIC's receive limit: a longer one is dropped and counted
    /// as truncated by the transport. Transmit buffers
    /// hold a GSO frame only when the guest may send them (HOST_TSO4/6), else the longest
    /// frame the datapath lets out.
    pub fn new(
        depth: usize,
        headroom: u16,
        mtu: u16,
        n: &Negotiated,
        t: &dyn Transport,
    ) -> Geometry {
        Self::shared(depth, headroom, mtu, n, t, 1)
    }

    /// [`Geometry::new`] for one of `pairs` queue pairs, which share the device's budgets.
    pub fn shared(
        depth: usize,
        headroom: u16,
        mtu: u16,
        n: &Negotiated,
        t: &dyn Transport,
        pairs: usize,
    ) -> Geometry {
        let pairs = pairs.max(1);
        let batch_budget = BATCH_BUDGET / pairs;
        let extra = t.vnet_hdr_len() + usize::from(headroom);
        // Without a header the transport receives frames of an MTU, whatever the guest takes:
        // large frames for it are merged here, from those ([`super::coalesce`]).
        let rx_frame = if (n.rx.tso4 || n.rx.tso6) && t.vnet_hdr_len() > 0 {
            GSO_FRAME + VLAN_TAG_LEN
        } else {
            usize::from(mtu.max(1500)) + L2_OVERHEAD
        };
        let gso_tx = n.tx_tso4 || n.tx_tso6;
        // Segmented here (no header to hand GSO to the host): the batch holds the segments.
        let segmented = gso_tx && t.vnet_hdr_len() == 0;
        let tx_frame = if gso_tx && !segmented {
            GSO_FRAME + VLAN_TAG_LEN
        } else {
            max_tx_frame(mtu, n)
        };
        // One byte more than the longest frame: a tap's read that fills its buffer is how a
        // truncated frame shows (see `TapDev::recv`).
        let rx_capacity = extra + t.rx_overhead() + rx_frame + 1;
        let tx_capacity = extra + tx_frame;
        let scratch = if segmented {
            GSO_FRAME + VLAN_TAG_LEN
        } else {
            0
        };
        let within = |cap: usize, budget: usize| depth.clamp(1, (budget / cap).max(1));
        let gather_depth = within(gather_bytes(1), GATHER_BUDGET / pairs);
        Geometry {
            rx_capacity,
            rx_depth: within(rx_capacity, batch_budget),
            tx_capacity,
            // The scratch and the gather batch come out of the transmit side's budget.
            tx_depth: within(
                tx_capacity,
                batch_budget.saturating_sub(scratch + gather_bytes(gather_depth)),
            ),
            scratch,
            gather_depth,
        }
    }

    /// Bytes of buffers both batches, the segmentation scratch and the gather batch hold.
    pub fn bytes(&self) -> usize {
        self.rx_capacity * self.rx_depth
            + self.tx_capacity * self.tx_depth
            + self.scratch
            + gather_bytes(self.gather_depth)
    }
}

/// The gather batch for a geometry.
fn gather_batch(g: &Geometry) -> GatherBatch {
    GatherBatch::new(g.gather_depth, g.gather_depth * PIECES_PER_FRAME)
}

/// Bytes the gather batch of a round of `depth` frames allocates.
fn gather_bytes(depth: usize) -> usize {
    GatherBatch::footprint(depth, depth * PIECES_PER_FRAME)
}

/// Bytes the gather batch may take, out of the transmit side's [`BATCH_BUDGET`]: 217
/// frames a round (a round of 64, the default, takes 38 KiB).
pub const GATHER_BUDGET: usize = 128 * 1024;

/// Ethernet header plus one VLAN tag: what a frame may carry beyond the MTU (Linux lets a
/// VLAN device on a virtio-net device keep the full MTU).
const L2_OVERHEAD: usize = ETH_HLEN + VLAN_TAG_LEN;

/// An 802.1Q tag.
const VLAN_TAG_LEN: usize = 4;

/// Bytes of frames after which a transmit call hands its chains back and, if the guest asked
/// to be told, stops so that it is told before the call goes on ([`Step::Tell`]); also the
/// most a transmit round takes. A guest's TCP sender may have only about 1 MiB in flight
/// (Linux's TCP small queues: `tcp_limit_output_bytes`), some sixteen 64 KiB TSO frames, which
/// one round took whole: the guest then waited, idle, for the round to be sent before it could
/// free a frame. Told every 256 KiB it queues more while the rest is sent: a UML guest sending
/// with 1 MiB writes went about a fifth faster over tap and hybrid, a tenth over raw; shorter
/// rounds without the notification, or a notification after each 64-frame round, gained
/// nothing measurable, nor did 512 KiB (resources/bench/HISTORY.md). Frames of 64 bytes never
/// reach it: a round of them is bounded by the batch's depth.
pub const TELL_EVERY: usize = 256 * 1024;

/// Where a call of [`Datapath::transmit`] stopped.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing left to do for now; whether the guest is to be signalled.
    Done(bool),
    /// [`TELL_EVERY`] bytes went back and the guest asked to be told: signal it, then call
    /// again for the rest (its ring's notifications are off until then).
    Tell,
}

/// Whether the guest negotiated sending GSO frames of type `gso` (TSO4, TSO6, with ECN).
fn gso_allowed(gso: u8, n: &Negotiated) -> bool {
    (match gso & !vnet::GSO_ECN {
        vnet::GSO_TCPV4 => n.tx_tso4,
        vnet::GSO_TCPV6 => n.tx_tso6,
        _ => false,
    }) && (gso & vnet::GSO_ECN == 0 || n.tx_ecn)
}

/// The longest frame without GSO the guest may send: the device's MTU when it negotiated
/// VIRTIO_NET_F_MTU, else at least the Ethernet default of 1500 (a driver that ignores the
/// MTU field sends those), plus [`L2_OVERHEAD`].
fn max_tx_frame(mtu: u16, n: &Negotiated) -> usize {
    let mtu = if n.mtu { mtu } else { mtu.max(1500) };
    usize::from(mtu) + L2_OVERHEAD
}

/// The datapath of one device. It outlives frontend connections, as the transport does.
pub struct Datapath {
    transport: Box<dyn Transport>,
    /// Frames received from the transport; `rx_next` is the first not yet delivered.
    rx: PacketBatch,
    rx_next: usize,
    /// Frames taken from the guest, not yet accepted by the transport.
    tx: PacketBatch,
    /// Frames as gather lists of guest memory, filled, sent and cleared within one call of
    /// [`Datapath::process_tx`]; and the chains they (and the refused ones) came from.
    gb: GatherBatch,
    taken: Vec<TakenChain>,
    /// Whether frames go out from the guest's buffers when the transport can
    /// ([`Datapath::set_zero_copy`]).
    zero_copy: bool,
    /// The host would not take chains that went back to the ring: wait for writability.
    tx_blocked: bool,
    /// A busy-polling worker is looking at the transmit ring: once a round has taken
    /// chains, the guest's kicks stay off ([`Datapath::hold_tx_kicks`]).
    tx_kicks_held: bool,
    /// The transport's descriptors on the serving connection's worker epoll, writability
    /// asked for while frames wait for the host ([`Datapath::sync_watch`]); `None` between
    /// connections.
    watch: Option<Watch>,
    /// The receive frame that ended the last train, parsed as a TCP segment there (index in
    /// the receive batch): the next train starts with it, not parsed (checksummed) again.
    /// Forgotten whenever the batch is refilled.
    next_segment: Option<(usize, coalesce::Segment)>,
    /// A GSO frame from the guest on its way to [`segment`] ([`Geometry::scratch`] bytes).
    gso_scratch: Vec<u8>,
    negotiated: Negotiated,
    /// The device's MTU (its config space's), and the longest non-GSO frame the guest may
    /// send under what it negotiated.
    mtu: u16,
    max_tx_frame: usize,
    /// Pieces (address, length) of the buffers the header of the frame being received went
    /// to, to patch `num_buffers` once the frame's buffers are counted. With buffers smaller
    /// than the header it spans several chains. Capacity kept across frames.
    hdr_pieces: Vec<(GuestAddress, usize)>,
    /// Chains used by the frame being received (head, bytes written). Capacity kept.
    used: Vec<(u16, u32)>,
    /// Transmit chains a round returns (head, 0), published together: one used-index store
    /// (and one release) per round, not per chain, as Linux's vhost-net batches them.
    /// Capacity kept.
    tx_used: Vec<(u16, u32)>,
    /// The receive and transmit queues' used rings: every chain goes back through them
    /// (a received frame's chains at once, see [`super::used`]).
    rx_ring: UsedRing,
    tx_ring: UsedRing,
    /// How many bytes of frame a direct receive expects (see [`direct`]): the largest frame
    /// lately, forgotten by a sixteenth per frame.
    rx_guess: usize,
    /// The direct receive's gather list, kept between frames (see [`direct`]).
    gather: Option<Box<direct::Gather>>,
    /// The guess from which frames are received directly ([`direct::MIN_GUESS`];
    /// [`Datapath::set_direct_from`]).
    direct_from: usize,
    stats: Arc<NetCounters>,
    /// The running capture, if any: every frame that crosses is offered to it.
    capture: Option<CaptureTap>,
    /// What batches are sized for: the configured depth and headroom, and the resulting
    /// shape under what is negotiated (see [`Geometry`]).
    depth: usize,
    headroom: u16,
    /// The device's queue pairs, which share its batch budget (see [`BATCH_BUDGET`]).
    pairs: usize,
    geometry: Geometry,
}

impl Datapath {
    /// A datapath for a device of MTU `mtu` over `transport`, moving `depth` frames per batch.
    pub fn new(transport: Box<dyn Transport>, depth: usize, headroom: u16, mtu: u16) -> Datapath {
        let negotiated = Negotiated::default();
        let geometry = Geometry::new(depth, headroom, mtu, &negotiated, transport.as_ref());
        Datapath {
            transport,
            rx: PacketBatch::new(geometry.rx_depth, geometry.rx_capacity),
            rx_next: 0,
            tx: PacketBatch::new(geometry.tx_depth, geometry.tx_capacity),
            gb: gather_batch(&geometry),
            taken: Vec::with_capacity(geometry.gather_depth),
            zero_copy: true,
            tx_blocked: false,
            tx_kicks_held: false,
            watch: None,
            next_segment: None,
            gso_scratch: vec![0; geometry.scratch],
            negotiated,
            mtu,
            max_tx_frame: max_tx_frame(mtu, &negotiated),
            hdr_pieces: Vec::with_capacity(64),
            used: Vec::with_capacity(64),
            tx_used: Vec::with_capacity(geometry.gather_depth.max(geometry.tx_depth)),
            rx_ring: UsedRing::default(),
            tx_ring: UsedRing::default(),
            rx_guess: usize::from(mtu) + ETH_HLEN,
            gather: None,
            direct_from: direct::MIN_GUESS,
            stats: Arc::new(NetCounters::default()),
            capture: None,
            depth,
            headroom,
            pairs: 1,
            geometry,
        }
    }

    /// Makes this one of `pairs` queue pairs' datapaths, sharing the device's batch budget:
    /// the batches are sized anew (call it before frames flow).
    pub fn with_pairs(mut self, pairs: usize) -> Datapath {
        self.pairs = pairs.max(1);
        // Nothing waits yet, so nothing is counted.
        self.reshape(false, |s| &s.dropped_at_disconnect);
        self
    }

    /// Frames waiting either way: received and not yet delivered, taken and not yet sent.
    fn pending(&self) -> usize {
        self.rx.count() - self.rx_next.min(self.rx.count()) + self.tx.count()
    }

    /// While `hold`, a transmit round that took chains leaves the guest's kicks off rather
    /// than re-arming them: a busy-polling worker finds the next chains by looking, and the
    /// guest saves a kick (a VM exit, or a host system call for UML) per chain, as with
    /// vhost-net's busy loop. Releasing does not re-arm them: the caller does (or runs a
    /// round, which does).
    pub fn hold_tx_kicks(&mut self, hold: bool) {
        self.tx_kicks_held = hold;
    }

    /// Received frames wait here for the guest's buffers, or in the transport for the next
    /// batch ([`Transport::rx_pending`]).
    pub fn rx_waiting(&self) -> bool {
        self.rx_next < self.rx.count() || self.transport.rx_pending()
    }

    /// The batches' shape now.
    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// Sizes the batches for the transport, depth, headroom and negotiation now in place,
    /// if that changes their shape (or `always`): frames still waiting either way are dropped
    /// and counted in `dropped`.
    fn reshape(&mut self, always: bool, dropped: fn(&NetCounters) -> &AtomicU64) {
        let g = Geometry::shared(
            self.depth,
            self.headroom,
            self.mtu,
            &self.negotiated,
            self.transport.as_ref(),
            self.pairs,
        );
        if g == self.geometry && !always {
            return;
        }
        dropped(&self.stats).fetch_add(self.pending() as u64, Ordering::Relaxed);
        self.rx = PacketBatch::new(g.rx_depth, g.rx_capacity);
        self.rx_next = 0;
        self.tx = PacketBatch::new(g.tx_depth, g.tx_capacity);
        self.gb = gather_batch(&g);
        self.taken = Vec::with_capacity(g.gather_depth);
        self.gso_scratch = vec![0; g.scratch];
        self.geometry = g;
    }

    /// Replaces the transport between batches (the caller holds the datapath's lock, which a
    /// batch holds throughout) and returns the old one. The new transport gets the offloads
    /// the guest negotiated. Frames waiting either way stay and go to the new transport (or
    /// the guest) when they still fit: same header length, same batch shape ([`Geometry`]).
    /// Otherwise they are dropped and counted in `dropped_at_swap`, and the batches are sized
    /// anew.
    pub fn replace_transport(
        &mut self,
        mut new: Box<dyn Transport>,
        depth: usize,
        headroom: u16,
    ) -> Result<Box<dyn Transport>, (Box<dyn Transport>, TransportError)> {
        if let Err(e) = new.set_offloads(self.negotiated.rx) {
            return Err((new, e));
        }
        // Waiting frames that carry the old transport's header fit no other.
        let other_header = new.vnet_hdr_len() != self.transport.vnet_hdr_len();
        let old = std::mem::replace(&mut self.transport, new);
        self.depth = depth;
        self.headroom = headroom;
        self.reshape(other_header, |s| &s.dropped_at_swap);
        Ok(old)
    }

    /// Puts the transport's descriptors on `poller`'s epoll (a connection's worker; see
    /// [`super::watch`]) in place of any watch before, asking for writability at once if
    /// frames wait for the host. On an error nothing is watched.
    pub fn watch(&mut self, poller: Poller) -> std::io::Result<()> {
        self.unwatch();
        let fds = (self.transport.rx_fd(), self.transport.tx_fd());
        self.watch = Watch::add(poller, fds)?;
        self.sync_watch();
        Ok(())
    }

    /// Takes the transport's descriptors off the worker's epoll (before the transport is
    /// replaced or closed), returning the poller to watch its successor with.
    pub fn unwatch(&mut self) -> Option<Poller> {
        self.watch.take().map(Watch::remove)
    }

    /// Asks the worker's epoll for the transport's writability exactly while frames wait
    /// for the host (refused chains back in the ring, or a batch not yet taken), and re-arms
    /// its receive watch after a receive that stopped at its bound
    /// ([`Transport::take_rx_cut_short`]). The worker calls this after every event; it costs a
    /// system call only when either is so.
    pub fn sync_watch(&mut self) {
        let waiting = self.tx_pending();
        if let Some(w) = &mut self.watch {
            if let Err(e) = w.want_out(waiting) {
                // The next event tries again; until one comes, frames wait in the ring.
                log::warn!(
                    "{}: {} writability on the worker's epoll: {e}",
                    self.transport.name(),
                    if waiting { "asking for" } else { "dropping" }
                );
            }
            // A receive that stopped at its bound: come back for the rest.
            if self.transport.take_rx_cut_short() {
                if let Err(e) = w.rearm_rx() {
                    log::warn!(
                        "{}: re-arming the receive watch: {e}",
                        self.transport.name()
                    );
                }
            }
        }
    }

    /// Whether the worker's epoll reports the transport's writability now.
    pub fn watches_out(&self) -> bool {
        self.watch.as_ref().is_some_and(Watch::wants_out)
    }

    /// The batch options in force: frames per batch and headroom (see
    /// [`Datapath::replace_transport`]).
    pub fn batch_options(&self) -> (usize, u16) {
        (self.depth, self.headroom)
    }

    /// Whether transmitted frames go from the guest's buffers to a transport that can send
    /// them so ([`Transport::gathers`]); on by default. Off, every frame is copied into the
    /// batch first (what a benchmark compares against).
    pub fn set_zero_copy(&mut self, on: bool) {
        self.zero_copy = on;
    }

    /// Installs (or, with `None`, removes and returns) the capture tap.
    pub fn set_capture(&mut self, tap: Option<CaptureTap>) -> Option<CaptureTap> {
        std::mem::replace(&mut self.capture, tap)
    }

    pub fn transport(&self) -> &dyn Transport {
        self.transport.as_ref()
    }

    /// The transport, to change it in place between batches (its receive filter).
    pub fn transport_mut(&mut self) -> &mut dyn Transport {
        self.transport.as_mut()
    }

    pub fn stats(&self) -> Arc<NetCounters> {
        self.stats.clone()
    }

    /// Applies what the guest negotiated, mirroring its receive offloads on the host side.
    pub fn set_negotiated(&mut self, n: Negotiated) -> Result<(), TransportError> {
        self.negotiated = n;
        self.max_tx_frame = max_tx_frame(self.mtu, &n);
        // A negotiation follows a new frontend or a reset, which dropped (and counted) what
        // was waiting; anything left is counted the same way.
        self.reshape(false, |s| &s.dropped_at_disconnect);
        self.transport.set_offloads(n.rx)
    }

    /// Forgets frames that were waiting for the previous frontend's buffers (its memory is
    /// gone) and the transmit leftovers (already returned to it). Called between frontends.
    pub fn reset(&mut self) {
        let pending = self.pending();
        if pending > 0 {
            log::info!(
                "{}: {pending} frames pending at disconnect dropped",
                self.transport.name()
            );
        }
        self.stats
            .dropped_at_disconnect
            .fetch_add(pending as u64, Ordering::Relaxed);
        self.tx_kicks_held = false;
        self.rx.clear();
        self.rx_next = 0;
        self.tx.clear();
        self.tx_blocked = false;
        self.rx_ring.reset();
        self.tx_ring.reset();
        self.negotiated = Negotiated::default();
        self.max_tx_frame = max_tx_frame(self.mtu, &self.negotiated);
        // Back to the buffers a device without offloads needs (nothing waits now).
        self.reshape(false, |s| &s.dropped_at_disconnect);
    }

    /// Drops what waits for a receive ring the guest does not serve: frames already received,
    /// then what the transport holds, a bounded number of batches (an edge-triggered
    /// descriptor wakes the worker again if more arrive). Counted in `rx_dropped_unserved`.
    pub fn discard_rx(&mut self) -> Result<(), TransportError> {
        /// Batches drained per call, so a flood cannot keep the worker here.
        const MAX_BATCHES: usize = 64;
        let mut dropped = self.rx.count() - self.rx_next.min(self.rx.count());
        self.rx.clear();
        self.rx_next = 0;
        let mut result = Ok(());
        for _ in 0..MAX_BATCHES {
            match self.transport.recv(&mut self.rx) {
                Ok(0) => break,
                Ok(n) => dropped += n,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        self.rx.clear();
        self.stats
            .rx_dropped_unserved
            .fetch_add(dropped as u64, Ordering::Relaxed);
        result
    }

    /// Moves frames from the transport to the guest until the transport is drained or the
    /// guest is out of buffers. Returns whether the guest must be notified.
    ///
    /// The frames of one receive batch go back to the guest together, before the next
    /// system call: one used-index store per batch, as Linux's vhost-net batches its used
    /// entries, not one per frame (a frame directly received is published on its own).
    pub fn process_rx(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<bool, TransportError> {
        let delivered = self.receive(queue, mem);
        // What the last batch staged is published, whatever ended the call.
        let _ = self.rx_ring.flush(queue, mem);
        Ok(delivered? && self.rx_ring.needs_notification(queue, mem))
    }

    /// [`Datapath::process_rx`] but for the last batch's publication and the notification
    /// test: returns whether any frame was delivered.
    fn receive(
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
                // The batch's frames are the guest's before the next system call.
                let _ = self.rx_ring.flush(queue, mem);
                self.rx_next = 0;
                self.next_segment = None;
                self.rx.clear();
                let direct = if self.receives_direct() {
                    Some(self.receive_direct(queue, mem)?)
                } else {
                    None
                };
                match direct {
                    Some(direct::Direct::Delivered) => {
                        delivered = true;
                        rechecked = false;
                        continue;
                    }
                    Some(direct::Direct::Dropped) => continue,
                    Some(direct::Direct::Drained) => break,
                    // The frame is in the batch: delivered below.
                    Some(direct::Direct::Ejected) => {}
                    Some(direct::Direct::NoBuffers) => {
                        if look_again(queue, mem, &mut rechecked) {
                            continue;
                        }
                        return Ok(delivered);
                    }
                    // Through the batch.
                    None | Some(direct::Direct::Short) => {
                        if self.transport.recv(&mut self.rx)? == 0 {
                            break;
                        }
                    }
                }
            }
            while self.rx_next < self.rx.count() {
                let (outcome, frames) = match self.merge(self.rx_next) {
                    Merge::Train(train) => (
                        self.deliver_train(self.rx_next, &train, queue, mem),
                        train.count,
                    ),
                    Merge::Verified => (self.deliver(self.rx_next, true, queue, mem), 1),
                    Merge::No => (self.deliver(self.rx_next, false, queue, mem), 1),
                };
                match outcome {
                    Delivery::Delivered => {
                        delivered = true;
                        rechecked = false;
                        self.rx_next += frames;
                    }
                    Delivery::Dropped => self.rx_next += frames,
                    Delivery::NoBuffers => {
                        // Ask the guest to kick us when it adds buffers; if some appeared in
                        // the meantime, go on.
                        if look_again(queue, mem, &mut rechecked) {
                            continue;
                        }
                        return Ok(delivered);
                    }
                }
            }
        }
        Ok(delivered)
    }

    /// Writes frame `index` of the receive batch into the guest's buffers: the header the
    /// guest gets, the frame spread over as many chains as it needs, `num_buffers` patched,
    /// the chains handed back used. `verified`: its TCP checksum was checked here (see
    /// [`Datapath::merge`]), which the guest is told (DATA_VALID), sparing it the pass.
    fn deliver(
        &mut self,
        index: usize,
        verified: bool,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Delivery {
        let n = self.negotiated;
        let thl = self.transport.vnet_hdr_len();
        let stats = &*self.stats;
        let packet = &mut self.rx.bufs_mut()[index];
        let mut hdr = match guest_header(packet, thl, &n, stats) {
            Ok(hdr) => hdr,
            Err(counter) => {
                NetCounters::inc(counter);
                return Delivery::Dropped;
            }
        };
        if verified {
            hdr[0] |= vnet::F_DATA_VALID;
        }
        let hdr = &hdr[..n.hdr_len];
        let frame = &packet.data()[thl..];
        self.rx_guess = direct::next_guess(self.rx_guess, frame.len());
        let chains = RxChains {
            hdr_pieces: &mut self.hdr_pieces,
            used: &mut self.used,
            ring: &mut self.rx_ring,
        };
        let landed = chains.land(queue, mem, &[hdr, frame], &n, stats);
        if let (Delivery::Delivered, Some(tap)) = (&landed, &mut self.capture) {
            tap.frame(frame);
        }
        landed
    }

    /// What software GRO makes of receive frame `index` when the guest takes GSO frames the
    /// backend merges ([`super::coalesce`]: a transport without a header, the guest with
    /// GUEST_CSUM and GUEST_TSO4/6): the train of TCP segments it starts (for the IP version
    /// the guest takes), or a TCP segment whose checksum verified, alone.
    fn merge(&mut self, index: usize) -> Merge {
        let n = &self.negotiated;
        if self.transport.vnet_hdr_len() != 0 || !n.rx.csum || !(n.rx.tso4 || n.rx.tso6) {
            return Merge::No;
        }
        let frames = self.rx.packets();
        let ff = frames[index].data();
        let first = match self.next_segment.take() {
            Some((at, s)) if at == index => s,
            _ => match coalesce::parse(ff) {
                Some(s) => s,
                None => return Merge::No,
            },
        };
        if !(if coalesce::is_ipv4(&first) {
            n.rx.tso4
        } else {
            n.rx.tso6
        }) {
            return Merge::Verified;
        }
        let mut last = first;
        let mut count = 1;
        while count < coalesce::MAX_TRAIN {
            let Some(f) = frames.get(index + count) else {
                break;
            };
            match coalesce::parse(f.data()) {
                Some(s) if coalesce::follows(ff, &first, &last, f.data(), &s) => {
                    last = s;
                    count += 1;
                }
                Some(s) => {
                    self.next_segment = Some((index + count, s));
                    break;
                }
                None => break,
            }
        }
        if count > 1 {
            Merge::Train(Train { first, last, count })
        } else {
            Merge::Verified
        }
    }

    /// Writes `train`, at receive frame `index`, into the guest's buffers as one GSO frame:
    /// its merged headers (see [`coalesce::train_header`]), then each segment's payload,
    /// read where it lies in the batch.
    fn deliver_train(
        &mut self,
        index: usize,
        train: &Train,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Delivery {
        let (first, count) = (train.first, train.count);
        let n = self.negotiated;
        let stats = &*self.stats;
        let frames = &self.rx.packets()[index..index + count];
        let ff = frames[0].data();
        let payload: usize = frames
            .iter()
            .map(|f| f.len() - (ff.len() - first.len))
            .sum();
        let psh = coalesce::pushed(&train.last);
        let mut headers = [0u8; coalesce::MAX_HEADERS];
        let (hlen, h) = coalesce::train_header(ff, &first, payload, psh, &mut headers);
        let mut hdr = [0u8; GUEST_HDR_LEN];
        h.write(&mut hdr);
        hdr[NUM_BUFFERS_OFFSET..][..2].copy_from_slice(&1u16.to_le_bytes());
        // The guest's header, the merged headers, each segment's payload.
        let mut pieces: [&[u8]; 2 + coalesce::MAX_TRAIN] = [&[]; 2 + coalesce::MAX_TRAIN];
        pieces[0] = &hdr[..n.hdr_len];
        pieces[1] = &headers[..hlen];
        for (p, f) in pieces[2..].iter_mut().zip(frames) {
            *p = &f.data()[hlen..];
        }
        let chains = RxChains {
            hdr_pieces: &mut self.hdr_pieces,
            used: &mut self.used,
            ring: &mut self.rx_ring,
        };
        let landed = chains.land(queue, mem, &pieces[..2 + count], &n, stats);
        if let Delivery::Delivered = landed {
            stats
                .rx_coalesced
                .fetch_add(count as u64 - 1, Ordering::Relaxed);
            if let Some(tap) = &mut self.capture {
                for f in frames {
                    tap.frame(f.data());
                }
            }
        }
        landed
    }

    /// Moves frames from the guest to the transport until the guest has none left or the
    /// transport would block. Returns whether the guest must be notified. The guest is told
    /// nothing on the way: a caller that can signal it calls [`Datapath::transmit`].
    pub fn process_tx(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<bool, TransportError> {
        // A notification owed on the way is owed at the end all the same.
        let mut owed = false;
        loop {
            match self.transmit(queue, mem)? {
                Step::Done(notify) => return Ok(owed || notify),
                Step::Tell => owed = true,
            }
        }
    }

    /// [`Datapath::process_tx`], stopping after every [`TELL_EVERY`] bytes the guest asked
    /// to hear about, for the caller to signal it ([`Step::Tell`]) and call again.
    pub fn transmit(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<Step, TransportError> {
        self.tx_blocked = false;
        if self.zero_copy && self.capture.is_none() && self.transport.gathers() {
            self.process_tx_gathering(queue, mem)
        } else {
            self.process_tx_copying(queue, mem)
        }
    }

    /// Bytes sent (or, on the copying path, taken) since `start`, a reading of `tx_bytes`.
    /// The counter only grows, so the difference is what this call moved.
    fn tx_bytes_since(&self, start: u64) -> usize {
        let now = self.stats.tx_bytes.load(Ordering::Relaxed);
        usize::try_from(now.saturating_sub(start)).unwrap_or(usize::MAX)
    }

    /// Whether a transmit call that began at `start` (a reading of `tx_bytes`) stops here for
    /// the guest to be told ([`Step::Tell`]): [`TELL_EVERY`] bytes went, and the guest asked to
    /// hear of the chains returned since it was last asked.
    fn tell_now(&mut self, start: u64, queue: &Queue, mem: &GuestMemoryMmap) -> bool {
        self.tx_bytes_since(start) >= TELL_EVERY && self.tx_ring.needs_notification(queue, mem)
    }

    /// [`Datapath::process_tx`] through the batch: every frame is copied.
    fn process_tx_copying(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<Step, TransportError> {
        let mut returned = false;
        let queue_size = queue.size();
        // See process_rx: a ring that claims chains it never yields gets one look, not a spin.
        let mut rechecked = false;
        let start = self.stats.tx_bytes.load(Ordering::Relaxed);
        loop {
            // Leftovers first: while the host refuses them, take nothing more from the guest.
            if !self.send_copied()? {
                break;
            }
            if self.tell_now(start, queue, mem) {
                return Ok(Step::Tell);
            }
            let _ = queue.disable_notification(mem);
            self.tx_used.clear();
            let round = self.stats.tx_bytes.load(Ordering::Relaxed);
            while self.tx.count() < self.tx.depth() && self.tx_bytes_since(round) < TELL_EVERY {
                let Some(chain) = queue.pop_descriptor_chain(mem) else {
                    break;
                };
                let head = chain.head_index();
                if self.gather(chain, queue_size, mem) == Gathered::NoRoom {
                    // Its segments wait for an empty batch: send what is there first.
                    queue.go_to_previous_position();
                    break;
                }
                self.tx_used.push((head, 0));
            }
            // Copied (or refused): the guest may have them back before they are sent.
            let _ = self.tx_ring.publish(queue, mem, &self.tx_used);
            returned |= !self.tx_used.is_empty();
            if self.tx.count() == 0 {
                // Nothing taken: re-arm notifications (unless a busy-polling worker holds
                // them off); chains that raced in are taken now.
                if !self.tx_kicks_held && look_again(queue, mem, &mut rechecked) {
                    continue;
                }
                break;
            }
            rechecked = false;
        }
        Ok(Step::Done(
            returned && self.tx_ring.needs_notification(queue, mem),
        ))
    }

    /// [`Datapath::process_tx`] from the guest's buffers: rounds of up to a batch's depth of
    /// chains (and about [`TELL_EVERY`] bytes), each frame a gather list, sent with one call;
    /// chains the kernel took (and refused ones) are returned, the first it did not take and
    /// those after it go back to the ring. A chain the backend must change goes through the
    /// batch, alone, between two rounds, behind any leftovers.
    fn process_tx_gathering(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<Step, TransportError> {
        let mut returned = false;
        let queue_size = queue.size();
        // See process_rx: a ring that claims chains it never yields gets one look, not a spin.
        let mut rechecked = false;
        let start = self.stats.tx_bytes.load(Ordering::Relaxed);
        loop {
            // Copied frames first, in order: while the host refuses them, take nothing more.
            if !self.send_copied()? {
                break;
            }
            if self.tell_now(start, queue, mem) {
                return Ok(Step::Tell);
            }
            let _ = queue.disable_notification(mem);
            self.gb.clear();
            self.taken.clear();
            let mut copy_next = false;
            let mut round_bytes = 0;
            while self.taken.len() < self.gb.depth() && round_bytes < TELL_EVERY {
                let at = queue.next_avail();
                let Some(chain) = queue.pop_descriptor_chain(mem) else {
                    break;
                };
                let head = chain.head_index();
                match self.take(chain, queue_size, mem) {
                    Ok(took) => {
                        if let Took::Frame(len) = took {
                            round_bytes += len;
                        }
                        self.taken.push(TakenChain { head, at, took });
                    }
                    Err(defer) => {
                        queue.set_next_avail(at);
                        copy_next = matches!(defer, Defer::Copy);
                        break;
                    }
                }
            }
            let result = if Frames::count(&self.gb) > 0 {
                self.transport.send_gather(&self.gb)
            } else {
                Ok(0)
            };
            // No pointer into guest memory outlives the round.
            self.gb.clear();
            let accepted = *result.as_ref().unwrap_or(&0);
            let took_any = !self.taken.is_empty();
            let mut frames = 0;
            // Counted once per round: two locked adds per frame were a quarter of this
            // function's own time with 64-byte frames.
            let mut bytes = 0u64;
            self.tx_used.clear();
            for t in &self.taken {
                match t.took {
                    Took::Frame(_) if frames >= accepted => {
                        // Not taken: it and everything after it go back to the ring.
                        queue.set_next_avail(t.at);
                        self.tx_blocked = true;
                        break;
                    }
                    Took::Frame(len) => {
                        frames += 1;
                        bytes += len as u64;
                    }
                    Took::Refused(r) => r.count(&self.stats),
                }
                self.tx_used.push((t.head, 0));
            }
            if frames > 0 {
                self.stats
                    .tx_packets
                    .fetch_add(frames as u64, Ordering::Relaxed);
                self.stats.tx_bytes.fetch_add(bytes, Ordering::Relaxed);
            }
            let _ = self.tx_ring.publish(queue, mem, &self.tx_used);
            returned |= !self.tx_used.is_empty();
            self.taken.clear();
            result?;
            if self.tx_blocked {
                break;
            }
            if copy_next {
                let Some(chain) = queue.pop_descriptor_chain(mem) else {
                    break;
                };
                let head = chain.head_index();
                if self.gather(chain, queue_size, mem) == Gathered::NoRoom {
                    // Cannot happen with an empty batch (a plan is at most its depth); if it
                    // did, the chain waits in the ring for the next kick.
                    queue.go_to_previous_position();
                    break;
                }
                let _ = self.tx_ring.publish(queue, mem, &[(head, 0)]);
                returned = true;
                rechecked = false;
                continue;
            }
            if !took_any {
                // Nothing taken: re-arm notifications (unless a busy-polling worker holds
                // them off); chains that raced in are taken now.
                if !self.tx_kicks_held && look_again(queue, mem, &mut rechecked) {
                    continue;
                }
                break;
            }
            rechecked = false;
        }
        Ok(Step::Done(
            returned && self.tx_ring.needs_notification(queue, mem),
        ))
    }

    /// Adds one transmit chain's frame to the gather batch: a copy of its header when the
    /// transport has one, then its bytes where they are in guest memory. Refused as the
    /// copying path refuses ([`tx_refusal`]); a frame the backend must change, or one of
    /// more pieces than a gather list takes, is left to the copying path.
    fn take(
        &mut self,
        chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>,
        queue_size: u16,
        mem: &GuestMemoryMmap,
    ) -> Result<Took, Defer> {
        let ghl = self.negotiated.hdr_len.max(vnet::HDR_LEN);
        let thl = self.transport.vnet_hdr_len();
        // As long as the copying path's buffer takes.
        let room = self.geometry.tx_capacity.saturating_sub(thl);
        let mut ghdr = [0u8; GUEST_HDR_LEN];
        let mut pos = 0usize;
        let mut pieces = 0usize;
        let mut oversized = false;
        let mut begun = false;
        // Still short enough to go as an inline copy (see `transport::INLINE_FRAME`), with
        // this many bytes copied.
        let mut inline = true;
        let mut inlined = 0usize;
        let mut bad = None;
        let mut walk = Walk::new(chain, queue_size);
        'descs: for desc in walk.by_ref() {
            if desc.is_write_only() {
                bad = Some(ChainError::WrongDirection);
                break;
            }
            let len = desc.len() as usize;
            let head_part = len.min(ghl.saturating_sub(pos));
            let body = len - head_part;
            // A body too long to send is walked past, not looked up, as the copying path
            // does, so both count a malformed chain alike.
            let fits = body == 0 || (!oversized && pos + head_part - ghl + body <= room);
            // One translation of the descriptor's address: the header is copied out of the
            // same slices the frame is then pointed at from (a driver that puts both in one
            // descriptor, as DPDK's virtio PMD does, costs one lookup, not two).
            for slice in mem.get_slices(desc.addr(), if fits { len } else { head_part }) {
                let Ok(mut slice) = slice else {
                    bad = Some(ChainError::BadAddress);
                    break 'descs;
                };
                if pos < ghl {
                    let k = slice.copy_to(&mut ghdr[pos..ghl]);
                    pos += k;
                    match slice.offset(k) {
                        Ok(rest) if !rest.is_empty() => slice = rest,
                        _ => continue,
                    }
                }
                self.begin_frame_once(&mut begun, &ghdr, thl)?;
                let n = slice.len();
                pieces += 1;
                if pieces > MAX_FRAME_PIECES {
                    self.gb.abandon();
                    return Err(Defer::Copy);
                }
                if inline {
                    match self.gb.inline_space().get_mut(..n) {
                        Some(space) if inlined + n <= INLINE_FRAME => {
                            let k = slice.copy_to(space);
                            self.gb.copied(k);
                            inlined += k;
                        }
                        _ => inline = false,
                    }
                }
                // SAFETY: the slice is guest memory mapped for as long as `mem`, which the
                // caller holds for the whole round; the batch is cleared before the round
                // ends.
                if unsafe { self.gb.push(slice.ptr_guard().as_ptr(), n) }.is_err() {
                    return Err(self.no_room());
                }
                pos += n;
            }
            if !fits {
                self.begin_frame_once(&mut begun, &ghdr, thl)?;
                oversized = true;
                pos += body;
            }
        }
        if bad.is_none() {
            bad = walk.error();
        }
        let h = VnetHdr::parse(&ghdr).unwrap_or_default();
        let refused = match bad {
            Some(e) => Some(Refusal::Chain(e)),
            None => tx_refusal(&h, pos, ghl, oversized, self.max_tx_frame, &self.negotiated)
                .map(Refusal::Frame),
        };
        if let Some(r) = refused {
            self.gb.abandon();
            return Ok(Took::Refused(r));
        }
        if inline {
            self.gb.finish_inline();
        } else {
            self.gb.finish();
        }
        Ok(Took::Frame(pos - ghl))
    }

    /// Starts the gather batch's next frame once its header (`ghdr`, complete) is read: with
    /// a copy of the header for a transport that takes one (`thl`); a frame that asks for an
    /// offload a transport without a header cannot carry goes to the copying path.
    fn begin_frame(&mut self, ghdr: &[u8; GUEST_HDR_LEN], thl: usize) -> Result<(), Defer> {
        let h = VnetHdr::parse(ghdr).unwrap_or_default();
        if thl == 0 && (h.gso_type != vnet::GSO_NONE || h.flags & vnet::F_NEEDS_CSUM != 0) {
            return Err(Defer::Copy);
        }
        let mut th = [0u8; vnet::HDR_LEN];
        th.copy_from_slice(&ghdr[..vnet::HDR_LEN]);
        if self.gb.begin((thl > 0).then_some(&th)).is_err() {
            return Err(self.no_room());
        }
        Ok(())
    }

    /// [`Datapath::begin_frame`] at the first of the frame's bytes after its header
    /// (`begun` says whether that was).
    fn begin_frame_once(
        &mut self,
        begun: &mut bool,
        ghdr: &[u8; GUEST_HDR_LEN],
        thl: usize,
    ) -> Result<(), Defer> {
        if !*begun {
            self.begin_frame(ghdr, thl)?;
            *begun = true;
        }
        Ok(())
    }

    /// The gather batch cannot take the frame being built: it waits for the next round, or,
    /// alone in an empty batch (so it will never fit), it is copied.
    fn no_room(&mut self) -> Defer {
        self.gb.abandon();
        if Frames::count(&self.gb) > 0 {
            Defer::Later
        } else {
            Defer::Copy
        }
    }

    /// Copies one transmit chain into the next free batch buffer, converting the header. A
    /// chain that is malformed, or a frame the guest may not send (shorter than an Ethernet
    /// header, over the MTU without GSO, GSO it did not negotiate), is counted and not sent.
    /// On a transport without a virtio-net header, the offloads the guest asked for are done
    /// here: a partial checksum is completed, a GSO frame is copied aside and segmented into
    /// as many batch buffers ([`Gathered::NoRoom`] when the batch has not that many free).
    fn gather(
        &mut self,
        chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>,
        queue_size: u16,
        mem: &GuestMemoryMmap,
    ) -> Gathered {
        let ghl = self.negotiated.hdr_len.max(vnet::HDR_LEN);
        let thl = self.transport.vnet_hdr_len();
        let n = self.negotiated;
        let max_frame = self.max_tx_frame;
        let stats = &*self.stats;
        let free = self.tx.depth() - self.tx.count();
        let depth = self.tx.depth();
        let scratch = &mut self.gso_scratch;
        let Some(buf) = self.tx.next_free() else {
            return Gathered::Taken;
        };
        let space = buf.space();
        let mut ghdr = [0u8; GUEST_HDR_LEN];
        let mut pos = 0usize;
        let mut verdict = None;
        let mut oversized = false;
        // Decided at the first byte of the frame, once the header is read: a GSO frame for
        // software segmentation goes to the scratch buffer.
        let mut aside = None;
        let mut walk = Walk::new(chain, queue_size);
        for desc in walk.by_ref() {
            if desc.is_write_only() {
                verdict = Some(Refusal::Chain(ChainError::WrongDirection));
                break;
            }
            let mut addr = desc.addr();
            let mut len = desc.len() as usize;
            if pos < ghl {
                let k = len.min(ghl - pos);
                if mem.read_slice(&mut ghdr[pos..pos + k], addr).is_err() {
                    verdict = Some(Refusal::Chain(ChainError::BadAddress));
                    break;
                }
                pos += k;
                len -= k;
                addr = GuestAddress(addr.0.wrapping_add(k as u64));
            }
            if len == 0 {
                continue;
            }
            let to_scratch =
                *aside.get_or_insert(thl == 0 && ghdr[1] != vnet::GSO_NONE && !scratch.is_empty());
            let dest: &mut [u8] = if to_scratch { scratch } else { space };
            let at = thl + (pos - ghl);
            if at + len > dest.len() {
                // Too long to send; the rest of the chain is still walked (not copied), so a
                // malformed chain is counted as such.
                oversized = true;
                pos += len;
                continue;
            }
            if mem.read_slice(&mut dest[at..at + len], addr).is_err() {
                verdict = Some(Refusal::Chain(ChainError::BadAddress));
                break;
            }
            pos += len;
        }
        if verdict.is_none() {
            verdict = walk.error().map(Refusal::Chain);
        }
        let frame_len = pos.saturating_sub(ghl);
        let h = VnetHdr::parse(&ghdr).unwrap_or_default();
        if verdict.is_none() {
            verdict = tx_refusal(&h, pos, ghl, oversized, max_frame, &n).map(Refusal::Frame);
        }
        if let Some(r) = verdict {
            r.count(stats);
            return Gathered::Taken;
        }
        if aside == Some(true) {
            let frame = &self.gso_scratch[..frame_len];
            let plan = match segment::plan(frame, h.gso_type, h.gso_size, depth) {
                // Segments longer than the MTU allows (an MSS the MTU cannot take).
                Ok(p) if p.max_segment_len() > max_frame => {
                    NetCounters::inc(&stats.tx_dropped_over_mtu);
                    return Gathered::Taken;
                }
                Ok(p) => p,
                Err(e) => {
                    log::debug!("{}: GSO frame not segmented: {e}", self.transport.name());
                    NetCounters::inc(&stats.tx_dropped_bad_offload);
                    return Gathered::Taken;
                }
            };
            if plan.count > free {
                return Gathered::NoRoom;
            }
            for i in 0..plan.count {
                let Some(buf) = self.tx.next_free() else {
                    break;
                };
                let len = segment::write_segment(frame, &plan, i, buf.space());
                buf.set_len(len);
                if let Some(tap) = &mut self.capture {
                    tap.frame(buf.data());
                }
                self.tx.commit();
            }
        } else {
            if thl > 0 {
                space[..vnet::HDR_LEN].copy_from_slice(&ghdr[..vnet::HDR_LEN]);
            } else if h.flags & vnet::F_NEEDS_CSUM != 0
                && !vnet::complete_checksum(&mut space[..frame_len], h.csum_start, h.csum_offset)
            {
                NetCounters::inc(&stats.tx_dropped_bad_offload);
                return Gathered::Taken;
            }
            if let Some(tap) = &mut self.capture {
                tap.frame(&space[thl..thl + frame_len]);
            }
            buf.set_len(thl + frame_len);
            self.tx.commit();
        }
        stats.tx_packets.fetch_add(1, Ordering::Relaxed);
        stats
            .tx_bytes
            .fetch_add(frame_len as u64, Ordering::Relaxed);
        Gathered::Taken
    }

    /// Sends the copied frames waiting in the batch, in order; whether none is left.
    fn send_copied(&mut self) -> Result<bool, TransportError> {
        if self.tx.count() > 0 {
            let sent = self.transport.send(&self.tx)?;
            self.tx.consume(sent);
        }
        Ok(self.tx.count() == 0)
    }

    /// Whether frames wait for the transport to become writable (in the batch, or chains
    /// put back in the ring).
    pub fn tx_pending(&self) -> bool {
        self.tx.count() > 0 || self.tx_blocked
    }
}

/// After a look at the ring that found nothing to do: notifications are re-armed, and the
/// ring is looked at once more if chains raced in. Only once in a row (`rechecked`): a
/// hostile avail index (more than a ring ahead) makes `enable_notification` report work that
/// `pop_descriptor_chain` never yields, and must not make the datapath spin.
fn look_again(queue: &mut Queue, mem: &GuestMemoryMmap, rechecked: &mut bool) -> bool {
    match queue.enable_notification(mem) {
        Ok(true) if !*rechecked => {
            *rechecked = true;
            true
        }
        _ => false,
    }
}

/// Why a transmitted frame of `walked` bytes (the guest's `ghl`-byte header included) with
/// header `h` may not leave, if it may not: shorter than an Ethernet header, GSO the guest did
/// not negotiate, or `oversized` (longer than its buffer: GSO the guest may not send has its
/// own counter, the rest is over-MTU) or, without GSO, longer than `max_frame`.
fn tx_refusal(
    h: &VnetHdr,
    walked: usize,
    ghl: usize,
    oversized: bool,
    max_frame: usize,
    n: &Negotiated,
) -> Option<Counter> {
    let frame_len = walked.saturating_sub(ghl);
    if walked < ghl + ETH_HLEN {
        Some(|s| &s.tx_dropped_runt)
    } else if h.gso_type != vnet::GSO_NONE && !gso_allowed(h.gso_type, n) {
        Some(|s| &s.tx_dropped_gso)
    } else if oversized || (h.gso_type == vnet::GSO_NONE && frame_len > max_frame) {
        Some(|s| &s.tx_dropped_over_mtu)
    } else {
        None
    }
}

/// The header the guest gets for a received packet: the transport's (its first `thl`
/// bytes), adjusted to what the guest accepts, with `num_buffers` 1; all zero (no offload)
/// when the transport carries none. A checksum the guest did not agree to take partial is
/// completed in the packet. `Err` is the counter of the reason to drop it.
fn guest_header<'s>(
    packet: &mut PacketBuf,
    thl: usize,
    n: &Negotiated,
    stats: &'s NetCounters,
) -> Result<[u8; GUEST_HDR_LEN], &'s AtomicU64> {
    let len = packet.len();
    if len < thl + ETH_HLEN {
        return Err(&stats.rx_dropped_bad_header);
    }
    let mut hdr = [0u8; GUEST_HDR_LEN];
    if thl > 0 {
        let mut h = VnetHdr::parse(packet.data()).ok_or(&stats.rx_dropped_bad_header)?;
        if h.is_gso() && !gso_accepted(&h, n) {
            return Err(&stats.rx_dropped_gso);
        }
        if h.flags & vnet::F_NEEDS_CSUM != 0 && !n.rx.csum {
            let frame = &mut packet.space()[thl..len];
            if !vnet::complete_checksum(frame, h.csum_start, h.csum_offset) {
                return Err(&stats.rx_dropped_bad_header);
            }
            NetCounters::inc(&stats.rx_csum_completed);
            h.flags &= !vnet::F_NEEDS_CSUM;
        }
        if !n.rx.csum {
            h.flags &= !vnet::F_DATA_VALID;
        }
        h.write(&mut hdr);
    }
    hdr[NUM_BUFFERS_OFFSET..][..2].copy_from_slice(&1u16.to_le_bytes());
    Ok(hdr)
}

/// Whether the guest negotiated the GSO type of a received GSO frame (and its ECN bit).
fn gso_accepted(h: &VnetHdr, n: &Negotiated) -> bool {
    (match h.gso_type & !vnet::GSO_ECN {
        vnet::GSO_TCPV4 => n.rx.tso4,
        vnet::GSO_TCPV6 => n.rx.tso6,
        _ => false,
    }) && (h.gso_type & vnet::GSO_ECN == 0 || n.rx.ecn)
}

/// How filling the guest's receive buffers with one frame ended.
enum Fill {
    /// The whole frame is written; the chains are in `used`.
    Done,
    /// The guest has too few buffers: the chains taken were put back in the ring.
    NoBuffers,
    /// A malformed chain (`Some`), or a frame larger than one buffer without MRG_RXBUF
    /// (`None`): the chains taken, in `used`, must go back empty.
    Refused(Option<ChainError>),
}

/// Where one received frame went: the datapath's scratch lists, capacity kept across frames.
struct RxChains<'a> {
    hdr_pieces: &'a mut Vec<(GuestAddress, usize)>,
    used: &'a mut Vec<(u16, u32)>,
    ring: &'a mut UsedRing,
}

impl RxChains<'_> {
    /// Writes `pieces` (the guest's header, then the frame: see [`RxChains::fill`]) into the
    /// guest's buffers and hands them back: used, with `num_buffers` patched, and counted in
    /// `rx_packets`/`rx_bytes`; or, refused, empty and counted by reason.
    fn land(
        mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
        pieces: &[&[u8]],
        n: &Negotiated,
        stats: &NetCounters,
    ) -> Delivery {
        match self.fill(queue, mem, pieces, n.mrg_rxbuf) {
            Fill::Done => {}
            Fill::NoBuffers => return Delivery::NoBuffers,
            Fill::Refused(why) => {
                match why {
                    Some(e) => stats.bad_chains.count(e),
                    None => NetCounters::inc(&stats.rx_dropped_too_big),
                }
                for u in self.used.iter_mut() {
                    u.1 = 0;
                }
                let _ = self.ring.stage(queue, mem, self.used);
                return Delivery::Dropped;
            }
        }
        if n.hdr_len == GUEST_HDR_LEN && self.used.len() > 1 {
            patch_num_buffers(mem, self.hdr_pieces, self.used.len(), stats);
        }
        // Published with the rest of its batch (see `Datapath::process_rx`); its chains
        // together in any case, never the first without the rest (see [`super::used`]).
        let _ = self.ring.stage(queue, mem, self.used);
        let bytes: usize = pieces.iter().skip(1).map(|p| p.len()).sum();
        stats.rx_packets.fetch_add(1, Ordering::Relaxed);
        stats.rx_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        Delivery::Delivered
    }

    /// Writes `pieces` one after the other (the guest's header first, then the frame) into
    /// the guest's next chains (one, or as many as it takes with MRG_RXBUF), recording each
    /// chain and where the header landed.
    fn fill(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
        pieces: &[&[u8]],
        mrg_rxbuf: bool,
    ) -> Fill {
        let hdr_len = pieces.first().map_or(0, |h| h.len());
        let total: usize = pieces.iter().map(|p| p.len()).sum();
        let start = queue.next_avail();
        let queue_size = queue.size();
        self.hdr_pieces.clear();
        self.used.clear();
        let mut written = 0usize;
        while written < total {
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                // Not enough buffers for the whole frame: give back what we took and wait.
                queue.set_next_avail(start);
                return Fill::NoBuffers;
            };
            let head = chain.head_index();
            let mut in_chain = 0usize;
            let mut bad = None;
            let mut walk = Walk::new(chain, queue_size);
            for desc in walk.by_ref() {
                if !desc.is_write_only() {
                    bad = Some(ChainError::WrongDirection);
                    break;
                }
                let take = (desc.len() as usize).min(total - written);
                if write_span(mem, desc.addr(), pieces, written, take).is_err() {
                    bad = Some(ChainError::BadAddress);
                    break;
                }
                if written < hdr_len {
                    self.hdr_pieces.push((desc.addr(), take));
                }
                written += take;
                in_chain += take;
                if written == total {
                    break;
                }
            }
            if bad.is_none() && written < total {
                // The walk ran out before the frame did: did the chain end, or was it cut?
                bad = walk.error();
            }
            self.used.push((head, in_chain as u32));
            if bad.is_some() {
                return Fill::Refused(bad);
            }
            if !mrg_rxbuf && written < total {
                return Fill::Refused(None);
            }
        }
        Fill::Done
    }
}

/// num_buffers: the number of buffers (chains) the frame really used, written wherever the
/// header's `num_buffers` bytes landed (virtio 1.2, 5.1.6.4).
fn patch_num_buffers(
    mem: &GuestMemoryMmap,
    hdr_pieces: &[(GuestAddress, usize)],
    chains: usize,
    stats: &NetCounters,
) {
    let count = u16::try_from(chains).unwrap_or(u16::MAX).to_le_bytes();
    if write_at(mem, hdr_pieces, NUM_BUFFERS_OFFSET, &count).is_err() {
        stats.bad_chains.count(ChainError::BadAddress);
    }
}

/// Writes bytes `off..off+n` of the logical stream `pieces[0] ++ pieces[1] ++ ...` at
/// `addr`.
fn write_span(
    mem: &GuestMemoryMmap,
    addr: GuestAddress,
    pieces: &[&[u8]],
    off: usize,
    n: usize,
) -> Result<(), vm_memory::GuestMemoryError> {
    let mut addr = addr;
    let mut skip = off;
    let mut n = n;
    for p in pieces {
        if n == 0 {
            break;
        }
        if skip >= p.len() {
            skip -= p.len();
            continue;
        }
        let k = n.min(p.len() - skip);
        mem.write_slice(&p[skip..skip + k], addr)?;
        addr = GuestAddress(addr.0.wrapping_add(k as u64));
        skip = 0;
        n -= k;
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

mod direct;

#[cfg(test)]
mod tests;
