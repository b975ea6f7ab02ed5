//! vCPUs: creation, boot state, and the run loop that dispatches exits to the buses.
//!
//! Only the BSP (vCPU 0) gets boot registers. APs are left in KVM's reset state; with the
//! in-kernel LAPIC they wait inside `KVM_RUN` for the guest's INIT/SIPI, as on real hardware.
//!
//! Stopping and pausing: every loop checks the shared [`ExitNotifier`] and the [`PauseGate`]
//! before entering the guest, and the VMM kicks each thread once with [`kick_signal`]. As in
//! Firecracker, the signal's handler sets `immediate_exit` in the thread's own `kvm_run`: a
//! thread inside `KVM_RUN` (halted, or waiting for SIPI) returns `EINTR`, and one kicked just
//! before it enters `KVM_RUN` returns at once instead of sleeping through the kick. Either way
//! it then sees the request, so one kick is enough and the VMM can join every thread.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, Once};
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_run, CpuId, Msrs, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};
use vmm_devices::{ExitNotifier, ExitRequest};

use crate::boot::regs::{boot_regs, boot_sregs};
use crate::boot::BootEntry;
use crate::bus::Bus;

/// Errors setting up or running a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A vCPU ioctl failed.
    #[error("vCPU {index}: {what} failed: {source}")]
    Ioctl {
        /// vCPU index.
        index: u8,
        /// Which ioctl.
        what: &'static str,
        /// Underlying error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM could not enter the guest.
    #[error(
        "vCPU {index}: KVM could not enter the guest (hardware entry failure reason {reason:#x})"
    )]
    FailEntry {
        /// vCPU index.
        index: u8,
        /// Hardware reason.
        reason: u64,
    },
    /// KVM could not handle something the guest did (commonly an instruction its emulator
    /// lacks, e.g. XRSTOR under PVM).
    #[error("vCPU {index}: KVM internal error (emulation failure?) at rip {rip:#x}")]
    Internal {
        /// vCPU index.
        index: u8,
        /// Guest instruction pointer, if it could be read.
        rip: u64,
    },
    /// An exit the VMM does not handle.
    #[error("vCPU {index}: unexpected exit {exit}")]
    UnexpectedExit {
        /// vCPU index.
        index: u8,
        /// Description.
        exit: String,
    },
    /// The vCPU thread could not be spawned.
    #[error("cannot spawn the thread of vCPU {index}: {source}")]
    Spawn {
        /// vCPU index.
        index: u8,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// Signal used to kick vCPU threads out of `KVM_RUN`.
pub fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

thread_local! {
    /// The `kvm_run` of the vCPU this thread runs, while [`Vcpu::run`] runs it (null
    /// otherwise): what the kick handler sets `immediate_exit` in.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// The kick handler: makes this thread's current or next `KVM_RUN` return `EINTR`.
extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // A const-initialised thread local of a type without a destructor: reading it is a plain
    // TLS load, safe in a signal handler.
    let run = KVM_RUN.with(Cell::get);
    if !run.is_null() {
        // SAFETY: `run` is this thread's vCPU's `kvm_run` page, mapped by its `VcpuFd`;
        // `KickTarget` clears the pointer before that `VcpuFd` is dropped, and the handler runs
        // on this same thread, so the page is mapped. The kernel shares the page, hence a
        // volatile one-byte store; the vCPU loop clears it after the `EINTR` it causes.
        unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
    }
}

/// Installs the handler for [`kick_signal`] (once per process).
pub fn install_kick_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if let Err(e) = vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick) {
            log::warn!("cannot install the vCPU kick handler: {e}");
        }
    });
}

