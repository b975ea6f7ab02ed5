//! The host side of a network device: descriptors that move Ethernet frames in batches.
//!
//! A transport never sees virtqueues. The backend copies frames between guest memory and a
//! [`PacketBatch`] of buffers allocated once per device, so the hot path allocates nothing.
//! When [`Transport::vnet_hdr_len`] is non-zero every packet in a batch, in both directions,
//! starts with that many bytes of `struct virtio_net_hdr` (little-endian, no `num_buffers`).

pub(crate) mod bess;
mod bpf;
pub mod csum;
pub(crate) mod daemon;
mod fanout;
pub(crate) mod fd;
mod gather;
pub(crate) mod gre;
pub(crate) mod hybrid;
mod ipsock;
pub(crate) mod l2tpv3;
mod packet;
pub(crate) mod pcap;
pub(crate) mod raw;
mod switch_port;
mod sys;
pub(crate) use sys::epoll_ctl;
pub use sys::{seqpacket_pair, setsockopt_int};
pub(crate) mod tap;
mod tapdev;
mod tunnel;
pub(crate) mod udp;
mod udp_gro;
pub(crate) mod user;
pub(crate) mod vde;
pub mod vnet;
pub(crate) mod xdp;
mod xdp_prog;
mod xsk;

pub use xdp::Shared as XdpShared;

use std::os::fd::RawFd;

use crate::config::TransportConfig;

/// Classic BPF in user space and libpcap's compiler, for the backend's frame capture.
pub(crate) use bpf::run as run_bpf;
pub use bpf::BpfProgram;
pub use gather::{Frames, GatherBatch, INLINE_FRAME, MAX_FRAME_PIECES};
pub(crate) use pcap::compile as compile_filter;
pub use tunnel::HeaderDrops;

/// One packet buffer of fixed capacity, allocated once and reused.
pub struct PacketBuf {
    buf: Box<[u8]>,
    len: usize,
}

impl PacketBuf {
    /// A zeroed buffer that can hold `capacity` bytes.
    pub fn new(capacity: usize) -> Self {
        PacketBuf {
            buf: vec![0u8; capacity].into_boxed_slice(),
            len: 0,
        }
    }

