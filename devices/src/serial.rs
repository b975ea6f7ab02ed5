//! 8250/16550 serial console (COM1) on top of vm-superio's UART model.
//!
//! Output goes to any `Write` (the VMM passes stdout, or a [`SharedBuffer`] in tests); input is
//! pushed by the VMM's event loop with [`SerialConsole::enqueue_input`]. The interrupt is an
//! eventfd the VMM registers as an irqfd on GSI 4, so raising it costs no vCPU exit.

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::BusDevice;

/// Port of COM1.
pub const COM1_BASE: u16 = 0x3f8;
/// Ports used by one UART.
pub const COM_LEN: u16 = 8;
/// Legacy IRQ (ISA/IOAPIC pin, and KVM GSI) of COM1.
pub const COM1_IRQ: u32 = 4;

/// Raises the serial interrupt by writing the irqfd.
pub struct IrqEvent(EventFd);

impl Trigger for IrqEvent {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// An in-memory console output that several owners can read (tests, embedders).
#[derive(Clone, Debug, Default)]
pub struct SharedBuffer(Arc<Mutex<Vec<u8>>>);

impl SharedBuffer {
    /// Creates an empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Everything written so far, lossily decoded as UTF-8.
    pub fn contents(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }
}

impl Write for SharedBuffer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The COM1 console device.
pub struct SerialConsole {
    uart: Serial<IrqEvent, NoEvents, Box<dyn Write + Send>>,
    /// A BREAK waits to be seen: the next read of the line status register reports BI, and
    /// clears it, as a real UART does (vm-superio has no notion of a break).
    break_pending: bool,
}

/// The line status register's offset.
const LSR: u8 = 5;
/// LSR's break-interrupt bit.
const LSR_BI: u8 = 0x10;

impl SerialConsole {
    /// Creates a UART that raises `irq` and writes what the guest transmits to `out`.
    pub fn new(irq: EventFd, out: Box<dyn Write + Send>) -> Self {
        Self {
            uart: Serial::new(IrqEvent(irq), out),
            break_pending: false,
        }
    }

    /// Sends a BREAK followed by `key`: with Linux's 8250 console, magic SysRq `key` (what
    /// `Ctrl-O key` or `~B key` do on a terminal server). A real UART receives a NUL with BI
    /// set; so does the guest here. False when the receive FIFO has input waiting (the BREAK
    /// would land behind it).
    pub fn send_break(&mut self, key: u8) -> bool {
        if self.uart.fifo_capacity() < 2 || !self.uart.state().in_buffer.is_empty() {
            return false;
        }
        self.break_pending = true;
        self.enqueue_input(&[0, key]) == 2
    }

    /// Queues bytes typed by the user for the guest to read; returns how many fit in the
    /// receive FIFO (the rest is for the caller to retry once the guest has drained it).
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        let room = self.uart.fifo_capacity().min(bytes.len());
        if room == 0 {
            return 0;
        }
        match self.uart.enqueue_raw_bytes(&bytes[..room]) {
            Ok(n) => n,
            Err(e) => {
                log::debug!("serial: input dropped: {e:?}");
                0
            }
        }
    }
}

impl BusDevice for SerialConsole {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (u8::try_from(offset), data.len()) {
            (Ok(LSR), 1) => {
                data[0] = self.uart.read(LSR);
                if std::mem::take(&mut self.break_pending) {
                    data[0] |= LSR_BI;
                }
            }
            (Ok(o), 1) if u16::from(o) < COM_LEN => data[0] = self.uart.read(o),
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (u8::try_from(offset), data) {
            (Ok(o), &[v]) if u16::from(o) < COM_LEN => {
                // A broken stdout (closed pipe) must not take the VM down: the guest cannot do
                // anything about it, so report once per failure at debug level and go on.
                if let Err(e) = self.uart.write(o, v) {
                    log::debug!("serial: output error: {e:?}");
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    fn console() -> (SerialConsole, SharedBuffer, EventFd) {
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let out = SharedBuffer::new();
        let s = SerialConsole::new(irq.try_clone().unwrap(), Box::new(out.clone()));
        (s, out, irq)
    }

    #[test]
    fn transmits_and_receives() {
        let (mut s, out, _irq) = console();
        for b in b"hi\n" {
            s.write(0, &[*b]);
        }
        assert_eq!(out.contents(), "hi\n");
        assert_eq!(s.enqueue_input(b"x"), 1);
        let mut lsr = [0];
        s.read(5, &mut lsr);
        assert_eq!(lsr[0] & 1, 1, "data ready");
        let mut rbr = [0];
        s.read(0, &mut rbr);
        assert_eq!(rbr[0], b'x');
    }

    #[test]
    fn garbage_never_panics() {
        let (mut s, _out, _irq) = console();
        let mut x: u32 = 0x1234_5678;
        for i in 0..20_000u64 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let len = (x % 9) as usize;
            let bytes = x.to_le_bytes();
            let data: Vec<u8> = (0..len).map(|j| bytes[j % 4] ^ i as u8).collect();
            let offset = u64::from(x >> 8) % 300;
            s.write(offset, &data);
            let mut buf = vec![0u8; len];
            s.read(offset, &mut buf);
            if i % 7 == 0 {
                s.enqueue_input(&data);
            }
        }
    }
}
