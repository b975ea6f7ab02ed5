//! Frames handed to a transport as gather lists: pieces of memory the caller owns (the
//! guest's transmit buffers), sent with one `sendmmsg`/`writev` without being copied into a
//! [`PacketBatch`] first.
//!
//! A frame is its transport header (a copy of the 10-byte `virtio_net_hdr`, held here: the
//! guest's own header stays out of the kernel's reach, so what was checked is what is sent),
//! then the frame's pieces in order. A small frame (up to [`INLINE_FRAME`] bytes) is copied
//! here instead, behind its header, and sent as one piece: for it a second iovec costs more
//! than the copy (Linux's vhost-net copies below 256 bytes for the same reason). The batch is
//! filled, sent and cleared within one call of the datapath: its pointers into guest memory
//! never outlive the memory guard that made them.

use super::vnet;
use super::PacketBatch;

/// Pieces one frame may have in a gather list: a Linux guest uses at most 19
/// (MAX_SKB_FRAGS, the header, the linear part); a longer chain is copied instead.
pub const MAX_FRAME_PIECES: usize = 64;

/// The longest frame copied into the batch rather than pointed at.
pub const INLINE_FRAME: usize = 256;

/// Frames to send: a [`PacketBatch`]'s buffers (one piece each) or a [`GatherBatch`]'s lists.
/// What the transports' send paths (`sendmmsg`, `writev`) are written against.
pub trait Frames {
    /// How many frames there are.
    fn count(&self) -> usize;

    /// Frame `i`'s pieces, as an iovec array and its length. A frame of one piece may be
    /// described in `one`, which the caller keeps alive with the result.
    fn iov(&self, i: usize, one: &mut libc::iovec) -> (*const libc::iovec, usize);
}

impl Frames for PacketBatch {
    fn count(&self) -> usize {
        PacketBatch::count(self)
    }

    fn iov(&self, i: usize, one: &mut libc::iovec) -> (*const libc::iovec, usize) {
        let data = self.packets()[i].data();
        *one = libc::iovec {
            iov_base: data.as_ptr() as *mut libc::c_void,
            iov_len: data.len(),
        };
        (one as *const libc::iovec, 1)
    }
}

/// Up to `depth` frames as gather lists, with room for `pieces` pieces in all; allocated once
/// per datapath.
pub struct GatherBatch {
    iovs: Vec<libc::iovec>,
    /// Each frame's first piece in `iovs`, and its piece count.
    frames: Vec<(usize, usize)>,
    /// Each frame's header copy (when it has one), then, for a frame sent inline, up to
    /// [`INLINE_FRAME`] bytes of it. Never reallocated, so the pointers to its elements stay
    /// valid.
    inline: Box<[[u8; vnet::HDR_LEN + INLINE_FRAME]]>,
    /// Bytes of the open frame's inline copy so far.
    inline_len: usize,
    /// The frame being built: its first piece.
    open: Option<usize>,
}

// SAFETY: the raw pointers inside point into this struct's own header array and into memory
// whose validity the callers of `push` vouch for until `clear`; the struct never dereferences
// them itself, so moving it to another thread is sound.
unsafe impl Send for GatherBatch {}

/// Why a piece or frame did not fit the batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Full;

impl GatherBatch {
    pub fn new(depth: usize, pieces: usize) -> GatherBatch {
        let depth = depth.max(1);
        GatherBatch {
            iovs: Vec::with_capacity(pieces.max(depth)),
            frames: Vec::with_capacity(depth),
            inline: vec![[0; vnet::HDR_LEN + INLINE_FRAME]; depth].into_boxed_slice(),
            inline_len: 0,
            open: None,
        }
    }

    /// Bytes a batch of `depth` frames and `pieces` pieces allocates: its iovecs, header
    /// copies, inline copies and frame index.
    pub fn footprint(depth: usize, pieces: usize) -> usize {
        let depth = depth.max(1);
        pieces.max(depth) * std::mem::size_of::<libc::iovec>()
            + depth * (vnet::HDR_LEN + INLINE_FRAME)
            + depth * std::mem::size_of::<(usize, usize)>()
    }

    /// How many frames the batch can hold.
    pub fn depth(&self) -> usize {
        self.inline.len()
    }

    /// Forgets every frame (and every pointer the batch held).
    pub fn clear(&mut self) {
        self.iovs.clear();
        self.frames.clear();
        self.open = None;
    }

    /// Starts a frame; with `hdr`, its first piece is a copy of it. An unfinished frame is
    /// forgotten first.
    pub fn begin(&mut self, hdr: Option<&[u8; vnet::HDR_LEN]>) -> Result<(), Full> {
        self.abandon();
        let i = self.frames.len();
        if i == self.depth() || self.iovs.len() == self.iovs.capacity() {
            return Err(Full);
        }
        self.open = Some(self.iovs.len());
        self.inline_len = 0;
        if let Some(h) = hdr {
            self.inline[i][..vnet::HDR_LEN].copy_from_slice(h);
            self.inline_len = vnet::HDR_LEN;
            self.iovs.push(libc::iovec {
                iov_base: self.inline[i].as_mut_ptr().cast(),
                iov_len: vnet::HDR_LEN,
            });
        }
        Ok(())
    }

