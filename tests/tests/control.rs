//! The control socket (`vmm --api PATH`, `vmm ctl`), first on the project's test guest kept up
//! with `vmtest.wait` (milliseconds per boot): every verb's reply, pause and resume, a reboot
//! that boots the VM again, halt, and hostile clients (junk, too long, gone mid-request, never
//! reading) that leave the VM unharmed. Then on the real-Linux tier, where the guest's own
//! drivers see what the verbs do: the link going down and up, a transport swapped from tap to
//! raw while the guest pings, a capture tshark decodes, magic SysRq on the console.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use vmm_tests::guest::{built, pvm_words, Guest};
use vmm_tests::netns::NetNs;
use vmm_tests::process::vmm_bin;
use vmm_tests::{kvm_usable, say, unique_subnet, TempDir};

/// A connection to the control socket.
struct Ctl {
    reader: BufReader<UnixStream>,
    stream: UnixStream,
}

impl Ctl {
    fn connect(path: &Path) -> Ctl {
        let deadline = Instant::now() + Duration::from_secs(30);
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) => {
                    assert!(Instant::now() < deadline, "{}: {e}", path.display());
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Ctl {
            reader: BufReader::new(stream.try_clone().unwrap()),
            stream,
        }
    }

    /// Sends raw bytes and reads one reply line.
    fn raw(&mut self, bytes: &[u8]) -> Value {
        self.stream.write_all(bytes).unwrap();
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("a reply line");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"))
    }

    fn ask(&mut self, request: &str) -> Value {
        self.raw(format!("{request}\n").as_bytes())
    }

    /// `ask`, which must succeed.
    fn ok(&mut self, request: &str) -> Value {
        let v = self.ask(request);
        assert_eq!(v["ok"], true, "{request}: {v}");
        v
    }

    /// `ask`, which must fail with an error containing `why`.
    fn err(&mut self, request: &str, why: &str) {
        let v = self.ask(request);
        assert_eq!(v["ok"], false, "{request}: {v}");
        let e = v["error"].as_str().unwrap_or_default();
        assert!(e.contains(why), "{request}: {e:?} lacks {why:?}");
    }
}

/// `vmm` booting the test guest, kept up, with one `user` NIC and the control socket.
fn test_guest(api: &Path) -> Guest {
    let mut cmd = Command::new(vmm_bin());
    cmd.arg("--kernel")
        .arg(vmm_test_guest::ELF_PATH)
        .args([
            "--cmdline",
            "console=ttyS0 vmtest.wait",
            "--mem",
            "64",
            "--cpus",
            "2",
        ])
        .args(["--net", "user", "--timeout", "120"])
        // `reboot` and `net swap` are refused once privileges are dropped.
        .arg("--keep-privileges")
        .arg("--api")
        .arg(api);
    Guest::command(cmd)
}

fn nic<'a>(info: &'a Value, name: &str) -> &'a Value {
    info["devices"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["name"] == name))
        .unwrap_or_else(|| panic!("no {name} in {info}"))
}

