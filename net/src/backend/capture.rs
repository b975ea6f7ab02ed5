//! Frame capture into a classic pcap file, for the control handle ([`super::control`]).
//!
//! The datapath hands every frame it moves (guest → wire once taken from the transmit queue,
//! wire → guest once written into the guest's buffers; plain Ethernet, the virtio-net header
//! left out) to a [`CaptureTap`] it holds only while a capture runs, so with capture off the
//! cost is one check of an `Option`. The tap never blocks the datapath: it runs the optional
//! filter (classic BPF that libpcap compiled, run in user space), copies the frame into a
//! recycled buffer, and queues it for a writer thread without waiting. A full queue drops the
//! copy (counted, never the frame itself); a failed write (disk full) ends the capture: the
//! writer stops, the tap stops queueing, and the error is counted and kept for the summary.
//!
//! File format: classic pcap (magic 0xa1b2c3d4 in host byte order, version 2.4, snap length
//! 65535, LINKTYPE_ETHERNET, microsecond timestamps), which tcpdump, tshark and Wireshark read.
//! Frames longer than the snap length (a GSO super-frame) are cut to it, keeping their real
//! length in the record, as tcpdump does.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::transport;

/// The snap length of the file: longer frames are cut to it.
pub const SNAPLEN: u32 = 65_535;
/// `LINKTYPE_ETHERNET`.
const LINKTYPE_ETHERNET: u32 = 1;
/// Frames queued for the writer at most; beyond it (or [`QUEUE_BYTES`]) copies are dropped.
const QUEUE_FRAMES: usize = 1024;
/// Bytes queued for the writer at most: bounds the memory a burst of GSO frames can take.
const QUEUE_BYTES: usize = 16 << 20;

/// Errors of starting or stopping a capture.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("capture filter `{filter}`: {reason}")]
    Filter { filter: String, reason: String },
    #[error("capture file {path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("a capture is already running (into {0})")]
    AlreadyRunning(PathBuf),
    #[error("no capture is running")]
    NotRunning,
    #[error("starting the capture writer thread: {0}")]
    Thread(#[source] io::Error),
}

/// What one capture did, counted as it runs (shared by the tap, the writer and the handle).
#[derive(Debug, Default)]
pub struct CaptureCounters {
    /// Frames written to the file.
    pub written: AtomicU64,
    /// Frames the filter rejected.
    pub filtered: AtomicU64,
    /// Bytes of frame data written (after the snap length), record headers not included.
    pub bytes: AtomicU64,
    /// Frames not captured because the writer was behind (its queue full).
    pub dropped_busy: AtomicU64,
    /// Writes that failed; the first one ends the capture.
    pub write_errors: AtomicU64,
    /// Set by the writer when a write failed: the tap stops queueing.
    failed: AtomicBool,
    /// Bytes queued and not written yet.
    queued_bytes: AtomicUsize,
    /// The first write error, for the summary.
    error: Mutex<Option<String>>,
}

impl CaptureCounters {
    fn load(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    /// Whether the capture ended on a write error.
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }
}

/// The result of a capture, returned when it stops.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaptureSummary {
    pub path: PathBuf,
    pub frames_written: u64,
    pub frames_filtered: u64,
    /// Frames not captured because the writer fell behind.
    pub frames_dropped: u64,
    pub bytes: u64,
    pub write_errors: u64,
    /// The write error that ended the capture early, if one did.
    pub error: Option<String>,
}

impl CaptureSummary {
    /// Named counters, as [`super::control::NetStats`] gives them.
    pub fn counters(&self) -> [(&'static str, u64); 5] {
        [
            ("frames_written", self.frames_written),
            ("frames_filtered", self.frames_filtered),
            ("frames_dropped", self.frames_dropped),
            ("bytes", self.bytes),
            ("write_errors", self.write_errors),
        ]
    }
}

/// A frame on its way to the writer.
struct Record {
    ts: SystemTime,
    orig_len: u32,
    data: Vec<u8>,
}

/// A compiled capture filter (classic BPF for Ethernet frames).
#[derive(Clone, Debug)]
pub struct Filter {
    insns: Vec<libc::sock_filter>,
}

impl Filter {
    /// Compiles a filter in tcpdump's syntax with libpcap; the error names the expression and
    /// gives libpcap's reason.
    pub fn compile(expr: &str) -> Result<Filter, CaptureError> {
        transport::compile_filter(expr, true)
            .map(|insns| Filter { insns })
            .map_err(|reason| CaptureError::Filter {
                filter: expr.to_string(),
                reason,
            })
    }

