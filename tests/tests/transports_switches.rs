//! The legacy switch and capture transports against their real peers:
//!
//! - `daemon`: ports on a real `uml_switch` (uml-utilities): two of ours exchange frames
//!   byte-exact; a UML guest on UML's own `daemon` transport and a UML guest on our backend
//!   ping each other through the switch.
//! - `vde`: the same against a real `vde_switch` (vde2), in the legacy and the vector form
//!   (`vecN:transport=vde,vnl=vde:///DIR`).
//! - `pcap`: on a veth in a test-made namespace, frames the filter passes arrive byte-exact,
//!   frames it rejects do not; transmit is refused and counted; a bad filter expression is
//!   refused with an error naming it.
//!
//! Switches run in per-test temporary directories; interfaces only in test-made namespaces.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vmm_net::config::parse_spec;
use vmm_net::transport::{self, PacketBatch, Transport};
use vmm_tests::batch::{batch_of, recv_kept};
use vmm_tests::guest::{Guest, GuestConfig, GuestNet};
use vmm_tests::netns::NetNs;
use vmm_tests::peer::{is_test_frame, test_frame, wait_readable, wait_writable, PacketPeer};
use vmm_tests::process::net_backend;
use vmm_tests::{require_root, unique_subnet, TempDir};

const A: [u8; 6] = [0x02, 0, 0, 0, 0x5a, 0x01];
const B: [u8; 6] = [0x02, 0, 0, 0, 0x5a, 0x02];
const BUF: usize = 2048;

/// A switch process with its stdin held open (vde_switch exits when stdin closes), killed
/// and reaped on drop, also when the test panics.
struct Switch {
    child: Child,
    log: PathBuf,
}

