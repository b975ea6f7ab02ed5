//! The real-Linux tier: Linux 6.1 built for PVM (resources/kernel) with a busybox initramfs
//! (resources/images/linux-guest.sh) boots on `vmm`, and its own drivers prove the VMM's
//! devices: virtio-pci with MSI-X, virtio-net over `raw`, `tap`, `gre` with software
//! offloads and an external `vmm net-backend`, SMP bring-up.
//!
//! A boot costs one to two minutes on this project's PVM machines (the kernel is emulated at
//! ~1 MIPS), so each boot does as much as it can: the guest pings the peer, the peer pings the
//! guest, a file crosses host -> guest (the guest prints its md5) and back guest -> host
//! (compared byte for byte), and the guest counts its CPUs. Each test prints the boot's
//! timeline where CI's log shows it.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use vmm_tests::guest::{built, md5_hex, pvm_words, test_bytes, Guest};
use vmm_tests::netns::NetNs;
use vmm_tests::process::{net_backend, vmm_bin};
use vmm_tests::{unique_subnet, TempDir};

/// Boot to the end of the test steps; PVM measured ~60-90 s to /init.
const BOOT_TIMEOUT: Duration = Duration::from_secs(400);
/// The MAC given with `mac=` to an external backend's NIC.
const GIVEN_MAC: &str = "52:54:00:c0:ff:ee";
/// Size of the file sent both ways: every byte value, incompressible.
const FILE_LEN: usize = 96 * 1024;

fn vmlinux() -> PathBuf {
    built("linux/vmlinux")
}

fn initramfs() -> PathBuf {
    built("linux/initramfs.cpio")
}

/// A subnet in a fresh namespace: the peer (host side) has `.1`, the guest `.2`.
struct Lan {
    ns: NetNs,
    peer_ip: String,
    guest_ip: String,
}

impl Lan {
    /// A new LAN, if this machine can run the guest (`kvm_usable` says why not).
    fn if_kvm() -> Option<Lan> {
        vmm_tests::kvm_usable().then(Lan::new)
    }

    fn new() -> Lan {
        let (a, b) = unique_subnet();
        Lan {
            ns: NetNs::new(),
            peer_ip: format!("10.{a}.{b}.1"),
            guest_ip: format!("10.{a}.{b}.2"),
        }
    }

    /// A veth pair: the peer end gets the peer's address; returns the guest's end.
    fn veth(&self) -> String {
        self.ns.veth_pair(Some(&format!("{}/24", self.peer_ip))).1
    }

    /// A tap whose host side has the peer's address.
    fn tap(&self) -> String {
        self.ns.tap(Some(&format!("{}/24", self.peer_ip)))
    }

    /// `vmm` in the namespace booting the real-Linux guest: `kernel`, the initramfs, `cpus`,
    /// `cmdline`, one `--net`.
    fn boot(&self, kernel: &std::path::Path, cpus: u8, cmdline: &str, net: &str) -> Guest {
        let mut cmd = self.ns.command(vmm_bin().to_str().unwrap());
        cmd.arg("--kernel")
            .arg(kernel)
            .arg("--initrd")
            .arg(initramfs())
            .args(["--mem", "128", "--cpus", &cpus.to_string()])
            .args(["--cmdline", cmdline, "--net", net])
            .env("RUST_LOG", "warn,vmm_net=info,vmm_devices::vhost_user=info");
        Guest::command(cmd)
    }

    /// A TCP listener on the peer's address inside the namespace, on a free port.
    fn listen(&self) -> (TcpListener, u16) {
        let addr = format!("{}:0", self.peer_ip);
        let l = self
            .ns
            .enter(|| TcpListener::bind(&addr))
            .unwrap_or_else(|e| panic!("listen on {addr}: {e}"));
        let port = l.local_addr().unwrap().port();
        l.set_nonblocking(true).unwrap();
        (l, port)
    }
}