/// Kicks a vCPU thread out of `KVM_RUN`, or makes its next `KVM_RUN` return at once.
///
/// `thread` must not have been joined yet (an exited but unjoined thread is fine).
pub(crate) fn kick(thread: libc::pthread_t) {
    // SAFETY: the caller guarantees the thread was not joined, so its pthread_t is valid; the
    // signal has `on_kick` installed (`install_kick_handler`, called before any vCPU thread is
    // spawned), which only stores one byte.
    let rc = unsafe { libc::pthread_kill(thread, kick_signal()) };
    if rc != 0 {
        log::warn!(
            "cannot kick a vCPU thread: {}",
            std::io::Error::from_raw_os_error(rc)
        );
    }
}

/// Points the kick handler at a vCPU's `kvm_run` while it lives on this thread.
struct KickTarget;

impl KickTarget {
    fn new(fd: &mut VcpuFd) -> Self {
        let run: *mut kvm_run = fd.get_kvm_run();
        KVM_RUN.with(|c| c.set(run));
        KickTarget
    }
}

impl Drop for KickTarget {
    fn drop(&mut self) {
        KVM_RUN.with(|c| c.set(std::ptr::null_mut()));
    }
}

/// What each vCPU thread reports about itself (for tests and diagnostics).
#[derive(Debug, Default)]
pub struct VcpuStats {
    /// Set once the thread has called `KVM_RUN`.
    pub entered_run: AtomicBool,
    /// Userspace exits handled.
    pub exits: AtomicU64,
}

const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MISC_ENABLE_FAST_STRING: u64 = 1;
const MTRR_ENABLE_WB: u64 = (1 << 11) | 6;

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 4;
const APIC_MODE_EXTINT: u32 = 7;

/// Reads the CPUID table back after `KVM_SET_CPUID2` and, where KVM reports another one (PVM
/// accepts the call and keeps host-like leaves), says what the guest really sees, the leaves
/// whose named features differ first. `None` when KVM took the table.
fn cpuid_not_taken(fd: &VcpuFd, index: u8, set: &CpuId) -> Option<String> {
    let seen = match fd.get_cpuid2(KVM_MAX_CPUID_ENTRIES) {
        Ok(seen) => seen,
        Err(e) => {
            log::debug!("vCPU {index}: KVM_GET_CPUID2 failed, CPUID not checked: {e}");
            return None;
        }
    };
    let mut diff: Vec<String> = crate::cpuid::compare(set, &seen)
        .iter()
        .map(ToString::to_string)
        .collect();
    if diff.is_empty() {
        return None;
    }
    const SHOWN: usize = 6;
    let count = diff.len();
    diff.sort_by_key(|d| !d.ends_with(')'));
    let mut text = diff[..count.min(SHOWN)].join("; ");
    if count > SHOWN {
        text += &format!("; and {} more", count - SHOWN);
    }
    Some(format!(
        "vCPU {index}: KVM accepted the CPUID table but reports another one back ({count} \
         registers differ), so the guest sees: {text}. Features hidden through CPUID are not \
         hidden from this guest: tell its kernel instead (noxsave, clearcpuid=)"
    ))
}

/// One vCPU, configured and ready to run on its own thread.
pub struct Vcpu {
    fd: VcpuFd,
    index: u8,
    /// What the guest really sees where KVM did not take our CPUID table (logged once, when
    /// the VM starts: not for a VM that never runs because of bad input).
    cpuid_warning: Option<String>,
}

