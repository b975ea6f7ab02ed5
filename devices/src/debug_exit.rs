//! Debug-exit port: lets a test or CI guest set the VMM's exit status.
//!
//! Semantics (ours, not QEMU's `isa-debug-exit`, which exits with `(V << 1) | 1`): a write of any
//! size whose first byte is `V` stops the VM and the VMM exits with status `V` exactly. Reads
//! return 0. The conventional port is [`DEBUG_EXIT_PORT`] (QEMU's default `iobase`).

use std::sync::Arc;

use crate::{BusDevice, ExitNotifier, ExitRequest};

/// Port the VMM maps the debug-exit device at.
pub const DEBUG_EXIT_PORT: u16 = 0xf4;

/// The debug-exit device (one port).
pub struct DebugExit {
    exit: Arc<ExitNotifier>,
}

impl DebugExit {
    /// Creates the device; writes are reported through `exit`.
    pub fn new(exit: Arc<ExitNotifier>) -> Self {
        Self { exit }
    }
}

impl BusDevice for DebugExit {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        if let Some(&v) = data.first() {
            self.exit.request(ExitRequest::DebugExit(v));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_reports_first_byte() {
        let n = Arc::new(ExitNotifier::new().unwrap());
        let mut d = DebugExit::new(n.clone());
        d.write(0, &[]);
        assert_eq!(n.pending(), None);
        d.write(0, &[0x31, 0xff, 0, 1]);
        assert_eq!(n.pending(), Some(ExitRequest::DebugExit(0x31)));
        let mut b = [0xaa; 4];
        d.read(3, &mut b);
        assert_eq!(b, [0; 4]);
    }
}
