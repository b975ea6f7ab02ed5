//! Thin, safe wrappers over the system calls several transports share: errno conversion,
//! sockets and socket options, packet-socket binding and filters, `recvmmsg`/`sendmmsg`
//! headers ([`Mmsg`]), descriptor probes and drop counters. Each `unsafe` block carries its
//! `// SAFETY:` argument.
//!
//! Not everything unsafe is here: code that builds or reads one transport's own C structures
//! stays beside that transport, with its `// SAFETY:` arguments, where a reader of the
//! transport needs it:
//! - `ipsock`: `sockaddr_in`/`sockaddr_in6` in a `sockaddr_storage`, `bind`/`connect` of them;
//! - `tapdev`: opening `/dev/net/tun` and its `TUNSET*` ioctls;
//! - `pcap`: libpcap loaded with `dlopen` and called through its function pointers;
//! - `switch_port`, `daemon`, `vde`: `sockaddr_un` and the switches' sockets, `chown`/`chmod`
//!   of vde's data socket, `getgrnam_r`;
//! - `tunnel`: the `mmsghdr` vectors of the tunnels' multi-packet I/O;
//! - `udp`: the multicast membership option; `fd`: adopting the inherited descriptor;
//! - `user`: libslirp's callbacks and the C structures it hands over.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use super::gather::Frames;
use super::PacketBatch;

/// Converts a -1 return into the errno.
/// A connected `SOCK_SEQPACKET` pair (close-on-exec): what `transport=fd` wants at one end,
/// for whoever plays its peer at the other (an embedding program's own switch, a test).
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two descriptors into the live array.
    cvt(unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    })?;
    // SAFETY: both descriptors are fresh and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

pub fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `epoll_ctl(2)`: `op` on `fd` in `epoll`, asking for `events`, reported with `data`.
pub fn epoll_ctl(
    epoll: RawFd,
    op: libc::c_int,
    fd: RawFd,
    events: u32,
    data: u64,
) -> io::Result<()> {
    let mut event = libc::epoll_event { events, u64: data };
    // SAFETY: `event` is a live local for the call's duration (the kernel copies it, and
    // ignores it for EPOLL_CTL_DEL); a descriptor that is not an epoll, or not open, only
    // makes the call fail.
    cvt(unsafe { libc::epoll_ctl(epoll, op, fd, &mut event) })?;
    Ok(())
}

/// Converts a -1 `ssize_t` return into the errno.
pub fn cvt_size(ret: libc::ssize_t) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// Whether an error means "try again later" on a non-blocking descriptor.
pub fn would_block(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EINTR))
}

/// An interface name as a NUL-terminated `IFNAMSIZ` array (the parser limits names to 15
/// bytes; longer ones are refused here too).
pub fn ifname_bytes(name: &str) -> io::Result<[libc::c_char; libc::IFNAMSIZ]> {
    let mut out = [0 as libc::c_char; libc::IFNAMSIZ];
    if name.len() >= libc::IFNAMSIZ || name.bytes().any(|b| b == 0) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    for (o, b) in out.iter_mut().zip(name.bytes()) {
        *o = b as libc::c_char;
    }
    Ok(out)
}

/// The index of interface `name` in the current network namespace.
pub fn ifindex(name: &str) -> io::Result<i32> {
    let c = std::ffi::CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(idx as i32)
    }
}

/// Sets `O_NONBLOCK` on `fd`.
pub fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL on a descriptor we were given; no memory is passed.
    let flags = cvt(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    // SAFETY: as above.
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) })?;
    Ok(())
}

