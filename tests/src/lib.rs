//! Shared scaffolding for the integration tests: network namespaces and interfaces that are
//! removed even when a test fails, the `vmm` binary run as a backend process, and the UML test
//! guest run with a streaming console, and a virtio-net device driven from Rust over vhost-user
//! ([`rig`]).
//!
//! Every name a test creates is unique (prefix, process id, counter) and at most 15 bytes, so
//! tests can run in parallel and never touch interfaces they did not make.

pub mod batch;
pub mod guest;
pub mod netns;
pub mod peer;
pub mod process;
pub mod rig;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// A name unique to this process and call, at most 15 bytes (IFNAMSIZ - 1).
pub fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let name = format!("{prefix}{:x}{n:x}", std::process::id() & 0xffff);
    assert!(name.len() <= 15, "interface name {name} too long");
    name
}

/// A per-test /24 inside 10.0.0.0/8, unique per call in this process: `10.a.b.0/24`.
pub fn unique_subnet() -> (u8, u8) {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let id = (std::process::id() as u8).wrapping_add(n as u8);
    (100 + (n % 100) as u8, id)
}

/// Fails the test with a clear message unless it runs as root: the tests create namespaces,
/// veth pairs and taps.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "these tests create network namespaces and interfaces: run them as root"
    );
}

/// Says why a test is skipped where CI's log shows it (the harness captures `eprintln!` of
/// passing tests, not writes to the stderr handle).
pub fn say(text: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{text}");
}

/// Whether `/dev/kvm` can run a guest here; prints the skip reason when not.
pub fn kvm_usable() -> bool {
    match vmm_vmm::kvm::device_usable() {
        Ok(()) => true,
        Err(e) => {
            say(&format!(
                "SKIPPED: /dev/kvm is not usable here ({e}); the VMM cannot run a guest"
            ));
            false
        }
    }
}

/// A fresh temporary directory, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let path = std::env::temp_dir().join(unique_name(prefix));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Holds a cached build's integrity rules, as its recipe's `--check` reports them through
/// `check` (exit status 0: the cache would be used, 1: rebuilt; and its output): one flipped
/// byte in `corrupt` is a rebuild saying "corrupt", a missing `missing` is a rebuild, and so is
/// a missing SHA256SUMS. `copy` is a copy of a valid build, which this damages.
pub fn assert_cache_refuses_damage(
    copy: &std::path::Path,
    corrupt: &str,
    missing: &str,
    check: impl Fn() -> (i32, String),
) {
    let (code, text) = check();
    assert_eq!(code, 0, "an intact copy is used: {text}");
    let file = copy.join(corrupt);
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&file, &bytes).unwrap();
    let (code, text) = check();
    assert_eq!(code, 1, "a corrupt {corrupt} is rebuilt, not used: {text}");
    assert!(text.contains("corrupt"), "{text}");
    bytes[mid] ^= 0x01;
    std::fs::write(&file, &bytes).unwrap();
    assert_eq!(check().0, 0, "restored");
    std::fs::remove_file(copy.join(missing)).unwrap();
    let (code, text) = check();
    assert_eq!(code, 1, "a missing {missing} means a rebuild: {text}");
    std::fs::remove_file(copy.join("SHA256SUMS")).unwrap();
    assert_eq!(check().0, 1, "no checksums, no use");
}

/// A field of a `/proc/.../status` file (`Name:\tvalue`), trimmed; empty when absent.
pub fn status_field<'a>(status: &'a str, name: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .unwrap_or("")
        .trim()
}

/// Each thread of process `pid`: its name (empty if unreadable) and its `/proc` status text.
/// Empty once the process is gone.
pub fn thread_statuses(pid: u32) -> Vec<(String, String)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let status = std::fs::read_to_string(e.path().join("status")).ok()?;
            let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
            Some((comm.trim().to_string(), status))
        })
        .collect()
}

/// Each thread of process `pid`: its name and `Cpus_allowed_list` (as Linux writes CPU
/// lists: `0-3,8`).
pub fn thread_cpus(pid: u32) -> Vec<(String, String)> {
    thread_statuses(pid)
        .into_iter()
        .map(|(comm, status)| {
            let cpus = status_field(&status, "Cpus_allowed_list").to_string();
            (comm, cpus)
        })
        .collect()
}

/// Process `pid` has at least one datapath worker (`vring_worker`), each of which may run
/// on `workers` only, while every other thread keeps `others` (CPU lists as Linux writes
/// them); `log` is shown on failure.
pub fn assert_workers_on(pid: u32, workers: &str, others: &str, log: &dyn Fn() -> String) {
    let threads = thread_cpus(pid);
    assert!(
        threads.iter().any(|(name, _)| name == "vring_worker"),
        "no worker thread: {threads:?}\n{}",
        log()
    );
    for (name, cpus) in &threads {
        let want = if name == "vring_worker" {
            workers
        } else {
            others
        };
        assert_eq!(cpus, want, "{name}: {threads:?}\n{}", log());
    }
}

/// One request line on a control socket (`vmm --api`), and its reply line.
pub fn ctl_request(api: &std::path::Path, request: &str) -> String {
    use std::io::{BufRead, BufReader, Write};
    let mut s =
        std::os::unix::net::UnixStream::connect(api).expect("connect to the control socket");
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    s.write_all(format!("{request}\n").as_bytes()).unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    line
}

/// `RECIPE --check` (a build script under resources/, relative to the workspace) with its
/// cache at `cache`: (exit status, stdout and stderr).
/// Where the recipes cache their builds: `$VMM_CACHE_DIR`, else `$XDG_CACHE_HOME/vmm`, else
/// `~/.cache/vmm` (as the recipes decide).
pub fn cache_root() -> std::path::PathBuf {
    use std::path::PathBuf;
    if let Some(d) = std::env::var_os("VMM_CACHE_DIR") {
        return PathBuf::from(d);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache"));
    base.join("vmm")
}

/// The cached build `kind/key` of `recipe`, which must exist and pass the recipe's own
/// `--check` (the build the other tests use).
pub fn valid_cached_build(recipe: &str, kind: &str, key: &str) -> std::path::PathBuf {
    let real = cache_root().join(kind).join(key);
    assert!(
        real.join("SHA256SUMS").exists(),
        "{} has no cached build: run resources/setup.sh",
        real.display()
    );
    let (code, text) = recipe_check(recipe, &cache_root());
    assert_eq!(code, 0, "the real cache is valid: {text}");
    real
}

pub fn recipe_check(recipe: &str, cache: &std::path::Path) -> (i32, String) {
    let out = std::process::Command::new("bash")
        .arg(workspace_root().join(recipe))
        .arg("--check")
        .env("VMM_CACHE_DIR", cache)
        .output()
        .unwrap_or_else(|e| panic!("run {recipe} --check: {e}"));
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text += &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}
