//! Port-I/O and MMIO buses: address ranges mapped to devices.
//!
//! The vCPU loop hands every PIO/MMIO exit to [`Bus::read`]/[`Bus::write`]. Accesses nobody
//! claims read as all ones (what an empty ISA/PCI bus returns) and writes vanish, so probing
//! guests carry on.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use vmm_devices::BusDevice;

/// A device shared between the bus and whoever else drives it (e.g. the console input).
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Errors inserting a device.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// Zero-length or wrapping range.
    #[error("invalid bus range {base:#x}+{len:#x}")]
    BadRange {
        /// Start.
        base: u64,
        /// Length.
        len: u64,
    },
    /// The range overlaps one already mapped.
    #[error("bus range {base:#x}+{len:#x} overlaps an existing device")]
    Overlap {
        /// Start.
        base: u64,
        /// Length.
        len: u64,
    },
}

/// One address space (PIO or MMIO).
#[derive(Default)]
pub struct Bus {
    devices: BTreeMap<u64, (u64, SharedDevice)>,
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Maps `dev` at `base..base + len`.
    pub fn insert(&mut self, base: u64, len: u64, dev: SharedDevice) -> Result<(), Error> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(Error::BadRange { base, len })?;
        let before = self.devices.range(..end).next_back();
        if let Some((&b, &(l, _))) = before {
            if b + l > base {
                return Err(Error::Overlap { base, len });
            }
        }
        self.devices.insert(base, (len, dev));
        Ok(())
    }

    fn find(&self, addr: u64) -> Option<(u64, &SharedDevice)> {
        let (&base, (len, dev)) = self.devices.range(..=addr).next_back()?;
        (addr - base < *len).then_some((addr - base, dev))
    }

    /// Guest read at `addr`; returns false (and fills all ones) if no device claims it.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr) {
            Some((offset, dev)) => {
                dev.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .read(offset, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Guest write at `addr`; returns false if no device claims it.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr) {
            Some((offset, dev)) => {
                dev.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .write(offset, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Recorder(Vec<(u64, Vec<u8>)>);
    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn ranges_dispatch_and_overlaps_are_refused() {
        let mut bus = Bus::new();
        let dev = Arc::new(Mutex::new(Recorder(vec![])));
        bus.insert(0x10, 8, dev.clone()).unwrap();
        assert_eq!(
            bus.insert(0x17, 1, dev.clone()),
            Err(Error::Overlap { base: 0x17, len: 1 })
        );
        assert_eq!(
            bus.insert(0x8, 9, dev.clone()),
            Err(Error::Overlap { base: 0x8, len: 9 })
        );
        assert!(bus.insert(u64::MAX, 2, dev.clone()).is_err());
        assert!(bus.insert(0, 0, dev.clone()).is_err());
        bus.insert(0x18, 1, dev.clone()).unwrap();
        let mut b = [0u8; 2];
        assert!(bus.read(0x13, &mut b));
        assert_eq!(b, [3, 3]);
        assert!(!bus.read(0x19, &mut b));
        assert_eq!(b, [0xff, 0xff]);
        assert!(bus.write(0x17, &[9]));
        assert!(!bus.write(0xf, &[9]));
        assert_eq!(dev.lock().unwrap().0, vec![(7, vec![9])]);
    }
}
