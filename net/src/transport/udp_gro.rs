//! Receiving a UDP tunnel's datagrams through UDP GRO (`UDP_GRO`, Linux 5.0): the kernel
//! hands over a run of datagrams of one flow and one length (the last may be shorter) as one
//! message of up to 64 KiB, with the datagrams' length in a `UDP_GRO` control message, and we
//! split it here.
//!
//! Why: a peer that sends with UDP GSO (our own tunnels do, 45 datagrams for a guest's 64 KiB
//! TSO frame) passes loopback or a veth as one packet, and without `UDP_GRO` on the receiving
//! socket the kernel segments it there (`__udp_gso_segment`), queues 45 packets, wakes us for
//! them and copies them out one by one: in a profile of two of our backends over l2tpv3
//! `udp=1`, 6.6 % of all samples went to the receive queueing, 4.1 % of them to that
//! segmentation, and 9.6 % more to `recvmmsg`. With it, the run crosses as one packet and is
//! read in one copy. From a NIC, the kernel's GRO builds such runs too, for a socket that asks.
//!
//! The cost: a message may now be 64 KiB, so it must land in a buffer of 64 KiB, whatever
//! arrives (a datagram that does not fit is lost, `MSG_TRUNC`). The batch's buffers are a
//! frame each, so messages land in [`SLOTS`] slots of their own (256 KiB, counted in the
//! transport's buffers) and their datagrams are copied from there into the batch, tunnel
//! header stripped, which is the move receiving in place needed anyway. A datagram that does
//! not fit the batch waits here for the next receive: [`GroRx::pending`].

use std::io;
use std::os::fd::RawFd;

use super::sys::{self, prepare_msghdr, recvmmsg_nonblocking};

/// Messages received per `recvmmsg`: a GSO run's 64 KiB each. Datagrams that come alone
/// (a peer without GSO: UML's own transports) also take a slot each, so this is also how
/// many of those one system call reads.
pub const SLOTS: usize = 4;
/// One message's room: the longest UDP payload (IPv4's 65,507; IPv6 GRO stops at 64 KiB too).
const SLOT: usize = 65_536;
/// Words of a message's control buffer: a `UDP_GRO` cmsg (an int, 24 bytes with its header).
const CTRL_WORDS: usize = 4;

/// What becomes of a received message's datagrams, decided from its source once, as the
/// kernel merges only datagrams of one flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Decode each datagram.
    Keep,
    /// From another source than the tunnel's peer.
    Foreign,
    /// Our own transmission, looped back (multicast).
    Own,
    /// Longer than a slot: the kernel cut it (never from a conforming kernel).
    Truncated,
}

/// One received message: its bytes in the slot, its datagrams' length, its verdict.
#[derive(Clone, Copy, Debug)]
struct Msg {
    len: usize,
    /// The datagrams' length (`UDP_GRO`); 0: the message is one datagram.
    segment: usize,
    verdict: Verdict,
}

const NO_MSG: Msg = Msg {
    len: 0,
    segment: 0,
    verdict: Verdict::Keep,
};

impl Msg {
    /// How many datagrams the message carries.
    fn datagrams(&self) -> usize {
        if self.segment == 0 || self.len <= self.segment {
            1
        } else {
            self.len.div_ceil(self.segment)
        }
    }
}

/// One datagram split out of a message.
pub struct Datagram<'a> {
    pub bytes: &'a [u8],
    pub verdict: Verdict,
    /// It came in a message of several (the kernel merged it).
    pub merged: bool,
}

/// The slots, the messages in them not yet split, and the `recvmmsg` headers (rebuilt for
/// every call: nothing the kernel wrote there is read after [`GroRx::fill`] returns).
pub struct GroRx {
    area: Box<[u8]>,
    msgs: [Msg; SLOTS],
    /// Messages in the slots, the one being split, and the offset of its next datagram.
    got: usize,
    next: usize,
    at: usize,
    hdrs: [libc::mmsghdr; SLOTS],
    iovs: [libc::iovec; SLOTS],
    ctrls: [[u64; CTRL_WORDS]; SLOTS],
    names: [libc::sockaddr_storage; SLOTS],
}

