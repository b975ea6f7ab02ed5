//! Requests as a guest driver would place them (virtio-queue's `MockSplitQueue` over plain
//! guest memory), served by [`process_queue`] against an in-memory disk.

use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;

/// A disk in a shared vector, counting flushes, so tests can look at it while the device owns it.
#[derive(Clone, Default)]
struct MemDisk {
    bytes: Arc<Mutex<Vec<u8>>>,
    flushes: Arc<AtomicU64>,
}

impl DiskImage for MemDisk {
    fn len(&self) -> u64 {
        self.bytes.lock().unwrap().len() as u64
    }
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let b = self.bytes.lock().unwrap();
        buf.copy_from_slice(&b[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        let mut b = self.bytes.lock().unwrap();
        b[offset as usize..offset as usize + buf.len()].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.flushes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
    fn discard(&mut self, offset: u64, len: u64) -> std::io::Result<()> {
        self.write_zeroes(offset, len)
    }
    fn write_zeroes(&mut self, offset: u64, len: u64) -> std::io::Result<()> {
        let mut b = self.bytes.lock().unwrap();
        b[offset as usize..(offset + len) as usize].fill(0);
        Ok(())
    }
}

/// Guest memory: rings at 0, request buffers from 0x10000.
fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100000)]).unwrap()
}

const DISK_SECTORS: u64 = 64;
const HDR: u64 = 0x10000;
const DATA: u64 = 0x20000;
const STATUS: u64 = 0x30000;

fn disk(readonly: bool) -> (Disk, MemDisk) {
    let m = MemDisk::default();
    *m.bytes.lock().unwrap() = (0..DISK_SECTORS * SECTOR)
        .map(|i| (i % 251) as u8)
        .collect();
    let d = Disk {
        name: "test".into(),
        image: Box::new(m.clone()),
        capacity: DISK_SECTORS * SECTOR,
        readonly,
        serial: *b"serial-0123456789abc",
        counters: Arc::new(Counters::default()),
    };
    (d, m)
}

fn header(mem: &GuestMemoryMmap, kind: u32, sector: u64) {
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&kind.to_le_bytes());
    h[8..].copy_from_slice(&sector.to_le_bytes());
    mem.write_slice(&h, GuestAddress(HDR)).unwrap();
    mem.write_obj(0xaau8, GuestAddress(STATUS)).unwrap();
}

fn desc(addr: u64, len: u32, flags: u16) -> RawDescriptor {
    // `next` is filled in by add_desc_chains for F_NEXT descriptors.
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
}

/// Places one chain, serves the queue; returns (used len, status byte).
fn run(mem: &GuestMemoryMmap, d: &mut Disk, chain: &[RawDescriptor]) -> (u32, u8) {
    let (vq, mut q) = crate::mock_chain::queue_with_chain(mem, chain);
    assert!(process_queue(&mut q, mem, d), "the guest is interrupted");
    let used = vq.used().ring().ref_at(0).unwrap().load();
    assert_eq!(used.id(), 0);
    assert_eq!(vq.used().idx().load(), 1, "exactly one chain used");
    let status: u8 = mem.read_obj(GuestAddress(STATUS)).unwrap();
    (used.len(), status)
}

/// A standard three-descriptor request.
fn request(data_len: u32, data_flags: u16) -> Vec<RawDescriptor> {
    vec![
        desc(HDR, 16, 0),
        desc(DATA, data_len, data_flags),
        desc(STATUS, 1, F_WRITE),
    ]
}

#[test]
fn read_returns_the_disks_bytes() {
    let mem = memory();
    let (mut d, m) = disk(false);
    header(&mem, req::IN, 3);
    let (len, status) = run(&mem, &mut d, &request(1024, F_WRITE));
    assert_eq!((len, status), (1025, S_OK));
    let mut got = vec![0u8; 1024];
    mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    assert_eq!(got, m.bytes.lock().unwrap()[1536..2560]);
    assert_eq!(d.counters.read_bytes.load(Ordering::Relaxed), 1024);
}

#[test]
fn write_lands_and_any_layout_works() {
    let mem = memory();
    let (mut d, m) = disk(false);
    header(&mem, req::OUT, 10);
    mem.write_slice(&[0x5a; 512], GuestAddress(DATA)).unwrap();
    let (len, status) = run(&mem, &mut d, &request(512, 0));
    assert_eq!((len, status), (1, S_OK));
    assert!(m.bytes.lock().unwrap()[5120..5632]
        .iter()
        .all(|&b| b == 0x5a));
    // Header and data in one descriptor, split across two data descriptors: the same.
    mem.write_slice(&[0x33; 512], GuestAddress(HDR + 16))
        .unwrap();
    header(&mem, req::OUT, 20);
    let chain = [
        desc(HDR, 16 + 256, 0),
        desc(HDR + 16 + 256, 256, 0),
        desc(STATUS, 1, F_WRITE),
    ];
    assert_eq!(run(&mem, &mut d, &chain), (1, S_OK));
    assert!(m.bytes.lock().unwrap()[10240..10752]
        .iter()
        .all(|&b| b == 0x33));
}

