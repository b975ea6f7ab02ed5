//! A virtio-blk device (virtio 1.2 §5.2) served by the VMM itself: one request queue, walked by
//! a worker thread of its own, never by a vCPU. The guest's kick reaches that thread through the
//! queue's ioeventfd (KVM signals it; the vCPU does not exit to us) and the thread interrupts
//! the guest through the queue's irqfd.
//!
//! What the guest gets: the image's size in 512-byte sectors, FLUSH (`fdatasync`, so a flushed
//! write survives a host crash), DISCARD and WRITE_ZEROES, a serial number (GET_ID), and
//! VIRTIO_BLK_F_RO when the disk is read-only. Segments are bounded (SEG_MAX × SIZE_MAX), so no
//! request the guest may legitimately send exceeds [`MAX_REQUEST_BYTES`].
//!
//! Every request is guest input. A request that is wrong in any way (a sector past the end, a
//! length that is not whole sectors, a header in a device-writable buffer, buffers in the wrong
//! direction, a write to a read-only disk, an unknown type) completes with IOERR (UNSUPP for an
//! unknown type) and the next one is served; a chain without even a writable status byte is
//! returned used with length 0. Each kind of mistake is counted in [`Counters`] and logged once,
//! so a hostile guest cannot flood the host's log.

pub mod image;

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

pub use image::{DiskImage, DiskOptions, Format, ImageError};

use crate::virtio_pci::{
    ready_queue, wait_kick, ActivateError, QueueError, QueueSetup, VirtioDevice,
};

/// The virtio device type of a block device.
pub const DEVICE_TYPE: u16 = 2;
/// Largest queue the guest may ask for.
pub const QUEUE_MAX_SIZE: u16 = 256;
/// The unit of the guest's sector numbers, whatever the block size.
pub const SECTOR: u64 = 512;
/// Data descriptors per request (`seg_max`): room for the header and status besides them in a
/// full queue, as indirect descriptors are not offered.
const SEG_MAX: u32 = 126;
/// Bytes per data descriptor (`size_max`).
const SIZE_MAX: u32 = 256 * 1024;
/// The largest read or write served; SEG_MAX × SIZE_MAX fits, so only a guest ignoring the
/// limits it was given meets this one.
pub const MAX_REQUEST_BYTES: u64 = 32 << 20;
/// Sectors per DISCARD / WRITE_ZEROES segment.
const MAX_RANGE_SECTORS: u32 = 1 << 22; // 2 GiB
/// Segments per DISCARD / WRITE_ZEROES request.
const MAX_RANGE_SEGS: u32 = 32;
/// Discards in whole 4 KiB blocks (what a hole punch frees).
const DISCARD_ALIGNMENT_SECTORS: u32 = 8;
/// Bytes of the serial number (GET_ID).
pub const ID_BYTES: usize = 20;

/// Feature bits (virtio 1.2 §5.2.3).
mod feature {
    pub const SIZE_MAX: u64 = 1 << 1;
    pub const SEG_MAX: u64 = 1 << 2;
    pub const RO: u64 = 1 << 5;
    pub const BLK_SIZE: u64 = 1 << 6;
    pub const FLUSH: u64 = 1 << 9;
    pub const DISCARD: u64 = 1 << 13;
    pub const WRITE_ZEROES: u64 = 1 << 14;
    pub const VERSION_1: u64 = 1 << 32;
}

/// Request types.
mod req {
    pub const IN: u32 = 0;
    pub const OUT: u32 = 1;
    pub const FLUSH: u32 = 4;
    pub const GET_ID: u32 = 8;
    pub const DISCARD: u32 = 11;
    pub const WRITE_ZEROES: u32 = 13;
}

/// Request status bytes.
const S_OK: u8 = 0;
const S_IOERR: u8 = 1;
const S_UNSUPP: u8 = 2;

