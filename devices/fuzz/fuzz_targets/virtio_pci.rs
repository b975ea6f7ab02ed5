//! A guest's accesses to a virtio-pci device: configuration space, the common and device
//! configuration, notifications, the MSI-X table and PBA, in any order, size and offset.
//! Nothing may panic; the device behind accepts every activation, so the fuzzer also reaches
//! the running state and the reset path.
//!
//!     cargo +nightly fuzz run virtio_pci        (from devices/)
#![no_main]

use std::io;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use vmm_devices::pci::PciDevice;
use vmm_devices::virtio_pci::{
    ActivateError, MsiMessage, MsiRouter, QueueSetup, VirtioDevice, VirtioPciDevice, BAR_SIZE,
};
use vmm_devices::BusDevice;
use vmm_sys_util::eventfd::EventFd;

struct Device;

impl VirtioDevice for Device {
    fn device_type(&self) -> u16 {
        1
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[256, 256]
    }
    fn features(&self) -> u64 {
        (1 << 32) | (1 << 5) | (1 << 16)
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        data.fill(offset as u8);
    }
    fn activate(&mut self, _: u64, queues: &[QueueSetup]) -> Result<(), ActivateError> {
        assert_eq!(queues.len(), 2);
        assert!(queues
            .iter()
            .all(|q| q.size.is_power_of_two() && q.size <= 256));
        Ok(())
    }
    fn reset(&mut self) {}
}

struct Router;

impl MsiRouter for Router {
    fn unmask(&self, _: u32, _: MsiMessage, _: &EventFd) -> io::Result<()> {
        Ok(())
    }
    fn mask(&self, _: u32, _: &EventFd) -> io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let mut d = VirtioPciDevice::new(
        Box::new(Device),
        0xc000_0000,
        &[24, 25, 26],
        Arc::new(Router),
    )
    .expect("device");
    // Memory decoding on, so BAR accesses reach the registers from the start.
    d.write_config(1, 0, &[6, 0]);
    let mut ops = data;
    while ops.len() >= 4 {
        let (op, a, b, len) = (ops[0], ops[1], ops[2], usize::from(ops[3] % 10));
        ops = &ops[4..];
        let n = len.min(ops.len());
        let (payload, rest) = ops.split_at(n);
        ops = rest;
        let offset = u64::from(u16::from_le_bytes([a, b])) % (BAR_SIZE + 0x100);
        match op % 4 {
            0 => d.write(offset, payload),
            1 => {
                let mut buf = vec![0u8; len];
                d.read(offset, &mut buf);
            }
            2 => d.write_config(usize::from(a % 70), usize::from(b % 6), payload),
            _ => {
                d.read_config(usize::from(a % 70));
            }
        }
    }
});