#[test]
fn flush_reaches_the_image() {
    let mem = memory();
    let (mut d, m) = disk(false);
    header(&mem, req::FLUSH, 0);
    let chain = [desc(HDR, 16, 0), desc(STATUS, 1, F_WRITE)];
    assert_eq!(run(&mem, &mut d, &chain), (1, S_OK));
    assert_eq!(m.flushes.load(Ordering::Relaxed), 1);
}

#[test]
fn get_id_is_the_serial() {
    let mem = memory();
    let (mut d, _) = disk(false);
    header(&mem, req::GET_ID, 0);
    assert_eq!(run(&mem, &mut d, &request(20, F_WRITE)), (21, S_OK));
    let mut id = [0u8; 20];
    mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id, b"serial-0123456789abc");
}

#[test]
fn out_of_range_and_odd_lengths_fail_that_request_only() {
    let mem = memory();
    let (mut d, m) = disk(false);
    let before = m.bytes.lock().unwrap().clone();
    for (kind, sector, len, why) in [
        (req::IN, DISK_SECTORS, 512, Reason::OutOfRange),
        (req::OUT, DISK_SECTORS - 1, 1024, Reason::OutOfRange),
        (req::IN, u64::MAX / 2, 512, Reason::OutOfRange),
        (req::OUT, 0, 100, Reason::BadLength),
    ] {
        header(&mem, kind, sector);
        let flags = if kind == req::IN { F_WRITE } else { 0 };
        assert_eq!(run(&mem, &mut d, &request(len, flags)), (1, S_IOERR));
        assert!(d.counters.errors(why) > 0, "{why:?}");
    }
    assert!(*m.bytes.lock().unwrap() == before, "nothing was written");
    // The last sector is fine.
    header(&mem, req::IN, DISK_SECTORS - 1);
    assert_eq!(run(&mem, &mut d, &request(512, F_WRITE)), (513, S_OK));
}

#[test]
fn huge_requests_are_refused_before_any_allocation() {
    let mem = memory();
    let (mut d, _) = disk(false);
    d.capacity = u64::MAX / 2;
    header(&mem, req::IN, 0);
    // Descriptors claiming far more than guest memory holds.
    let chain = [
        desc(HDR, 16, 0),
        desc(DATA, u32::MAX / 2, F_WRITE),
        desc(DATA, u32::MAX / 2 - 511, F_WRITE),
        desc(STATUS, 1, F_WRITE),
    ];
    assert_eq!(run(&mem, &mut d, &chain), (1, S_IOERR));
    assert_eq!(d.counters.errors(Reason::TooLarge), 1);
}

#[test]
fn broken_chains_get_ioerr_or_nothing() {
    let mem = memory();
    let (mut d, _) = disk(false);
    // A header the device could write: no readable header.
    header(&mem, req::IN, 0);
    let chain = [desc(HDR, 16, F_WRITE), desc(STATUS, 1, F_WRITE)];
    assert_eq!(run(&mem, &mut d, &chain), (1, S_IOERR));
    assert_eq!(d.counters.errors(Reason::BadHeader), 1);
    // A short header.
    let chain = [desc(HDR, 8, 0), desc(STATUS, 1, F_WRITE)];
    assert_eq!(run(&mem, &mut d, &chain), (1, S_IOERR));
    // Readable data after writable (wrong directions).
    header(&mem, req::OUT, 0);
    let chain = [
        desc(HDR, 16, 0),
        desc(DATA, 512, F_WRITE),
        desc(DATA, 512, 0),
        desc(STATUS, 1, F_WRITE),
    ];
    assert_eq!(run(&mem, &mut d, &chain), (1, S_IOERR));
    assert_eq!(d.counters.errors(Reason::WrongDirection), 1);
    // A buffer outside guest memory.
    header(&mem, req::IN, 0);
    let chain = [
        desc(HDR, 16, 0),
        desc(0x1000_0000, 512, F_WRITE),
        desc(STATUS, 1, F_WRITE),
    ];
    assert_eq!(run(&mem, &mut d, &chain), (1, S_IOERR));
    assert_eq!(d.counters.errors(Reason::BadAddress), 1);
    // No writable status byte at all: used with length 0, the status byte untouched.
    mem.write_obj(0xaau8, GuestAddress(STATUS)).unwrap();
    let chain = [desc(HDR, 16, 0), desc(STATUS, 1, 0)];
    assert_eq!(run(&mem, &mut d, &chain), (0, 0xaa));
    let chain = [desc(HDR, 16, 0), desc(0x1000_0000, 1, F_WRITE)];
    assert_eq!(run(&mem, &mut d, &chain).0, 0);
    assert_eq!(d.counters.errors(Reason::NoStatus), 2);
    // Unknown types are UNSUPP.
    header(&mem, 0x7777, 0);
    let chain = [desc(HDR, 16, 0), desc(STATUS, 1, F_WRITE)];
    assert_eq!(run(&mem, &mut d, &chain), (1, S_UNSUPP));
    assert_eq!(d.counters.requests.load(Ordering::Relaxed), 7);
}

