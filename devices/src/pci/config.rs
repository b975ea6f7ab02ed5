//! A conventional 256-byte configuration space with per-bit write masks.

use super::CONFIG_REGS;

/// Configuration space contents plus, for each register, which bits the guest may change.
///
/// Read-only identity registers get a zero mask; a BAR of size `s` gets mask `!(s - 1)` over
/// its address bits, which is all BAR sizing needs (the guest writes all ones and reads back
/// the size mask).
#[derive(Clone, Debug)]
pub struct ConfigSpace {
    regs: [u32; CONFIG_REGS],
    wmask: [u32; CONFIG_REGS],
}

impl Default for ConfigSpace {
    fn default() -> Self {
        Self {
            regs: [0; CONFIG_REGS],
            wmask: [0; CONFIG_REGS],
        }
    }
}

impl ConfigSpace {
    /// A type-0 header with the given identity; everything else zero and read-only.
    pub fn new(vendor: u16, device: u16, class: u8, subclass: u8, prog_if: u8) -> Self {
        let mut c = Self::default();
        c.regs[0] = u32::from(vendor) | (u32::from(device) << 16);
        c.regs[2] =
            (u32::from(class) << 24) | (u32::from(subclass) << 16) | (u32::from(prog_if) << 8);
        c
    }

    /// Sets register `reg` and the bits of it the guest may write. Out-of-range is ignored.
    pub fn set(&mut self, reg: usize, value: u32, wmask: u32) {
        if let (Some(r), Some(m)) = (self.regs.get_mut(reg), self.wmask.get_mut(reg)) {
            *r = value;
            *m = wmask;
        }
    }

    /// Register `reg`, or all ones when out of range.
    pub fn read(&self, reg: usize) -> u32 {
        self.regs.get(reg).copied().unwrap_or(0xffff_ffff)
    }

    /// Applies a guest write of `data` at byte `offset` of `reg`, honouring the write mask.
    /// Bytes beyond the register and out-of-range registers are ignored.
    pub fn write(&mut self, reg: usize, offset: usize, data: &[u8]) {
        let (Some(r), Some(&m)) = (self.regs.get(reg), self.wmask.get(reg)) else {
            return;
        };
        let mut value = r.to_le_bytes();
        let mut mask = [0u8; 4];
        for (i, &b) in data.iter().enumerate() {
            let Some(pos) = offset.checked_add(i).filter(|&p| p < 4) else {
                break;
            };
            value[pos] = b;
            mask[pos] = 0xff;
        }
        let new = u32::from_le_bytes(value);
        let written = u32::from_le_bytes(mask) & m;
        self.regs[reg] = (*r & !written) | (new & written);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_are_honoured() {
        let mut c = ConfigSpace::new(0x1234, 0x5678, 6, 0, 0);
        c.set(4, 0, 0xffff_f000); // a 4 KiB memory BAR
        c.write(4, 0, &[0xff; 4]);
        assert_eq!(c.read(4), 0xffff_f000);
        c.write(0, 0, &[0; 4]);
        assert_eq!(c.read(0), 0x5678_1234);
        c.write(4, 3, &[0x12, 0x34, 0x56]);
        assert_eq!(c.read(4), 0x12ff_f000);
        c.write(usize::MAX, usize::MAX, &[1]);
        assert_eq!(c.read(999), 0xffff_ffff);
    }
}