/// `struct virtio_blk_req`'s header: type, reserved, sector.
const HEADER_LEN: u64 = 16;
/// `struct virtio_blk_discard_write_zeroes`.
const RANGE_LEN: u64 = 16;
/// WRITE_ZEROES may deallocate.
const RANGE_F_UNMAP: u32 = 1;

/// Bytes of `struct virtio_blk_config` we fill: through `write_zeroes_may_unmap` and its
/// padding (secure erase and zoned fields are for features not offered).
const CONFIG_LEN: usize = 60;

/// Why a request failed, for the counters and the once-per-reason log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum Reason {
    /// No device-writable byte at the end of the chain for the status: returned with length 0.
    NoStatus,
    /// Fewer than 16 device-readable bytes for the header (e.g. a header the device may write).
    BadHeader,
    /// Device-readable buffers after device-writable ones.
    WrongDirection,
    /// A buffer outside guest memory.
    BadAddress,
    /// A data length that is not whole sectors, or a malformed range list.
    BadLength,
    /// Data or a range past the end of the disk.
    OutOfRange,
    /// More than [`MAX_REQUEST_BYTES`], or more segments or sectors than the config space allows.
    TooLarge,
    /// A write, discard or write-zeroes to a read-only disk.
    ReadOnly,
    /// A request type or flag this device does not implement (status UNSUPP).
    Unsupported,
    /// The host's I/O on the image failed.
    Io,
}

impl Reason {
    const COUNT: usize = 10;
    const ALL: [Reason; Reason::COUNT] = [
        Reason::NoStatus,
        Reason::BadHeader,
        Reason::WrongDirection,
        Reason::BadAddress,
        Reason::BadLength,
        Reason::OutOfRange,
        Reason::TooLarge,
        Reason::ReadOnly,
        Reason::Unsupported,
        Reason::Io,
    ];

    fn describe(self) -> &'static str {
        match self {
            Reason::NoStatus => "a descriptor chain without a writable status byte",
            Reason::BadHeader => "a request without a 16-byte device-readable header",
            Reason::WrongDirection => "device-readable buffers after device-writable ones",
            Reason::BadAddress => "a buffer outside guest memory",
            Reason::BadLength => "a length that is not whole sectors or whole ranges",
            Reason::OutOfRange => "a request past the end of the disk",
            Reason::TooLarge => "a request larger than the advertised limits",
            Reason::ReadOnly => "a write to a read-only disk",
            Reason::Unsupported => "an unsupported request type or flag",
            Reason::Io => "a host I/O error",
        }
    }

    fn status(self) -> u8 {
        match self {
            Reason::Unsupported => S_UNSUPP,
            _ => S_IOERR,
        }
    }
}

/// What a disk has served since the VM started: requests taken off the queue, bytes moved each
/// way, flushes, and failed requests by [`Reason`]. Shared between the device and its worker
/// (relaxed atomics: they are statistics, nothing synchronises on them).
#[derive(Default, Debug)]
pub struct Counters {
    /// Descriptor chains taken off the queue.
    pub requests: AtomicU64,
    /// Bytes the guest read (IN).
    pub read_bytes: AtomicU64,
    /// Bytes the guest wrote (OUT).
    pub written_bytes: AtomicU64,
    /// FLUSH requests completed.
    pub flushes: AtomicU64,
    /// Sectors discarded or zeroed (DISCARD, WRITE_ZEROES).
    pub trimmed_sectors: AtomicU64,
    errors: [AtomicU64; Reason::COUNT],
    /// One bit per reason already logged.
    logged: AtomicU32,
}

impl Counters {
    /// Requests that failed for `reason`.
    pub fn errors(&self, reason: Reason) -> u64 {
        self.errors[reason as usize].load(Ordering::Relaxed)
    }

    fn fail(&self, name: &str, reason: Reason, detail: &dyn std::fmt::Display) {
        self.errors[reason as usize].fetch_add(1, Ordering::Relaxed);
        let bit = 1 << reason as u32;
        if self.logged.fetch_or(bit, Ordering::Relaxed) & bit == 0 {
            log::warn!(
                "virtio-blk {name}: {} ({detail}); failing such requests from now on without \
                 logging them",
                reason.describe()
            );
        }
    }

