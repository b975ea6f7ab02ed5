//! The run-time control handle of one device's backend, for the VMM's control socket (UML's
//! mconsole in spirit): counters, a transport swap while the guest runs, and frame capture.
//!
//! [`NetControl`] is cheap to clone, `Send` and `Sync`; it shares the device's datapath with
//! the [`NetBackend`](super::NetBackend) it came from. It takes the datapath's lock, which a
//! batch holds from start to end on the worker thread, only for short moments (a counter
//! snapshot, swapping a transport or a capture tap in), so everything it does to the datapath
//! happens between batches.
//!
//! Swap: the new transport is opened and checked on the caller's thread first, so a bad spec
//! fails with the old transport untouched and serving. Then, between batches, it replaces the
//! old one in the datapath, and the connection's worker epoll stops watching the old
//! descriptors and starts watching the new ones (edge-triggered, as at connection time: a
//! descriptor already readable or writable when added wakes the worker at once, which is what
//! resumes frames that were waiting). What the guest sees (features, MAC, MTU, rings) does not
//! change, so a spec that would change it is refused (see [`SwapError`]). A multi-queue
//! device swaps pair by pair (each pair's new transport steered as the guest serves that pair),
//! and on a failure the pairs already swapped get their old transports back.
//! The spec's device name must be the device's: the control socket addresses devices by name,
//! and a spec written for `vec1` sent to `vec0` is more likely a mistake than a wish.
//!
//! Filter flash ([`NetControl::flash_bpf`], UML's `bpfflash`): on a device whose spec said
//! `bpfflash=1` (raw or hybrid), a classic BPF program from a file replaces the receive
//! filter of the live socket, between batches. The program is read and checked on the
//! caller's thread first, so a bad file changes nothing. A swap brings the new spec's
//! `bpffile` (or none) and `bpfflash` with the new transport: a flashed filter does not carry
//! over.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::busy::BusyPoll;
use super::capture::{self, CaptureError, CaptureSession, CaptureSummary, Filter};
use super::datapath::{Datapath, NetCounters};
use super::device::{self, Workers};
use super::features;
use super::steer::Steerer;
use super::watch::Poller;
use crate::config::{MacAddr, NetSpec};
use crate::transport::{self, BpfProgram, HeaderDrops, Transport, TransportError, TransportStats};

/// Why a swap was refused. In every case the old transport is still in place and serving.
#[derive(Debug, thiserror::Error)]
pub enum SwapError {
    #[error("the spec is for device `{spec}`, not this device `{device}`")]
    WrongDevice { device: String, spec: String },
    /// The MTU and the MAC are in the guest's config space, read once by its driver.
    #[error("{device}: {what} {want} differs from the device's {have}: the guest has it in its config space and would not see the change")]
    GuestVisible {
        device: String,
        what: &'static str,
        have: String,
        want: String,
    },
    #[error("{device}: the new transport: {source}")]
    Open {
        device: String,
        #[source]
        source: TransportError,
    },
    /// The guest was offered offloads (and may have negotiated them, or may at its next
    /// driver reset) that the new transport cannot carry.
    #[error("{device}: transport={transport} (gro={gro}) cannot carry what the guest was offered: {missing}; GSO frames into the guest need gro=1, and GUEST_ECN a transport with a virtio-net header (tap, hybrid, raw)")]
    Offloads {
        device: String,
        transport: &'static str,
        gro: u8,
        missing: String,
    },
    #[error("{device}: mirroring the guest's offloads on the new transport: {source}")]
    MirrorOffloads {
        device: String,
        #[source]
        source: TransportError,
    },
    /// The datapath's seccomp filter was made for a transport that opens no sockets as it
    /// runs (see [`crate::seccomp::ThreadKind::Worker`]).
    #[error("{device}: transport={transport} opens sockets as it runs, which the datapath's seccomp filter (made for transport={current}) forbids; give the NIC transport={transport} from the start, or run with --seccomp off")]
    Seccomp {
        device: String,
        transport: &'static str,
        current: &'static str,
    },
    /// The guest's config space holds the pair count.
    #[error("{device}: the device has {have} queue pair(s) and the spec asks for queues={want}: the guest has the count in its config space and would not see the change")]
    Queues {
        device: String,
        have: usize,
        want: u16,
    },
    /// How the workers run (`busy_poll`, `affinity`) is the device's for its life: they
    /// are started with it, and a swap replaces only the transport.
    #[error("{device}: `{what}={want}`: the device runs with {have}; a swap replaces the transport, not how the workers run (leave {what} out, or give it when the NIC is made)")]
    Workers {
        device: String,
        what: &'static str,
        have: String,
        want: String,
    },
    #[error("{device}: watching the new transport's descriptors: {source}")]
    Watch {
        device: String,
        #[source]
        source: std::io::Error,
    },
}

