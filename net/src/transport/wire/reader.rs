//! Bounds-checked big-endian reads over a received datagram: every read either yields the
//! field or [`WireError::Truncated`] naming it, so no input can index out of range.

use super::{WireError, ETH_HLEN};

pub(super) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(super) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn take<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], WireError> {
        let truncated = WireError::Truncated {
            field,
            need: self.pos.saturating_add(N),
            got: self.buf.len(),
        };
        let bytes = self
            .buf
            .get(self.pos..)
            .and_then(|rest| rest.first_chunk::<N>())
            .ok_or(truncated)?;
        self.pos += N;
        Ok(*bytes)
    }

    pub(super) fn u16(&mut self, field: &'static str) -> Result<u16, WireError> {
        self.take(field).map(u16::from_be_bytes)
    }

    pub(super) fn u32(&mut self, field: &'static str) -> Result<u32, WireError> {
        self.take(field).map(u32::from_be_bytes)
    }

    pub(super) fn u64(&mut self, field: &'static str) -> Result<u64, WireError> {
        self.take(field).map(u64::from_be_bytes)
    }

    /// What is left: the inner Ethernet frame, if it is at least an Ethernet header long.
    pub(super) fn frame(self) -> Result<&'a [u8], WireError> {
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        if rest.len() < ETH_HLEN {
            return Err(WireError::TooShort { got: rest.len() });
        }
        Ok(rest)
    }
}
