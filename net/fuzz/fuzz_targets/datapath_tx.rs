//! The transmit datapath on a hostile guest's ring: any descriptor table (addresses inside,
//! across two memory regions, and outside guest memory; any lengths and flags, indirect
//! tables, loops), any avail ring, any header bytes, any negotiation, a host that takes any
//! number of frames per call, over a transport with and without a virtio-net header.
//!
//! Differential: the same ring is run twice, once with frames sent from the guest's buffers
//! (gather lists) and once with every frame copied into the batch. Both must send the same
//! frames in the same order, count the same drops, and return the same chains in the same
//! order; no chain may be returned more often than the ring offered it, and a host that takes
//! everything in the end must leave nothing pending. Nothing may panic or hang.
//!
//! One difference is by design: a gathered frame is read when the host takes it, a copied one
//! when its chain is taken. Guest memory that changes in between (here only the used ring,
//! which a hostile chain may point into) may then differ; such frames are compared by length.
//!
//! Input: byte 0 = negotiation and transport (see `setup`), byte 1 = how many descriptors
//! (up to 16), then 8 bytes a descriptor, 1 byte for the avail ring's length and a byte per
//! entry, then the host's per-call acceptance bytes (8); the rest fills guest memory.
//!
//!     cargo +nightly fuzz run datapath_tx       (from net/)
#![no_main]

#[path = "common/input.rs"]
mod input;
#[path = "common/ring.rs"]
mod ring;

use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};

use input::Input;
use libfuzzer_sys::fuzz_target;
use vmm_net::backend::datapath::Datapath;
use vmm_net::backend::features::Negotiated;
use vmm_net::transport::{
    Frames, GatherBatch, Offloads, PacketBatch, Transport, TransportError,
};

/// What the fake host saw, and how many frames it takes per call.
#[derive(Default)]
struct Host {
    sent: Vec<Vec<u8>>,
    /// Per frame sent: whether a piece of it was the used ring (gathered frames only).
    aliased: Vec<bool>,
    /// The used ring's host addresses.
    used_ring: (usize, usize),
    accept: Vec<usize>,
    calls: usize,
}

impl Host {
    fn take(&mut self, offered: usize) -> usize {
        let n = self.accept.get(self.calls).copied().unwrap_or(usize::MAX);
        self.calls += 1;
        offered.min(n)
    }
}

struct Fake {
    hdr: usize,
    host: Arc<Mutex<Host>>,
}

/// Frame `i`'s bytes, and whether a piece of it lies in `avoid` (host addresses).
fn bytes_of<F: Frames + ?Sized>(f: &F, i: usize, avoid: (usize, usize)) -> (Vec<u8>, bool) {
    let mut one = libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    };
    let (p, k) = f.iov(i, &mut one);
    // SAFETY: `Frames::iov` returns `k` iovecs describing memory live for the call.
    let iovs = unsafe { std::slice::from_raw_parts(p, k) };
    let mut out = Vec::new();
    let mut aliased = false;
    for v in iovs {
        let at = v.iov_base as usize;
        aliased |= at < avoid.1 && at + v.iov_len > avoid.0;
        // SAFETY: as above.
        out.extend_from_slice(unsafe {
            std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len)
        });
    }
    (out, aliased)
}

impl Fake {
    fn send_frames<F: Frames + ?Sized>(&mut self, f: &F) -> usize {
        let mut host = self.host.lock().unwrap();
        let n = host.take(f.count());
        for i in 0..n {
            let (b, aliased) = bytes_of(f, i, host.used_ring);
            host.sent.push(b);
            host.aliased.push(aliased);
        }
        n
    }
}

impl Transport for Fake {
    fn name(&self) -> &'static str {
        "fake"
    }
    fn vnet_hdr_len(&self) -> usize {
        self.hdr
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
        Ok(self.send_frames(batch))
    }
    fn gathers(&self) -> bool {
        true
    }
    fn send_gather(&mut self, frames: &GatherBatch) -> Result<usize, TransportError> {
        Ok(self.send_frames(frames))
    }
    fn set_offloads(&mut self, _: Offloads) -> Result<(), TransportError> {
        Ok(())
    }
}


/// The guest's side (its ring; the rest of the input fills its memory), the negotiation and
/// the host's per-call acceptance.
struct Ring {
    guest: ring::Guest,
    accept: Vec<usize>,
    fill: Vec<u8>,
    features: u64,
    hdr: usize,
}

fn ring(data: &[u8]) -> Ring {
    let mut i = Input(data);
    let setup = i.u8();
    // Negotiation: VERSION_1 (12-byte header) or not, CSUM, HOST_TSO4/6, HOST_ECN.
    let mut features = 0u64;
    for (bit, feature) in [(0, 32), (1, 0), (2, 11), (3, 12), (4, 13)] {
        if setup & (1 << bit) != 0 {
            features |= 1 << feature;
        }
    }
    let hdr = if setup & 0x20 != 0 { 10 } else { 0 };
    let guest = ring::guest(&mut i);
    let accept = (0..8).map(|_| usize::from(i.u8() % 5)).collect();
    Ring {
        guest,
        accept,
        fill: i.0.to_vec(),
        features,
        hdr,
    }
}

/// Everything a run leaves that the other must match.
#[derive(Debug)]
struct Outcome {
    sent: Vec<Vec<u8>>,
    aliased: Vec<bool>,
    used: Vec<(u32, u32)>,
    counters: String,
}

fn run(r: &Ring, zero_copy: bool) -> Outcome {
    let (m, mut q) = ring::setup(&r.guest, &r.fill);
    let used_ring = ring::used_ring(&m);
    let host = Arc::new(Mutex::new(Host {
        accept: r.accept.clone(),
        used_ring,
        ..Host::default()
    }));
    let t = Fake {
        hdr: r.hdr,
        host: host.clone(),
    };
    let mut dp = Datapath::new(Box::new(t), 8, 2, 1500);
    dp.set_negotiated(Negotiated::from_features(r.features))
        .unwrap();
    dp.set_zero_copy(zero_copy);
    // The host takes what the input says for a while, then everything.
    for _ in 0..64 {
        let _ = dp.process_tx(&mut q, &m);
        let done = host.lock().unwrap().calls >= r.accept.len();
        if done && !dp.tx_pending() {
            break;
        }
        if done {
            host.lock().unwrap().accept.clear();
        }
    }
    let _ = dp.process_tx(&mut q, &m);
    assert!(!dp.tx_pending(), "a host that takes everything leaves nothing pending");
    let used = ring::used(&m, &q);
    // The ring holds at most QSIZE entries; only a hostile index makes more appear used,
    // and then the same in both runs.
    let mut host = host.lock().unwrap();
    Outcome {
        sent: std::mem::take(&mut host.sent),
        aliased: std::mem::take(&mut host.aliased),
        used,
        counters: dp.stats().summary(),
    }
}

fuzz_target!(|data: &[u8]| {
    let r = ring(data);
    let gathered = run(&r, true);
    let copied = run(&r, false);
    assert_eq!(gathered.used, copied.used);
    assert_eq!(gathered.counters, copied.counters);
    assert_eq!(gathered.sent.len(), copied.sent.len());
    for (k, (g, c)) in gathered.sent.iter().zip(&copied.sent).enumerate() {
        if gathered.aliased[k] {
            assert_eq!(g.len(), c.len(), "frame {k}");
        } else {
            assert_eq!(g, c, "frame {k}");
        }
    }
    ring::assert_each_chain_returned_at_most_as_offered(&r.guest, &gathered.used);
});
