//! A guest's virtio-blk requests: the input is the guest's memory (descriptor table, rings,
//! request headers, data) and the queue's size; the device serves whatever chains the avail
//! ring offers against an in-memory disk. Nothing may panic, every access stays inside the
//! disk, and the disk never changes size.
//!
//!     cargo +nightly fuzz run virtio_blk        (from devices/)
#![no_main]

use std::io;

use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_devices::virtio_blk::{DiskImage, VirtioBlk};

/// Guest memory: 64 KiB, rings and requests anywhere in it.
const MEM: usize = 64 * 1024;
/// Disk: 32 sectors.
const DISK: usize = 32 * 512;

struct Ram(Vec<u8>);

impl Ram {
    fn range(&self, offset: u64, len: usize) -> io::Result<std::ops::Range<usize>> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
        let end = start.checked_add(len).ok_or(io::ErrorKind::InvalidInput)?;
        assert!(
            end <= self.0.len(),
            "the device went past the disk: {start}..{end}"
        );
        Ok(start..end)
    }
}

impl DiskImage for Ram {
    fn len(&self) -> u64 {
        self.0.len() as u64
    }
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let r = self.range(offset, buf.len())?;
        buf.copy_from_slice(&self.0[r]);
        Ok(())
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        let r = self.range(offset, buf.len())?;
        self.0[r].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
    fn discard(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.write_zeroes(offset, len)
    }
    fn write_zeroes(&mut self, offset: u64, len: u64) -> io::Result<()> {
        let len = usize::try_from(len).map_err(|_| io::ErrorKind::InvalidInput)?;
        let r = self.range(offset, len)?;
        self.0[r].fill(0);
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    // The first bytes choose the queue: its size and where its three parts live.
    let size = 1u16 << (data[0] % 9);
    let at = |i: usize| GuestAddress(u64::from(u16::from_le_bytes([data[i], data[i + 1]])) & !0xf);
    let (desc, avail, used) = (at(1), at(3), at(5));
    let readonly = data[7] & 1 == 1;
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
    let image = &data[8..];
    mem.write_slice(&image[..image.len().min(MEM)], GuestAddress(0))
        .unwrap();
    let mut dev = VirtioBlk::new(
        Box::new(Ram(vec![0xa5; DISK])),
        readonly,
        "fuzz",
        "fuzz",
        mem,
    );
    let _ = dev.serve_once(size, desc, avail, used);
});