    /// The packet: the first `len` bytes.
    pub fn data(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// The whole buffer, to be filled before [`PacketBuf::set_len`].
    pub fn space(&mut self) -> &mut [u8] {
        &mut self.buf
    }

    pub fn capacity(&self) -> usize {
        self.buf.len()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Sets the packet length, clamped to the capacity.
    pub fn set_len(&mut self, len: usize) {
        self.len = len.min(self.buf.len());
    }
}

/// A batch of up to `depth` packets: what one `recvmmsg`/`sendmmsg` moves.
pub struct PacketBatch {
    bufs: Vec<PacketBuf>,
    count: usize,
}

impl PacketBatch {
    /// `depth` buffers of `capacity` bytes each.
    pub fn new(depth: usize, capacity: usize) -> Self {
        PacketBatch {
            bufs: (0..depth.max(1))
                .map(|_| PacketBuf::new(capacity))
                .collect(),
            count: 0,
        }
    }

    /// How many packets the batch can hold.
    pub fn depth(&self) -> usize {
        self.bufs.len()
    }

    /// The filled packets.
    pub fn packets(&self) -> &[PacketBuf] {
        &self.bufs[..self.count]
    }

    /// Every buffer, filled or not (for a transport's receive).
    pub fn bufs_mut(&mut self) -> &mut [PacketBuf] {
        &mut self.bufs
    }

    /// How many packets are filled.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Marks the first `count` buffers as filled (clamped to the depth).
    pub fn set_count(&mut self, count: usize) {
        self.count = count.min(self.bufs.len());
    }

    /// The next free buffer, or `None` when the batch is full. Call [`PacketBatch::commit`]
    /// once it holds a packet.
    pub fn next_free(&mut self) -> Option<&mut PacketBuf> {
        self.bufs.get_mut(self.count)
    }

    /// Counts the buffer returned by [`PacketBatch::next_free`] as filled.
    pub fn commit(&mut self) {
        if self.count < self.bufs.len() {
            self.count += 1;
        }
    }

    /// Drops the first `n` packets (those already sent), keeping the rest in order.
    pub fn consume(&mut self, n: usize) {
        let n = n.min(self.count);
        self.bufs[..self.count].rotate_left(n);
        self.count -= n;
    }

    pub fn clear(&mut self) {
        self.count = 0;
    }

    /// Drops the empty packets, keeping the others in order.
    pub fn retain_nonempty(&mut self) {
        let mut kept = 0;
        for i in 0..self.count {
            if !self.bufs[i].is_empty() {
                self.bufs.swap(kept, i);
                kept += 1;
            }
        }
        self.count = kept;
    }
}

/// Offloads the guest negotiated, to be mirrored on the host side of the transport.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offloads {
    /// The guest accepts partially checksummed frames (`VIRTIO_NET_F_GUEST_CSUM`).
    pub csum: bool,
    /// `VIRTIO_NET_F_GUEST_TSO4`.
    pub tso4: bool,
    /// `VIRTIO_NET_F_GUEST_TSO6`.
    pub tso6: bool,
    /// `VIRTIO_NET_F_GUEST_ECN`.
    pub ecn: bool,
}

/// Frames a transport dropped, by reason (never silently).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransportStats {
    /// Received frames larger than a buffer (the MTU and headroom allow for).
    pub rx_dropped_truncated: u64,
    /// Frames the host refused to send (too big for the interface, malformed header).
    pub tx_dropped: u64,
    /// Tunnels: received datagrams whose tunnel header is not this tunnel's, by reason.
    pub rx_dropped_header: HeaderDrops,
    /// Tunnels: received datagrams from another source than the configured peer.
    pub rx_dropped_foreign: u64,
    /// mcast: our own transmissions, looped back by the host and not delivered to the guest.
    pub rx_dropped_own: u64,
    /// Frames a receive-only transport (`pcap`) was asked to send: taken from the guest and
    /// counted here, never sent.
    pub tx_refused: u64,
    /// Frames the kernel dropped because our socket's receive queue was full (AF_PACKET's
    /// `tp_drops`, an IP or unix socket's `sk_drops`, a tap's own `tx_dropped`): lost before
    /// we could read them.
    pub rx_dropped_kernel: u64,
    /// Times the peer of a connected socket hung up (end-of-file, reset): 0 or 1, as the
    /// socket is not read again afterwards.
    pub peer_hung_up: u64,
    /// Frames the guest sent after the peer of a connected socket had gone.
    pub tx_dropped_peer_gone: u64,
    /// user: frames libslirp produced for the guest while our backlog of frames the guest
    /// had not taken yet was full.
    pub rx_dropped_backlog: u64,
    /// UDP tunnels: datagrams that left in UDP GSO runs (not a drop: how many went the
    /// cheaper way; see `tunnel.rs`).
    pub tx_udp_gso_datagrams: u64,
    /// UDP tunnels: datagrams that arrived merged in UDP GRO messages (not a drop: how many
    /// came the cheaper way; see `udp_gro.rs`).
    pub rx_udp_gro_datagrams: u64,
}

impl std::fmt::Display for TransportStats {
    /// One line for the log: only the drop counters that are not zero.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let h = &self.rx_dropped_header;
        let fields = [
            ("rx truncated", self.rx_dropped_truncated),
            ("rx bad tunnel header", h.total()),
            ("rx wrong key", h.wrong_key),
            ("rx wrong session", h.wrong_session),
            ("rx wrong cookie", h.wrong_cookie),
            ("rx foreign source", self.rx_dropped_foreign),
            ("rx own echo", self.rx_dropped_own),
            ("tx dropped", self.tx_dropped),
            ("tx refused", self.tx_refused),
            ("rx kernel drops (queue full)", self.rx_dropped_kernel),
            ("peer hung up", self.peer_hung_up),
            ("tx to a gone peer", self.tx_dropped_peer_gone),
            ("rx backlog full", self.rx_dropped_backlog),
        ];
        let mut any = false;
        for (name, n) in fields.iter().filter(|(_, n)| *n > 0) {
            write!(f, "{}{name} {n}", if any { ", " } else { "" })?;
            any = true;
        }
        if !any {
            write!(f, "no drops")?;
        }
        Ok(())
    }
}

/// The far end of a connected socket (fd, bess, daemon, vde). Once it hangs up, the socket is
/// not read again: at end-of-file a seqpacket socket stays readable and every receive returns
/// empty messages, so reading on would spin with the datapath's lock held. Once sending to it
/// fails for good, frames for it are dropped and counted without a system call.
#[derive(Debug, Default)]
pub(crate) struct Peer {
    rx_gone: bool,
    tx_gone: bool,
}

