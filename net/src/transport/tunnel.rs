//! The datapath shared by the datagram tunnels (gre, l2tpv3, mcast, ucast, bess): one message
//! per Ethernet frame, a per-transport header in front of it (GRE, L2TPv3, or none), moved in
//! batches with `recvmmsg`/`sendmmsg`.
//!
//! Transmit sends every message as two iovecs, the header from a per-message buffer allocated
//! once with the transport, then the frame where it lies in the batch: nothing is copied and
//! nothing allocated per packet, and the backend's batch stays read-only (the alternative,
//! writing the header into the headroom in front of the frame, would need the batch mutable and
//! every frame to start at `headroom`).
//!
//! On a UDP socket (l2tpv3 with `udp=1`, mcast, ucast) consecutive datagrams of one length (the
//! last of a run may be shorter) go as one message with `UDP_SEGMENT` (UDP GSO, Linux 4.18):
//! the kernel builds the run's datagrams from one pass through its UDP and IP layers instead of
//! one pass each. The segments of a guest's TSO frame are such a run, 45 datagrams of a 64 KiB
//! frame at MTU 1500. The datagrams on the wire are the same, headers and all (each one's
//! tunnel header is still its own iovec). A kernel or route that refuses it (`EINVAL`,
//! `EMSGSIZE`, `EIO`: datagrams over the path's MTU, a device without checksum offload) turns
//! it off for the transport, once, with a warning, and the run goes datagram by datagram.
//!
//! On a UDP socket receive goes through UDP GRO where the kernel has it ([`super::udp_gro`]):
//! a run a peer sent with GSO arrives as one message, split here, each datagram decoded and
//! its frame copied into the batch. Otherwise:
//! receive lands each datagram at the start of its buffer, decodes it in place and moves the
//! inner frame to the buffer start (`copy_within`; at most 64 bytes of headers are skipped, so
//! the move is a short overlapping copy of the frame, cheaper than a second buffer).
//! Datagrams are dropped, and counted by reason, when the kernel truncated them, when they come
//! from another source than the tunnel's peer, when they are our own transmissions looped back
//! (multicast) or when their header is not what this tunnel expects.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use super::gather::MAX_FRAME_PIECES;
use super::ipsock::{SockAddr, SourceMatch};
use super::sys::{self, prepare_msghdr, recvmmsg_nonblocking, sendmmsg_nonblocking};
use super::udp_gro::{self, GroRx, Verdict};
use super::wire::{GreCodec, L2tpv3Codec, WireError, ETH_HLEN};
use super::{
    Frames, GatherBatch, Offloads, PacketBatch, Peer, Transport, TransportError, TransportStats,
};

/// Longest tunnel header we send: L2TPv3 over UDP with a 64-bit cookie and a counter is 20.
const MAX_HEADER: usize = 24;

/// Most datagrams in one UDP GSO message: the kernel's `UDP_MAX_SEGMENTS`, 64 where it was
/// introduced (newer kernels allow more).
const GSO_MAX_SEGMENTS: usize = 64;
/// Most payload bytes in one UDP GSO message: an IPv4 datagram's 65,535 less its IP and UDP
/// headers (IPv6's limit is higher).
const GSO_MAX_BYTES: usize = 65_535 - 20 - 8;
/// Most iovecs in one message (`UIO_MAXIOV`).
const MAX_IOVS: usize = 1024;

/// Received datagrams dropped for their tunnel header, one counter per
/// [`WireError`] variant (named as [`WireError::reason`] names them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeaderDrops {
    pub truncated: u64,
    pub bad_ip_header: u64,
    pub wrong_ip_protocol: u64,
    pub wrong_flags: u64,
    pub wrong_protocol: u64,
    pub wrong_key: u64,
    pub not_l2tpv3_data: u64,
    pub wrong_cookie: u64,
    pub wrong_session: u64,
    /// Also frames of bare-Ethernet transports (bess, mcast, ucast) shorter than 14 bytes.
    pub too_short: u64,
}

impl HeaderDrops {
    pub fn count(&mut self, e: &WireError) {
        let c = match e {
            WireError::Truncated { .. } => &mut self.truncated,
            WireError::BadIpHeader { .. } => &mut self.bad_ip_header,
            WireError::WrongIpProtocol { .. } => &mut self.wrong_ip_protocol,
            WireError::WrongFlags { .. } => &mut self.wrong_flags,
            WireError::WrongProtocol { .. } => &mut self.wrong_protocol,
            WireError::WrongKey { .. } => &mut self.wrong_key,
            WireError::NotL2tpv3Data { .. } => &mut self.not_l2tpv3_data,
            WireError::WrongCookie { .. } => &mut self.wrong_cookie,
            WireError::WrongSession { .. } => &mut self.wrong_session,
            WireError::TooShort { .. } => &mut self.too_short,
        };
        *c += 1;
    }

    /// All header drops together.
    pub fn total(&self) -> u64 {
        self.truncated
            + self.bad_ip_header
            + self.wrong_ip_protocol
            + self.wrong_flags
            + self.wrong_protocol
            + self.wrong_key
            + self.not_l2tpv3_data
            + self.wrong_cookie
            + self.wrong_session
            + self.too_short
    }
}

