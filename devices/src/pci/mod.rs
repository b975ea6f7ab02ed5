//! PCI: configuration mechanism #1 (ports 0xcf8/0xcfc), bus 0, and a host bridge at 00:00.0.
//!
//! This is where virtio-pci devices plug in: implement [`PciDevice`] (usually on top of
//! [`ConfigSpace`], whose write masks also give BAR sizing for free) and call
//! [`PciBus::add_device`]. Only function 0 of each slot is modelled: functions 1..7 and other
//! buses read as absent (all ones), which is what enumeration expects.
//!
//! Everything here takes guest-controlled values: no access, however sized or aligned, panics.

mod config;
mod host_bridge;

use std::sync::{Arc, Mutex};

pub use config::ConfigSpace;
pub use host_bridge::HostBridge;

use crate::BusDevice;

/// First port of configuration mechanism #1 (CONFIG_ADDRESS at 0xcf8, CONFIG_DATA at 0xcfc).
pub const PCI_CONFIG_IO_BASE: u16 = 0xcf8;
/// Ports spanned by mechanism #1.
pub const PCI_CONFIG_IO_LEN: u16 = 8;
/// Slots (devices) on a bus.
pub const PCI_SLOTS: usize = 32;
/// 32-bit registers in a conventional (256-byte) configuration space.
pub const CONFIG_REGS: usize = 64;

/// A PCI function as seen through configuration space.
pub trait PciDevice: Send {
    /// Reads 32-bit register `reg` (0..[`CONFIG_REGS`]).
    fn read_config(&mut self, reg: usize) -> u32;
    /// Writes `data` (1 to 4 bytes, `offset + data.len() <= 4`) at byte `offset` of register
    /// `reg` (0..[`CONFIG_REGS`]).
    fn write_config(&mut self, reg: usize, offset: usize, data: &[u8]);
}

/// Errors when populating the bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PciError {
    /// All 32 slots are taken.
    #[error("PCI bus 0 is full: all {PCI_SLOTS} slots are in use")]
    BusFull,
    /// The slot asked for is out of range or taken.
    #[error("PCI slot {0} is out of range or already in use")]
    SlotUnavailable(usize),
}

/// A shared PCI function.
pub type SharedPciDevice = Arc<Mutex<dyn PciDevice>>;

/// PCI bus 0: up to 32 single-function devices.
pub struct PciBus {
    slots: Vec<Option<SharedPciDevice>>,
}

impl Default for PciBus {
    fn default() -> Self {
        Self::new()
    }
}

impl PciBus {
    /// An empty bus (no host bridge: see [`PciBus::with_host_bridge`]).
    pub fn new() -> Self {
        Self {
            slots: vec![None; PCI_SLOTS],
        }
    }

    /// A bus with a [`HostBridge`] at 00:00.0, as PC guests expect.
    pub fn with_host_bridge() -> Self {
        let mut bus = Self::new();
        bus.slots[0] = Some(Arc::new(Mutex::new(HostBridge::new())));
        bus
    }

    /// Puts `dev` in the first free slot and returns its device number.
    pub fn add_device(&mut self, dev: SharedPciDevice) -> Result<usize, PciError> {
        let slot = self
            .slots
            .iter()
            .position(Option::is_none)
            .ok_or(PciError::BusFull)?;
        self.slots[slot] = Some(dev);
        Ok(slot)
    }

    /// Puts `dev` in slot `slot`.
    pub fn add_device_at(&mut self, slot: usize, dev: SharedPciDevice) -> Result<(), PciError> {
        match self.slots.get_mut(slot) {
            Some(s @ None) => {
                *s = Some(dev);
                Ok(())
            }
            _ => Err(PciError::SlotUnavailable(slot)),
        }
    }

    fn device(&self, slot: usize) -> Option<&SharedPciDevice> {
        self.slots.get(slot).and_then(Option::as_ref)
    }
}

/// Configuration mechanism #1: CONFIG_ADDRESS (0xcf8, 32-bit) selects bus/device/function/
/// register, CONFIG_DATA (0xcfc..0xcff) accesses it.
pub struct PciConfigIo {
    bus: Arc<Mutex<PciBus>>,
    address: u32,
}

/// Bits of CONFIG_ADDRESS that hold state: enable (31), bus (23:16), device (15:11),
/// function (10:8), register (7:2). Bits 30:24 and 1:0 are reserved and read as zero.
const ADDRESS_MASK: u32 = 0x80ff_fffc;
const ADDRESS_ENABLE: u32 = 0x8000_0000;

impl PciConfigIo {
    /// The port device for `bus`.
    pub fn new(bus: Arc<Mutex<PciBus>>) -> Self {
        Self { bus, address: 0 }
    }

    /// The function the current address selects, if it exists: (slot, register).
    fn selected(&self) -> Option<(SharedPciDevice, usize)> {
        let a = self.address;
        let bus = (a >> 16) & 0xff;
        let slot = ((a >> 11) & 0x1f) as usize;
        let function = (a >> 8) & 0x7;
        let reg = ((a >> 2) & 0x3f) as usize;
        if a & ADDRESS_ENABLE == 0 || bus != 0 || function != 0 {
            return None;
        }
        let pci = self.bus.lock().unwrap_or_else(|p| p.into_inner());
        pci.device(slot).map(|d| (d.clone(), reg))
    }