impl Vcpu {
    /// Creates vCPU `index` and gives it CPUID, MSRs, LAPIC LINT wiring and, for the BSP, the
    /// boot registers.
    pub fn new(vm: &VmFd, index: u8, cpuid: &CpuId, boot: &BootEntry) -> Result<Self, Error> {
        let err = |what| {
            move |source| Error::Ioctl {
                index,
                what,
                source,
            }
        };
        let fd = vm
            .create_vcpu(u64::from(index))
            .map_err(err("KVM_CREATE_VCPU"))?;
        fd.set_cpuid2(cpuid).map_err(err("KVM_SET_CPUID2"))?;
        let cpuid_warning = cpuid_not_taken(&fd, index, cpuid);
        let vcpu = Self {
            fd,
            index,
            cpuid_warning,
        };
        vcpu.set_msrs()?;
        vcpu.set_lint()?;
        if index == 0 {
            let sregs = vcpu.fd.get_sregs().map_err(err("KVM_GET_SREGS"))?;
            vcpu.fd
                .set_sregs(&boot_sregs(sregs, boot.mode))
                .map_err(err("KVM_SET_SREGS"))?;
            vcpu.fd
                .set_regs(&boot_regs(boot.rip, boot.mode))
                .map_err(err("KVM_SET_REGS"))?;
            let fpu = kvm_fpu {
                fcw: 0x37f,
                mxcsr: 0x1f80,
                ..Default::default()
            };
            vcpu.fd.set_fpu(&fpu).map_err(err("KVM_SET_FPU"))?;
        }
        Ok(vcpu)
    }

    /// Index (also the APIC ID).
    pub fn index(&self) -> u8 {
        self.index
    }

    /// Where KVM did not take the CPUID table: what the guest sees instead.
    pub fn cpuid_warning(&self) -> Option<&str> {
        self.cpuid_warning.as_deref()
    }

    fn set_msrs(&self) -> Result<(), Error> {
        let entry = |index, data| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        };
        let entries = [
            entry(MSR_IA32_SYSENTER_CS, 0),
            entry(MSR_IA32_SYSENTER_ESP, 0),
            entry(MSR_IA32_SYSENTER_EIP, 0),
            entry(MSR_STAR, 0),
            entry(MSR_CSTAR, 0),
            entry(MSR_KERNEL_GS_BASE, 0),
            entry(MSR_SYSCALL_MASK, 0),
            entry(MSR_LSTAR, 0),
            entry(MSR_IA32_TSC, 0),
            entry(MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
            entry(MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WB),
        ];
        let msrs = Msrs::from_entries(&entries).map_err(|_| Error::Ioctl {
            index: self.index,
            what: "building the MSR list",
            source: kvm_ioctls::Error::new(libc::EINVAL),
        })?;
        let set = self.fd.set_msrs(&msrs).map_err(|source| Error::Ioctl {
            index: self.index,
            what: "KVM_SET_MSRS",
            source,
        })?;
        // KVM stops at the first MSR it refuses; the rest are defaults a kernel rewrites, so a
        // partial set is worth a warning, not a failure.
        if set != entries.len() {
            log::warn!(
                "vCPU {}: KVM set {set} of {} boot MSRs (stopped at {:#x})",
                self.index,
                entries.len(),
                entries[set].index
            );
        }
        Ok(())
    }

    /// LINT0 = ExtINT (the PIC's output) and LINT1 = NMI, as a PC BIOS leaves them.
    fn set_lint(&self) -> Result<(), Error> {
        let err = |what| {
            let index = self.index;
            move |source| Error::Ioctl {
                index,
                what,
                source,
            }
        };
        let mut lapic = self.fd.get_lapic().map_err(err("KVM_GET_LAPIC"))?;
        for (reg, mode) in [(APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)] {
            let bytes: [u8; 4] = std::array::from_fn(|i| lapic.regs[reg + i] as u8);
            let v = (u32::from_le_bytes(bytes) & !0x700) | (mode << 8);
            for (i, b) in v.to_le_bytes().iter().enumerate() {
                lapic.regs[reg + i] = *b as _;
            }
        }
        self.fd.set_lapic(&lapic).map_err(err("KVM_SET_LAPIC"))
    }

    /// A one-line summary of the vCPU's registers, for diagnostics.
    fn state(&self) -> String {
        match (self.fd.get_regs(), self.fd.get_sregs()) {
            (Ok(r), Ok(s)) => format!(
                "rip {:#x} rsp {:#x} rflags {:#x} cs {:#x} cr0 {:#x} cr2 {:#x} cr3 {:#x} cr4 \
                 {:#x} efer {:#x}",
                r.rip, r.rsp, r.rflags, s.cs.selector, s.cr0, s.cr2, s.cr3, s.cr4, s.efer
            ),
            (Err(e), _) | (_, Err(e)) => format!("registers unavailable ({e})"),
        }
    }

