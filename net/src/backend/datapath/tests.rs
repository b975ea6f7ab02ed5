//! The datapath against virtio-queue's mock split queue in real guest memory: frames cross
//! byte-exact both ways, MRG_RXBUF spreads a 64 KiB frame, and hostile chains are counted,
//! never trusted.

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::*;
use virtio_bindings::virtio_ring::{
    VRING_AVAIL_F_NO_INTERRUPT, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::backend::features::Negotiated;
use crate::backend::watch::testing::{epoll, ready};
use crate::backend::watch::Poller;
use crate::transport::{Frames, GatherBatch, Offloads, PacketBatch, Transport, TransportError};

/// What the fake host side holds: frames to hand the datapath, frames it sent, and how many
/// more sends the host accepts before "would block". Shared with the test.
#[derive(Default)]
struct Host {
    incoming: VecDeque<Vec<u8>>,
    sent: Vec<Vec<u8>>,
    accept: usize,
    /// Incoming frames larger than the batch's buffers.
    truncated: usize,
    /// Where each piece of each frame sent from gather lists was, in order.
    pieces: Vec<usize>,
    /// A used index to read at each batch receive (the guest's memory and its address), and
    /// what was read there.
    watch: Option<(GuestMemoryMmap, GuestAddress)>,
    idx_at_recv: Vec<u16>,
    /// The descriptors the transport reports (receive, transmit), for tests of the worker's
    /// epoll; -1 (none) otherwise.
    fds: Option<(RawFd, RawFd)>,
}

/// A transport in memory.
struct FakeTransport {
    hdr: usize,
    host: Arc<Mutex<Host>>,
    /// Whether it receives into gather lists, as a tap does ([`SCATTERING`]).
    scatters: bool,
}

impl Transport for FakeTransport {
    fn name(&self) -> &'static str {
        "fake"
    }
    fn vnet_hdr_len(&self) -> usize {
        self.hdr
    }
    fn rx_fd(&self) -> RawFd {
        self.host.lock().unwrap().fds.map_or(-1, |f| f.0)
    }
    fn tx_fd(&self) -> RawFd {
        self.host.lock().unwrap().fds.map_or(-1, |f| f.1)
    }
    fn recv(&mut self, batch: &mut PacketBatch) -> Result<usize, TransportError> {
        let mut host = self.host.lock().unwrap();
        if let Some((m, at)) = &host.watch {
            let idx = u16::from_le(m.load::<u16>(*at, Ordering::Acquire).unwrap());
            host.idx_at_recv.push(idx);
        }
        let mut n = 0;
        while n < batch.depth() {
            let Some(f) = host.incoming.pop_front() else {
                break;
            };
            let b = &mut batch.bufs_mut()[n];
            if f.len() > b.capacity() {
                // As a socket does: truncated, and dropped by the transport.
                host.truncated += 1;
                continue;
            }
            b.space()[..f.len()].copy_from_slice(&f);
            b.set_len(f.len());
            n += 1;
        }
        batch.set_count(n);
        Ok(n)
    }
    fn scatters(&self) -> bool {
        self.scatters
    }
    /// As a tap reads: one frame, spread over the iovecs in order, cut at their end, its
    /// whole length returned.
    unsafe fn recv_into(&mut self, iovs: &[libc::iovec]) -> Result<Option<usize>, TransportError> {
        let mut host = self.host.lock().unwrap();
        let Some(f) = host.incoming.pop_front() else {
            return Ok(None);
        };
        let mut rest = &f[..];
        for v in iovs {
            let k = rest.len().min(v.iov_len);
            // SAFETY: the caller vouches that each iovec is writable memory for the call.
            unsafe { std::ptr::copy_nonoverlapping(rest.as_ptr(), v.iov_base.cast(), k) };
            rest = &rest[k..];
        }
        if !rest.is_empty() || f.len() == iovs.iter().map(|v| v.iov_len).sum::<usize>() {
            host.truncated += 1;
        }
        Ok(Some(f.len()))
    }
    fn send(&mut self, batch: &PacketBatch) -> Result<usize, TransportError> {
        let mut host = self.host.lock().unwrap();
        let n = batch.count().min(host.accept);
        host.accept -= n;
        host.sent
            .extend(batch.packets()[..n].iter().map(|p| p.data().to_vec()));
        Ok(n)
    }
    fn gathers(&self) -> bool {
        true
    }
    fn send_gather(&mut self, frames: &GatherBatch) -> Result<usize, TransportError> {
        let mut host = self.host.lock().unwrap();
        let n = Frames::count(frames).min(host.accept);
        host.accept -= n;
        for i in 0..n {
            let mut one = libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            };
            let (p, k) = frames.iov(i, &mut one);
            // SAFETY: a gather batch's iovecs describe live memory for the call (its header
            // copies, and guest memory the datapath holds).
            let iovs = unsafe { std::slice::from_raw_parts(p, k) };
            let mut f = Vec::new();
            for v in iovs {
                host.pieces.push(v.iov_base as usize);
                // SAFETY: as above.
                f.extend_from_slice(unsafe {
                    std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len)
                });
            }
            host.sent.push(f);
        }
        Ok(n)
    }
    fn set_offloads(&mut self, _: Offloads) -> Result<(), TransportError> {
        Ok(())
    }
}

thread_local! {
    /// The datapaths this test makes copy every transmitted frame (see [`copying`]); else
    /// they send from the guest's buffers, as with a real transport that gathers.
    static COPYING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

thread_local! {
    /// The datapaths this test makes receive straight into the guest's buffers (see
    /// [`scattering`]); else their transport only fills batches.
    static SCATTERING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The receive tests again, with frames read straight into the guest's buffers (as from a
/// tap): both paths must deliver, wait, refuse and count alike.
mod scattering {
    macro_rules! scattering {
        ($($name:ident),* $(,)?) => {$(
            #[test]
            fn $name() {
                super::SCATTERING.with(|c| c.set(true));
                super::$name();
            }
        )*};
    }
    scattering!(
        rx_frames_land_byte_exact_after_a_v1_header,
        rx_64k_tso_frame_spreads_over_merged_buffers,
        rx_waits_for_buffers_instead_of_dropping,
        rx_without_mrg_drops_a_frame_larger_than_one_buffer,
        rx_offloads_the_guest_refused_are_completed_or_dropped,
        hostile_chains_are_counted_and_returned_empty,
        an_invalid_avail_index_does_not_hang_either_direction,
        rx_tiny_buffers_get_the_true_num_buffers,
        rx_looping_chain_is_refused,
        a_head_outside_the_descriptor_table_is_an_empty_chain_both_ways,
        the_guest_never_sees_part_of_a_frame,
    );
}

/// The transmit tests again, with every frame copied into the batch: both paths must send,
/// refuse and count alike.
mod copying {
    macro_rules! copying {
        ($($name:ident),* $(,)?) => {$(
            #[test]
            fn $name() {
                super::COPYING.with(|c| c.set(true));
                super::$name();
            }
        )*};
    }
    copying!(
        tx_frames_leave_byte_exact_with_the_transport_header,
        tx_frames_leave_byte_exact_however_the_chain_cuts_them,
        tx_backpressure_keeps_frames_until_the_host_takes_them,
        hostile_chains_are_counted_and_returned_empty,
        tx_looping_chain_is_refused_and_the_next_frame_goes_out,
        tx_frames_over_the_mtu_are_refused_and_counted,
        tx_gso_frames_need_the_negotiated_feature,
        tx_indirect_chain_longer_than_the_queue_is_refused,
        tx_stops_to_tell_the_guest_on_the_way_through_a_long_ring,
        a_head_outside_the_descriptor_table_is_an_empty_chain_both_ways,
        tx_tso_frames_are_segmented_for_a_transport_without_a_header,
        software_offloads_complete_checksums_and_count_what_they_refuse,
    );
}

const DATA: u64 = 0x10_0000;

fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x80_0000)]).unwrap()
}

fn datapath(hdr: usize, incoming: Vec<Vec<u8>>, features: u64) -> (Datapath, Arc<Mutex<Host>>) {
    let host = Arc::new(Mutex::new(Host {
        incoming: incoming.into(),
        sent: Vec::new(),
        accept: usize::MAX,
        truncated: 0,
        pieces: Vec::new(),
        ..Host::default()
    }));
    let t = FakeTransport {
        hdr,
        host: host.clone(),
        scatters: SCATTERING.with(|c| c.get()),
    };
    let mut dp = Datapath::new(Box::new(t), 8, 2, 1500);
    dp.set_negotiated(Negotiated::from_features(features))
        .unwrap();
    dp.set_zero_copy(!COPYING.with(|c| c.get()));
    dp.set_direct_from(0);
    (dp, host)
}

fn sent(host: &Mutex<Host>) -> Vec<Vec<u8>> {
    host.lock().unwrap().sent.clone()
}

const MRG: u64 = 1 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_NET_F_MRG_RXBUF;

fn desc(addr: u64, len: u32, flags: u32, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags as u16, next))
}

/// `count` receive chains of one writable buffer of `size` bytes each.
fn rx_chains(vq: &MockSplitQueue<GuestMemoryMmap>, count: u16, size: u32, first: u16) {
    let descs: Vec<RawDescriptor> = (0..count)
        .map(|i| {
            desc(
                DATA + u64::from(first + i) * 0x1_0000,
                size,
                VRING_DESC_F_WRITE,
                0,
            )
        })
        .collect();
    vq.add_desc_chains(&descs, first).unwrap();
}

fn used(vq: &MockSplitQueue<GuestMemoryMmap>, i: usize) -> (u32, u32) {
    let e = vq.used().ring().ref_at(i).unwrap().load();
    (e.id(), e.len())
}

fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect();
    f[12] = 0x88;
    f[13] = 0xb5;
    f
}

fn with_hdr(h: [u8; 10], f: &[u8]) -> Vec<u8> {
    let mut v = h.to_vec();
    v.extend_from_slice(f);
    v
}

