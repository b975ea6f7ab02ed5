//! Serving frontends: the transport is opened once and outlives connections; one frontend is
//! served at a time; when it goes away (or breaks the protocol) the device is reset and the
//! next one is served. A frontend that misbehaves is logged in one WARN line naming the request
//! refused and why; one that just leaves, at INFO. Nothing a connection opens outlives it
//! (the descriptor count of the process is the same after each). The VMM uses [`NetBackend::serve_connection`] on one end of a
//! socketpair to run the same backend in a thread of its own.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::affinity;
use super::busy::BusyPoll;
use super::control::{NetControl, Shared};
use super::datapath::{Datapath, NetCounters};
use super::device::{self, NetDevice, Workers, PAIR_QUEUES};
use super::features;
use super::interop::Relay;
use super::policy::Limits;
use super::steer::Steerer;
use super::watch::Poller;
use super::BackendError;
use crate::config::{MacAddr, NetSpec};
use crate::transport;

/// One network device's backend: its transports and datapaths (one per queue pair), ready to
/// serve frontends.
pub struct NetBackend {
    dps: Vec<Arc<Mutex<Datapath>>>,
    offered: u64,
    config: [u8; features::CONFIG_LEN],
    name: String,
    /// What the control handles share with the backend (see [`NetBackend::control`]).
    shared: Arc<Shared>,
}

impl NetBackend {
    /// Opens the transport the spec describes, one per queue pair (`queues`).
    pub fn open(spec: &NetSpec) -> Result<NetBackend, BackendError> {
        // Before anything is opened: a CPU the process may not use is the user's mistake.
        if let Some(set) = &spec.common.affinity {
            affinity::check(set).map_err(|source| BackendError::Affinity {
                dev: spec.name.clone(),
                source,
            })?;
        }
        let transports = transport::open_queues(spec)?;
        let pairs = transports.len() as u16;
        let first = &transports[0];
        let offered = features::offered(spec.common.gro, first.vnet_hdr_len(), pairs);
        let mac = spec.common.mac.unwrap_or_else(MacAddr::random_local);
        log::info!(
            "{}: transport {} ready, mac {mac}, mtu {}{}{}",
            spec.name,
            first.name(),
            spec.common.mtu,
            if pairs > 1 {
                format!(", {pairs} queue pairs")
            } else {
                String::new()
            },
            match &spec.common.affinity {
                Some(set) => format!(", workers on CPUs {set}"),
                None => String::new(),
            }
        );
        let depth = if spec.common.vec {
            usize::from(spec.common.depth)
        } else {
            1
        };
        let dps: Vec<_> = transports
            .into_iter()
            .map(|t| {
                Arc::new(Mutex::new(
                    Datapath::new(t, depth, spec.common.headroom, spec.common.mtu)
                        .with_pairs(usize::from(pairs)),
                ))
            })
            .collect();
        Ok(NetBackend {
            shared: Arc::new(Shared::new(
                Workers {
                    name: spec.name.clone(),
                    busy: BusyPoll::from_opt(spec.common.busy_poll),
                    affinity: spec.common.affinity.clone(),
                },
                dps.clone(),
                Arc::new(Steerer::new(pairs)),
                offered,
                mac,
                spec.common.mtu,
                spec.common.bpfflash,
            )),
            dps,
            offered,
            config: features::config_space(mac, spec.common.mtu, pairs),
            name: spec.name.clone(),
        })
    }

    /// A handle to watch and steer the device while it serves (counters, transport swap,
    /// capture). It may be cloned and used from any thread; it shares the datapath, so it stays
    /// valid after the backend is gone (a swap or capture then acts on a device nobody serves).
    pub fn control(&self) -> NetControl {
        NetControl::new(self.shared.clone())
    }

    /// The live counters of pair 0's datapath, the only one of a single-queue device (the
    /// control handle's [`NetControl::stats`] has them all, summed over the pairs, by name).
    pub fn stats(&self) -> Arc<NetCounters> {
        device::lock(&self.dps[0]).stats()
    }

    /// The device's counters and the transport's drops, for the log: a line per pair.
    pub fn summary(&self) -> String {
        let line = |dp: &Mutex<Datapath>| {
            let dp = device::lock(dp);
            format!(
                "{}; transport {}: {}",
                dp.stats().summary(),
                dp.transport().name(),
                dp.transport().stats()
            )
        };
        if self.dps.len() == 1 {
            return line(&self.dps[0]);
        }
        let lines: Vec<String> = self
            .dps
            .iter()
            .enumerate()
            .map(|(i, dp)| format!("pair {i}: {}", line(dp)))
            .collect();
        lines.join("\n")
    }