/// A tunnel's per-packet header: how it is written in front of each frame and checked on
/// receive. `Clone` must be cheap (no heap): a send that the kernel takes only partly restores
/// the encoder from a copy so sequence numbers and counters stay consecutive on the wire.
pub trait Encap: Clone + Send {
    /// Bytes written in front of every frame (at most 24).
    fn header_len(&self) -> usize;
    /// Writes the next header into `out` (advancing any sequence number); returns its length.
    fn encode_header(&mut self, out: &mut [u8]) -> usize;
    /// The Ethernet frame inside a received datagram.
    fn decode<'a>(&self, packet: &'a [u8]) -> Result<&'a [u8], WireError>;
}

impl Encap for GreCodec {
    fn header_len(&self) -> usize {
        GreCodec::header_len(self)
    }
    fn encode_header(&mut self, out: &mut [u8]) -> usize {
        GreCodec::encode_header(self, out)
    }
    fn decode<'a>(&self, packet: &'a [u8]) -> Result<&'a [u8], WireError> {
        GreCodec::decode(self, packet, self.rx_ipv4_header())
    }
}

impl Encap for L2tpv3Codec {
    fn header_len(&self) -> usize {
        L2tpv3Codec::header_len(self)
    }
    fn encode_header(&mut self, out: &mut [u8]) -> usize {
        L2tpv3Codec::encode_header(self, out)
    }
    fn decode<'a>(&self, packet: &'a [u8]) -> Result<&'a [u8], WireError> {
        L2tpv3Codec::decode(self, packet)
    }
}

/// Bare Ethernet frames, one per message (bess, mcast, ucast).
#[derive(Clone, Copy, Debug, Default)]
pub struct Bare;

impl Encap for Bare {
    fn header_len(&self) -> usize {
        0
    }
    fn encode_header(&mut self, _out: &mut [u8]) -> usize {
        0
    }
    fn decode<'a>(&self, packet: &'a [u8]) -> Result<&'a [u8], WireError> {
        if packet.len() < ETH_HLEN {
            return Err(WireError::TooShort { got: packet.len() });
        }
        Ok(packet)
    }
}

/// `recvmmsg`/`sendmmsg` headers, iovecs (one per message to receive; to send, the tunnel
/// header's and the frame's pieces), a source address slot and a header buffer per message,
/// allocated once per transport.
struct MsgVec {
    hdrs: Vec<libc::mmsghdr>,
    /// Never resized: room for three pieces a message, and one frame of the most pieces.
    iovs: Vec<libc::iovec>,
    /// Each frame's first iovec, iovec count and bytes (header included), while a send is
    /// being prepared.
    spans: Vec<(usize, usize, usize)>,
    /// Frames in each message of the send being prepared (more than one: a UDP GSO run).
    runs: Vec<usize>,
    /// Each message's control buffer: the source address of a send-only socket, a
    /// `UDP_SEGMENT` cmsg for a GSO run.
    ctrls: Vec<[u64; CTRL_WORDS]>,
    names: Vec<libc::sockaddr_storage>,
    heads: Vec<[u8; MAX_HEADER]>,
}

/// What [`MsgVec::send`] did, in frames (a GSO message carries several).
struct Sent {
    /// Frames headers were written for.
    offered: usize,
    /// Frames in the first message: what an error concerns (more than one: a UDP GSO run).
    first: usize,
    /// Frames the kernel took.
    result: io::Result<usize>,
    /// Of those, the frames that went in GSO runs.
    gso: usize,
}

// SAFETY: the raw pointers inside point only into this struct's own vectors and into the batch
// or address passed to each call; they are rewritten before every use and never dereferenced
// between calls, so moving the struct to another thread is sound.
unsafe impl Send for MsgVec {}

impl MsgVec {
    fn new(depth: usize) -> MsgVec {
        let depth = depth.max(1);
        // SAFETY: mmsghdr and sockaddr_storage are plain C structs for which all-zero is valid.
        let zero_hdr: libc::mmsghdr = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let zero_name: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let iov = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        MsgVec {
            hdrs: vec![zero_hdr; depth],
            iovs: vec![iov; 3 * depth + 1 + MAX_FRAME_PIECES],
            spans: Vec::with_capacity(depth),
            runs: Vec::with_capacity(depth),
            ctrls: vec![[0; CTRL_WORDS]; depth],
            names: vec![zero_name; depth],
            heads: vec![[0; MAX_HEADER]; depth],
        }
    }

    /// Receives up to the batch's depth of datagrams without blocking; sets each buffer's
    /// length. Returns the count, 0 when none is waiting.
    fn recv(&mut self, fd: RawFd, batch: &mut PacketBatch) -> io::Result<usize> {
        let n = batch.depth().min(self.hdrs.len());
        for (i, buf) in batch.bufs_mut().iter_mut().take(n).enumerate() {
            let space = buf.space();
            self.iovs[i] = libc::iovec {
                iov_base: space.as_mut_ptr().cast(),
                iov_len: space.len(),
            };
            prepare_msghdr(
                &mut self.hdrs[i],
                (&mut self.names[i] as *mut libc::sockaddr_storage).cast(),
                std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t,
                &mut self.iovs[i],
                1,
            );
        }
        // SAFETY: the first `n` headers point at live iovecs describing the batch's buffers
        // with their true lengths, and at live sockaddr_storage slots with their sizes; the
        // kernel writes within those bounds.
        let got = unsafe { recvmmsg_nonblocking(fd, &mut self.hdrs[..n]) }?;
        for (h, buf) in self.hdrs.iter().zip(batch.bufs_mut()).take(got) {
            buf.set_len(h.msg_len as usize);
        }
        batch.set_count(got);
        Ok(got)
    }

