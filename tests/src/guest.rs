//! Test guests with their console streamed to the test, so it can act when the guest says it
//! is ready: the UML guest (resources/images/uml-guest.sh) and the stock Debian kernel under
//! QEMU/TCG (resources/images/stock-guest.sh), both vhost-user frontends of our backend, and
//! `vmm` itself booting the real-Linux guest (resources/images/linux-guest.sh). Each line is
//! stamped with when it arrived, so a test can print a boot's timeline.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// A file resources/setup.sh builds under resources/out/.
pub fn built(rel: &str) -> PathBuf {
    let p = crate::workspace_root().join("resources/out").join(rel);
    assert!(
        p.exists(),
        "{} missing: run `bash resources/setup.sh` first",
        p.display()
    );
    p
}

/// The md5 of `data` in hex, as the guest's `md5sum` prints it.
pub fn md5_hex(data: &[u8]) -> String {
    use std::io::Write;
    let mut child = Command::new("md5sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run md5sum");
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// `vmm` booting the real-Linux test kernel with its initramfs and 128 MiB, running `steps`
/// (resources/guest/init's `vmtest.steps`) and ending with their status through the debug-exit
/// port; the caller adds the devices.
pub fn linux_steps_command(steps: &str) -> Command {
    let cmdline = format!(
        "console=ttyS0 reboot=k panic=1 {} vmtest.steps={steps} vmtest.exitport=0xf4",
        pvm_words()
    );
    let mut cmd = Command::new(crate::process::vmm_bin());
    cmd.arg("--kernel")
        .arg(built("linux/vmlinux"))
        .arg("--initrd")
        .arg(built("linux/initramfs.cpio"))
        .args(["--mem", "128", "--cmdline", &cmdline])
        .env("RUST_LOG", "warn");
    cmd
}

/// The one kernel module tree (`RELEASE/` with depmod's `modules.dep`) in the built directory
/// `rel` (resources/kernel/build.sh and resources/images/stock-guest.sh install them).
pub fn module_tree(rel: &str) -> PathBuf {
    let trees = built(rel);
    std::fs::read_dir(&trees)
        .unwrap_or_else(|e| panic!("{}: {e}", trees.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.join("modules.dep").is_file())
        .unwrap_or_else(|| panic!("no module tree with modules.dep in {}", trees.display()))
}

/// The command-line words the PVM test kernel needs on every boot (resources/kernel/cmdline,
/// as resources/images/linux-guest.sh writes it to resources/out/linux/cmdline).
pub fn pvm_words() -> String {
    std::fs::read_to_string(built("linux/cmdline"))
        .expect("read resources/out/linux/cmdline")
        .trim()
        .to_string()
}

/// `len` bytes from a xorshift generator seeded with `seed`: incompressible, every byte value
/// present, so a file made of them shows any corruption or truncation in transit.
pub fn test_bytes(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 24) as u8
        })
        .collect()
}

/// A child's piped stdout and stderr, taken for reader threads.
fn output_streams(child: &mut Child) -> Vec<Box<dyn std::io::Read + Send>> {
    let out = child
        .stdout
        .take()
        .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>);
    let err = child
        .stderr
        .take()
        .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>);
    out.into_iter().chain(err).collect()
}

/// The UML guest's initramfs.
pub fn uml_initrd() -> PathBuf {
    built("uml/initramfs.cpio.gz")
}

/// The UML guests' kernel: the project's build of UML 6.1 (`resources/uml/build.sh`), which
/// runs where Debian's `linux.uml` cannot (a CPU with AMX's larger XSAVE area).
pub fn uml_kernel() -> PathBuf {
    built("uml/linux")
}

