//! The fuzz input read as a stream of values, for targets that build structures from it.
// Each target uses the readers it needs.
#![allow(dead_code)]

/// Takes bytes off the input; zeros once it runs out.
pub struct Input<'a>(pub &'a [u8]);

impl Input<'_> {
    pub fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    pub fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | u64::from(self.u32()) << 32
    }
    /// `len` payload bytes: the input's, then a counting pattern.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|i| self.u8() ^ i as u8).collect()
    }
}
