//! Opening `/dev/kvm` and checking what the VMM relies on.

use kvm_ioctls::{Cap, Kvm};

/// Present when the host's KVM is PVM (pagetable-based virtual machine): ordinary guests are
/// then instruction-emulated (~1 MIPS), so stock kernels do not boot in useful time.
pub const PVM_MODULE: &str = "/sys/module/kvm_pvm";

/// Errors opening KVM.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `/dev/kvm` could not be opened.
    #[error("cannot open /dev/kvm (is KVM available and accessible?): {0}")]
    Open(#[source] kvm_ioctls::Error),
    /// The KVM API version is not the stable one (12).
    #[error("unsupported KVM API version {0} (expected 12)")]
    ApiVersion(i32),
    /// A capability the VMM needs is missing.
    #[error("KVM lacks a required capability: {0:?}")]
    MissingCap(Cap),
}

/// Opens KVM and checks the capabilities the VMM uses unconditionally.
pub fn open() -> Result<Kvm, Error> {
    let kvm = Kvm::new().map_err(Error::Open)?;
    let version = kvm.get_api_version();
    if version != 12 {
        return Err(Error::ApiVersion(version));
    }
    for cap in [
        Cap::Irqchip,
        Cap::UserMemory,
        Cap::SetTssAddr,
        Cap::Irqfd,
        Cap::Pit2,
        Cap::ExtCpuid,
    ] {
        if !kvm.check_extension(cap) {
            return Err(Error::MissingCap(cap));
        }
    }
    Ok(kvm)
}

/// Whether `/dev/kvm` opens for reading and writing, the first thing [`open`] needs; the
/// error says why not. For callers that skip rather than fail where there is no KVM.
pub fn device_usable() -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map(drop)
}

/// Whether the host's KVM is PVM (see [`PVM_MODULE`]).
pub fn is_pvm() -> bool {
    std::path::Path::new(PVM_MODULE).exists()
}