    /// Runs the guest until an exit is requested (by a device, another vCPU, or this one).
    /// Errors are stored in `error` and reported as [`ExitRequest::VcpuFailed`]. Kicks
    /// ([`kick`]) reach this thread's `KVM_RUN` from the start of this call to its end.
    pub fn run(
        mut self,
        pio: &Bus,
        mmio: &Bus,
        exit: &ExitNotifier,
        stats: &VcpuStats,
        error: &Mutex<Option<Error>>,
        pause: &PauseGate,
    ) {
        let index = self.index;
        // Everything from here on runs what the guest asks (once armed; see crate::seccomp).
        crate::seccomp::confine(crate::seccomp::ThreadKind::Vcpu);
        // Before the first look at `exit` and `pause`: a kick from here on is never lost.
        let kick_target = KickTarget::new(&mut self.fd);
        while !exit.is_requested() {
            pause.wait(exit);
            if exit.is_requested() {
                break;
            }
            stats.entered_run.store(true, Ordering::Relaxed);
            let outcome = match self.fd.run() {
                Ok(VcpuExit::IoOut(port, data)) => {
                    pio.write(u64::from(port), data);
                    Ok(None)
                }
                Ok(VcpuExit::IoIn(port, data)) => {
                    pio.read(u64::from(port), data);
                    Ok(None)
                }
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    mmio.read(addr, data);
                    Ok(None)
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    mmio.write(addr, data);
                    Ok(None)
                }
                Ok(VcpuExit::Hlt) => Ok(None),
                Ok(VcpuExit::Shutdown) => {
                    // Where the guest died is the first thing its developer needs.
                    log::warn!("vCPU {index}: shutdown (triple fault): {}", self.state());
                    Ok(Some(ExitRequest::Shutdown))
                }
                Ok(VcpuExit::SystemEvent(kind, _)) => Ok(Some(match kind {
                    kvm_bindings::KVM_SYSTEM_EVENT_RESET => ExitRequest::Reset,
                    _ => ExitRequest::Shutdown,
                })),
                Ok(VcpuExit::FailEntry(reason, _)) => Err(Error::FailEntry { index, reason }),
                Ok(VcpuExit::InternalError) => Err(Error::Internal {
                    index,
                    rip: self.fd.get_regs().map(|r| r.rip).unwrap_or(0),
                }),
                Ok(other) => Err(Error::UnexpectedExit {
                    index,
                    exit: format!("{other:?}"),
                }),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    // A kick: clear it before the loop looks at why it came.
                    self.fd.set_kvm_immediate_exit(0);
                    Ok(None)
                }
                Err(source) => Err(Error::Ioctl {
                    index,
                    what: "KVM_RUN",
                    source,
                }),
            };
            stats.exits.fetch_add(1, Ordering::Relaxed);
            match outcome {
                Ok(None) => {}
                Ok(Some(req)) => exit.request(req),
                Err(e) => {
                    log::error!("{e}");
                    error
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get_or_insert(e);
                    exit.request(ExitRequest::VcpuFailed);
                }
            }
        }
        // Explicitly, before `self` (the `kvm_run` mapping) goes.
        drop(kick_target);
    }
}

/// Shared state handed to each vCPU thread.
pub(crate) struct VcpuShared {
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub exit: Arc<ExitNotifier>,
    pub error: Arc<Mutex<Option<Error>>>,
    pub pause: Arc<PauseGate>,
}

/// How long a paused vCPU sleeps between looks at the exit request.
const PAUSE_POLL: Duration = Duration::from_millis(50);