// SAFETY: the raw pointers in `hdrs` and `iovs` point only into this struct's own boxes and
// arrays; they are rewritten before every `recvmmsg` and never dereferenced between calls,
// so moving the struct to another thread is sound.
unsafe impl Send for GroRx {}

impl GroRx {
    /// Turns `UDP_GRO` on for `fd` (a UDP socket) and makes the slots; the error if the
    /// kernel refuses (before 5.0), and the socket is left as it was.
    pub fn enable(fd: RawFd) -> io::Result<Box<GroRx>> {
        sys::setsockopt_int(fd, libc::SOL_UDP, libc::UDP_GRO, 1)?;
        // SAFETY: mmsghdr and sockaddr_storage are plain C structs for which all-zero is valid.
        let (hdr, name) = unsafe { (std::mem::zeroed(), std::mem::zeroed()) };
        Ok(Box::new(GroRx {
            area: vec![0u8; SLOTS * SLOT].into_boxed_slice(),
            msgs: [NO_MSG; SLOTS],
            got: 0,
            next: 0,
            at: 0,
            hdrs: [hdr; SLOTS],
            iovs: [libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            }; SLOTS],
            ctrls: [[0; CTRL_WORDS]; SLOTS],
            names: [name; SLOTS],
        }))
    }

    /// Bytes of the slots.
    pub fn bytes(&self) -> usize {
        self.area.len()
    }

    /// Whether datagrams received from the socket wait here to be split.
    pub fn pending(&self) -> bool {
        self.next < self.got
    }

    /// Receives up to [`SLOTS`] messages without blocking, once the ones before are split,
    /// deciding each one's fate from its source with `judge`. Returns how many arrived, 0
    /// when none is waiting.
    pub fn fill(
        &mut self,
        fd: RawFd,
        judge: impl Fn(&libc::sockaddr_storage, libc::socklen_t) -> Verdict,
    ) -> io::Result<usize> {
        debug_assert!(!self.pending());
        for (i, slot) in self.area.chunks_exact_mut(SLOT).enumerate() {
            self.iovs[i] = libc::iovec {
                iov_base: slot.as_mut_ptr().cast(),
                iov_len: slot.len(),
            };
            prepare_msghdr(
                &mut self.hdrs[i],
                (&mut self.names[i] as *mut libc::sockaddr_storage).cast(),
                std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t,
                &mut self.iovs[i],
                1,
            );
            let m = &mut self.hdrs[i].msg_hdr;
            m.msg_control = self.ctrls[i].as_mut_ptr().cast();
            m.msg_controllen = std::mem::size_of_val(&self.ctrls[i]);
        }
        // SAFETY: every header points at its live slot, address slot and control buffer, with
        // their true sizes; the kernel writes within those bounds.
        let got = unsafe { recvmmsg_nonblocking(fd, &mut self.hdrs) }?;
        for i in 0..got {
            let h = &self.hdrs[i];
            let verdict = if h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                Verdict::Truncated
            } else {
                judge(&self.names[i], h.msg_hdr.msg_namelen)
            };
            self.msgs[i] = Msg {
                len: (h.msg_len as usize).min(SLOT),
                // SAFETY: the header's control buffer and length are what the kernel left.
                segment: unsafe { gro_segment(&h.msg_hdr) },
                verdict,
            };
        }
        self.got = got;
        self.next = 0;
        self.at = 0;
        Ok(got)
    }

    /// The next datagram waiting to be split, or `None` when all are.
    pub fn next_datagram(&mut self) -> Option<Datagram<'_>> {
        if !self.pending() {
            return None;
        }
        let msg = self.msgs[self.next];
        let start = self.next * SLOT + self.at;
        let take = if msg.segment == 0 {
            msg.len
        } else {
            msg.segment.min(msg.len - self.at)
        };
        self.at += take;
        if self.at >= msg.len {
            self.next += 1;
            self.at = 0;
        }
        Some(Datagram {
            bytes: &self.area[start..start + take],
            verdict: msg.verdict,
            merged: msg.datagrams() > 1,
        })
    }
}