impl Switch {
    /// Runs `program args` with stdin a pipe we keep, output to `dir/NAME.log`, and waits for
    /// `ready` (the control socket) to appear.
    fn start(program: &str, args: &[&str], dir: &Path, ready: &Path) -> Switch {
        let log = dir.join(format!("{program}.log"));
        let file = std::fs::File::create(&log).expect("create switch log");
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(file.try_clone().expect("dup log"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {program}: {e} (run resources/setup.sh)"));
        let pid = child.id();
        let mut s = Switch { child, log };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ready.exists() || !vmm_tests::process::unix_socket_ready(pid, ready) {
            assert!(
                matches!(s.child.try_wait(), Ok(None)),
                "{program} exited before creating {}:\n{}",
                ready.display(),
                s.log()
            );
            assert!(
                Instant::now() < deadline,
                "{program} did not create {}:\n{}",
                ready.display(),
                s.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        s
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills the switch and waits for it to exit.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `uml_switch -unix DIR/ctl` (switch mode: it learns MACs, floods unknown destinations).
fn uml_switch(dir: &TempDir) -> (Switch, PathBuf) {
    require_root();
    let ctl = dir.path().join("ctl");
    let ctl_s = ctl.to_str().expect("utf-8 path");
    (
        Switch::start("uml_switch", &["-unix", ctl_s], dir.path(), &ctl),
        ctl,
    )
}

/// `vde_switch -s DIR/sw -M DIR/mgmt`.
fn vde_switch(dir: &TempDir) -> (Switch, PathBuf) {
    require_root();
    let sw = dir.path().join("sw");
    let sw_s = sw.to_str().expect("utf-8 path");
    let mgmt = dir.path().join("mgmt");
    let mgmt_s = mgmt.to_str().expect("utf-8 path");
    let switch = Switch::start(
        "vde_switch",
        &["-s", sw_s, "-M", mgmt_s],
        dir.path(),
        &sw.join("ctl"),
    );
    (switch, sw)
}

/// Runs one command on vde_switch's management console and returns its output (up to the
/// `1000 Success` or an error code line).
fn vde_mgmt(mgmt: &Path, cmd: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(mgmt).expect("connect mgmt");
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    s.write_all(format!("{cmd}\n").as_bytes())
        .expect("write mgmt");
    let mut out = String::new();
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline && !out.contains("\n1000 ") {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.push_str(&String::from_utf8_lossy(&buf[..n])),
            Err(_) => continue,
        }
    }
    out
}

fn open(spec: &str) -> Box<dyn Transport> {
    let s = parse_spec(spec).unwrap_or_else(|e| panic!("parse {spec}: {e}"));
    transport::open(&s).unwrap_or_else(|e| panic!("open {spec}: {e}"))
}

/// Sends the frames as one batch, as the backend does: after a short send (the switch's queue
/// is full) wait until the transport's `tx_fd` is writable and send the rest.
fn send(t: &mut dyn Transport, frames: &[Vec<u8>]) {
    let mut batch = batch_of(frames, BUF);
    let deadline = Instant::now() + Duration::from_secs(5);
    while batch.count() > 0 {
        let sent = t.send(&batch).expect("send");
        batch.consume(sent);
        if batch.count() > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                wait_writable(t.tx_fd(), left),
                "tx_fd never became writable with {} frames left",
                batch.count()
            );
        }
    }
}

/// Receives test frames until `count` arrived or the timeout passed.
fn recv(t: &mut dyn Transport, count: usize, timeout: Duration) -> Vec<Vec<u8>> {
    recv_kept(t, count, timeout, BUF, |d| is_test_frame(d, 0))
}

/// A batch of frames from `src` to `dst`: minimum size, MTU size and 30 in between.
fn frames(src: [u8; 6], dst: [u8; 6], seed: u8) -> Vec<Vec<u8>> {
    let mut v = vec![
        test_frame(60, src, dst, seed),
        test_frame(1514, src, dst, seed.wrapping_add(1)),
    ];
    v.extend((0..30u8).map(|i| test_frame(61 + 40 * usize::from(i), src, dst, seed ^ i)));
    v
}

/// One direction: a batch from `from` arrives at `to` whole, in order, byte-exact, and the
/// sender does not hear its own frames back.
fn one_way(from: &mut dyn Transport, to: &mut dyn Transport, sent: &[Vec<u8>]) {
    send(from, sent);
    let got = recv(to, sent.len(), Duration::from_secs(5));
    assert_eq!(
        got.len(),
        sent.len(),
        "{} of {} frames arrived",
        got.len(),
        sent.len()
    );
    for (i, (g, s)) in got.iter().zip(sent).enumerate() {
        assert_eq!(g, s, "frame {i} changed on the way");
    }
    assert!(
        recv(from, 1, Duration::from_millis(300)).is_empty(),
        "the sender heard its own frames"
    );
}

/// Frames both ways between two ports of one switch, nothing dropped on either side.
fn two_ports_exchange(a: &mut dyn Transport, b: &mut dyn Transport) {
    one_way(a, b, &frames(A, B, 1));
    one_way(b, a, &frames(B, A, 7));
    assert_eq!(a.stats().tx_dropped + b.stats().tx_dropped, 0);
    assert_eq!(
        a.stats().rx_dropped_truncated + b.stats().rx_dropped_truncated,
        0
    );
}

/// [`uml_guest_pings_guest_on_our_backend`] through `switch`, both on `spec`; the switch
/// outlives it.
fn pings_through(mut switch: Switch, spec: &str, dir: &TempDir) {
    uml_guest_pings_guest_on_our_backend(spec, spec, dir);
    assert!(switch.running(), "the switch died:\n{}", switch.log());
}

/// Two UML guests ping each other: one on UML's own transport (`uml_spec`), one on our backend
/// (`our_spec`, the same switch) through vhost-user.
fn uml_guest_pings_guest_on_our_backend(uml_spec: &str, our_spec: &str, dir: &TempDir) {
    if !vmm_tests::guest::uml_usable(&format!("UML guests on {uml_spec}")) {
        return;
    }
    let (a, b) = unique_subnet();
    let ip_uml = format!("10.{a}.{b}.1");
    let ip_ours = format!("10.{a}.{b}.2");
    let sock = dir.path().join("net.sock");
    let mut backend = net_backend(None, &sock, our_spec, dir.path().join("backend.log"));
    // Each guest pings the other until it answers, then waits for the test to say both did
    // (a guest that powered off early would leave the other nobody to ping).
    let script = |peer: &str, name: &str| {
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            format!(
                "i=0; until ping -c 1 -W 1 {peer} >/dev/null; do\n\
                 i=$((i+1)); [ $i -lt 60 ] || {{ echo NEVER-ANSWERED; exit 1; }}; done\n\
                 ping -c 3 -W 3 {peer} || exit 1\n\
                 echo PINGED-OK\n\
                 i=0; while [ ! -e /host/done ] && [ $i -lt 300 ]; do sleep 0.2; i=$((i+1)); done\n"
            ),
        )
        .expect("write guest script");
        path
    };
    let script_uml = script(&ip_ours, "uml.sh");
    let script_ours = script(&ip_uml, "ours.sh");
    let mut guest_uml = Guest::uml(&GuestConfig {
        net: GuestNet::Uml(uml_spec),
        ip: Some(&format!("{ip_uml}/24")),
        script: &script_uml,
        netns: None,
        mem: "256M",
    });
    let mut guest_ours = Guest::uml(&GuestConfig {
        net: GuestNet::VhostUser(&sock),
        ip: Some(&format!("{ip_ours}/24")),
        script: &script_ours,
        netns: None,
        mem: "256M",
    });
    let timeout = Duration::from_secs(120);
    guest_ours.expect("PINGED-OK", timeout);
    guest_uml.expect("PINGED-OK", timeout);
    std::fs::write(dir.path().join("done"), b"").expect("write done");
    let s_ours = guest_ours.wait_exit(Duration::from_secs(30));
    let s_uml = guest_uml.wait_exit(Duration::from_secs(30));
    let report = || {
        format!(
            "guest on our backend:\n{}\nguest on UML's transport:\n{}\nbackend log:\n{}",
            guest_ours.console(),
            guest_uml.console(),
            backend.log()
        )
    };
    assert_eq!((s_ours, s_uml), (0, 0), "{}", report());
    assert!(
        guest_ours.console().contains("3 packets received"),
        "{}",
        report()
    );
    assert!(
        guest_uml.console().contains("3 packets received"),
        "{}",
        report()
    );
    assert!(backend.running(), "backend died:\n{}", backend.log());
}

#[test]
fn daemon_two_ports_exchange_frames_byte_exact() {
    let dir = TempDir::new("ds");
    let (mut switch, ctl) = uml_switch(&dir);
    let spec = format!("eth0=daemon,,unix,{}", ctl.display());
    let mut a = open(&spec);
    let mut b = open(&spec);
    assert_eq!((a.name(), a.vnet_hdr_len()), ("daemon", 0));
    two_ports_exchange(a.as_mut(), b.as_mut());
    assert!(switch.running(), "uml_switch died:\n{}", switch.log());
}

/// Opening `spec` fails (no switch listens) with an error naming `socket`.
fn no_switch_names(spec: &str, socket: &str) {
    let s = parse_spec(spec).expect("parse");
    let err = transport::open(&s).err().expect("opened without a switch");
    assert!(err.to_string().contains(socket), "{err}");
}

#[test]
fn daemon_without_a_switch_is_an_error_naming_the_socket() {
    let dir = TempDir::new("dn");
    let ctl = dir.path().join("no-switch.ctl");
    no_switch_names(
        &format!("eth0=daemon,,unix,{}", ctl.display()),
        "no-switch.ctl",
    );
}

#[test]
fn daemon_uml_guest_pings_a_guest_on_our_backend() {
    let dir = TempDir::new("dg");
    let (switch, ctl) = uml_switch(&dir);
    let spec = format!("eth0=daemon,,unix,{}", ctl.display());
    pings_through(switch, &spec, &dir);
}

/// Every frame the transport receives (test frames or not) within `timeout`.
fn recv_all(t: &mut dyn Transport, timeout: Duration) -> Vec<Vec<u8>> {
    let mut batch = PacketBatch::new(64, BUF);
    let mut out = Vec::new();
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || !wait_readable(t.rx_fd(), left) {
            return out;
        }
        t.recv(&mut batch).expect("recv");
        out.extend(batch.packets().iter().map(|p| p.data().to_vec()));
    }
}

/// The kernel's promiscuity count of an interface in `ns` (`ip -d link show`).
fn promiscuity(ns: &NetNs, ifname: &str) -> u32 {
    let (ok, out) = ns.run("ip", &["-d", "link", "show", ifname]);
    assert!(ok, "{out}");
    out.split_whitespace()
        .skip_while(|w| *w != "promiscuity")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no promiscuity in {out}"))
}

/// On a veth in a test namespace, the filter `ether proto 0x88b5 and ether[14] = 1` passes
/// exactly the test frames whose first payload byte is 1: they arrive byte-exact and in
/// order, and nothing else arrives (not the rejected test frames, not the kernel's own IPv6
/// chatter). Transmit is taken, refused and counted; nothing reaches the wire.
fn pcap_filters(optimize: bool, promisc: bool) {
    let ns = NetNs::new();
    let (peer_end, our_end) = ns.veth_pair(None);
    let spec = format!(
        "eth0=pcap,{our_end},ether proto 0x88b5 and ether[14] = 1,{},{}",
        if promisc { "promisc" } else { "nopromisc" },
        if optimize { "optimize" } else { "nooptimize" },
    );
    let (mut t, peer) = ns.enter(|| (open(&spec), PacketPeer::open(&peer_end, false)));
    assert_eq!((t.name(), t.vnet_hdr_len()), ("pcap", 0));
    assert_eq!(promiscuity(&ns, &our_end), u32::from(promisc));
    // test_frame's first payload byte (frame offset 14) is its seed.
    let pass = [
        test_frame(60, B, A, 1),
        test_frame(1514, B, A, 1),
        test_frame(333, A, B, 1),
    ];
    let mut other_type = test_frame(60, B, A, 1);
    other_type[12..14].copy_from_slice(&[0x08, 0x00]);
    let reject = [
        test_frame(60, B, A, 2),
        test_frame(1514, B, A, 0),
        other_type,
    ];
    for (p, r) in pass.iter().zip(&reject) {
        peer.send(r);
        peer.send(p);
    }
    let got = recv_all(t.as_mut(), Duration::from_secs(1));
    assert_eq!(
        got.len(),
        pass.len(),
        "want exactly the {} passing frames, got {} (lengths {:?})",
        pass.len(),
        got.len(),
        got.iter().map(Vec::len).collect::<Vec<_>>()
    );
    for (i, (g, p)) in got.iter().zip(&pass).enumerate() {
        assert_eq!(g, p, "passing frame {i} changed on the way");
    }

    let out = frames(A, B, 1);
    let mut batch = PacketBatch::new(out.len(), BUF);
    for f in &out {
        let b = batch.next_free().expect("room");
        b.space()[..f.len()].copy_from_slice(f);
        b.set_len(f.len());
        batch.commit();
    }
    assert_eq!(
        t.send(&batch).expect("send"),
        out.len(),
        "refused frames must be taken"
    );
    assert_eq!(t.stats().tx_refused, out.len() as u64);
    assert!(
        peer.recv_matching(Duration::from_millis(300), |b| is_test_frame(b, 0))
            .is_none(),
        "a refused frame reached the wire"
    );
    drop(t);
    assert_eq!(promiscuity(&ns, &our_end), 0, "promiscuity left behind");
}

#[test]
fn pcap_filter_passes_and_rejects_byte_exact_promisc() {
    pcap_filters(false, true);
}

#[test]
fn pcap_optimized_filter_without_promisc() {
    pcap_filters(true, false);
}

#[test]
fn pcap_bad_filter_is_refused_naming_it() {
    let ns = NetNs::new();
    let (_peer_end, our_end) = ns.veth_pair(None);
    let s = parse_spec(&format!("eth0=pcap,{our_end},ether proto (0x88b5")).expect("parse");
    let err = ns
        .enter(|| transport::open(&s).err())
        .expect("a malformed filter was accepted")
        .to_string();
    assert!(
        err.contains("ether proto (0x88b5") && err.contains("syntax error"),
        "{err}"
    );
    let s = parse_spec("eth0=pcap,nosuchif0,udp").expect("parse");
    let err = ns
        .enter(|| transport::open(&s).err())
        .expect("a missing interface was accepted")
        .to_string();
    assert!(err.contains("nosuchif0"), "{err}");
}

#[test]
fn vde_two_ports_exchange_frames_byte_exact() {
    let dir = TempDir::new("vs");
    let (mut switch, sw) = vde_switch(&dir);
    let mut a = open(&format!("eth0=vde,{}", sw.display()));
    // The second port asks for a port number, a mode and a description.
    let mut b = open(&format!("eth0=vde,{},,7,,0770,second port", sw.display()));
    assert_eq!((a.name(), a.vnet_hdr_len()), ("vde", 0));
    two_ports_exchange(a.as_mut(), b.as_mut());
    assert!(switch.running(), "vde_switch died:\n{}", switch.log());
    // The switch put the second port where it asked, under its description, and counted the
    // frames both ways.
    let ports = vde_mgmt(&dir.path().join("mgmt"), "port/allprint");
    let port7 = ports
        .split("Port ")
        .find(|p| p.starts_with("0007"))
        .unwrap_or_else(|| panic!("no port 7:\n{ports}"));
    assert!(port7.contains(": second port"), "{ports}");
    let pkts = |dir: &str| {
        let words: Vec<&str> = port7.split_whitespace().collect();
        words
            .windows(3)
            .find(|w| w[0] == dir && w[1] == "pkts")
            .and_then(|w| w[2].parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {dir} count:\n{ports}"))
    };
    assert_eq!((pkts("IN:"), pkts("OUT:")), (32, 32), "{ports}");
    // Our data sockets' names are removed once the switch holds them.
    let stale: Vec<_> = std::fs::read_dir(&sw)
        .expect("read switch dir")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!(".{:05}-", std::process::id())))
        .collect();
    assert!(stale.is_empty(), "data socket names left: {stale:?}");
}