/// Whether UML runs on this host, found once per test binary by booting it to a command that
/// exits 0. When it cannot, prints `SKIPPED <test>: <why>` where CI's log shows it and returns
/// false. Known cause: UML keeps a guest process's FPU state in a buffer of a size fixed when
/// it is built, and on a CPU whose XSAVE area is larger the host's ptrace refuses it, so every
/// UML process dies at its first system call ("ptrace set fp regs failed, errno = 14"). Our
/// build sizes it from the host at boot, with room for 12 KiB (AMX's area is 11,008 bytes),
/// and stops with "the host's XSAVE area ... is larger" beyond that.
///
/// Any other failure is retried, and panics after the third (a UML kernel that cannot be
/// started panics at once): a UML that runs on this CPU but does not boot is a broken setup,
/// not missing hardware, and must not turn tests into skips.
pub fn uml_usable(test: &str) -> bool {
    // Kept as the probe's verdict, not as a panic inside the initializer: every UML test in
    // the binary fails at once then, instead of each probing three more times.
    static PROBE: std::sync::OnceLock<Result<(), UmlProbe>> = std::sync::OnceLock::new();
    let result = PROBE.get_or_init(|| {
        let mut failures = Vec::new();
        for _ in 0..3 {
            match probe_uml() {
                UmlProbe::Booted => return Ok(()),
                UmlProbe::Failed(why) => failures.push(why),
                cannot => return Err(cannot),
            }
        }
        Err(UmlProbe::Failed(failures.join("\n")))
    });
    match result {
        Ok(()) => true,
        Err(UmlProbe::CannotRun(why)) => {
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
            false
        }
        Err(other) => {
            panic!("UML did not boot to a shell command in three tries:\n{other}")
        }
    }
}

/// What one boot of the UML probe showed.
#[derive(Debug)]
enum UmlProbe {
    Booted,
    /// UML cannot run on this host's CPU.
    CannotRun(String),
    /// This boot failed; the next may not.
    Failed(String),
}

impl std::fmt::Display for UmlProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UmlProbe::Booted => f.write_str("booted"),
            UmlProbe::CannotRun(why) | UmlProbe::Failed(why) => f.write_str(why),
        }
    }
}

/// Boots UML once to `true` with the guests' memory size and reads what it printed. The
/// memory matters: at 64 MiB, about one boot in five of Debian's UML 6.1 with our 10 MiB
/// initramfs panicked ("System is deadlocked on memory") while unpacking it, and such a
/// boot may also hang instead of exiting.
fn probe_uml() -> UmlProbe {
    const LIMIT: Duration = Duration::from_secs(60);
    let dir = crate::TempDir::new("umlp");
    let mut cmd = Command::new(uml_kernel());
    cmd.env("TMPDIR", dir.path())
        .arg("mem=256M")
        .arg(format!("initrd={}", uml_initrd().display()))
        .arg(format!("uml_dir={}", dir.path().display()))
        .args(["umid=probe", "con=null", "con0=fd:0,fd:1", "quiet"])
        .arg("vmtest.cmd=true");
    // The console holds stdout (the guest's) and stderr (where UML reports its own
    // failures). Dropping the guest kills its process group, UML's helpers with it.
    let mut guest = Guest::spawn(cmd, dir);
    guest.wait_for("VMTEST-EXIT=", LIMIT);
    let in_time = guest.since_start() < LIMIT;
    let text = guest.console();
    drop(guest);
    if text.contains("VMTEST-EXIT=0") {
        UmlProbe::Booted
    } else if let Some(line) = text
        .lines()
        .find(|l| l.contains("ptrace set fp regs failed") || l.contains("XSAVE area"))
    {
        UmlProbe::CannotRun(format!(
            "UML cannot run on this CPU: the host's ptrace refuses its XSAVE buffer (\"{}\")",
            line.trim()
        ))
    } else {
        let tail: Vec<&str> = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("[<"))
            .rev()
            .take(8)
            .collect();
        UmlProbe::Failed(format!(
            "{}: {}",
            if in_time {
                "its console ended without VMTEST-EXIT=0".to_string()
            } else {
                format!("no VMTEST-EXIT= in {LIMIT:?}")
            },
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        ))
    }
}

