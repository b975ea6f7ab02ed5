//! `vmm --net`: a KVM guest's virtio-net device (virtio-pci, MSI-X, ioeventfd) whose datapath
//! is the vhost-user backend, end to end.
//!
//! The guest is the project's test guest (resources/test-guest): with `vmtest.arp=OURS,PEER` on
//! its command line it drives the virtio-net device itself, broadcasts an ARP request for PEER
//! and waits for the reply. The peer is a real kernel: the other end of a veth, or a tap's host
//! side, in a namespace the test made. The test checks the VMM's exit status (the guest's), that
//! the MAC the guest got back is the peer interface's own, and that the rx queue's MSI-X message
//! (backend → irqfd → KVM GSI route) reached the guest's local APIC.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vmm_tests::netns::NetNs;
use vmm_tests::process::{net_backend, vmm_bin};
use vmm_tests::{unique_subnet, TempDir};

struct VmRun {
    code: Option<i32>,
    console: String,
    log: String,
}

/// Runs `vmm` in `ns` with `args`, killing it after `timeout`.
fn run_vmm(ns: &NetNs, args: &[&str], timeout: Duration) -> VmRun {
    let mut cmd: Command = ns.command(vmm_bin().to_str().unwrap());
    cmd.args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn vmm");
    let out = child.stdout.take().unwrap();
    let err = child.stderr.take().unwrap();
    let read_all = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = r.read_to_end(&mut s);
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let (out, err) = (read_all(Box::new(out)), read_all(Box::new(err)));
    let deadline = Instant::now() + timeout;
    let code = loop {
        if let Some(st) = child.try_wait().expect("wait vmm") {
            break st.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    VmRun {
        code,
        console: out.join().unwrap(),
        log: err.join().unwrap(),
    }
}

fn mac_of(ns: &NetNs, ifname: &str) -> String {
    let (ok, text) = ns.run("cat", &[&format!("/sys/class/net/{ifname}/address")]);
    assert!(ok, "{text}");
    text.trim().to_string()
}

/// Boots `kernel` with the ARP check against `peer_ip`, whose interface has `peer_mac`.
fn arp_through(
    ns: &NetNs,
    kernel: &str,
    extra: &[&str],
    net: &str,
    ours: &str,
    peer: &str,
) -> VmRun {
    let cmdline = format!("console=ttyS0 vmtest.arp={ours},{peer}");
    let mut args = vec![
        "--kernel",
        kernel,
        "--mem",
        "64",
        "--cmdline",
        &cmdline,
        "--net",
        net,
    ];
    args.extend_from_slice(extra);
    run_vmm(ns, &args, Duration::from_secs(60))
}

fn assert_arp_answered(run: &VmRun, peer_ip: &str, peer_mac: &str) {
    let ctx = format!("console:\n{}\nvmm log:\n{}", run.console, run.log);
    let expect = format!("{}{peer_ip} is-at {peer_mac}", vmm_test_guest::ARP_REPLY);
    assert!(run.console.contains(&expect), "no `{expect}`\n{ctx}");
    assert!(
        run.console.contains(vmm_test_guest::MSIX_RECEIVED),
        "the rx completion's MSI-X message did not reach the guest\n{ctx}"
    );
    assert_eq!(
        run.code,
        Some(i32::from(vmm_test_guest::EXIT_SUCCESS)),
        "exit status is the guest's\n{ctx}"
    );
    // The in-VMM backend logged its counters when the VM went away: the request went out,
    // the reply (at least) came in.
    for dir in ["rx", "tx"] {
        assert!(packets(&run.log, dir) >= 1, "backend {dir} count\n{ctx}");
    }
}

/// The packet counter `DIR N pkts` from the backend's (last) summary line, 0 if absent.
fn packets(log: &str, dir: &str) -> u64 {
    // The backend's summary line, logged when its frontend goes.
    let Some(line) = log.lines().rev().find(|l| l.contains(" pkts")) else {
        return 0;
    };
    let needle = format!("{dir} ");
    line.match_indices(&needle)
        .filter_map(|(i, _)| {
            let rest = &line[i + needle.len()..];
            let (n, tail) = rest.split_once(' ')?;
            tail.starts_with("pkts").then(|| n.parse().ok())?
        })
        .next()
        .unwrap_or(0)
}

/// A namespace with a veth pair on a fresh /24: the peer end has `.1`, the guest will be `.2`.
struct Lan {
    ns: NetNs,
    peer_ip: String,
    guest_ip: String,
    peer_if: String,
    ours_if: String,
}

impl Lan {
    fn veth() -> Lan {
        let ns = NetNs::new();
        let (a, b) = unique_subnet();
        let peer_ip = format!("10.{a}.{b}.1");
        let (peer_if, ours_if) = ns.veth_pair(Some(&format!("{peer_ip}/24")));
        Lan {
            ns,
            peer_ip,
            guest_ip: format!("10.{a}.{b}.2"),
            peer_if,
            ours_if,
        }
    }

    fn arp(&self, kernel: &str, net: &str, peer_ip: &str) -> VmRun {
        arp_through(&self.ns, kernel, &[], net, &self.guest_ip, peer_ip)
    }
}

#[test]
fn test_guest_arps_over_raw() {
    if !vmm_tests::kvm_usable() {
        return;
    }
    let lan = Lan::veth();
    let run = lan.arp(
        vmm_test_guest::ELF_PATH,
        &format!("vec0:transport=raw,ifname={}", lan.ours_if),
        &lan.peer_ip,
    );
    assert_arp_answered(&run, &lan.peer_ip, &mac_of(&lan.ns, &lan.peer_if));
}

/// The same over `xdp` on the veth: the guest's request leaves through the AF_XDP socket and
/// the answer comes back through the redirect program.
#[test]
fn test_guest_arps_over_xdp() {
    if !vmm_tests::kvm_usable() {
        return;
    }
    let lan = Lan::veth();
    let run = lan.arp(
        vmm_test_guest::ELF_PATH,
        &format!("vec0:transport=xdp,ifname={}", lan.ours_if),
        &lan.peer_ip,
    );
    assert_arp_answered(&run, &lan.peer_ip, &mac_of(&lan.ns, &lan.peer_if));
}

#[test]
fn test_guest_arps_over_tap_from_bzimage_with_two_cpus() {
    if !vmm_tests::kvm_usable() {
        return;
    }
    let ns = NetNs::new();
    let (a, b) = unique_subnet();
    let peer = format!("10.{a}.{b}.1");
    let tap = ns.tap(Some(&format!("{peer}/24")));
    let run = arp_through(
        &ns,
        vmm_test_guest::BZIMAGE_PATH,
        &["--cpus", "2"],
        &format!("vec0:transport=tap,ifname={tap}"),
        &format!("10.{a}.{b}.2"),
        &peer,
    );
    assert_arp_answered(&run, &peer, &mac_of(&ns, &tap));
    assert!(run.console.contains("APs started: 1"), "{}", run.console);
}

/// The same device against an external backend: `vmm net-backend` in another process.
#[test]
fn test_guest_arps_through_an_external_backend() {
    if !vmm_tests::kvm_usable() {
        return;
    }
    let lan = Lan::veth();
    let dir = TempDir::new("vnb");
    let sock = dir.path().join("vec0.sock");
    let mut backend = net_backend(
        Some(lan.ns.name()),
        &sock,
        &format!("vec0:transport=raw,ifname={}", lan.ours_if),
        dir.path().join("backend.log"),
    );
    let run = lan.arp(
        vmm_test_guest::ELF_PATH,
        &format!("vhost-user,socket={}", sock.display()),
        &lan.peer_ip,
    );
    let expect = format!(
        "{}{} is-at {}",
        vmm_test_guest::ARP_REPLY,
        lan.peer_ip,
        mac_of(&lan.ns, &lan.peer_if)
    );
    assert!(
        run.console.contains(&expect),
        "no `{expect}`\nconsole:\n{}\nvmm log:\n{}\nbackend log:\n{}",
        run.console,
        run.log,
        backend.log()
    );
    assert!(
        run.console.contains(vmm_test_guest::MSIX_RECEIVED),
        "{}",
        run.console
    );
    assert_eq!(run.code, Some(i32::from(vmm_test_guest::EXIT_SUCCESS)));
    assert!(backend.running(), "the backend outlives its frontend");
}

/// A guest that asks for an address nobody has: no reply, and the VMM reports the guest's
/// failure status rather than success.
#[test]
fn unanswered_arp_is_the_guests_failure() {
    if !vmm_tests::kvm_usable() {
        return;
    }
    let lan = Lan::veth();
    let nobody = format!("{}.99", lan.peer_ip.strip_suffix(".1").unwrap());
    let run = lan.arp(
        vmm_test_guest::ELF_PATH,
        &format!("vec0:transport=raw,ifname={}", lan.ours_if),
        &nobody,
    );
    assert!(
        run.console.contains("net: no arp reply"),
        "{}\n{}",
        run.console,
        run.log
    );
    assert_eq!(run.code, Some(i32::from(vmm_test_guest::EXIT_NET_FAILED)));
}

/// Says why a test is skipped where CI's log shows it (the harness captures `eprintln!`).
fn skip(why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED {why}");
}

/// Debian's cloud kernel on `vmm --net raw`: its virtio_pci and virtio_net drivers bring the
/// device up and the guest pings the peer. Needs hardware KVM: on PVM a stock kernel is
/// emulated at ~1 MIPS and cannot boot in useful time.
#[test]
fn stock_kernel_pings_over_raw() {
    if vmm_vmm::kvm::is_pvm() {
        skip(
            "stock-kernel ping over raw: KVM here is PVM (/sys/module/kvm_pvm), which emulates \
             ordinary guests at ~1 MIPS; this test runs where KVM is VT-x/AMD-V",
        );
        return;
    }
    if !vmm_tests::kvm_usable() {
        return;
    }
    let stock = vmm_tests::workspace_root().join("resources/out/stock");
    let (kernel, initrd) = (stock.join("vmlinuz"), stock.join("initramfs.cpio.gz"));
    if !kernel.exists() || !initrd.exists() {
        skip("stock-kernel ping over raw: no stock guest; run resources/setup.sh");
        return;
    }
    let lan = Lan::veth();
    let cmdline = format!(
        "console=ttyS0 reboot=k panic=1 vmtest.ip={}/24 vmtest.cmd=ping,-c,3,-W,5,{} \
         vmtest.exitport=0xf4",
        lan.guest_ip, lan.peer_ip
    );
    let net = format!("vec0:transport=raw,ifname={}", lan.ours_if);
    let run = run_vmm(
        &lan.ns,
        &[
            "--kernel",
            kernel.to_str().unwrap(),
            "--initrd",
            initrd.to_str().unwrap(),
            "--mem",
            "512",
            "--cpus",
            "2",
            "--cmdline",
            &cmdline,
            "--net",
            &net,
        ],
        Duration::from_secs(300),
    );
    let ctx = format!("console:\n{}\nvmm log:\n{}", run.console, run.log);
    assert!(run.console.contains("3 packets received"), "{ctx}");
    assert_eq!(run.code, Some(0), "the guest's ping status\n{ctx}");
}