impl Peer {
    /// The peer will send nothing more: do not read.
    pub fn rx_gone(&self) -> bool {
        self.rx_gone
    }

    /// The peer takes nothing more: do not send.
    pub fn tx_gone(&self) -> bool {
        self.tx_gone
    }

    fn count(&self, stats: &mut TransportStats) {
        if !self.rx_gone && !self.tx_gone {
            stats.peer_hung_up += 1;
        }
    }

    /// Records end-of-file (or a reset) on receive; warns once.
    pub fn rx_hung_up(&mut self, transport: &str, why: &str, stats: &mut TransportStats) {
        if self.rx_gone {
            return;
        }
        self.count(stats);
        self.rx_gone = true;
        log::warn!("{transport}: the peer hung up ({why}): its socket is no longer read");
    }

    /// Records that sending failed for good; warns once. The caller drops the frames.
    pub fn tx_hung_up(&mut self, transport: &str, e: &std::io::Error, stats: &mut TransportStats) {
        if self.tx_gone {
            return;
        }
        self.count(stats);
        self.tx_gone = true;
        log::warn!("{transport}: the peer is gone ({e}): frames for it are dropped and counted");
    }

    /// After a receive on a connected seqpacket socket: if the batch holds empty messages and
    /// the peer hung up, they are its end-of-file markers; they leave the batch (the frames
    /// before them stay) and the socket is not read again. An empty message from a peer still
    /// there stays, for the datapath to drop as a runt.
    pub fn check_eof(
        &mut self,
        transport: &str,
        fd: RawFd,
        batch: &mut PacketBatch,
        stats: &mut TransportStats,
    ) {
        if batch.packets().iter().any(PacketBuf::is_empty) && sys::peer_hung_up(fd) {
            batch.retain_nonempty();
            self.rx_hung_up(transport, "end of file", stats);
        }
    }
}

/// What the kernel dropped on `fd`'s receive queue, 0 where it cannot say (not a socket).
fn kernel_drops(fd: RawFd) -> u64 {
    sys::socket_drops(fd).map_or(0, u64::from)
}