/// `setsockopt` of an `int` option.
pub fn setsockopt_int(fd: RawFd, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: the option value is a live local int and its exact size is passed.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

/// `getsockopt` of an `int` option.
pub fn getsockopt_int(fd: RawFd, level: i32, name: i32) -> io::Result<i32> {
    let mut value: i32 = 0;
    let mut len = std::mem::size_of::<i32>() as libc::socklen_t;
    // SAFETY: value and len are live locals; the kernel writes at most `len` bytes.
    cvt(unsafe { libc::getsockopt(fd, level, name, (&mut value as *mut i32).cast(), &mut len) })?;
    Ok(value)
}

/// A new socket, close-on-exec and non-blocking.
pub fn socket(domain: i32, ty: i32, protocol: i32) -> io::Result<OwnedFd> {
    // SAFETY: socket(2) takes no pointers.
    let fd = cvt(unsafe {
        libc::socket(
            domain,
            ty | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            protocol,
        )
    })?;
    // SAFETY: `fd` was just returned by socket(2) and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Attaches a classic BPF program as the socket's receive filter.
pub fn attach_filter(fd: RawFd, program: &[libc::sock_filter]) -> io::Result<()> {
    set_program(fd, libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, program)
}

/// Hands a classic BPF program to the socket option `level`/`name`, which takes a
/// `struct sock_fprog` (a receive filter, a fanout group's program).
pub fn set_program(
    fd: RawFd,
    level: i32,
    name: i32,
    program: &[libc::sock_filter],
) -> io::Result<()> {
    let prog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `prog` points at `program`, which outlives the call; the kernel copies it.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&prog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

/// Removes the socket's receive filter (`SO_DETACH_FILTER`).
pub fn detach_filter(fd: RawFd) -> io::Result<()> {
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_DETACH_FILTER, 0)
}

/// `read(2)` into a buffer.
pub fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`.
    cvt_size(unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) })
}

/// `readv(2)` into a gather list.
///
/// # Safety
/// Each iovec must describe memory the kernel may write for the whole call.
pub unsafe fn readv(fd: RawFd, iovs: &[libc::iovec]) -> io::Result<usize> {
    let n = iovs.len().min(libc::c_int::MAX as usize) as libc::c_int;
    // SAFETY: the caller vouches for the iovecs; the kernel reads `n` of them.
    cvt_size(unsafe { libc::readv(fd, iovs.as_ptr(), n) })
}

/// `write(2)` of a buffer.
pub fn write(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: the kernel reads at most `buf.len()` bytes from `buf`.
    cvt_size(unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) })
}

/// Binds an AF_PACKET socket to interface `ifindex`, all protocols: from here on it receives.
pub fn bind_packet(fd: RawFd, ifindex: i32) -> io::Result<()> {
    bind_packet_protocol(fd, ifindex, libc::ETH_P_ALL as u16)
}

/// Binds an AF_PACKET socket to interface `ifindex` for frames of ethertype `protocol`; with 0
/// it receives nothing at all (it is on none of the kernel's packet-type lists) and only
/// sends.
pub fn bind_packet_protocol(fd: RawFd, ifindex: i32, protocol: u16) -> io::Result<()> {
    // SAFETY: sockaddr_ll is a plain C struct; all-zero is valid.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = protocol.to_be();
    sll.sll_ifindex = ifindex;
    // SAFETY: `sll` is a live, fully initialised sockaddr_ll and its size is passed.
    cvt(unsafe {
        libc::bind(
            fd,
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

/// Points one `mmsghdr` at `iovlen` iovecs from `iov` and at the address slot `name` (null with
/// length 0 for none), with no control data, ready for `recvmmsg`/`sendmmsg`.
pub fn prepare_msghdr(
    h: &mut libc::mmsghdr,
    name: *mut libc::c_void,
    namelen: libc::socklen_t,
    iov: *mut libc::iovec,
    iovlen: usize,
) {
    let m = &mut h.msg_hdr;
    m.msg_name = name;
    m.msg_namelen = namelen;
    m.msg_iov = iov;
    m.msg_iovlen = iovlen;
    m.msg_control = std::ptr::null_mut();
    m.msg_controllen = 0;
    m.msg_flags = 0;
    h.msg_len = 0;
}

/// `recvmmsg` of the headers in `hdrs`, without blocking. Returns how many messages arrived,
/// 0 when none is waiting.
///
/// # Safety
/// Every header must point at live iovecs (and address slots, if any) with their true sizes,
/// writable by the kernel for the duration of the call.
pub unsafe fn recvmmsg_nonblocking(fd: RawFd, hdrs: &mut [libc::mmsghdr]) -> io::Result<usize> {
    // SAFETY: `hdrs` is a live slice of its stated length; the caller vouches for what the
    // headers point at. MSG_DONTWAIT keeps the call non-blocking.
    let ret = unsafe {
        libc::recvmmsg(
            fd,
            hdrs.as_mut_ptr(),
            hdrs.len() as libc::c_uint,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    match cvt(ret) {
        Ok(got) => Ok(got as usize),
        Err(e) if would_block(&e) => Ok(0),
        Err(e) => Err(e),
    }
}

/// `sendmmsg` of the headers in `hdrs`, without blocking and without SIGPIPE. Returns how many
/// messages the kernel accepted, 0 when it would block.
///
/// # Safety
/// Every header must point at live iovecs (and address slots, if any) with their true sizes,
/// readable by the kernel for the duration of the call.
pub unsafe fn sendmmsg_nonblocking(fd: RawFd, hdrs: &mut [libc::mmsghdr]) -> io::Result<usize> {
    // SAFETY: `hdrs` is a live slice of its stated length; the caller vouches for what the
    // headers point at.
    let ret = unsafe {
        libc::sendmmsg(
            fd,
            hdrs.as_mut_ptr(),
            hdrs.len() as libc::c_uint,
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    match cvt(ret) {
        Ok(sent) => Ok(sent as usize),
        Err(e) if would_block(&e) => Ok(0),
        Err(e) => Err(e),
    }
}

/// The headers of one `recvmmsg`/`sendmmsg` call, allocated once per transport so the hot
/// path allocates nothing. Pointers into the batch's buffers are refreshed on each call
/// because a batch reorders its buffers ([`PacketBatch::consume`]).
pub struct Mmsg {
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    addrs: Vec<libc::sockaddr_ll>,
    meta: Vec<RecvMeta>,
}

// SAFETY: the raw pointers inside point only into this struct's own vectors and into the
// batch passed to each call; they are rewritten before every use and never dereferenced
// between calls, so moving the struct to another thread is sound.
unsafe impl Send for Mmsg {}

/// What a received message said beyond its bytes.
#[derive(Clone, Copy, Debug)]
pub struct RecvMeta {
    /// The frame did not fit its buffer (`MSG_TRUNC`).
    pub truncated: bool,
    /// `sll_pkttype` for AF_PACKET sockets (`PACKET_OUTGOING`, ...); 0 otherwise.
    pub pkttype: u8,
}

impl Mmsg {
    pub fn new(depth: usize) -> Mmsg {
        let depth = depth.max(1);
        // SAFETY: mmsghdr, iovec and sockaddr_ll are plain C structs for which all-zero is a
        // valid value.
        let zero_hdr: libc::mmsghdr = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let zero_addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        Mmsg {
            hdrs: vec![zero_hdr; depth],
            iovs: vec![
                libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0
                };
                depth
            ],
            addrs: vec![zero_addr; depth],
            meta: vec![
                RecvMeta {
                    truncated: false,
                    pkttype: 0
                };
                depth
            ],
        }
    }

    /// Receives up to the batch's depth (and this struct's) messages without blocking and
    /// keeps, in order, the whole frames `wanted` accepts; frames cut short (larger than their
    /// buffer) are dropped and counted in `dropped_trunc`. Returns (received, kept), (0, 0)
    /// when nothing is waiting; the batch holds the kept frames.
    pub fn recv(
        &mut self,
        fd: RawFd,
        batch: &mut PacketBatch,
        wanted: impl Fn(&RecvMeta) -> bool,
        dropped_trunc: &mut u64,
    ) -> io::Result<(usize, usize)> {
        let n = batch.depth().min(self.hdrs.len());
        for (i, buf) in batch.bufs_mut().iter_mut().take(n).enumerate() {
            let space = buf.space();
            self.iovs[i] = libc::iovec {
                iov_base: space.as_mut_ptr().cast(),
                iov_len: space.len(),
            };
            prepare_msghdr(
                &mut self.hdrs[i],
                (&mut self.addrs[i] as *mut libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                &mut self.iovs[i],
                1,
            );
        }
        // SAFETY: the first `n` headers point at live iovecs, which point at the batch's
        // buffers with their true lengths, and at live sockaddr_ll slots with their sizes; the
        // kernel writes within those bounds.
        let got = unsafe { recvmmsg_nonblocking(fd, &mut self.hdrs[..n]) }?;
        let full = std::mem::size_of::<libc::sockaddr_ll>() - 8;
        for (i, m) in self.meta.iter_mut().enumerate().take(got) {
            let h = &self.hdrs[i];
            *m = RecvMeta {
                truncated: h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
                // Only AF_PACKET fills a sockaddr_ll; other families leave a shorter name.
                pkttype: if h.msg_hdr.msg_namelen as usize >= full {
                    self.addrs[i].sll_pkttype
                } else {
                    0
                },
            };
            batch.bufs_mut()[i].set_len(h.msg_len as usize);
        }
        let mut kept = 0;
        for (i, m) in self.meta.iter().enumerate().take(got) {
            if m.truncated {
                *dropped_trunc += 1;
            } else if wanted(m) {
                batch.bufs_mut().swap(kept, i);
                kept += 1;
            }
        }
        batch.set_count(kept);
        Ok((got, kept))
    }

    /// Sends the frames from `start` without blocking, to the socket's connected or bound
    /// peer, or to `dest` when given. Returns how many the kernel accepted (0 when it would
    /// block).
    pub fn send<F: Frames + ?Sized>(
        &mut self,
        fd: RawFd,
        frames: &F,
        start: usize,
        dest: Option<(&libc::sockaddr_storage, libc::socklen_t)>,
    ) -> io::Result<usize> {
        let n = frames.count().saturating_sub(start).min(self.hdrs.len());
        if n == 0 {
            return Ok(0);
        }
        for i in 0..n {
            let (iov, iovlen) = frames.iov(start + i, &mut self.iovs[i]);
            let (name, namelen) = match dest {
                Some((addr, len)) => ((addr as *const libc::sockaddr_storage).cast_mut(), len),
                None => (std::ptr::null_mut(), 0),
            };
            prepare_msghdr(
                &mut self.hdrs[i],
                name.cast(),
                namelen,
                iov.cast_mut(),
                iovlen,
            );
        }
        // SAFETY: the first `n` headers point at live iovecs (this struct's, or the frames'
        // own) describing the frames' bytes, read-only for the kernel and live for the call
        // (the `Frames` implementations vouch for them), and at `dest`, which outlives it.
        unsafe { sendmmsg_nonblocking(fd, &mut self.hdrs[..n]) }
    }
}

/// `writev` of one frame's pieces.
pub fn write_frame<F: Frames + ?Sized>(fd: RawFd, frames: &F, i: usize) -> io::Result<usize> {
    let mut one = libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    };
    let (iov, n) = frames.iov(i, &mut one);
    // SAFETY: `iov` points at `n` live iovecs describing readable memory for the call (the
    // `Frames` implementations vouch for them); the kernel only reads through them.
    cvt_size(unsafe { libc::writev(fd, iov, n as libc::c_int) })
}

/// The socket type (`SOCK_DGRAM`, ...) of `fd`, or `None` if it is not a socket.
pub fn socket_type(fd: RawFd) -> io::Result<Option<i32>> {
    match getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_TYPE) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.raw_os_error() == Some(libc::ENOTSOCK) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether `fd` is an open descriptor.
pub fn is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD takes no pointers and only queries the descriptor table.
    unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
}

/// Whether the peer of a connected socket has hung up: poll reports `POLLHUP` (both ways shut)
/// or `POLLRDHUP` (it shut its sending side). This is what tells a seqpacket socket's
/// end-of-file (an empty message, forever) from an empty message the peer really sent.
pub fn peer_hung_up(fd: RawFd) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN | libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one live pollfd; a zero timeout never blocks.
    let rc = unsafe { libc::poll(&mut p, 1, 0) };
    rc > 0 && p.revents & (libc::POLLHUP | libc::POLLRDHUP) != 0
}

/// Whether a send error means the peer of a connected socket is gone for good (it closed, or
/// reset the connection), as opposed to one frame being refused.
pub fn peer_gone(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EPIPE | libc::ECONNRESET | libc::ENOTCONN)
    )
}

/// Asks for `bytes` of receive buffer on `fd` (the kernel books twice that, for its own
/// overhead): `SO_RCVBUFFORCE` where the caller may (CAP_NET_ADMIN), else `SO_RCVBUF`, which
/// the kernel caps at `net.core.rmem_max`. A buffer already that large is left alone.
/// Returns what the socket has now, as `SO_RCVBUF` reports it (the doubled figure).
pub fn grow_rcvbuf(fd: RawFd, bytes: i32) -> io::Result<usize> {
    let now = getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF)?;
    if now / 2 < bytes && setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, bytes).is_err()
    {
        setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, bytes)?;
    }
    Ok(getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF)?.max(0) as usize)
}

/// Bytes of receive buffer a socket that takes a peer's bursts asks for (4 MiB; Linux's
/// default is 208 KiB): a tunnel's, and the packet socket of raw and hybrid.
///
/// A peer that segments a 64 KiB TSO frame (our backend with `gro=1`, a host stack) sends its
/// 45 datagrams at once, and a few frames in flight overflow the default buffer (about 90
/// datagrams of 1500 bytes on loopback) whenever our worker waits for a core. Each overflow
/// is a lost TCP segment, a retransmission and a smaller window for the guests behind the
/// tunnel. Guest to guest with `gro=1` on both ends (`PAIRINGS=ours-ours OURS_OPTS=gro=1
/// resources/bench/tunnels.sh 8`, 2 cores, medians of 3 alternating runs, Gbit/s each way):
/// gre 0.93 and 0.85 with the default, 1.55 and 1.36 with this; l2tpv3 1.12 and 0.93, then
/// 1.59 and 1.44.
///
/// A packet socket queues whole 64 KiB GSO frames (a truesize of 64 KiB or more each), so the
/// default holds about three: with a UML guest reading 1 MiB per `recv` behind `raw,gro=1`
/// (`IPERF="-l 1M" TRANSPORTS=raw resources/bench/uml-vs-ours.sh`), 4,703 frames overflowed
/// it in 12 s, each some 45 TCP segments to send again (209 k retransmissions).
///
/// It is the kernel's memory, taken only while frames wait (as WireGuard's and QUIC stacks'
/// larger buffers are), not one of the NIC's own buffers.
pub const RCVBUF: i32 = 4 << 20;

/// [`grow_rcvbuf`] to [`RCVBUF`] for transport `name`, saying so when it cannot.
pub fn widen_rcvbuf(name: &str, fd: RawFd) {
    match grow_rcvbuf(fd, RCVBUF) {
        Ok(got) if got / 2 < RCVBUF as usize => log::info!(
            "{name}: receive buffer {} KiB, not the {} KiB asked for (net.core.rmem_max \
             caps it without CAP_NET_ADMIN): bursts of a peer's segmented TSO frames may \
             overflow it (counted as kernel drops)",
            got / 2 / 1024,
            RCVBUF / 1024
        ),
        Ok(_) => {}
        Err(e) => log::info!("{name}: receive buffer left as it was: {e}"),
    }
}

/// Frames the kernel dropped on `fd`'s receive queue since the socket was made
/// (`SK_MEMINFO_DROPS` of `SO_MEMINFO`: the socket's `sk_drops`, the counter `SO_RXQ_OVFL`
/// reports with each packet; read on demand it costs nothing per packet and also counts drops
/// no later packet reports). The kernel's counter is 32 bits and wraps.
pub fn socket_drops(fd: RawFd) -> io::Result<u32> {
    let mut info = [0u32; 16];
    let len = getsockopt_u32s(fd, libc::SOL_SOCKET, libc::SO_MEMINFO, &mut info)?;
    let at = libc::SK_MEMINFO_DROPS as usize;
    if len <= at {
        return Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP));
    }
    Ok(info[at])
}

/// Frames the kernel dropped on an AF_PACKET socket since the previous call
/// (`PACKET_STATISTICS`' `tp_drops`; reading the statistics resets them).
pub fn packet_drops(fd: RawFd) -> io::Result<u32> {
    // [tp_packets, tp_drops], `struct tpacket_stats`.
    let mut st = [0u32; 2];
    getsockopt_u32s(fd, libc::SOL_PACKET, libc::PACKET_STATISTICS, &mut st)?;
    Ok(st[1])
}

/// `getsockopt` of an option that is an array of 32-bit values; returns how many the kernel
/// wrote.
fn getsockopt_u32s(fd: RawFd, level: i32, name: i32, out: &mut [u32]) -> io::Result<usize> {
    let mut len = std::mem::size_of_val(out) as libc::socklen_t;
    // SAFETY: `out` and `len` are live; the kernel writes at most `len` bytes into `out` and
    // stores the length it wrote in `len`.
    cvt(unsafe { libc::getsockopt(fd, level, name, out.as_mut_ptr().cast(), &mut len) })?;
    Ok(len as usize / 4)
}
