//! CPUID for each vCPU: what KVM supports, with topology filled in and, where instructions are
//! emulated, the extended-state features hidden.
//!
//! Decision: on real VT-x/AMD-V hosts ([`CpuidPolicy::Host`]) the guest sees everything KVM
//! can virtualize, because stock kernels expect XSAVE/AVX and run faster with them. Under PVM
//! ([`CpuidPolicy::EmulationSafe`], chosen automatically when `/sys/module/kvm_pvm` exists) an
//! ordinary guest is run by KVM's instruction emulator, which lacks XSAVE/XRSTOR, AVX and
//! CMPXCHG16B: advertising them makes the guest execute them and die with an emulation
//! failure (QEMU with a Debian kernel died on `xrstor` here). Hiding XSAVE also makes Linux fall
//! back to FXSAVE for FPU state, which the emulator has.

use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::Kvm;

/// Which CPU features the guest sees.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CpuidPolicy {
    /// [`CpuidPolicy::EmulationSafe`] when the host's KVM is PVM, [`CpuidPolicy::Host`] else.
    #[default]
    Auto,
    /// Everything `KVM_GET_SUPPORTED_CPUID` reports.
    Host,
    /// As `Host`, minus XSAVE/AVX/AVX-512/CMPXCHG16B/FMA/F16C and the XSAVE leaf (0xd).
    EmulationSafe,
}

impl CpuidPolicy {
    /// Resolves [`CpuidPolicy::Auto`].
    pub fn resolve(self) -> Self {
        match self {
            Self::Auto if crate::kvm::is_pvm() => Self::EmulationSafe,
            Self::Auto => Self::Host,
            other => other,
        }
    }
}

/// Errors getting or setting CPUID.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// KVM_GET_SUPPORTED_CPUID failed.
    #[error("KVM_GET_SUPPORTED_CPUID failed: {0}")]
    Supported(#[source] kvm_ioctls::Error),
}

// Leaf 1 ECX.
const ECX_FMA: u32 = 1 << 12;
const ECX_CX16: u32 = 1 << 13;
const ECX_XSAVE: u32 = 1 << 26;
const ECX_OSXSAVE: u32 = 1 << 27;
const ECX_AVX: u32 = 1 << 28;
const ECX_F16C: u32 = 1 << 29;
const ECX_HYPERVISOR: u32 = 1 << 31;
// Leaf 1 EDX.
const EDX_HTT: u32 = 1 << 28;
// Leaf 7.0 EBX: AVX2 and the AVX-512 family.
const L7_EBX_AVX: u32 = (1 << 5)
    | (1 << 16)
    | (1 << 17)
    | (1 << 21)
    | (1 << 26)
    | (1 << 27)
    | (1 << 28)
    | (1 << 30)
    | (1 << 31);
// Leaf 7.0 ECX: AVX-512 VBMI, VBMI2, VNNI, BITALG, VPOPCNTDQ; VAES/VPCLMULQDQ (VEX-256).
const L7_ECX_AVX: u32 =
    (1 << 1) | (1 << 6) | (1 << 9) | (1 << 10) | (1 << 11) | (1 << 12) | (1 << 14);
// Leaf 7.0 EDX: AVX-512 4VNNIW/4FMAPS/VP2INTERSECT/FP16, AMX.
const L7_EDX_AVX: u32 = (1 << 2) | (1 << 3) | (1 << 8) | (1 << 22) | (1 << 23) | (1 << 24);

/// CPUID as KVM supports it, filtered by `policy` (already resolved); per-vCPU fields are
/// filled in by [`for_vcpu`].
pub fn base(kvm: &Kvm, policy: CpuidPolicy) -> Result<CpuId, Error> {
    let mut cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(Error::Supported)?;
    if policy == CpuidPolicy::EmulationSafe {
        for e in cpuid.as_mut_slice() {
            match (e.function, e.index) {
                (1, _) => {
                    e.ecx &= !(ECX_FMA | ECX_CX16 | ECX_XSAVE | ECX_OSXSAVE | ECX_AVX | ECX_F16C)
                }
                (7, 0) => {
                    e.ebx &= !L7_EBX_AVX;
                    e.ecx &= !L7_ECX_AVX;
                    e.edx &= !L7_EDX_AVX;
                }
                (0xd, _) => {
                    e.eax = 0;
                    e.ebx = 0;
                    e.ecx = 0;
                    e.edx = 0;
                }
                _ => {}
            }
        }
    }
    Ok(cpuid)
}

/// CPUID for vCPU `index` of `cpus`: APIC IDs (leaf 1 and the x2APIC topology leaves), logical
/// processor count, and the hypervisor bit.
pub fn for_vcpu(base: &CpuId, index: u8, cpus: u8) -> CpuId {
    let mut cpuid = base.clone();
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => {
                e.ebx = (e.ebx & 0x0000_ffff) | (u32::from(index) << 24) | (u32::from(cpus) << 16);
                e.ecx |= ECX_HYPERVISOR;
                if cpus > 1 {
                    e.edx |= EDX_HTT;
                }
            }
            0xb | 0x1f => e.edx = u32::from(index),
            _ => {}
        }
    }
    cpuid
}
