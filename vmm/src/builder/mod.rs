//! The device layer: every device of a VM is described in [`crate::VmConfig::devices`]
//! (parsed from the user's words, nothing opened) and built and plugged in here, in one place,
//! when the [`crate::Vmm`] is created. Each kind of device is one file in this directory that
//! parses its argument and opens its backend; the `match` in [`attach`] is the one line per
//! kind that plugs it in. The binary only parses its command line into a `VmConfig`.
//!
//! The shape is Firecracker's `builder.rs` (a config in, a running VM out); the devices' run-time
//! handles (backend threads, daemons) live in [`Attached`], which the `Vmm` owns so that they
//! end with it.

pub mod disk;
pub mod fs;
pub mod net;

use std::path::{Path, PathBuf};

use crate::memory::GuestMemoryMmap;

/// One device of a VM, as the user gave it: the argument (for messages) and what it says.
#[derive(Clone, Debug)]
pub enum DeviceConfig {
    /// `--net SPEC`: a virtio-net device.
    Net {
        /// The argument as given.
        arg: String,
        /// What it asks for.
        net: net::NetArg,
    },
    /// `--fs ...` or `--share ...`: a virtio-fs device.
    Fs {
        /// The argument as given (or what the VMM added it for).
        arg: String,
        /// What it asks for.
        fs: fs::FsArg,
    },
    /// `--disk ...`: a virtio-blk device.
    Disk {
        /// The argument as given.
        arg: String,
        /// What it asks for.
        disk: disk::DiskArg,
    },
}

/// Why a device cannot be built; every message names the option and the value.
#[derive(Debug, thiserror::Error)]
#[error("{msg}")]
pub struct DeviceError {
    msg: String,
    /// Bad input (exit status 2) rather than a run-time failure (1).
    pub usage: bool,
}

impl DeviceError {
    /// Bad input: the option or its value is wrong.
    pub(crate) fn usage(msg: impl Into<String>) -> Self {
        DeviceError {
            msg: msg.into(),
            usage: true,
        }
    }

    /// A run-time failure: the input is fine, the host or a backend failed.
    pub(crate) fn runtime(msg: impl Into<String>) -> Self {
        DeviceError {
            msg: msg.into(),
            usage: false,
        }
    }
}

impl From<net::NetArgError> for DeviceError {
    fn from(e: net::NetArgError) -> Self {
        DeviceError {
            usage: e.usage,
            msg: e.to_string(),
        }
    }
}

impl From<fs::FsArgError> for DeviceError {
    fn from(e: fs::FsArgError) -> Self {
        DeviceError {
            usage: e.usage,
            msg: e.to_string(),
        }
    }
}

impl From<disk::DiskArgError> for DeviceError {
    fn from(e: disk::DiskArgError) -> Self {
        // Every failure is about the file the user named.
        DeviceError::usage(e.to_string())
    }
}

impl DeviceConfig {
    /// `--disk path=FILE[,...]`.
    pub fn disk(arg: &str) -> Result<Self, DeviceError> {
        Ok(DeviceConfig::Disk {
            arg: arg.to_string(),
            disk: disk::DiskArg::parse(arg)?,
        })
    }

    /// `--net SPEC`.
    pub fn net(arg: &str) -> Result<Self, DeviceError> {
        Ok(DeviceConfig::Net {
            arg: arg.to_string(),
            net: net::NetArg::parse(arg)?,
        })
    }

    /// `--fs tag=TAG,socket=PATH`.
    pub fn fs(arg: &str) -> Result<Self, DeviceError> {
        Ok(DeviceConfig::Fs {
            arg: arg.to_string(),
            fs: fs::FsArg::parse_fs(arg)?,
        })
    }

    /// `--share DIR[,tag=TAG][,readonly=on]`.
    pub fn share(arg: &str) -> Result<Self, DeviceError> {
        Ok(DeviceConfig::Fs {
            arg: arg.to_string(),
            fs: fs::FsArg::parse_share(arg)?,
        })
    }
}

/// The `--share` directories of `devices` and their tags.
pub fn shares(devices: &[DeviceConfig]) -> impl Iterator<Item = (&str, &Path)> {
    devices.iter().filter_map(|d| match d {
        DeviceConfig::Fs {
            fs: fs::FsArg::Share { dir, tag, .. },
            ..
        } => Some((tag.as_str(), dir.as_path())),
        _ => None,
    })
}