/// UML >= 6.12's vector form: `vecN:transport=vde,vnl=vde:///DIR` and `vnl=DIR` are ports on
/// the same switch as the legacy form's, byte-exact both ways, also against a legacy port.
#[test]
fn vector_vde_ports_exchange_frames_byte_exact() {
    let dir = TempDir::new("vv");
    let (mut switch, sw) = vde_switch(&dir);
    let mut a = open(&format!("vec0:transport=vde,vnl=vde://{}", sw.display()));
    let mut b = open(&format!("vec1:transport=vde,vnl={},depth=8", sw.display()));
    assert_eq!((a.name(), a.vnet_hdr_len()), ("vde", 0));
    two_ports_exchange(a.as_mut(), b.as_mut());
    // vec=0: one frame per call, still byte-exact, against a port of the legacy form.
    let mut c = open(&format!(
        "vec2:transport=vde,vnl=vde://{},vec=0",
        sw.display()
    ));
    drop(b);
    let mut d = open(&format!("eth0=vde,{}", sw.display()));
    two_ports_exchange(c.as_mut(), d.as_mut());
    drop((a, c, d));
    assert!(switch.running(), "vde_switch died:\n{}", switch.log());
    // Another libvdeplug module is refused before anything opens, naming the locator.
    let e = parse_spec("vec0:transport=vde,vnl=vxvde://234.0.0.1").unwrap_err();
    assert!(e.to_string().contains("vnl=vxvde://234.0.0.1"), "{e}");
    // A vector port on a missing switch names its control socket.
    no_switch_names(
        &format!(
            "vec0:transport=vde,vnl=vde://{}/no-switch",
            dir.path().display()
        ),
        "no-switch/ctl",
    );
}