    /// Whether the filter keeps `frame`.
    pub fn matches(&self, frame: &[u8]) -> bool {
        transport::run_bpf(&self.insns, frame) != 0
    }
}

/// The datapath's end of a running capture.
pub struct CaptureTap {
    filter: Option<Filter>,
    queue: SyncSender<Record>,
    /// Buffers the writer is done with, reused so a steady capture allocates nothing.
    recycled: Receiver<Vec<u8>>,
    counters: Arc<CaptureCounters>,
}

impl CaptureTap {
    /// A tap into the same capture for another queue pair's datapath: the same filter,
    /// queue and counters. The writer gives its used buffers back to the first tap only, so
    /// this one allocates a buffer per frame it queues.
    pub fn another(&self) -> CaptureTap {
        let (_, recycled) = mpsc::sync_channel(0);
        CaptureTap {
            filter: self.filter.clone(),
            queue: self.queue.clone(),
            recycled,
            counters: self.counters.clone(),
        }
    }

    /// Offers one frame (plain Ethernet) to the capture. Never blocks.
    pub fn frame(&mut self, frame: &[u8]) {
        let c = &*self.counters;
        if c.failed.load(Ordering::Relaxed) {
            return;
        }
        if let Some(f) = &self.filter {
            if !f.matches(frame) {
                c.filtered.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        let take = frame.len().min(SNAPLEN as usize);
        if c.queued_bytes.load(Ordering::Relaxed) + take > QUEUE_BYTES {
            c.dropped_busy.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut data = self.recycled.try_recv().unwrap_or_default();
        data.clear();
        data.extend_from_slice(&frame[..take]);
        let record = Record {
            ts: SystemTime::now(),
            orig_len: u32::try_from(frame.len()).unwrap_or(u32::MAX),
            data,
        };
        c.queued_bytes.fetch_add(take, Ordering::Relaxed);
        match self.queue.try_send(record) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                c.queued_bytes.fetch_sub(take, Ordering::Relaxed);
                c.dropped_busy.fetch_add(1, Ordering::Relaxed);
            }
            // The writer is gone only after a failed write, which `failed` reports.
            Err(TrySendError::Disconnected(_)) => {
                c.queued_bytes.fetch_sub(take, Ordering::Relaxed);
            }
        }
    }
}

/// The control side of a running capture: the file's writer thread.
pub struct CaptureSession {
    path: PathBuf,
    counters: Arc<CaptureCounters>,
    writer: JoinHandle<()>,
}

impl CaptureSession {
    /// Creates (or truncates) the file, writes the pcap header, and starts the writer. Returns
    /// the session and the tap to install in the datapath.
    pub fn start(
        path: &Path,
        filter: Option<Filter>,
    ) -> Result<(CaptureSession, CaptureTap), CaptureError> {
        let file_err = |source| CaptureError::File {
            path: path.to_path_buf(),
            source,
        };
        let mut out = BufWriter::with_capacity(256 << 10, File::create(path).map_err(file_err)?);
        // Written and flushed now, so a file that cannot be written fails the start.
        out.write_all(&file_header()).map_err(file_err)?;
        out.flush().map_err(file_err)?;
        Self::start_writer(path, out, filter)
    }

