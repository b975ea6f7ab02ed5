//! `--net` for a VM (the device layer's net file): each device is a virtio-net (virtio-pci) whose datapath is a vhost-user
//! backend, either ours in a thread of this process (`vecN:...`, `ethN=...`) or an external one
//! (`vhost-user,socket=PATH[,mac=MAC]`).
//!
//! The in-process backend is the very `NetBackend` that `vmm net-backend` serves, talking
//! vhost-user over a socketpair: one datapath, one protocol, whichever way it is deployed. The
//! VMM only handles configuration; frames move between the guest's rings and the transport in
//! the backend's thread.

use std::fmt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmm_devices::vhost_user::net::VhostUserNetDevice;
use vmm_devices::vhost_user::{FrontendError, LinkControl};
use vmm_net::backend::NetBackend;
use vmm_net::config::{MacAddr, NetSpec};

/// One `--net` argument, parsed.
#[derive(Clone, Debug)]
pub enum NetArg {
    /// A UML transport served by a backend thread of the VMM.
    Builtin(Box<NetSpec>),
    /// An external vhost-user backend listening on a unix socket; `mac`, when given, is the
    /// guest's MAC whatever the backend offers.
    External {
        /// The backend's socket.
        socket: PathBuf,
        /// `mac=`.
        mac: Option<MacAddr>,
    },
}

/// Why a `--net` argument cannot be used; every message names the argument.
#[derive(Debug)]
pub struct NetArgError {
    /// The argument as given.
    arg: String,
    msg: String,
    /// Bad input (exit 2) rather than a run-time failure (exit 1).
    pub usage: bool,
}

impl fmt::Display for NetArgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "--net {}: {}", self.arg, self.msg)
    }
}

const EXTERNAL_PREFIX: &str = "vhost-user";

impl NetArg {
    /// Parses `vecN:...`/`ethN=...` (UML's grammar) or `vhost-user,socket=PATH[,mac=MAC]`.
    pub fn parse(arg: &str) -> Result<NetArg, NetArgError> {
        let err = |msg: String| NetArgError {
            arg: arg.to_string(),
            msg,
            usage: true,
        };
        if let Some(rest) = arg.strip_prefix(EXTERNAL_PREFIX) {
            let rest = rest.strip_prefix(',').unwrap_or(rest);
            let mut socket = None;
            let mut mac: Option<MacAddr> = None;
            for kv in rest.split(',').filter(|s| !s.is_empty()) {
                match kv.split_once('=') {
                    Some(("socket", p)) if !p.is_empty() => {
                        if socket.replace(PathBuf::from(p)).is_some() {
                            return Err(err("socket given twice".into()));
                        }
                    }
                    Some(("socket", _)) => return Err(err("socket= needs a path".into())),
                    Some(("mac", m)) => {
                        let parsed: MacAddr =
                            m.parse().map_err(|e| err(format!("mac={m}: {e}")))?;
                        if mac.replace(parsed).is_some() {
                            return Err(err("mac given twice".into()));
                        }
                    }
                    _ => {
                        return Err(err(format!(
                            "unknown option '{kv}' (vhost-user takes socket=PATH and mac=MAC)"
                        )))
                    }
                }
            }
            return socket
                .map(|socket| NetArg::External { socket, mac })
                .ok_or_else(|| err("vhost-user needs socket=PATH".into()));
        }
        vmm_net::config::parse_spec(arg)
            .map(|s| NetArg::Builtin(Box::new(s)))
            .map_err(|e| err(e.to_string()))
    }
}

/// Gives each `user[,...]` shorthand (parsed as `vec0`) the lowest `vecN` that no other
/// device of the VM is named, in order, so that `--net user --net user` makes vec0 and vec1.
pub fn number_user_shorthands(nets: &mut [(&str, &mut NetArg)]) {
    let mut taken: Vec<String> = nets
        .iter()
        .filter(|(arg, _)| vmm_net::config::user_shorthand(arg).is_none())
        .filter_map(|(_, n)| match n {
            NetArg::Builtin(spec) => Some(spec.name.clone()),
            NetArg::External { .. } => None,
        })
        .collect();
    for (arg, n) in nets.iter_mut() {
        let NetArg::Builtin(spec) = &mut **n else {
            continue;
        };
        if vmm_net::config::user_shorthand(arg).is_none() {
            continue;
        }
        let name = (0..)
            .map(|i| format!("vec{i}"))
            .find(|c| !taken.contains(c))
            .unwrap_or_default();
        spec.name = name.clone();
        taken.push(name);
    }
}

/// A backend thread serving one device of this VM.
pub struct BackendThread {
    name: String,
    handle: JoinHandle<()>,
}

impl BackendThread {
    /// Waits (bounded) for the backend to notice the frontend is gone and log its counters.
    pub fn join(self, deadline: Instant) {
        while !self.handle.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if self.handle.is_finished() {
            let _ = self.handle.join();
        } else {
            log::warn!("{}: backend thread still running at exit", self.name);
        }
    }
}

/// A NIC of the running VM, as the control socket names, reports and drives it.
#[derive(Clone)]
pub struct Nic {
    /// Its name: the spec's (`vec0`, `eth1`) for a transport the VMM serves, `netN` (N its
    /// position among the VM's devices) for an external vhost-user backend.
    pub name: String,
    /// The `--net` argument.
    pub arg: String,
    /// PCI slot.
    pub slot: usize,
    /// Sets the guest-visible link down and up.
    pub link: Option<LinkControl>,
    /// Where its frames go.
    pub backend: NicBackend,
}