/// Errors of the transports.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("{transport}: {op}: {source}")]
    Io {
        transport: &'static str,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{transport}: interface `{ifname}`: {source}")]
    Interface {
        transport: &'static str,
        ifname: String,
        #[source]
        source: std::io::Error,
    },
    #[error("bpffile `{path}`: {reason}")]
    Bpf { path: String, reason: String },
    #[error("transport `{0}` is not implemented yet")]
    Unsupported(&'static str),
    /// A socket that could not be made or bound (tunnels, udp, bess).
    #[error("{transport}: {source}")]
    Socket {
        transport: &'static str,
        #[source]
        source: ipsock::BindError,
    },
    #[error("{transport}: {reason}")]
    Invalid {
        transport: &'static str,
        reason: String,
    },
}

/// The host side of one network device.
pub trait Transport: Send {
    /// The transport's name, as in `transport=NAME`.
    fn name(&self) -> &'static str;

    /// Bytes of `struct virtio_net_hdr` (10) that precede every packet on this transport, or 0.
    fn vnet_hdr_len(&self) -> usize;

    /// The descriptor that becomes readable when packets arrive.
    fn rx_fd(&self) -> RawFd;

    /// The descriptor to wait on (for writability) after [`Transport::send`] fell short.
    fn tx_fd(&self) -> RawFd;

    /// Receives up to `batch.depth()` packets without blocking and sets the batch's count.
    /// Returns how many arrived; 0 means none is waiting.
    fn recv(&mut self, batch: &mut PacketBatch) -> Result<usize, TransportError>;

    /// Sends the batch's packets without blocking. Returns how many the host accepted; fewer
    /// than `batch.count()` means the host would block: wait on [`Transport::tx_fd`].
    /// Packets the host refuses outright (too big, ...) count as sent and are dropped.
    fn send(&mut self, batch: &PacketBatch) -> Result<usize, TransportError>;

    /// Whether [`Transport::send_gather`] works: the transport sends from gather lists (the
    /// guest's buffers) as cheaply as from a batch, so the datapath need not copy frames.
    fn gathers(&self) -> bool {
        false
    }

    /// Sends frames given as gather lists, like [`Transport::send`] (same return, same
    /// drops). Only called when [`Transport::gathers`] says so; the others refuse.
    fn send_gather(&mut self, frames: &GatherBatch) -> Result<usize, TransportError> {
        let _ = frames;
        Err(TransportError::Invalid {
            transport: self.name(),
            reason: "cannot send from gather lists".into(),
        })
    }

    /// Whether [`Transport::recv_into`] works: the transport reads one whole frame per call,
    /// its `vnet_hdr_len()` header first, into any gather list, so the datapath can receive
    /// straight into the guest's buffers instead of through the batch.
    fn scatters(&self) -> bool {
        false
    }

    /// Reads one frame, header first, into `iovs` without blocking. `Ok(Some(len))`: its
    /// length, which is at least the iovecs' total when the kernel cut it short (the caller
    /// drops such a frame); `Ok(None)`: none is waiting. Only called when
    /// [`Transport::scatters`] says so; the others refuse.
    ///
    /// # Safety
    /// Each iovec must describe memory the kernel may write for the whole call.
    unsafe fn recv_into(&mut self, iovs: &[libc::iovec]) -> Result<Option<usize>, TransportError> {
        let _ = iovs;
        Err(TransportError::Invalid {
            transport: self.name(),
            reason: "cannot receive into gather lists".into(),
        })
    }

    /// Mirrors the offloads the guest negotiated on the host side (`TUNSETOFFLOAD`, ...).
    /// Transports without offloads ignore it.
    fn set_offloads(&mut self, offloads: Offloads) -> Result<(), TransportError>;

    /// Bytes a received message may carry in front of the frame, which the transport strips
    /// after receiving it into a batch buffer (a tunnel's IP and tunnel headers): the
    /// datapath sizes receive buffers by the frame plus this.
    fn rx_overhead(&self) -> usize {
        0
    }

    /// Whether frames already read from [`Transport::rx_fd`] wait in the transport for the
    /// next [`Transport::recv`] (a UDP GRO message split over several batches), which the
    /// descriptor no longer shows. [`Transport::recv`] returns 0 only when none does.
    fn rx_pending(&self) -> bool {
        false
    }

    /// Whether a [`Transport::recv`] returned 0 at a bound of its own (a flood of frames it
    /// dropped) with more perhaps waiting, since this was last asked: the worker's watch is
    /// edge-triggered, so the descriptor would not announce them again until something new
    /// arrives, and the datapath re-arms it once per such receive (once: a re-armed event
    /// that finds the ring unserved and receives nothing must not re-arm again).
    fn take_rx_cut_short(&mut self) -> bool {
        false
    }

    /// Whether the transport opens sockets as it runs (libslirp's connections on the guest's
    /// behalf), which the datapath's seccomp filter then allows
    /// ([`crate::seccomp::ThreadKind::Worker`]).
    fn opens_sockets(&self) -> bool {
        false
    }

    /// Bytes the transport holds for frames besides the datapath's batches (xdp's UMEM), for
    /// the control socket's `info`; most transports hold none.
    fn buffer_bytes(&self) -> usize {
        0
    }

    /// What the transport dropped so far.
    fn stats(&self) -> TransportStats {
        TransportStats::default()
    }

    /// Replaces the classic BPF receive filter (`bpffile=`'s, or none) with `program`, keeping
    /// the transport's own filtering (raw drops our transmissions, hybrid keeps only what the
    /// host transmits). Only raw and hybrid receive through a socket filter; the others
    /// refuse. The caller decides whether replacing is allowed (`bpfflash=1`).
    fn replace_filter(&mut self, program: &BpfProgram) -> Result<(), TransportError> {
        let _ = program;
        Err(TransportError::Invalid {
            transport: self.name(),
            reason: "no BPF receive filter to replace (only raw and hybrid have one)".into(),
        })
    }

    /// Steers the host's frames among the queue pairs of a multi-queue device (`queues=N`),
    /// as the guest enables and disables them: a frame is handed only to a pair whose guest
    /// receive ring is served. Single-queue transports have nothing to steer.
    fn steer(&mut self, steering: Steering) -> Result<(), TransportError> {
        let _ = steering;
        Ok(())
    }

    /// What the next queue pair's transport joins (the tap this one created, the fanout group
    /// this one made): see [`open_queues`].
    fn queue_group(&self) -> QueueGroup {
        QueueGroup::None
    }
}

/// Which of a device's queue pairs a transport serves (`queues=N`). Transports that take
/// `queues` (tap, raw, xdp) open one descriptor per pair; the others are only ever opened as
/// pair 0 of 1 (the grammar refuses `queues` on them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueSlot {
    /// This pair, from 0.
    pub index: u16,
    /// The device's pairs.
    pub count: u16,
    /// What pair 0 made, for pairs 1 and up to join.
    pub group: QueueGroup,
}