    fn read_data(&self, offset: usize, data: &mut [u8]) {
        data.fill(0xff);
        let Some((dev, reg)) = self.selected() else {
            return;
        };
        let value = dev
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .read_config(reg)
            .to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            if let Some(v) = offset.checked_add(i).and_then(|o| value.get(o)) {
                *b = *v;
            }
        }
    }

    fn write_data(&self, offset: usize, data: &[u8]) {
        if offset >= 4 || data.is_empty() {
            return;
        }
        let Some((dev, reg)) = self.selected() else {
            return;
        };
        // Bytes past the end of the 32-bit register go nowhere.
        let len = data.len().min(4 - offset);
        dev.lock()
            .unwrap_or_else(|p| p.into_inner())
            .write_config(reg, offset, &data[..len]);
    }
}

impl BusDevice for PciConfigIo {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match offset {
            0 if data.len() == 4 => data.copy_from_slice(&self.address.to_le_bytes()),
            4..=7 => self.read_data((offset - 4) as usize, data),
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data) {
            // Only a 32-bit write latches the address: byte writes to 0xcf8..0xcfb are other
            // chipset registers on real hardware (0xcf9 is the reset control register).
            (0, &[a, b, c, d]) => self.address = u32::from_le_bytes([a, b, c, d]) & ADDRESS_MASK,
            (4..=7, _) => self.write_data((offset - 4) as usize, data),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_io() -> PciConfigIo {
        PciConfigIo::new(Arc::new(Mutex::new(PciBus::with_host_bridge())))
    }

    fn read32(io: &mut PciConfigIo, slot: u32, function: u32, reg: u32) -> u32 {
        let addr = ADDRESS_ENABLE | (slot << 11) | (function << 8) | (reg << 2);
        io.write(0, &addr.to_le_bytes());
        let mut b = [0; 4];
        io.read(4, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn enumeration_sees_only_the_host_bridge() {
        let mut io = config_io();
        let id = read32(&mut io, 0, 0, 0);
        assert_eq!(id & 0xffff, u32::from(host_bridge::VENDOR_ID));
        assert_eq!(id >> 16, u32::from(host_bridge::DEVICE_ID));
        assert_eq!(read32(&mut io, 0, 0, 2) >> 16, 0x0600, "class: host bridge");
        for slot in 1..32 {
            assert_eq!(read32(&mut io, slot, 0, 0), 0xffff_ffff);
        }
        assert_eq!(read32(&mut io, 0, 1, 0), 0xffff_ffff);
        // 16-bit read of the device ID at 0xcfe.
        io.write(0, &ADDRESS_ENABLE.to_le_bytes());
        let mut w = [0; 2];
        io.read(6, &mut w);
        assert_eq!(u16::from_le_bytes(w), host_bridge::DEVICE_ID);
        // Disabled address: all ones.
        io.write(0, &0u32.to_le_bytes());
        let mut b = [0; 4];
        io.read(4, &mut b);
        assert_eq!(b, [0xff; 4]);
    }

    #[test]
    fn address_register_round_trips_masked() {
        let mut io = config_io();
        io.write(0, &0xffff_ffffu32.to_le_bytes());
        let mut b = [0; 4];
        io.read(0, &mut b);
        assert_eq!(u32::from_le_bytes(b), ADDRESS_MASK);
        // A byte write does not change it.
        io.write(1, &[0]);
        io.read(0, &mut b);
        assert_eq!(u32::from_le_bytes(b), ADDRESS_MASK);
    }

    #[test]
    fn slots_fill_and_run_out() {
        let mut bus = PciBus::with_host_bridge();
        for expect in 1..PCI_SLOTS {
            let got = bus
                .add_device(Arc::new(Mutex::new(HostBridge::new())))
                .unwrap();
            assert_eq!(got, expect);
        }
        assert_eq!(
            bus.add_device(Arc::new(Mutex::new(HostBridge::new()))),
            Err(PciError::BusFull)
        );
        assert_eq!(
            bus.add_device_at(99, Arc::new(Mutex::new(HostBridge::new()))),
            Err(PciError::SlotUnavailable(99))
        );
    }

    #[test]
    fn garbage_never_panics_and_ids_survive() {
        let mut io = config_io();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..50_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 10) as usize;
            let data: Vec<u8> = x.to_le_bytes().iter().cycle().take(len).copied().collect();
            let offset = (x >> 40) % 12;
            if x & 1 == 0 {
                // Aim most writes at the host bridge's config space.
                let reg = ((x >> 20) & 0x3f) as u32;
                io.write(0, &(ADDRESS_ENABLE | (reg << 2)).to_le_bytes());
            }
            io.write(offset, &data);
            let mut buf = vec![0u8; len];
            io.read(offset, &mut buf);
        }
        let id = read32(&mut io, 0, 0, 0);
        assert_eq!(id & 0xffff, u32::from(host_bridge::VENDOR_ID));
    }
}