/// The datagrams' length a `UDP_GRO` cmsg gives for a received message, or 0 (none: the
/// message is one datagram).
///
/// # Safety
/// `m`'s control buffer and length are as `recvmmsg` left them, within a live buffer.
unsafe fn gro_segment(m: &libc::msghdr) -> usize {
    // SAFETY: the CMSG_* walk stays within the control buffer the caller vouches for; the
    // data of a UDP_GRO cmsg is an int, read unaligned.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(m);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_UDP
                && (*c).cmsg_type == libc::UDP_GRO
                && (*c).cmsg_len as usize >= libc::CMSG_LEN(4) as usize
            {
                let size = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<i32>());
                return usize::try_from(size).unwrap_or(0);
            }
            c = libc::CMSG_NXTHDR(m, c);
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    fn msg(len: usize, segment: usize) -> Msg {
        Msg {
            len,
            segment,
            verdict: Verdict::Keep,
        }
    }

    #[test]
    fn a_message_is_split_into_datagrams_of_its_segment_length_the_last_shorter() {
        assert_eq!(msg(100, 0).datagrams(), 1);
        assert_eq!(msg(100, 100).datagrams(), 1);
        assert_eq!(msg(100, 150).datagrams(), 1);
        assert_eq!(msg(3000, 1000).datagrams(), 3);
        assert_eq!(msg(3001, 1000).datagrams(), 4);
    }

    /// Two UDP GSO sends of runs, then a datagram alone, over loopback to a socket with
    /// `UDP_GRO`: each run arrives as one message and splits into the datagrams sent, the
    /// lone one comes as itself, and nothing is left.
    #[test]
    fn runs_sent_with_gso_arrive_merged_and_split_back_byte_exact() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut gro = GroRx::enable(rx.as_raw_fd()).unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.connect(rx.local_addr().unwrap()).unwrap();
        let dgram = |i: usize, len: usize| -> Vec<u8> { (0..len).map(|b| (b + i) as u8).collect() };
        let runs: [&[usize]; 3] = [&[1000, 1000, 1000, 300], &[200, 200], &[64]];
        let mut sent = Vec::new();
        for run in runs {
            let mut bytes = Vec::new();
            for &len in run {
                let d = dgram(sent.len(), len);
                bytes.extend_from_slice(&d);
                sent.push(d);
            }
            let segment = run[0] as i32;
            sys::setsockopt_int(tx.as_raw_fd(), libc::SOL_UDP, libc::UDP_SEGMENT, segment).unwrap();
            assert_eq!(tx.send(&bytes).unwrap(), bytes.len());
        }
        let mut got = Vec::new();
        let mut merged = 0;
        while got.len() < sent.len() {
            let n = gro
                .fill(rx.as_raw_fd(), |_, _| Verdict::Keep)
                .expect("recvmmsg");
            assert!(n > 0, "{} of {} datagrams", got.len(), sent.len());
            while let Some(d) = gro.next_datagram() {
                assert_eq!(d.verdict, Verdict::Keep);
                merged += usize::from(d.merged);
                got.push(d.bytes.to_vec());
            }
        }
        assert_eq!(got, sent);
        assert_eq!(
            merged, 6,
            "the two runs came merged, the lone datagram alone"
        );
        assert!(!gro.pending());
        assert_eq!(gro.fill(rx.as_raw_fd(), |_, _| Verdict::Keep).unwrap(), 0);
    }
}