    fn truncated(&self, i: usize) -> bool {
        self.hdrs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0
    }

    fn source(&self, i: usize) -> (&libc::sockaddr_storage, libc::socklen_t) {
        (&self.names[i], self.hdrs[i].msg_hdr.msg_namelen)
    }

    /// Sends the frames from `start`, each behind a header `encap` writes, to `dest` (or the
    /// connected peer), from `source` if given: as many as the iovecs hold; with `gso`, runs
    /// of datagrams of one length as one message each (see the module's doc).
    #[allow(clippy::too_many_arguments)]
    fn send<E: Encap, F: Frames + ?Sized>(
        &mut self,
        fd: RawFd,
        frames: &F,
        start: usize,
        dest: Option<&SockAddr>,
        source: Option<&Source>,
        encap: &mut E,
        gso: bool,
    ) -> Sent {
        let max = frames.count().saturating_sub(start).min(self.hdrs.len());
        let with_header = usize::from(encap.header_len() > 0);
        // The pointers into `iovs` are taken once it is no longer written to.
        self.spans.clear();
        let mut used = 0;
        let mut n = 0;
        while n < max {
            let mut one = libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            };
            let (iov, k) = frames.iov(start + n, &mut one);
            if used + with_header + k > self.iovs.len() {
                if n == 0 {
                    // More pieces than any message may have (never from the datapath, which
                    // copies such chains): refused like an oversized frame.
                    return Sent {
                        offered: 1,
                        first: 1,
                        result: Err(io::Error::from_raw_os_error(libc::EMSGSIZE)),
                        gso: 0,
                    };
                }
                break;
            }
            let first = used;
            if with_header == 1 {
                let head_len = encap.encode_header(&mut self.heads[n]);
                self.iovs[used] = libc::iovec {
                    iov_base: self.heads[n].as_mut_ptr().cast(),
                    iov_len: head_len,
                };
                used += 1;
            }
            // SAFETY: `Frames::iov` returns `k` live iovecs (in `one`, or the frames' own).
            let pieces = unsafe { std::slice::from_raw_parts(iov, k) };
            self.iovs[used..used + k].copy_from_slice(pieces);
            used += k;
            let bytes = self.iovs[first..used].iter().map(|v| v.iov_len).sum();
            self.spans.push((first, used - first, bytes));
            n += 1;
        }
        if n == 0 {
            return Sent {
                offered: 0,
                first: 0,
                result: Ok(0),
                gso: 0,
            };
        }
        self.runs.clear();
        let mut i = 0;
        while i < n {
            let k = if gso { gso_run(&self.spans[i..n]) } else { 1 };
            self.runs.push(k);
            i += k;
        }
        let base = self.iovs.as_mut_ptr();
        let (name, namelen) = match dest {
            Some(a) => (a.as_ptr().cast_mut(), a.len()),
            None => (std::ptr::null_mut(), 0),
        };
        let mut i = 0;
        for (m, &k) in self.runs.iter().enumerate() {
            let (first, _, size) = self.spans[i];
            let (last, last_len, _) = self.spans[i + k - 1];
            let h = &mut self.hdrs[m];
            // `last + last_len` is within `iovs`: checked above.
            prepare_msghdr(
                h,
                name.cast(),
                namelen,
                base.wrapping_add(first),
                last + last_len - first,
            );
            // A run is at most 64 datagrams of at most 64 KiB together: `size` fits.
            let segment = (k > 1).then_some(size as u16);
            set_control(h, &mut self.ctrls[m], source, segment);
            i += k;
        }
        let messages = self.runs.len();
        // SAFETY: the first `messages` headers point at live iovecs in this struct describing
        // its header buffers and the frames' bytes (read-only for the kernel, live for the call
        // as `Frames` vouches), at control buffers in this struct holding complete cmsgs with
        // their true length, and at `dest`, which outlives the call.
        let r = unsafe { sendmmsg_nonblocking(fd, &mut self.hdrs[..messages]) };
        let gso = match &r {
            Ok(m) => self.runs[..*m].iter().filter(|&&k| k > 1).sum(),
            Err(_) => 0,
        };
        Sent {
            offered: n,
            first: self.runs[0],
            result: r.map(|m| self.runs[..m].iter().sum()),
            gso,
        }
    }
}

