//! The KVM VM: in-kernel irqchip (PIC + IOAPIC + LAPICs), PIT, and the TSS/identity-map pages
//! that VMX needs somewhere in guest-physical space.

use std::sync::Arc;

use kvm_bindings::{kvm_pit_config, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VmFd};
use vmm_sys_util::eventfd::EventFd;

/// Three pages KVM uses for the real-mode TSS on VMX. Inside the 32-bit hole, below the
/// IOAPIC/LAPIC and any BAR the VMM hands out, and never RAM.
pub const KVM_TSS_ADDR: u64 = 0xfffb_d000;
/// One page for KVM's identity page table (VMX real mode), just below the TSS.
pub const KVM_IDENTITY_MAP_ADDR: u64 = 0xfffb_c000;

/// Errors creating or configuring the VM.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// KVM_CREATE_VM failed.
    #[error("cannot create the KVM VM: {0}")]
    Create(#[source] kvm_ioctls::Error),
    /// A VM-level ioctl failed.
    #[error("{what} failed: {source}")]
    Ioctl {
        /// Which ioctl.
        what: &'static str,
        /// Underlying error.
        #[source]
        source: kvm_ioctls::Error,
    },
}

fn ioctl(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |source| Error::Ioctl { what, source }
}

/// A VM with its interrupt controllers and timer.
pub struct Vm {
    fd: Arc<VmFd>,
}

impl Vm {
    /// Creates the VM and its in-kernel irqchip and PIT.
    pub fn new(kvm: &Kvm) -> Result<Self, Error> {
        let fd = kvm.create_vm().map_err(Error::Create)?;
        fd.set_tss_address(KVM_TSS_ADDR as usize)
            .map_err(ioctl("KVM_SET_TSS_ADDR"))?;
        // Not every KVM implements this (it only matters for VMX real mode); absence is fine.
        if let Err(e) = fd.set_identity_map_address(KVM_IDENTITY_MAP_ADDR) {
            log::debug!("KVM_SET_IDENTITY_MAP_ADDR: {e} (ignored)");
        }
        fd.create_irq_chip().map_err(ioctl("KVM_CREATE_IRQCHIP"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit).map_err(ioctl("KVM_CREATE_PIT2"))?;
        Ok(Self { fd: Arc::new(fd) })
    }

    /// The VM fd (vCPU creation, irqfd/ioeventfd registration, memory slots).
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// The VM fd, shared (devices that reprogram interrupt routes from vCPU threads).
    pub fn shared_fd(&self) -> Arc<VmFd> {
        self.fd.clone()
    }

    /// Makes writes to `evt` raise interrupt line `gsi` (IOAPIC pin / PIC IRQ for 0..15).
    pub fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), Error> {
        self.fd.register_irqfd(evt, gsi).map_err(ioctl("KVM_IRQFD"))
    }
}