#[test]
fn rx_frames_land_byte_exact_after_a_v1_header() {
    let m = mem();
    let vq = MockSplitQueue::create(&m, GuestAddress(0), 16);
    rx_chains(&vq, 2, 2048, 0);
    let mut q: Queue = vq.create_queue().unwrap();
    let frames = [frame(60, 1), frame(1514, 2)];
    let (mut dp, _host) = datapath(
        10,
        frames.iter().map(|f| with_hdr([0; 10], f)).collect(),
        MRG,
    );
    assert!(
        dp.process_rx(&mut q, &m).unwrap(),
        "the guest must be notified"
    );
    for (i, f) in frames.iter().enumerate() {
        let (id, len) = used(&vq, i);
        assert_eq!((id, len as usize), (i as u32, 12 + f.len()));
        let mut got = vec![0u8; len as usize];
        m.read_slice(&mut got, GuestAddress(DATA + i as u64 * 0x1_0000))
            .unwrap();
        assert_eq!(&got[..10], &[0; 10]);
        assert_eq!(&got[10..12], &1u16.to_le_bytes(), "num_buffers");
        assert_eq!(&got[12..], &f[..]);
    }
    assert_eq!(dp.stats().rx_packets.load(Ordering::Relaxed), 2);
}

#[test]
fn rx_64k_tso_frame_spreads_over_merged_buffers() {
    let m = mem();
    let vq = MockSplitQueue::create(&m, GuestAddress(0), 32);
    rx_chains(&vq, 20, 4096, 0);
    let mut q: Queue = vq.create_queue().unwrap();
    let big = frame(65_000, 3);
    let h = tcpv4_gso_hdr();
    let features = MRG | 1 << VIRTIO_NET_F_GUEST_CSUM | 1 << VIRTIO_NET_F_GUEST_TSO4;
    let (mut dp, _host) = datapath(10, vec![with_hdr(h, &big)], features);
    dp.process_rx(&mut q, &m).unwrap();
    let got = merged_frame(&m, &vq, 0, &big, 4096);
    assert_eq!(&got[..10], &h, "GSO header passed through");
}

/// GSO TCPv4 (MSS 1448) with a partial checksum, as a host stack hands it over with offloads
/// on.
fn tcpv4_gso_hdr() -> [u8; 10] {
    let mut h = [0u8; 10];
    h[0] = 1;
    h[1] = 1;
    h[4..6].copy_from_slice(&1448u16.to_le_bytes());
    h[6..8].copy_from_slice(&34u16.to_le_bytes());
    h[8..10].copy_from_slice(&16u16.to_le_bytes());
    h
}

/// The guest's frame `i` read back from `nbufs` consecutive used buffers starting at used
/// entry (and chain) `first`, each at its chain's address ([`rx_chains`]).
fn frame_in_chains(
    m: &GuestMemoryMmap,
    vq: &MockSplitQueue<GuestMemoryMmap>,
    first: usize,
    nbufs: usize,
) -> Vec<u8> {
    let mut got = Vec::new();
    for i in first..first + nbufs {
        let (id, len) = used(vq, i);
        assert_eq!(id as usize, i, "used entry {i}");
        let mut part = vec![0u8; len as usize];
        m.read_slice(&mut part, GuestAddress(DATA + i as u64 * 0x1_0000))
            .unwrap();
        got.extend(part);
    }
    got
}

/// The frame `f` as the guest reads it back from consecutive merged buffers of `size` bytes
/// ([`rx_chains`]), starting at used entry (and chain) `first`: checks the buffers used,
/// `num_buffers` and the frame; returns the bytes.
fn merged_frame(
    m: &GuestMemoryMmap,
    vq: &MockSplitQueue<GuestMemoryMmap>,
    first: usize,
    f: &[u8],
    size: usize,
) -> Vec<u8> {
    let total = 12 + f.len();
    let nbufs = total.div_ceil(size);
    let got = frame_in_chains(m, vq, first, nbufs);
    assert_eq!(got.len(), total);
    assert_eq!(
        u16::from_le_bytes([got[10], got[11]]) as usize,
        nbufs,
        "num_buffers"
    );
    assert_eq!(&got[12..], f);
    got
}

#[test]
fn rx_waits_for_buffers_instead_of_dropping() {
    let m = mem();
    let vq = MockSplitQueue::create(&m, GuestAddress(0), 16);
    let mut q: Queue = vq.create_queue().unwrap();
    let f = frame(100, 4);
    let (mut dp, _host) = datapath(10, vec![with_hdr([0; 10], &f)], MRG);
    assert!(!dp.process_rx(&mut q, &m).unwrap());
    assert_eq!(dp.stats().rx_packets.load(Ordering::Relaxed), 0);
    rx_chains(&vq, 1, 2048, 0);
    assert!(dp.process_rx(&mut q, &m).unwrap());
    assert_eq!(used(&vq, 0), (0, 112));
}

#[test]
fn rx_without_mrg_drops_a_frame_larger_than_one_buffer() {
    let m = mem();
    let vq = MockSplitQueue::create(&m, GuestAddress(0), 16);
    rx_chains(&vq, 2, 1024, 0);
    let mut q: Queue = vq.create_queue().unwrap();
    let v1 = 1 << VIRTIO_F_VERSION_1;
    let (mut dp, _host) = datapath(
        10,
        vec![
            with_hdr([0; 10], &frame(1400, 5)),
            with_hdr([0; 10], &frame(60, 6)),
        ],
        v1,
    );
    dp.process_rx(&mut q, &m).unwrap();
    assert_eq!(used(&vq, 0), (0, 0), "the too-small buffer goes back empty");
    assert_eq!(used(&vq, 1), (1, 72), "the next frame still arrives");
    assert_eq!(dp.stats().rx_dropped_too_big.load(Ordering::Relaxed), 1);
}

#[test]
fn rx_offloads_the_guest_refused_are_completed_or_dropped() {
    let m = mem();
    let vq = MockSplitQueue::create(&m, GuestAddress(0), 16);
    rx_chains(&vq, 2, 4096, 0);
    let mut q: Queue = vq.create_queue().unwrap();
    let mut gso = [0u8; 10];
    gso[1] = 1; // GSO_TCPV4
                // A UDP-like frame whose checksum at 34+6 is partial.
    let mut partial = [0u8; 10];
    partial[0] = 1;
    partial[6..8].copy_from_slice(&34u16.to_le_bytes());
    partial[8..10].copy_from_slice(&6u16.to_le_bytes());
    let f = frame(100, 7);
    let (mut dp, _host) = datapath(10, vec![with_hdr(gso, &f), with_hdr(partial, &f)], MRG);
    dp.process_rx(&mut q, &m).unwrap();
    let s = dp.stats();
    assert_eq!(s.rx_dropped_gso.load(Ordering::Relaxed), 1);
    assert_eq!(s.rx_csum_completed.load(Ordering::Relaxed), 1);
    let (id, len) = used(&vq, 0);
    assert_eq!(
        (id, len),
        (0, 112),
        "the completed frame used the first buffer"
    );
    let mut got = vec![0u8; 112];
    m.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    assert_eq!(
        got[0] & 1,
        0,
        "NEEDS_CSUM cleared for a guest without GUEST_CSUM"
    );
    assert_ne!(&got[12 + 40..12 + 42], &f[40..42], "checksum written");
}

/// A transmit chain: the 12-byte header in one read-only descriptor, the frame in another.
fn tx_chain(
    m: &GuestMemoryMmap,
    vq: &MockSplitQueue<GuestMemoryMmap>,
    head: u16,
    hdr: [u8; 12],
    f: &[u8],
) {
    let a = DATA + u64::from(head) * 0x1_0000;
    m.write_slice(&hdr, GuestAddress(a)).unwrap();
    m.write_slice(f, GuestAddress(a + 0x100)).unwrap();
    vq.add_desc_chains(
        &[
            desc(a, 12, VRING_DESC_F_NEXT, head + 1),
            desc(a + 0x100, f.len() as u32, 0, 0),
        ],
        head,
    )
    .unwrap();
}

#[test]
fn tx_frames_leave_byte_exact_with_the_transport_header() {
    let m = mem();
    let vq = MockSplitQueue::create(&m, GuestAddress(0), 16);
    let frames = [frame(60, 8), frame(1514, 9)];
    let mut h = [0u8; 12];
    h[0] = 1; // NEEDS_CSUM, passed on to a transport with a vnet header
    tx_chain(&m, &vq, 0, h, &frames[0]);
    tx_chain(&m, &vq, 2, h, &frames[1]);
    let mut q: Queue = vq.create_queue().unwrap();
    let (mut dp, host) = datapath(10, vec![], MRG);
    assert!(dp.process_tx(&mut q, &m).unwrap());
    let out = sent(&host);
    assert_eq!(out.len(), 2);
    for (o, f) in out.iter().zip(&frames) {
        assert_eq!(&o[..10], &h[..10]);
        assert_eq!(&o[10..], &f[..]);
    }
    // A transport without a header gets the bare frame.
    let vq2 = MockSplitQueue::create(&m, GuestAddress(0x40_0000), 16);
    tx_chain(&m, &vq2, 0, [0; 12], &frames[0]);
    let mut q2: Queue = vq2.create_queue().unwrap();
    let (mut bare, bare_host) = datapath(0, vec![], MRG);
    bare.process_tx(&mut q2, &m).unwrap();
    assert_eq!(sent(&bare_host), vec![frames[0].clone()]);
}

