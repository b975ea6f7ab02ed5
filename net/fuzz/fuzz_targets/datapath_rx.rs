//! The receive datapath on a hostile guest's ring (see `common/ring.rs`), with any
//! negotiation and any frames from the host: lengths from a runt to past the longest the
//! datapath takes, any `virtio_net_hdr` bytes. Frames are received straight into the
//! guest's buffers (a transport that scatters, as a tap does, with direct receive for every
//! frame size), and again through the batch.
//!
//! Every run: nothing panics or hangs, no chain comes back more often than the ring offered
//! it, and every frame is accounted for (delivered, dropped and counted, waiting in the
//! datapath, or still in the transport). Differential: when the guest's chains are all well
//! formed (no bad chain counted), offer no memory twice (see `aliases`) and both runs took
//! every frame, the two must return the same chains with the same lengths and count the
//! same.
//!
//! Input: byte 0 = negotiation, byte 1 = frame count (up to 5), per frame a length (2 bytes)
//! and 10 header bytes; then the ring (`ring::guest`); the rest fills guest memory.
//!
//!     cargo +nightly fuzz run datapath_rx       (from net/)
#![no_main]

#[path = "common/input.rs"]
mod input;
#[path = "common/ring.rs"]
mod ring;

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use input::Input;
use libfuzzer_sys::fuzz_target;
use vmm_net::backend::datapath::Datapath;
use vmm_net::backend::features::Negotiated;
use vmm_net::transport::{Offloads, PacketBatch, Transport, TransportError};

/// The host's frames not yet read, and those the transport cut (longer than the buffers).
#[derive(Default)]
struct Host {
    incoming: VecDeque<Vec<u8>>,
    cut: u64,
}

/// A transport with a 10-byte header that reads one frame per call, into a batch or into
/// gather lists, cutting a frame at the end of its buffers as a tap does.
struct Fake {
    host: Arc<Mutex<Host>>,
    scatters: bool,
}