/// Checks the devices as a set, before anything is opened: `user` shorthands get distinct
/// `vecN` names, no two virtio-fs devices share a tag (the guest mounts by tag), and the
/// virtiofsd that `--share` needs is found (returned, so a missing binary is bad input found
/// before the VM starts).
pub fn check(
    devices: &mut [DeviceConfig],
    virtiofsd: Option<&Path>,
) -> Result<Option<PathBuf>, DeviceError> {
    let mut nets: Vec<(&str, &mut net::NetArg)> = devices
        .iter_mut()
        .filter_map(|d| match d {
            DeviceConfig::Net { arg, net } => Some((arg.as_str(), net)),
            _ => None,
        })
        .collect();
    net::number_user_shorthands(&mut nets);

    let mut tags: Vec<&str> = devices
        .iter()
        .filter_map(|d| match d {
            DeviceConfig::Fs { fs, .. } => Some(fs.tag()),
            _ => None,
        })
        .collect();
    tags.sort_unstable();
    if let Some(w) = tags.windows(2).find(|w| w[0] == w[1]) {
        return Err(DeviceError::usage(format!(
            "virtio-fs tag '{}' is given twice (each --fs/--share needs its own tag=)",
            w[0]
        )));
    }

    let share = devices.iter().find_map(|d| match d {
        DeviceConfig::Fs {
            arg,
            fs: fs::FsArg::Share { .. },
        } => Some(arg.as_str()),
        _ => None,
    });
    match share {
        Some(arg) => Ok(Some(fs::find_virtiofsd(virtiofsd, arg)?)),
        None => Ok(virtiofsd.map(Path::to_path_buf)),
    }
}

/// What the VM's devices need kept alive while it runs, and what the control socket sees of
/// them.
#[derive(Default)]
pub struct Attached {
    /// In-process net backends, joined after the VM (their frontends) is gone.
    pub backends: Vec<net::BackendThread>,
    /// virtiofsd daemons the VMM started, stopped when dropped.
    pub daemons: Vec<fs::Virtiofsd>,
    /// Every device, in PCI slot order.
    pub devices: Vec<AttachedDevice>,
}

/// A device of the running VM, as the control socket reports and drives it.
#[derive(Clone)]
pub enum AttachedDevice {
    /// A virtio-net device.
    Net(net::Nic),
    /// A virtio-fs device.
    Fs {
        /// The argument it came from.
        arg: String,
        /// The tag the guest mounts.
        tag: String,
        /// PCI slot.
        slot: usize,
    },
    /// A virtio-blk device.
    Disk {
        /// The argument it came from.
        arg: String,
        /// The image.
        path: PathBuf,
        /// Whether the guest may write.
        readonly: bool,
        /// PCI slot.
        slot: usize,
    },
}

/// Opens every device's backend (the transport first, so a missing interface fails before the
/// guest boots; virtiofsd for each share) and plugs each device into the VM through `plug`.
pub fn attach(
    devices: Vec<DeviceConfig>,
    virtiofsd: Option<&Path>,
    mem: &GuestMemoryMmap,
    attached: &mut Attached,
    mut plug: impl FnMut(Box<dyn vmm_devices::virtio_pci::VirtioDevice>) -> Result<usize, String>,
) -> Result<(), DeviceError> {
    for (index, device) in devices.into_iter().enumerate() {
        match device {
            DeviceConfig::Net { arg, net } => {
                let (dev, thread, mut nic) = net::open(&arg, net, mem, index)?;
                attached.backends.extend(thread);
                nic.slot = plug(Box::new(dev))
                    .map_err(|e| DeviceError::runtime(format!("--net {arg}: {e}")))?;
                attached.devices.push(AttachedDevice::Net(nic));
            }
            DeviceConfig::Fs { arg, fs } => {
                let (dev, daemon) = fs::open(&arg, &fs, virtiofsd, mem)?;
                attached.daemons.extend(daemon);
                let slot = plug(Box::new(dev))
                    .map_err(|e| DeviceError::runtime(format!("virtio-fs {arg}: {e}")))?;
                attached.devices.push(AttachedDevice::Fs {
                    tag: fs.tag().to_string(),
                    arg,
                    slot,
                });
            }
            DeviceConfig::Disk { arg, disk } => {
                let dev = disk::open(&arg, &disk, mem)?;
                let slot = plug(Box::new(dev))
                    .map_err(|e| DeviceError::runtime(format!("--disk {arg}: {e}")))?;
                attached.devices.push(AttachedDevice::Disk {
                    arg,
                    path: disk.opts.path.clone(),
                    readonly: disk.opts.readonly,
                    slot,
                });
            }
        }
    }
    Ok(())
}
