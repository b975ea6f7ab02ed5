//! `vmm-vmm`: a small KVM VMM library (x86_64).
//!
//! ```no_run
//! use vmm_vmm::{run, VmConfig};
//! let report = run(VmConfig::new("bzImage")).expect("VM failed");
//! std::process::exit(report.exit_code());
//! ```
//!
//! [`run`] is [`Vmm::new`] followed by [`Vmm::run`]. Between the two, callers can add devices:
//! [`Vmm::pci_bus`] is the PCI bus 0 (a host bridge sits at 00:00.0) where virtio-pci devices
//! go, [`Vmm::mmio_bus_mut`] maps their BARs, [`Vmm::vm`] registers irqfds/ioeventfds, and
//! [`Vmm::guest_ram`] gives the memfd a vhost-user backend needs.
//!
//! The guest's machine: `cpus` vCPUs described by an MP table, RAM in one memfd (with a hole at
//! 3..4 GiB), in-kernel PIC/IOAPIC/LAPIC/PIT, COM1 (0x3f8, IRQ 4), an i8042 whose reset
//! command ends the VM with status 0, a debug-exit port (0xf4: writing `V` ends the VM with
//! status `V`), PCI configuration mechanism #1 (0xcf8/0xcfc) and a pvpanic PCI device.
//!
//! A guest kernel's panic fails the VM whatever its command line says: through pvpanic, or its
//! panic banner on the console ([`watch`]).

pub mod boot;
pub mod builder;
pub mod bus;
pub mod console;
pub mod control;
pub mod cpuid;
pub mod event_loop;
pub mod initramfs;
pub mod irq;
pub mod kvm;
pub mod legacy;
pub mod memory;
pub mod mptable;
pub mod privileges;
pub use vmm_net::seccomp;
pub mod signals;
pub mod vcpu;
pub mod vm;
pub mod watch;

use std::os::unix::thread::JoinHandleExt;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vmm_devices::pci::PciBus;
use vmm_devices::pvpanic;
use vmm_devices::serial::{SerialConsole, SharedBuffer, COM1_IRQ};
use vmm_devices::virtio_pci::{self, VirtioDevice, VirtioPciDevice};
use vmm_devices::{ExitNotifier, ExitRequest};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

pub use boot::{BootEntry, EntryMode};
pub use cpuid::CpuidPolicy;
pub use memory::GuestRam;
pub use vmm_devices::serial::SharedBuffer as ConsoleBuffer;

/// Default kernel command line: serial console, reboot through the i8042 (which the VMM
/// turns into exit status 0), and reboot right away on panic.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1";

/// Where the guest's serial console goes.
#[derive(Clone, Debug, Default)]
pub enum Console {
    /// Output to stdout; input from stdin (raw mode while the VM runs if stdin is a terminal).
    #[default]
    Stdio,
    /// Output collected in a buffer; no input (tests, embedders).
    Capture(SharedBuffer),
    /// Output discarded; no input.
    Null,
}

/// What VM to build.
#[derive(Clone, Debug)]
pub struct VmConfig {
    /// Kernel image: ELF (PVH note preferred) or bzImage.
    pub kernel: PathBuf,
    /// Optional initrd.
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// Guest RAM in MiB.
    pub mem_mib: u64,
    /// vCPUs (1..=[`mptable::MAX_CPUS`]).
    pub cpus: u8,
    /// Serial console routing.
    pub console: Console,
    /// CPU features shown to the guest.
    pub cpuid: CpuidPolicy,
    /// Stop the VM (status [`EXIT_TIMEOUT`]) after this long.
    pub timeout: Option<Duration>,
    /// A copy of the console goes here.
    pub console_log: Option<PathBuf>,
    /// Console reports that fail the VM besides a panic.
    pub fail_on: watch::FailOn,
    /// Offer a pvpanic PCI device (a panic is still caught on the console without it).
    pub pvpanic: bool,
    /// The virtio devices, in PCI slot order (see [`builder`]).
    pub devices: Vec<builder::DeviceConfig>,
    /// The virtiofsd binary for `--share` devices (default: found on PATH or in
    /// ~/.cargo/bin).
    pub virtiofsd: Option<PathBuf>,
    /// The control socket's path ([`control`]).
    pub api: Option<PathBuf>,
    /// Append to [`VmConfig::console_log`] instead of truncating it (a reboot's second boot).
    pub console_log_append: bool,
}