/// A driver may lay the header and the frame out as it likes: both in one descriptor (DPDK's
/// virtio PMD, Linux with VERSION_1), or cut anywhere, the header itself across descriptors.
/// Every layout leaves byte-exact, with the 10-byte header of a legacy guest and the 12-byte
/// one, small frames (copied inline) and large (pointed at).
#[test]
fn tx_frames_leave_byte_exact_however_the_chain_cuts_them() {
    for (features, ghl) in [(0, 10usize), (MRG, 12)] {
        for f in [frame(60, 3), frame(1514, 4)] {
            let mut h = [0u8; 12];
            h[0] = 1; // NEEDS_CSUM, passed on to a transport with a vnet header
            h[4] = 0x22; // csum_start, so a header cut short would show
            let bytes: Vec<u8> = h[..ghl].iter().chain(&f).copied().collect();
            // Where the chain's descriptors end, in bytes of header-and-frame.
            let cuts: [&[usize]; 5] = [&[], &[ghl], &[5], &[ghl + 3], &[1, ghl - 1, ghl + 1]];
            for cut in cuts {
                let m = mem();
                let vq = MockSplitQueue::create(&m, GuestAddress(0), 16);
                let mut descs = Vec::new();
                let mut from = 0;
                for (i, &to) in cut.iter().chain([&bytes.len()]).enumerate() {
                    // Each piece at its own page, so no two are adjacent in guest memory.
                    let a = DATA + 0x1000 * i as u64;
                    m.write_slice(&bytes[from..to], GuestAddress(a)).unwrap();
                    let last = to == bytes.len();
                    let next = if last { 0 } else { i as u16 + 1 };
                    let flags = if last { 0 } else { VRING_DESC_F_NEXT };
                    descs.push(desc(a, (to - from) as u32, flags, next));
                    from = to;
                }
                vq.add_desc_chains(&descs, 0).unwrap();
                let mut q: Queue = vq.create_queue().unwrap();
                let (mut dp, host) = datapath(10, vec![], features);
                dp.process_tx(&mut q, &m).unwrap();
                let out = sent(&host);
                let what = format!("{ghl}-byte header, {}-byte frame, cut at {cut:?}", f.len());
                assert_eq!(out.len(), 1, "{what}");
                assert_eq!(&out[0][..10], &h[..10], "{what}");
                assert_eq!(&out[0][10..], &f[..], "{what}");
            }
        }
    }
}

/// A transmit queue holding three 100-byte frames (heads 0, 2, 4), and its mock.
fn three_tx_frames(m: &GuestMemoryMmap) -> (MockSplitQueue<'_, GuestMemoryMmap>, Queue) {
    let vq = MockSplitQueue::create(m, GuestAddress(0), 16);
    for i in 0..3u16 {
        tx_chain(m, &vq, i * 2, [0; 12], &frame(100, i as u8));
    }
    let q: Queue = vq.create_queue().unwrap();
    (vq, q)
}

#[test]
fn tx_backpressure_keeps_frames_until_the_host_takes_them() {
    let m = mem();
    let (_vq, mut q) = three_tx_frames(&m);
    let (mut dp, host) = datapath(10, vec![], MRG);
    host.lock().unwrap().accept = 1;
    dp.process_tx(&mut q, &m).unwrap();
    assert_eq!(sent(&host).len(), 1);
    assert!(dp.tx_pending(), "the rest waits, nothing is dropped");
    host.lock().unwrap().accept = usize::MAX;
    dp.process_tx(&mut q, &m).unwrap();
    let out = sent(&host);
    assert_eq!(out.len(), 3);
    for (i, o) in out.iter().enumerate() {
        assert_eq!(&o[10..], &frame(100, i as u8)[..], "order kept");
    }
    assert!(!dp.tx_pending());
    // Each frame counted once, the one of the short round and the two retaken after it.
    let s = dp.stats();
    assert_eq!((load(&s.tx_packets), load(&s.tx_bytes)), (3, 300));
}

/// A busy-polling worker holds the guest's transmit kicks off: a round that takes chains
/// leaves them off; released, they stay off until the next round re-arms them (and takes
/// what came meanwhile). On both paths.
#[test]
fn held_transmit_kicks_stay_off_until_a_round_after_the_release() {
    for zero_copy in [true, false] {
        let m = mem();
        let vq = MockSplitQueue::create(&m, GuestAddress(0), 16);
        tx_chain(&m, &vq, 0, [0; 12], &frame(100, 0));
        let mut q: Queue = vq.create_queue().unwrap();
        let flags = vq.used_addr();
        let kicks_off = || {
            m.read_obj::<u16>(flags).unwrap()
                & virtio_bindings::virtio_ring::VRING_USED_F_NO_NOTIFY as u16
                != 0
        };
        let (mut dp, host) = datapath(10, vec![], MRG);
        dp.set_zero_copy(zero_copy);
        dp.process_tx(&mut q, &m).unwrap();
        assert!(
            !kicks_off(),
            "zero_copy {zero_copy}: a round ends with kicks on"
        );
        dp.hold_tx_kicks(true);
        tx_chain(&m, &vq, 2, [0; 12], &frame(100, 1));
        dp.process_tx(&mut q, &m).unwrap();
        assert!(
            kicks_off(),
            "zero_copy {zero_copy}: held, the round left them off"
        );
        dp.hold_tx_kicks(false);
        assert!(
            kicks_off(),
            "zero_copy {zero_copy}: the release alone re-arms nothing"
        );
        tx_chain(&m, &vq, 4, [0; 12], &frame(100, 2));
        dp.process_tx(&mut q, &m).unwrap();
        assert!(
            !kicks_off(),
            "zero_copy {zero_copy}: the next round re-arms them"
        );
        let out = sent(&host);
        assert_eq!(out.len(), 3, "zero_copy {zero_copy}: every frame left");
        for (i, o) in out.iter().enumerate() {
            assert_eq!(&o[10..], &frame(100, i as u8)[..]);
        }
    }
}

/// The worker hears of the transport's writability exactly while frames wait for the host:
/// asked for after a refused send (reported at once by a socket already writable again),
/// dropped once the backlog is gone; a watch moved to a replacing transport (what a swap
/// does) asks at once when frames still wait. The transport here sends on a descriptor of its
/// own, which is on the epoll only meanwhile.
#[test]
fn writability_is_watched_only_while_the_host_refuses_frames() {
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixDatagram;
    let m = mem();
    let (vq, mut q) = three_tx_frames(&m);
    let (mut dp, host) = datapath(10, vec![], MRG);
    let (rx, _rx_peer) = UnixDatagram::pair().unwrap();
    let (tx, _tx_peer) = UnixDatagram::pair().unwrap();
    host.lock().unwrap().fds = Some((rx.as_raw_fd(), tx.as_raw_fd()));
    let ep = epoll();
    dp.watch(Poller::new(&ep, (5, 6))).unwrap();
    assert!(!dp.watches_out());
    assert_eq!(ready(&ep), vec![]);

    host.lock().unwrap().accept = 1;
    dp.process_tx(&mut q, &m).unwrap();
    dp.sync_watch();
    assert!(dp.watches_out(), "frames wait for the host");
    assert_eq!(
        ready(&ep),
        vec![(6, false, true)],
        "writable already: reported at once"
    );

    // A swap: the watch moves to the replacing transport, the frames waiting with it.
    let poller = dp.unwatch().expect("watched");
    let next = FakeTransport {
        hdr: 10,
        host: host.clone(),
        scatters: false,
    };
    let old = dp.replace_transport(Box::new(next), 8, 2).ok().unwrap();
    drop(old);
    dp.watch(poller).unwrap();
    assert!(dp.watches_out(), "still waiting after the swap");
    assert_eq!(ready(&ep), vec![(6, false, true)]);

    host.lock().unwrap().accept = usize::MAX;
    dp.process_tx(&mut q, &m).unwrap();
    dp.sync_watch();
    assert_eq!(sent(&host).len(), 3);
    assert!(!dp.watches_out(), "nothing waits");
    // Off the epoll again: asking once more registers it afresh (no EEXIST) and reports.
    host.lock().unwrap().accept = 0;
    tx_chain(&m, &vq, 6, [0; 12], &frame(100, 3));
    dp.process_tx(&mut q, &m).unwrap();
    dp.sync_watch();
    assert!(dp.watches_out());
    assert_eq!(ready(&ep), vec![(6, false, true)]);
    dp.unwatch();
}

#[test]
fn hostile_chains_are_counted_and_returned_empty() {
    let m = mem();
    // Receive: a buffer outside guest memory, a read-only buffer, then a good one.
    let vq = MockSplitQueue::create(&m, GuestAddress(0), 16);
    vq.add_desc_chains(
        &[
            desc(0xffff_ffff_0000, 2048, VRING_DESC_F_WRITE, 0),
            desc(DATA, 2048, 0, 0),
            desc(DATA + 0x1_0000, 2048, VRING_DESC_F_WRITE, 0),
        ],
        0,
    )
    .unwrap();
    let mut q: Queue = vq.create_queue().unwrap();
    let f = frame(60, 10);
    let (mut dp, _host) = datapath(
        10,
        vec![
            with_hdr([0; 10], &f),
            with_hdr([0; 10], &f),
            with_hdr([0; 10], &f),
        ],
        MRG,
    );
    dp.process_rx(&mut q, &m).unwrap();
    assert_eq!(used(&vq, 0), (0, 0));
    assert_eq!(used(&vq, 1), (1, 0));
    assert_eq!(used(&vq, 2), (2, 72));
    let b = &dp.stats().bad_chains;
    assert_eq!(b.bad_address.load(Ordering::Relaxed), 1);
    assert_eq!(b.wrong_direction.load(Ordering::Relaxed), 1);

    // Transmit: a writable descriptor, one outside memory, one shorter than a header, and a
    // header claiming a frame far larger than any buffer.
    let vq = MockSplitQueue::create(&m, GuestAddress(0x40_0000), 16);
    vq.add_desc_chains(
        &[
            desc(DATA, 100, VRING_DESC_F_WRITE, 0),
            desc(0xffff_ffff_0000, 100, 0, 0),
            desc(DATA, 8, 0, 0),
            desc(DATA, 0x7fff_0000, 0, 0),
        ],
        0,
    )
    .unwrap();
    let mut q: Queue = vq.create_queue().unwrap();
    let (mut dp, host) = datapath(10, vec![], MRG);
    dp.process_tx(&mut q, &m).unwrap();
    assert!(sent(&host).is_empty());
    let s = dp.stats();
    assert_eq!(s.bad_chains.wrong_direction.load(Ordering::Relaxed), 1);
    assert_eq!(s.bad_chains.bad_address.load(Ordering::Relaxed), 1);
    assert_eq!(s.tx_dropped_runt.load(Ordering::Relaxed), 1);
    assert_eq!(s.tx_dropped_over_mtu.load(Ordering::Relaxed), 1);
    for i in 0..4 {
        assert_eq!(used(&vq, i).1, 0);
    }
}

