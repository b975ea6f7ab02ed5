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

use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};

use input::Input;
use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_net::backend::datapath::Datapath;
use vmm_net::backend::features::Negotiated;
use vmm_net::transport::{
    Frames, GatherBatch, Offloads, PacketBatch, Transport, TransportError,
};

const QSIZE: u16 = 16;
const DESC: u64 = 0x0;
const AVAIL: u64 = 0x200;
const USED: u64 = 0x400;
const DATA: u64 = 0x1000;
/// Two regions, back to back: a buffer may cross from one into the other.
const REGION: u64 = 0x1_0000;
const MEM_END: u64 = 2 * REGION;

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


/// The guest's side, written into memory: descriptors, avail ring, buffer bytes.
struct Ring {
    descs: Vec<(u64, u32, u16, u16)>,
    avail: Vec<u16>,
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
    let count = usize::from(i.u8() % (QSIZE as u8 + 1));
    let descs = (0..count)
        .map(|_| {
            let where_ = i.u8();
            let at = u64::from(i.u16());
            let addr = match where_ % 4 {
                // In the data area, often near the regions' seam.
                0 | 1 => DATA + at,
                2 => REGION - 0x800 + (at % 0x1000),
                _ => MEM_END - 0x100 + at,
            };
            let len = match i.u8() % 8 {
                7 => 0x7fff_0000,
                _ => u32::from(i.u16()) % 0x2_0000,
            };
            let flags = u16::from(i.u8() & 0x7);
            let next = u16::from(i.u8()) % QSIZE;
            (addr, len, flags, next)
        })
        .collect();
    let avail = (0..i.u8() % 40).map(|_| u16::from(i.u8()) % QSIZE).collect();
    let accept = (0..8).map(|_| usize::from(i.u8() % 5)).collect();
    Ring {
        descs,
        avail,
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
    let m = GuestMemoryMmap::<()>::from_ranges(&[
        (GuestAddress(0), REGION as usize),
        (GuestAddress(REGION), REGION as usize),
    ])
    .unwrap();
    if !r.fill.is_empty() {
        let bytes: Vec<u8> = r
            .fill
            .iter()
            .copied()
            .cycle()
            .take((MEM_END - DATA) as usize)
            .collect();
        m.write_slice(&bytes, GuestAddress(DATA)).unwrap();
    }
    for (k, &(addr, len, flags, next)) in r.descs.iter().enumerate() {
        let at = GuestAddress(DESC + 16 * k as u64);
        m.write_obj(addr, at).unwrap();
        m.write_obj(len, GuestAddress(at.0 + 8)).unwrap();
        m.write_obj(flags, GuestAddress(at.0 + 12)).unwrap();
        m.write_obj(next, GuestAddress(at.0 + 14)).unwrap();
    }
    for (k, &head) in r.avail.iter().enumerate() {
        let slot = GuestAddress(AVAIL + 4 + 2 * (k as u64 % u64::from(QSIZE)));
        m.write_obj(head, slot).unwrap();
    }
    // The ring says as many entries as were given (up to 39: more than the ring holds is a
    // hostile index the datapath must survive).
    m.write_obj(r.avail.len() as u16, GuestAddress(AVAIL + 2))
        .unwrap();
    let mut q = Queue::new(QSIZE).unwrap();
    q.set_size(QSIZE);
    q.set_desc_table_address(Some(DESC as u32), Some(0));
    q.set_avail_ring_address(Some(AVAIL as u32), Some(0));
    q.set_used_ring_address(Some(USED as u32), Some(0));
    q.set_ready(true);

    let used_ring = {
        let lo = m.get_host_address(GuestAddress(USED)).unwrap() as usize;
        (lo, lo + 4 + 8 * usize::from(QSIZE))
    };
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
    let n = q.next_used();
    let used: Vec<(u32, u32)> = (0..n)
        .map(|k| {
            let at = USED + 4 + 8 * u64::from(k % QSIZE);
            (
                m.read_obj(GuestAddress(at)).unwrap(),
                m.read_obj(GuestAddress(at + 4)).unwrap(),
            )
        })
        .collect();
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
    // No chain comes back more often than the ring offered it (the heads the guest's avail
    // entries hold, a slot read again after the index wraps).
    let offered: Vec<u16> = (0..r.avail.len())
        .map(|k| {
            let last = (k..r.avail.len()).step_by(usize::from(QSIZE)).last().unwrap_or(k);
            r.avail[last]
        })
        .collect();
    assert!(gathered.used.len() <= offered.len().max(usize::from(QSIZE)));
    if gathered.used.len() <= usize::from(QSIZE) {
        for &(id, _) in &gathered.used {
            let back = gathered.used.iter().filter(|u| u.0 == id).count();
            let given = offered.iter().filter(|&&h| u32::from(h) == id).count();
            assert!(back <= given, "chain {id} returned {back} times, offered {given}");
        }
    }
});