/// How many of `spans` (frames: first iovec, iovec count, bytes) from the first go as one UDP
/// GSO message: those of the first's length, then at most one shorter, within the kernel's
/// limits on segments, bytes and iovecs.
fn gso_run(spans: &[(usize, usize, usize)]) -> usize {
    let Some(&(_, mut iovs, size)) = spans.first() else {
        return 0;
    };
    if size == 0 {
        return 1;
    }
    let mut k = 1;
    let mut bytes = size;
    for &(_, count, len) in &spans[1..] {
        if len > size
            || len == 0
            || k == GSO_MAX_SEGMENTS
            || bytes + len > GSO_MAX_BYTES
            || iovs + count > MAX_IOVS
        {
            break;
        }
        k += 1;
        bytes += len;
        iovs += count;
        if len < size {
            break;
        }
    }
    k
}

/// Words of a message's control buffer: room for an `IPV6_PKTINFO` cmsg (40 bytes with its
/// header) and a `UDP_SEGMENT` one (24).
const CTRL_WORDS: usize = 8;

/// The address every packet of a send-only socket leaves from (the tunnel's `src`; see
/// [`super::ipsock::send_only_socket`]), as the kernel takes it with each message.
#[derive(Clone, Copy)]
enum Source {
    V4(libc::in_pktinfo),
    V6(libc::in6_pktinfo),
}

impl Source {
    fn new(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(v4) => Source::V4(libc::in_pktinfo {
                ipi_ifindex: 0,
                ipi_spec_dst: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.octets()),
                },
                ipi_addr: libc::in_addr { s_addr: 0 },
            }),
            IpAddr::V6(v6) => Source::V6(libc::in6_pktinfo {
                ipi6_addr: libc::in6_addr {
                    s6_addr: v6.octets(),
                },
                ipi6_ifindex: 0,
            }),
        }
    }
}

/// Points `h` at `ctrl`, filled with the cmsgs a message needs: its source address
/// (`IP_PKTINFO`, `IPV6_PKTINFO`), a GSO run's `UDP_SEGMENT` size. Neither: no control
/// buffer (as [`prepare_msghdr`] left it).
fn set_control(
    h: &mut libc::mmsghdr,
    ctrl: &mut [u64; CTRL_WORDS],
    source: Option<&Source>,
    segment: Option<u16>,
) {
    if source.is_none() && segment.is_none() {
        return;
    }
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = |n: usize| unsafe { libc::CMSG_SPACE(n as u32) } as usize;
    let need = match source {
        Some(Source::V4(_)) => space(std::mem::size_of::<libc::in_pktinfo>()),
        Some(Source::V6(_)) => space(std::mem::size_of::<libc::in6_pktinfo>()),
        None => 0,
    } + segment.map_or(0, |_| space(std::mem::size_of::<u16>()));
    // 40 + 24 bytes at most: never fails, and nothing below writes past `ctrl` if it did.
    assert!(need <= std::mem::size_of_val(ctrl), "cmsgs of {need} bytes");
    *ctrl = [0; CTRL_WORDS];
    let base = ctrl.as_mut_ptr().cast::<u8>();
    let mut len = 0;
    // SAFETY: each put_cmsg writes at `base + len`, 8-byte aligned (`ctrl` is u64s, and
    // CMSG_SPACE rounds up to 8), and the cmsgs written, `need` bytes, fit in `ctrl`
    // (asserted above).
    unsafe {
        match source {
            Some(Source::V4(info)) => {
                len += put_cmsg(base.add(len), libc::IPPROTO_IP, libc::IP_PKTINFO, *info);
            }
            Some(Source::V6(info)) => {
                len += put_cmsg(base.add(len), libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, *info);
            }
            None => {}
        }
        if let Some(size) = segment {
            len += put_cmsg(base.add(len), libc::SOL_UDP, libc::UDP_SEGMENT, size);
        }
    }
    debug_assert_eq!(len, need);
    let m = &mut h.msg_hdr;
    m.msg_control = ctrl.as_mut_ptr().cast();
    m.msg_controllen = len;
}

/// Writes one cmsg (`level`, `ty`, `value`) at `at`; returns the bytes it takes
/// (`CMSG_SPACE`), where the next one goes.
///
/// # Safety
/// `at` is 8-byte aligned with `CMSG_SPACE(size_of::<T>())` writable bytes.
unsafe fn put_cmsg<T: Copy>(at: *mut u8, level: i32, ty: i32, value: T) -> usize {
    let n = std::mem::size_of::<T>() as u32;
    let c = at.cast::<libc::cmsghdr>();
    // SAFETY: the caller vouches for the room and alignment of a cmsghdr and its data at `at`;
    // CMSG_DATA lies within CMSG_SPACE(n) of it, and the data is written unaligned.
    unsafe {
        (*c).cmsg_level = level;
        (*c).cmsg_type = ty;
        (*c).cmsg_len = libc::CMSG_LEN(n) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<T>(), value);
        libc::CMSG_SPACE(n) as usize
    }
}

/// Whether `fd` is a UDP socket: what UDP GSO (sending) and UDP GRO (receiving) need.
fn is_udp_socket(fd: RawFd) -> bool {
    let is = |name, want| sys::getsockopt_int(fd, libc::SOL_SOCKET, name).ok() == Some(want);
    is(libc::SO_TYPE, libc::SOCK_DGRAM) && is(libc::SO_PROTOCOL, libc::IPPROTO_UDP)
}