    /// Serves one connected frontend until it disconnects, breaks the protocol, or `stop`
    /// becomes readable. The device is reset afterwards, ready for the next one.
    pub fn serve_connection(
        &self,
        frontend: UnixStream,
        stop: Option<RawFd>,
    ) -> Result<(), BackendError> {
        let dev = Arc::new(
            NetDevice::new(
                self.dps.clone(),
                self.shared.steerer.clone(),
                self.offered,
                self.config,
                self.shared.workers.clone(),
            )
            .map_err(|source| BackendError::Io {
                op: "creating the exit event",
                source,
            })?,
        );
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let mut daemon = VhostUserDaemon::new(self.name.clone(), dev.clone(), mem)
            .map_err(|e| BackendError::Daemon(e.to_string()))?;
        self.attach(&daemon)?;

        // The crate's handler gets its own stream, through a private listener; the relay sits
        // between it and the real frontend (see interop.rs for why).
        let private = PrivateSocket::new().map_err(|source| BackendError::Io {
            op: "creating the relay socket",
            source,
        })?;
        daemon
            .start_client(&private.path.to_string_lossy())
            .map_err(|e| BackendError::Daemon(e.to_string()))?;
        let (handler, _) = private
            .listener
            .accept()
            .map_err(|source| BackendError::Io {
                op: "accepting the handler's connection",
                source,
            })?;
        drop(private);
        let done = EventFd::new(libc::EFD_NONBLOCK).map_err(|source| BackendError::Io {
            op: "eventfd",
            source,
        })?;
        let limits = Limits {
            num_queues: (self.dps.len() * PAIR_QUEUES) as u32,
            ..Limits::default()
        };
        let relay =
            Relay::start(frontend, handler, done.try_clone().ok(), limits).map_err(|source| {
                BackendError::Io {
                    op: "starting the relay",
                    source,
                }
            })?;
        let fault = dev.fault_fd();
        let mut fds = vec![done.as_raw_fd(), fault];
        fds.extend(stop);
        // An interrupted poll (EINTR) is no reason to drop the frontend: poll again.
        let woke = loop {
            if let Some(fd) = wait_any(&fds) {
                break fd;
            }
        };
        let stopped = stop == Some(woke);
        let shrank = woke == fault;
        relay.close();
        let ending = relay.join();
        let handler_error = daemon.wait().err().map(|e| e.to_string());
        // Stop the worker threads of this connection (dropping the daemon joins them), close
        // what the crate leaks, and forget the connection's state.
        dev.notify_exit();
        drop(daemon);
        let closed = dev.close_leaked_exit_fds();
        log::debug!(
            "{}: closed {closed} leaked exit-event descriptor(s)",
            self.name
        );
        for dp in &self.dps {
            let mut dp = device::lock(dp);
            // The workers are gone: their watches did nothing any more.
            dp.unwatch();
            dp.reset();
        }
        self.shared.steerer.reset(&self.dps);
        if shrank {
            log::warn!(
                "{}: frontend dropped: SET_MEM_TABLE refused after the fact: a memory file \
                 shrank under its mapping (the pages past its end read as zeros until the \
                 connection closed)",
                self.name
            );
        } else {
            match ending.complaint(handler_error.as_deref()) {
                Some(why) => log::warn!("{}: frontend dropped: {why}", self.name),
                None => log::info!("{}: frontend gone", self.name),
            }
        }
        log::info!("{}: {}", self.name, self.summary());
        if stopped {
            log::info!("{}: stop requested", self.name);
        }
        Ok(())
    }

    /// Puts each pair's transport descriptors on its worker's epoll (see [`super::watch`]).
    /// The watches hold the workers weakly: once the connection's workers are gone they do
    /// nothing, and the next connection's replace them.
    fn attach(&self, daemon: &VhostUserDaemon<Arc<NetDevice>>) -> Result<(), BackendError> {
        let handlers = daemon.get_epoll_handlers();
        let events = device::transport_events(handlers.len());
        for (pair, dp) in self.dps.iter().enumerate() {
            let Some(h) = handlers.get(pair) else {
                return Err(BackendError::Io {
                    op: "registering the transport",
                    source: io::Error::other(format!("no worker for queue pair {pair}")),
                });
            };
            let epoll: Arc<dyn AsRawFd + Send + Sync> = h.clone();
            device::lock(dp)
                .watch(Poller::new(&epoll, events))
                .map_err(|source| BackendError::Io {
                    op: "registering the transport",
                    source,
                })?;
        }
        Ok(())
    }
}