#[test]
fn vde_without_a_switch_is_an_error_naming_the_socket() {
    let dir = TempDir::new("vn");
    no_switch_names(
        &format!("eth0=vde,{}/no-switch", dir.path().display()),
        "no-switch/ctl",
    );
}

#[test]
fn vde_uml_guest_pings_a_guest_on_our_backend() {
    let dir = TempDir::new("vg");
    let (switch, sw) = vde_switch(&dir);
    let spec = format!("eth0=vde,{}", sw.display());
    pings_through(switch, &spec, &dir);
}

/// When the switch dies the port cannot come back: frames sent to it are taken and counted as
/// sent to a gone peer (the device is not failed), and receive reports nothing rather than an
/// error.
fn switch_gone(mut switch: Switch, spec: &str) {
    let mut t = open(spec);
    switch.kill();
    let out = frames(A, B, 3);
    let mut batch = PacketBatch::new(out.len(), BUF);
    for f in &out {
        let b = batch.next_free().expect("room");
        b.space()[..f.len()].copy_from_slice(f);
        b.set_len(f.len());
        batch.commit();
    }
    assert_eq!(
        t.send(&batch).expect("send after the switch died"),
        out.len()
    );
    assert_eq!(t.stats().tx_dropped_peer_gone, out.len() as u64);
    assert_eq!(t.stats().peer_hung_up, 1);
    let mut rx = PacketBatch::new(8, BUF);
    assert_eq!(t.recv(&mut rx).expect("recv after the switch died"), 0);
}

#[test]
fn daemon_switch_gone_drops_and_counts() {
    let dir = TempDir::new("dx");
    let (switch, ctl) = uml_switch(&dir);
    switch_gone(switch, &format!("eth0=daemon,,unix,{}", ctl.display()));
}

#[test]
fn vde_switch_gone_drops_and_counts() {
    let dir = TempDir::new("vx");
    let (switch, sw) = vde_switch(&dir);
    switch_gone(switch, &format!("eth0=vde,{}", sw.display()));
}
