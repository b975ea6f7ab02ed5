//! The test guest's virtio-net check (`vmtest.arp=`) against a reference device: QEMU's
//! modern-only virtio-net-pci (`disable-legacy=on`: 1af4:1041, BARs assigned by SeaBIOS, MSI-X
//! table in a BAR of its own), booted through PVH. The VMM's own virtio-net tests
//! (tests/tests/vmm_net.rs) trust this guest; these tests show its driver follows the spec on a
//! device we did not write, so a failure there points at the VMM, not the guest.
//!
//! QEMU comes from resources/setup.sh (qemu-system-x86); without it the tests say so and pass.
//! KVM when QEMU can use it, else TCG.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use vmm_test_guest::{ARP_REPLY, DONE, MSIX_RECEIVED};

const ARP_NO_REPLY: &str = "vmm-test-guest: net: no arp reply";
const NET_NO_DEVICE: &str = "vmm-test-guest: net: no virtio-net device";
const NET_MAC: &str = "vmm-test-guest: net: mac ";

const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const PEER_MAC: [u8; 6] = [0x0a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f];
const GUEST_IP: [u8; 4] = [10, 0, 0, 2];
const PEER_IP: [u8; 4] = [10, 0, 0, 1];
const ARGS: &str = "vmtest.arp=10.0.0.2,10.0.0.1";
/// Modern only: device ID 0x1041 (0x1000 + 1 for net), no I/O BAR.
const MODERN: &str = "disable-legacy=on";

fn qemu_available() -> bool {
    match Command::new("qemu-system-x86_64")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(s) if s.success() => true,
        r => {
            eprintln!(
                "skipping: qemu-system-x86_64 is not usable here ({r:?}); run resources/setup.sh"
            );
            false
        }
    }
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("vmm-guest-qemu-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Boots the ELF with `append` and a virtio-net-pci (with `props`) on netdev `netdev` (id n0);
/// returns QEMU's exit status (isa-debug-exit makes it `value << 1 | 1`) and the console.
fn boot(dir: &Path, append: &str, netdev: &str, props: &str) -> (i32, String) {
    let console = dir.join("console");
    let mut c = Command::new("qemu-system-x86_64");
    c.args([
        "-nodefaults",
        "-machine",
        "q35",
        "-accel",
        "kvm",
        "-accel",
        "tcg",
    ])
    .args([
        "-m",
        "64",
        "-display",
        "none",
        "-monitor",
        "none",
        "-no-reboot",
    ])
    .arg("-serial")
    .arg(format!("file:{}", console.display()))
    .args(["-kernel", vmm_test_guest::ELF_PATH, "-append", append])
    .args(["-netdev", netdev])
    .arg("-device")
    .arg(format!(
        "virtio-net-pci,netdev=n0,romfile=,mac=52:54:00:12:34:56,{props}"
    ))
    .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=1"])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let t = Instant::now();
    let mut child = c.spawn().expect("spawn qemu-system-x86_64");
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "QEMU still running after 120 s; console:\n{}",
                std::fs::read_to_string(&console).unwrap_or_default()
            );
        }
        thread::sleep(Duration::from_millis(20));
    };
    let text = std::fs::read_to_string(&console).unwrap_or_default();
    eprintln!("QEMU: {status} after {:?}\n{text}", t.elapsed());
    (status.code().unwrap_or(-1), text)
}

fn qemu_status(v: u8) -> i32 {
    (i32::from(v) << 1) | 1
}

fn arp(op: u16, sha: [u8; 6], spa: [u8; 4], tha: [u8; 6], tpa: [u8; 4], dst: [u8; 6]) -> Vec<u8> {
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&sha);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4]);
    f.extend_from_slice(&op.to_be_bytes());
    f.extend_from_slice(&sha);
    f.extend_from_slice(&spa);
    f.extend_from_slice(&tha);
    f.extend_from_slice(&tpa);
    f.resize(60, 0);
    f
}

/// What the guest must send: exactly the 60-byte broadcast request, zero padded.
fn assert_is_request(f: &[u8]) {
    let want = arp(1, GUEST_MAC, GUEST_IP, [0; 6], PEER_IP, [0xff; 6]);
    assert_eq!(f, &want[..], "request from the guest");
}