    /// One line for the log.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} requests, {} bytes read, {} written, {} flushes, {} sectors trimmed",
            self.requests.load(Ordering::Relaxed),
            self.read_bytes.load(Ordering::Relaxed),
            self.written_bytes.load(Ordering::Relaxed),
            self.flushes.load(Ordering::Relaxed),
            self.trimmed_sectors.load(Ordering::Relaxed)
        );
        for r in Reason::ALL {
            let n = self.errors(r);
            if n > 0 {
                s.push_str(&format!(", {n} × {r:?}"));
            }
        }
        s
    }
}

/// The request-serving half: the image and what requests need to know about it. Owned by the
/// worker thread while the device runs.
struct Disk {
    name: String,
    image: Box<dyn DiskImage>,
    /// Bytes the guest may address: the image's size cut to whole sectors.
    capacity: u64,
    readonly: bool,
    serial: [u8; ID_BYTES],
    counters: Arc<Counters>,
}

/// A request's buffers, split by direction: the guest's header and data for us to read, then
/// the buffers for us to write, the last byte of which is the status.
struct Buffers {
    readable: Vec<(GuestAddress, u64)>,
    writable: Vec<(GuestAddress, u64)>,
}

impl Buffers {
    fn len(segs: &[(GuestAddress, u64)]) -> u64 {
        segs.iter().map(|s| s.1).sum()
    }

    /// `len` bytes of `segs`, starting `skip` bytes in.
    fn gather(
        mem: &GuestMemoryMmap,
        segs: &[(GuestAddress, u64)],
        mut skip: u64,
        out: &mut [u8],
    ) -> Result<(), Reason> {
        let mut done = 0usize;
        for &(addr, len) in segs {
            if done == out.len() {
                break;
            }
            if skip >= len {
                skip -= len;
                continue;
            }
            let n = ((len - skip) as usize).min(out.len() - done);
            let a = addr.checked_add(skip).ok_or(Reason::BadAddress)?;
            mem.read_slice(&mut out[done..done + n], a)
                .map_err(|_| Reason::BadAddress)?;
            done += n;
            skip = 0;
        }
        if done == out.len() {
            Ok(())
        } else {
            Err(Reason::BadLength)
        }
    }

    /// Writes `data` over the start of `segs`.
    fn scatter(
        mem: &GuestMemoryMmap,
        segs: &[(GuestAddress, u64)],
        data: &[u8],
    ) -> Result<(), Reason> {
        let mut done = 0usize;
        for &(addr, len) in segs {
            if done == data.len() {
                break;
            }
            let n = (len as usize).min(data.len() - done);
            mem.write_slice(&data[done..done + n], addr)
                .map_err(|_| Reason::BadAddress)?;
            done += n;
        }
        Ok(())
    }
}

impl Disk {
    /// Serves one chain; returns the used length (bytes written into the guest's buffers, status
    /// included; 0 when there was nowhere to put a status).
    fn handle(&mut self, mem: &GuestMemoryMmap, chain: DescriptorChain<&GuestMemoryMmap>) -> u32 {
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        let descs: Vec<Descriptor> = chain.collect();
        let status_addr = match descs.last() {
            Some(d) if d.is_write_only() && d.len() > 0 => {
                d.addr().checked_add(u64::from(d.len()) - 1)
            }
            _ => None,
        };
        let Some(status_addr) = status_addr else {
            self.counters
                .fail(&self.name, Reason::NoStatus, &"no status byte");
            return 0;
        };
        let (status, written) = match self.execute(mem, &descs) {
            Ok(n) => (S_OK, n),
            Err((reason, detail)) => {
                self.counters.fail(&self.name, reason, &detail);
                (reason.status(), 0)
            }
        };
        if mem.write_obj(status, status_addr).is_err() {
            self.counters
                .fail(&self.name, Reason::NoStatus, &"status outside guest memory");
            return 0;
        }
        // `written` is at most MAX_REQUEST_BYTES or ID_BYTES.
        written as u32 + 1
    }