/// What becomes of a datagram from `source` (as `recvmmsg` filled it): dropped when it is not
/// the tunnel's peer (`accept_from`) or is our own multicast echo (`own`), else kept. One
/// rule for both receive paths, datagram by datagram and through UDP GRO.
fn source_verdict(
    accept_from: &Option<SourceMatch>,
    own: &Option<SourceMatch>,
    source: &libc::sockaddr_storage,
    len: libc::socklen_t,
) -> Verdict {
    if accept_from
        .as_ref()
        .is_some_and(|p| !p.matches(source, len))
    {
        Verdict::Foreign
    } else if own.as_ref().is_some_and(|o| o.matches(source, len)) {
        Verdict::Own
    } else {
        Verdict::Keep
    }
}

/// Errors with which a kernel or route refuses a UDP GSO message where the same datagrams one
/// by one may pass: no GSO in the kernel, a device without checksum offload (`EIO`), datagrams
/// longer than the path's MTU, which only IP fragmentation can carry (`EINVAL` or `EMSGSIZE`).
fn gso_refused(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::EIO | libc::EMSGSIZE | libc::ENOPROTOOPT | libc::EOPNOTSUPP)
    )
}

/// Errors on send that concern one packet (too big for the path, the peer unreachable or
/// refusing, a firewall verdict, guest memory the kernel could not read): the packet is
/// dropped and counted, the queue goes on.
fn drop_on_send(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::EMSGSIZE
                | libc::EINVAL
                | libc::ECONNREFUSED
                | libc::EHOSTUNREACH
                | libc::ENETUNREACH
                | libc::ENETDOWN
                | libc::EHOSTDOWN
                | libc::EPERM
                | libc::EACCES
                | libc::ENOBUFS
                | libc::EADDRNOTAVAIL
                | libc::EFAULT
        )
    )
}

/// Errors on receive that report an ICMP error about an earlier transmission (connected
/// sockets) rather than a broken socket: they are consumed by reporting them, so receiving
/// again is right.
fn transient_on_recv(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ECONNREFUSED | libc::EHOSTUNREACH | libc::ENETUNREACH | libc::EHOSTDOWN)
    )
}

/// One datagram tunnel. `rx` receives; `tx`, when set, is a separate send socket (mcast).
pub struct Tunnel<E: Encap> {
    name: &'static str,
    rx: OwnedFd,
    tx: Option<OwnedFd>,
    /// Where every packet goes; `None` for a connected socket.
    dest: Option<SockAddr>,
    /// Where every packet leaves from, given per message: for a send-only `tx`.
    source: Option<Source>,
    /// Keep only datagrams from this source (the tunnel's configured peer).
    accept_from: Option<SourceMatch>,
    /// Drop datagrams from this source: our own multicast transmissions, looped back.
    own: Option<SourceMatch>,
    /// A connected seqpacket socket: an empty message may be the peer's hang-up.
    hangup_check: bool,
    peer: Peer,
    encap: E,
    io: MsgVec,
    /// Header scratch for replaying the encoder after a partial send.
    scratch: [u8; MAX_HEADER],
    /// Runs of equal datagrams go as one UDP GSO message (a UDP socket, until refused).
    udp_gso: bool,
    /// Runs of datagrams arrive as one UDP GRO message (a UDP socket whose kernel has it).
    udp_gro: Option<Box<GroRx>>,
    /// A [`Transport::recv`] stopped at its bound with datagrams still waiting, and the
    /// datapath has not re-armed its watch for them yet.
    cut_short: bool,
    stats: TransportStats,
}

/// Options of [`Tunnel::new`] beyond the socket and the header.
#[derive(Default)]
pub struct TunnelOpts {
    pub tx: Option<OwnedFd>,
    pub dest: Option<SockAddr>,
    /// The local address packets leave from, given with each message: for a `tx` socket
    /// bound elsewhere ([`super::ipsock::send_only_socket`]).
    pub source: Option<IpAddr>,
    pub accept_from: Option<SourceMatch>,
    pub own: Option<SourceMatch>,
    /// Treat empty messages with the peer gone as its hang-up (seqpacket: bess): the socket
    /// is not read again, instead of receiving endless end-of-file markers.
    pub hangup_check: bool,
}

impl<E: Encap> Tunnel<E> {
    pub fn new(name: &'static str, rx: OwnedFd, encap: E, depth: usize, o: TunnelOpts) -> Self {
        debug_assert!(encap.header_len() <= MAX_HEADER);
        sys::widen_rcvbuf(name, rx.as_raw_fd());
        Tunnel {
            name,
            rx,
            tx: o.tx,
            dest: o.dest,
            source: o.source.map(Source::new),
            accept_from: o.accept_from,
            own: o.own,
            hangup_check: o.hangup_check,
            peer: Peer::default(),
            encap,
            io: MsgVec::new(depth),
            scratch: [0; MAX_HEADER],
            udp_gso: false,
            udp_gro: None,
            cut_short: false,
            stats: TransportStats::default(),
        }
        .with_udp_gso()
        .with_udp_gro()
    }

