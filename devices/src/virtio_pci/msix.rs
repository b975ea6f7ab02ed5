//! MSI-X: the vector table the guest programs in BAR 0, and the mapping of each vector onto a
//! KVM GSI whose irqfd the device's backend signals.
//!
//! A vector is *live* when the capability's enable bit is set, the function mask is clear and
//! the entry's own mask bit is clear. Only a live vector has its irqfd attached to KVM: a signal
//! raised while it is masked stays in the eventfd's counter, and KVM injects it the moment the
//! irqfd is attached again (its assign path polls the eventfd). That is the pending-bit
//! semantics of the spec without the VMM ever sitting in the interrupt path.

use std::io;
use std::sync::Arc;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Bytes per table entry: address low, address high, data, vector control.
pub const ENTRY_SIZE: u64 = 16;
/// The largest table the capability can describe.
pub const MAX_VECTORS: usize = 2048;
/// Vector control bit 0: masked.
const ENTRY_MASKED: u32 = 1;
/// Message control bit 15: MSI-X enable.
pub const CTRL_ENABLE: u16 = 1 << 15;
/// Message control bit 14: function mask.
pub const CTRL_FUNCTION_MASK: u16 = 1 << 14;

/// An MSI message: what the device writes, and where, to interrupt a CPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsiMessage {
    /// The address (0xfeeXXXXX on x86: destination APIC and mode).
    pub address: u64,
    /// The data (vector and delivery mode).
    pub data: u32,
}

/// Where MSI-X vectors become guest interrupts: implemented by the VMM over KVM's GSI routing
/// and irqfds. Called from vCPU threads, with the device's lock held.
pub trait MsiRouter: Send + Sync {
    /// Routes `gsi` to `msg` and attaches `irqfd` to it (again, if it already was: the message
    /// may have changed).
    fn unmask(&self, gsi: u32, msg: MsiMessage, irqfd: &EventFd) -> io::Result<()>;
    /// Detaches `irqfd` from `gsi`; signals meanwhile stay pending in the eventfd.
    fn mask(&self, gsi: u32, irqfd: &EventFd) -> io::Result<()>;
}

struct Vector {
    /// Address low, address high, data, vector control, as the guest wrote them.
    entry: [u32; 4],
    gsi: u32,
    irqfd: EventFd,
    /// The message KVM delivers for this vector now, if its irqfd is attached.
    routed: Option<MsiMessage>,
}

/// The MSI-X table and capability state of one function.
pub struct MsixTable {
    vectors: Vec<Vector>,
    control: u16,
    router: Arc<dyn MsiRouter>,
}