impl VmConfig {
    /// 1 vCPU, 256 MiB, [`DEFAULT_CMDLINE`], console on stdio.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        Self {
            kernel: kernel.into(),
            initrd: None,
            cmdline: DEFAULT_CMDLINE.into(),
            mem_mib: 256,
            cpus: 1,
            console: Console::Stdio,
            cpuid: CpuidPolicy::Auto,
            timeout: None,
            console_log: None,
            fail_on: watch::FailOn::default(),
            pvpanic: true,
            devices: Vec::new(),
            virtiofsd: None,
            api: None,
            console_log_append: false,
        }
    }
}

/// Why the VM ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmExit {
    /// The guest wrote this byte to the debug-exit port.
    DebugExit(u8),
    /// The guest reset the machine (i8042 0xFE or a KVM reset event).
    Reset,
    /// A vCPU triple-faulted or KVM reported a shutdown. Linux's `reboot=t` does this on
    /// purpose, but a crash looks the same and our default command line says `reboot=k`, so
    /// it is reported as a failure: a CI run must not pass because its guest crashed.
    Shutdown,
    /// The host stopped the VM through [`Vmm::exit_notifier`] (`ExitRequest::Stop`).
    Stopped,
    /// The guest kernel panicked (pvpanic or its console), or reported an oops or warning that
    /// [`VmConfig::fail_on`] makes a failure; [`RunReport::failure`] says which.
    GuestFailed,
    /// [`VmConfig::timeout`] passed.
    Timeout,
    /// The control socket's `halt`.
    Halted,
    /// The control socket's `reboot`: the owner (the `vmm` binary) boots the same
    /// configuration again.
    Reboot,
}

/// Exit status when the guest kernel panicked (or failed per `--fail-on`): 128 + SIGABRT,
/// what a shell reports for an aborted program, distinct from 0, 1, 2, 124 and 130.
pub const EXIT_GUEST_FAILED: i32 = 134;
/// Exit status after `--timeout`, as timeout(1) uses.
pub const EXIT_TIMEOUT: i32 = 124;
/// Exit status when the host stopped the VM (SIGINT/SIGTERM).
pub const EXIT_STOPPED: i32 = 130;

impl VmExit {
    /// Process exit status for this exit: the debug-exit byte; 0 for a guest reset (the
    /// guest's normal "I am done" with `reboot=k`); 1 for a triple fault; 130 when the host
    /// stopped the VM (the shell's convention for a process ended by SIGINT) or halted it
    /// through the control socket; 134 when the
    /// guest kernel failed; 124 after the timeout.
    pub fn exit_code(self) -> i32 {
        match self {
            VmExit::DebugExit(v) => i32::from(v),
            VmExit::Reset => 0,
            VmExit::Shutdown => 1,
            VmExit::Stopped | VmExit::Halted => EXIT_STOPPED,
            VmExit::Reboot => 0,
            VmExit::GuestFailed => EXIT_GUEST_FAILED,
            VmExit::Timeout => EXIT_TIMEOUT,
        }
    }
}

/// The outcome of [`Vmm::run`].
#[derive(Clone, Debug)]
pub struct RunReport {
    /// Why the VM ended.
    pub exit: VmExit,
    /// Per vCPU: whether its thread entered `KVM_RUN`.
    pub vcpus_entered: Vec<bool>,
    /// Per vCPU: `KVM_RUN` returns handled (userspace exits and interruptions).
    pub vcpu_exits: Vec<u64>,
    /// From starting the vCPUs to the exit request.
    pub elapsed: Duration,
    /// With [`VmExit::GuestFailed`]: what the guest reported.
    pub failure: Option<watch::GuestFailure>,
}

impl RunReport {
    /// Process exit status, see [`VmExit::exit_code`].
    pub fn exit_code(&self) -> i32 {
        self.exit.exit_code()
    }
}