impl Transport for Fake {
    fn name(&self) -> &'static str {
        "fake"
    }
    fn vnet_hdr_len(&self) -> usize {
        10
    }
    fn rx_fd(&self) -> RawFd {
        -1
    }
    fn tx_fd(&self) -> RawFd {
        -1
    }
    fn recv(&mut self, batch: &mut PacketBatch) -> Result<usize, TransportError> {
        let mut host = self.host.lock().unwrap();
        let mut n = 0;
        while n < batch.depth() {
            let Some(f) = host.incoming.pop_front() else {
                break;
            };
            let b = &mut batch.bufs_mut()[n];
            if f.len() >= b.capacity() {
                host.cut += 1;
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
    unsafe fn recv_into(&mut self, iovs: &[libc::iovec]) -> Result<Option<usize>, TransportError> {
        let mut host = self.host.lock().unwrap();
        let Some(f) = host.incoming.pop_front() else {
            return Ok(None);
        };
        let total: usize = iovs.iter().map(|v| v.iov_len).sum();
        let mut rest = &f[..];
        for v in iovs {
            let k = rest.len().min(v.iov_len);
            // SAFETY: the caller vouches that each iovec is writable memory for the call.
            unsafe { std::ptr::copy_nonoverlapping(rest.as_ptr(), v.iov_base.cast(), k) };
            rest = &rest[k..];
        }
        if f.len() >= total {
            host.cut += 1;
        }
        Ok(Some(f.len()))
    }
    fn send(&mut self, batch: &PacketBatch) -> Result<usize, TransportError> {
        Ok(batch.count())
    }
    fn set_offloads(&mut self, _: Offloads) -> Result<(), TransportError> {
        Ok(())
    }
}

struct Case {
    features: u64,
    frames: Vec<Vec<u8>>,
    guest: ring::Guest,
    fill: Vec<u8>,
}

fn case(data: &[u8]) -> Case {
    let mut i = Input(data);
    let setup = i.u8();
    // Negotiation: VERSION_1, MRG_RXBUF, GUEST_CSUM, GUEST_TSO4, GUEST_TSO6, GUEST_ECN.
    let mut features = 0u64;
    for (bit, feature) in [(0, 32), (1, 15), (2, 1), (3, 7), (4, 8), (5, 9)] {
        if setup & (1 << bit) != 0 {
            features |= 1 << feature;
        }
    }
    let frames = (0..i.u8() % 6)
        .map(|_| {
            let len = usize::from(i.u16()) % 0x1_2000;
            let mut f = i.bytes(10);
            f.extend((0..len).map(|k| k as u8));
            f
        })
        .collect();
    let guest = ring::guest(&mut i);
    Case {
        features,
        frames,
        guest,
        fill: i.0.to_vec(),
    }
}

/// What a run leaves.
struct Outcome {
    used: Vec<(u32, u32)>,
    delivered: u64,
    dropped: u64,
    bad_chains: u64,
    /// Frames waiting in the datapath (counted when it resets) or in the transport.
    waiting: u64,
    cut: u64,
}

fn run(c: &Case, direct: bool) -> Outcome {
    let (m, mut q) = ring::setup(&c.guest, &c.fill);
    let host = Arc::new(Mutex::new(Host {
        incoming: c.frames.iter().cloned().collect(),
        cut: 0,
    }));
    let t = Fake {
        host: host.clone(),
        scatters: direct,
    };
    let mut dp = Datapath::new(Box::new(t), 8, 2, 1500);
    dp.set_negotiated(Negotiated::from_features(c.features))
        .unwrap();
    dp.set_direct_from(0);
    for _ in 0..4 {
        let _ = dp.process_rx(&mut q, &m);
    }
    let used = ring::used(&m, &q);
    let s = dp.stats();
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let delivered = load(&s.rx_packets);
    let dropped =
        load(&s.rx_dropped_too_big) + load(&s.rx_dropped_gso) + load(&s.rx_dropped_bad_header);
    let bad_chains = s.bad_chains.total();
    if !direct {
        assert_eq!(load(&s.rx_direct), 0);
    }
    dp.reset();
    let host = host.lock().unwrap();
    Outcome {
        used,
        delivered,
        dropped,
        bad_chains,
        waiting: load(&s.dropped_at_disconnect) + host.incoming.len() as u64,
        cut: host.cut,
    }
}

/// Whether the guest may offer one piece of memory twice: a head in two avail entries,
/// descriptors that overlap, or an indirect table (whose entries the input's fill makes).
/// A frame read straight into such buffers overwrites itself, and what the copying path then
/// reads back for a frame it must fix differs from what the host sent: the guest's own loss,
/// so such rings are held to the invariants, not compared.
fn aliases(g: &ring::Guest) -> bool {
    let heads = &g.avail[..g.avail.len().min(usize::from(ring::QSIZE))];
    let repeated = (0..heads.len()).any(|i| heads[..i].contains(&heads[i]));
    let indirect = g.descs.iter().any(|d| d.2 & 4 != 0);
    let overlap = g.descs.iter().enumerate().any(|(i, a)| {
        g.descs[..i].iter().any(|b| {
            let (a0, a1) = (a.0, a.0 + u64::from(a.1));
            let (b0, b1) = (b.0, b.0 + u64::from(b.1));
            a0 < b1 && b0 < a1
        })
    });
    repeated || indirect || overlap
}

fuzz_target!(|data: &[u8]| {
    let c = case(data);
    let n = c.frames.len() as u64;
    let direct = run(&c, true);
    let batch = run(&c, false);
    for o in [&direct, &batch] {
        ring::assert_each_chain_returned_at_most_as_offered(&c.guest, &o.used);
        // A frame refused for a malformed chain is counted as the chain, not as a frame.
        let accounted = o.delivered + o.dropped + o.waiting + o.cut;
        assert!(
            accounted == n || (o.bad_chains > 0 && accounted < n),
            "{n} frames: {} delivered, {} dropped, {} waiting, {} cut, {} bad chains",
            o.delivered,
            o.dropped,
            o.waiting,
            o.cut,
            o.bad_chains
        );
    }
    let clean = direct.bad_chains == 0 && batch.bad_chains == 0;
    if clean && direct.waiting == 0 && batch.waiting == 0 && !aliases(&c.guest) {
        assert_eq!(direct.used, batch.used);
        assert_eq!(
            (direct.delivered, direct.dropped, direct.cut),
            (batch.delivered, batch.dropped, batch.cut)
        );
    }
});