#[test]
fn control_verbs_on_the_test_guest() {
    if !kvm_usable() {
        return;
    }
    let dir = TempDir::new("ctl");
    let api = dir.path().join("api.sock");
    let mut guest = test_guest(&api);
    guest.expect(vmm_test_guest::WAITING, Duration::from_secs(30));
    let mode = std::fs::metadata(&api).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600,
        "the socket is the user's alone"
    );
    let mut c = Ctl::connect(&api);

    let info = c.ok("info");
    assert_eq!(info["vm"]["state"], "running", "{info}");
    assert_eq!(info["vm"]["cpus"], 2, "{info}");
    assert_eq!(info["vm"]["mem_mib"], 64, "{info}");
    let vec0 = nic(&info, "vec0");
    assert_eq!(vec0["link"], "up", "{info}");
    assert_eq!(vec0["stats"]["transport"], "user", "{info}");
    assert!(vec0["stats"]["counters"]["tx_packets"].is_u64(), "{info}");

    assert_eq!(c.ok("pause")["state"], "paused");
    assert_eq!(c.ok("info")["vm"]["state"], "paused");
    assert_eq!(c.ok("resume")["state"], "running");
    assert_eq!(c.ok("info")["vm"]["state"], "running");

    assert_eq!(c.ok("net link vec0 down")["changed"], true);
    assert_eq!(nic(&c.ok("info"), "vec0")["link"], "down");
    assert_eq!(c.ok("net link vec0 down")["changed"], false);
    c.ok("net link vec0 up");
    assert_eq!(nic(&c.ok("info"), "vec0")["link"], "up");

    let pcap = dir.path().join("idle.pcap");
    c.ok(&format!("net capture vec0 {} udp port 53", pcap.display()));
    c.err(
        &format!("net capture vec0 {} icmp", pcap.display()),
        "net capture vec0",
    );
    let stop = c.ok("net capture vec0 stop");
    assert_eq!(stop["counters"]["write_errors"], 0, "{stop}");
    assert_eq!(
        std::fs::read(&pcap).unwrap().get(..4),
        Some(&[0xd4, 0xc3, 0xb2, 0xa1][..]),
        "a pcap file, even without frames"
    );

    // Bad requests: answered, named, and the VM unharmed.
    c.err("frob", "verb 'frob': unknown");
    c.err(
        "net link vec7 down",
        "NIC 'vec7': no such NIC (the VM has vec0)",
    );
    c.err("net link vec0 sideways", "say up or down");
    c.err(
        "net swap vec0 transport=raw,ifname=vmm-no-such0",
        "vmm-no-such0",
    );
    c.err("net swap vec0 vec0:transport=nope", "nope");
    c.err("net capture vec0 /tmp/x.pcap tcp port", "net capture vec0");
    c.err("sysrq HELP", "sysrq HELP");
    // The user NIC has no BPF receive filter, and its spec did not say bpfflash=1.
    c.err(
        "net bpf vec0 /tmp/x.bpf",
        "net bpf vec0 /tmp/x.bpf: vec0: `bpfflash=1` not set on NIC vec0 (transport user)",
    );
    c.err("net bpf vec0", "net bpf: needs NIC and FILE");
    c.err("net bpf vec7 /tmp/x.bpf", "NIC 'vec7': no such NIC");
    c.err("info please", "takes no arguments");
    let v = c.raw(b"\xff\xfe junk\n");
    assert_eq!(v["ok"], false);
    assert!(v["error"].as_str().unwrap().contains("UTF-8"), "{v}");
    assert_eq!(nic(&c.ok("info"), "vec0")["stats"]["transport"], "user");

    // A request longer than the limit: an error, and the connection ends.
    let mut long = Ctl::connect(&api);
    let v = long.raw(&vec![b'x'; 5000]);
    assert!(v["error"].as_str().unwrap().contains("longer than"), "{v}");
    let mut rest = Vec::new();
    assert_eq!(long.reader.read_to_end(&mut rest).unwrap_or(0), 0);
    // Gone mid-request.
    let mut half = UnixStream::connect(&api).unwrap();
    half.write_all(b"net link ve").unwrap();
    drop(half);
    // A client that never reads its replies is dropped, not waited for.
    let mut deaf = UnixStream::connect(&api).unwrap();
    deaf.set_write_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let burst = "info\n".repeat(2000);
    for _ in 0..10 {
        if deaf.write_all(burst.as_bytes()).is_err() {
            break;
        }
    }
    // The server takes the deaf client's requests in its own time (our `info` may be answered
    // first): ask until it has dropped it, for a bounded while.
    let deadline = Instant::now() + Duration::from_secs(30);
    let info = loop {
        let info = c.ok("info");
        if info["control"]["dropped_slow_reader"].as_u64() >= Some(1) || Instant::now() > deadline {
            break info;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let control = &info["control"];
    assert!(control["dropped_too_long"].as_u64() >= Some(1), "{info}");
    assert!(control["dropped_slow_reader"].as_u64() >= Some(1), "{info}");
    assert_eq!(info["vm"]["state"], "running");

    // A reboot boots the same VM again; its socket comes back.
    assert_eq!(c.ok("reboot")["state"], "rebooting");
    drop(c);
    guest.expect("vmm: rebooting (control socket)", Duration::from_secs(30));
    guest.expect(vmm_test_guest::WAITING, Duration::from_secs(30));
    let mut c = Ctl::connect(&api);
    assert_eq!(c.ok("info")["control"]["connections"], 1, "a fresh socket");
    assert_eq!(c.ok("halt")["state"], "halting");
    let code = guest.wait_process(Duration::from_secs(30));
    let console = guest.console();
    assert_eq!(code, Some(130), "{console}");
    assert!(
        console.contains("vmm: halted through the control socket"),
        "{console}"
    );
    assert_eq!(
        console.matches(vmm_test_guest::BANNER).count(),
        2,
        "{console}"
    );
    assert!(!api.exists(), "the socket is removed when the VMM ends");
}

/// `--api` on a path that is taken: bad input, exit 2, one line.
#[test]
fn control_socket_paths_in_use_are_refused() {
    let dir = TempDir::new("ctlbad");
    let file = dir.path().join("file");
    std::fs::write(&file, "not a socket").unwrap();
    let live = dir.path().join("live.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&live).unwrap();
    for (path, why) in [
        (&file, "exists and is not a socket"),
        (&live, "another process"),
    ] {
        let out = Command::new(vmm_bin())
            .arg("--kernel")
            .arg(vmm_test_guest::ELF_PATH)
            .arg("--api")
            .arg(path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(err.contains(why), "{err}");
    }
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "not a socket");
    let out = Command::new(vmm_bin())
        .args(["ctl", "/nonexistent/api.sock", "info"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect"));
}

/// Boot to the end of the steps; PVM measured ~30-60 s to /init.
const BOOT_TIMEOUT: Duration = Duration::from_secs(400);
/// Pings of the step during which the transport is swapped.
const PINGS: u32 = 24;

/// `ip -n NS -s link show DEV`'s received packets.
fn rx_packets(ns: &NetNs, dev: &str) -> u64 {
    let (ok, out) = ns.run(
        "cat",
        &[&format!("/sys/class/net/{dev}/statistics/rx_packets")],
    );
    assert!(ok, "{out}");
    out.trim().parse().unwrap_or(0)
}

#[test]
fn control_verbs_seen_by_a_real_linux_guest() {
    vmm_tests::require_root();
    if !kvm_usable() {
        return;
    }
    // Under PVM the guest's busybox sometimes dies as it starts a step's `ping` (a static
    // binary reading a zero where its TLS initializer should be, `segfault at 0 ... in
    // busybox`): seen on 2026-12-03 at 1 in 6 to 6 in 8 runs on one machine, with this code
    // and with the code of 0652fc9 alike, and twice in a row in one CI run. The fault is a
    // TLS pointer read as zero through a valid FS base in a freshly exec'd process: the
    // instruction (0x4a4d02 in Debian's busybox-static 1.35) is glibc's `__ctype_init`
    // loading `__libc_tsd_LOCALE` at %fs:-0x90, which the TLS initializer should have set.
    // Its cause is not known. Not the host's DAMON `pageout` scheme, which unmaps idle
    // shmem such as guest RAM: with it off, 2 of 4 runs still crashed (2026-12-03). The
    // real-Linux tests, whose first step is the same `ping`, have not shown it. Only that
    // guest crash is run again, up to five tries in all (three in a row have not been seen,
    // two have, and a first try crashed 3 times in 5 on 2026-12-03); anything else fails at
    // once.
    const TRIES: usize = 5;
    for attempt in 1..=TRIES {
        let Err(cause) = std::panic::catch_unwind(control_verbs_once) else {
            return;
        };
        let text = cause
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| cause.downcast_ref::<&str>().copied())
            .unwrap_or("");
        let crash = text
            .lines()
            .find(|l| l.contains("segfault at ") && l.contains(" in busybox["));
        match crash {
            Some(line) if attempt < TRIES => say(&format!(
                "RETRY {attempt}/{}: the guest's busybox crashed ({line}); once more",
                TRIES - 1
            )),
            _ => std::panic::resume_unwind(cause),
        }
    }
}

fn control_verbs_once() {
    let (a, b) = unique_subnet();
    let (peer, guest_ip) = (format!("10.{a}.{b}.1"), format!("10.{a}.{b}.2"));
    // The VMM's namespace holds the tap (its host side is the peer) and one end of a veth pair
    // whose other end is a second peer, in its own namespace, with the same address and MAC:
    // after the swap from tap to raw, the guest's frames reach it, and only it can answer.
    let ns = NetNs::new();
    let tap = ns.tap(Some(&format!("{peer}/24")));
    let (far_end, raw_end) = ns.veth_pair(None);
    let far = NetNs::new();
    ns.ip(&["link", "set", &far_end, "netns", far.name()]);
    let (ok, mac) = ns.run("cat", &[&format!("/sys/class/net/{tap}/address")]);
    assert!(ok, "{mac}");
    far.ip(&["link", "set", &far_end, "address", mac.trim()]);
    far.ip(&["addr", "add", &format!("{peer}/24"), "dev", &far_end]);
    far.ip(&["link", "set", &far_end, "up"]);

    let dir = TempDir::new("ctllinux");
    let api = dir.path().join("api.sock");
    let pcap = dir.path().join("vec0.pcap");
    let cmdline = format!(
        "console=ttyS0 reboot=k panic=1 {} vmtest.ip={guest_ip}/24 \
         vmtest.steps=ping:{peer},carrier:0,carrier:1,pings:{peer}:{PINGS},carrier:0 \
         vmtest.exitport=0xf4",
        pvm_words()
    );
    let mut cmd = ns.command(vmm_bin().to_str().unwrap());
    cmd.arg("--kernel")
        .arg(built("linux/vmlinux"))
        .arg("--initrd")
        .arg(built("linux/initramfs.cpio"))
        .args(["--mem", "128", "--cmdline", &cmdline, "--timeout", "600"])
        .args(["--net", &format!("vec0:transport=tap,ifname={tap}")])
        .arg("--keep-privileges")
        .arg("--api")
        .arg(&api)
        .env("RUST_LOG", "warn");
    let mut guest = Guest::command(cmd);
    guest.expect("vmtest: /init started", BOOT_TIMEOUT);
    guest.expect("3 packets received", Duration::from_secs(180));
    let mut c = Ctl::connect(&api);

    // The capture starts before the link steps. It used to start as the guest forked its
    // first ping after "vmtest: carrier 1", where every busybox crash above had come (a
    // writer thread and a 256 KiB buffer mapped in the VMM meanwhile); started here, 2 local
    // runs of 2 had none, but the next CI run crashed once anyway (at 50.2 s): the capture's
    // timing is not the cause, or not the only one.
    c.ok(&format!("net capture vec0 {} icmp", pcap.display()));
    // The link, as the guest's driver sees it.
    c.ok("net link vec0 down");
    guest.expect("vmtest: carrier 0", Duration::from_secs(120));
    c.ok("net link vec0 up");
    guest.expect("vmtest: carrier 1", Duration::from_secs(120));

    // Swap tap -> raw while the guest pings (and the capture runs).
    guest.expect("seq=2 ", Duration::from_secs(120));
    let far_before = rx_packets(&far, &far_end);
    let swapped = c.ok(&format!("net swap vec0 transport=raw,ifname={raw_end}"));
    assert_eq!(swapped["transport"], "raw", "{swapped}");
    let line = guest.expect("vmtest: pings ", Duration::from_secs(120));
    let answered: u32 = line
        .split("vmtest: pings ")
        .nth(1)
        .and_then(|r| r.split(' ').nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        answered >= PINGS * 2 / 3,
        "{answered} of {PINGS} answered across the swap:\n{}",
        guest.console()
    );
    assert!(
        rx_packets(&far, &far_end) >= far_before + u64::from(PINGS / 3),
        "the raw side's peer got too little: the frames did not move to raw"
    );
    let stop = c.ok("net capture vec0 stop");
    assert_eq!(stop["counters"]["write_errors"], 0, "{stop}");
    let info = c.ok("info");
    let vec0 = nic(&info, "vec0");
    assert_eq!(vec0["stats"]["transport"], "raw", "{info}");
    assert_eq!(vec0["stats"]["counters"]["swaps"], 1, "{info}");

    // tshark decodes the capture: echo requests from the guest, replies from the peer.
    let out = Command::new("tshark")
        .arg("-r")
        .arg(&pcap)
        .args([
            "-T",
            "fields",
            "-e",
            "ip.src",
            "-e",
            "ip.dst",
            "-e",
            "icmp.type",
        ])
        .output()
        .expect("run tshark");
    let text = String::from_utf8_lossy(&out.stdout);
    let requests = text
        .lines()
        .filter(|l| *l == format!("{guest_ip}\t{peer}\t8"))
        .count();
    let replies = text
        .lines()
        .filter(|l| *l == format!("{peer}\t{guest_ip}\t0"))
        .count();
    assert!(
        requests >= (PINGS as usize) * 2 / 3 && replies >= (PINGS as usize) * 2 / 3,
        "{requests} requests, {replies} replies in the capture:\n{text}"
    );
    assert!(
        text.lines()
            .all(|l| l.ends_with("\t8") || l.ends_with("\t0")),
        "the icmp filter let other frames through:\n{text}"
    );

    // Magic SysRq through the console.
    c.ok("sysrq h");
    guest.expect("sysrq: HELP", Duration::from_secs(60));

    // The last step waits for the link to go down; then the guest reports all steps passed.
    c.ok("net link vec0 down");
    let code = guest.wait_process(Duration::from_secs(180));
    say(&guest.timeline(&[
        ("/init", "vmtest: /init started"),
        ("swap", "vmtest: pings "),
    ]));
    assert_eq!(code, Some(0), "{}", guest.console());
}