#[test]
fn readonly_refuses_every_change() {
    let mem = memory();
    let (mut d, m) = disk(true);
    let before = m.bytes.lock().unwrap().clone();
    header(&mem, req::OUT, 0);
    assert_eq!(run(&mem, &mut d, &request(512, 0)), (1, S_IOERR));
    for kind in [req::DISCARD, req::WRITE_ZEROES] {
        header(&mem, kind, 0);
        mem.write_slice(&range(0, 8, 0), GuestAddress(DATA))
            .unwrap();
        assert_eq!(run(&mem, &mut d, &request(16, 0)), (1, S_IOERR));
    }
    assert_eq!(d.counters.errors(Reason::ReadOnly), 3);
    assert!(*m.bytes.lock().unwrap() == before);
    // Reads still work.
    header(&mem, req::IN, 0);
    assert_eq!(run(&mem, &mut d, &request(512, F_WRITE)), (513, S_OK));
}

fn range(sector: u64, sectors: u32, flags: u32) -> [u8; 16] {
    let mut r = [0u8; 16];
    r[..8].copy_from_slice(&sector.to_le_bytes());
    r[8..12].copy_from_slice(&sectors.to_le_bytes());
    r[12..].copy_from_slice(&flags.to_le_bytes());
    r
}

#[test]
fn discard_and_write_zeroes_check_every_range_first() {
    let mem = memory();
    let (mut d, m) = disk(false);
    let mut two = range(2, 2, 0).to_vec();
    two.extend_from_slice(&range(10, 1, RANGE_F_UNMAP));
    header(&mem, req::WRITE_ZEROES, 0);
    mem.write_slice(&two, GuestAddress(DATA)).unwrap();
    assert_eq!(run(&mem, &mut d, &request(32, 0)), (1, S_OK));
    {
        let b = m.bytes.lock().unwrap();
        assert!(b[1024..2048].iter().all(|&x| x == 0));
        assert!(b[5120..5632].iter().all(|&x| x == 0));
        assert_ne!(b[2048], 0);
    }
    // A good range then one past the end: nothing is done.
    let mut bad = range(20, 1, 0).to_vec();
    bad.extend_from_slice(&range(DISK_SECTORS, 1, 0));
    header(&mem, req::DISCARD, 0);
    mem.write_slice(&bad, GuestAddress(DATA)).unwrap();
    assert_eq!(run(&mem, &mut d, &request(32, 0)), (1, S_IOERR));
    assert_ne!(m.bytes.lock().unwrap()[20 * 512 + 1], 0);
    // Discard with the unmap flag is UNSUPP; a partial range is IOERR.
    mem.write_slice(&range(0, 1, RANGE_F_UNMAP), GuestAddress(DATA))
        .unwrap();
    assert_eq!(run(&mem, &mut d, &request(16, 0)), (1, S_UNSUPP));
    assert_eq!(run(&mem, &mut d, &request(15, 0)), (1, S_IOERR));
    assert_eq!(d.counters.trimmed_sectors.load(Ordering::Relaxed), 3);
}

#[test]
fn config_space_and_features() {
    let dev = VirtioBlk::new(
        Box::new(MemDisk {
            bytes: Arc::new(Mutex::new(vec![0; 4096 + 100])),
            ..Default::default()
        }),
        true,
        "t",
        "s",
        memory(),
    );
    let mut cap = [0u8; 8];
    dev.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), 8, "whole sectors only");
    let mut blk = [0u8; 4];
    dev.read_config(20, &mut blk);
    assert_eq!(u32::from_le_bytes(blk), 512);
    let mut far = [0xffu8; 4];
    dev.read_config(u64::MAX - 1, &mut far);
    assert_eq!(far, [0; 4]);
    let f = dev.features();
    for bit in [
        feature::VERSION_1,
        feature::RO,
        feature::FLUSH,
        feature::DISCARD,
        feature::WRITE_ZEROES,
    ] {
        assert_ne!(f & bit, 0, "{bit:#x}");
    }
    assert_eq!(dev.queue_max_sizes(), &[QUEUE_MAX_SIZE]);
}

