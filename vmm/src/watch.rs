//! The guest's console, watched: a copy for `--console-log`, and the kernel's own failure
//! reports turned into a failed VM.
//!
//! Why the console and not only pvpanic: a kernel without the `pvpanic-pci` driver (or one that
//! dies before it probes) still prints `Kernel panic - not syncing: ...`, and then either spins
//! forever (no `panic=`) or reboots (`panic=1 reboot=k`), which alone would look like success.
//! Oopses, BUGs and warnings are printed and the kernel goes on; `--fail-on oops,warn` makes
//! them failures too (the patterns syzkaller and kernel CI bots use).
//!
//! A report is followed by its stack trace, so the VM is not stopped on the first line: the
//! event loop stops it when the report is complete (`---[ end ...`, `Rebooting in`) or after
//! [`GRACE`], whichever comes first. pvpanic, which Linux signals after printing the trace,
//! stops it at once.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// How long a report's trace may take to print before the VM is stopped anyway.
pub const GRACE: Duration = Duration::from_secs(2);
/// Longest console line kept for matching; the rest of a longer line is not matched.
const MAX_LINE: usize = 1024;

/// Console reports that fail the VM beyond a panic (which always does).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FailOn {
    /// `BUG:`, `Oops:`, `kernel BUG at`, general protection faults, sanitizer reports.
    pub oops: bool,
    /// `WARNING:` (WARN_ON and friends).
    pub warn: bool,
}

/// What kind of report failed the VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// `Kernel panic - not syncing`, or pvpanic.
    Panic,
    /// An oops, BUG or sanitizer report (with [`FailOn::oops`]).
    Oops,
    /// A kernel warning (with [`FailOn::warn`]).
    Warning,
}

/// The first failure the guest reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestFailure {
    /// What it was.
    pub kind: FailureKind,
    /// The console line that reported it (printk timestamp removed), or what pvpanic said.
    pub message: String,
}

/// Lines (after the printk timestamp) that are an oops or a BUG.
const OOPS_PATTERNS: &[&str] = &[
    "BUG:",
    "Oops:",
    "kernel BUG at",
    "general protection fault",
    "Unable to handle kernel",
    "invalid opcode:",
    "divide error:",
    "UBSAN:",
    "KASAN:",
    "KFENCE:",
];
const WARN_PATTERNS: &[&str] = &["WARNING:"];
const PANIC_PATTERN: &str = "Kernel panic - not syncing";
/// Lines that close a report: its trace has been printed.
const END_PATTERNS: &[&str] = &["---[ end ", "Rebooting in "];

#[derive(Default)]
struct State {
    failure: Option<(GuestFailure, Instant)>,
    complete: bool,
}

/// Failure reports seen so far, shared by the console (which finds them), pvpanic and the
/// VMM's event loop (which stops the VM, woken through [`FailureWatch::eventfd`]).
pub struct FailureWatch {
    fail_on: FailOn,
    state: Mutex<State>,
    evt: EventFd,
}