/// Holds the vCPUs between two `KVM_RUN`s while the host has the VM paused (the control
/// socket's `pause`); [`VcpuThreads::pause`] kicks them out of `KVM_RUN` to get there.
#[derive(Default)]
pub struct PauseGate {
    paused: Mutex<bool>,
    cv: Condvar,
    parked: AtomicUsize,
}

impl PauseGate {
    /// Parks the calling vCPU while paused (and the VM not ending).
    fn wait(&self, exit: &ExitNotifier) {
        let mut paused = self.paused.lock().unwrap_or_else(|p| p.into_inner());
        if !*paused {
            return;
        }
        self.parked.fetch_add(1, Ordering::SeqCst);
        while *paused && !exit.is_requested() {
            paused = self
                .cv
                .wait_timeout(paused, PAUSE_POLL)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        self.parked.fetch_sub(1, Ordering::SeqCst);
    }

    fn set(&self, paused: bool) {
        *self.paused.lock().unwrap_or_else(|p| p.into_inner()) = paused;
        self.cv.notify_all();
    }

    /// Whether the VM is paused.
    pub fn is_paused(&self) -> bool {
        *self.paused.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The running vCPU threads, as the control socket sees them: pause and resume.
pub struct VcpuThreads {
    threads: Vec<libc::pthread_t>,
    gate: Arc<PauseGate>,
    exit: Arc<ExitNotifier>,
}

impl VcpuThreads {
    /// `threads` must stay unjoined while this lives (the VMM drops it before joining them).
    pub(crate) fn new(
        threads: Vec<libc::pthread_t>,
        gate: Arc<PauseGate>,
        exit: Arc<ExitNotifier>,
    ) -> Self {
        VcpuThreads {
            threads,
            gate,
            exit,
        }
    }

    /// Pauses every vCPU (one kick each) and waits (up to a second) until each is parked;
    /// false if some did not park in time (a vCPU busy in a device; it parks when that
    /// returns) or the VM is ending.
    pub fn pause(&self) -> bool {
        self.gate.set(true);
        for &t in &self.threads {
            // Not joined: the VMM drops `self` before it joins them (see `new`).
            kick(t);
        }
        let deadline = Instant::now() + Duration::from_secs(1);
        while self.gate.parked.load(Ordering::SeqCst) < self.threads.len() {
            if Instant::now() > deadline || self.exit.is_requested() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }

    /// Lets the vCPUs run again.
    pub fn resume(&self) {
        self.gate.set(false);
    }

    /// Whether the VM is paused.
    pub fn is_paused(&self) -> bool {
        self.gate.is_paused()
    }

    /// How many vCPUs there are.
    pub fn count(&self) -> usize {
        self.threads.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kick_self() {
        // SAFETY: pthread_self has no preconditions; this thread is running, so not joined.
        kick(unsafe { libc::pthread_self() });
    }

    /// A kick that lands before a thread enters `KVM_RUN` is not lost: the handler set
    /// `immediate_exit`, so `KVM_RUN` returns `EINTR` at once instead of running the guest.
    #[test]
    fn a_kick_before_kvm_run_makes_it_return_at_once() {
        let Ok(kvm) = kvm_ioctls::Kvm::new() else {
            eprintln!("SKIPPED: /dev/kvm does not open here");
            return;
        };
        let vm = kvm.create_vm().unwrap();
        let mut fd = vm.create_vcpu(0).unwrap();
        install_kick_handler();

        // No vCPU on this thread yet: a kick changes nothing.
        kick_self();
        assert_eq!(fd.get_kvm_run().immediate_exit, 0);

        let target = KickTarget::new(&mut fd);
        kick_self();
        assert_eq!(fd.get_kvm_run().immediate_exit, 1);
        let e = fd.run().unwrap_err();
        assert_eq!(e.errno(), libc::EINTR, "{e}");
        drop(target);
        assert!(KVM_RUN.with(Cell::get).is_null());
    }
}
