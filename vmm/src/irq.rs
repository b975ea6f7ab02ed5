//! KVM's GSI routing table, for MSI-X.
//!
//! `KVM_SET_GSI_ROUTING` replaces the whole table, including the routes KVM made for the
//! in-kernel PIC and IOAPIC when the irqchip was created. So this keeps the full table: the
//! irqchip routes (GSI 0..15 to both PICs' pins and the IOAPIC, 16..23 to the IOAPIC, as KVM's
//! default) plus one MSI route per device vector, and installs it whole on each change.
//!
//! Vector masking detaches the vector's irqfd (see `vmm_devices::virtio_pci::msix`), so an
//! interrupt raised while masked waits in the eventfd instead of being lost or delivered.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::sync::{Arc, Mutex};

use kvm_bindings::{
    kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::VmFd;
use vmm_devices::virtio_pci::{MsiMessage, MsiRouter};
use vmm_sys_util::eventfd::EventFd;

/// Pins of the IOAPIC: GSIs below this are wired interrupt lines.
pub const IOAPIC_PINS: u32 = 24;

/// The routing table and which irqfds are attached.
pub struct GsiRouting {
    vm: Arc<VmFd>,
    state: Mutex<State>,
}

struct State {
    msi: BTreeMap<u32, MsiMessage>,
    attached: BTreeSet<u32>,
    next_gsi: u32,
}

impl GsiRouting {
    /// The table KVM starts with (irqchip routes only).
    pub fn new(vm: Arc<VmFd>) -> Self {
        Self {
            vm,
            state: Mutex::new(State {
                msi: BTreeMap::new(),
                attached: BTreeSet::new(),
                next_gsi: IOAPIC_PINS,
            }),
        }
    }

    /// Reserves `n` GSIs for MSI vectors.
    pub fn allocate(&self, n: u32) -> Vec<u32> {
        let mut s = self.lock();
        let first = s.next_gsi;
        s.next_gsi += n;
        (first..first + n).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn install(&self, msi: &BTreeMap<u32, MsiMessage>) -> io::Result<()> {
        let mut entries = Vec::with_capacity(40 + msi.len());
        for gsi in 0..IOAPIC_PINS {
            if gsi < 16 {
                let (chip, pin) = if gsi < 8 {
                    (KVM_IRQCHIP_PIC_MASTER, gsi)
                } else {
                    (KVM_IRQCHIP_PIC_SLAVE, gsi - 8)
                };
                entries.push(irqchip_entry(gsi, chip, pin));
            }
            entries.push(irqchip_entry(gsi, KVM_IRQCHIP_IOAPIC, gsi));
        }
        for (&gsi, m) in msi {
            let mut e = kvm_irq_routing_entry {
                gsi,
                type_: KVM_IRQ_ROUTING_MSI,
                ..Default::default()
            };
            e.u.msi.address_lo = m.address as u32;
            e.u.msi.address_hi = (m.address >> 32) as u32;
            e.u.msi.data = m.data;
            entries.push(e);
        }
        let table = KvmIrqRouting::from_entries(&entries)
            .map_err(|e| io::Error::other(format!("routing table: {e:?}")))?;
        self.vm
            .set_gsi_routing(&table)
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))
    }
}

fn irqchip_entry(gsi: u32, irqchip: u32, pin: u32) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        ..Default::default()
    };
    e.u.irqchip.irqchip = irqchip;
    e.u.irqchip.pin = pin;
    e
}

impl MsiRouter for GsiRouting {
    fn unmask(&self, gsi: u32, msg: MsiMessage, irqfd: &EventFd) -> io::Result<()> {
        if gsi < IOAPIC_PINS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("GSI {gsi} is an IOAPIC pin, not an MSI route"),
            ));
        }
        let mut s = self.lock();
        if s.msi.get(&gsi) != Some(&msg) {
            let mut msi = s.msi.clone();
            msi.insert(gsi, msg);
            self.install(&msi)?;
            s.msi = msi;
        }
        if s.attached.insert(gsi) {
            if let Err(e) = self.vm.register_irqfd(irqfd, gsi) {
                s.attached.remove(&gsi);
                return Err(io::Error::from_raw_os_error(e.errno()));
            }
        }
        Ok(())
    }

    fn mask(&self, gsi: u32, irqfd: &EventFd) -> io::Result<()> {
        let mut s = self.lock();
        if s.attached.remove(&gsi) {
            self.vm
                .unregister_irqfd(irqfd, gsi)
                .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
        }
        Ok(())
    }
}