    /// Adds `len` bytes at `ptr` to the frame being built.
    ///
    /// # Safety
    /// The `len` bytes at `ptr` must stay mapped and readable until [`GatherBatch::clear`]
    /// (or the batch is dropped).
    pub unsafe fn push(&mut self, ptr: *const u8, len: usize) -> Result<(), Full> {
        if self.open.is_none() || self.iovs.len() == self.iovs.capacity() {
            return Err(Full);
        }
        self.iovs.push(libc::iovec {
            iov_base: ptr as *mut libc::c_void,
            iov_len: len,
        });
        Ok(())
    }

    /// Where the open frame's next bytes go when it is copied inline (empty once full, or
    /// when no frame is open); [`GatherBatch::copied`] says how many were written.
    pub fn inline_space(&mut self) -> &mut [u8] {
        match self.open {
            Some(_) => &mut self.inline[self.frames.len()][self.inline_len..],
            None => &mut [],
        }
    }

    /// `n` more bytes of the open frame were written to [`GatherBatch::inline_space`].
    pub fn copied(&mut self, n: usize) {
        self.inline_len = (self.inline_len + n).min(vnet::HDR_LEN + INLINE_FRAME);
    }

    /// Ends the frame being built as its inline copy (header and bytes), one piece: its
    /// pieces are forgotten.
    pub fn finish_inline(&mut self) {
        if let Some(first) = self.open.take() {
            let i = self.frames.len();
            self.iovs.truncate(first);
            self.iovs.push(libc::iovec {
                iov_base: self.inline[i].as_mut_ptr().cast(),
                iov_len: self.inline_len,
            });
            self.frames.push((first, 1));
        }
    }

    /// Ends the frame being built: it is sent with the others.
    pub fn finish(&mut self) {
        if let Some(first) = self.open.take() {
            self.frames.push((first, self.iovs.len() - first));
        }
    }

    /// Forgets the frame being built, if any.
    pub fn abandon(&mut self) {
        if let Some(first) = self.open.take() {
            self.iovs.truncate(first);
        }
    }

    /// Bytes of frame `i`, header included.
    pub fn frame_len(&self, i: usize) -> usize {
        let (first, n) = self.frames[i];
        self.iovs[first..first + n].iter().map(|v| v.iov_len).sum()
    }
}

impl Frames for GatherBatch {
    fn count(&self) -> usize {
        self.frames.len()
    }

    fn iov(&self, i: usize, _one: &mut libc::iovec) -> (*const libc::iovec, usize) {
        let (first, n) = self.frames[i];
        (self.iovs[first..].as_ptr(), n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(f: &GatherBatch, i: usize) -> Vec<u8> {
        let mut one = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        let (p, n) = f.iov(i, &mut one);
        // SAFETY: the test's pieces are live slices and the header copies are the batch's.
        let iovs = unsafe { std::slice::from_raw_parts(p, n) };
        iovs.iter()
            .flat_map(|v| {
                // SAFETY: as above.
                unsafe { std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len) }
            })
            .copied()
            .collect()
    }

    #[test]
    fn frames_are_their_header_copy_then_their_pieces() {
        let a = [1u8, 2, 3];
        let b = [4u8, 5];
        let mut f = GatherBatch::new(2, 8);
        {
            // The header is copied: the original can go.
            let hdr = [9u8; vnet::HDR_LEN];
            f.begin(Some(&hdr)).unwrap();
        }
        // SAFETY: `a` and `b` outlive the batch's use below.
        unsafe {
            f.push(a.as_ptr(), a.len()).unwrap();
            f.push(b.as_ptr(), b.len()).unwrap();
        }
        f.finish();
        f.begin(None).unwrap();
        // SAFETY: as above.
        unsafe { f.push(b.as_ptr(), 1).unwrap() };
        f.finish();
        assert_eq!(Frames::count(&f), 2);
        let mut want = vec![9u8; vnet::HDR_LEN];
        want.extend([1, 2, 3, 4, 5]);
        assert_eq!(bytes(&f, 0), want);
        assert_eq!(f.frame_len(0), vnet::HDR_LEN + 5);
        assert_eq!(bytes(&f, 1), [4]);
        // Full: no third frame.
        assert_eq!(f.begin(None), Err(Full));
        f.clear();
        assert_eq!(Frames::count(&f), 0);
    }

    #[test]
    fn an_abandoned_frame_leaves_nothing_and_pieces_are_bounded() {
        let a = [7u8; 4];
        let mut f = GatherBatch::new(4, 3);
        // No frame open: no piece.
        // SAFETY: `a` outlives the batch's use.
        assert_eq!(unsafe { f.push(a.as_ptr(), 4) }, Err(Full));
        f.begin(None).unwrap();
        // SAFETY: as above.
        unsafe {
            f.push(a.as_ptr(), 4).unwrap();
            f.push(a.as_ptr(), 4).unwrap();
        }
        f.abandon();
        assert_eq!(Frames::count(&f), 0);
        f.begin(None).unwrap();
        // SAFETY: as above.
        unsafe {
            for _ in 0..4 {
                let _ = f.push(a.as_ptr(), 1);
            }
        }
        f.finish();
        // Four pieces were offered, the batch had room for 4 iovecs (at least the depth).
        assert_eq!(bytes(&f, 0).len(), 4);
        // SAFETY: as above.
        assert_eq!(unsafe { f.push(a.as_ptr(), 1) }, Err(Full));
    }
}
