//! The host bridge at 00:00.0: present so guests find a PC-like PCI root, otherwise inert.

use super::{ConfigSpace, PciDevice};

/// Red Hat, Inc. (the vendor ID QEMU's generic devices use).
pub const VENDOR_ID: u16 = 0x1b36;
/// "QEMU PCIe Host bridge": a generic ID Linux binds no quirks to.
pub const DEVICE_ID: u16 = 0x0008;

/// A host bridge: identity registers only; the command register is writable so guests that
/// toggle its enable bits read back what they wrote.
pub struct HostBridge {
    config: ConfigSpace,
}

impl Default for HostBridge {
    fn default() -> Self {
        Self::new()
    }
}

impl HostBridge {
    /// The bridge (class 06, subclass 00: host bridge).
    pub fn new() -> Self {
        let mut config = ConfigSpace::new(VENDOR_ID, DEVICE_ID, 0x06, 0x00, 0x00);
        // Command: I/O space, memory space, bus master are writable; status reads zero.
        config.set(1, 0, 0x0000_0007);
        Self { config }
    }
}

impl PciDevice for HostBridge {
    fn read_config(&mut self, reg: usize) -> u32 {
        self.config.read(reg)
    }

    fn write_config(&mut self, reg: usize, offset: usize, data: &[u8]) {
        self.config.write(reg, offset, data);
    }
}