#[test]
fn the_worker_serves_kicks_and_stops_on_reset() {
    let mem = memory();
    let m = MemDisk::default();
    *m.bytes.lock().unwrap() = vec![9u8; 8192];
    let mut dev = VirtioBlk::new(Box::new(m.clone()), false, "w", "s", mem.clone());
    let vq = MockSplitQueue::new(&mem, 16);
    let kick = EventFd::new(EFD_NONBLOCK).unwrap();
    let call = EventFd::new(EFD_NONBLOCK).unwrap();
    let setup = QueueSetup {
        size: 16,
        desc_table: vq.desc_table_addr(),
        avail_ring: vq.avail_addr(),
        used_ring: vq.used_addr(),
        kick: &kick,
        call: &call,
    };
    dev.activate(feature::VERSION_1, std::slice::from_ref(&setup))
        .unwrap();
    header(&mem, req::OUT, 1);
    mem.write_slice(&[1u8; 512], GuestAddress(DATA)).unwrap();
    let mut chain = request(512, 0);
    for (i, dsc) in chain.iter_mut().enumerate().take(2) {
        let mut s = SplitDescriptor::from(*dsc);
        s.set_flags(s.flags() | F_NEXT);
        s.set_next(i as u16 + 1);
        *dsc = RawDescriptor::from(s);
    }
    vq.add_desc_chains(&chain, 0).unwrap();
    kick.write(1).unwrap();
    // The interrupt comes from the worker thread.
    let mut p = libc::pollfd {
        fd: call.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one live pollfd.
    assert_eq!(unsafe { libc::poll(&mut p, 1, 5000) }, 1, "no interrupt");
    assert_eq!(vq.used().idx().load(), 1);
    assert!(m.bytes.lock().unwrap()[512..1024].iter().all(|&b| b == 1));
    dev.reset();
    assert!(
        dev.running.is_none() && dev.disk.is_some(),
        "the image came back"
    );
    // And it can start again (a guest re-probing after reset).
    dev.activate(feature::VERSION_1, std::slice::from_ref(&setup))
        .unwrap();
    drop(dev);
    // A queue outside guest memory is refused at activation.
    let mut dev = VirtioBlk::new(Box::new(m), false, "w", "s", mem);
    let bad = QueueSetup {
        desc_table: GuestAddress(0x1000_0000),
        ..setup
    };
    assert!(dev.activate(feature::VERSION_1, &[bad]).is_err());
}

/// Random chains (random types, sectors, lengths, directions, addresses in and out of guest
/// memory) and random bytes where the headers and ranges are read: every chain comes back used,
/// nothing panics, and the disk never grows.
#[test]
fn random_requests_never_panic() {
    let mem = memory();
    let (mut d, m) = disk(false);
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let kinds = [
        req::IN,
        req::OUT,
        req::FLUSH,
        req::GET_ID,
        req::DISCARD,
        req::WRITE_ZEROES,
        99,
    ];
    for _ in 0..2000 {
        let mut junk = vec![0u8; 64];
        junk.iter_mut().for_each(|b| *b = next() as u8);
        mem.write_slice(&junk, GuestAddress(DATA)).unwrap();
        header(
            &mem,
            kinds[next() as usize % kinds.len()],
            next() % (DISK_SECTORS + 4),
        );
        let n = 1 + next() as usize % 4;
        let chain: Vec<RawDescriptor> = (0..n)
            .map(|i| {
                let addr = match next() % 8 {
                    0 => 0x1000_0000 + next() % 0x1000,
                    1 => u64::MAX - next() % 0x1000,
                    _ if i == 0 => HDR,
                    _ => DATA + next() % 0x1000,
                };
                let len = match next() % 4 {
                    0 => next() as u32,
                    1 => 16,
                    _ => (next() % 4096) as u32,
                };
                desc(addr, len, if next() % 2 == 0 { F_WRITE } else { 0 })
            })
            .collect();
        let (len, _) = run(&mem, &mut d, &chain);
        assert!(u64::from(len) <= MAX_REQUEST_BYTES + 1);
    }
    assert_eq!(m.bytes.lock().unwrap().len() as u64, DISK_SECTORS * SECTOR);
    assert_eq!(d.counters.requests.load(Ordering::Relaxed), 2000);
}