    /// Checks that `len` bytes at `sector` lie on the disk and returns the byte offset.
    fn range(&self, sector: u64, len: u64) -> Result<u64, (Reason, String)> {
        sector
            .checked_mul(SECTOR)
            .filter(|off| off.checked_add(len).is_some_and(|end| end <= self.capacity))
            .ok_or_else(|| {
                (
                    Reason::OutOfRange,
                    format!(
                        "sector {sector} + {len} bytes, capacity {} bytes",
                        self.capacity
                    ),
                )
            })
    }

    fn execute(
        &mut self,
        mem: &GuestMemoryMmap,
        descs: &[Descriptor],
    ) -> Result<u64, (Reason, String)> {
        let first_writable = descs
            .iter()
            .position(|d| d.is_write_only())
            .unwrap_or(descs.len());
        if descs[first_writable..].iter().any(|d| !d.is_write_only()) {
            return Err((Reason::WrongDirection, "readable after writable".into()));
        }
        let seg = |d: &Descriptor| (d.addr(), u64::from(d.len()));
        let mut bufs = Buffers {
            readable: descs[..first_writable].iter().map(seg).collect(),
            writable: descs[first_writable..].iter().map(seg).collect(),
        };
        // The status byte is not data.
        if let Some(last) = bufs.writable.last_mut() {
            last.1 -= 1;
        }
        let readable = Buffers::len(&bufs.readable);
        let writable = Buffers::len(&bufs.writable);
        if readable < HEADER_LEN {
            return Err((
                Reason::BadHeader,
                format!("{readable} device-readable bytes"),
            ));
        }
        let mut header = [0u8; HEADER_LEN as usize];
        Buffers::gather(mem, &bufs.readable, 0, &mut header).map_err(|r| (r, "header".into()))?;
        let kind = u32::from_le_bytes(header[0..4].try_into().unwrap_or_default());
        let sector = u64::from_le_bytes(header[8..16].try_into().unwrap_or_default());
        let payload = readable - HEADER_LEN;
        let io = |what: &str, e: std::io::Error| (Reason::Io, format!("{what}: {e}"));
        match kind {
            req::IN => {
                let off = self.check_data(sector, writable)?;
                let mut data = vec![0u8; writable as usize];
                self.image
                    .read_at(&mut data, off)
                    .map_err(|e| io("read", e))?;
                Buffers::scatter(mem, &bufs.writable, &data)
                    .map_err(|r| (r, "read data".to_string()))?;
                self.counters
                    .read_bytes
                    .fetch_add(writable, Ordering::Relaxed);
                Ok(writable)
            }
            req::OUT => {
                self.check_writable()?;
                let off = self.check_data(sector, payload)?;
                let mut data = vec![0u8; payload as usize];
                Buffers::gather(mem, &bufs.readable, HEADER_LEN, &mut data)
                    .map_err(|r| (r, "write data".to_string()))?;
                self.image
                    .write_at(&data, off)
                    .map_err(|e| io("write", e))?;
                self.counters
                    .written_bytes
                    .fetch_add(payload, Ordering::Relaxed);
                Ok(0)
            }
            req::FLUSH => {
                self.image.flush().map_err(|e| io("flush", e))?;
                self.counters.flushes.fetch_add(1, Ordering::Relaxed);
                Ok(0)
            }
            req::GET_ID => {
                let n = writable.min(ID_BYTES as u64) as usize;
                Buffers::scatter(mem, &bufs.writable, &self.serial[..n])
                    .map_err(|r| (r, "id".to_string()))?;
                Ok(n as u64)
            }
            req::DISCARD | req::WRITE_ZEROES => {
                self.check_writable()?;
                let zeroes = kind == req::WRITE_ZEROES;
                if payload == 0 || payload % RANGE_LEN != 0 {
                    return Err((Reason::BadLength, format!("{payload} bytes of ranges")));
                }
                if payload / RANGE_LEN > u64::from(MAX_RANGE_SEGS) {
                    return Err((Reason::TooLarge, format!("{} ranges", payload / RANGE_LEN)));
                }
                let mut raw = vec![0u8; payload as usize];
                Buffers::gather(mem, &bufs.readable, HEADER_LEN, &mut raw)
                    .map_err(|r| (r, "ranges".to_string()))?;
                // Every range is checked before any is applied: a bad request changes nothing.
                let mut ranges = Vec::with_capacity(raw.len() / RANGE_LEN as usize);
                for r in raw.chunks_exact(RANGE_LEN as usize) {
                    let start = u64::from_le_bytes(r[0..8].try_into().unwrap_or_default());
                    let sectors = u32::from_le_bytes(r[8..12].try_into().unwrap_or_default());
                    let flags = u32::from_le_bytes(r[12..16].try_into().unwrap_or_default());
                    let allowed = if zeroes { RANGE_F_UNMAP } else { 0 };
                    if flags & !allowed != 0 {
                        return Err((Reason::Unsupported, format!("range flags {flags:#x}")));
                    }
                    if sectors > MAX_RANGE_SECTORS {
                        return Err((Reason::TooLarge, format!("{sectors} sectors in a range")));
                    }
                    let len = u64::from(sectors) * SECTOR;
                    ranges.push((self.range(start, len)?, len));
                }
                for (off, len) in ranges {
                    if zeroes {
                        self.image.write_zeroes(off, len)
                    } else {
                        self.image.discard(off, len)
                    }
                    .map_err(|e| io(if zeroes { "write zeroes" } else { "discard" }, e))?;
                    self.counters
                        .trimmed_sectors
                        .fetch_add(len / SECTOR, Ordering::Relaxed);
                }
                Ok(0)
            }
            other => Err((Reason::Unsupported, format!("request type {other}"))),
        }
    }