/// A guest that publishes an avail index far beyond its ring (invalid) must not make the
/// datapath spin: both directions return.
#[test]
fn an_invalid_avail_index_does_not_hang_either_direction() {
    use vm_memory::Address;
    let m = mem();
    let vq = MockSplitQueue::create(&m, GuestAddress(0), 16);
    m.write_obj(1000u16, vq.avail_addr().unchecked_add(2))
        .unwrap();
    let mut q: Queue = vq.create_queue().unwrap();
    let (mut dp, _host) = datapath(10, vec![with_hdr([0; 10], &frame(60, 1))], MRG);
    let start = std::time::Instant::now();
    dp.process_rx(&mut q, &m).unwrap();
    dp.process_tx(&mut q, &m).unwrap();
    assert!(start.elapsed() < std::time::Duration::from_secs(1));
}

/// Transmit chains from one queue: (sent frames, the datapath's counters).
fn run_tx(
    m: &GuestMemoryMmap,
    vq: &MockSplitQueue<GuestMemoryMmap>,
    features: u64,
) -> (Vec<Vec<u8>>, Arc<NetCounters>) {
    let mut q: Queue = vq.create_queue().unwrap();
    let (mut dp, host) = datapath(10, vec![], features);
    dp.process_tx(&mut q, m).unwrap();
    (sent(&host), dp.stats())
}

fn load(c: &std::sync::atomic::AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// A chain whose last link points back at its head used to go out as one frame of as many
/// descriptors as the queue size (virtio-queue's iterator stops silently there): it is
/// refused, counted as unterminated, and the good chain behind it still goes out.
#[test]
fn tx_looping_chain_is_refused_and_the_next_frame_goes_out() {
    let m = mem();
    let vq = MockSplitQueue::create(&m, GuestAddress(0), 256);
    m.write_slice(&frame(100, 1), GuestAddress(DATA)).unwrap();
    vq.add_desc_chains(
        &[
            desc(DATA, 100, VRING_DESC_F_NEXT, 1),
            desc(DATA, 100, VRING_DESC_F_NEXT, 0),
        ],
        0,
    )
    .unwrap();
    let good = frame(60, 2);
    tx_chain(&m, &vq, 2, [0; 12], &good);
    let (out, s) = run_tx(&m, &vq, MRG);
    assert_eq!(out.len(), 1, "only the good frame leaves");
    assert_eq!(&out[0][10..], &good[..]);
    assert_eq!(load(&s.bad_chains.unterminated), 1);
    assert_eq!(used(&vq, 0), (0, 0), "the loop comes back empty");
    assert!(s.summary().contains("unterminated 1"), "{}", s.summary());
}

/// A chain as long as the queue (legal) whose frame exceeds the MTU: refused as over-MTU.
/// The same chain length carrying an MTU-size frame goes out byte-exact.
#[test]
fn tx_frames_over_the_mtu_are_refused_and_counted() {
    let m = mem();
    let vq = MockSplitQueue::create(&m, GuestAddress(0), 256);
    // 256 descriptors of 16 bytes: a 12-byte header and a 4084-byte frame.
    let long: Vec<RawDescriptor> = (0..256u16)
        .map(|i| {
            let flags = if i < 255 { VRING_DESC_F_NEXT } else { 0 };
            desc(DATA + u64::from(i) * 16, 16, flags, i + 1)
        })
        .collect();
    m.write_slice(&[0u8; 12], GuestAddress(DATA)).unwrap();
    vq.add_desc_chains(&long, 0).unwrap();
    let (out, s) = run_tx(&m, &vq, MRG);
    assert!(out.is_empty());
    assert_eq!(load(&s.tx_dropped_over_mtu), 1);
    assert_eq!(s.bad_chains.total(), 0);

    // Largest legal frames: MTU + Ethernet header, and with a VLAN tag; one byte more is out.
    let vq = MockSplitQueue::create(&m, GuestAddress(0x40_0000), 16);
    let frames = [frame(1514, 3), frame(1518, 4), frame(1519, 5)];
    for (i, f) in frames.iter().enumerate() {
        tx_chain(&m, &vq, 2 * i as u16, [0; 12], f);
    }
    let (out, s) = run_tx(&m, &vq, MRG);
    assert_eq!(out.len(), 2);
    assert_eq!(&out[0][10..], &frames[0][..]);
    assert_eq!(&out[1][10..], &frames[1][..]);
    assert_eq!(load(&s.tx_dropped_over_mtu), 1);
}

/// GSO frames go out only when the guest negotiated that kind of GSO.
#[test]
fn tx_gso_frames_need_the_negotiated_feature() {
    let m = mem();
    let mut h = [0u8; 12];
    h[1] = 1; // GSO_TCPV4
    let big = frame(9000, 6);
    let vq = MockSplitQueue::create(&m, GuestAddress(0), 16);
    tx_chain(&m, &vq, 0, h, &big);
    let (out, s) = run_tx(&m, &vq, MRG);
    assert!(out.is_empty());
    assert_eq!(load(&s.tx_dropped_gso), 1);

    let vq = MockSplitQueue::create(&m, GuestAddress(0x40_0000), 16);
    tx_chain(&m, &vq, 0, h, &big);
    let (out, s) = run_tx(&m, &vq, MRG | 1 << VIRTIO_NET_F_HOST_TSO4);
    assert_eq!(out.len(), 1);
    assert_eq!(&out[0][10..], &big[..]);
    assert_eq!(load(&s.tx_dropped_gso), 0);
}

/// A transmit call that has handed [`TELL_EVERY`] bytes of chains back stops for the guest
/// to be told, if it asked, and the next call sends the rest; a guest that asked for no
/// interrupts is not stopped for. The frames leave byte-exact and in order either way.
#[test]
fn tx_stops_to_tell_the_guest_on_the_way_through_a_long_ring() {
    let m = mem();
    let mut h = [0u8; 12];
    h[1] = 1; // GSO_TCPV4: frames this long need it
    let frames: Vec<Vec<u8>> = (0..8).map(|i| frame(60_000, i)).collect();
    // Five frames make the first round: the fifth takes it past TELL_EVERY.
    let first = TELL_EVERY.div_ceil(60_000);
    assert_eq!(first, 5);
    for asked in [true, false] {
        let vq = MockSplitQueue::create(&m, GuestAddress(0), 32);
        for (i, f) in frames.iter().enumerate() {
            tx_chain(&m, &vq, 2 * i as u16, h, f);
        }
        if !asked {
            m.write_obj(VRING_AVAIL_F_NO_INTERRUPT as u16, vq.avail_addr())
                .unwrap();
        }
        let mut q: Queue = vq.create_queue().unwrap();
        let (mut dp, host) = datapath(10, vec![], MRG | 1 << VIRTIO_NET_F_HOST_TSO4);
        if asked {
            assert_eq!(dp.transmit(&mut q, &m).unwrap(), Step::Tell);
            assert_eq!(
                sent(&host).len(),
                first,
                "one round, then the guest is told"
            );
            assert_eq!(
                q.next_used(),
                first as u16,
                "its chains are back before that"
            );
            assert_eq!(dp.transmit(&mut q, &m).unwrap(), Step::Done(true));
        } else {
            assert_eq!(dp.transmit(&mut q, &m).unwrap(), Step::Done(false));
        }
        let out = sent(&host);
        assert_eq!(out.len(), frames.len(), "asked: {asked}");
        for (o, f) in out.iter().zip(&frames) {
            assert_eq!(&o[10..], &f[..], "asked: {asked}");
        }
        assert_eq!(q.next_used(), frames.len() as u16);
    }
}

/// An indirect table of more descriptors than the queue size is refused as too long.
#[test]
fn tx_indirect_chain_longer_than_the_queue_is_refused() {
    let m = mem();
    let vq = MockSplitQueue::create(&m, GuestAddress(0), 16);
    let table = DATA + 0x8_0000;
    for i in 0..20u16 {
        let flags = if i < 19 { VRING_DESC_F_NEXT as u16 } else { 0 };
        let d = SplitDescriptor::new(DATA + u64::from(i) * 8, 8, flags, i + 1);
        m.write_obj(d, GuestAddress(table + u64::from(i) * 16))
            .unwrap();
    }
    vq.add_desc_chains(&[desc(table, 20 * 16, VRING_DESC_F_INDIRECT, 0)], 0)
        .unwrap();
    let (out, s) = run_tx(&m, &vq, MRG);
    assert!(out.is_empty());
    assert_eq!(load(&s.bad_chains.too_long), 1);
}

/// With MRG_RXBUF and buffers smaller than the header (4 bytes), the frame spreads over as
/// many buffers as it needs and `num_buffers`, which lands in the third buffer, says how many.
#[test]
fn rx_tiny_buffers_get_the_true_num_buffers() {
    let m = mem();
    let vq = MockSplitQueue::create(&m, GuestAddress(0), 32);
    rx_chains(&vq, 20, 4, 0);
    let mut q: Queue = vq.create_queue().unwrap();
    let f = frame(60, 7);
    let (mut dp, _host) = datapath(10, vec![with_hdr([0; 10], &f)], MRG);
    assert!(dp.process_rx(&mut q, &m).unwrap());
    merged_frame(&m, &vq, 0, &f, 4);
}

/// A thread reading a used index in a loop, as a guest polling its ring on another CPU
/// does: the values it saw, each change once.
struct UsedIndexObserver {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Vec<u16>>,
}

impl UsedIndexObserver {
    fn start(m: &GuestMemoryMmap, idx_at: GuestAddress) -> UsedIndexObserver {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = {
            let (m, stop) = (m.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let idx = u16::from_le(m.load::<u16>(idx_at, Ordering::Acquire).unwrap());
                    if seen.last() != Some(&idx) {
                        seen.push(idx);
                    }
                }
                seen
            })
        };
        // A head start for the observer.
        std::thread::yield_now();
        UsedIndexObserver { stop, thread }
    }

    fn stop(self) -> Vec<u16> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap()
    }
}

