//! An AF_XDP socket and its UMEM: the memory frames are received into and sent from, and the
//! four rings through which the kernel and we hand its chunks to each other.
//!
//! - **fill** (ours to produce): chunks the kernel may receive into;
//! - **rx** (the kernel's): chunks holding received frames, which we copy out and put back on
//!   the fill ring at once;
//! - **tx** (ours): chunks holding frames to send; `sendto` makes the kernel take them (in
//!   copy mode it builds an skb for each and hands it straight to the driver, past the
//!   qdisc);
//! - **completion** (the kernel's): sent chunks, free again.
//!
//! The UMEM is split once: the first `rx` chunks circulate between fill and rx, the others
//! between our free list, tx and completion.
//!
//! Two sockets share the UMEM, both bound to the same queue (`XDP_SHARED_UMEM`): the first
//! owns fill, rx and completion and is the one the XDP program redirects to; the second has
//! only the tx ring. Each frame the kernel sends is an skb owned by the sending socket, and
//! freeing it (`sock_wfree`) takes the lock of that socket's wait queue whenever anything
//! sleeps on it, as the worker's epoll does on the receiving socket. The sending socket is
//! on no epoll while the host takes frames (the worker asks for its writability only while
//! frames wait), so frames sent cost no wake-up; `raw`'s `PacketSender` is the same idea.
//!
//! Each ring index is a free-running `u32` shared with the kernel; we read the other side's
//! with acquire and publish ours with release ordering, as the kernel's `xsk_queue.h` does on
//! its side.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use super::gather::Frames;
use super::sys::{self, cvt};

/// Headroom the kernel keeps in front of a received frame in every chunk
/// (`XDP_PACKET_HEADROOM`), so a frame may use the rest.
pub const XDP_HEADROOM: u32 = 256;
/// The shortest frame we hand the kernel to send: an Ethernet header.
const ETH_HLEN: usize = 14;

/// How the UMEM is cut: the chunk size and how many chunks go to each direction (powers of
/// two: they are also the rings' sizes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub chunk: u32,
    pub rx: u32,
    pub tx: u32,
}

impl Geometry {
    /// The largest frame a chunk holds.
    pub fn frame_room(&self) -> usize {
        (self.chunk - XDP_HEADROOM) as usize
    }

    /// Bytes of UMEM.
    pub fn umem_len(&self) -> usize {
        self.chunk as usize * (self.rx + self.tx) as usize
    }
}

/// One mapping (the UMEM, or a ring the kernel shares), unmapped when dropped.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: a Mapping is memory owned by the value that holds it (the UMEM, a ring's pages);
// moving that value to another thread moves the ownership with it. Nothing in it is tied to
// the thread that made it.
unsafe impl Send for Mapping {}

