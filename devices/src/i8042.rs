//! Minimal i8042 keyboard controller: only what guests use to reboot.
//!
//! Linux (`reboot=k`) and many bare-metal guests reset the machine by writing command 0xFE
//! ("pulse reset line") to port 0x64; the VMM treats that as the end of the VM with status 0.
//! There is no keyboard: status and data read as 0 (output buffer empty, input buffer empty), so
//! a probing guest sees an idle controller and never waits on it.

use std::sync::Arc;

use vm_superio::{I8042Device, Trigger};

use crate::{BusDevice, ExitNotifier, ExitRequest};

/// First port of the range the VMM maps this device at (0x60..=0x64).
pub const I8042_BASE: u16 = 0x60;
/// Length of that range.
pub const I8042_LEN: u16 = 5;
/// Offset of the command/status port (0x64) within the range.
const COMMAND_OFFSET: u64 = 4;

struct ResetTrigger(Arc<ExitNotifier>);

impl Trigger for ResetTrigger {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        self.0.request(ExitRequest::Reset);
        Ok(())
    }
}

/// The i8042 device, spanning ports 0x60..=0x64.
pub struct I8042 {
    inner: I8042Device<ResetTrigger>,
}

impl I8042 {
    /// Creates the device; a reset command is reported through `exit`.
    pub fn new(exit: Arc<ExitNotifier>) -> Self {
        Self {
            inner: I8042Device::new(ResetTrigger(exit)),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let v = u8::try_from(offset).map_or(0, |o| self.inner.read(o));
        data.fill(v);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        // vm-superio's device expects the offset of the command port to be 4 (0x64 - 0x60).
        if data.len() == 1 && offset == COMMAND_OFFSET {
            let Ok(()) = self.inner.write(COMMAND_OFFSET as u8, data[0]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_requests_reset() {
        let n = Arc::new(ExitNotifier::new().unwrap());
        let mut d = I8042::new(n.clone());
        d.write(0, &[0xfe]);
        d.write(4, &[0xfe, 0xfe]);
        d.write(4, &[0x12]);
        assert_eq!(n.pending(), None);
        d.write(4, &[0xfe]);
        assert_eq!(n.pending(), Some(ExitRequest::Reset));
    }
}