/// How the guest's network device reaches the host.
pub enum GuestNet<'a> {
    /// virtio_uml: a vhost-user frontend on this socket (our backend serves it).
    VhostUser(&'a Path),
    /// UML's own transport, e.g. `vec0:transport=raw,ifname=X`.
    Uml(&'a str),
    /// No network device.
    None,
}

/// What the guest does.
pub struct GuestConfig<'a> {
    pub net: GuestNet<'a>,
    /// `ADDR/PREFIX` for the guest's interface.
    pub ip: Option<&'a str>,
    /// A shell script the guest runs; its directory is mounted read-write at /host.
    pub script: &'a Path,
    /// Run UML inside this network namespace (for UML's own transports).
    pub netns: Option<&'a str>,
    /// UML's `mem=`. The tests give 256M: at 64M about one boot in five panicked unpacking
    /// the initramfs ("System is deadlocked on memory"); 128M showed no panic in 12 boots.
    pub mem: &'a str,
}

/// A running guest (UML, QEMU or `vmm`).
pub struct Guest {
    child: Option<Child>,
    lines: Receiver<(Instant, String)>,
    console: Vec<(Instant, String)>,
    started: Instant,
    _dir: crate::TempDir,
}

impl Guest {
    pub fn uml(cfg: &GuestConfig) -> Guest {
        crate::require_root();
        let dir = crate::TempDir::new("uml");
        let mut cmd = match cfg.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(uml_kernel());
                c
            }
            None => Command::new(uml_kernel()),
        };
        cmd.env("TMPDIR", dir.path())
            .arg(format!("mem={}", cfg.mem))
            .arg(format!("initrd={}", uml_initrd().display()))
            .arg("umid=vmtest")
            .arg(format!("uml_dir={}", dir.path().display()))
            .args(["con=null", "con0=fd:0,fd:1", "quiet"]);
        match &cfg.net {
            GuestNet::VhostUser(sock) => {
                cmd.arg(format!("virtio_uml.device={}:1", sock.display()));
            }
            GuestNet::Uml(spec) => {
                cmd.arg(spec);
            }
            GuestNet::None => {}
        }
        if let Some(ip) = cfg.ip {
            cmd.arg(format!("vmtest.ip={ip}"));
        }
        cmd.arg(format!("vmtest.run={}", cfg.script.display()));
        Guest::spawn(cmd, dir)
    }

    /// The stock Debian kernel under QEMU/TCG (q35), its virtio-net device a vhost-user
    /// frontend on `sock`, guest memory a shared memfd; runs `cmd` (see resources/guest/init).
    pub fn qemu(sock: &Path, ip: &str, cmd: &[&str]) -> Guest {
        Guest::qemu_with_queues(sock, ip, cmd, 1)
    }

    /// [`Guest::qemu`] with `queues` vCPUs and as many queue pairs on its NIC (QEMU's
    /// `queues=N`, `mq=on`; QEMU keeps the control queue and tells the backend which pairs the
    /// guest runs).
    pub fn qemu_with_queues(sock: &Path, ip: &str, cmd: &[&str], queues: u16) -> Guest {
        crate::require_root();
        let dir = crate::TempDir::new("qemu");
        let mut c = Command::new("qemu-system-x86_64");
        c.args([
            "-M",
            "q35",
            "-accel",
            "tcg",
            "-m",
            "256",
            "-nographic",
            "-no-reboot",
        ])
        .args(["-object", "memory-backend-memfd,id=mem,size=256M,share=on"])
        .args(["-numa", "node,memdev=mem"])
        .args(["-smp", &queues.to_string()])
        .arg("-chardev")
        .arg(format!("socket,id=c0,path={}", sock.display()))
        .arg("-netdev")
        .arg(format!("vhost-user,id=n0,chardev=c0,queues={queues}"))
        // No MSI-X vectors: QEMU 7.2 under TCG crashes in msix_set_vector_notifiers when it
        // starts a vhost device with MSI-X (seen with gdb); INTx avoids that path.
        .arg("-device")
        .arg(format!(
            "virtio-net-pci,netdev=n0,vectors=0,mq={}",
            if queues > 1 { "on" } else { "off" }
        ))
        .arg("-kernel")
        .arg(built("stock/vmlinuz"))
        .arg("-initrd")
        .arg(built("stock/initramfs.cpio.gz"))
        .arg("-append")
        .arg(format!(
            "console=ttyS0 quiet vmtest.ip={ip} vmtest.cmd={}",
            cmd.join(",")
        ));
        Guest::spawn(c, dir)
    }

    /// A guest run by `cmd` (e.g. `vmm --kernel ...`), its stdout and stderr streamed.
    pub fn command(cmd: Command) -> Guest {
        Guest::spawn(cmd, crate::TempDir::new("vm"))
    }

    /// Like [`Guest::command`], and what is written to the returned pipe reaches the process's
    /// stdin: the guest's console input (e.g. QEMU's `-nographic` serial port).
    pub fn interactive(mut cmd: Command) -> (Guest, std::process::ChildStdin) {
        cmd.stdin(Stdio::piped());
        let mut guest = Guest::spawn_with(cmd, crate::TempDir::new("vm"));
        let stdin = guest.child.as_mut().and_then(|c| c.stdin.take());
        (guest, stdin.expect("a piped stdin"))
    }

    fn spawn(mut cmd: Command, dir: crate::TempDir) -> Guest {
        cmd.stdin(Stdio::null());
        Guest::spawn_with(cmd, dir)
    }

    fn spawn_with(mut cmd: Command, dir: crate::TempDir) -> Guest {
        let program = cmd.get_program().to_string_lossy().into_owned();
        let mut child = cmd
            .process_group(0)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {program}: {e} (run resources/setup.sh)"));
        let started = Instant::now();
        let (tx, rx) = mpsc::channel();
        for stream in output_streams(&mut child) {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if tx.send((Instant::now(), line)).is_err() {
                        break;
                    }
                }
            });
        }
        Guest {
            child: Some(child),
            lines: rx,
            console: Vec::new(),
            started,
            _dir: dir,
        }
    }

    /// The process's id while it runs (it leads its own process group, of the same id).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Everything the console printed so far.
    pub fn console(&self) -> String {
        let lines: Vec<&str> = self.console.iter().map(|(_, l)| l.as_str()).collect();
        lines.join("\n")
    }

    /// Time since the process started.
    pub fn since_start(&self) -> Duration {
        self.started.elapsed()
    }

    /// When the first line containing `needle` arrived, counted from the process's start.
    pub fn seen_at(&self, needle: &str) -> Option<Duration> {
        self.console
            .iter()
            .find(|(_, l)| l.contains(needle))
            .map(|(t, _)| t.duration_since(self.started))
    }

    /// One line per mark, `label  12.3 s`, for the marks (label, console needle) seen so far:
    /// a boot's timeline.
    pub fn timeline(&self, marks: &[(&str, &str)]) -> String {
        let first = self
            .console
            .first()
            .map(|(t, _)| t.duration_since(self.started));
        let mut out = String::new();
        if let Some(t) = first {
            out += &format!("  {:<28}{:>7.1} s\n", "first console line", t.as_secs_f64());
        }
        for (label, needle) in marks {
            match self.seen_at(needle) {
                Some(t) => out += &format!("  {label:<28}{:>7.1} s\n", t.as_secs_f64()),
                None => out += &format!("  {label:<28}      (not seen)\n"),
            }
        }
        out
    }

    /// Waits for the process to end (killing it after `timeout`) and returns its exit code,
    /// `None` when it was killed; the console is complete afterwards.
    pub fn wait_process(&mut self, timeout: Duration) -> Option<i32> {
        let mut child = self.child.take()?;
        let deadline = Instant::now() + timeout;
        let code = loop {
            if let Ok(Some(status)) = child.try_wait() {
                break status.code();
            }
            if Instant::now() > deadline {
                kill_group(&mut child);
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // The reader threads end at EOF, which follows the exit.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(2)) {
            self.console.push(line);
        }
        code
    }

    /// Waits up to `timeout` for a console line containing `needle`: `None` when none came
    /// (the guest may have stopped).
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (at, line) = self.lines.recv_timeout(left).ok()?;
            self.console.push((at, line.clone()));
            if line.contains(needle) {
                return Some(line);
            }
        }
    }

    /// Waits for a console line containing `needle`; panics with the console on timeout or
    /// when the guest stops first.
    pub fn expect(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((at, line)) => {
                    self.console.push((at, line.clone()));
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "guest did not print {needle:?} in {timeout:?}; console:\n{}",
                        self.console()
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!(
                        "guest stopped before printing {needle:?}; console:\n{}",
                        self.console()
                    )
                }
            }
        }
    }

    /// Waits for the guest's script to finish and returns its exit status.
    pub fn wait_exit(&mut self, timeout: Duration) -> i32 {
        let line = self.expect("VMTEST-EXIT=", timeout);
        self.finish(&line)
    }

    /// As [`Guest::wait_exit`], but `None` when the script did not finish in `timeout`, so
    /// that a test with two guests can report both consoles.
    pub fn try_wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let line = self.wait_for("VMTEST-EXIT=", timeout)?;
        Some(self.finish(&line))
    }

    /// The status in the exit line, after letting the guest power off.
    fn finish(&mut self, line: &str) -> i32 {
        let status = line
            .split("VMTEST-EXIT=")
            .nth(1)
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(-1);
        // Let UML power off; it exits right after.
        if let Some(mut child) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            kill_group(&mut child);
        }
        while let Ok(line) = self.lines.try_recv() {
            self.console.push(line);
        }
        status
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_group(&mut child);
        }
    }
}