/// A guest polls its used ring while frames arrive (a NAPI poll on another vCPU, UML's
/// `virtio_uml`): each frame spans three chains, and the used index it reads must never stop
/// inside one. Published chain by chain, the guest read `num_buffers = 3` with fewer there,
/// dropped the frame and took the rest for frames of their own. Racy by nature: rounds until
/// the observer has seen many indices; it failed within the first rounds that way.
#[test]
fn the_guest_never_sees_part_of_a_frame() {
    const FRAMES: u16 = 8;
    const CHAINS: u16 = 3 * FRAMES;
    let m = mem();
    let mut torn = Vec::new();
    let mut seen = 0usize;
    for _round in 0..400 {
        let vq = MockSplitQueue::create(&m, GuestAddress(0), 64);
        rx_chains(&vq, CHAINS, 600, 0);
        let idx_at = vq.used_addr().unchecked_add(2);
        let mut q: Queue = vq.create_queue().unwrap();
        let frames: Vec<Vec<u8>> = (0..FRAMES)
            .map(|i| with_hdr([0; 10], &frame(1514, i as u8)))
            .collect();
        let (mut dp, _host) = datapath(10, frames, MRG);
        let observer = UsedIndexObserver::start(&m, idx_at);
        dp.process_rx(&mut q, &m).unwrap();
        let indices = observer.stop();
        seen += indices.len();
        torn.extend(indices.into_iter().filter(|idx| idx % 3 != 0));
        assert_eq!(q.next_used(), CHAINS, "every frame delivered");
        merged_frame(&m, &vq, 0, &frame(1514, 0), 600);
    }
    assert!(
        torn.is_empty(),
        "the guest saw frames in part: used index {torn:?}"
    );
    assert!(seen > 0);
}

/// The frames of one receive batch reach the guest together (one used-index store), and
/// before the backend reads the next batch: a thread polling the used index sees only batch
/// boundaries, and the transport sees every earlier frame published when it is asked for more.
/// (Frames read straight into the guest's buffers are published one by one: not here.)
#[test]
fn a_receive_batch_is_published_whole_before_the_next_read() {
    const FRAMES: u16 = 20;
    let m = mem();
    let mut seen = Vec::new();
    for _round in 0..200 {
        let vq = MockSplitQueue::create(&m, GuestAddress(0), 64);
        rx_chains(&vq, FRAMES, 2048, 0);
        let idx_at = vq.used_addr().unchecked_add(2);
        let mut q: Queue = vq.create_queue().unwrap();
        let frames: Vec<Vec<u8>> = (0..FRAMES)
            .map(|i| with_hdr([0; 10], &frame(60, i as u8)))
            .collect();
        let (mut dp, host) = datapath(10, frames, MRG);
        host.lock().unwrap().watch = Some((m.clone(), idx_at));
        let observer = UsedIndexObserver::start(&m, idx_at);
        assert!(dp.process_rx(&mut q, &m).unwrap(), "the guest is told");
        seen.extend(observer.stop());
        assert_eq!(q.next_used(), FRAMES, "every frame delivered");
        // A batch is the datapath's depth (8) of frames: 8, 8, then 4, then none.
        assert_eq!(host.lock().unwrap().idx_at_recv, [0, 8, 16, 20]);
        for i in 0..FRAMES {
            assert_eq!(used(&vq, i.into()), (i.into(), 12 + 60), "frame {i}");
        }
    }
    seen.sort_unstable();
    seen.dedup();
    assert!(
        seen.iter().all(|i| [0, 8, 16, 20].contains(i)),
        "the guest saw a batch in part: used index {seen:?}"
    );
}

/// A looping receive chain of tiny buffers is refused (not filled round and round), counted,
/// and the frame goes to the next good buffer.
#[test]
fn rx_looping_chain_is_refused() {
    let m = mem();
    let vq = MockSplitQueue::create(&m, GuestAddress(0), 16);
    vq.add_desc_chains(
        &[
            desc(DATA, 2, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 1),
            desc(DATA + 8, 2, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 0),
        ],
        0,
    )
    .unwrap();
    rx_chains(&vq, 1, 2048, 2);
    let mut q: Queue = vq.create_queue().unwrap();
    let f = frame(60, 8);
    let (mut dp, _host) = datapath(10, vec![with_hdr([0; 10], &f), with_hdr([0; 10], &f)], MRG);
    dp.process_rx(&mut q, &m).unwrap();
    let s = dp.stats();
    assert_eq!(load(&s.bad_chains.unterminated), 1);
    assert_eq!(used(&vq, 0), (0, 0));
    assert_eq!(
        used(&vq, 1),
        (2, 72),
        "the next frame lands in the good buffer"
    );
    assert_eq!(load(&s.rx_packets), 1);
}

/// Frames waiting in the datapath when the frontend goes are counted, not just logged.
#[test]
fn frames_pending_at_disconnect_are_counted() {
    let m = mem();
    let vq = MockSplitQueue::create(&m, GuestAddress(0), 16);
    let mut q: Queue = vq.create_queue().unwrap();
    let (mut dp, _host) = datapath(10, vec![with_hdr([0; 10], &frame(60, 9))], MRG);
    dp.process_rx(&mut q, &m).unwrap();
    dp.reset();
    assert_eq!(load(&dp.stats().dropped_at_disconnect), 1);
}

/// A transport that only has a header length and a receive overhead, for sizing batches.
struct Shape {
    hdr: usize,
    overhead: usize,
}

impl Transport for Shape {
    fn name(&self) -> &'static str {
        "shape"
    }
    fn vnet_hdr_len(&self) -> usize {
        self.hdr
    }
    fn rx_overhead(&self) -> usize {
        self.overhead
    }
    fn rx_fd(&self) -> RawFd {
        -1
    }
    fn tx_fd(&self) -> RawFd {
        -1
    }
    fn recv(&mut self, batch: &mut PacketBatch) -> Result<usize, TransportError> {
        batch.set_count(0);
        Ok(0)
    }
    fn send(&mut self, batch: &PacketBatch) -> Result<usize, TransportError> {
        Ok(batch.count())
    }
    fn set_offloads(&mut self, _: Offloads) -> Result<(), TransportError> {
        Ok(())
    }
}

const GSO_BOTH: u64 = MRG
    | 1 << VIRTIO_NET_F_GUEST_TSO4
    | 1 << VIRTIO_NET_F_GUEST_TSO6
    | 1 << VIRTIO_NET_F_HOST_TSO4
    | 1 << VIRTIO_NET_F_HOST_TSO6;

/// Buffers are sized by what each direction may carry: an MTU's frame without offloads, at
/// the full depth; a 64 KiB GSO frame when negotiated, fewer at a time. A tunnel's receive
/// buffers leave room for its IP and tunnel headers. A device's batches never take more than
/// 1 MiB, whatever the depth, MTU, headroom and features.
#[test]
fn batches_fit_what_each_direction_carries_within_one_mebibyte() {
    let raw = Shape {
        hdr: 10,
        overhead: 0,
    };
    let plain = Negotiated::from_features(MRG);
    let g = Geometry::new(64, 0, 1500, &plain, &raw);
    assert_eq!((g.rx_capacity, g.rx_depth), (10 + 1518 + 1, 64));
    assert_eq!((g.tx_capacity, g.tx_depth), (10 + 1518, 64));
    assert!(g.bytes() < 240 * 1024, "{g:?}");

    let gso = Negotiated::from_features(GSO_BOTH);
    let g = Geometry::new(64, 0, 1500, &gso, &raw);
    assert_eq!(g.rx_capacity, 10 + 65_535 + 14 + 4 + 1);
    assert_eq!((g.rx_depth, g.tx_depth), (7, 7));
    assert!(g.bytes() <= 1 << 20, "{g:?}");

    let gre = Shape {
        hdr: 0,
        overhead: 84,
    };
    let g = Geometry::new(64, 16, 1500, &plain, &gre);
    assert_eq!(g.rx_capacity, 16 + 84 + 1518 + 1);
    assert_eq!(g.tx_capacity, 16 + 1518);

    // The README's table: the defaults (depth 64, headroom 2, MTU 1500). A round of 64
    // gathered frames: 1,280 iovecs, 64 header and inline copies, 64 frame index entries.
    let n = |f| Negotiated::from_features(f);
    let bytes = |f, t: &Shape| Geometry::new(64, 2, 1500, &n(f), t).bytes();
    let gather = 1280 * 16 + 64 * (10 + 256) + 64 * 16;
    assert_eq!(gather, 38_528);
    assert_eq!(bytes(MRG, &raw), 64 * 1531 + 64 * 1530 + gather);
    assert_eq!(bytes(GSO_BOTH, &raw), 7 * 65_566 + 7 * 65_565 + gather);
    // What a Linux guest takes from raw or tap without gro=1: TSO from it, MTU frames to it.
    let send_only = MRG
        | 1 << VIRTIO_NET_F_CSUM
        | 1 << VIRTIO_NET_F_GUEST_CSUM
        | 1 << VIRTIO_NET_F_HOST_TSO4
        | 1 << VIRTIO_NET_F_HOST_TSO6;
    assert_eq!(bytes(send_only, &raw), 64 * 1531 + 7 * 65_565 + gather);
    assert_eq!(
        bytes(SOFT_TSO, &gre),
        64 * 1605 + 64 * 1520 + 65_553 + gather
    );

    // Queue pairs share the device's budget: up to 16 pairs of MTU-size buffers, and 4 of
    // GSO ones (one frame a batch each way), still fit in 1 MiB.
    for (pairs, features) in [(2, MRG), (4, MRG), (16, MRG), (2, GSO_BOTH), (4, GSO_BOTH)] {
        let g = Geometry::shared(64, 2, 1500, &n(features), &raw, pairs);
        assert!(g.bytes() * pairs <= 1 << 20, "{pairs} pairs: {g:?}");
        assert!(g.rx_depth >= 1 && g.tx_depth >= 1, "{g:?}");
    }
    assert_eq!(Geometry::shared(64, 2, 1500, &n(MRG), &raw, 2).rx_depth, 64);

    for depth in [1, 8, 64, 1024] {
        for mtu in [68, 1500, 9000, 65_535] {
            for headroom in [0, 128, u16::MAX] {
                for features in [0, MRG, GSO_BOTH] {
                    let n = Negotiated::from_features(features);
                    let g = Geometry::new(depth, headroom, mtu, &n, &gre);
                    assert!(g.bytes() <= 1 << 20, "{depth} {mtu} {headroom}: {g:?}");
                    assert!(g.rx_depth >= 1 && g.rx_depth <= depth, "{g:?}");
                    assert!(g.gather_depth >= 1 && g.gather_depth <= depth, "{g:?}");
                    let g = Geometry::new(depth, headroom, mtu, &n, &raw);
                    assert!(g.bytes() <= 1 << 20, "{depth} {mtu} {headroom}: {g:?}");
                }
            }
        }
    }
}

