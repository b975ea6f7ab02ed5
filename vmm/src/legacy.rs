//! The PC legacy devices on the port-I/O bus: COM1, i8042, debug exit, PCI config mechanism #1.

use std::sync::{Arc, Mutex};

use vmm_devices::debug_exit::{DebugExit, DEBUG_EXIT_PORT};
use vmm_devices::i8042::{I8042, I8042_BASE, I8042_LEN};
use vmm_devices::pci::{PciBus, PciConfigIo, PCI_CONFIG_IO_BASE, PCI_CONFIG_IO_LEN};
use vmm_devices::serial::{SerialConsole, COM1_BASE, COM_LEN};
use vmm_devices::ExitNotifier;

use crate::bus::{self, Bus};

/// A port-I/O bus with the legacy devices mapped at their PC addresses.
pub fn pio_bus(
    exit: &Arc<ExitNotifier>,
    serial: &Arc<Mutex<SerialConsole>>,
    pci: &Arc<Mutex<PciBus>>,
) -> Result<Bus, bus::Error> {
    let mut pio = Bus::new();
    pio.insert(u64::from(COM1_BASE), u64::from(COM_LEN), serial.clone())?;
    pio.insert(
        u64::from(I8042_BASE),
        u64::from(I8042_LEN),
        Arc::new(Mutex::new(I8042::new(exit.clone()))),
    )?;
    pio.insert(
        u64::from(DEBUG_EXIT_PORT),
        1,
        Arc::new(Mutex::new(DebugExit::new(exit.clone()))),
    )?;
    pio.insert(
        u64::from(PCI_CONFIG_IO_BASE),
        u64::from(PCI_CONFIG_IO_LEN),
        Arc::new(Mutex::new(PciConfigIo::new(pci.clone()))),
    )?;
    Ok(pio)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_devices::serial::SharedBuffer;
    use vmm_devices::ExitRequest;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    /// What a hostile guest can do with port I/O: any port, any size, any value. Nothing may
    /// panic, and the PCI host bridge must still enumerate afterwards.
    #[test]
    fn garbage_port_io_never_panics() {
        let exit = Arc::new(ExitNotifier::new().unwrap());
        let out = SharedBuffer::new();
        let serial = Arc::new(Mutex::new(SerialConsole::new(
            EventFd::new(EFD_NONBLOCK).unwrap(),
            Box::new(out),
        )));
        let pci = Arc::new(Mutex::new(PciBus::with_host_bridge()));
        let bus = pio_bus(&exit, &serial, &pci).unwrap();

        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let hot = [0x3f8u64, 0x60, 0x64, 0xf4, 0xcf8, 0xcfc];
        for i in 0..200_000u64 {
            let r = next();
            // Half the accesses near the mapped devices, half anywhere in the 16-bit space.
            let port = if i % 2 == 0 {
                hot[(r % hot.len() as u64) as usize] + ((r >> 8) % 8)
            } else {
                (r >> 16) & 0xffff
            };
            let len = [0usize, 1, 2, 4, 8, 3][((r >> 32) % 6) as usize];
            let data: Vec<u8> = next().to_le_bytes().into_iter().take(len).collect();
            if r & 1 == 0 {
                bus.write(port, &data);
            } else {
                let mut buf = vec![0u8; len];
                bus.read(port, &mut buf);
            }
        }
        // Garbage may well have hit the debug-exit port or the i8042 reset: only those can
        // have asked to stop.
        assert!(matches!(
            exit.pending(),
            None | Some(ExitRequest::DebugExit(_) | ExitRequest::Reset)
        ));
        bus.write(0xcf8, &0x8000_0000u32.to_le_bytes());
        let mut id = [0u8; 4];
        bus.read(0xcfc, &mut id);
        assert_eq!(u32::from_le_bytes(id), 0x0008_1b36);
    }
}