    fn check_writable(&self) -> Result<(), (Reason, String)> {
        if self.readonly {
            Err((Reason::ReadOnly, "readonly=on".into()))
        } else {
            Ok(())
        }
    }

    /// A read or write of `len` bytes at `sector`: whole sectors, within the limits and the disk.
    fn check_data(&self, sector: u64, len: u64) -> Result<u64, (Reason, String)> {
        if len > MAX_REQUEST_BYTES {
            return Err((Reason::TooLarge, format!("{len} bytes of data")));
        }
        if len % SECTOR != 0 {
            return Err((Reason::BadLength, format!("{len} bytes of data")));
        }
        self.range(sector, len)
    }
}

/// Takes every available chain off `queue`, serves it and puts it in the used ring. Returns
/// whether the guest is to be interrupted.
fn process_queue(queue: &mut Queue, mem: &GuestMemoryMmap, disk: &mut Disk) -> bool {
    let mut used_any = false;
    loop {
        // No kicks while we are draining anyway.
        let _ = queue.disable_notification(mem);
        let mut popped = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            popped = true;
            let head = chain.head_index();
            let len = disk.handle(mem, chain);
            if let Err(e) = queue.add_used(mem, head, len) {
                disk.counters.fail(&disk.name, Reason::BadAddress, &e);
            }
            used_any = true;
        }
        // Re-enabling tells whether more arrived meanwhile; a pass that found nothing ends the
        // loop even then, so a bogus available index cannot spin us.
        match queue.enable_notification(mem) {
            Ok(true) if popped => continue,
            _ => break,
        }
    }
    used_any && queue.needs_notification(mem).unwrap_or(true)
}

/// The worker: serves the queue on each kick until `stop` is signalled, then hands the image back.
struct Worker {
    queue: Queue,
    mem: GuestMemoryMmap,
    disk: Disk,
    kick: EventFd,
    call: EventFd,
    stop: EventFd,
}