/// The datapath follows the negotiation: large buffers once the guest takes GSO, back to
/// small ones after a reset; in between a 9000-byte GSO frame arrives whole.
#[test]
fn batches_follow_the_negotiation() {
    let (mut dp, host) = datapath(10, Vec::new(), MRG);
    let small = dp.geometry();
    assert_eq!(small.rx_capacity, 10 + 1518 + 2 + 1);
    dp.set_negotiated(Negotiated::from_features(GSO_BOTH))
        .unwrap();
    let big = dp.geometry();
    assert!(
        big.rx_capacity > 65_535 && big.tx_capacity > 65_535,
        "{big:?}"
    );

    let m = mem();
    let mut h = [0u8; 10];
    h[1] = 1; // GSO_TCPV4
    let f = frame(9000, 3);
    host.lock().unwrap().incoming.push_back(with_hdr(h, &f));
    let vq = MockSplitQueue::create(&m, GuestAddress(0), 16);
    rx_chains(&vq, 4, 4096, 0);
    let mut q: Queue = vq.create_queue().unwrap();
    dp.process_rx(&mut q, &m).unwrap();
    assert_eq!(host.lock().unwrap().truncated, 0);
    assert_eq!(dp.stats().rx_packets.load(Ordering::Relaxed), 1);

    dp.reset();
    assert_eq!(dp.geometry(), small);
}

/// TSO on a transport without a virtio-net header (gro=1 on a tunnel): what the guest may
/// send then.
const SOFT_TSO: u64 = MRG | 1 << VIRTIO_NET_F_CSUM | 1 << VIRTIO_NET_F_HOST_TSO4;

fn gso_header(gso_size: u16) -> [u8; 12] {
    let mut h = [0u8; 12];
    h[0] = 1; // NEEDS_CSUM: a GSO frame's checksum is partial
    h[1] = 1; // GSO_TCPV4
    h[2..4].copy_from_slice(&54u16.to_le_bytes());
    h[4..6].copy_from_slice(&gso_size.to_le_bytes());
    h[6..8].copy_from_slice(&34u16.to_le_bytes());
    h[8..10].copy_from_slice(&16u16.to_le_bytes());
    h
}

/// A guest's 5000-byte TSO frame on a header-less transport leaves as four frames of at
/// most MSS bytes of payload, with valid checksums, whose payloads are the original's; the
/// guest's counters count one frame.
#[test]
fn tx_tso_frames_are_segmented_for_a_transport_without_a_header() {
    use crate::backend::segment::tests::{payload, tcp4, verify};
    let m = mem();
    let vq = MockSplitQueue::create(&m, GuestAddress(0), 16);
    let data = payload(5000);
    tx_chain(&m, &vq, 0, gso_header(1448), &tcp4(&data, 0x18));
    let mut q: Queue = vq.create_queue().unwrap();
    let (mut dp, host) = datapath(0, vec![], SOFT_TSO);
    assert!(dp.geometry().scratch > 65_535, "{:?}", dp.geometry());
    assert!(dp.geometry().tx_capacity < 2048, "{:?}", dp.geometry());
    dp.process_tx(&mut q, &m).unwrap();
    let out = sent(&host);
    assert_eq!(out.len(), 4);
    let joined: Vec<u8> = out.iter().flat_map(|f| f[54..].to_vec()).collect();
    assert_eq!(joined, data);
    for f in &out {
        assert!(f.len() <= 1514);
        assert_eq!(verify(&[&f[14..34]]), 0xffff);
        let pseudo = [
            &f[26..34],
            &[0, 6],
            &((f.len() - 34) as u16).to_be_bytes()[..],
        ]
        .concat();
        assert_eq!(verify(&[&pseudo, &f[34..]]), 0xffff);
    }
    let s = dp.stats();
    assert_eq!((load(&s.tx_packets), load(&s.tx_bytes)), (1, 5054));
    assert_eq!(used(&vq, 0), (0, 0));
}

/// Segments need free batch buffers: a GSO frame behind frames the host has not taken yet
/// stays in the ring until they are sent, then goes whole; nothing is lost or reordered.
#[test]
fn a_tso_frame_waits_in_the_ring_for_room_in_the_batch() {
    use crate::backend::segment::tests::{payload, tcp4};
    // Frames held in the batch are the copying path's (gathering holds none).
    COPYING.with(|c| c.set(true));
    let m = mem();
    let vq = MockSplitQueue::create(&m, GuestAddress(0), 16);
    for i in 0..6u16 {
        tx_chain(&m, &vq, 2 * i, [0; 12], &frame(60, i as u8));
    }
    // Five segments, and six of the datapath's eight buffers are taken.
    tx_chain(&m, &vq, 12, gso_header(1000), &tcp4(&payload(4500), 0x10));
    let mut q: Queue = vq.create_queue().unwrap();
    let (mut dp, host) = datapath(0, vec![], SOFT_TSO);
    host.lock().unwrap().accept = 0;
    dp.process_tx(&mut q, &m).unwrap();
    assert_eq!(q.next_used(), 6, "the GSO chain is not used yet");
    host.lock().unwrap().accept = usize::MAX;
    dp.process_tx(&mut q, &m).unwrap();
    assert_eq!(q.next_used(), 7);
    let out = sent(&host);
    assert_eq!(out.len(), 6 + 5);
    assert!(out[..6].iter().all(|f| f.len() == 60));
    assert!(out[6..].iter().all(|f| f.len() > 60));
}

/// Partial checksums are completed for a header-less transport; a GSO frame that cannot
/// be segmented, or a checksum offset outside the frame, is dropped and counted.
#[test]
fn software_offloads_complete_checksums_and_count_what_they_refuse() {
    use crate::backend::segment::tests::{payload, tcp4, verify};
    let m = mem();
    let vq = MockSplitQueue::create(&m, GuestAddress(0), 16);
    let mut partial = gso_header(0);
    partial[1] = 0; // no GSO, checksum partial
    let mut f = tcp4(&payload(300), 0x18);
    // The partial checksum field holds the pseudo-header sum, as a guest leaves it.
    let pseudo = [
        &f[26..34],
        &[0, 6],
        &((f.len() - 34) as u16).to_be_bytes()[..],
    ]
    .concat();
    let seed = !verify(&[&pseudo]);
    f[50..52].copy_from_slice(&(!seed).to_be_bytes());
    tx_chain(&m, &vq, 0, partial, &f);
    let mut no_mss = gso_header(0);
    no_mss[4..6].fill(0);
    tx_chain(&m, &vq, 2, no_mss, &tcp4(&payload(3000), 0x10));
    let mut outside = partial;
    outside[6..8].copy_from_slice(&9000u16.to_le_bytes());
    tx_chain(&m, &vq, 4, outside, &f);
    let mut q: Queue = vq.create_queue().unwrap();
    let (mut dp, host) = datapath(0, vec![], SOFT_TSO);
    dp.process_tx(&mut q, &m).unwrap();
    let out = sent(&host);
    assert_eq!(out.len(), 1);
    let tcp = &out[0][34..];
    assert_eq!(verify(&[&pseudo, tcp]), 0xffff, "completed checksum");
    assert_eq!(load(&dp.stats().tx_dropped_bad_offload), 2);
}

/// Gathering: the frame's bytes (longer than an inline copy) go to the host from the guest's
/// buffer itself, behind a copy of its header; chains the host did not take go back to the ring (used only once sent), a
/// refused chain among them is counted once, and nothing is reordered.
#[test]
fn tx_gathering_sends_from_guest_memory_and_puts_back_what_the_host_refused() {
    let m = mem();
    let vq = MockSplitQueue::create(&m, GuestAddress(0), 16);
    tx_chain(&m, &vq, 0, [0; 12], &frame(300, 0));
    vq.add_desc_chains(&[desc(DATA + 0x8_0000, 8, 0, 0)], 2)
        .unwrap();
    tx_chain(&m, &vq, 3, [0; 12], &frame(300, 1));
    tx_chain(&m, &vq, 5, [0; 12], &frame(300, 2));
    let mut q: Queue = vq.create_queue().unwrap();
    let (mut dp, host) = datapath(10, vec![], MRG);
    host.lock().unwrap().accept = 1;
    assert!(dp.process_tx(&mut q, &m).unwrap());
    assert_eq!(sent(&host).len(), 1);
    assert_eq!(q.next_used(), 2, "the sent chain and the runt are returned");
    assert_eq!(
        q.next_avail(),
        2,
        "the two the host refused are back in the ring"
    );
    assert!(dp.tx_pending(), "waiting for the host, not for the guest");
    let guest = |addr: u64| m.get_host_address(GuestAddress(addr)).unwrap() as usize;
    {
        let h = host.lock().unwrap();
        // A header copy, then the guest's own frame buffer.
        assert_eq!(h.pieces.len(), 2);
        assert_eq!(h.pieces[1], guest(DATA + 0x100));
    }
    host.lock().unwrap().accept = usize::MAX;
    dp.process_tx(&mut q, &m).unwrap();
    let out = sent(&host);
    assert_eq!(out.len(), 3);
    for (i, o) in out.iter().enumerate() {
        assert_eq!(&o[10..], &frame(300, i as u8)[..], "order kept");
    }
    assert_eq!(q.next_used(), 4);
    assert!(!dp.tx_pending());
    let s = dp.stats();
    assert_eq!(
        load(&s.tx_dropped_runt),
        1,
        "counted once, not at each look"
    );
    assert_eq!(load(&s.tx_packets), 3);
}

