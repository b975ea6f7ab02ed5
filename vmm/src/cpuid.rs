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
//!
//! The same policy hides the KVM paravirtual features whose guest side is a `vmcall`
//! (PV_UNHALT, PV_SEND_IPI, PV_SCHED_YIELD, HC_MAP_GPA_RANGE) and kvmclock (CLOCKSOURCE,
//! CLOCKSOURCE2), which Linux's ptp_kvm needs before it makes its `KVM_HC_CLOCK_PAIRING`
//! hypercall: under PVM a hypercall from an emulated guest never completes (the vCPU
//! re-executes the same `vmcall` forever), so a real Linux with two vCPUs hung in its first
//! `KVM_HC_SEND_IPI`, and one with PTP_1588_CLOCK_KVM in `kvm_arch_ptp_init`. Without kvmclock
//! the guest keeps time with the TSC. On hardware KVM all of them stay on.
//!
//! PVM accepts `KVM_SET_CPUID2` but keeps showing the guest host-like leaves (leaf 0x40000001
//! is honoured). [`compare`] finds where the table KVM reports back differs from the one set, so
//! the VMM can say what the guest really sees instead of trusting its own table.

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
    /// As `Host`, minus XSAVE/AVX/AVX-512/CMPXCHG16B/FMA/F16C, the XSAVE leaf (0xd) and the
    /// KVM paravirtual features that are hypercalls.
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
/// Leaf 0x40000001 (KVM_CPUID_FEATURES) EAX: the paravirtual features that lead a guest to a
/// `vmcall` (KVM_HC_KICK_CPU, KVM_HC_SEND_IPI, KVM_HC_SCHED_YIELD, KVM_HC_MAP_GPA_RANGE, and
/// through kvmclock KVM_HC_CLOCK_PAIRING).
pub const KVM_FEATURES_LEAF: u32 = 0x4000_0001;
const KVM_CLOCKSOURCE: u32 = 1 << 0;
const KVM_CLOCKSOURCE2: u32 = 1 << 3;
const KVM_PV_UNHALT: u32 = 1 << 7;
const KVM_PV_SEND_IPI: u32 = 1 << 11;
const KVM_PV_SCHED_YIELD: u32 = 1 << 13;
const KVM_HC_MAP_GPA_RANGE: u32 = 1 << 16;
const KVM_PV_HYPERCALLS: u32 = KVM_CLOCKSOURCE
    | KVM_CLOCKSOURCE2
    | KVM_PV_UNHALT
    | KVM_PV_SEND_IPI
    | KVM_PV_SCHED_YIELD
    | KVM_HC_MAP_GPA_RANGE;

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
                (KVM_FEATURES_LEAF, _) => e.eax &= !KVM_PV_HYPERCALLS,
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

/// One of a CPUID entry's four output registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Register {
    /// EAX.
    Eax,
    /// EBX.
    Ebx,
    /// ECX.
    Ecx,
    /// EDX.
    Edx,
}

/// A register of one leaf whose value KVM reports back differently from the one the VMM set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    /// Leaf (EAX input).
    pub function: u32,
    /// Subleaf (ECX input).
    pub index: u32,
    /// Which output register.
    pub register: Register,
    /// What the VMM set (0 for a leaf it did not set).
    pub set: u32,
    /// What KVM reports, i.e. what the guest sees (0 for a leaf KVM does not report).
    pub seen: u32,
}

/// Bits KVM itself rewrites while the guest runs (`kvm_update_cpuid_runtime`): they follow
/// guest state (CR4.OSXSAVE, the APIC base MSR, CR4.PKE, XCR0, MISC_ENABLE), so a difference
/// there says nothing about whether the table was taken.
fn runtime_bits(function: u32, index: u32, register: Register) -> u32 {
    match (function, index, register) {
        (1, _, Register::Ecx) => ECX_OSXSAVE | (1 << 3),
        (1, _, Register::Edx) => 1 << 9,
        (7, 0, Register::Ecx) => 1 << 4,
        (0xd, 0 | 1, Register::Ebx) => u32::MAX,
        _ => 0,
    }
}

/// Named bits worth calling out in a [`Mismatch`]: the ones a guest's choices hang on.
fn bit_names(function: u32, index: u32, register: Register) -> &'static [(u32, &'static str)] {
    match (function, index, register) {
        (1, _, Register::Ecx) => &[
            (ECX_FMA, "FMA"),
            (ECX_CX16, "CX16"),
            (1 << 23, "POPCNT"),
            (ECX_XSAVE, "XSAVE"),
            (ECX_AVX, "AVX"),
            (ECX_F16C, "F16C"),
            (ECX_HYPERVISOR, "HYPERVISOR"),
        ],
        (7, 0, Register::Ebx) => &[
            (1 << 0, "FSGSBASE"),
            (1 << 5, "AVX2"),
            (1 << 16, "AVX512F"),
            (1 << 20, "SMAP"),
        ],
        (KVM_FEATURES_LEAF, _, Register::Eax) => &[
            (KVM_CLOCKSOURCE, "CLOCKSOURCE"),
            (KVM_CLOCKSOURCE2, "CLOCKSOURCE2"),
            (KVM_PV_UNHALT, "PV_UNHALT"),
            (KVM_PV_SEND_IPI, "PV_SEND_IPI"),
            (KVM_PV_SCHED_YIELD, "PV_SCHED_YIELD"),
            (KVM_HC_MAP_GPA_RANGE, "HC_MAP_GPA_RANGE"),
        ],
        _ => &[],
    }
}