/// Why a receive filter was not replaced. In every case the old filter is still in place.
#[derive(Debug, thiserror::Error)]
pub enum FlashError {
    /// The device's spec did not allow it.
    #[error("{device}: `bpfflash=1` not set on NIC {device} (transport {transport}): its receive filter may not be replaced")]
    NotAllowed {
        device: String,
        transport: &'static str,
    },
    /// The file cannot be read, or is not a classic BPF program.
    #[error("{device}: BPF program `{path}`: {reason}")]
    Program {
        device: String,
        path: PathBuf,
        reason: String,
    },
    /// The transport refused it (the kernel's verifier, or no socket filter to replace).
    #[error("{device}: BPF program `{path}`: {source}")]
    Attach {
        device: String,
        path: PathBuf,
        #[source]
        source: TransportError,
    },
}

/// A snapshot of a device's counters.
///
/// Directions are the datapath's: `rx` is toward the guest (received from the transport),
/// `tx` is from the guest (sent on the transport). `counters` holds every counter by name, in
/// a fixed order, zeros included: the device's frames and bytes, every drop by reason, the
/// transport's drops (summed over the transports swapped out, so counters never go back),
/// the number of swaps, and the current (or else the last) capture's counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetStats {
    /// The device's name (`vec0`).
    pub device: String,
    /// The current transport's name (`fd`, `tap`, ...).
    pub transport: &'static str,
    /// The file being captured into, if a capture runs.
    pub capture: Option<PathBuf>,
    /// Every counter, summed over the queue pairs.
    pub counters: Vec<(&'static str, u64)>,
    /// Each queue pair's own frame counts, in pair order (one entry on a single-queue device):
    /// how the host's flows and the guest's vCPUs spread over the pairs.
    pub pairs: Vec<PairStats>,
}

/// One queue pair's frames.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PairStats {
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_dropped_unserved: u64,
}

impl NetStats {
    /// The counter of that name.
    pub fn get(&self, name: &str) -> Option<u64> {
        self.counters
            .iter()
            .find(|(n, _)| *n == name)
            .map(|&(_, v)| v)
    }

    /// The snapshot as one JSON object: `{"device": ..., "transport": ..., "capture": null or
    /// a path, "counters": {"rx_packets": 3, ...}}`, and with several queue pairs `"pairs":
    /// [{"rx_packets": 1, "tx_packets": 2, "rx_dropped_unserved": 0}, ...]` after the counters.
    pub fn to_json(&self) -> String {
        let mut s = format!(
            "{{\"device\":{},\"transport\":{},\"capture\":",
            json_string(&self.device),
            json_string(self.transport)
        );
        match &self.capture {
            Some(p) => s.push_str(&json_string(&p.to_string_lossy())),
            None => s.push_str("null"),
        }
        s.push_str(",\"counters\":{");
        for (i, (name, v)) in self.counters.iter().enumerate() {
            let _ = write!(s, "{}\"{name}\":{v}", if i > 0 { "," } else { "" });
        }
        s.push('}');
        if self.pairs.len() > 1 {
            s.push_str(",\"pairs\":[");
            for (i, p) in self.pairs.iter().enumerate() {
                let _ = write!(
                    s,
                    "{}{{\"rx_packets\":{},\"tx_packets\":{},\"rx_dropped_unserved\":{}}}",
                    if i > 0 { "," } else { "" },
                    p.rx_packets,
                    p.tx_packets,
                    p.rx_dropped_unserved
                );
            }
            s.push(']');
        }
        s.push('}');
        s
    }
}