/// On a transport without a header, a frame the backend must change (a partial checksum)
/// is copied and completed between gathered ones, in order.
#[test]
fn tx_gathering_copies_only_what_it_must_change_and_keeps_the_order() {
    use crate::backend::segment::tests::{payload, tcp4};
    let m = mem();
    let vq = MockSplitQueue::create(&m, GuestAddress(0), 16);
    let tcp = tcp4(&payload(100), 0);
    let mut csum = [0u8; 12];
    csum[0] = 1; // NEEDS_CSUM
    csum[6..8].copy_from_slice(&34u16.to_le_bytes()); // csum_start: the TCP header
    csum[8..10].copy_from_slice(&16u16.to_le_bytes()); // csum_offset: its checksum
    tx_chain(&m, &vq, 0, [0; 12], &frame(300, 1));
    tx_chain(&m, &vq, 2, csum, &tcp);
    tx_chain(&m, &vq, 4, [0; 12], &frame(300, 3));
    let mut q: Queue = vq.create_queue().unwrap();
    let (mut dp, host) = datapath(0, vec![], MRG | 1 << VIRTIO_NET_F_CSUM);
    dp.process_tx(&mut q, &m).unwrap();
    let out = sent(&host);
    assert_eq!(out.len(), 3);
    assert_eq!(out[0], frame(300, 1));
    assert_eq!(out[2], frame(300, 3));
    assert_eq!(out[1].len(), tcp.len());
    assert_ne!(
        out[1][50..52],
        tcp[50..52],
        "the checksum was completed in a copy"
    );
    // Two frames gathered (one piece each: no header on this transport), one copied.
    let guest = |addr: u64| m.get_host_address(GuestAddress(addr)).unwrap() as usize;
    assert_eq!(
        host.lock().unwrap().pieces,
        vec![guest(DATA + 0x100), guest(DATA + 0x4_0100)]
    );
    assert_eq!(q.next_used(), 3);
}

/// A frame no longer than `INLINE_FRAME` goes as one piece: its header and bytes copied
/// into the gather batch (one iovec costs less than two), byte-exact; one byte more and it
/// is pointed at.
#[test]
fn tx_small_frames_go_as_one_inline_piece() {
    let m = mem();
    let vq = MockSplitQueue::create(&m, GuestAddress(0), 16);
    let mut h = [0u8; 12];
    h[0] = 1; // NEEDS_CSUM: the header is the guest's, copied
    let frames = [
        frame(60, 1),
        frame(INLINE_FRAME, 2),
        frame(INLINE_FRAME + 1, 3),
    ];
    for (i, f) in frames.iter().enumerate() {
        tx_chain(&m, &vq, 2 * i as u16, h, f);
    }
    let mut q: Queue = vq.create_queue().unwrap();
    let (mut dp, host) = datapath(10, vec![], MRG);
    dp.process_tx(&mut q, &m).unwrap();
    let out = sent(&host);
    assert_eq!(out.len(), 3);
    for (o, f) in out.iter().zip(&frames) {
        assert_eq!(&o[..10], &h[..10]);
        assert_eq!(&o[10..], &f[..]);
    }
    let guest = |addr: u64| m.get_host_address(GuestAddress(addr)).unwrap() as usize;
    let pieces = host.lock().unwrap().pieces.clone();
    // One piece each for the two inline frames (neither in guest memory), then a header
    // copy and the guest's buffer.
    assert_eq!(pieces.len(), 4);
    let in_guest = |p: usize| p >= guest(0) && p < guest(0) + 0x80_0000;
    assert!(!in_guest(pieces[0]) && !in_guest(pieces[1]) && !in_guest(pieces[2]));
    assert_eq!(pieces[3], guest(DATA + 0x4_0100));
}

/// Software GRO: on a transport without a header, a guest that takes GSO frames (GUEST_CSUM,
/// GUEST_TSO4) gets consecutive segments of one TCP flow as one frame, with a GSO header and
/// a partial checksum that completes to a valid one; the frame after them, not TCP, comes
/// alone. A train waits whole for enough buffers. Without GUEST_TSO4 nothing is merged.
#[test]
fn rx_segments_of_one_flow_reach_the_guest_as_one_gso_frame() {
    use crate::backend::segment::tests::{payload, segments, tcp4, verify};
    let big = tcp4(&payload(4 * 1448), 0x18);
    let segs = segments(&big, vnet::GSO_TCPV4, 1448);
    let other = frame(100, 9);
    // A segment that does not continue the train (its sequence number is the train's first).
    let lone = segments(&tcp4(&payload(100), 0x18), vnet::GSO_TCPV4, 1448).remove(0);
    let incoming: Vec<Vec<u8>> = segs
        .iter()
        .cloned()
        .chain([lone.clone(), other.clone()])
        .collect();
    let gro = MRG | 1 << VIRTIO_NET_F_GUEST_CSUM | 1 << VIRTIO_NET_F_GUEST_TSO4;

    let m = mem();
    let vq = MockSplitQueue::create(&m, GuestAddress(0), 32);
    // One 4 KiB buffer: too few for the train (12 + 5,846 bytes), which waits.
    rx_chains(&vq, 1, 4096, 0);
    let mut q: Queue = vq.create_queue().unwrap();
    let (mut dp, _host) = datapath(0, incoming.clone(), gro);
    assert!(!dp.process_rx(&mut q, &m).unwrap());
    assert_eq!(load(&dp.stats().rx_packets), 0, "the train waits whole");
    rx_chains(&vq, 3, 4096, 1);
    assert!(dp.process_rx(&mut q, &m).unwrap());

    let mut got = Vec::new();
    for i in 0..2 {
        let (id, len) = used(&vq, i);
        assert_eq!(id as usize, i);
        let mut part = vec![0u8; len as usize];
        m.read_slice(&mut part, GuestAddress(DATA + i as u64 * 0x1_0000))
            .unwrap();
        got.extend(part);
    }
    let h = VnetHdr::parse(&got).unwrap();
    assert_eq!(
        (h.flags, h.gso_type, h.hdr_len, h.gso_size),
        (vnet::F_NEEDS_CSUM, vnet::GSO_TCPV4, 54, 1448)
    );
    assert_eq!((h.csum_start, h.csum_offset), (34, 16));
    assert_eq!(&got[10..12], &2u16.to_le_bytes(), "num_buffers");
    let mut merged = got[12..].to_vec();
    assert_eq!(merged.len(), big.len());
    assert_eq!(&merged[54..], &big[54..], "the payload, in order");
    assert!(vnet::complete_checksum(&mut merged, 34, 16));
    let pseudo = [
        &merged[26..34],
        &[0, 6],
        &((merged.len() - 34) as u16).to_be_bytes(),
    ]
    .concat();
    assert_eq!(verify(&[&pseudo, &merged[34..]]), 0xffff, "TCP checksum");
    assert_eq!(verify(&[&merged[14..34]]), 0xffff, "IPv4 header checksum");
    assert_eq!(merged[47] & 0x08, 0x08, "the last segment's PSH");
    assert_eq!(
        used(&vq, 2),
        (2, (12 + lone.len()) as u32),
        "the segment that ended the train, alone"
    );
    // Alone, a segment whose checksum was verified here is marked so (DATA_VALID); the
    // frame that is not TCP is not.
    let flags = |i: u64| m.read_obj::<u8>(GuestAddress(DATA + i * 0x1_0000)).unwrap();
    assert_eq!(used(&vq, 3), (3, 12 + 100));
    assert_eq!((flags(2), flags(3)), (vnet::F_DATA_VALID, 0));
    let s = dp.stats();
    assert_eq!((load(&s.rx_packets), load(&s.rx_coalesced)), (3, 3));

    // Without GUEST_TSO4 every segment goes up as it came.
    let vq = MockSplitQueue::create(&m, GuestAddress(0x40_0000), 32);
    rx_chains(&vq, 8, 2048, 0);
    let mut q: Queue = vq.create_queue().unwrap();
    let no_tso = MRG | 1 << VIRTIO_NET_F_GUEST_CSUM;
    let (mut dp, _host) = datapath(0, incoming, no_tso);
    dp.process_rx(&mut q, &m).unwrap();
    let s = dp.stats();
    assert_eq!((load(&s.rx_packets), load(&s.rx_coalesced)), (6, 0));
    assert_eq!(used(&vq, 0), (0, 12 + segs[0].len() as u32));
}