/// Where `seen` (what `KVM_GET_CPUID2` reports) differs from `set` (what the VMM passed to
/// `KVM_SET_CPUID2`), ignoring the bits KVM rewrites at run time. Leaves present on one side
/// only count as zero on the other.
pub fn compare(set: &CpuId, seen: &CpuId) -> Vec<Mismatch> {
    let key = |e: &kvm_bindings::kvm_cpuid_entry2| (e.function, e.index);
    let regs = |e: &kvm_bindings::kvm_cpuid_entry2| {
        [
            (Register::Eax, e.eax),
            (Register::Ebx, e.ebx),
            (Register::Ecx, e.ecx),
            (Register::Edx, e.edx),
        ]
    };
    let mut keys: Vec<(u32, u32)> = set
        .as_slice()
        .iter()
        .chain(seen.as_slice())
        .map(key)
        .collect();
    keys.sort_unstable();
    keys.dedup();
    let find =
        |table: &CpuId, k: (u32, u32)| table.as_slice().iter().find(|e| key(e) == k).copied();
    let mut out = Vec::new();
    for k in keys {
        let zero = kvm_bindings::kvm_cpuid_entry2 {
            function: k.0,
            index: k.1,
            ..Default::default()
        };
        let (a, b) = (find(set, k).unwrap_or(zero), find(seen, k).unwrap_or(zero));
        for ((register, x), (_, y)) in regs(&a).into_iter().zip(regs(&b)) {
            let ignore = runtime_bits(k.0, k.1, register);
            if x & !ignore != y & !ignore {
                out.push(Mismatch {
                    function: k.0,
                    index: k.1,
                    register,
                    set: x,
                    seen: y,
                });
            }
        }
    }
    out
}

impl std::fmt::Display for Mismatch {
    /// `leaf 0x1 ECX: set 0x..., seen 0x... (+XSAVE +AVX)`: `+` for a named feature the guest
    /// sees although the VMM hid it, `-` for one it does not see although the VMM set it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "leaf {:#x}", self.function)?;
        if self.index != 0 {
            write!(f, ".{}", self.index)?;
        }
        write!(
            f,
            " {}: set {:#010x}, seen {:#010x}",
            format!("{:?}", self.register).to_uppercase(),
            self.set,
            self.seen
        )?;
        let named: Vec<String> = bit_names(self.function, self.index, self.register)
            .iter()
            .filter(|(bit, _)| (self.set ^ self.seen) & bit != 0)
            .map(|(bit, name)| format!("{}{name}", if self.seen & bit != 0 { '+' } else { '-' }))
            .collect();
        if !named.is_empty() {
            write!(f, " ({})", named.join(" "))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    fn table(entries: &[(u32, u32, [u32; 4])]) -> CpuId {
        let e: Vec<kvm_cpuid_entry2> = entries
            .iter()
            .map(
                |&(function, index, [eax, ebx, ecx, edx])| kvm_cpuid_entry2 {
                    function,
                    index,
                    eax,
                    ebx,
                    ecx,
                    edx,
                    ..Default::default()
                },
            )
            .collect();
        CpuId::from_entries(&e).unwrap()
    }

    #[test]
    fn identical_tables_and_runtime_bits_do_not_count() {
        let set = table(&[
            (1, 0, [0x806f8, 0, ECX_HYPERVISOR, 0]),
            (0xd, 0, [7, 0x240, 0, 0]),
        ]);
        // KVM sets OSXSAVE and the APIC bit and resizes the XSAVE area as the guest runs.
        let seen = table(&[
            (1, 0, [0x806f8, 0, ECX_HYPERVISOR | ECX_OSXSAVE, 1 << 9]),
            (0xd, 0, [7, 0x340, 0, 0]),
        ]);
        assert_eq!(compare(&set, &set), vec![]);
        assert_eq!(compare(&set, &seen), vec![]);
    }

    #[test]
    fn a_table_not_taken_is_reported_with_the_features_named() {
        let set = table(&[
            (1, 0, [0, 0, ECX_HYPERVISOR, 0]),
            (KVM_FEATURES_LEAF, 0, [0x1, 0, 0, 0]),
        ]);
        let seen = table(&[
            (1, 0, [0, 0, ECX_XSAVE | ECX_AVX | (1 << 23), 0]),
            (KVM_FEATURES_LEAF, 0, [0x1 | KVM_PV_SEND_IPI, 0, 0, 0]),
            (0xd, 0, [7, 0, 0x340, 0]),
        ]);
        let m = compare(&set, &seen);
        let text: Vec<String> = m.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "leaf 0x1 ECX: set 0x80000000, seen 0x14800000 (+POPCNT +XSAVE +AVX -HYPERVISOR)",
                "leaf 0xd EAX: set 0x00000000, seen 0x00000007",
                "leaf 0xd ECX: set 0x00000000, seen 0x00000340",
                "leaf 0x40000001 EAX: set 0x00000001, seen 0x00000801 (+PV_SEND_IPI)",
            ]
        );
    }

    #[test]
    fn emulation_safe_hides_the_hypercall_features_only_there() {
        let Ok(kvm) = kvm_ioctls::Kvm::new() else {
            eprintln!("SKIPPED: /dev/kvm does not open here");
            return;
        };
        let eax = |c: &CpuId| {
            c.as_slice()
                .iter()
                .find(|e| e.function == KVM_FEATURES_LEAF)
                .map(|e| e.eax)
                .unwrap()
        };
        let host = base(&kvm, CpuidPolicy::Host).unwrap();
        let safe = base(&kvm, CpuidPolicy::EmulationSafe).unwrap();
        assert_eq!(eax(&safe) & KVM_PV_HYPERCALLS, 0);
        assert_eq!(eax(&safe), eax(&host) & !KVM_PV_HYPERCALLS);
    }
}