/// Kills `child` and every process in its group, then reaps it. Guests are spawned as the
/// leaders of their own process groups because UML's helper processes (its I/O and SIGIO
/// helpers) outlive a SIGKILL of UML itself: they would hold the console pipes open forever,
/// so a reader waiting for end of file would hang the test, and they would pile up in CI.
fn kill_group(child: &mut Child) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill(2) on the process group our child leads (spawned with
        // process_group(0)). While the leader is not reaped, or any member of its group
        // lives, the kernel keeps the id reserved, so the signal reaches only that group.
        // Once all are gone the call fails with ESRCH, unless the kernel's cyclic pid
        // allocation went all the way round and a new group leader took the id in between,
        // which it cannot do in the microseconds since the reap.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether any process is left in process group `pgid`, waiting up to `timeout` for the
    /// last ones (zombies until init reaps them) to go.
    fn group_outlives(pgid: libc::pid_t, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            // SAFETY: signal 0 only asks whether the group exists; nothing is sent.
            let alive = unsafe { libc::kill(-pgid, 0) } == 0;
            if !alive || Instant::now() >= deadline {
                return alive;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A UML guest killed mid-run takes its helper processes with it. UML's I/O and SIGIO
    /// helpers survive a SIGKILL of UML itself; before guests led their own process groups
    /// they stayed behind holding the console pipes, and the UML probe, reading those to end
    /// of file, hung a whole CI run.
    #[test]
    fn a_killed_uml_guest_leaves_no_process_behind() {
        if !uml_usable("a killed UML guest leaves no process behind") {
            return;
        }
        let dir = crate::TempDir::new("umlkill");
        let script = dir.path().join("run.sh");
        std::fs::write(&script, "echo VMTEST-SLEEPING\nsleep 600\n").unwrap();
        let mut guest = Guest::uml(&GuestConfig {
            net: GuestNet::None,
            ip: None,
            script: &script,
            netns: None,
            mem: "256M",
        });
        guest.expect("VMTEST-SLEEPING", Duration::from_secs(60));
        let pgid = libc::pid_t::try_from(guest.pid().expect("running")).unwrap();
        let helpers = std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str()?.parse::<libc::pid_t>().ok())
            // SAFETY: getpgid(2) only reads another process's group id.
            .filter(|&pid| pid != pgid && unsafe { libc::getpgid(pid) } == pgid)
            .count();
        assert!(
            helpers > 0,
            "UML runs no process besides itself: the test proves nothing"
        );
        drop(guest);
        assert!(
            !group_outlives(pgid, Duration::from_secs(10)),
            "processes of the guest's group (pgid {pgid}) outlived it"
        );
    }
}
