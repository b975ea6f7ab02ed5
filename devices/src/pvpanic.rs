//! pvpanic on PCI (1b36:0011, QEMU's `pvpanic-pci`, Linux's `pvpanic-pci` driver): the guest
//! kernel's panic notifier writes "panicked" to a one-byte register, and the VMM ends the VM
//! as a failure, whatever the kernel's command line says about rebooting.
//!
//! Why: with the usual `panic=1 reboot=k`, a panicking kernel reboots through the i8042, which
//! by itself looks like a clean exit (status 0); with no `panic=` it spins forever. Either
//! way a CI run must fail, at once.
//!
//! BAR 0 (32-bit memory, [`BAR_SIZE`] bytes, assigned by the VMM and fixed): reading byte 0
//! gives the events the device supports (only [`PVPANIC_PANICKED`]); writing byte 0 reports
//! events. Other offsets read as zero and ignore writes.

use std::sync::Arc;

use crate::pci::{ConfigSpace, PciDevice};
use crate::{BusDevice, ExitNotifier, ExitRequest};

/// Red Hat's PCI vendor ID (QEMU's devices).
pub const VENDOR_ID: u16 = 0x1b36;
/// pvpanic's device ID.
pub const DEVICE_ID: u16 = 0x0011;
/// Size of BAR 0: the smallest page, so the BAR never shares a page with another device.
pub const BAR_SIZE: u64 = 0x1000;
/// Event bit: the guest kernel panicked.
pub const PVPANIC_PANICKED: u8 = 1 << 0;
/// Event bit: a crash kernel is loaded and will run (not offered: we have no kdump story, and
/// a guest that only reports this would go on running).
pub const PVPANIC_CRASH_LOADED: u8 = 1 << 1;

/// PCI class "system peripheral, other" (what QEMU's pvpanic-pci reports).
const CLASS_SYSTEM: u8 = 0x08;
const SUBCLASS_OTHER: u8 = 0x80;
const REG_COMMAND: usize = 1;
const REG_BAR0: usize = 4;
/// Command register bits the guest may set: memory space, bus master.
const COMMAND_WRITABLE: u32 = 0x0006;
const COMMAND_MEMORY: u32 = 0x2;

/// The pvpanic PCI function and its BAR.
pub struct PvPanic {
    config: ConfigSpace,
    exit: Arc<ExitNotifier>,
}

impl PvPanic {
    /// The device with BAR 0 at `bar` (a 32-bit address aligned to [`BAR_SIZE`]); a panic
    /// event is reported through `exit` as [`ExitRequest::GuestPanic`].
    pub fn new(bar: u32, exit: Arc<ExitNotifier>) -> Self {
        let mut config = ConfigSpace::new(VENDOR_ID, DEVICE_ID, CLASS_SYSTEM, SUBCLASS_OTHER, 0);
        config.set(REG_COMMAND, 0, COMMAND_WRITABLE);
        config.set(
            REG_BAR0,
            bar & !(BAR_SIZE as u32 - 1),
            !(BAR_SIZE as u32 - 1),
        );
        Self { config, exit }
    }

    fn memory_enabled(&self) -> bool {
        self.config.read(REG_COMMAND) & COMMAND_MEMORY != 0
    }
}

impl PciDevice for PvPanic {
    fn read_config(&mut self, reg: usize) -> u32 {
        self.config.read(reg)
    }

    fn write_config(&mut self, reg: usize, offset: usize, data: &[u8]) {
        self.config.write(reg, offset, data);
    }
}

impl BusDevice for PvPanic {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset == 0 && self.memory_enabled() {
            if let Some(b) = data.first_mut() {
                *b = PVPANIC_PANICKED;
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset != 0 || !self.memory_enabled() {
            return;
        }
        if data.first().is_some_and(|&b| b & PVPANIC_PANICKED != 0) {
            log::debug!("pvpanic: the guest reported a panic");
            self.exit.request(ExitRequest::GuestPanic);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device() -> (PvPanic, Arc<ExitNotifier>) {
        let exit = Arc::new(ExitNotifier::new().unwrap());
        (PvPanic::new(0xc000_1000, exit.clone()), exit)
    }

    #[test]
    fn identity_and_bar_sizing() {
        let (mut d, _) = device();
        assert_eq!(d.read_config(0), 0x0011_1b36);
        assert_eq!(d.read_config(2) >> 16, 0x0880);
        assert_eq!(d.read_config(REG_BAR0), 0xc000_1000);
        d.write_config(REG_BAR0, 0, &[0xff; 4]);
        assert_eq!(
            d.read_config(REG_BAR0),
            0xffff_f000,
            "size 4 KiB, 32-bit memory"
        );
    }

    /// Linux's driver: enable memory decoding, read the supported events, write PANICKED.
    #[test]
    fn a_panic_event_ends_the_vm_as_a_panic() {
        let (mut d, exit) = device();
        let mut b = [0xaa];
        d.read(0, &mut b);
        assert_eq!(
            b,
            [0],
            "nothing decodes before the command register enables it"
        );
        d.write(0, &[PVPANIC_PANICKED]);
        assert_eq!(exit.pending(), None);
        d.write_config(REG_COMMAND, 0, &[0x06, 0]);
        d.read(0, &mut b);
        assert_eq!(b, [PVPANIC_PANICKED]);
        d.write(0, &[PVPANIC_CRASH_LOADED]);
        d.write(1, &[PVPANIC_PANICKED]);
        assert_eq!(exit.pending(), None, "only PANICKED at offset 0 counts");
        d.write(0, &[PVPANIC_PANICKED | PVPANIC_CRASH_LOADED]);
        assert_eq!(exit.pending(), Some(ExitRequest::GuestPanic));
    }

    #[test]
    fn any_access_is_harmless() {
        let (mut d, _) = device();
        d.write_config(REG_COMMAND, 0, &[0x06, 0]);
        for offset in [0u64, 1, 7, 0xfff, 0x1000, u64::MAX] {
            for len in [0usize, 1, 2, 4, 8, 16] {
                let mut buf = vec![0x55; len];
                d.read(offset, &mut buf);
                d.write(offset, &buf);
            }
        }
        for reg in 0..80 {
            d.write_config(reg, 3, &[0xff, 0xff, 0xff]);
            let _ = d.read_config(reg);
        }
    }
}