    /// Starts the writer on any output (the header already written): tests use outputs that
    /// fail on purpose.
    fn start_writer<W: Write + Send + 'static>(
        path: &Path,
        out: W,
        filter: Option<Filter>,
    ) -> Result<(CaptureSession, CaptureTap), CaptureError> {
        let (queue, records) = mpsc::sync_channel(QUEUE_FRAMES);
        let (give_back, recycled) = mpsc::sync_channel(QUEUE_FRAMES);
        let counters = Arc::new(CaptureCounters::default());
        let c = counters.clone();
        let writer = std::thread::Builder::new()
            .name("net-capture".into())
            .spawn(move || write_records(out, &records, &give_back, &c))
            .map_err(CaptureError::Thread)?;
        Ok((
            CaptureSession {
                path: path.to_path_buf(),
                counters: counters.clone(),
                writer,
            },
            CaptureTap {
                filter,
                queue,
                recycled,
                counters,
            },
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn counters(&self) -> &Arc<CaptureCounters> {
        &self.counters
    }

    /// Waits for the writer to write what was queued and close the file. The tap must be gone
    /// (dropped) first, or this waits for it.
    pub fn finish(self) -> CaptureSummary {
        if self.writer.join().is_err() {
            record_error(&self.counters, "the writer thread panicked".into());
        }
        summary(&self.path, &self.counters)
    }
}

/// The summary of a capture from its counters.
pub fn summary(path: &Path, c: &CaptureCounters) -> CaptureSummary {
    CaptureSummary {
        path: path.to_path_buf(),
        frames_written: CaptureCounters::load(&c.written),
        frames_filtered: CaptureCounters::load(&c.filtered),
        frames_dropped: CaptureCounters::load(&c.dropped_busy),
        bytes: CaptureCounters::load(&c.bytes),
        write_errors: CaptureCounters::load(&c.write_errors),
        error: c.error.lock().unwrap_or_else(|p| p.into_inner()).clone(),
    }
}

fn record_error(c: &CaptureCounters, why: String) {
    c.write_errors.fetch_add(1, Ordering::Relaxed);
    c.failed.store(true, Ordering::Relaxed);
    let mut e = c.error.lock().unwrap_or_else(|p| p.into_inner());
    if e.is_none() {
        *e = Some(why);
    }
}

/// The writer thread: records until the tap is dropped, then a flush. The first failed write
/// ends it (the receiver is dropped, so the tap's sends fail fast afterwards).
fn write_records<W: Write>(
    mut out: W,
    records: &Receiver<Record>,
    give_back: &SyncSender<Vec<u8>>,
    c: &CaptureCounters,
) {
    while let Ok(r) = records.recv() {
        let n = r.data.len();
        c.queued_bytes.fetch_sub(n, Ordering::Relaxed);
        let result = out
            .write_all(&record_header(r.ts, n, r.orig_len))
            .and_then(|()| out.write_all(&r.data));
        if let Err(e) = result {
            log::warn!("capture: writing a frame: {e}; capture stopped");
            record_error(c, e.to_string());
            return;
        }
        c.written.fetch_add(1, Ordering::Relaxed);
        c.bytes.fetch_add(n as u64, Ordering::Relaxed);
        let _ = give_back.try_send(r.data);
        // Flush when the datapath has nothing more queued, so a capture that is read while it
        // runs is up to date, without a write per frame in a burst.
        if c.queued_bytes.load(Ordering::Relaxed) == 0 {
            if let Err(e) = out.flush() {
                log::warn!("capture: writing: {e}; capture stopped");
                record_error(c, e.to_string());
                return;
            }
        }
    }
    if let Err(e) = out.flush() {
        record_error(c, e.to_string());
    }
}

/// The pcap global header, in host byte order (readers tell it from the magic).
fn file_header() -> [u8; 24] {
    let mut h = [0u8; 24];
    h[0..4].copy_from_slice(&0xa1b2_c3d4u32.to_ne_bytes());
    h[4..6].copy_from_slice(&2u16.to_ne_bytes());
    h[6..8].copy_from_slice(&4u16.to_ne_bytes());
    // thiszone and sigfigs: 0.
    h[16..20].copy_from_slice(&SNAPLEN.to_ne_bytes());
    h[20..24].copy_from_slice(&LINKTYPE_ETHERNET.to_ne_bytes());
    h
}

/// One record's header: seconds, microseconds, captured length, length on the wire.
fn record_header(ts: SystemTime, incl_len: usize, orig_len: u32) -> [u8; 16] {
    let t = ts.duration_since(UNIX_EPOCH).unwrap_or_default();
    let mut h = [0u8; 16];
    // pcap's 32-bit seconds run out in 2106.
    h[0..4].copy_from_slice(&(t.as_secs() as u32).to_ne_bytes());
    h[4..8].copy_from_slice(&t.subsec_micros().to_ne_bytes());
    h[8..12].copy_from_slice(&(incl_len as u32).to_ne_bytes());
    h[12..16].copy_from_slice(&orig_len.to_ne_bytes());
    h
}

#[cfg(test)]
mod tests;