/// Any error building or running the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// No vCPUs, or more than the MP table describes.
    #[error("{requested} vCPUs requested; 1..={max} supported")]
    CpuCount {
        /// What the configuration asked for.
        requested: u8,
        /// [`mptable::MAX_CPUS`].
        max: u8,
    },
    /// More vCPUs than this host's KVM allows.
    #[error("{requested} vCPUs requested; this KVM allows {max}")]
    KvmCpuLimit {
        /// What the configuration asked for.
        requested: u8,
        /// `KVM_CAP_MAX_VCPUS`.
        max: usize,
    },
    /// The 32-bit hole has no room for another device's BAR.
    #[error("no room left for another PCI BAR ({size:#x} bytes below {PCI_BAR_END:#x})")]
    PciSpace {
        /// The BAR's size.
        size: u64,
    },
    /// PCI bus 0 refused a device (no free slot).
    #[error(transparent)]
    PciBus(#[from] vmm_devices::pci::PciError),
    /// The virtio-pci transport could not be built around a device.
    #[error("virtio-pci device: {0}")]
    VirtioTransport(#[from] virtio_pci::Error),
    /// Every vCPU stopped, yet nothing asked the VM to end and no vCPU reported an error (a
    /// bug).
    #[error("the VM stopped without a reason")]
    NoExitReason,
    /// KVM is not usable.
    #[error(transparent)]
    Kvm(#[from] kvm::Error),
    /// VM creation failed.
    #[error(transparent)]
    Vm(#[from] vm::Error),
    /// Guest memory failed.
    #[error(transparent)]
    Memory(#[from] memory::Error),
    /// Loading the kernel/initrd failed.
    #[error(transparent)]
    Boot(#[from] boot::Error),
    /// CPUID setup failed.
    #[error(transparent)]
    Cpuid(#[from] cpuid::Error),
    /// MP table setup failed.
    #[error(transparent)]
    MpTable(#[from] mptable::Error),
    /// A vCPU failed.
    #[error(transparent)]
    Vcpu(#[from] vcpu::Error),
    /// Mapping a device failed.
    #[error("cannot map a device: {0}")]
    Bus(#[from] bus::Error),
    /// The console log file cannot be created.
    #[error("--console-log {}: {source}", path.display())]
    ConsoleLog {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A device cannot be built (bad input or a backend that fails).
    #[error(transparent)]
    Device(#[from] builder::DeviceError),
    /// The control socket cannot be set up.
    #[error(transparent)]
    Control(#[from] control::Error),
    /// The event loop failed.
    #[error(transparent)]
    EventLoop(#[from] event_loop::Error),
    /// Host I/O (eventfd, epoll, terminal) failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl VmmError {
    /// Whether the caller's input is at fault (a bad argument, a file that is not what it
    /// should be, a socket path in use), rather than the host, KVM, a backend or the VMM: the
    /// `vmm` binary exits 2 for bad input and 1 for everything else. Every variant is matched
    /// by name, so a new one must be decided here.
    pub fn is_bad_input(&self) -> bool {
        match self {
            VmmError::CpuCount { .. } | VmmError::KvmCpuLimit { .. } => true,
            VmmError::ConsoleLog { .. } => true,
            VmmError::Device(d) => d.usage,
            VmmError::Control(e) => match e {
                control::Error::InUse(_) | control::Error::NotSocket(_) => true,
                control::Error::Bind { .. } => false,
            },
            VmmError::Memory(e) => match e {
                memory::Error::BadSize { .. } => true,
                memory::Error::Memfd(_)
                | memory::Error::Truncate { .. }
                | memory::Error::Seal(_)
                | memory::Error::Mmap(_)
                | memory::Error::SetMemoryRegion { .. } => false,
            },
            VmmError::Boot(e) => match e {
                boot::Error::KernelOpen { .. }
                | boot::Error::KernelRead { .. }
                | boot::Error::NotAKernel { .. }
                | boot::Error::UnsupportedKernel { .. }
                | boot::Error::Truncated { .. }
                | boot::Error::KernelDoesNotFit { .. }
                | boot::Error::KernelTooLow { .. }
                | boot::Error::EntryOutsideImage { .. }
                | boot::Error::Load { .. }
                | boot::Error::Initrd { .. }
                | boot::Error::InitrdDoesNotFit { .. }
                | boot::Error::Cmdline(_) => true,
                // The VMM writing its own structures into memory it sized.
                boot::Error::GuestWrite { .. } | boot::Error::BootParams(_) => false,
            },
            VmmError::MpTable(e) => match e {
                mptable::Error::TooManyCpus(_) => true,
                mptable::Error::Write(_) => false,
            },
            VmmError::Kvm(_)
            | VmmError::Vm(_)
            | VmmError::Cpuid(_)
            | VmmError::Vcpu(_)
            | VmmError::Bus(_)
            | VmmError::PciSpace { .. }
            | VmmError::PciBus(_)
            | VmmError::VirtioTransport(_)
            | VmmError::NoExitReason
            | VmmError::EventLoop(_)
            | VmmError::Io { .. } => false,
        }
    }
}

fn io_err(what: &'static str) -> impl FnOnce(std::io::Error) -> VmmError {
    move |source| VmmError::Io { what, source }
}

/// Boots `config` and runs it to the end. See [`Vmm`] to add devices first.
pub fn run(config: VmConfig) -> Result<RunReport, VmmError> {
    Vmm::new(config)?.run()
}

/// First BAR address handed to virtio-pci devices: the bottom of the 32-bit hole.
pub const PCI_BAR_BASE: u64 = memory::MMIO_HOLE_START;
/// End of the BAR window: the IOAPIC and LAPIC live above.
pub const PCI_BAR_END: u64 = 0xfe00_0000;

/// A built VM, ready to run. Field order matters: devices and vCPUs drop before the VM, the VM
/// before guest memory.
pub struct Vmm {
    vcpus: Vec<vcpu::Vcpu>,
    virtio: Vec<Arc<Mutex<VirtioPciDevice>>>,
    /// After the devices: virtiofsd is stopped once its frontend is gone.
    attached: builder::Attached,
    routing: Arc<irq::GsiRouting>,
    next_bar: u64,
    vm: vm::Vm,
    pio: bus::Bus,
    mmio: bus::Bus,
    pci: Arc<Mutex<PciBus>>,
    serial: Arc<Mutex<SerialConsole>>,
    exit: Arc<ExitNotifier>,
    failures: Arc<watch::FailureWatch>,
    timeout: Option<Duration>,
    /// SIGINT/SIGTERM's eventfd, once [`Vmm::stop_on_signals`] installed the handlers.
    stop_signals: Option<EventFd>,
    /// The control socket, bound before the VM is built, served while it runs.
    control: Option<control::ControlSocket>,
    mem_mib: u64,
    console: Console,
    boot: BootEntry,
    ram: GuestRam,
}

impl Vmm {
    /// Creates the VM, loads the kernel, wires the legacy devices and configures the vCPUs.
    pub fn new(mut config: VmConfig) -> Result<Self, VmmError> {
        // Bad device arguments are found before anything is built.
        let virtiofsd = builder::check(&mut config.devices, config.virtiofsd.as_deref())?;
        if config.cpus == 0 || config.cpus > mptable::MAX_CPUS {
            return Err(VmmError::CpuCount {
                requested: config.cpus,
                max: mptable::MAX_CPUS,
            });
        }
        let console_log = match &config.console_log {
            Some(path) => Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .write(true)
                    .append(config.console_log_append)
                    .truncate(!config.console_log_append)
                    .open(path)
                    .map_err(|source| VmmError::ConsoleLog {
                        path: path.clone(),
                        source,
                    })?,
            ),
            None => None,
        };
        // Bound before the VM is built: a path in use is bad input, found at once.
        let control = config
            .api
            .as_deref()
            .map(control::ControlSocket::bind)
            .transpose()?;
        let ram = GuestRam::new(config.mem_mib)?;
        let boot = boot::load(
            &ram,
            &boot::BootSpec {
                kernel: &config.kernel,
                initrd: config.initrd.as_deref(),
                cmdline: &config.cmdline,
            },
        )?;
        mptable::write(&ram, config.cpus)?;

        // KVM last: a bad kernel path is reported the same with or without /dev/kvm.
        let kvm = kvm::open()?;
        let max_vcpus = kvm.get_max_vcpus();
        if usize::from(config.cpus) > max_vcpus {
            return Err(VmmError::KvmCpuLimit {
                requested: config.cpus,
                max: max_vcpus,
            });
        }

        let vm = vm::Vm::new(&kvm)?;
        ram.register(vm.fd())?;

        let exit = Arc::new(ExitNotifier::new().map_err(io_err("creating the exit eventfd"))?);
        let serial_irq = EventFd::new(EFD_NONBLOCK).map_err(io_err("creating the serial irqfd"))?;
        vm.register_irqfd(&serial_irq, COM1_IRQ)?;
        let out: Box<dyn std::io::Write + Send> = match &config.console {
            Console::Stdio => Box::new(std::io::stdout()),
            Console::Capture(buf) => Box::new(buf.clone()),
            Console::Null => Box::new(std::io::sink()),
        };
        let failures = Arc::new(
            watch::FailureWatch::new(config.fail_on)
                .map_err(io_err("creating the failure watch's eventfd"))?,
        );
        let out = Box::new(watch::ConsoleTap::new(out, console_log, failures.clone()));
        let serial = Arc::new(Mutex::new(SerialConsole::new(serial_irq, out)));
        let pci = Arc::new(Mutex::new(PciBus::with_host_bridge()));

        let pio = legacy::pio_bus(&exit, &serial, &pci)?;

        let policy = config.cpuid.resolve();
        log::info!("CPUID policy: {policy:?}");
        let base_cpuid = cpuid::base(&kvm, policy)?;
        let vcpus = (0..config.cpus)
            .map(|i| {
                vcpu::Vcpu::new(
                    vm.fd(),
                    i,
                    &cpuid::for_vcpu(&base_cpuid, i, config.cpus),
                    &boot,
                )
            })
            .collect::<Result<Vec<_>, _>>()?;

        let mut vmm = Self {
            vcpus,
            virtio: Vec::new(),
            attached: builder::Attached::default(),
            routing: Arc::new(irq::GsiRouting::new(vm.shared_fd())),
            next_bar: PCI_BAR_BASE,
            vm,
            pio,
            mmio: bus::Bus::new(),
            pci,
            serial,
            exit,
            failures,
            timeout: config.timeout,
            stop_signals: None,
            control,
            mem_mib: config.mem_mib,
            console: config.console,
            boot,
            ram,
        };
        if config.pvpanic {
            vmm.add_pvpanic()?;
        }
        let mem = vmm.ram.memory().clone();
        let mut attached = builder::Attached::default();
        let result = builder::attach(
            config.devices,
            virtiofsd.as_deref(),
            &mem,
            &mut attached,
            |dev| vmm.add_virtio_device(dev).map_err(|e| e.to_string()),
        );
        vmm.attached = attached;
        result?;
        Ok(vmm)
    }

    /// The next `size`-aligned BAR address in the 32-bit hole.
    fn allocate_bar(&mut self, size: u64) -> Result<u64, VmmError> {
        let bar = self.next_bar.next_multiple_of(size);
        if bar + size > PCI_BAR_END {
            return Err(VmmError::PciSpace { size });
        }
        self.next_bar = bar + size;
        Ok(bar)
    }

    /// pvpanic on PCI: a guest kernel's panic notifier ends the VM as a failure.
    fn add_pvpanic(&mut self) -> Result<(), VmmError> {
        let bar = self.allocate_bar(pvpanic::BAR_SIZE)?;
        let dev = Arc::new(Mutex::new(pvpanic::PvPanic::new(
            bar as u32,
            self.exit.clone(),
        )));
        self.mmio.insert(bar, pvpanic::BAR_SIZE, dev.clone())?;
        let slot = self
            .pci
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .add_device(dev)?;
        log::info!("pvpanic in slot {slot}, BAR {bar:#x}");
        Ok(())
    }

    /// Plugs a virtio device into PCI bus 0 behind the virtio-pci transport: a BAR in the 32-bit
    /// hole, one MSI-X vector per queue plus one for configuration (each on its own GSI), and
    /// an ioeventfd on each queue's notify address so a guest's kick never exits to the VMM.
    /// Returns the PCI slot.
    pub fn add_virtio_device(&mut self, dev: Box<dyn VirtioDevice>) -> Result<usize, VmmError> {
        let bar = self.allocate_bar(virtio_pci::BAR_SIZE)?;
        let vectors = dev.queue_max_sizes().len() as u32 + 1;
        let gsis = self.routing.allocate(vectors);
        let router: Arc<dyn virtio_pci::MsiRouter> = self.routing.clone();
        let pci_dev = VirtioPciDevice::new(dev, bar, &gsis, router)?;
        for (offset, kick) in pci_dev.notifiers() {
            self.vm
                .fd()
                .register_ioevent(
                    kick,
                    &kvm_ioctls::IoEventAddress::Mmio(bar + offset),
                    kvm_ioctls::NoDatamatch,
                )
                .map_err(|e| VmmError::Io {
                    what: "registering a queue notify ioeventfd",
                    source: std::io::Error::from_raw_os_error(e.errno()),
                })?;
        }
        let pci_dev = Arc::new(Mutex::new(pci_dev));
        self.mmio
            .insert(bar, virtio_pci::BAR_SIZE, pci_dev.clone())?;
        let slot = self
            .pci
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .add_device(pci_dev.clone())?;
        self.virtio.push(pci_dev);
        log::info!("virtio-pci device in slot {slot}, BAR {bar:#x}, GSIs {gsis:?}");
        Ok(slot)
    }

    /// PCI bus 0, to add devices before [`Vmm::run`].
    pub fn pci_bus(&self) -> &Arc<Mutex<PciBus>> {
        &self.pci
    }

    /// The MMIO bus (for BARs), before [`Vmm::run`].
    pub fn mmio_bus_mut(&mut self) -> &mut bus::Bus {
        &mut self.mmio
    }

    /// The port-I/O bus, before [`Vmm::run`].
    pub fn pio_bus_mut(&mut self) -> &mut bus::Bus {
        &mut self.pio
    }

    /// The VM (irqfd, ioeventfd, MSI routing).
    pub fn vm(&self) -> &vm::Vm {
        &self.vm
    }

    /// Guest RAM and its memfd.
    pub fn guest_ram(&self) -> &GuestRam {
        &self.ram
    }

    /// How the BSP will enter the kernel.
    pub fn boot_entry(&self) -> BootEntry {
        self.boot
    }

    /// Stops the VM (status 130, [`VmExit::Stopped`]) on SIGINT or SIGTERM: installs the
    /// process's handlers for them ([`signals`]), so only a program that owns the process (the
    /// `vmm` binary) should call it.
    pub fn stop_on_signals(&mut self) -> Result<(), VmmError> {
        self.stop_signals = Some(signals::install().map_err(io_err("installing signal handlers"))?);
        Ok(())
    }

    /// The stop request shared by devices and vCPUs (devices added later report through it).
    pub fn exit_notifier(&self) -> &Arc<ExitNotifier> {
        &self.exit
    }

    /// Runs the vCPUs until the guest ends the VM (debug exit, reset, shutdown) or a vCPU fails.
    /// When this returns, the VM is gone and every in-process backend has seen its frontend
    /// close, logged its counters and ended (or was given two seconds to).
    pub fn run(mut self) -> Result<RunReport, VmmError> {
        let backends = std::mem::take(&mut self.attached.backends);
        let result = self.run_vm();
        let deadline = Instant::now() + Duration::from_secs(2);
        for b in backends {
            b.join(deadline);
        }
        result
    }

    /// [`Vmm::run`], consuming the VM: its devices (the backends' frontends) are dropped on
    /// return.
    fn run_vm(mut self) -> Result<RunReport, VmmError> {
        vcpu::install_kick_handler();
        let pio = Arc::new(std::mem::take(&mut self.pio));
        let mmio = Arc::new(std::mem::take(&mut self.mmio));
        let error: Arc<Mutex<Option<vcpu::Error>>> = Arc::new(Mutex::new(None));
        let stats: Vec<Arc<vcpu::VcpuStats>> = (0..self.vcpus.len())
            .map(|_| Arc::new(vcpu::VcpuStats::default()))
            .collect();

        let raw_mode = match self.console {
            Console::Stdio => console::RawMode::stdin().map_err(io_err("setting stdin raw"))?,
            _ => None,
        };

        if let Some(w) = self.vcpus.iter().find_map(|v| v.cpuid_warning()) {
            log::warn!("{w}");
        }
        let started = Instant::now();
        let pause = Arc::new(vcpu::PauseGate::default());
        let mut threads = Vec::new();
        for (vcpu, st) in std::mem::take(&mut self.vcpus).into_iter().zip(&stats) {
            let shared = vcpu::VcpuShared {
                pio: pio.clone(),
                mmio: mmio.clone(),
                exit: self.exit.clone(),
                error: error.clone(),
                pause: pause.clone(),
            };
            let st = st.clone();
            let index = vcpu.index();
            let handle = std::thread::Builder::new()
                .name(format!("vcpu{index}"))
                .spawn(move || {
                    vcpu.run(
                        &shared.pio,
                        &shared.mmio,
                        &shared.exit,
                        &st,
                        &shared.error,
                        &shared.pause,
                    )
                })
                .map_err(|source| vcpu::Error::Spawn { index, source });
            match handle {
                Ok(h) => threads.push(h),
                Err(e) => {
                    self.exit.request(ExitRequest::VcpuFailed);
                    stop_threads(threads);
                    return Err(e.into());
                }
            }
        }

        let vcpus = vcpu::VcpuThreads::new(
            threads.iter().map(|h| h.as_pthread_t()).collect(),
            pause,
            self.exit.clone(),
        );
        let loop_result = self.event_loop(started, vcpus);
        let elapsed = started.elapsed();
        if !self.exit.is_requested() {
            // The loop failed; stop the guest anyway.
            self.exit.request(ExitRequest::VcpuFailed);
        }
        stop_threads(threads);
        drop(raw_mode);
        loop_result?;

        let pending = self.exit.pending();
        if pending == Some(ExitRequest::GuestPanic) && self.failures.failure().is_none() {
            self.failures.pvpanic();
        }
        let failure = self.failures.failure();
        let exit = match pending {
            // A reset or shutdown after a panic banner is the panic's own reboot.
            Some(_) if failure.is_some() => VmExit::GuestFailed,
            Some(ExitRequest::GuestPanic) => VmExit::GuestFailed,
            Some(ExitRequest::DebugExit(v)) => VmExit::DebugExit(v),
            Some(ExitRequest::Reset) => VmExit::Reset,
            Some(ExitRequest::Shutdown) => VmExit::Shutdown,
            Some(ExitRequest::Stop) => VmExit::Stopped,
            Some(ExitRequest::Halt) => VmExit::Halted,
            Some(ExitRequest::Reboot) => VmExit::Reboot,
            Some(ExitRequest::Timeout) => VmExit::Timeout,
            Some(ExitRequest::VcpuFailed) | None => {
                let e = error.lock().unwrap_or_else(|p| p.into_inner()).take();
                return Err(match e {
                    Some(e) => e.into(),
                    None => VmmError::NoExitReason,
                });
            }
        };
        Ok(RunReport {
            exit,
            vcpus_entered: stats
                .iter()
                .map(|s| s.entered_run.load(Ordering::Relaxed))
                .collect(),
            vcpu_exits: stats
                .iter()
                .map(|s| s.exits.load(Ordering::Relaxed))
                .collect(),
            elapsed,
            failure,
        })
    }

    /// Waits for the exit request on the VMM's event loop ([`event_loop`]).
    fn event_loop(&mut self, started: Instant, vcpus: vcpu::VcpuThreads) -> Result<(), VmmError> {
        let mut el = event_loop::EventLoop::new(&self.exit, &self.failures)?;
        if let Some(signals) = self.stop_signals.take() {
            el.stop_on(signals, self.exit.clone());
        }
        for dev in &self.virtio {
            el.watch_config(dev);
        }
        if matches!(self.console, Console::Stdio) {
            el.console_input(self.serial.clone());
        }
        if let Some(socket) = self.control.take() {
            el.add(Box::new(control::ControlServer::new(
                socket,
                control::Context {
                    exit: self.exit.clone(),
                    vcpus,
                    devices: self.attached.devices.clone(),
                    serial: self.serial.clone(),
                    started,
                    mem_mib: self.mem_mib,
                },
            )));
        }
        el.run(
            &self.exit,
            &self.failures,
            self.timeout.map(|t| started + t),
        )?;
        Ok(())
    }
}

/// Stops every vCPU thread and joins it. The exit request is already set; one kick each is
/// enough, because the kick handler sets the thread's `immediate_exit` ([`vcpu`]).
fn stop_threads(threads: Vec<std::thread::JoinHandle<()>>) {
    for handle in &threads {
        // Not joined yet: joined below, after every thread was kicked.
        vcpu::kick(handle.as_pthread_t());
    }
    for handle in threads {
        if handle.join().is_err() {
            log::error!("a vCPU thread panicked");
        }
    }
}

#[cfg(test)]
mod exit_code_tests {
    use super::VmExit;

    /// A CI user's pass/fail: only a guest that says so (debug-exit 0, or a reset) passes.
    #[test]
    fn only_a_clean_guest_exit_is_success() {
        assert_eq!(VmExit::DebugExit(0).exit_code(), 0);
        assert_eq!(VmExit::DebugExit(0x31).exit_code(), 0x31);
        assert_eq!(VmExit::Reset.exit_code(), 0);
        assert_eq!(
            VmExit::Shutdown.exit_code(),
            1,
            "a triple fault is a failure"
        );
        assert_eq!(VmExit::Stopped.exit_code(), 130);
    }
}

#[cfg(test)]
mod bad_input_tests {
    use std::path::PathBuf;

    use super::*;

    fn io() -> std::io::Error {
        std::io::Error::from_raw_os_error(libc::EIO)
    }

    fn ioctl() -> kvm_ioctls::Error {
        kvm_ioctls::Error::new(libc::EINVAL)
    }

    fn guest_write() -> vm_memory::GuestMemoryError {
        vm_memory::GuestMemoryError::InvalidGuestAddress(vm_memory::GuestAddress(0))
    }

    /// Exit status 2 ("fix your command line") for exactly the errors a user's input causes;
    /// 1 for the host, KVM, a backend or the VMM itself.
    #[test]
    fn only_bad_input_is_bad_input() {
        let p = || PathBuf::from("/x");
        let boot = |e: boot::Error| VmmError::Boot(e);
        let bad_input = [
            VmmError::CpuCount {
                requested: 0,
                max: mptable::MAX_CPUS,
            },
            VmmError::KvmCpuLimit {
                requested: 32,
                max: 8,
            },
            VmmError::ConsoleLog {
                path: p(),
                source: io(),
            },
            VmmError::Device(builder::DeviceError::usage("--net junk")),
            VmmError::Control(control::Error::InUse(p())),
            VmmError::Control(control::Error::NotSocket(p())),
            VmmError::Memory(memory::Error::BadSize { mib: 1 }),
            boot(boot::Error::KernelOpen {
                path: p(),
                source: io(),
            }),
            boot(boot::Error::KernelRead {
                path: p(),
                source: io(),
            }),
            boot(boot::Error::NotAKernel {
                path: p(),
                reason: String::new(),
            }),
            boot(boot::Error::UnsupportedKernel {
                path: p(),
                reason: String::new(),
            }),
            boot(boot::Error::Truncated {
                path: p(),
                what: String::new(),
            }),
            boot(boot::Error::KernelDoesNotFit {
                path: p(),
                start: 0,
                end: 0,
                ram_end: 0,
            }),
            boot(boot::Error::KernelTooLow {
                path: p(),
                start: 0,
            }),
            boot(boot::Error::EntryOutsideImage {
                path: p(),
                entry: 0,
                start: 0,
                end: 0,
            }),
            boot(boot::Error::Load {
                path: p(),
                source: linux_loader::loader::Error::MemoryOverflow,
            }),
            boot(boot::Error::Initrd {
                path: p(),
                source: io(),
            }),
            boot(boot::Error::InitrdDoesNotFit {
                path: p(),
                size: 0,
                kernel_end: 0,
                limit: 0,
            }),
            boot(boot::Error::Cmdline(
                linux_loader::cmdline::Error::InvalidAscii,
            )),
            VmmError::MpTable(mptable::Error::TooManyCpus(99)),
        ];
        let failures = [
            VmmError::Kvm(kvm::Error::Open(ioctl())),
            VmmError::Kvm(kvm::Error::ApiVersion(11)),
            VmmError::Kvm(kvm::Error::MissingCap(kvm_ioctls::Cap::Irqchip)),
            VmmError::Vm(vm::Error::Create(ioctl())),
            VmmError::Memory(memory::Error::Memfd(io())),
            VmmError::Memory(memory::Error::Truncate {
                size: 0,
                source: io(),
            }),
            VmmError::Memory(memory::Error::Seal(io())),
            VmmError::Memory(memory::Error::Mmap(
                vm_memory::mmap::FromRangesError::InvalidGuestRegion,
            )),
            VmmError::Memory(memory::Error::SetMemoryRegion {
                slot: 0,
                source: ioctl(),
            }),
            boot(boot::Error::GuestWrite {
                what: "the GDT",
                source: guest_write(),
            }),
            boot(boot::Error::BootParams(
                linux_loader::configurator::Error::Linux(
                    linux_loader::configurator::linux::Error::ZeroPagePastRamEnd,
                ),
            )),
            VmmError::Cpuid(cpuid::Error::Supported(ioctl())),
            VmmError::MpTable(mptable::Error::Write(guest_write())),
            VmmError::Vcpu(vcpu::Error::FailEntry {
                index: 0,
                reason: 0,
            }),
            VmmError::Bus(bus::Error::Overlap { base: 0, len: 1 }),
            VmmError::PciSpace { size: 0x8000 },
            VmmError::PciBus(vmm_devices::pci::PciError::BusFull),
            VmmError::VirtioTransport(virtio_pci::Error::QueueCount(0)),
            VmmError::NoExitReason,
            VmmError::Device(builder::DeviceError::runtime("--net tap:x: EPERM")),
            VmmError::Control(control::Error::Bind {
                path: p(),
                source: io(),
            }),
            VmmError::EventLoop(event_loop::Error::Manager(
                event_manager::Error::InvalidCapacity,
            )),
            VmmError::Io {
                what: "creating an eventfd",
                source: io(),
            },
        ];
        for e in &bad_input {
            assert!(e.is_bad_input(), "bad input, exit 2: {e}");
        }
        for e in &failures {
            assert!(!e.is_bad_input(), "a failure, exit 1: {e}");
        }
    }
}
