//! Devices of the VMM: emulated ones, and the vhost-user net frontend.
//!
//! Every device here is driven by guest-controlled accesses, so each one accepts any offset, any
//! access size and any value without panicking: unknown registers read as all-ones (what an
//! unclaimed bus returns) or a documented constant, and writes to them are ignored.
//!
//! Devices plug into the VMM's port-I/O and MMIO buses through [`BusDevice`]. Devices that end
//! the VM (debug exit, i8042 reset) report through an [`ExitNotifier`] shared with the VMM.

pub mod debug_exit;
pub mod exit;
pub mod i8042;
#[cfg(test)]
mod mock_chain;
pub mod pci;
pub mod pvpanic;
pub mod serial;
pub mod vhost_user;
pub mod virtio_blk;
pub mod virtio_pci;

pub use exit::{ExitNotifier, ExitRequest};

/// A device on a bus: the VMM calls it for every access that falls in the range the device was
/// inserted at.
///
/// `offset` is relative to the start of that range. `data.len()` is the access size (1, 2, 4 or
/// 8 for port I/O and MMIO, but implementations must cope with any length, including 0).
pub trait BusDevice: Send {
    /// Fills `data` with what the guest reads at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Applies a guest write of `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}