impl FailureWatch {
    /// A watch failing on panics and, per `fail_on`, oopses and warnings.
    pub fn new(fail_on: FailOn) -> io::Result<Self> {
        Ok(Self {
            fail_on,
            state: Mutex::default(),
            evt: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    /// Readable when a failure was first seen or its report completed: the event loop then
    /// reads [`FailureWatch::deadline`] again.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }

    fn wake(&self) {
        if let Err(e) = self.evt.write(1) {
            log::error!("failure watch: cannot wake the event loop: {e}");
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Looks at one console line (without its line ending).
    pub fn line(&self, line: &str) {
        let text = strip_timestamp(line);
        let kind = if text.contains(PANIC_PATTERN) {
            Some(FailureKind::Panic)
        } else if self.fail_on.oops && OOPS_PATTERNS.iter().any(|p| text.contains(p)) {
            Some(FailureKind::Oops)
        } else if self.fail_on.warn && WARN_PATTERNS.iter().any(|p| text.contains(p)) {
            Some(FailureKind::Warning)
        } else {
            None
        };
        let mut st = self.lock();
        match (kind, st.failure.as_mut()) {
            (Some(kind), None) => {
                st.failure = Some((
                    GuestFailure {
                        kind,
                        message: text.trim().to_string(),
                    },
                    Instant::now(),
                ));
                drop(st);
                self.wake();
            }
            // An oops that ends in a panic is reported as the panic, its message kept.
            (Some(FailureKind::Panic), Some((f, _))) => f.kind = FailureKind::Panic,
            (None, Some(_)) if END_PATTERNS.iter().any(|p| text.contains(p)) => {
                st.complete = true;
                drop(st);
                self.wake();
            }
            _ => {}
        }
    }

    /// pvpanic fired: a panic, complete (Linux notifies after printing the trace).
    pub fn pvpanic(&self) {
        let mut st = self.lock();
        if st.failure.is_none() {
            st.failure = Some((
                GuestFailure {
                    kind: FailureKind::Panic,
                    message: "reported through pvpanic (no panic line on the console)".into(),
                },
                Instant::now(),
            ));
        } else if let Some((f, _)) = st.failure.as_mut() {
            f.kind = FailureKind::Panic;
        }
        st.complete = true;
        drop(st);
        self.wake();
    }

    /// When the VM should be stopped for a failure: now if its report is complete, else at
    /// the end of its [`GRACE`]; `None` while there is no failure.
    pub fn deadline(&self) -> Option<Instant> {
        let st = self.lock();
        st.failure.as_ref().map(|(_, at)| {
            if st.complete {
                Instant::now()
            } else {
                *at + GRACE
            }
        })
    }

    /// The first failure, if any.
    pub fn failure(&self) -> Option<GuestFailure> {
        self.lock().failure.as_ref().map(|(f, _)| f.clone())
    }
}

/// `[    1.234567] text` -> `text`; other lines unchanged.
fn strip_timestamp(line: &str) -> &str {
    let t = line.trim_start_matches('\r');
    if let Some(rest) = t.strip_prefix('[') {
        if let Some((stamp, text)) = rest.split_once(']') {
            if stamp.trim().chars().all(|c| c.is_ascii_digit() || c == '.') {
                return text.strip_prefix(' ').unwrap_or(text);
            }
        }
    }
    t
}

/// The serial console's output: passed on to where the console goes, copied to the console
/// log, and split into lines for the [`FailureWatch`].
pub struct ConsoleTap {
    out: Box<dyn Write + Send>,
    log: Option<BufWriter<File>>,
    watch: std::sync::Arc<FailureWatch>,
    line: Vec<u8>,
}

impl ConsoleTap {
    /// Wraps `out`; `log` gets a copy of every byte.
    pub fn new(
        out: Box<dyn Write + Send>,
        log: Option<File>,
        watch: std::sync::Arc<FailureWatch>,
    ) -> Self {
        Self {
            out,
            log: log.map(BufWriter::new),
            watch,
            line: Vec::new(),
        }
    }
}

impl Write for ConsoleTap {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        let written = &buf[..n];
        if let Some(log) = self.log.as_mut() {
            // A full disk must not stop the guest's console: the log is best effort.
            if log.write_all(written).is_err() {
                log::warn!("console log: write failed; no more console logging");
                self.log = None;
            }
        }
        for &b in written {
            if b == b'\n' {
                let line = String::from_utf8_lossy(&self.line).into_owned();
                self.line.clear();
                self.watch.line(line.trim_end_matches('\r'));
                if let Some(log) = self.log.as_mut() {
                    let _ = log.flush();
                }
                // Line-buffered console: a CI log shows each line as it comes.
                let _ = self.out.flush();
            } else if self.line.len() < MAX_LINE {
                self.line.push(b);
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        if let Some(log) = self.log.as_mut() {
            let _ = log.flush();
        }
        self.out.flush()
    }
}

impl Drop for ConsoleTap {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn feed(watch: &Arc<FailureWatch>, text: &str) {
        let mut tap = ConsoleTap::new(Box::new(io::sink()), None, watch.clone());
        tap.write_all(text.as_bytes()).unwrap();
    }

    #[test]
    fn a_panic_banner_is_a_failure_with_its_message() {
        let w = Arc::new(FailureWatch::new(FailOn::default()).unwrap());
        feed(&w, "[    0.100000] Run /init as init process\r\n");
        assert_eq!(w.deadline(), None);
        feed(
            &w,
            "[   61.482913] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100\r\n",
        );
        let f = w.failure().unwrap();
        assert_eq!(f.kind, FailureKind::Panic);
        assert_eq!(
            f.message,
            "Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100"
        );
        let d = w.deadline().unwrap();
        assert!(d > Instant::now(), "the trace gets its grace");
        feed(
            &w,
            "[   61.6] CPU: 0 PID: 1 Comm: init\r\n[   62.0] Rebooting in 1 seconds..\r\n",
        );
        assert!(
            w.deadline().unwrap() <= Instant::now(),
            "complete: stop now"
        );
    }

    #[test]
    fn oops_and_warnings_only_when_asked() {
        let lines = "[ 1.0] WARNING: CPU: 0 PID: 1 at mm/x.c:1 f+0x1/0x2\n[ 2.0] BUG: kernel NULL pointer dereference, address: 0000000000000000\n";
        let quiet = Arc::new(FailureWatch::new(FailOn::default()).unwrap());
        feed(&quiet, lines);
        assert_eq!(quiet.failure(), None);
        let oops = Arc::new(
            FailureWatch::new(FailOn {
                oops: true,
                warn: false,
            })
            .unwrap(),
        );
        feed(&oops, lines);
        assert_eq!(oops.failure().unwrap().kind, FailureKind::Oops);
        assert!(oops
            .failure()
            .unwrap()
            .message
            .starts_with("BUG: kernel NULL"));
        let warn = Arc::new(
            FailureWatch::new(FailOn {
                oops: true,
                warn: true,
            })
            .unwrap(),
        );
        feed(&warn, lines);
        assert_eq!(warn.failure().unwrap().kind, FailureKind::Warning);
        // The oops that follows ends in a panic: reported as a panic.
        feed(
            &warn,
            "[ 3.0] Kernel panic - not syncing: Fatal exception\n",
        );
        assert_eq!(warn.failure().unwrap().kind, FailureKind::Panic);
    }

    #[test]
    fn pvpanic_completes_a_report() {
        let w = FailureWatch::new(FailOn::default()).unwrap();
        w.pvpanic();
        assert_eq!(w.failure().unwrap().kind, FailureKind::Panic);
        assert!(w.deadline().unwrap() <= Instant::now());
    }

    #[test]
    fn the_log_gets_every_byte_and_long_lines_do_not_grow() {
        let dir = std::env::temp_dir().join(format!("vmm-watch-{}", std::process::id()));
        let w = Arc::new(FailureWatch::new(FailOn::default()).unwrap());
        let file = File::create(&dir).unwrap();
        {
            let mut tap = ConsoleTap::new(Box::new(io::sink()), Some(file), w.clone());
            tap.write_all(&vec![b'x'; 10 * MAX_LINE]).unwrap();
            tap.write_all(b"\npartial").unwrap();
            assert!(tap.line.len() <= MAX_LINE);
        }
        let logged = std::fs::read(&dir).unwrap();
        std::fs::remove_file(&dir).unwrap();
        assert_eq!(logged.len(), 10 * MAX_LINE + "\npartial".len());
        assert!(logged.ends_with(b"\npartial"), "flushed on drop");
    }
}