    /// Turns UDP GSO on for a UDP send socket.
    fn with_udp_gso(mut self) -> Self {
        self.udp_gso = is_udp_socket(self.tx_raw());
        self
    }

    /// Turns UDP GRO on for a UDP receive socket, where the kernel has it.
    fn with_udp_gro(mut self) -> Self {
        let fd = self.rx.as_raw_fd();
        if is_udp_socket(fd) {
            match GroRx::enable(fd) {
                Ok(gro) => self.udp_gro = Some(gro),
                Err(e) => log::info!(
                    "{}: no UDP GRO ({e}): a peer's GSO runs arrive datagram by datagram",
                    self.name
                ),
            }
        }
        self
    }

    fn tx_raw(&self) -> RawFd {
        self.tx.as_ref().unwrap_or(&self.rx).as_raw_fd()
    }

    /// Receives one batch and keeps the good frames at the front. Returns (received, kept).
    fn recv_once(&mut self, batch: &mut PacketBatch) -> Result<(usize, usize), TransportError> {
        if self.udp_gro.is_some() {
            return self.recv_gro(batch);
        }
        let got = loop {
            match self.io.recv(self.rx.as_raw_fd(), batch) {
                Ok(got) => break got,
                Err(e) if transient_on_recv(&e) => continue,
                Err(source) => {
                    return Err(TransportError::Io {
                        transport: self.name,
                        op: "recvmmsg",
                        source,
                    })
                }
            }
        };
        let mut kept = 0;
        for i in 0..got {
            if self.io.truncated(i) {
                self.stats.rx_dropped_truncated += 1;
                continue;
            }
            let (name, namelen) = self.io.source(i);
            match source_verdict(&self.accept_from, &self.own, name, namelen) {
                Verdict::Foreign => {
                    self.stats.rx_dropped_foreign += 1;
                    continue;
                }
                Verdict::Own => {
                    self.stats.rx_dropped_own += 1;
                    continue;
                }
                Verdict::Keep | Verdict::Truncated => {}
            }
            let buf = &mut batch.bufs_mut()[i];
            if buf.is_empty() && self.hangup_check && sys::peer_hung_up(self.rx.as_raw_fd()) {
                // End-of-file: this message and every one after it are its markers.
                self.peer
                    .rx_hung_up(self.name, "end of file", &mut self.stats);
                break;
            }
            let decoded = {
                let data = buf.data();
                // The frame is a sub-slice of the datagram: its offset is pointer arithmetic,
                // checked anyway so that no decoder can make the move below go out of bounds.
                self.encap.decode(data).and_then(|frame| {
                    let offset = (frame.as_ptr() as usize).wrapping_sub(data.as_ptr() as usize);
                    match offset.checked_add(frame.len()) {
                        Some(end) if end <= data.len() => Ok((offset, frame.len())),
                        _ => Err(WireError::TooShort { got: data.len() }),
                    }
                })
            };
            match decoded {
                Ok((offset, len)) => {
                    if offset != 0 {
                        buf.space().copy_within(offset..offset + len, 0);
                    }
                    buf.set_len(len);
                    batch.bufs_mut().swap(kept, i);
                    kept += 1;
                }
                Err(e) => self.stats.rx_dropped_header.count(&e),
            }
        }
        batch.set_count(kept);
        Ok((got, kept))
    }
}

impl<E: Encap> Tunnel<E> {
    /// [`Tunnel::recv_once`] through UDP GRO: splits the messages waiting in the slots, then
    /// receives more, until the batch is full or nothing waits; what does not fit waits in
    /// the slots for the next call. Each datagram's frame is copied into the next batch
    /// buffer. Returns (datagrams split, frames kept).
    ///
    /// Bounded like one `recvmmsg` of the batch path: at most a batch's depth of messages is
    /// received per call, so a flood of datagrams that are all dropped returns here (and
    /// [`Transport::recv`] bounds the calls). What was received is split before returning,
    /// so a call that leaves the batch short leaves nothing in the slots: the worker never
    /// sleeps on a drained descriptor with frames held here.
    fn recv_gro(&mut self, batch: &mut PacketBatch) -> Result<(usize, usize), TransportError> {
        let Some(gro) = self.udp_gro.as_deref_mut() else {
            return Ok((0, 0));
        };
        let (accept_from, own) = (&self.accept_from, &self.own);
        let judge =
            |name: &libc::sockaddr_storage, len| source_verdict(accept_from, own, name, len);
        let depth = batch.depth();
        let mut fills = depth.div_ceil(udp_gro::SLOTS);
        let (mut split, mut kept) = (0, 0);
        while kept < depth {
            let Some(d) = gro.next_datagram() else {
                if fills == 0 {
                    break;
                }
                fills -= 1;
                match gro.fill(self.rx.as_raw_fd(), judge) {
                    Ok(0) => break,
                    Ok(_) => continue,
                    Err(e) if transient_on_recv(&e) => continue,
                    Err(source) => {
                        batch.set_count(kept);
                        return Err(TransportError::Io {
                            transport: self.name,
                            op: "recvmmsg",
                            source,
                        });
                    }
                }
            };
            split += 1;
            self.stats.rx_udp_gro_datagrams += u64::from(d.merged);
            match d.verdict {
                Verdict::Keep => {}
                Verdict::Foreign => {
                    self.stats.rx_dropped_foreign += 1;
                    continue;
                }
                Verdict::Own => {
                    self.stats.rx_dropped_own += 1;
                    continue;
                }
                Verdict::Truncated => {
                    self.stats.rx_dropped_truncated += 1;
                    continue;
                }
            }
            let buf = &mut batch.bufs_mut()[kept];
            // As a datagram received into the buffer itself would have been cut short.
            if d.bytes.len() > buf.capacity() {
                self.stats.rx_dropped_truncated += 1;
                continue;
            }
            match self.encap.decode(d.bytes) {
                Ok(frame) => {
                    buf.space()[..frame.len()].copy_from_slice(frame);
                    buf.set_len(frame.len());
                    kept += 1;
                }
                Err(e) => self.stats.rx_dropped_header.count(&e),
            }
        }
        batch.set_count(kept);
        Ok((split, kept))
    }