/// A JSON string literal.
fn json_string(v: &str) -> String {
    let mut s = String::with_capacity(v.len() + 2);
    s.push('"');
    for c in v.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(s, "\\u{:04x}", u32::from(c));
            }
            c => s.push(c),
        }
    }
    s.push('"');
    s
}

/// What the backend and its control handles share.
pub(super) struct Shared {
    pub name: String,
    /// The datapaths, one per queue pair.
    pub dps: Vec<Arc<Mutex<Datapath>>>,
    /// How the workers run (`busy_poll`, `affinity`), fixed for the device's life.
    pub workers: Workers,
    /// Which pairs the guest serves, and the steering of the host's frames to them.
    pub steerer: Arc<Steerer>,
    /// The virtio features offered to every frontend (fixed for the device's life).
    pub offered: u64,
    pub mac: MacAddr,
    pub mtu: u16,
    /// The current transport's spec said `bpfflash=1`: its receive filter may be replaced.
    bpfflash: AtomicBool,
    /// Held through a swap of all pairs, so two swaps cannot interleave and leave the device
    /// half on each one's transports.
    swapping: Mutex<()>,
    capture: Mutex<Option<CaptureSession>>,
    last_capture: Mutex<Option<CaptureSummary>>,
    /// Drops counted by transports since swapped out.
    /// Counters of the transports swapped out, by name (as [`transport_counters`] names them).
    retired: Mutex<Vec<(&'static str, u64)>>,
    swaps: AtomicU64,
}

impl Shared {
    pub fn new(
        workers: Workers,
        dps: Vec<Arc<Mutex<Datapath>>>,
        steerer: Arc<Steerer>,
        offered: u64,
        mac: MacAddr,
        mtu: u16,
        bpfflash: bool,
    ) -> Self {
        Shared {
            name: workers.name.clone(),
            workers,
            dps,
            steerer,
            offered,
            mac,
            mtu,
            bpfflash: AtomicBool::new(bpfflash),
            swapping: Mutex::new(()),
            capture: Mutex::new(None),
            last_capture: Mutex::new(None),
            retired: Mutex::new(transport_counters(&TransportStats::default())),
            swaps: AtomicU64::new(0),
        }
    }
}

/// A mutex whose holder panicked still guards consistent data here (slots and counters).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The control handle of one device: see the module documentation.
#[derive(Clone)]
pub struct NetControl {
    shared: Arc<Shared>,
}

impl NetControl {
    pub(super) fn new(shared: Arc<Shared>) -> NetControl {
        NetControl { shared }
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// A snapshot of every counter (see [`NetStats`]), summed over the queue pairs.
    pub fn stats(&self) -> NetStats {
        let s = &*self.shared;
        let mut transport = "";
        let mut device_total: Vec<(&'static str, u64)> = Vec::new();
        let mut transport_total = lock(&s.retired).clone();
        let mut batches = 0;
        let mut held = 0;
        let mut pairs = Vec::with_capacity(s.dps.len());
        for dp in &s.dps {
            let dp = device::lock(dp);
            let c = dp.stats();
            pairs.push(PairStats {
                rx_packets: c.rx_packets.load(Ordering::Relaxed),
                tx_packets: c.tx_packets.load(Ordering::Relaxed),
                rx_dropped_unserved: c.rx_dropped_unserved.load(Ordering::Relaxed),
            });
            transport = dp.transport().name();
            add_counters(
                &mut transport_total,
                &transport_counters(&dp.transport().stats()),
            );
            let counters = device_counters(&dp.stats());
            if device_total.is_empty() {
                device_total = counters;
            } else {
                add_counters(&mut device_total, &counters);
            }
            batches += dp.geometry().bytes();
            held += dp.transport().buffer_bytes();
        }
        let mut out = device_total;
        out.extend(transport_total);
        // Not a counter: what the batches hold now (see datapath::Geometry).
        out.push(("batch_buffer_bytes", batches as u64));
        // Nor this: what the transport holds besides (xdp's UMEM).
        out.push(("transport_buffer_bytes", held as u64));
        out.push(("swaps", s.swaps.load(Ordering::Relaxed)));
        let (capture, summary) = match lock(&s.capture).as_ref() {
            Some(c) => (
                Some(c.path().to_path_buf()),
                Some(capture::summary(c.path(), c.counters())),
            ),
            None => (None, lock(&s.last_capture).clone()),
        };
        out.push(("capture_active", u64::from(capture.is_some())));
        let zeros = CaptureSummary {
            path: PathBuf::new(),
            frames_written: 0,
            frames_filtered: 0,
            frames_dropped: 0,
            bytes: 0,
            write_errors: 0,
            error: None,
        };
        for (name, v) in summary.unwrap_or(zeros).counters() {
            out.push((capture_name(name), v));
        }
        NetStats {
            device: s.name.clone(),
            transport,
            capture,
            counters: out,
            pairs,
        }
    }

    /// Replaces the device's transport with the one `spec` describes, while the guest runs:
    /// see the module documentation. `spec.name` must be the device's name; `mtu` must be the
    /// device's, and `mac`, if given, its MAC (both are in the guest's config space); the
    /// new transport must carry every offload the guest was offered. The batch options
    /// (`depth`, `vec`, `headroom`) and the transport's own options are the new spec's.
    pub fn swap(&self, spec: NetSpec) -> Result<(), SwapError> {
        let s = &*self.shared;
        let device = || s.name.clone();
        if spec.name != s.name {
            return Err(SwapError::WrongDevice {
                device: device(),
                spec: spec.name,
            });
        }
        if spec.common.mtu != s.mtu {
            return Err(SwapError::GuestVisible {
                device: device(),
                what: "mtu",
                have: s.mtu.to_string(),
                want: spec.common.mtu.to_string(),
            });
        }
        if let Some(mac) = spec.common.mac.filter(|m| *m != s.mac) {
            return Err(SwapError::GuestVisible {
                device: device(),
                what: "mac",
                have: s.mac.to_string(),
                want: mac.to_string(),
            });
        }
        // Given in the spec, each must be what the device runs with (omitted: kept).
        if let Some(want) = spec
            .common
            .busy_poll
            .filter(|&want| BusyPoll::from_opt(Some(want)) != s.workers.busy)
        {
            return Err(SwapError::Workers {
                device: device(),
                what: "busy_poll",
                have: format!("busy_poll={}", s.workers.busy),
                want: want.to_string(),
            });
        }
        if let Some(set) = spec
            .common
            .affinity
            .as_ref()
            .filter(|&a| Some(a) != s.workers.affinity.as_ref())
        {
            return Err(SwapError::Workers {
                device: device(),
                what: "affinity",
                have: s
                    .workers
                    .affinity
                    .as_ref()
                    .map_or("no affinity".to_string(), |a| format!("affinity={a}")),
                want: set.to_string(),
            });
        }
        // The pair count is in the guest's config space: it stays.
        if usize::from(spec.common.queues) != s.dps.len() {
            return Err(SwapError::Queues {
                device: device(),
                have: s.dps.len(),
                want: spec.common.queues,
            });
        }
        let news = transport::open_queues(&spec).map_err(|source| SwapError::Open {
            device: device(),
            source,
        })?;
        let first = &news[0];
        let can = features::offered(spec.common.gro, first.vnet_hdr_len(), spec.common.queues);
        let missing = s.offered & !can;
        if missing != 0 {
            return Err(SwapError::Offloads {
                device: device(),
                transport: first.name(),
                gro: u8::from(spec.common.gro),
                missing: features::names(missing).join(", "),
            });
        }
        let current = {
            let dp = device::lock(&s.dps[0]);
            (dp.transport().name(), dp.transport().opens_sockets())
        };
        if crate::seccomp::armed() && first.opens_sockets() && !current.1 {
            return Err(SwapError::Seccomp {
                device: device(),
                transport: first.name(),
                current: current.0,
            });
        }
        let new_name = first.name();
        let depth = if spec.common.vec {
            usize::from(spec.common.depth)
        } else {
            1
        };
        let headroom = spec.common.headroom;
        let bpfflash = spec.common.bpfflash;

        let swapping = lock(&s.swapping);
        // Pair by pair; on a failure the pairs already swapped get their old transports back,
        // so the device is never left half on each.
        // The old transports, with the batch options they ran with.
        let mut olds: Vec<Served> = Vec::with_capacity(news.len());
        let mut failure = None;
        for (pair, new) in news.into_iter().enumerate() {
            match swap_pair(s, pair, new, (depth, headroom)) {
                Ok(old) => olds.push(old),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = failure {
            for (pair, (old, options)) in olds.into_iter().enumerate().rev() {
                // Putting back what served a moment ago: a failure here leaves that pair on
                // the new transport, which is logged.
                if let Err(again) = swap_pair(s, pair, old, options) {
                    log::warn!("{}: pair {pair}: the old transport back: {again}", s.name);
                }
            }
            return Err(e);
        }
        s.bpfflash.store(bpfflash, Ordering::Relaxed);
        drop(swapping);
        for (old, _) in &olds {
            add_counters(&mut lock(&s.retired), &transport_counters(&old.stats()));
        }
        s.swaps.fetch_add(1, Ordering::Relaxed);
        let old = &olds[0].0;
        if olds.len() == 1 {
            log::info!(
                "{}: transport {} replaced by {new_name} ({}: {})",
                s.name,
                old.name(),
                old.name(),
                old.stats()
            );
        } else {
            log::info!(
                "{}: transport {} replaced by {new_name} on {} queue pairs",
                s.name,
                old.name(),
                olds.len()
            );
        }
        drop(olds);
        Ok(())
    }

    /// Replaces the receive filter of the device's transport with the classic BPF program in
    /// the file at `program` (the format of `bpffile=`: `struct sock_filter`s, 8 bytes each,
    /// host byte order), as UML's `bpfflash` lets its guest do. Allowed only when the
    /// current transport's spec said `bpfflash=1` (which the parser allows only on raw and
    /// hybrid). The transport's own filtering stays: raw still drops copies of its own
    /// transmissions, hybrid still keeps only what the host transmits. The file is read and
    /// checked before the datapath is touched; the new filter is attached between batches.
    /// On any error the old filter stays.
    pub fn flash_bpf(&self, program: &Path) -> Result<(), FlashError> {
        let s = &*self.shared;
        let device = || s.name.clone();
        if !s.bpfflash.load(Ordering::Relaxed) {
            return Err(FlashError::NotAllowed {
                device: device(),
                transport: device::lock(&s.dps[0]).transport().name(),
            });
        }
        let prog = std::fs::read(program)
            .map_err(|e| e.to_string())
            .and_then(|bytes| BpfProgram::parse(&bytes))
            .map_err(|reason| FlashError::Program {
                device: device(),
                path: program.to_path_buf(),
                reason,
            })?;
        // Every pair's socket gets the filter; a refusal (the verifier's, the same for all)
        // comes at the first, before any filter changed.
        let mut transport = "";
        for dp in &s.dps {
            let mut dp = device::lock(dp);
            transport = dp.transport().name();
            dp.transport_mut()
                .replace_filter(&prog)
                .map_err(|source| FlashError::Attach {
                    device: device(),
                    path: program.to_path_buf(),
                    source,
                })?;
        }
        log::info!(
            "{}: receive filter of transport {transport} replaced by {} ({} instructions)",
            s.name,
            program.display(),
            prog.instructions().len()
        );
        Ok(())
    }

    /// Starts writing every frame that crosses the device, both ways, into a pcap file at
    /// `path` (created or truncated), keeping only those `filter` (tcpdump's syntax) matches.
    /// A filter libpcap cannot compile, a file that cannot be written, or a capture already
    /// running is an error, and nothing starts.
    pub fn capture_start(&self, path: &Path, filter: Option<&str>) -> Result<(), CaptureError> {
        let s = &*self.shared;
        let filter = filter.map(Filter::compile).transpose()?;
        let mut slot = lock(&s.capture);
        if let Some(running) = slot.as_ref() {
            return Err(CaptureError::AlreadyRunning(running.path().to_path_buf()));
        }
        let (session, tap) = CaptureSession::start(path, filter)?;
        for dp in &s.dps[1..] {
            device::lock(dp).set_capture(Some(tap.another()));
        }
        device::lock(&s.dps[0]).set_capture(Some(tap));
        log::info!("{}: capturing into {}", s.name, path.display());
        *slot = Some(session);
        Ok(())
    }

    /// Stops the capture, waits for its file to be complete, and says what it did (also when
    /// it had already ended on a write error).
    pub fn capture_stop(&self) -> Result<CaptureSummary, CaptureError> {
        let s = &*self.shared;
        let mut slot = lock(&s.capture);
        let session = slot.take().ok_or(CaptureError::NotRunning)?;
        // The writer ends once the taps (its queue's senders) are gone.
        for dp in &s.dps {
            drop(device::lock(dp).set_capture(None));
        }
        let summary = session.finish();
        log::info!(
            "{}: capture into {} stopped: {} frames written, {} filtered out, {} dropped, {} bytes, {} write errors",
            s.name,
            summary.path.display(),
            summary.frames_written,
            summary.frames_filtered,
            summary.frames_dropped,
            summary.bytes,
            summary.write_errors
        );
        *lock(&s.last_capture) = Some(summary.clone());
        Ok(summary)
    }
}

/// A transport that served a pair, and the batch options `(depth, headroom)` it ran with.
type Served = (Box<dyn Transport>, (usize, u16));

/// Puts `new` in pair `pair`'s datapath between batches with the batch options `(depth,
/// headroom)`, steers it as the pair's ring is served now, and moves the worker's watch to
/// its descriptors; returns the old transport and its batch options. On an error nothing
/// changed. All of it under the datapath's lock, which the worker takes for every event: it
/// never runs the new transport unwatched, nor asks the epoll about a descriptor taken off.
fn swap_pair(
    s: &Shared,
    pair: usize,
    new: Box<dyn Transport>,
    (depth, headroom): (usize, u16),
) -> Result<Served, SwapError> {
    let mut dp = device::lock(&s.dps[pair]);
    let old_options = dp.batch_options();
    let poller = dp.unwatch();
    let old = match dp.replace_transport(new, depth, headroom) {
        Ok(old) => old,
        Err((_, source)) => {
            rewatch(&s.name, pair, &mut dp, poller);
            return Err(SwapError::MirrorOffloads {
                device: s.name.clone(),
                source,
            });
        }
    };
    s.steerer.reapply(pair as u16, &mut dp);
    let Some(poller) = poller else {
        return Ok((old, old_options));
    };
    if let Err(source) = dp.watch(poller.clone()) {
        // Put the old transport back rather than leave the pair deaf.
        match dp.replace_transport(old, old_options.0, old_options.1) {
            Ok(failed) => {
                s.steerer.reapply(pair as u16, &mut dp);
                rewatch(&s.name, pair, &mut dp, Some(poller));
                drop(failed);
            }
            Err((_, e)) => log::warn!("{}: pair {pair}: the old transport back: {e}", s.name),
        }
        return Err(SwapError::Watch {
            device: s.name.clone(),
            source,
        });
    }
    Ok((old, old_options))
}

/// Watches the transport in place again after a swap that did not happen.
fn rewatch(name: &str, pair: usize, dp: &mut Datapath, poller: Option<Poller>) {
    if let Some(poller) = poller {
        if let Err(e) = dp.watch(poller) {
            log::warn!("{name}: pair {pair}: the transport back on its worker's epoll: {e}");
        }
    }
}

fn capture_name(name: &'static str) -> &'static str {
    match name {
        "frames_written" => "capture_frames_written",
        "frames_filtered" => "capture_frames_filtered",
        "frames_dropped" => "capture_frames_dropped",
        "bytes" => "capture_bytes",
        "write_errors" => "capture_write_errors",
        _ => "capture_other",
    }
}

fn device_counters(c: &NetCounters) -> Vec<(&'static str, u64)> {
    let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let b = &c.bad_chains;
    vec![
        ("rx_packets", g(&c.rx_packets)),
        ("rx_bytes", g(&c.rx_bytes)),
        ("tx_packets", g(&c.tx_packets)),
        ("tx_bytes", g(&c.tx_bytes)),
        ("rx_dropped_too_big", g(&c.rx_dropped_too_big)),
        ("rx_dropped_gso", g(&c.rx_dropped_gso)),
        ("rx_dropped_bad_header", g(&c.rx_dropped_bad_header)),
        ("rx_csum_completed", g(&c.rx_csum_completed)),
        ("rx_coalesced", g(&c.rx_coalesced)),
        ("rx_direct", g(&c.rx_direct)),
        ("tx_dropped_runt", g(&c.tx_dropped_runt)),
        ("tx_dropped_over_mtu", g(&c.tx_dropped_over_mtu)),
        ("tx_dropped_gso", g(&c.tx_dropped_gso)),
        ("tx_dropped_bad_offload", g(&c.tx_dropped_bad_offload)),
        ("dropped_at_disconnect", g(&c.dropped_at_disconnect)),
        ("dropped_at_swap", g(&c.dropped_at_swap)),
        ("rx_dropped_unserved", g(&c.rx_dropped_unserved)),
        ("busy_poll_finds", g(&c.busy_poll_finds)),
        ("busy_poll_spells", g(&c.busy_poll_spells)),
        ("busy_poll_us", g(&c.busy_poll_us)),
        ("bad_chain_bad_address", g(&b.bad_address)),
        ("bad_chain_wrong_direction", g(&b.wrong_direction)),
        ("bad_chain_unterminated", g(&b.unterminated)),
        ("bad_chain_too_long", g(&b.too_long)),
        ("bad_chain_empty", g(&b.empty)),
    ]
}

fn transport_counters(t: &TransportStats) -> Vec<(&'static str, u64)> {
    // Destructured whole, so a counter added to TransportStats must be named here too.
    let TransportStats {
        rx_dropped_truncated,
        tx_dropped,
        rx_dropped_header: h,
        rx_dropped_foreign,
        rx_dropped_own,
        tx_refused,
        rx_dropped_kernel,
        peer_hung_up,
        tx_dropped_peer_gone,
        rx_dropped_backlog,
        tx_udp_gso_datagrams,
        rx_udp_gro_datagrams,
    } = *t;
    let HeaderDrops {
        truncated,
        bad_ip_header,
        wrong_ip_protocol,
        wrong_flags,
        wrong_protocol,
        wrong_key,
        not_l2tpv3_data,
        wrong_cookie,
        wrong_session,
        too_short,
    } = h;
    vec![
        ("transport_rx_dropped_truncated", rx_dropped_truncated),
        ("transport_tx_dropped", tx_dropped),
        ("transport_rx_dropped_header_truncated", truncated),
        ("transport_rx_dropped_header_bad_ip_header", bad_ip_header),
        (
            "transport_rx_dropped_header_wrong_ip_protocol",
            wrong_ip_protocol,
        ),
        ("transport_rx_dropped_header_wrong_flags", wrong_flags),
        ("transport_rx_dropped_header_wrong_protocol", wrong_protocol),
        ("transport_rx_dropped_header_wrong_key", wrong_key),
        (
            "transport_rx_dropped_header_not_l2tpv3_data",
            not_l2tpv3_data,
        ),
        ("transport_rx_dropped_header_wrong_cookie", wrong_cookie),
        ("transport_rx_dropped_header_wrong_session", wrong_session),
        ("transport_rx_dropped_header_too_short", too_short),
        ("transport_rx_dropped_foreign", rx_dropped_foreign),
        ("transport_rx_dropped_own", rx_dropped_own),
        ("transport_tx_refused", tx_refused),
        ("transport_rx_dropped_kernel", rx_dropped_kernel),
        ("transport_peer_hung_up", peer_hung_up),
        ("transport_tx_dropped_peer_gone", tx_dropped_peer_gone),
        ("transport_rx_dropped_backlog", rx_dropped_backlog),
        ("transport_tx_udp_gso_datagrams", tx_udp_gso_datagrams),
        ("transport_rx_udp_gro_datagrams", rx_udp_gro_datagrams),
    ]
}

/// Adds `b`'s counters to `a`'s, name by name (both as [`transport_counters`] lists them, so in
/// the same order; a name missing from `a` is a bug, and is added rather than lost).
fn add_counters(a: &mut Vec<(&'static str, u64)>, b: &[(&'static str, u64)]) {
    for &(name, value) in b {
        match a.iter_mut().find(|(n, _)| *n == name) {
            Some((_, v)) => *v += value,
            None => a.push((name, value)),
        }
    }
}

#[cfg(test)]
mod tests;