/// Listens on `socket` and serves one frontend at a time until `shutdown` becomes readable,
/// then removes the socket.
pub fn serve(socket: &Path, spec: NetSpec, shutdown: EventFd) -> Result<(), BackendError> {
    serve_with(socket, spec, shutdown, |_| Ok(()))
}

/// [`serve`], calling `ready` once the transport is open and the socket bound (mode 0600),
/// before the first frontend is accepted: where the caller shares the socket and drops its
/// privileges. An error from `ready` ends the backend (the socket is removed).
pub fn serve_with(
    socket: &Path,
    spec: NetSpec,
    shutdown: EventFd,
    ready: impl FnOnce(&Path) -> Result<(), BackendError>,
) -> Result<(), BackendError> {
    let backend = NetBackend::open(&spec)?;
    let listener = bind(socket)?;
    listener
        .set_nonblocking(true)
        .map_err(|source| BackendError::Io {
            op: "O_NONBLOCK on the listener",
            source,
        })?;
    if let Err(e) = ready(socket) {
        let _ = std::fs::remove_file(socket);
        return Err(e);
    }
    log::info!("{}: listening on {}", spec.name, socket.display());
    let result = loop {
        let fds = [listener.as_raw_fd(), shutdown.as_raw_fd()];
        match wait_any(&fds) {
            Some(fd) if fd == shutdown.as_raw_fd() => break Ok(()),
            Some(_) => {}
            None => continue,
        }
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(source) => {
                break Err(BackendError::Io {
                    op: "accept",
                    source,
                })
            }
        };
        if let Err(e) = stream.set_nonblocking(false) {
            log::warn!("{}: frontend socket: {e}", spec.name);
            continue;
        }
        log::info!("{}: frontend connected", spec.name);
        if let Err(e) = backend.serve_connection(stream, Some(shutdown.as_raw_fd())) {
            log::warn!("{}: {e}", spec.name);
        }
        if readable(shutdown.as_raw_fd()) {
            break Ok(());
        }
    };
    let _ = std::fs::remove_file(socket);
    log::info!("{}: stopped; {}", spec.name, backend.summary());
    result
}

/// Binds the listening socket mode 0600, replacing a stale socket (one nobody listens on)
/// but nothing else.
fn bind(socket: &Path) -> Result<UnixListener, BackendError> {
    crate::unix_socket::bind_private(socket).map_err(|source| BackendError::Socket {
        path: socket.display().to_string(),
        source,
    })
}

/// Polls the descriptors; returns the first readable one (in `fds`' order), `None` if
/// interrupted. The relay's loop uses it too.
pub(super) fn wait_any(fds: &[RawFd]) -> Option<RawFd> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: `pfds` is a live array of pollfd of the length passed.
    let rc = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, -1) };
    if rc <= 0 {
        return None;
    }
    pfds.iter().find(|p| p.revents != 0).map(|p| p.fd)
}

fn readable(fd: RawFd) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one live pollfd; zero timeout.
    unsafe { libc::poll(&mut p, 1, 0) > 0 }
}

/// A listening socket in a fresh 0700 directory, both removed on drop.
struct PrivateSocket {
    dir: PathBuf,
    path: PathBuf,
    listener: UnixListener,
}

impl PrivateSocket {
    fn new() -> io::Result<PrivateSocket> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "vmm-relay-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        // Created 0700 (a umask can only narrow it), the socket in it 0600.
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        let path = dir.join("h.sock");
        let listener = match crate::unix_socket::bind_private(&path) {
            Ok(l) => l,
            Err(e) => {
                let _ = std::fs::remove_dir(&dir);
                return Err(match e {
                    crate::unix_socket::BindError::Io(e) => e,
                    other => io::Error::other(other.to_string()),
                });
            }
        };
        Ok(PrivateSocket {
            dir,
            path,
            listener,
        })
    }
}

impl Drop for PrivateSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_dir(&self.dir);
    }
}