/// A peer on QEMU's dgram netdev: answers the `answer_on`-th ARP request (never if 0), after a
/// burst of frames the guest must ignore. Returns the ARP frames it received once `stop` is set.
fn peer(
    sock: UnixDatagram,
    qemu: PathBuf,
    answer_on: usize,
    stop: Arc<AtomicBool>,
) -> Vec<Vec<u8>> {
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    sock.set_write_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut requests = Vec::new();
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        let Ok(n) = sock.recv(&mut buf) else { continue };
        if n < 14 || buf[12..14] != [0x08, 0x06] {
            continue;
        }
        requests.push(buf[..n].to_vec());
        if requests.len() != answer_on {
            continue;
        }
        let mut noise = Vec::new();
        for _ in 0..12 {
            let mut f = vec![0x33, 0x33, 0, 0, 0, 1];
            f.extend_from_slice(&PEER_MAC);
            f.extend_from_slice(&[0x86, 0xdd]);
            f.resize(90, 0);
            noise.push(f);
        }
        noise.push(arp(
            2,
            PEER_MAC,
            [10, 0, 0, 9],
            GUEST_MAC,
            GUEST_IP,
            GUEST_MAC,
        )); // other IP
        noise.push(arp(
            2,
            PEER_MAC,
            PEER_IP,
            [2, 0, 0, 0, 0, 7],
            GUEST_IP,
            GUEST_MAC,
        )); // not us
        noise.push(arp(1, PEER_MAC, PEER_IP, GUEST_MAC, GUEST_IP, GUEST_MAC)); // a request
        noise.push(arp(2, PEER_MAC, PEER_IP, GUEST_MAC, GUEST_IP, GUEST_MAC)[..30].to_vec());
        for _ in 0..12 {
            let mut f = vec![0xff; 6];
            f.extend_from_slice(&PEER_MAC);
            f.extend_from_slice(&[0x08, 0x00]);
            f.resize(1400, 0);
            noise.push(f);
        }
        noise.push(arp(2, PEER_MAC, PEER_IP, GUEST_MAC, GUEST_IP, GUEST_MAC));
        for f in noise {
            sock.send_to(&f, &qemu).expect("send to QEMU");
        }
    }
    requests
}

fn boot_with_peer(name: &str, answer_on: usize, props: &str) -> (i32, String, Vec<Vec<u8>>) {
    let dir = TempDir::new(name);
    let (ours, theirs) = (dir.0.join("peer.sock"), dir.0.join("qemu.sock"));
    let sock = UnixDatagram::bind(&ours).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let t = {
        let (stop, theirs) = (stop.clone(), theirs.clone());
        thread::spawn(move || peer(sock, theirs, answer_on, stop))
    };
    let netdev = format!(
        "dgram,id=n0,local.type=unix,local.path={},remote.type=unix,remote.path={}",
        theirs.display(),
        ours.display()
    );
    let (status, text) = boot(&dir.0, ARGS, &netdev, props);
    stop.store(true, Ordering::Relaxed);
    let requests = t.join().unwrap();
    (status, text, requests)
}

#[test]
fn slirp_gateway_answers() {
    if !qemu_available() {
        return;
    }
    let dir = TempDir::new("slirp");
    let (status, text) = boot(
        &dir.0,
        "vmtest.arp=10.0.2.15,10.0.2.2",
        "user,id=n0",
        MODERN,
    );
    assert!(
        text.contains("vmm-test-guest: net: virtio-net at 00:"),
        "{text}"
    );
    assert!(
        text.contains(&format!("{NET_MAC}52:54:00:12:34:56\n")),
        "{text}"
    );
    // slirp's gateway MAC is 52:55 then its IPv4 address.
    assert!(
        text.contains(&format!("{ARP_REPLY}10.0.2.2 is-at 52:55:0a:00:02:02\n")),
        "{text}"
    );
    assert!(text.contains(MSIX_RECEIVED), "QEMU's MSI-X message: {text}");
    assert!(text.contains(DONE), "{text}");
    assert_eq!(status, qemu_status(vmm_test_guest::EXIT_SUCCESS), "{text}");
}

/// The first request goes unanswered; the second is answered after frames the guest must give
/// back to the device (more than its receive buffers, so the rings wrap).
#[test]
fn reply_after_noise_and_a_retry() {
    if !qemu_available() {
        return;
    }
    let (status, text, requests) = boot_with_peer("retry", 2, MODERN);
    assert_eq!(requests.len(), 2, "{text}");
    requests.iter().for_each(|r| assert_is_request(r));
    assert!(
        text.contains(&format!("{ARP_REPLY}10.0.0.1 is-at 0a:1b:2c:3d:4e:5f\n")),
        "{text}"
    );
    assert!(text.contains(MSIX_RECEIVED), "{text}");
    assert!(text.contains(DONE), "{text}");
    assert_eq!(status, qemu_status(vmm_test_guest::EXIT_SUCCESS), "{text}");
}

#[test]
fn silence_is_no_arp_reply_after_three_requests() {
    if !qemu_available() {
        return;
    }
    let (status, text, requests) = boot_with_peer("silent", 0, MODERN);
    assert_eq!(requests.len(), 3, "{text}");
    requests.iter().for_each(|r| assert_is_request(r));
    assert!(text.contains(ARP_NO_REPLY), "{text}");
    assert!(!text.contains(DONE), "{text}");
    assert_eq!(
        status,
        qemu_status(vmm_test_guest::EXIT_NET_FAILED),
        "{text}"
    );
}

/// A transitional (legacy-capable) virtio-net is 1af4:1000: not the device the check drives.
#[test]
fn transitional_device_is_not_used() {
    if !qemu_available() {
        return;
    }
    let dir = TempDir::new("legacy");
    let (status, text) = boot(
        &dir.0,
        ARGS,
        "user,id=n0",
        "disable-legacy=off,disable-modern=off",
    );
    assert!(text.contains(NET_NO_DEVICE), "{text}");
    assert_eq!(
        status,
        qemu_status(vmm_test_guest::EXIT_NET_FAILED),
        "{text}"
    );
}