/// Accepts one connection on a non-blocking listener within `timeout`.
fn accept(l: &TcpListener, timeout: Duration, what: &str, guest: &Guest) -> TcpStream {
    let deadline = Instant::now() + timeout;
    loop {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(timeout)).unwrap();
                s.set_write_timeout(Some(timeout)).unwrap();
                return s;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("accept ({what}): {e}"),
        }
        assert!(
            Instant::now() < deadline,
            "the guest did not connect ({what}) in {timeout:?}; console:\n{}",
            guest.console()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The peer's half of the guest's `get` and `put` steps: serves `file` on `get_l`, then takes
/// back what the guest sends on `put_l`.
fn serve_and_take_back(
    file: &[u8],
    get_l: &TcpListener,
    put_l: &TcpListener,
    guest: &Guest,
) -> Vec<u8> {
    let mut s = accept(get_l, Duration::from_secs(180), "get", guest);
    s.write_all(file).expect("send the file to the guest");
    drop(s);
    let mut s = accept(put_l, Duration::from_secs(180), "put", guest);
    let mut back = Vec::new();
    s.read_to_end(&mut back)
        .expect("receive the file from the guest");
    back
}

/// How the guest's virtio-net device reaches the peer.
enum Net {
    /// `--net SPEC` with the backend in the VMM.
    InVmm(String),
    /// `--net vhost-user,socket=...` to a `vmm net-backend` process serving SPEC.
    External(String, Option<&'static str>),
}

struct Run {
    guest: Guest,
    code: Option<i32>,
    backend_log: String,
}

impl Run {
    fn context(&self) -> String {
        let mut s = format!("console and vmm log:\n{}", self.guest.console());
        if !self.backend_log.is_empty() {
            s += &format!("\nbackend log:\n{}", self.backend_log);
        }
        s
    }
}

/// Boots the real-Linux guest with `cpus` vCPUs on `net` inside `lan`'s namespace and plays the
/// peer's half of the test steps: pings the guest once its interface is up, serves it a file,
/// takes the file back and compares it. Returns after the VMM has exited.
fn boot_and_exchange(lan: &Lan, kernel: PathBuf, net: Net, cpus: u8, title: &str) -> Run {
    let dir = TempDir::new("rl");
    let mut backend = None;
    let net_arg = match &net {
        Net::InVmm(spec) => spec.clone(),
        Net::External(spec, mac) => {
            let sock = dir.path().join("vec0.sock");
            backend = Some(net_backend(
                Some(lan.ns.name()),
                &sock,
                spec,
                dir.path().join("backend.log"),
            ));
            let mac = mac.map(|m| format!(",mac={m}")).unwrap_or_default();
            format!("vhost-user,socket={}{mac}", sock.display())
        }
    };
    let (get_l, get_port) = lan.listen();
    let (put_l, put_port) = lan.listen();
    let peer = &lan.peer_ip;
    let cmdline = format!(
        "console=ttyS0 reboot=k panic=1 {} vmtest.ip={}/24 \
         vmtest.steps=ping:{peer},get:{peer}:{get_port},put:{peer}:{put_port},cpus:{cpus} \
         vmtest.exitport=0xf4",
        pvm_words(),
        lan.guest_ip
    );
    let mut guest = lan.boot(&kernel, cpus, &cmdline, &net_arg);

    guest.expect("vmtest: /init started", BOOT_TIMEOUT);
    guest.expect("vmtest: eth0 up", Duration::from_secs(120));
    let (ok, text) = lan.ns.run("ping", &["-c", "3", "-W", "10", &lan.guest_ip]);
    assert!(
        ok && text.contains(" 3 received"),
        "the peer's ping of the guest:\n{text}\nconsole:\n{}",
        guest.console()
    );

    let file = test_bytes(FILE_LEN, 0x9e37_79b9_7f4a_7c15 ^ u64::from(get_port));
    let back = serve_and_take_back(&file, &get_l, &put_l, &guest);

    let code = guest.wait_process(Duration::from_secs(180));
    let backend_log = backend
        .as_mut()
        .map(|b| {
            b.terminate(Duration::from_secs(5));
            b.log()
        })
        .unwrap_or_default();
    let run = Run {
        guest,
        code,
        backend_log,
    };
    vmm_tests::say(&format!(
        "{title}: timeline (host wall clock from vmm's start)\n{}",
        run.guest.timeline(&[
            ("console up (kernel banner)", "Linux version"),
            ("virtio-pci device enabled", "virtio-pci 0000:"),
            ("/init started", "vmtest: /init started"),
            ("eth0 up (address set)", "vmtest: eth0 up"),
            ("test steps done", "VMTEST-EXIT="),
        ])
    ));

    let ctx = run.context();
    let want = format!(
        "vmtest: get {peer}:{get_port}: {FILE_LEN} bytes, md5 {}",
        md5_hex(&file)
    );
    assert!(
        run.guest.console().contains(&want),
        "host -> guest: no `{want}`\n{ctx}"
    );
    assert!(
        back == file,
        "guest -> host: {} bytes came back, {} differ from what was sent\n{ctx}",
        back.len(),
        back.iter().zip(&file).filter(|(a, b)| a != b).count() + back.len().abs_diff(file.len())
    );
    for step in ["ping", "get", "put", "cpus"] {
        assert!(
            run.guest
                .console()
                .contains(&format!("vmtest: step {step}:")),
            "step {step} did not run\n{ctx}"
        );
    }
    assert!(
        run.guest
            .console()
            .contains(&format!("vmtest: cpus: {cpus} online")),
        "the guest does not see {cpus} CPUs\n{ctx}"
    );
    assert_eq!(run.code, Some(0), "the guest's status through vmm\n{ctx}");
    run
}

/// Two vCPUs over `raw` on a veth with two queue pairs (`queues=2`), the backend in the VMM:
/// Linux's virtio-net takes MQ, asks for both pairs through the VMM's control queue, and the
/// backend's second pair is served (its socket joins the fanout group's spread). Under PVM this
/// also proves the hypercall-based PV features are hidden (with PV_SEND_IPI the second CPU's
/// bring-up hung in a `vmcall`) and shows the CPUID read-back warning.
#[test]
fn linux_two_cpus_over_raw() {
    let Some(lan) = Lan::if_kvm() else {
        return;
    };
    let ifname = lan.veth();
    let run = boot_and_exchange(
        &lan,
        vmlinux(),
        Net::InVmm(format!("vec0:transport=raw,ifname={ifname},queues=2")),
        2,
        "real Linux, 2 vCPUs, raw, 2 queue pairs",
    );
    for line in [
        "raw: pair 1 of 2",
        "virtio-net: the guest runs 2 queue pairs",
        "raw: queue pair 1 served",
    ] {
        assert!(
            run.guest.console().contains(line),
            "no `{line}`\n{}",
            run.context()
        );
    }
    if vmm_vmm::kvm::is_pvm() {
        assert!(
            run.guest
                .console()
                .contains("KVM accepted the CPUID table but reports another one back"),
            "no CPUID read-back warning on PVM\n{}",
            run.context()
        );
    }
}

/// One vCPU over `xdp` on a veth with `gro=1`, the backend in the VMM: the peer's frames
/// reach the guest through our redirect program and AF_XDP socket, the guest's leave through
/// the socket's UMEM straight to the driver. No header crosses AF_XDP, so the guest is offered
/// TSO and GRO that the backend does in software, as on a tunnel: the files cross both ways
/// as the guest's 64 KiB TSO frames segmented and the host's segments merged.
#[test]
fn linux_over_xdp_with_offloads() {
    let Some(lan) = Lan::if_kvm() else {
        return;
    };
    let ifname = lan.veth();
    let run = boot_and_exchange(
        &lan,
        vmlinux(),
        Net::InVmm(format!("vec0:transport=xdp,ifname={ifname},gro=1")),
        1,
        "real Linux, xdp with offloads",
    );
    let line = format!("xdp: {ifname} queue 0, native hook");
    assert!(
        run.guest.console().contains(&line),
        "no `{line}`\n{}",
        run.context()
    );
}

/// One vCPU over `tap` with `gro=1`, the backend in the VMM, booted from the bzImage (64-bit
/// boot protocol, the decompressor emulated too: LZ4 keeps that to seconds) where the others
/// boot the ELF through PVH. The host's TCP hands the tap GSO frames, which the backend reads
/// straight into the guest's buffers: the NIC's counters (logged as it goes) must say so.
#[test]
fn linux_over_tap() {
    let Some(lan) = Lan::if_kvm() else {
        return;
    };
    let tap = lan.tap();
    let run = boot_and_exchange(
        &lan,
        built("linux/bzImage"),
        Net::InVmm(format!("vec0:transport=tap,ifname={tap},gro=1")),
        1,
        "real Linux from its bzImage, tap with offloads",
    );
    let console = run.guest.console();
    let direct = nic_counter(&console, " merged, ");
    vmm_tests::say(&format!(
        "tap: {direct} frames were received straight into the guest's buffers"
    ));
    assert!(
        direct > 0,
        "no frame was received straight into the guest's buffers\n{}",
        run.context()
    );
}

/// The number right after `label` on the NIC's summary lines, logged as it goes ("vec0: rx N
/// pkts B bytes (M merged, D direct), tx T pkts ..."), the largest seen; 0 if none.
fn nic_counter(console: &str, label: &str) -> u64 {
    console
        .lines()
        .filter(|l| l.contains(" direct), tx "))
        .filter_map(|l| {
            let rest = &l[l.find(label)? + label.len()..];
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .max()
        .unwrap_or(0)
}

/// Offloads over a tunnel, with a real guest: its NIC is gre with `gro=1` (in the VMM), so
/// it is offered TSO and GRO that the backend does in software. The tunnel's far end is
/// bridged by this test to a tap that has the peer's address. The files cross both ways
/// intact, host to guest over segments the backend merged into GSO frames, which the guest's
/// own virtio-net driver accepted: the VMM's counters (logged as the NIC goes) say how many
/// were merged.
#[test]
fn linux_over_gre_with_offloads_both_ways() {
    let Some(lan) = Lan::if_kvm() else {
        return;
    };
    lan.ns.ip(&["link", "set", "lo", "up"]);
    lan.ns.ip(&["addr", "add", "127.0.0.2/8", "dev", "lo"]);
    let tap = lan.tap();
    let bridge = Bridge::start(
        &lan.ns,
        "vec0:transport=gre,src=127.0.0.2,dst=127.0.0.1",
        &format!("vec0:transport=tap,ifname={tap}"),
    );
    let run = boot_and_exchange(
        &lan,
        vmlinux(),
        Net::InVmm("vec0:transport=gre,src=127.0.0.1,dst=127.0.0.2,gro=1".into()),
        1,
        "real Linux, gre with software TSO and GRO",
    );
    // Whether the guest's TCP hands over TSO frames depends on its pacing (at PVM's speed it
    // rarely has a burst to hand over): reported, not required. Merging is required: the
    // host's TCP sends its window in bursts, which arrive together.
    let (from_tunnel, _) = bridge.stop();
    let console = run.guest.console();
    let counter = |label: &str| nic_counter(&console, label);
    let merged = counter(" bytes (");
    // The last negotiation is the driver's (the VMM's own comes first, before the guest's).
    let took = console
        .lines()
        .rev()
        .find_map(|l| l.split("the guest took offloads: ").nth(1))
        .unwrap_or("(not logged)")
        .to_string();
    let sent = counter(" direct), tx ");
    vmm_tests::say(&format!(
        "gre: the guest took {took}; it sent {sent} frames, {from_tunnel} left the tunnel; \
         {merged} received segments were merged into the guest's frames"
    ));
    assert!(
        took.split(' ').any(|o| o == "GUEST_TSO4"),
        "the guest did not take GUEST_TSO4 ({took})\n{}",
        run.context()
    );
    assert!(
        merged > 0,
        "no segment was merged (software GRO)\n{}",
        run.context()
    );
}

/// Moves frames both ways between two transports opened in a namespace (here the far end
/// of a gre tunnel and a tap), stripping and adding the tap's `virtio_net_hdr`.
struct Bridge {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<(u64, u64)>,
}

impl Bridge {
    /// `bare` carries Ethernet frames, `tap` frames behind a 10-byte `virtio_net_hdr`.
    fn start(ns: &NetNs, bare: &str, tap: &str) -> Bridge {
        use vmm_net::config::parse_spec;
        use vmm_net::transport;
        let open = |spec: &str| {
            ns.enter(|| transport::open(&parse_spec(spec).expect("spec")))
                .unwrap_or_else(|e| panic!("{spec}: {e}"))
        };
        let (mut a, mut b) = (open(bare), open(tap));
        assert_eq!((a.vnet_hdr_len(), b.vnet_hdr_len()), (0, 10));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            use std::sync::atomic::Ordering;
            let mut inb = transport::PacketBatch::new(64, 65_600);
            let mut out = transport::PacketBatch::new(64, 65_600);
            let (mut from_a, mut from_b) = (0u64, 0u64);
            while !flag.load(Ordering::Relaxed) {
                let mut fds = [
                    libc::pollfd {
                        fd: a.rx_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    },
                    libc::pollfd {
                        fd: b.rx_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    },
                ];
                // SAFETY: `fds` is a live array of two pollfds.
                unsafe { libc::poll(fds.as_mut_ptr(), 2, 50) };
                // gre -> tap: a zero header in front.
                let n = a.recv(&mut inb).expect("bridge: receive from the tunnel");
                out.clear();
                for p in &inb.packets()[..n] {
                    let o = out.next_free().expect("room");
                    o.space()[..10].fill(0);
                    o.space()[10..10 + p.len()].copy_from_slice(p.data());
                    o.set_len(10 + p.len());
                    out.commit();
                }
                from_a += n as u64;
                let _ = b.send(&out);
                // tap -> gre: the header off (the tap has no offloads: it is all zero).
                let n = b.recv(&mut inb).expect("bridge: receive from the tap");
                out.clear();
                for p in &inb.packets()[..n] {
                    let o = out.next_free().expect("room");
                    let f = &p.data()[10..];
                    o.space()[..f.len()].copy_from_slice(f);
                    o.set_len(f.len());
                    out.commit();
                }
                from_b += n as u64;
                let _ = a.send(&out);
            }
            (from_a, from_b)
        });
        Bridge { stop, thread }
    }

    /// Stops the bridge; how many frames it moved from the bare side and from the tap.
    fn stop(self) -> (u64, u64) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().expect("bridge thread")
    }
}

/// One vCPU through `--net vhost-user,socket=...,mac=` to a `vmm net-backend` process on `raw`:
/// the guest's NIC has the MAC the VMM was given, not the backend's.
#[test]
fn linux_through_an_external_backend() {
    let Some(lan) = Lan::if_kvm() else {
        return;
    };
    let ifname = lan.veth();
    let run = boot_and_exchange(
        &lan,
        vmlinux(),
        Net::External(
            format!("vec0:transport=raw,ifname={ifname}"),
            Some(GIVEN_MAC),
        ),
        1,
        "real Linux, external net-backend on raw",
    );
    let (_, neigh) = lan.ns.run("ip", &["neigh", "show", &lan.guest_ip]);
    assert!(
        neigh.contains(GIVEN_MAC),
        "the peer knows the guest by {GIVEN_MAC}: `{neigh}`\n{}",
        run.context()
    );
    assert!(
        run.backend_log.contains("frontend gone"),
        "the backend served the VMM and saw it go\n{}",
        run.context()
    );
}

/// `--net vhost-user,socket=` survives its backend: `vmm net-backend` is killed mid-run and a
/// new one started on the same socket. The guest sees its link go down and come back up (a
/// configuration interrupt each time), keeps its NIC, and frames flow again: a second ping,
/// then a file both ways byte-exact.
#[test]
fn linux_nic_survives_its_backend_restarting() {
    let Some(lan) = Lan::if_kvm() else {
        return;
    };
    let ifname = lan.veth();
    let spec = format!("vec0:transport=raw,ifname={ifname}");
    let dir = TempDir::new("rc");
    let sock = dir.path().join("vec0.sock");
    let first = net_backend(
        Some(lan.ns.name()),
        &sock,
        &spec,
        dir.path().join("first.log"),
    );
    let (get_l, get_port) = lan.listen();
    let (put_l, put_port) = lan.listen();
    let peer = &lan.peer_ip;
    let cmdline = format!(
        "console=ttyS0 reboot=k panic=1 {} vmtest.ip={}/24 \
         vmtest.steps=ping:{peer},carrier:0,carrier:1,ping:{peer},get:{peer}:{get_port},put:{peer}:{put_port} \
         vmtest.exitport=0xf4",
        pvm_words(),
        lan.guest_ip
    );
    let mut guest = lan.boot(
        &vmlinux(),
        1,
        &cmdline,
        &format!("vhost-user,socket={}", sock.display()),
    );

    guest.expect(&format!("vmtest: step ping:{peer}: ok"), BOOT_TIMEOUT);
    // A crash, not a clean stop.
    // SAFETY: kill(2) on the backend's pid, our child, not yet reaped.
    unsafe { libc::kill(first.pid() as libc::pid_t, libc::SIGKILL) };
    drop(first);
    guest.expect("vmtest: carrier 0", Duration::from_secs(150));
    let second = net_backend(
        Some(lan.ns.name()),
        &sock,
        &spec,
        dir.path().join("second.log"),
    );
    guest.expect("vmtest: carrier 1", Duration::from_secs(150));

    let file = test_bytes(FILE_LEN, 0x5bd1_e995 ^ u64::from(put_port));
    let back = serve_and_take_back(&file, &get_l, &put_l, &guest);
    let code = guest.wait_process(Duration::from_secs(180));
    let console = guest.console();
    let ctx = format!("{console}\nsecond backend:\n{}", second.log());
    assert_eq!(
        console
            .matches(&format!("vmtest: step ping:{peer}: ok"))
            .count(),
        2,
        "a ping before and after\n{ctx}"
    );
    assert!(console.contains("went away: link down"), "{ctx}");
    assert!(console.contains("link up"), "{ctx}");
    assert!(back == file, "the file came back byte-exact\n{ctx}");
    assert_eq!(code, Some(0), "{ctx}");
    vmm_tests::say(&format!(
        "backend restart: timeline\n{}",
        guest.timeline(&[
            ("first ping done", &format!("vmtest: step ping:{peer}: ok")),
            ("link down seen by the guest", "vmtest: carrier 0"),
            ("link up seen by the guest", "vmtest: carrier 1"),
            ("test steps done", "VMTEST-EXIT="),
        ])
    ));
}