    /// Sends frames (a batch, or gather lists) behind the tunnel's header: every message the
    /// kernel takes or refuses outright counts as sent; fewer than all means it would block.
    fn send_frames<F: Frames + ?Sized>(&mut self, batch: &F) -> Result<usize, TransportError> {
        let fd = self.tx_raw();

        let mut done = 0;
        while done < batch.count() {
            if self.peer.tx_gone() {
                self.stats.tx_dropped_peer_gone += (batch.count() - done) as u64;
                return Ok(batch.count());
            }
            let before = self.encap.clone();
            let sent = self.io.send(
                fd,
                batch,
                done,
                self.dest.as_ref(),
                self.source.as_ref(),
                &mut self.encap,
                self.udp_gso,
            );
            let offered = sent.offered;
            self.stats.tx_udp_gso_datagrams += sent.gso as u64;
            // Headers were written for every offered packet; replay the encoder for those the
            // kernel took (or dropped) so the next header carries the next number.
            let taken = match sent.result {
                Ok(n) => n,
                Err(e) if sent.first > 1 && gso_refused(&e) => {
                    log::warn!(
                        "{}: UDP GSO refused ({e}): sending datagram by datagram",
                        self.name
                    );
                    self.udp_gso = false;
                    self.encap = before;
                    continue;
                }
                Err(e) if drop_on_send(&e) => {
                    self.stats.tx_dropped += sent.first as u64;
                    sent.first
                }
                Err(e) if sys::peer_gone(&e) => {
                    self.encap = before;
                    self.peer.tx_hung_up(self.name, &e, &mut self.stats);
                    continue;
                }
                Err(source) => {
                    self.encap = before;
                    return Err(TransportError::Io {
                        transport: self.name,
                        op: "sendmmsg",
                        source,
                    });
                }
            };
            if taken < offered {
                self.encap = before;
                for _ in 0..taken {
                    let _ = self.encap.encode_header(&mut self.scratch);
                }
            }
            if taken == 0 {
                break;
            }
            done += taken;
        }
        Ok(done)
    }
}