impl Worker {
    fn run(mut self) -> Disk {
        loop {
            match wait_kick(&self.kick, &self.stop) {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    log::error!("virtio-blk {}: poll failed, stopping: {e}", self.disk.name);
                    break;
                }
            }
            if process_queue(&mut self.queue, &self.mem, &mut self.disk) {
                if let Err(e) = self.call.write(1) {
                    log::warn!(
                        "virtio-blk {}: cannot interrupt the guest: {e}",
                        self.disk.name
                    );
                }
            }
        }
        self.disk
    }
}

impl From<QueueError> for BlkError {
    fn from(e: QueueError) -> Self {
        match e {
            QueueError::Queue(e) => BlkError::Queue(e),
            QueueError::OutsideMemory => BlkError::BadQueue,
        }
    }
}

/// Errors creating or starting the device.
#[derive(Debug, thiserror::Error)]
pub enum BlkError {
    /// The guest's queue addresses do not fit guest memory (or are misaligned).
    #[error("the request queue's rings are not in guest memory (or misaligned)")]
    BadQueue,
    /// The queue parameters were refused by virtio-queue.
    #[error("queue setup: {0:?}")]
    Queue(virtio_queue::Error),
    /// An eventfd could not be created or duplicated.
    #[error("eventfd: {0}")]
    EventFd(#[source] std::io::Error),
    /// The worker thread could not be started.
    #[error("cannot start the worker thread: {0}")]
    Thread(#[source] std::io::Error),
    /// A previous worker died (a bug) and took the image with it.
    #[error("the disk was lost when its worker thread panicked")]
    Lost,
    /// The device has exactly one queue.
    #[error("expected 1 queue, got {0}")]
    QueueCount(usize),
}

/// A running worker and what stops it.
struct Running {
    thread: JoinHandle<Disk>,
    stop: EventFd,
}

/// The virtio-blk device, to plug in with `Vmm::add_virtio_device`.
pub struct VirtioBlk {
    disk: Option<Disk>,
    running: Option<Running>,
    mem: GuestMemoryMmap,
    config: [u8; CONFIG_LEN],
    features: u64,
    max_sizes: [u16; 1],
    counters: Arc<Counters>,
    name: String,
}

impl VirtioBlk {
    /// A device for `image`; `name` identifies it in the log, `serial` is what GET_ID returns
    /// (cut to 20 bytes); `mem` is the guest's memory.
    pub fn new(
        image: Box<dyn DiskImage>,
        readonly: bool,
        name: &str,
        serial: &str,
        mem: GuestMemoryMmap,
    ) -> VirtioBlk {
        let capacity = image.len() / SECTOR * SECTOR;
        if image.len() % SECTOR != 0 {
            log::warn!(
                "virtio-blk {name}: {} bytes is not whole sectors; the last {} are not visible",
                image.len(),
                image.len() % SECTOR
            );
        }
        let mut id = [0u8; ID_BYTES];
        let n = serial.len().min(ID_BYTES);
        id[..n].copy_from_slice(&serial.as_bytes()[..n]);
        let counters = Arc::new(Counters::default());
        let mut features = feature::VERSION_1
            | feature::FLUSH
            | feature::SEG_MAX
            | feature::SIZE_MAX
            | feature::BLK_SIZE
            | feature::DISCARD
            | feature::WRITE_ZEROES;
        if readonly {
            features |= feature::RO;
        }
        VirtioBlk {
            disk: Some(Disk {
                name: name.to_string(),
                image,
                capacity,
                readonly,
                serial: id,
                counters: counters.clone(),
            }),
            running: None,
            mem,
            config: config_space(capacity / SECTOR),
            features,
            max_sizes: [QUEUE_MAX_SIZE],
            counters,
            name: name.to_string(),
        }
    }

    /// Serves, on this thread, every chain the guest made available on a queue of `size` at
    /// these guest addresses, as the worker does after a kick; returns whether the guest would
    /// be interrupted. For fuzz targets, whose input is the guest's memory: a queue the
    /// transport would refuse is an error, as at activation.
    #[doc(hidden)]
    pub fn serve_once(
        &mut self,
        size: u16,
        desc_table: GuestAddress,
        avail_ring: GuestAddress,
        used_ring: GuestAddress,
    ) -> Result<bool, BlkError> {
        let mut queue = ready_queue(
            &self.mem,
            QUEUE_MAX_SIZE,
            size,
            [desc_table, avail_ring, used_ring],
        )?;
        let disk = self.disk.as_mut().ok_or(BlkError::Lost)?;
        Ok(process_queue(&mut queue, &self.mem, disk))
    }

    /// The device's statistics.
    pub fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }

    fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            let _ = r.stop.write(1);
            match r.thread.join() {
                Ok(disk) => self.disk = Some(disk),
                Err(_) => log::error!("virtio-blk {}: the worker thread panicked", self.name),
            }
        }
    }

    fn start(&mut self, queues: &[QueueSetup]) -> Result<(), BlkError> {
        self.stop();
        let [setup] = queues else {
            return Err(BlkError::QueueCount(queues.len()));
        };
        let queue = ready_queue(&self.mem, QUEUE_MAX_SIZE, setup.size, setup.rings())?;
        let kick = setup.kick.try_clone().map_err(BlkError::EventFd)?;
        let call = setup.call.try_clone().map_err(BlkError::EventFd)?;
        let stop = EventFd::new(EFD_NONBLOCK).map_err(BlkError::EventFd)?;
        let disk = self.disk.take().ok_or(BlkError::Lost)?;
        let worker = Worker {
            queue,
            mem: self.mem.clone(),
            disk,
            kick,
            call,
            stop: stop.try_clone().map_err(BlkError::EventFd)?,
        };
        let thread = std::thread::Builder::new()
            .name(format!("virtio-blk {}", self.name))
            .spawn(move || worker.run())
            .map_err(BlkError::Thread)?;
        self.running = Some(Running { thread, stop });
        Ok(())
    }
}