impl MsixTable {
    /// A table of one vector per GSI in `gsis` (at most [`MAX_VECTORS`]), every entry masked
    /// as after reset.
    pub fn new(gsis: &[u32], router: Arc<dyn MsiRouter>) -> io::Result<Self> {
        if gsis.is_empty() || gsis.len() > MAX_VECTORS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("MSI-X needs 1..={MAX_VECTORS} vectors, got {}", gsis.len()),
            ));
        }
        let vectors = gsis
            .iter()
            .map(|&gsi| {
                Ok(Vector {
                    entry: [0, 0, 0, ENTRY_MASKED],
                    gsi,
                    irqfd: EventFd::new(EFD_NONBLOCK)?,
                    routed: None,
                })
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Self {
            vectors,
            control: 0,
            router,
        })
    }

    /// Number of vectors.
    pub fn len(&self) -> usize {
        self.vectors.len()
    }

    /// Always false: a table has at least one vector.
    pub fn is_empty(&self) -> bool {
        self.vectors.is_empty()
    }

    /// The eventfd that raises vector `index`, if it exists.
    pub fn irqfd(&self, index: u16) -> Option<&EventFd> {
        self.vectors.get(usize::from(index)).map(|v| &v.irqfd)
    }

    /// Message control as the capability shows it: enable, function mask, table size - 1.
    pub fn control(&self) -> u16 {
        self.control | (self.vectors.len() as u16 - 1)
    }

    /// The guest wrote message control: only enable and function mask are writable.
    pub fn set_control(&mut self, value: u16) {
        let new = value & (CTRL_ENABLE | CTRL_FUNCTION_MASK);
        if new != self.control {
            self.control = new;
            self.sync_all();
        }
    }

    /// Guest read of the table at `offset` (relative to the table). Naturally aligned 4- and
    /// 8-byte reads are answered; anything else reads as zero.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Some((index, word)) = self.locate(offset, data.len()) else {
            return;
        };
        let e = &self.vectors[index].entry;
        match data.len() {
            4 => data.copy_from_slice(&e[word].to_le_bytes()),
            8 => {
                data[..4].copy_from_slice(&e[word].to_le_bytes());
                data[4..].copy_from_slice(&e[word + 1].to_le_bytes());
            }
            _ => {}
        }
    }

    /// Guest write of the table at `offset`. Naturally aligned 4- and 8-byte writes are applied
    /// (only bit 0 of vector control is writable); anything else is ignored.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        let Some((index, word)) = self.locate(offset, data.len()) else {
            return;
        };
        let words: &[u32] = &match *data {
            [a, b, c, d] => [u32::from_le_bytes([a, b, c, d]), 0],
            [a, b, c, d, e, f, g, h] => [
                u32::from_le_bytes([a, b, c, d]),
                u32::from_le_bytes([e, f, g, h]),
            ],
            _ => return,
        }[..data.len() / 4];
        let v = &mut self.vectors[index];
        for (i, &w) in words.iter().enumerate() {
            let slot = word + i;
            v.entry[slot] = if slot == 3 {
                (v.entry[3] & !ENTRY_MASKED) | (w & ENTRY_MASKED)
            } else {
                w
            };
        }
        self.sync(index);
    }

    /// Pending-bit array: one bit per vector, set while a masked vector has an unsent signal.
    /// We cannot see that without consuming the eventfd, so the array reads as zero; the signal
    /// itself is not lost (see the module comment).
    pub fn read_pba(&self, data: &mut [u8]) {
        data.fill(0);
    }

    /// (vector, first 32-bit word) of a naturally aligned 4/8-byte access inside the table.
    fn locate(&self, offset: u64, len: usize) -> Option<(usize, usize)> {
        if !(len == 4 || len == 8) || offset % len as u64 != 0 {
            return None;
        }
        let index = usize::try_from(offset / ENTRY_SIZE).ok()?;
        let word = ((offset % ENTRY_SIZE) / 4) as usize;
        (index < self.vectors.len()).then_some((index, word))
    }

    fn sync_all(&mut self) {
        for i in 0..self.vectors.len() {
            self.sync(i);
        }
    }

    /// Brings vector `index`'s KVM state in line with what the guest programmed.
    fn sync(&mut self, index: usize) {
        let live = self.control & CTRL_ENABLE != 0 && self.control & CTRL_FUNCTION_MASK == 0;
        let v = &mut self.vectors[index];
        let want = (live && v.entry[3] & ENTRY_MASKED == 0).then(|| MsiMessage {
            address: u64::from(v.entry[0]) | (u64::from(v.entry[1]) << 32),
            data: v.entry[2],
        });
        if want == v.routed {
            return;
        }
        let result = match want {
            Some(msg) => self.router.unmask(v.gsi, msg, &v.irqfd),
            None => self.router.mask(v.gsi, &v.irqfd),
        };
        match result {
            Ok(()) => v.routed = want,
            Err(e) => log::warn!(
                "MSI-X vector {index} (GSI {}): cannot {}: {e}",
                v.gsi,
                if want.is_some() { "route" } else { "mask" }
            ),
        }
    }

    /// Detaches every vector (the VMM is tearing the device down or the guest reset it).
    pub fn mask_all(&mut self) {
        for v in &mut self.vectors {
            if v.routed.take().is_some() {
                let _ = self.router.mask(v.gsi, &v.irqfd);
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Records what the table asks of KVM.
    #[derive(Default)]
    pub(crate) struct RecordingRouter {
        pub(crate) calls: Mutex<Vec<(u32, Option<MsiMessage>)>>,
    }

    impl MsiRouter for RecordingRouter {
        fn unmask(&self, gsi: u32, msg: MsiMessage, _: &EventFd) -> io::Result<()> {
            self.calls.lock().unwrap().push((gsi, Some(msg)));
            Ok(())
        }
        fn mask(&self, gsi: u32, _: &EventFd) -> io::Result<()> {
            self.calls.lock().unwrap().push((gsi, None));
            Ok(())
        }
    }

    #[test]
    fn a_vector_is_routed_only_while_enabled_and_unmasked() {
        let router = Arc::new(RecordingRouter::default());
        let mut t = MsixTable::new(&[40, 41], router.clone()).unwrap();
        assert_eq!(t.control(), 1, "table size - 1");
        t.write(16, &0xfee0_0000u32.to_le_bytes());
        t.write(24, &0x4041u32.to_le_bytes());
        t.write(28, &0u32.to_le_bytes()); // unmask entry 1
        assert!(router.calls.lock().unwrap().is_empty(), "MSI-X still off");
        t.set_control(CTRL_ENABLE);
        let msg = MsiMessage {
            address: 0xfee0_0000,
            data: 0x4041,
        };
        assert_eq!(*router.calls.lock().unwrap(), vec![(41, Some(msg))]);
        t.set_control(CTRL_ENABLE | CTRL_FUNCTION_MASK);
        t.set_control(CTRL_ENABLE);
        t.write(28, &1u32.to_le_bytes());
        assert_eq!(
            *router.calls.lock().unwrap(),
            vec![(41, Some(msg)), (41, None), (41, Some(msg)), (41, None)]
        );
        let mut b = [0u8; 8];
        t.read(24, &mut b);
        assert_eq!(b, [0x41, 0x40, 0, 0, 1, 0, 0, 0]);
    }

    #[test]
    fn odd_accesses_are_ignored() {
        let router = Arc::new(RecordingRouter::default());
        let mut t = MsixTable::new(&[24], router.clone()).unwrap();
        t.set_control(0xffff);
        t.write(12, &[0, 0]); // 2-byte write to vector control
        t.write(13, &[0, 0, 0, 0]); // misaligned
        t.write(32, &[0, 0, 0, 0]); // past the table
        t.write(u64::MAX - 3, &[0; 4]);
        assert!(router.calls.lock().unwrap().is_empty());
        let mut b = [0xaau8; 3];
        t.read(0, &mut b);
        assert_eq!(b, [0; 3]);
        assert_eq!(t.control(), CTRL_ENABLE | CTRL_FUNCTION_MASK);
        assert!(MsixTable::new(&[], router).is_err());
    }
}
