//! A hostile guest's split virtqueue for the datapath targets: any descriptor table
//! (addresses inside, across two memory regions, and outside guest memory; any lengths and
//! flags, indirect tables, loops), any avail ring, in two memory regions filled from the
//! input; and the checks every run must pass.
// Each target uses the parts it needs.
#![allow(dead_code)]

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::input::Input;

pub const QSIZE: u16 = 16;
const DESC: u64 = 0x0;
const AVAIL: u64 = 0x200;
const USED: u64 = 0x400;
const DATA: u64 = 0x1000;
/// Two regions, back to back: a buffer may cross from one into the other.
pub const REGION: u64 = 0x1_0000;
const MEM_END: u64 = 2 * REGION;

/// The guest's side: descriptors (address, length, flags, next) and avail entries.
pub struct Guest {
    pub descs: Vec<(u64, u32, u16, u16)>,
    pub avail: Vec<u16>,
}

/// Reads a descriptor count (up to 16), 8 bytes a descriptor, then the avail ring's length
/// (up to 39: more than the ring holds is a hostile index) and a byte per entry.
pub fn guest(i: &mut Input) -> Guest {
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
    Guest { descs, avail }
}

/// Guest memory holding `g`'s ring (the data area filled with `fill`, repeated), and the
/// device's queue on it.
pub fn setup(g: &Guest, fill: &[u8]) -> (GuestMemoryMmap, Queue) {
    let m = GuestMemoryMmap::<()>::from_ranges(&[
        (GuestAddress(0), REGION as usize),
        (GuestAddress(REGION), REGION as usize),
    ])
    .unwrap();
    if !fill.is_empty() {
        let bytes: Vec<u8> = fill
            .iter()
            .copied()
            .cycle()
            .take((MEM_END - DATA) as usize)
            .collect();
        m.write_slice(&bytes, GuestAddress(DATA)).unwrap();
    }
    for (k, &(addr, len, flags, next)) in g.descs.iter().enumerate() {
        let at = GuestAddress(DESC + 16 * k as u64);
        m.write_obj(addr, at).unwrap();
        m.write_obj(len, GuestAddress(at.0 + 8)).unwrap();
        m.write_obj(flags, GuestAddress(at.0 + 12)).unwrap();
        m.write_obj(next, GuestAddress(at.0 + 14)).unwrap();
    }
    for (k, &head) in g.avail.iter().enumerate() {
        let slot = GuestAddress(AVAIL + 4 + 2 * (k as u64 % u64::from(QSIZE)));
        m.write_obj(head, slot).unwrap();
    }
    m.write_obj(g.avail.len() as u16, GuestAddress(AVAIL + 2))
        .unwrap();
    let mut q = Queue::new(QSIZE).unwrap();
    q.set_size(QSIZE);
    q.set_desc_table_address(Some(DESC as u32), Some(0));
    q.set_avail_ring_address(Some(AVAIL as u32), Some(0));
    q.set_used_ring_address(Some(USED as u32), Some(0));
    q.set_ready(true);
    (m, q)
}

/// The used ring's host addresses (start, end).
pub fn used_ring(m: &GuestMemoryMmap) -> (usize, usize) {
    use vm_memory::GuestMemoryBackend;
    let lo = m.get_host_address(GuestAddress(USED)).unwrap() as usize;
    (lo, lo + 4 + 8 * usize::from(QSIZE))
}

/// The used entries (id, length) the device wrote, in order.
pub fn used(m: &GuestMemoryMmap, q: &Queue) -> Vec<(u32, u32)> {
    (0..q.next_used())
        .map(|k| {
            let at = USED + 4 + 8 * u64::from(k % QSIZE);
            (
                m.read_obj(GuestAddress(at)).unwrap(),
                m.read_obj(GuestAddress(at + 4)).unwrap(),
            )
        })
        .collect()
}

/// No chain comes back more often than the ring offered it (the heads the guest's avail
/// entries hold, a slot read again after the index wraps).
pub fn assert_each_chain_returned_at_most_as_offered(g: &Guest, used: &[(u32, u32)]) {
    let offered: Vec<u16> = (0..g.avail.len())
        .map(|k| {
            let last = (k..g.avail.len()).step_by(usize::from(QSIZE)).last().unwrap_or(k);
            g.avail[last]
        })
        .collect();
    assert!(used.len() <= offered.len().max(usize::from(QSIZE)));
    if used.len() <= usize::from(QSIZE) {
        for &(id, _) in used {
            let back = used.iter().filter(|u| u.0 == id).count();
            let given = offered.iter().filter(|&&h| u32::from(h) == id).count();
            assert!(back <= given, "chain {id} returned {back} times, offered {given}");
        }
    }
}