/// `struct virtio_blk_config` for `sectors` sectors.
fn config_space(sectors: u64) -> [u8; CONFIG_LEN] {
    let mut c = [0u8; CONFIG_LEN];
    let mut put = |off: usize, bytes: &[u8]| c[off..off + bytes.len()].copy_from_slice(bytes);
    put(0, &sectors.to_le_bytes());
    put(8, &SIZE_MAX.to_le_bytes());
    put(12, &SEG_MAX.to_le_bytes());
    // 16: geometry (not offered)
    put(20, &(SECTOR as u32).to_le_bytes());
    // 24: topology (not offered), 32: writeback, 34: num_queues (not offered)
    put(36, &MAX_RANGE_SECTORS.to_le_bytes());
    put(40, &MAX_RANGE_SEGS.to_le_bytes());
    put(44, &DISCARD_ALIGNMENT_SECTORS.to_le_bytes());
    put(48, &MAX_RANGE_SECTORS.to_le_bytes());
    put(52, &MAX_RANGE_SEGS.to_le_bytes());
    // write_zeroes_may_unmap: a zeroed range may become a hole.
    put(56, &[1]);
    c
}

impl VirtioDevice for VirtioBlk {
    fn device_type(&self) -> u16 {
        DEVICE_TYPE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.max_sizes
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i as u64)
                .and_then(|o| usize::try_from(o).ok())
                .and_then(|o| self.config.get(o).copied())
                .unwrap_or(0);
        }
    }

    fn activate(&mut self, _acked: u64, queues: &[QueueSetup]) -> Result<(), ActivateError> {
        Ok(self.start(queues)?)
    }

    fn reset(&mut self) {
        self.stop();
    }
}

impl Drop for VirtioBlk {
    fn drop(&mut self) {
        self.stop();
        log::info!("virtio-blk {}: {}", self.name, self.counters.summary());
    }
}

#[cfg(test)]
mod tests;