impl Mapping {
    fn new(len: usize, fd: Option<(RawFd, libc::off_t)>) -> io::Result<Mapping> {
        let (flags, fd, off) = match fd {
            None => (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0),
            Some((fd, off)) => (libc::MAP_SHARED, fd, off),
        };
        // SAFETY: a fresh mapping at an address of the kernel's choosing; nothing else is
        // touched. The result is checked before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags | libc::MAP_POPULATE,
                fd,
                off,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast()).ok_or_else(|| io::Error::other("mmap returned 0"))?;
        Ok(Mapping { ptr, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping was made by `Mapping::new` with this length and nothing refers
        // to it past its owner's life.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// One ring: its two indices, its flags word and its entries, in a mapping of the socket.
struct Ring<T> {
    map: Mapping,
    producer: usize,
    consumer: usize,
    flags: usize,
    desc: usize,
    mask: u32,
    _entries: std::marker::PhantomData<T>,
}

impl<T: Copy> Ring<T> {
    /// Maps the ring of `entries` entries the kernel laid out at `off`, at page offset
    /// `pgoff` of the socket. The offsets are checked against the mapping, so a kernel that
    /// laid it out otherwise is an error, not a stray access.
    fn map(
        fd: RawFd,
        off: &libc::xdp_ring_offset,
        entries: u32,
        pgoff: libc::off_t,
    ) -> io::Result<Ring<T>> {
        let desc = usize::try_from(off.desc).map_err(|_| bad_layout())?;
        let len = desc + entries as usize * std::mem::size_of::<T>();
        let word = |o: u64| -> io::Result<usize> {
            let o = usize::try_from(o).map_err(|_| bad_layout())?;
            if o % 4 != 0 || o + 4 > desc {
                return Err(bad_layout());
            }
            Ok(o)
        };
        if desc % std::mem::align_of::<T>() != 0 {
            return Err(bad_layout());
        }
        let ring = Ring {
            producer: word(off.producer)?,
            consumer: word(off.consumer)?,
            flags: word(off.flags)?,
            desc,
            mask: entries - 1,
            map: Mapping::new(len, Some((fd, pgoff)))?,
            _entries: std::marker::PhantomData,
        };
        Ok(ring)
    }

    fn word(&self, at: usize) -> &AtomicU32 {
        // SAFETY: `at` is a 4-aligned offset of a u32 inside the mapping (checked in `map`),
        // which lives as long as `self`; the kernel writes it concurrently, hence atomic.
        unsafe { &*self.map.ptr.as_ptr().add(at).cast::<AtomicU32>() }
    }

    fn producer(&self) -> &AtomicU32 {
        self.word(self.producer)
    }

    fn consumer(&self) -> &AtomicU32 {
        self.word(self.consumer)
    }

    /// Whether the kernel asks to be woken (`XDP_RING_NEED_WAKEUP`).
    fn needs_wakeup(&self) -> bool {
        self.word(self.flags).load(Ordering::Relaxed) & libc::XDP_RING_NEED_WAKEUP != 0
    }

    fn entry(&self, index: u32) -> *mut T {
        let i = (index & self.mask) as usize;
        // SAFETY: `i` < entries, and the entries follow `desc` inside the mapping (its length
        // was computed from them in `map`).
        unsafe {
            self.map
                .ptr
                .as_ptr()
                .add(self.desc + i * std::mem::size_of::<T>())
                .cast::<T>()
        }
    }

    /// Entry `index`. Only an entry the other side has published (a consumer reads below the
    /// producer index it loaded with acquire ordering).
    fn read(&self, index: u32) -> T {
        // SAFETY: an aligned entry inside the mapping (`entry`); volatile because the kernel
        // owns the ring's memory too.
        unsafe { std::ptr::read_volatile(self.entry(index)) }
    }

    /// Writes entry `index`, which we own until we publish our producer index past it.
    fn write(&self, index: u32, value: T) {
        // SAFETY: as in `read`; between our consumer's and our producer's index the entry is
        // ours, the kernel does not read it until we publish.
        unsafe { std::ptr::write_volatile(self.entry(index), value) }
    }
}

fn bad_layout() -> io::Error {
    io::Error::other("the kernel's AF_XDP ring layout does not fit its mapping")
}

/// `setsockopt` of a plain value.
fn setsockopt<T>(fd: RawFd, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` is a live value of the option's type and its exact size is passed.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_XDP,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// `getsockopt` into `value`; returns how many bytes the kernel wrote (fewer than `T`'s for
/// an older layout).
fn getsockopt<T>(fd: RawFd, name: libc::c_int, value: &mut T) -> io::Result<usize> {
    let mut len = std::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: `value` and `len` are live locals; the kernel writes at most `len` bytes.
    cvt(unsafe { libc::getsockopt(fd, libc::SOL_XDP, name, (value as *mut T).cast(), &mut len) })?;
    Ok(len as usize)
}

/// `XDP_MAX_TX_SKB_BUDGET` (Linux 6.17; not yet in the libc crate): how many frames one
/// `sendto` hands the driver in copy mode, between 32 (the default) and the tx ring's size.
const XDP_MAX_TX_SKB_BUDGET: libc::c_int = 9;
/// The copy-mode budget per `sendto` of a kernel that has no say in it.
const DEFAULT_TX_BUDGET: u32 = 32;

/// Lets one `sendto` on `fd` send the whole tx ring (`ring` entries) where the kernel allows
/// it, so a round of frames costs one system call, not one per 32 frames; returns the budget
/// in force. An older kernel (`ENOPROTOOPT`) keeps 32, as does a ring shorter than that.
fn tx_budget(fd: RawFd, ring: u32) -> u32 {
    if ring <= DEFAULT_TX_BUDGET {
        return DEFAULT_TX_BUDGET;
    }
    match setsockopt(fd, XDP_MAX_TX_SKB_BUDGET, &ring) {
        Ok(()) => ring,
        Err(e) => {
            log::debug!("xdp: sending {DEFAULT_TX_BUDGET} frames per sendto: {e}");
            DEFAULT_TX_BUDGET
        }
    }
}

/// Where the kernel put each ring in the socket's mappings (`XDP_MMAP_OFFSETS`).
fn mmap_offsets(fd: RawFd) -> io::Result<libc::xdp_mmap_offsets> {
    // SAFETY: xdp_mmap_offsets is integers only, for which all-zero is a valid value.
    let mut off: libc::xdp_mmap_offsets = unsafe { std::mem::zeroed() };
    let len = getsockopt(fd, libc::XDP_MMAP_OFFSETS, &mut off)?;
    if len < std::mem::size_of::<libc::xdp_mmap_offsets>() {
        // Kernels before 5.4 lack the flags word (and need_wakeup with it).
        return Err(io::Error::other(
            "this kernel's AF_XDP is too old (no ring flags; Linux 5.4 or later)",
        ));
    }
    Ok(off)
}

/// One `bind` of the socket to `addr`.
fn bind_once(fd: RawFd, addr: &libc::sockaddr_xdp) -> io::Result<()> {
    // SAFETY: `addr` is a live sockaddr_xdp and its exact size is passed.
    cvt(unsafe {
        libc::bind(
            fd,
            (addr as *const libc::sockaddr_xdp).cast(),
            std::mem::size_of::<libc::sockaddr_xdp>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// How long a bind waits for a queue that a socket closed just before still holds.
const QUEUE_RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Binds the socket to its queue. A socket closed moments ago (a swap or a reboot onto the
/// same interface, a backend restarted) keeps the queue until the kernel's deferred work has
/// freed the XSKMAP that held it and then its UMEM pool, so `EBUSY` is retried for a while
/// before it means the queue is someone else's. (Emptying the map's slot at close would
/// shorten the wait, but takes a `bpf` call that a VMM that dropped its privileges may no
/// longer make.)
fn bind(fd: RawFd, addr: &libc::sockaddr_xdp, queue: u32) -> io::Result<()> {
    let deadline = std::time::Instant::now() + QUEUE_RELEASE_WAIT;
    loop {
        match bind_once(fd, addr) {
            Ok(_) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                if std::time::Instant::now() >= deadline {
                    return Err(io::Error::new(
                        io::ErrorKind::AddrInUse,
                        format!(
                            "its queue {queue} already has an AF_XDP socket (another \
                             transport=xdp device, or another AF_XDP program)"
                        ),
                    ));
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => return Err(e),
        }
    }
}

/// What the kernel counted on the socket (`XDP_STATISTICS`, cumulative).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XskStats {
    /// Frames dropped on receive: no free chunk on the fill ring, too big for a chunk.
    pub rx_dropped: u64,
    /// Frames dropped because the rx ring was full.
    pub rx_ring_full: u64,
    /// Descriptors on the tx ring the kernel refused.
    pub tx_invalid: u64,
}

/// An AF_XDP socket bound to one queue of an interface, with its UMEM and rings.
pub struct Xsk {
    // Declaration order is drop order: the rings' mappings go, then the socket (the kernel
    // unpins the UMEM as it closes), then our mapping of the UMEM.
    rx: Ring<libc::xdp_desc>,
    tx: Ring<libc::xdp_desc>,
    fill: Ring<u64>,
    completion: Ring<u64>,
    /// The sending socket: the tx ring's, sharing the receiving socket's UMEM and rings.
    tx_fd: OwnedFd,
    /// The receiving socket: fill, rx and completion; the UMEM's registration.
    fd: OwnedFd,
    umem: Mapping,
    geometry: Geometry,
    /// Chunks of the tx half that are neither on the tx ring nor in the kernel's hands.
    free: Vec<u64>,
    /// Our producer index on the tx ring, and the first index the kernel may not have taken.
    tx_head: u32,
    /// Frames the kernel sends per `sendto` in copy mode ([`tx_budget`]).
    budget: u32,
    /// Whether the interface was down at the last kick (`ENETDOWN`: the frames on the ring
    /// stay there, to leave once it is up, as AF_XDP cannot take them back): until a kick
    /// succeeds again, frames are dropped and counted rather than queued behind them.
    down: bool,
}

impl Xsk {
    /// Makes the receiving socket (registers the UMEM, maps fill, rx and completion, fills
    /// the fill ring) and binds it to `ifindex`'s receive queue `queue` (the kernel picks
    /// zero-copy where the driver has it, copying otherwise); then the sending socket, bound
    /// to the same queue on the same UMEM.
    pub fn open(ifindex: u32, queue: u32, geometry: Geometry) -> io::Result<Xsk> {
        let Geometry { chunk, rx, tx } = geometry;
        if !(chunk.is_power_of_two() && rx.is_power_of_two() && tx.is_power_of_two()) {
            return Err(io::Error::other(format!(
                "AF_XDP sizes must be powers of two (chunk {chunk}, rings {rx} and {tx})"
            )));
        }
        let fd = sys::socket(libc::AF_XDP, libc::SOCK_RAW, 0)?;
        let umem = Mapping::new(geometry.umem_len(), None)?;
        let reg = libc::xdp_umem_reg {
            addr: umem.ptr.as_ptr() as u64,
            len: umem.len as u64,
            chunk_size: chunk,
            headroom: 0,
            flags: 0,
            tx_metadata_len: 0,
        };
        let raw = fd.as_raw_fd();
        setsockopt(raw, libc::XDP_UMEM_REG, &reg)?;
        setsockopt(raw, libc::XDP_UMEM_FILL_RING, &rx)?;
        setsockopt(raw, libc::XDP_UMEM_COMPLETION_RING, &tx)?;
        setsockopt(raw, libc::XDP_RX_RING, &rx)?;
        let off = mmap_offsets(raw)?;
        let rx_ring = Ring::map(raw, &off.rx, rx, libc::XDP_PGOFF_RX_RING)?;
        let fill = Ring::map(
            raw,
            &off.fr,
            rx,
            libc::XDP_UMEM_PGOFF_FILL_RING as libc::off_t,
        )?;
        let completion = Ring::map(
            raw,
            &off.cr,
            tx,
            libc::XDP_UMEM_PGOFF_COMPLETION_RING as libc::off_t,
        )?;
        let prod = fill.producer().load(Ordering::Relaxed);
        for i in 0..rx {
            fill.write(prod.wrapping_add(i), u64::from(i) * u64::from(chunk));
        }
        fill.producer()
            .store(prod.wrapping_add(rx), Ordering::Release);
        let free = (rx..rx + tx)
            .rev()
            .map(|i| u64::from(i) * u64::from(chunk))
            .collect();
        let addr = libc::sockaddr_xdp {
            sxdp_family: libc::AF_XDP as u16,
            sxdp_flags: libc::XDP_USE_NEED_WAKEUP,
            sxdp_ifindex: ifindex,
            sxdp_queue_id: queue,
            sxdp_shared_umem_fd: 0,
        };
        bind(raw, &addr, queue)?;

        // The sending socket: a tx ring only, no UMEM of its own (a socket that shares one on
        // the same queue uses its owner's fill and completion rings, and may not name flags).
        let tx_fd = sys::socket(libc::AF_XDP, libc::SOCK_RAW, 0)?;
        let tx_raw = tx_fd.as_raw_fd();
        setsockopt(tx_raw, libc::XDP_TX_RING, &tx)?;
        let budget = tx_budget(tx_raw, tx);
        let tx_off = mmap_offsets(tx_raw)?;
        let tx_ring = Ring::map(tx_raw, &tx_off.tx, tx, libc::XDP_PGOFF_TX_RING)?;
        let shared = libc::sockaddr_xdp {
            sxdp_flags: libc::XDP_SHARED_UMEM,
            sxdp_shared_umem_fd: raw as u32,
            ..addr
        };
        bind_once(tx_raw, &shared).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("binding the sending socket to the receiving one's UMEM: {e}"),
            )
        })?;
        let tx_head = tx_ring.producer().load(Ordering::Relaxed);
        Ok(Xsk {
            rx: rx_ring,
            tx: tx_ring,
            fill,
            completion,
            tx_fd,
            fd,
            umem,
            geometry,
            free,
            tx_head,
            budget,
            down: false,
        })
    }

    /// The receiving socket: the one the XDP program redirects to and the worker waits on.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// The sending socket: writable again when the kernel has taken frames off its ring.
    pub fn tx_fd(&self) -> RawFd {
        self.tx_fd.as_raw_fd()
    }

    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// Whether the driver receives and sends straight from the UMEM (`XDP_OPTIONS`), rather
    /// than the kernel copying between it and skbs.
    pub fn zero_copy(&self) -> bool {
        let mut options = libc::xdp_options { flags: 0 };
        getsockopt(self.fd(), libc::XDP_OPTIONS, &mut options)
            .is_ok_and(|_| options.flags & libc::XDP_OPTIONS_ZEROCOPY != 0)
    }

    /// The bytes of chunk memory at `addr`, `len` long, or `None` if they are not all in
    /// the UMEM (a descriptor from the kernel is trusted no further than that).
    fn chunk_bytes(&self, addr: u64, len: usize) -> Option<&[u8]> {
        let start = usize::try_from(addr).ok()?;
        let end = start.checked_add(len)?;
        if end > self.umem.len {
            return None;
        }
        // SAFETY: [start, end) lies inside the UMEM mapping, which lives as long as `self`;
        // the chunk is ours (taken off the rx ring, not yet back on the fill ring).
        Some(unsafe { std::slice::from_raw_parts(self.umem.ptr.as_ptr().add(start), len) })
    }

    /// The `len` bytes of the tx chunk at `addr`, or `None` if they are not inside the UMEM's
    /// tx half (an address from the completion ring is trusted no further than that).
    fn chunk_mut(&mut self, addr: u64, len: usize) -> Option<&mut [u8]> {
        let tx_start = u64::from(self.geometry.rx) * u64::from(self.geometry.chunk);
        let start = usize::try_from(addr).ok()?;
        let end = start.checked_add(len)?;
        if addr < tx_start || end > self.umem.len {
            return None;
        }
        // SAFETY: [start, end) lies inside the UMEM mapping, which lives as long as `self`;
        // the chunk is ours (off the free list) until the tx ring carries it, and `&mut self`
        // keeps the slice to this call.
        Some(unsafe { std::slice::from_raw_parts_mut(self.umem.ptr.as_ptr().add(start), len) })
    }

    /// Hands up to `max` received frames to `each` (a slice of the UMEM, valid during the
    /// call), then gives their chunks back to the kernel. Returns how many were taken off
    /// the ring.
    pub fn receive(&mut self, max: usize, mut each: impl FnMut(&[u8])) -> usize {
        let cons = self.rx.consumer().load(Ordering::Relaxed);
        let avail = self
            .rx
            .producer()
            .load(Ordering::Acquire)
            .wrapping_sub(cons);
        let n = (avail as usize).min(max) as u32;
        if n == 0 {
            return 0;
        }
        let fill_prod = self.fill.producer().load(Ordering::Relaxed);
        let chunk_mask = !(u64::from(self.geometry.chunk) - 1);
        for i in 0..n {
            let d = self.rx.read(cons.wrapping_add(i));
            if let Some(frame) = self.chunk_bytes(d.addr, d.len as usize) {
                each(frame);
            }
            // The chunk goes back whole; there are as many fill slots as rx chunks, so the
            // fill ring has room for every chunk the rx ring held.
            self.fill
                .write(fill_prod.wrapping_add(i), d.addr & chunk_mask);
        }
        self.rx
            .consumer()
            .store(cons.wrapping_add(n), Ordering::Release);
        self.fill
            .producer()
            .store(fill_prod.wrapping_add(n), Ordering::Release);
        if self.fill.needs_wakeup() {
            // Zero-copy drivers sleep on an empty fill ring until told; a copying socket
            // never sets the flag.
            // SAFETY: a zero-length receive with no buffer and no address.
            unsafe {
                libc::recvfrom(
                    self.fd(),
                    std::ptr::null_mut(),
                    0,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                )
            };
        }
        n as usize
    }

    /// Takes back the chunks the kernel finished sending.
    fn reclaim(&mut self) {
        let cons = self.completion.consumer().load(Ordering::Relaxed);
        let n = self
            .completion
            .producer()
            .load(Ordering::Acquire)
            .wrapping_sub(cons);
        for i in 0..n {
            self.free.push(self.completion.read(cons.wrapping_add(i)));
        }
        self.completion
            .consumer()
            .store(cons.wrapping_add(n), Ordering::Release);
    }

    /// Copies frames from `start` on into free chunks and puts them on the tx ring, then
    /// makes the kernel send them. Returns how many frames were taken: placed, or dropped
    /// and counted in `dropped` (shorter than an Ethernet header, longer than a chunk, or
    /// the interface down). Fewer than offered means no chunk was free: the caller waits for
    /// the socket to be writable.
    pub fn send<F: Frames + ?Sized>(&mut self, frames: &F, dropped: &mut u64) -> io::Result<usize> {
        self.reclaim();
        if self.down {
            // Queued frames would go out stale when the link comes back: drop instead, as a
            // packet socket does, and see whether it is up again.
            self.kick(dropped)?;
            if self.down {
                *dropped += frames.count() as u64;
                return Ok(frames.count());
            }
        }
        let room = self.geometry.frame_room();
        let mut taken = 0;
        let mut placed = 0u32;
        let mut one = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        while taken < frames.count() {
            let (iov, n) = frames.iov(taken, &mut one);
            // SAFETY: `Frames::iov` returns `n` live iovecs for frame `taken`, kept alive by
            // `frames` and `one` for this iteration.
            let pieces = unsafe { std::slice::from_raw_parts(iov, n) };
            let len: usize = pieces.iter().map(|p| p.iov_len).sum();
            if !(ETH_HLEN..=room).contains(&len) {
                *dropped += 1;
                taken += 1;
                continue;
            }
            let Some(addr) = self.free.pop() else { break };
            let Some(dst) = self.chunk_mut(addr, len) else {
                // Not a chunk of ours: the completion ring handed back something we never
                // put on the tx ring. It is not used again.
                continue;
            };
            let mut at = 0;
            for p in pieces {
                // SAFETY: each piece is `iov_len` readable bytes (the `Frames` contract).
                let src = unsafe { std::slice::from_raw_parts(p.iov_base as *const u8, p.iov_len) };
                dst[at..at + src.len()].copy_from_slice(src);
                at += src.len();
            }
            self.tx.write(
                self.tx_head.wrapping_add(placed),
                libc::xdp_desc {
                    addr,
                    len: len as u32,
                    options: 0,
                },
            );
            placed += 1;
            taken += 1;
        }
        if placed > 0 {
            self.tx_head = self.tx_head.wrapping_add(placed);
            self.tx.producer().store(self.tx_head, Ordering::Release);
        }
        self.kick(dropped)?;
        Ok(taken)
    }

    /// Makes the kernel take what is on the tx ring: in copy mode each `sendto` sends at
    /// most the socket's budget of frames (the whole ring where the kernel lets us say so,
    /// 32 otherwise) and says `EAGAIN` while more wait.
    fn kick(&mut self, dropped: &mut u64) -> io::Result<()> {
        let attempts = 2 * self.geometry.tx.div_ceil(self.budget) + 4;
        for _ in 0..attempts {
            let pending = self.tx_head != self.tx.consumer().load(Ordering::Acquire);
            // Down, a kick with nothing pending still asks whether it is up again.
            if !pending && !self.down {
                return Ok(());
            }
            // SAFETY: a zero-length send with no buffer and no address.
            let ret = unsafe {
                libc::sendto(
                    self.tx_fd(),
                    std::ptr::null(),
                    0,
                    libc::MSG_DONTWAIT,
                    std::ptr::null(),
                    0,
                )
            };
            if ret >= 0 {
                self.down = false;
                if !pending {
                    return Ok(());
                }
                continue;
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EAGAIN | libc::EINTR | libc::ENOBUFS) => {}
                // The driver took a frame and dropped it (its queue is stopped, the peer
                // is gone): the chunk comes back through the completion ring.
                Some(libc::EBUSY) => *dropped += 1,
                Some(libc::ENETDOWN | libc::ENXIO) => {
                    self.down = true;
                    return Ok(());
                }
                _ => return Err(e),
            }
        }
        Ok(())
    }

    /// The kernel's counters: receive drops from the receiving socket, refused descriptors
    /// from the sending one (each socket counts what passes through its own rings).
    pub fn stats(&self) -> io::Result<XskStats> {
        let read = |fd| -> io::Result<libc::xdp_statistics> {
            // SAFETY: xdp_statistics is integers only, for which all-zero is a valid value.
            let mut s: libc::xdp_statistics = unsafe { std::mem::zeroed() };
            getsockopt(fd, libc::XDP_STATISTICS, &mut s)?;
            Ok(s)
        };
        let (rx, tx) = (read(self.fd())?, read(self.tx_fd())?);
        Ok(XskStats {
            rx_dropped: rx.rx_dropped,
            rx_ring_full: rx.rx_ring_full,
            tx_invalid: tx.tx_invalid_descs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The running kernel's (major, minor), from `/proc/sys/kernel/osrelease`.
    fn kernel() -> Option<(u32, u32)> {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
        let mut parts = release.trim().split(['.', '-']);
        Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
    }

    /// A kernel with `XDP_MAX_TX_SKB_BUDGET` (6.17 on) takes the whole ring as the budget; a
    /// ring no longer than the default keeps the default without asking.
    #[test]
    fn the_send_budget_is_the_ring_where_the_kernel_takes_it() {
        let fd = match sys::socket(libc::AF_XDP, libc::SOCK_RAW, 0) {
            Ok(fd) => fd,
            Err(e) => {
                eprintln!("skipped: no AF_XDP socket here ({e}; needs CAP_NET_RAW)");
                return;
            }
        };
        let raw = fd.as_raw_fd();
        setsockopt(raw, libc::XDP_TX_RING, &256u32).expect("tx ring");
        assert_eq!(tx_budget(raw, 16), DEFAULT_TX_BUDGET);
        let budget = tx_budget(raw, 256);
        match kernel() {
            Some(v) if v >= (6, 17) => assert_eq!(budget, 256, "kernel {v:?}"),
            _ => assert!(budget == 256 || budget == DEFAULT_TX_BUDGET),
        }
    }
}