/// The backend behind a [`Nic`].
#[derive(Clone)]
pub enum NicBackend {
    /// A backend thread of the VMM serving a UML transport, with its counters, transport swap
    /// and capture.
    InProcess(vmm_net::backend::NetControl),
    /// An external vhost-user backend.
    External {
        /// Its socket.
        socket: PathBuf,
    },
}

/// Opens the device's backend (the transport first, so a missing interface or a taken tunnel
/// address fails before the guest boots) and returns the virtio device to plug in, the
/// backend thread to join after the VM, and the NIC as the control socket sees it (its slot
/// is filled in once plugged). `index` is the device's position in the VM's list.
pub fn open(
    arg: &str,
    net: NetArg,
    mem: &crate::memory::GuestMemoryMmap,
    index: usize,
) -> Result<(VhostUserNetDevice, Option<BackendThread>, Nic), NetArgError> {
    let runtime = |msg: String| NetArgError {
        arg: arg.to_string(),
        msg,
        usage: false,
    };
    match net {
        NetArg::External { socket: path, mac } => {
            // Nothing listening there is the user's input; a backend that breaks the protocol
            // is a run-time failure.
            let mac = mac.map(|m| m.0);
            let dev =
                VhostUserNetDevice::connect(&path, mem.clone(), mac).map_err(|e| NetArgError {
                    arg: arg.to_string(),
                    usage: matches!(e, FrontendError::Connect { .. }),
                    msg: e.to_string(),
                })?;
            let nic = Nic {
                name: format!("net{index}"),
                arg: arg.to_string(),
                slot: 0,
                link: dev.link_control(),
                backend: NicBackend::External { socket: path },
            };
            Ok((dev, None, nic))
        }
        NetArg::Builtin(spec) => {
            // A transport that cannot open is the user's input (no such interface, address in
            // use, unreadable bpffile): exit 2 like the option parser.
            let backend = NetBackend::open(&spec).map_err(|e| NetArgError {
                arg: arg.to_string(),
                msg: e.to_string(),
                usage: true,
            })?;
            let control = backend.control();
            let (ours, theirs) =
                UnixStream::pair().map_err(|e| runtime(format!("socketpair: {e}")))?;
            let name = spec.name.clone();
            let handle = std::thread::Builder::new()
                .name(format!("net-{name}"))
                .spawn(move || {
                    if let Err(e) = backend.serve_connection(theirs, None) {
                        log::error!("{}: backend: {e}", spec.name);
                    }
                })
                .map_err(|e| runtime(format!("starting the backend thread: {e}")))?;
            let dev = VhostUserNetDevice::from_stream(ours, mem.clone())
                .map_err(|e| runtime(e.to_string()))?;
            let nic = Nic {
                name: name.clone(),
                arg: arg.to_string(),
                slot: 0,
                link: dev.link_control(),
                backend: NicBackend::InProcess(control),
            };
            Ok((dev, Some(BackendThread { name, handle }), nic))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_shorthands_take_the_next_free_index() {
        let args = [
            "user",
            "vec0:transport=fd,fd=3",
            "user,hostfwd=tcp::2222-:22",
            "user",
        ];
        let mut parsed: Vec<NetArg> = args.iter().map(|a| NetArg::parse(a).unwrap()).collect();
        let mut nets: Vec<(&str, &mut NetArg)> =
            args.iter().copied().zip(parsed.iter_mut()).collect();
        number_user_shorthands(&mut nets);
        let names: Vec<String> = nets
            .iter()
            .map(|(_, n)| match n {
                NetArg::Builtin(s) => s.name.clone(),
                NetArg::External { .. } => unreachable!(),
            })
            .collect();
        assert_eq!(names, ["vec1", "vec0", "vec2", "vec3"]);
    }

    #[test]
    fn external_backend_syntax() {
        assert!(matches!(
            NetArg::parse("vhost-user,socket=/tmp/x.sock"),
            Ok(NetArg::External { socket, mac: None }) if socket == std::path::Path::new("/tmp/x.sock")
        ));
        assert!(matches!(
            NetArg::parse("vhost-user,socket=/s,mac=52:54:00:12:34:56"),
            Ok(NetArg::External { mac: Some(m), .. }) if m.0 == [0x52, 0x54, 0, 0x12, 0x34, 0x56]
        ));
        for (bad, why) in [
            ("vhost-user", "needs socket=PATH"),
            ("vhost-user,socket=", "needs a path"),
            ("vhost-user,socket=a,socket=b", "twice"),
            ("vhost-user,path=/x", "unknown option 'path=/x'"),
            (
                "vhost-user,socket=/s,mac=01:00:00:00:00:01",
                "mac=01:00:00:00:00:01",
            ),
            ("vhost-user,socket=/s,mac=zz", "mac=zz"),
            (
                "vhost-user,socket=/s,mac=52:54:00:00:00:01,mac=52:54:00:00:00:02",
                "twice",
            ),
        ] {
            let e = NetArg::parse(bad).err().unwrap();
            assert!(e.usage);
            let msg = e.to_string();
            assert!(msg.starts_with(&format!("--net {bad}: ")), "{msg}");
            assert!(msg.contains(why), "{msg}");
        }
        let e = NetArg::parse("vec0:transport=nope").err().unwrap();
        assert!(e.to_string().contains("nope"), "{e}");
    }
}
