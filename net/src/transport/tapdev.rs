//! A tap device descriptor (`/dev/net/tun`, `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`).
//!
//! The header is always on, and the receive offloads the guest negotiated are mirrored here
//! (`TUNSETOFFLOAD`): with `gro=0` at most partial checksums (GUEST_CSUM), so the kernel
//! segments GSO frames before they reach us; with `gro=1` GSO frames too. Linux offers no
//! multi-packet I/O on a tap to user space, so one `read`/`write` per packet.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::sys::{self, cvt};
use super::vnet;
use super::{Frames, Offloads, PacketBatch, TransportError};

/// An open tap queue.
pub struct TapDev {
    fd: OwnedFd,
    ifname: String,
}

impl TapDev {
    /// Attaches to tap `ifname`, or creates a new `tapN` when `None` (it lives as long as the
    /// descriptor, like UML's). `multi_queue`: one queue of a multi-queue tap
    /// (`IFF_MULTI_QUEUE`), which the kernel refuses (EINVAL) on a tap made without it.
    pub fn open(ifname: Option<&str>, multi_queue: bool) -> io::Result<TapDev> {
        let path = c"/dev/net/tun";
        // SAFETY: a valid NUL-terminated path; open(2) returns a new descriptor or -1.
        let raw = cvt(unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_RDWR | libc::O_CLOEXEC | libc::O_NONBLOCK,
            )
        })?;
        // SAFETY: `raw` is a fresh descriptor owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: ifreq is a plain C struct; all-zero is valid.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        ifr.ifr_name = sys::ifname_bytes(ifname.unwrap_or("tap%d"))?;
        let mut flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
        if multi_queue {
            flags |= libc::IFF_MULTI_QUEUE;
        }
        ifr.ifr_ifru.ifru_flags = flags as i16;
        // SAFETY: TUNSETIFF reads and writes an ifreq, which `ifr` is, alive for the call.
        cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut ifr) })?;
        let hdr = vnet::HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads an int from the pointer, a live local.
        cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETVNETHDRSZ, &hdr) })?;
        let name: Vec<u8> = ifr
            .ifr_name
            .iter()
            .take_while(|c| **c != 0)
            .map(|c| *c as u8)
            .collect();
        let dev = TapDev {
            fd,
            ifname: String::from_utf8_lossy(&name).into_owned(),
        };
        dev.set_offloads(Offloads::default())?;
        Ok(dev)
    }

    /// The interface's name (the kernel's choice when we created it).
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// `TUNSETQUEUE`: attaches this queue to its multi-queue tap (the kernel then hashes flows
    /// onto it too) or detaches it (the kernel stops using it and frees what it held).
    pub fn set_attached(&self, attached: bool) -> io::Result<()> {
        // SAFETY: ifreq is a plain C struct; all-zero is valid.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        ifr.ifr_ifru.ifru_flags = if attached {
            libc::IFF_ATTACH_QUEUE
        } else {
            libc::IFF_DETACH_QUEUE
        } as i16;
        // SAFETY: TUNSETQUEUE reads an ifreq, which `ifr` is, alive for the call.
        cvt(unsafe { libc::ioctl(self.fd.as_raw_fd(), libc::TUNSETQUEUE, &mut ifr) })?;
        Ok(())
    }

    /// `TUNSETOFFLOAD`: which partial or GSO frames the kernel may hand us.
    pub fn set_offloads(&self, o: Offloads) -> io::Result<()> {
        let mut flags: libc::c_uint = 0;
        if o.csum {
            flags |= libc::TUN_F_CSUM;
            if o.tso4 {
                flags |= libc::TUN_F_TSO4;
            }
            if o.tso6 {
                flags |= libc::TUN_F_TSO6;
            }
            if o.ecn && (o.tso4 || o.tso6) {
                flags |= libc::TUN_F_TSO_ECN;
            }
        }
        // SAFETY: TUNSETOFFLOAD takes its argument by value; no memory is passed.
        cvt(unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                flags as libc::c_ulong,
            )
        })?;
        Ok(())
    }

    /// Reads up to `max` frames; returns how many (0: none waiting). Each `read` returns one
    /// whole frame; one larger than its buffer is truncated by the kernel, which we detect by a
    /// full buffer and drop (`dropped` counts it).
    pub fn recv(
        &self,
        batch: &mut PacketBatch,
        max: usize,
        dropped: &mut u64,
    ) -> io::Result<usize> {
        let mut n = 0;
        let max = max.min(batch.depth());
        while n < max {
            let buf = &mut batch.bufs_mut()[n];
            let cap = buf.capacity();
            match sys::read(self.fd(), buf.space()) {
                Ok(len) if len >= cap => *dropped += 1,
                Ok(len) => {
                    buf.set_len(len);
                    n += 1;
                }
                Err(e) if sys::would_block(&e) => break,
                Err(e) => {
                    batch.set_count(n);
                    return if n > 0 { Ok(n) } else { Err(e) };
                }
            }
        }
        batch.set_count(n);
        Ok(n)
    }

    /// Reads one frame into `iovs` (see [`crate::transport::Transport::recv_into`]): its
    /// whole length, or `None` when none waits.
    ///
    /// # Safety
    /// Each iovec must describe memory the kernel may write for the whole call.
    pub unsafe fn recv_into(&self, iovs: &[libc::iovec]) -> io::Result<Option<usize>> {
        // SAFETY: the caller vouches for the iovecs.
        match unsafe { sys::readv(self.fd(), iovs) } {
            Ok(len) => Ok(Some(len)),
            Err(e) if sys::would_block(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes the frames for transport `name`; returns how many were taken (fewer only when
    /// the tap would block). A frame the kernel refuses (malformed header, too big) is dropped
    /// and counted.
    pub fn send<F: Frames + ?Sized>(
        &self,
        name: &'static str,
        batch: &F,
        dropped: &mut u64,
    ) -> Result<usize, TransportError> {
        let io = |source| TransportError::Io {
            transport: name,
            op: "write",
            source,
        };
        for i in 0..batch.count() {
            match sys::write_frame(self.fd(), batch, i) {
                Ok(_) => {}
                Err(e) if sys::would_block(&e) => return Ok(i),
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINVAL | libc::EMSGSIZE | libc::EIO | libc::EFAULT)
                    ) =>
                {
                    *dropped += 1
                }
                Err(e) => return Err(io(e)),
            }
        }
        Ok(batch.count())
    }
}