impl<E: Encap> Transport for Tunnel<E> {
    fn name(&self) -> &'static str {
        self.name
    }

    /// Tunnels carry bare Ethernet frames: no virtio-net header, no offloads.
    fn vnet_hdr_len(&self) -> usize {
        0
    }

    /// An IPv4 header with options (raw IP sockets, GRE and L2TPv3 over IP, receive it) and
    /// the longest tunnel header.
    fn rx_overhead(&self) -> usize {
        60 + MAX_HEADER
    }

    fn rx_fd(&self) -> RawFd {
        self.rx.as_raw_fd()
    }

    fn tx_fd(&self) -> RawFd {
        self.tx_raw()
    }

    /// Receives until at least one good frame is in the batch or nothing is waiting, so a
    /// burst of dropped datagrams never looks like an empty socket to the caller.
    /// (Bounded: after many rounds of nothing but drops it returns 0, so a flood cannot
    /// starve the transmit side, and says so through [`Transport::take_rx_cut_short`]: the
    /// worker's edge-triggered watch would not announce what is left.)
    fn recv(&mut self, batch: &mut PacketBatch) -> Result<usize, TransportError> {
        for _ in 0..64 {
            if self.peer.rx_gone() {
                batch.set_count(0);
                return Ok(0);
            }
            let (got, kept) = self.recv_once(batch)?;
            if kept > 0 || got == 0 {
                return Ok(kept);
            }
        }
        self.cut_short = true;
        Ok(0)
    }

    fn send(&mut self, batch: &PacketBatch) -> Result<usize, TransportError> {
        self.send_frames(batch)
    }

    fn gathers(&self) -> bool {
        true
    }

    fn send_gather(&mut self, frames: &GatherBatch) -> Result<usize, TransportError> {
        self.send_frames(frames)
    }

    fn set_offloads(&mut self, _offloads: Offloads) -> Result<(), TransportError> {
        Ok(())
    }

    /// UDP GRO's slots.
    fn buffer_bytes(&self) -> usize {
        self.udp_gro.as_ref().map_or(0, |g| g.bytes())
    }

    fn rx_pending(&self) -> bool {
        self.udp_gro.as_ref().is_some_and(|g| g.pending())
    }

    fn take_rx_cut_short(&mut self) -> bool {
        std::mem::take(&mut self.cut_short)
    }

    fn stats(&self) -> TransportStats {
        TransportStats {
            rx_dropped_kernel: super::kernel_drops(self.rx.as_raw_fd()),
            ..self.stats
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cmsgs of `h`'s control buffer, as the kernel walks them: level, type, data.
    fn cmsgs(h: &libc::mmsghdr) -> Vec<(i32, i32, Vec<u8>)> {
        let mut out = Vec::new();
        // SAFETY: `h` points at a control buffer of `msg_controllen` bytes (set_control's);
        // the CMSG_* macros stay within it, and each cmsg's data is `cmsg_len` less its
        // header.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&h.msg_hdr);
            while !c.is_null() {
                let n = (*c).cmsg_len - libc::CMSG_LEN(0) as usize;
                let data = std::slice::from_raw_parts(libc::CMSG_DATA(c), n).to_vec();
                out.push(((*c).cmsg_level, (*c).cmsg_type, data));
                c = libc::CMSG_NXTHDR(&h.msg_hdr, c);
            }
        }
        out
    }

    /// The source address and a GSO run's size go in one control buffer, each whole, in the
    /// order the kernel reads them; neither leaves the message without one.
    #[test]
    fn control_messages_carry_the_source_and_the_segment_size() {
        // SAFETY: all-zero is a valid mmsghdr.
        let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
        let mut ctrl = [0u64; CTRL_WORDS];
        let v6: IpAddr = "fd00::1".parse().unwrap();
        set_control(&mut h, &mut ctrl, Some(&Source::new(v6)), Some(1480));
        let got = cmsgs(&h);
        assert_eq!(got.len(), 2);
        assert_eq!(
            (got[0].0, got[0].1),
            (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO)
        );
        assert_eq!(
            &got[0].2[..16],
            &"fd00::1".parse::<std::net::Ipv6Addr>().unwrap().octets()
        );
        assert_eq!(&got[0].2[16..], &[0; 4], "no interface index");
        assert_eq!((got[1].0, got[1].1), (libc::SOL_UDP, libc::UDP_SEGMENT));
        assert_eq!(got[1].2, 1480u16.to_ne_bytes());

        // SAFETY: as above.
        let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
        let v4: IpAddr = "10.1.2.3".parse().unwrap();
        set_control(&mut h, &mut ctrl, Some(&Source::new(v4)), None);
        let got = cmsgs(&h);
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].0, got[0].1), (libc::IPPROTO_IP, libc::IP_PKTINFO));
        // in_pktinfo: ifindex, spec_dst (the source), addr.
        assert_eq!(&got[0].2[4..8], &[10, 1, 2, 3]);

        // SAFETY: as above.
        let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
        set_control(&mut h, &mut ctrl, None, None);
        assert!(h.msg_hdr.msg_control.is_null());
        assert_eq!(h.msg_hdr.msg_controllen, 0);
    }

    /// Frames of these lengths, each of `iovs` iovecs, as `MsgVec::send` lays them out.
    fn spans(lens: &[usize], iovs: usize) -> Vec<(usize, usize, usize)> {
        lens.iter()
            .enumerate()
            .map(|(i, &len)| (i * iovs, iovs, len))
            .collect()
    }

    #[test]
    fn a_gso_run_is_one_length_then_at_most_one_shorter() {
        let mut lens = vec![1000; 10];
        lens.extend([700, 1000, 1000]);
        assert_eq!(gso_run(&spans(&lens, 2)), 11);
        assert_eq!(
            gso_run(&spans(&[1000, 1001, 1000], 2)),
            1,
            "a longer one ends it"
        );
        assert_eq!(
            gso_run(&spans(&[60, 60, 0, 60], 2)),
            2,
            "an empty one is never in a run"
        );
        assert_eq!(gso_run(&spans(&[0, 0], 2)), 1);
        assert_eq!(gso_run(&spans(&[1514], 2)), 1);
        assert_eq!(gso_run(&[]), 0);
    }

    #[test]
    fn a_gso_run_stays_within_the_kernels_limits() {
        // Segments: 64.
        assert_eq!(gso_run(&spans(&[60; 100], 2)), GSO_MAX_SEGMENTS);
        // Bytes: 42 datagrams of 1534 bytes fit in 65,507, 43 do not.
        assert_eq!(gso_run(&spans(&[1534; 60], 2)), 42);
        const { assert!(42 * 1534 <= GSO_MAX_BYTES && 43 * 1534 > GSO_MAX_BYTES) };
        // Iovecs: 34 frames of 30 pieces fit in 1024, 35 do not.
        assert_eq!(gso_run(&spans(&[200; 60], 30)), 34);
        // A shorter last one joins if it fits, and not if it does not.
        let mut lens = vec![1534; 42];
        lens.push(100);
        assert_eq!(gso_run(&spans(&lens, 2)), 43);
        lens[42] = 1500;
        assert_eq!(gso_run(&spans(&lens, 2)), 42);
    }
}