impl QueueSlot {
    /// The only pair of a single-queue device.
    pub const SINGLE: QueueSlot = QueueSlot {
        index: 0,
        count: 1,
        group: QueueGroup::None,
    };
}

/// What pair 0 of a multi-queue device made, which the other pairs join.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QueueGroup {
    None,
    /// A multi-queue tap, by name (pair 0 may have created it).
    Tap(String),
    /// An AF_PACKET fanout group, by the id the kernel gave it (`PACKET_FANOUT_FLAG_UNIQUEID`).
    Fanout(u16),
    /// The XDP program and socket map pair 0 attached, for the other pairs' sockets.
    Xdp(XdpShared),
}

/// How the host's frames are steered now, as a pair's worker sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Steering {
    /// This pair's receive ring is served (ready and enabled by the frontend).
    pub served: bool,
    /// How many pairs from 0 on are served without a gap (at least 1: pair 0 takes what no
    /// other pair can, and keeps it until its ring is served).
    pub leading: u16,
}

pub mod wire;

/// What an opener gets besides the transport's own configuration: the common options it
/// needs, resolved.
pub(crate) struct Opening {
    /// Packets per multi-packet call: `depth`, or 1 with `vec=0`.
    pub depth: usize,
    /// `vec`: multi-packet I/O.
    pub vec: bool,
    pub mtu: u16,
    /// The `bpffile` program, loaded.
    pub filter: Option<BpfProgram>,
    /// The queue pair this transport serves.
    pub queue: QueueSlot,
}

/// Opens one transport from its configuration: a row's `open` in [`crate::kind::KINDS`].
pub(crate) type Opener =
    fn(&TransportConfig, &Opening) -> Result<Box<dyn Transport>, TransportError>;

/// An opener given a configuration that is not its transport's: the table pairs each
/// configuration with its opener, so this is a bug in the table, reported rather than panicking.
fn wrong_config(opener: &'static str) -> TransportError {
    TransportError::Invalid {
        transport: opener,
        reason: "given another transport's configuration (the transport table is wrong)".into(),
    }
}

/// Opens the transport a spec describes, through its row of [`crate::kind::KINDS`]: one per
/// queue pair (`queues=N`), in pair order. Pair 0 is opened first and says what the others
/// join ([`Transport::queue_group`]); they start steered away from (a detached tap queue, a
/// fanout group that hands everything to pair 0) until the guest enables them.
pub fn open_queues(
    spec: &crate::config::NetSpec,
) -> Result<Vec<Box<dyn Transport>>, TransportError> {
    let count = spec.common.queues.max(1);
    let mut opened: Vec<Box<dyn Transport>> = Vec::with_capacity(usize::from(count));
    for index in 0..count {
        let group = match opened.first() {
            Some(first) => first.queue_group(),
            None => QueueGroup::None,
        };
        opened.push(open_slot(
            spec,
            QueueSlot {
                index,
                count,
                group,
            },
        )?);
    }
    Ok(opened)
}

/// Opens the transport a spec describes as a single-queue device (pair 0 of 1, whatever
/// `queues` says): for tests and tools that drive one transport.
pub fn open(spec: &crate::config::NetSpec) -> Result<Box<dyn Transport>, TransportError> {
    open_slot(spec, QueueSlot::SINGLE)
}

fn open_slot(
    spec: &crate::config::NetSpec,
    queue: QueueSlot,
) -> Result<Box<dyn Transport>, TransportError> {
    let opening = Opening {
        depth: if spec.common.vec {
            usize::from(spec.common.depth)
        } else {
            1
        },
        vec: spec.common.vec,
        mtu: spec.common.mtu,
        filter: spec
            .common
            .bpffile
            .as_deref()
            .map(BpfProgram::load)
            .transpose()?,
        queue,
    };
    (spec.transport.kind().row().open)(&spec.transport, &opening)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consume_keeps_unsent_packets_in_order() {
        let mut b = PacketBatch::new(4, 8);
        for i in 0..3u8 {
            let p = b.next_free().unwrap();
            p.space()[0] = i;
            p.set_len(1);
            b.commit();
        }
        b.consume(1);
        assert_eq!(b.count(), 2);
        assert_eq!(b.packets()[0].data(), &[1]);
        assert_eq!(b.packets()[1].data(), &[2]);
    }
}