/// An avail entry naming a head outside the descriptor table: virtio-queue yields no
/// descriptor for it. It is counted as an empty chain (it cannot be returned: there is no
/// such chain), and the chains around it go through; both ways.
#[test]
fn a_head_outside_the_descriptor_table_is_an_empty_chain_both_ways() {
    use vm_memory::Address;
    let m = mem();
    let vq = MockSplitQueue::create(&m, GuestAddress(0), 16);
    let frames = [frame(100, 1), frame(100, 2)];
    tx_chain(&m, &vq, 0, [0; 12], &frames[0]);
    tx_chain(&m, &vq, 2, [0; 12], &frames[1]);
    // Avail entries: head 0, head 999, head 2.
    let slot = |i: u64| vq.avail_addr().unchecked_add(4 + 2 * i);
    m.write_obj(999u16, slot(1)).unwrap();
    m.write_obj(2u16, slot(2)).unwrap();
    m.write_obj(3u16, vq.avail_addr().unchecked_add(2)).unwrap();
    let (out, s) = run_tx(&m, &vq, MRG);
    assert_eq!(out.len(), 2);
    assert_eq!(&out[1][10..], &frames[1][..]);
    assert_eq!(load(&s.bad_chains.empty), 1);
    assert_eq!(s.bad_chains.total(), 1);

    let vq = MockSplitQueue::create(&m, GuestAddress(0x40_0000), 16);
    rx_chains(&vq, 2, 2048, 0);
    let slot = |i: u64| vq.avail_addr().unchecked_add(4 + 2 * i);
    m.write_obj(1u16, slot(2)).unwrap();
    m.write_obj(4242u16, slot(1)).unwrap();
    m.write_obj(3u16, vq.avail_addr().unchecked_add(2)).unwrap();
    let mut q: Queue = vq.create_queue().unwrap();
    let f = frame(60, 3);
    let (mut dp, _host) = datapath(10, vec![with_hdr([0; 10], &f); 3], MRG);
    dp.process_rx(&mut q, &m).unwrap();
    let s = dp.stats();
    assert_eq!(load(&s.bad_chains.empty), 1);
    // The frame meant for the bad entry is dropped with it (counted there).
    assert_eq!(load(&s.rx_packets), 2, "the frames around it land");
}

/// Straight into the guest's buffers: a frame longer than the chains popped for it (the first
/// large one) goes through the batch, the next ones land directly, and the chains a small
/// frame did not need go back to the ring for the next frame.
#[test]
fn rx_direct_lands_frames_in_place_and_gives_back_unneeded_chains() {
    SCATTERING.with(|c| c.set(true));
    let m = mem();
    let vq = MockSplitQueue::create(&m, GuestAddress(0), 64);
    rx_chains(&vq, 40, 4096, 0);
    let mut q: Queue = vq.create_queue().unwrap();
    let gso = tcpv4_gso_hdr();
    let (big1, big2) = (frame(20_000, 1), frame(20_000, 2));
    let (small1, small2) = (frame(60, 3), frame(60, 4));
    let features = MRG | 1 << VIRTIO_NET_F_GUEST_CSUM | 1 << VIRTIO_NET_F_GUEST_TSO4;
    let incoming = vec![
        with_hdr(gso, &big1),
        with_hdr(gso, &big2),
        with_hdr([0; 10], &small1),
        with_hdr([0; 10], &small2),
    ];
    let (mut dp, host) = datapath(10, incoming, features);
    assert!(dp.process_rx(&mut q, &m).unwrap());
    let nbufs = (12 + 20_000usize).div_ceil(4096);
    for (first, f) in [(0, &big1), (nbufs, &big2)] {
        let got = merged_frame(&m, &vq, first, f, 4096);
        assert_eq!(&got[..10], &gso, "GSO header passed through");
    }
    for (i, f) in [(2 * nbufs, &small1), (2 * nbufs + 1, &small2)] {
        let got = frame_in_chains(&m, &vq, i, 1);
        assert_eq!(&got[..12], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
        assert_eq!(&got[12..], &f[..], "one chain each, the next in the ring");
    }
    let s = dp.stats();
    assert_eq!((load(&s.rx_packets), load(&s.rx_direct)), (4, 3));
    assert_eq!(host.lock().unwrap().truncated, 0);
}

/// Straight into the guest's buffers, nothing is read while the guest has none: the frame
/// waits in the transport, survives the frontend going, and reaches the next one.
#[test]
fn rx_direct_leaves_frames_in_the_transport_while_the_guest_has_no_buffers() {
    SCATTERING.with(|c| c.set(true));
    let m = mem();
    let vq = MockSplitQueue::create(&m, GuestAddress(0), 16);
    let mut q: Queue = vq.create_queue().unwrap();
    let f = frame(60, 9);
    let (mut dp, host) = datapath(10, vec![with_hdr([0; 10], &f)], MRG);
    assert!(!dp.process_rx(&mut q, &m).unwrap());
    dp.reset();
    assert_eq!(load(&dp.stats().dropped_at_disconnect), 0);
    assert_eq!(
        host.lock().unwrap().incoming.len(),
        1,
        "still in the transport"
    );
    dp.set_negotiated(Negotiated::from_features(MRG)).unwrap();
    rx_chains(&vq, 1, 2048, 0);
    assert!(dp.process_rx(&mut q, &m).unwrap());
    assert_eq!(&frame_in_chains(&m, &vq, 0, 1)[12..], &f[..]);
}

/// Straight into the guest's buffers, a frame longer than the longest the batch takes is cut
/// by the kernel: dropped and counted by the transport, and the guest's chain is kept for the
/// next frame.
#[test]
fn rx_direct_drops_a_cut_frame_and_keeps_the_chain() {
    SCATTERING.with(|c| c.set(true));
    let m = mem();
    let vq = MockSplitQueue::create(&m, GuestAddress(0), 16);
    rx_chains(&vq, 2, 4096, 0);
    let mut q: Queue = vq.create_queue().unwrap();
    let f = frame(60, 10);
    let incoming = vec![with_hdr([0; 10], &frame(9000, 11)), with_hdr([0; 10], &f)];
    let (mut dp, host) = datapath(10, incoming, MRG);
    assert!(dp.process_rx(&mut q, &m).unwrap());
    assert_eq!(host.lock().unwrap().truncated, 1);
    assert_eq!(
        used(&vq, 0),
        (0, 72),
        "the first chain went to the next frame"
    );
    assert_eq!(&frame_in_chains(&m, &vq, 0, 1)[12..], &f[..]);
    assert_eq!(load(&dp.stats().rx_direct), 1);
}

/// Straight into the guest's buffers, a guest with fewer buffers than the frames lately
/// needed gets the next frame through the batch (not read into its buffers and copied out
/// again), and the one after directly once it posts enough.
#[test]
fn rx_direct_reads_through_the_batch_when_the_guest_is_short_of_buffers() {
    SCATTERING.with(|c| c.set(true));
    let m = mem();
    let vq = MockSplitQueue::create(&m, GuestAddress(0), 64);
    rx_chains(&vq, 5, 4096, 0);
    let mut q: Queue = vq.create_queue().unwrap();
    let big = frame(16_000, 1);
    let (small1, small2) = (frame(60, 2), frame(60, 3));
    let incoming = vec![
        with_hdr([0; 10], &big),
        with_hdr([0; 10], &small1),
        with_hdr([0; 10], &small2),
    ];
    let features = MRG | 1 << VIRTIO_NET_F_GUEST_CSUM | 1 << VIRTIO_NET_F_GUEST_TSO4;
    let (mut dp, host) = datapath(10, incoming, features);
    dp.process_rx(&mut q, &m).unwrap();
    // The big frame took 4 chains, and left one: short of the 16 KiB now expected, so the
    // batch took both small frames, and the second waits there.
    assert_eq!(&frame_in_chains(&m, &vq, 0, 4)[12..], &big[..]);
    assert_eq!(&frame_in_chains(&m, &vq, 4, 1)[12..], &small1[..]);
    let s = dp.stats();
    assert_eq!((load(&s.rx_packets), load(&s.rx_direct)), (2, 0));
    let small3 = frame(60, 4);
    host.lock()
        .unwrap()
        .incoming
        .push_back(with_hdr([0; 10], &small3));
    rx_chains(&vq, 10, 4096, 5);
    dp.process_rx(&mut q, &m).unwrap();
    assert_eq!(&frame_in_chains(&m, &vq, 5, 1)[12..], &small2[..]);
    assert_eq!(&frame_in_chains(&m, &vq, 6, 1)[12..], &small3[..]);
    assert_eq!((load(&s.rx_packets), load(&s.rx_direct)), (4, 1));
}

/// By default only GSO-sized traffic is received directly (see `direct::MIN_GUESS`): small
/// frames go through the batch, and the frames after a large one go straight to the guest.
#[test]
fn rx_direct_starts_with_large_frames() {
    SCATTERING.with(|c| c.set(true));
    let m = mem();
    let vq = MockSplitQueue::create(&m, GuestAddress(0), 64);
    rx_chains(&vq, 20, 4096, 0);
    let mut q: Queue = vq.create_queue().unwrap();
    let gso = tcpv4_gso_hdr();
    let (small, big) = (frame(60, 1), frame(20_000, 2));
    let features = MRG | 1 << VIRTIO_NET_F_GUEST_CSUM | 1 << VIRTIO_NET_F_GUEST_TSO4;
    let incoming = vec![with_hdr([0; 10], &small), with_hdr(gso, &big)];
    let (mut dp, host) = datapath(10, incoming, features);
    dp.direct_from = direct::MIN_GUESS;
    dp.process_rx(&mut q, &m).unwrap();
    let s = dp.stats();
    assert_eq!((load(&s.rx_packets), load(&s.rx_direct)), (2, 0));
    host.lock()
        .unwrap()
        .incoming
        .extend([with_hdr(gso, &big), with_hdr([0; 10], &small)]);
    dp.process_rx(&mut q, &m).unwrap();
    assert_eq!((load(&s.rx_packets), load(&s.rx_direct)), (4, 2));
    let nbufs = (12 + 20_000usize).div_ceil(4096);
    assert_eq!(&frame_in_chains(&m, &vq, 1, nbufs)[12..], &big[..]);
    assert_eq!(&frame_in_chains(&m, &vq, 1 + nbufs, nbufs)[12..], &big[..]);
    assert_eq!(
        &frame_in_chains(&m, &vq, 1 + 2 * nbufs, 1)[12..],
        &small[..]
    );
}
