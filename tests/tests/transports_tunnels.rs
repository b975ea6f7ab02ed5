//! The tunnel transports (gre, l2tpv3, bess, mcast, ucast) against real peers, each test in a
//! namespace of its own (loopback only):
//!
//! - two of our transports back to back (127.0.0.1 <-> 127.0.0.2, fd00::1 <-> fd00::2): frames
//!   of 60 and 1514 bytes cross both ways byte-exact; packets with another key, session or
//!   cookie, or from another source, are dropped and counted by reason;
//! - tshark on the namespace's loopback decodes the GRE key and sequence numbers and the
//!   L2TPv3 session, cookie and inner Ethernet addresses of what we sent;
//! - UML's own `gre`, `l2tpv3` (IP and UDP), `bess` (through a relay that plays the switch:
//!   both UML and we are clients of a BESS port) and legacy `mcast` as the far end: a UML guest
//!   there and a UML guest on our backend ping each other and run iperf3;
//! - bess against a listening seqpacket socket (the switch side), mcast between two of ours on
//!   one group (no echo of our own frames), ucast with swapped ports.

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::time::Duration;

use vmm_net::config::parse_spec;
use vmm_net::transport::{self, PacketBatch, Transport};
use vmm_tests::batch::{recv_kept, recv_kept_in, send_at_once};
use vmm_tests::guest::{Guest, GuestConfig, GuestNet};
use vmm_tests::netns::NetNs;
use vmm_tests::peer::{is_test_frame, test_frame, wait_readable};
use vmm_tests::process::net_backend;
use vmm_tests::TempDir;

const A_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
const B_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];
const BUF: usize = 65_600;

fn open(spec: &str) -> Box<dyn Transport> {
    let s = parse_spec(spec).unwrap_or_else(|e| panic!("parse {spec}: {e}"));
    transport::open(&s).unwrap_or_else(|e| panic!("open {spec}: {e}"))
}

/// Opens the transports inside the namespace (their sockets stay there).
fn open_in(ns: &NetNs, specs: &[&str]) -> Vec<Box<dyn Transport>> {
    ns.enter(|| specs.iter().map(|s| open(s)).collect())
}

/// A namespace with loopback up and the second IPv4/IPv6 tunnel endpoints on it.
fn tunnel_ns() -> NetNs {
    let ns = NetNs::new();
    ns.ip(&["addr", "add", "127.0.0.2/8", "dev", "lo"]);
    ns.ip(&["-6", "addr", "add", "fd00::1/128", "dev", "lo", "nodad"]);
    ns.ip(&["-6", "addr", "add", "fd00::2/128", "dev", "lo", "nodad"]);
    ns
}

fn send(t: &mut dyn Transport, packets: &[Vec<u8>]) {
    send_at_once(t, packets, BUF);
}

/// Everything the transport delivers within `timeout` (stops early once `count` arrived).
fn recv(t: &mut dyn Transport, count: usize, timeout: Duration) -> Vec<Vec<u8>> {
    recv_kept(t, count, timeout, BUF, |d| is_test_frame(d, 0))
}

fn frames(src: [u8; 6], dst: [u8; 6], seed: u8) -> Vec<Vec<u8>> {
    vec![
        test_frame(60, src, dst, seed),
        test_frame(1514, src, dst, seed + 1),
        test_frame(60, src, dst, seed + 2),
    ]
}

/// Frames cross `from` -> `to` byte-exact and in order, and none comes back to `from`.
fn one_way(from: &mut dyn Transport, to: &mut dyn Transport, src: [u8; 6], dst: [u8; 6], seed: u8) {
    let sent = frames(src, dst, seed);
    send(from, &sent);
    let got = recv(to, sent.len(), Duration::from_secs(3));
    assert_eq!(got.len(), sent.len(), "{}: frames lost", to.name());
    for (g, s) in got.iter().zip(&sent) {
        assert!(
            g == s,
            "{}: frame of {} bytes changed on the way",
            to.name(),
            s.len()
        );
    }
    assert!(
        recv(from, 1, Duration::from_millis(200)).is_empty(),
        "{}: our own frames came back",
        from.name()
    );
}

/// Frames cross a -> b and b -> a.
fn both_ways(a: &mut dyn Transport, b: &mut dyn Transport) {
    one_way(a, b, A_MAC, B_MAC, 10);
    one_way(b, a, B_MAC, A_MAC, 20);
}

/// Sends from `bad` towards `victim`, asserting the victim delivers nothing.
fn rejected(bad: &mut dyn Transport, victim: &mut dyn Transport) {
    send(bad, &frames(A_MAC, B_MAC, 40));
    let got = recv(victim, 1, Duration::from_millis(500));
    assert!(
        got.is_empty(),
        "{} delivered a packet it must drop",
        victim.name()
    );
}

/// `t` sends through a socket of its own that took no copy of the packets `t` received (raw IP
/// tunnels: the kernel copies each packet of the protocol to every raw socket whose bound
/// address it matches; one on the receive socket's wait queue would be woken for each send).
fn sends_through_a_socket_that_receives_nothing(t: &dyn Transport) {
    assert_ne!(
        t.tx_fd(),
        t.rx_fd(),
        "{}: one socket for both ways",
        t.name()
    );
    let mut queued: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through the pointer, which is live.
    let rc = unsafe { libc::ioctl(t.tx_fd(), libc::FIONREAD, &mut queued) };
    assert_eq!(rc, 0, "FIONREAD: {}", std::io::Error::last_os_error());
    assert_eq!(queued, 0, "{}: the send socket received a packet", t.name());
}

#[test]
fn gre_v4_keys_and_sequence_both_ways_and_wrong_key_dropped() {
    let ns = tunnel_ns();
    let mut t = open_in(
        &ns,
        &[
            "vec0:transport=gre,src=127.0.0.1,dst=127.0.0.2,rx_key=0x11,tx_key=0x22,sequence=1",
            "vec1:transport=gre,src=127.0.0.2,dst=127.0.0.1,rx_key=0x22,tx_key=0x11,sequence=1,vec=0",
            // Right addresses, wrong key.
            "vec2:transport=gre,src=127.0.0.1,dst=127.0.0.2,rx_key=0x11,tx_key=0x99,sequence=1",
            // Right key, another source address.
            "vec3:transport=gre,src=127.0.0.3,dst=127.0.0.2,rx_key=0x11,tx_key=0x22,sequence=1",
            // No key at all: other flags.
            "vec4:transport=gre,src=127.0.0.1,dst=127.0.0.2",
        ],
    );
    let (ab, rest) = t.split_at_mut(2);
    let (a, b) = ab.split_at_mut(1);
    both_ways(a[0].as_mut(), b[0].as_mut());
    sends_through_a_socket_that_receives_nothing(a[0].as_ref());
    let s = b[0].stats();
    assert_eq!(s.rx_dropped_header.total(), 0, "{s:?}");
    rejected(rest[0].as_mut(), b[0].as_mut());
    rejected(rest[1].as_mut(), b[0].as_mut());
    rejected(rest[2].as_mut(), b[0].as_mut());
    let s = b[0].stats();
    assert_eq!(s.rx_dropped_header.wrong_key, 3, "{s:?}");
    assert_eq!(s.rx_dropped_foreign, 3, "{s:?}");
    assert_eq!(s.rx_dropped_header.wrong_flags, 3, "{s:?}");
    assert_eq!(s.rx_dropped_header.total(), 6, "{s:?}");
}

#[test]
fn gre_v6_both_ways() {
    let ns = tunnel_ns();
    let mut t = open_in(
        &ns,
        &[
            "vec0:transport=gre,v6=1,src=fd00::1,dst=fd00::2,rx_key=7,tx_key=8,sequence=1,pin_sequence=1",
            "vec1:transport=gre,v6=1,src=fd00::2,dst=fd00::1,rx_key=8,tx_key=7,sequence=1",
        ],
    );
    let (a, b) = t.split_at_mut(1);
    both_ways(a[0].as_mut(), b[0].as_mut());
    sends_through_a_socket_that_receives_nothing(a[0].as_ref());
}

#[test]
fn l2tpv3_ip_v4_sessions_cookies_counter_and_wrong_ones_dropped() {
    let ns = tunnel_ns();
    let mut t = open_in(
        &ns,
        &[
            "vec0:transport=l2tpv3,src=127.0.0.1,dst=127.0.0.2,rx_session=0xffffffff,tx_session=0x1234,rx_cookie=0xaabbccdd,tx_cookie=0x11223344,counter=1",
            "vec1:transport=l2tpv3,src=127.0.0.2,dst=127.0.0.1,rx_session=0x1234,tx_session=0xffffffff,rx_cookie=0x11223344,tx_cookie=0xaabbccdd,counter=1,depth=2",
            // Wrong session.
            "vec2:transport=l2tpv3,src=127.0.0.1,dst=127.0.0.2,rx_session=1,tx_session=0x1235,rx_cookie=1,tx_cookie=0x11223344,counter=1",
            // Wrong cookie.
            "vec3:transport=l2tpv3,src=127.0.0.1,dst=127.0.0.2,rx_session=1,tx_session=0x1234,rx_cookie=1,tx_cookie=0x11223345,counter=1",
        ],
    );
    let (ab, rest) = t.split_at_mut(2);
    let (a, b) = ab.split_at_mut(1);
    both_ways(a[0].as_mut(), b[0].as_mut());
    sends_through_a_socket_that_receives_nothing(a[0].as_ref());
    rejected(rest[0].as_mut(), b[0].as_mut());
    rejected(rest[1].as_mut(), b[0].as_mut());
    let s = b[0].stats();
    assert_eq!(s.rx_dropped_header.wrong_session, 3, "{s:?}");
    assert_eq!(s.rx_dropped_header.wrong_cookie, 3, "{s:?}");
}

#[test]
fn l2tpv3_udp_v4_cookie64_counter_and_wrong_ones_dropped() {
    let ns = tunnel_ns();
    let mut t = open_in(
        &ns,
        &[
            "vec0:transport=l2tpv3,udp=1,src=127.0.0.1,srcport=1701,dst=127.0.0.2,dstport=1702,rx_session=5,tx_session=6,rx_cookie=0x0102030405060708,tx_cookie=0x1112131415161718,cookie64=1,counter=1",
            "vec1:transport=l2tpv3,udp=1,src=127.0.0.2,srcport=1702,dst=127.0.0.1,dstport=1701,rx_session=6,tx_session=5,rx_cookie=0x1112131415161718,tx_cookie=0x0102030405060708,cookie64=1,counter=1,pin_counter=1",
            // Right peer address, another port: not the configured peer.
            "vec2:transport=l2tpv3,udp=1,src=127.0.0.1,srcport=1703,dst=127.0.0.2,dstport=1702,rx_session=5,tx_session=6,rx_cookie=0x0102030405060708,tx_cookie=0x1112131415161718,cookie64=1,counter=1",
        ],
    );
    let (ab, rest) = t.split_at_mut(2);
    let (a, b) = ab.split_at_mut(1);
    both_ways(a[0].as_mut(), b[0].as_mut());
    rejected(rest[0].as_mut(), b[0].as_mut());
    assert_eq!(b[0].stats().rx_dropped_foreign, 3, "{:?}", b[0].stats());
    // The same peer speaking with a wrong cookie.
    drop(t);
    let mut t = open_in(
        &ns,
        &[
            "vec1:transport=l2tpv3,udp=1,src=127.0.0.2,srcport=1702,dst=127.0.0.1,dstport=1701,rx_session=6,tx_session=5,rx_cookie=0x1112131415161718,tx_cookie=1,cookie64=1,counter=1",
            "vec0:transport=l2tpv3,udp=1,src=127.0.0.1,srcport=1701,dst=127.0.0.2,dstport=1702,rx_session=5,tx_session=6,rx_cookie=0x0102030405060708,tx_cookie=2,cookie64=1,counter=1",
        ],
    );
    let (bad, victim) = t.split_at_mut(1);
    rejected(bad[0].as_mut(), victim[0].as_mut());
    assert_eq!(victim[0].stats().rx_dropped_header.wrong_cookie, 3);
}

#[test]
fn l2tpv3_udp_v6_and_ip_v6_both_ways() {
    let ns = tunnel_ns();
    let mut t = open_in(
        &ns,
        &[
            "vec0:transport=l2tpv3,udp=1,v6=1,src=fd00::1,srcport=1701,dst=fd00::2,dstport=1701,rx_session=1,tx_session=2",
            "vec1:transport=l2tpv3,udp=1,v6=1,src=fd00::2,srcport=1701,dst=fd00::1,dstport=1701,rx_session=2,tx_session=1",
            "vec2:transport=l2tpv3,v6=1,src=fd00::1,dst=fd00::2,rx_session=3,tx_session=4,rx_cookie=9,tx_cookie=10",
            "vec3:transport=l2tpv3,v6=1,src=fd00::2,dst=fd00::1,rx_session=4,tx_session=3,rx_cookie=10,tx_cookie=9",
        ],
    );
    let (a, rest) = t.split_at_mut(1);
    let (b, rest) = rest.split_at_mut(1);
    both_ways(a[0].as_mut(), b[0].as_mut());
    // Each way the 1514- and 60-byte frames left as one UDP GSO message over IPv6 and
    // arrived as one UDP GRO message.
    for t in [&a[0], &b[0]] {
        let stats = t.stats();
        assert_eq!(
            (stats.tx_udp_gso_datagrams, stats.rx_udp_gro_datagrams),
            (2, 2),
            "{stats:?}"
        );
    }
    let (c, d) = rest.split_at_mut(1);
    both_ways(c[0].as_mut(), d[0].as_mut());
}

#[test]
fn l2tpv3_udp_port_in_use_is_explained() {
    let ns = tunnel_ns();
    let err = ns.enter(|| {
        let spec = "vec0:transport=l2tpv3,udp=1,src=127.0.0.1,srcport=1701,dst=127.0.0.2,dstport=1701,rx_session=1,tx_session=2";
        let _first = open(spec);
        transport::open(&parse_spec(spec).expect("parse"))
            .err()
            .expect("second bind must fail")
            .to_string()
    });
    assert!(
        err.contains("127.0.0.1:1701") && err.contains("in use"),
        "{err}"
    );
}

/// Captures on the namespace's loopback while `send` runs; returns tshark's field lines.
fn capture(ns: &NetNs, send: impl FnOnce(), read_args: &[&str]) -> Vec<String> {
    let dir = TempDir::new("cap");
    let file = dir.path().join("cap.pcapng");
    let file_s = file.to_str().expect("utf-8 path").to_string();
    let mut cap = ns
        .command("tshark")
        .args(["-i", "lo", "-a", "duration:4", "-w", &file_s])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tshark (installed by resources/setup.sh)");
    // tshark says "Capturing on 'Loopback: lo'" once the capture runs.
    let mut stderr = cap.stderr.take().expect("stderr");
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    while !String::from_utf8_lossy(&seen).contains("Capturing on") {
        match stderr.read(&mut byte) {
            Ok(1) => seen.push(byte[0]),
            _ => panic!("tshark stopped: {}", String::from_utf8_lossy(&seen)),
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    send();
    let status = cap.wait().expect("wait tshark");
    assert!(status.success(), "tshark capture failed");
    let out = Command::new("tshark")
        .args(["-r", &file_s])
        .args(read_args)
        .output()
        .expect("run tshark -r");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// The last of tshark's comma-separated occurrences of a field (the inner one).
fn inner(field: &str) -> &str {
    field.rsplit(',').next().unwrap_or("")
}

fn mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[test]
fn tshark_decodes_our_gre_key_and_sequence() {
    let ns = tunnel_ns();
    let mut t = open_in(
        &ns,
        &["vec0:transport=gre,src=127.0.0.1,dst=127.0.0.2,rx_key=1,tx_key=0xdeadbeef,sequence=1"],
    );
    let lines = capture(
        &ns,
        || {
            send(t[0].as_mut(), &frames(A_MAC, B_MAC, 1));
            send(t[0].as_mut(), &frames(A_MAC, B_MAC, 4)[..1]);
        },
        // Nobody listens at 127.0.0.2: the ICMP errors quoting our packets are left out.
        &[
            "-Y",
            "gre && !icmp",
            "-T",
            "fields",
            "-e",
            "gre.key",
            "-e",
            "gre.sequence_number",
            "-e",
            "eth.src",
            "-e",
            "eth.dst",
            "-e",
            "frame.len",
        ],
    );
    assert_eq!(lines.len(), 4, "{lines:?}");
    for (i, line) in lines.iter().enumerate() {
        let f: Vec<&str> = line.split('\t').collect();
        assert_eq!(f.len(), 5, "{line}");
        assert_eq!(f[0], "0xdeadbeef", "{line}");
        assert_eq!(f[1], (i + 1).to_string(), "{line}");
        assert_eq!(inner(f[2]), mac(A_MAC), "{line}");
        assert_eq!(inner(f[3]), mac(B_MAC), "{line}");
    }
    // Loopback's 14-byte link header + IPv4 20 + GRE 12 + the 1514-byte frame.
    assert_eq!(lines[1].split('\t').nth(4), Some("1560"), "{lines:?}");
}

/// Offloads over a tunnel (`gro=1` on gre): the backend offers the guest CSUM and TSO, and
/// segments a 20,000-byte TSO frame itself. tshark, checking every IP and TCP checksum,
/// decodes 14 segments of at most 1448 bytes whose sequence numbers follow on and whose
/// lengths add up to the frame's payload.
#[test]
fn tshark_decodes_the_segments_of_a_tso_frame_sent_over_gre() {
    use vmm_tests::peer::tcp4_frame;
    use vmm_tests::rig::{guest_sends_with_header, transport_pair, Rig, RINGS};
    let ns = tunnel_ns();
    let dir = TempDir::new("gtso");
    let sock = dir.path().join("gre.sock");
    let spec = "vec0:transport=gre,src=127.0.0.1,dst=127.0.0.2,gro=1";
    let backend = net_backend(Some(ns.name()), &sock, spec, dir.path().join("gre.log"));
    let stream = std::os::unix::net::UnixStream::connect(&sock).expect("connect");
    let mut rig = Rig::connect(stream, transport_pair().1);
    rig.zero_rings();
    // CSUM (0) and HOST_TSO4 (11), as a Linux guest takes them when offered.
    assert_eq!(
        rig.bring_up_with(RINGS, 1 | 1 << 11),
        0xf,
        "{}",
        backend.log()
    );
    let payload: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
    let frame = tcp4_frame(A_MAC, B_MAC, 1_000_000, &payload);
    let hdr = tso4_header();
    let lines = capture(
        &ns,
        || guest_sends_with_header(&mut rig, 0, hdr, &frame),
        &[
            "-o",
            "ip.check_checksum:TRUE",
            "-o",
            "tcp.check_checksum:TRUE",
            "-Y",
            "gre && tcp && !icmp",
            "-T",
            "fields",
            "-e",
            "tcp.seq_raw",
            "-e",
            "tcp.len",
            "-e",
            "tcp.checksum.status",
            "-e",
            "ip.checksum.status",
        ],
    );
    assert_eq!(lines.len(), 14, "{lines:?}\n{}", backend.log());
    let mut next = 1_000_000u64;
    for line in &lines {
        let f: Vec<&str> = line.split('\t').collect();
        assert_eq!(f.len(), 4, "{line}");
        assert_eq!(f[0].parse::<u64>().ok(), Some(next), "{lines:?}");
        let len: u64 = f[1].parse().expect("tcp.len");
        assert!(len <= 1448, "{line}");
        next += len;
        assert_eq!(f[2], "1", "TCP checksum good: {line}");
        assert!(
            f[3].split(',').all(|s| s == "1"),
            "IP checksums good: {line}"
        );
    }
    assert_eq!(next - 1_000_000, 20_000, "{lines:?}");
}

/// Offloads end to end over gre with `gro=1` on both ends: guest A hands its backend a
/// 20,000-byte TSO frame, which leaves as 14 segments (the test above decodes them); the
/// other end's backend merges them back (software GRO) and guest B, which took GUEST_CSUM
/// and GUEST_TSO4, receives one GSO frame: the 20,000 bytes in order behind one set of
/// headers, with a partial checksum that completes to a valid one.
#[test]
fn gre_tso_frames_arrive_merged_at_a_guest_that_takes_gso() {
    use vmm_tests::peer::tcp4_frame;
    use vmm_tests::rig::{guest_sends_with_header, transport_pair, Rig, HDR, RINGS, RX_BUF};
    let ns = tunnel_ns();
    let dir = TempDir::new("ggro");
    let (sock_a, sock_b) = (dir.path().join("a.sock"), dir.path().join("b.sock"));
    let a = net_backend(
        Some(ns.name()),
        &sock_a,
        "vec0:transport=gre,src=127.0.0.1,dst=127.0.0.2,gro=1",
        dir.path().join("a.log"),
    );
    let b = net_backend(
        Some(ns.name()),
        &sock_b,
        "vec0:transport=gre,src=127.0.0.2,dst=127.0.0.1,gro=1",
        dir.path().join("b.log"),
    );
    let connect = |sock: &std::path::Path, features: u32, log: &str| {
        let stream = std::os::unix::net::UnixStream::connect(sock).expect("connect");
        let mut rig = Rig::connect(stream, transport_pair().1);
        rig.zero_rings();
        assert_eq!(rig.bring_up_with(RINGS, features), 0xf, "{log}");
        rig
    };
    // A: CSUM (0) and HOST_TSO4 (11).
    let mut rig_a = connect(&sock_a, 1 | 1 << 11, &a.log());
    let payload: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
    let frame = tcp4_frame(A_MAC, B_MAC, 1_000_000, &payload);
    let hdr = tso4_header();
    guest_sends_with_header(&mut rig_a, 0, hdr, &frame);
    // B's frontend comes once all 14 segments wait in its socket, so that one read takes
    // them all (a train never spans two reads).
    std::thread::sleep(Duration::from_millis(200));
    // B: GUEST_CSUM (1) and GUEST_TSO4 (7); one 64 KiB receive buffer.
    let mut rig_b = connect(&sock_b, 1 << 1 | 1 << 7, &b.log());
    rig_b.offer(0, 0, RX_BUF, 65_562, 2);
    rig_b.wait_used(0, 1);
    let entry = RINGS + 0x2000 + 4;
    let len: u32 = rig_b.get_u32(entry + 4);
    let got = rig_b.read(RX_BUF, len as usize);
    let h = vmm_net::transport::vnet::VnetHdr::parse(&got).expect("virtio-net header");
    assert_eq!(
        (
            h.flags,
            h.gso_type,
            h.hdr_len,
            h.gso_size,
            h.csum_start,
            h.csum_offset
        ),
        (1, 1, 54, 1448, 34, 16),
        "{}",
        b.log()
    );
    let mut merged = got[HDR..].to_vec();
    assert_eq!(merged.len(), frame.len(), "one frame for all 14 segments");
    assert_eq!(&merged[54..], &payload[..], "the payload, in order");
    assert_eq!(
        &merged[38..42],
        &1_000_000u32.to_be_bytes(),
        "the first sequence number"
    );
    assert!(vmm_net::transport::vnet::complete_checksum(
        &mut merged,
        34,
        16
    ));
    let mut pseudo = merged[26..34].to_vec();
    pseudo.extend_from_slice(&[0, 6]);
    pseudo.extend_from_slice(&((merged.len() - 34) as u16).to_be_bytes());
    pseudo.extend_from_slice(&merged[34..]);
    assert_eq!(
        internet_sum(&pseudo),
        0xffff,
        "the TCP checksum completes valid"
    );
}

/// The virtio-net header of a guest's TCP/IPv4 TSO frame (Ethernet, IPv4, TCP without
/// options; MSS 1448) with its partial checksum.
fn tso4_header() -> [u8; vmm_tests::rig::HDR] {
    let mut hdr = [0u8; vmm_tests::rig::HDR];
    hdr[0] = 1; // NEEDS_CSUM
    hdr[1] = 1; // GSO_TCPV4
    hdr[2..4].copy_from_slice(&54u16.to_le_bytes());
    hdr[4..6].copy_from_slice(&1448u16.to_le_bytes());
    hdr[6..8].copy_from_slice(&34u16.to_le_bytes());
    hdr[8..10].copy_from_slice(&16u16.to_le_bytes());
    hdr
}

/// The ones'-complement sum of `b`, folded: 0xffff over data that includes a valid checksum.
fn internet_sum(b: &[u8]) -> u16 {
    let mut sum: u64 = b
        .chunks(2)
        .map(|c| u64::from(c[0]) << 8 | u64::from(*c.get(1).unwrap_or(&0)))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

#[test]
fn tshark_decodes_our_l2tpv3_udp_session_cookie_and_frame() {
    let ns = tunnel_ns();
    // The 1514- and 60-byte frames leave as one UDP GSO message. Loopback would pass it to
    // the capture whole; without its UDP segmentation the kernel segments it first, as a
    // NIC does before the wire, so tshark sees the datagrams a peer receives.
    let (ok, out) = ns.run("ethtool", &["-K", "lo", "tx-udp-segmentation", "off"]);
    assert!(ok, "ethtool: {out}");
    let mut t = open_in(
        &ns,
        &["vec0:transport=l2tpv3,udp=1,src=127.0.0.1,srcport=1701,dst=127.0.0.2,dstport=1701,rx_session=1,tx_session=0xabcd,rx_cookie=1,tx_cookie=0xcafef00d"],
    );
    let lines = capture(
        &ns,
        || send(t[0].as_mut(), &frames(A_MAC, B_MAC, 1)),
        &[
            "-d",
            "udp.port==1701,l2tp",
            "-o",
            "l2tp.cookie_size:4 Byte Cookie",
            "-o",
            "l2tp.l2_specific:None",
            "-d",
            "l2tp.pw_type==0,eth",
            "-Y",
            "l2tp && !icmp",
            "-T",
            "fields",
            "-e",
            "l2tp.sid",
            "-e",
            "l2tp.cookie",
            "-e",
            "eth.src",
            "-e",
            "eth.dst",
        ],
    );
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(t[0].stats().tx_udp_gso_datagrams, 2, "{:?}", t[0].stats());
    for line in &lines {
        let f: Vec<&str> = line.split('\t').collect();
        assert_eq!(f.len(), 4, "{line}");
        assert_eq!(f[0], "0x0000abcd", "{line}");
        assert_eq!(f[1].replace(':', ""), "cafef00d", "{line}");
        assert_eq!(inner(f[2]), mac(A_MAC), "{line}");
        assert_eq!(inner(f[3]), mac(B_MAC), "{line}");
    }
}

/// Runs of datagrams of one length (the last may be shorter) leave an l2tpv3 `udp=1` tunnel as
/// UDP GSO messages, and a plain UDP socket at the far end receives each datagram as it would
/// have been sent alone: its own header, counter in sequence, the frame byte-exact, in order.
#[test]
fn l2tpv3_udp_runs_leave_as_udp_gso_and_arrive_datagram_by_datagram() {
    let ns = tunnel_ns();
    assert_eq!(l2tpv3_udp_runs(&ns), 52);
}

/// A route whose MTU is below the datagrams (loopback at 1500: a 1514-byte frame makes a
/// 1562-byte datagram, which IP must fragment) refuses UDP GSO; the tunnel then sends datagram
/// by datagram, and the far end still gets every one, byte-exact.
#[test]
fn a_route_that_refuses_udp_gso_gets_the_datagrams_one_by_one() {
    let ns = tunnel_ns();
    ns.ip(&["link", "set", "lo", "mtu", "1500"]);
    assert_eq!(l2tpv3_udp_runs(&ns), 0);
}

/// Sends two runs over l2tpv3 `udp=1` to a plain UDP socket in `ns`, checks every datagram,
/// and returns how many left in UDP GSO messages.
fn l2tpv3_udp_runs(ns: &NetNs) -> u64 {
    let peer = ns.enter(|| std::net::UdpSocket::bind("127.0.0.2:1702").expect("bind the peer"));
    peer.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut t = open_in(
        ns,
        &["vec0:transport=l2tpv3,udp=1,src=127.0.0.1,srcport=1701,dst=127.0.0.2,dstport=1702,rx_session=5,tx_session=6,rx_cookie=1,tx_cookie=0x1112131415161718,cookie64=1,counter=1"],
    );
    // Two runs: 40 of 1514 bytes closed by one of 700, 10 of 1000 closed by one of 60.
    let mut sent = Vec::new();
    for (count, len) in [(40, 1514), (1, 700), (10, 1000), (1, 60)] {
        for _ in 0..count {
            sent.push(test_frame(len, A_MAC, B_MAC, sent.len() as u8));
        }
    }
    send(t[0].as_mut(), &sent);
    let mut buf = vec![0u8; 65_536];
    for (i, frame) in sent.iter().enumerate() {
        let n = peer
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("datagram {i} of {}: {e}", sent.len()));
        // RFC 3931 over UDP: a data message (T 0, version 3), session 6, cookie, counter.
        let mut want = vec![0, 3, 0, 0, 0, 0, 0, 6];
        want.extend_from_slice(&0x1112_1314_1516_1718u64.to_be_bytes());
        want.extend_from_slice(&(i as u32 + 1).to_be_bytes());
        want.extend_from_slice(frame);
        assert!(
            buf[..n] == want[..],
            "datagram {i}: {n} bytes, not the {} sent; header {:02x?}",
            want.len(),
            &buf[..20.min(n)]
        );
    }
    let stats = t[0].stats();
    assert_eq!(stats.tx_dropped, 0, "{stats:?}");
    stats.tx_udp_gso_datagrams
}

/// An L2TPv3-over-UDP data message (RFC 3931: T 0, version 3) for `session`, without cookie
/// or counter, carrying `frame`: what a peer, ours or a hostile one, sends a tunnel configured
/// without them.
fn l2tpv3_udp_datagram(session: u32, frame: &[u8]) -> Vec<u8> {
    let mut d = vec![0, 3, 0, 0];
    d.extend_from_slice(&session.to_be_bytes());
    d.extend_from_slice(frame);
    d
}

/// The runs one l2tpv3 `udp=1` tunnel sends as UDP GSO arrive at another as UDP GRO
/// messages of 41 and 11 datagrams, each split back into its frames byte-exact and in order,
/// through a batch of 8 frames: what does not fit one batch waits in the transport for the
/// next (`rx_pending`), none lost.
#[test]
fn udp_gso_runs_arrive_through_udp_gro_split_byte_exact_across_batches() {
    let ns = tunnel_ns();
    let mut t = open_in(
        &ns,
        &[
            "vec0:transport=l2tpv3,udp=1,src=127.0.0.1,srcport=1701,dst=127.0.0.2,dstport=1702,rx_session=5,tx_session=6,tx_cookie=0x11121314,rx_cookie=0x01020304,counter=1",
            "vec1:transport=l2tpv3,udp=1,src=127.0.0.2,srcport=1702,dst=127.0.0.1,dstport=1701,rx_session=6,tx_session=5,rx_cookie=0x11121314,tx_cookie=0x01020304,counter=1",
        ],
    );
    let mut sent = Vec::new();
    for (count, len) in [(40, 1514), (1, 700), (10, 1000), (1, 60)] {
        for _ in 0..count {
            sent.push(test_frame(len, A_MAC, B_MAC, sent.len() as u8));
        }
    }
    send(t[0].as_mut(), &sent);
    assert_eq!(t[0].stats().tx_udp_gso_datagrams, 52, "{:?}", t[0].stats());
    let mut batch = PacketBatch::new(8, BUF);
    let got = recv_kept_in(
        t[1].as_mut(),
        sent.len(),
        Duration::from_secs(3),
        &mut batch,
        |d| is_test_frame(d, 0),
    );
    assert_eq!(got.len(), sent.len(), "frames lost: {:?}", t[1].stats());
    for (i, (g, s)) in got.iter().zip(&sent).enumerate() {
        assert!(g == s, "frame {i} ({} bytes) changed on the way", s.len());
    }
    let stats = t[1].stats();
    assert_eq!(stats.rx_udp_gro_datagrams, 52, "{stats:?}");
    assert!(!t[1].rx_pending());
    assert_eq!(t[1].buffer_bytes(), 4 * 65_536, "the GRO slots are counted");
    // The sending end has its slots too: every UDP tunnel receives through them.
    assert_eq!(t[0].buffer_bytes(), 4 * 65_536);
}

/// A run merged by UDP GRO is judged datagram by datagram: one with a wrong session in the
/// middle of a run is dropped and counted, the others arrive; a run from another port than the
/// peer's is dropped whole, each datagram counted.
#[test]
fn a_bad_datagram_in_a_udp_gro_run_is_dropped_alone_and_a_foreign_run_whole() {
    let ns = tunnel_ns();
    let mut t = open_in(
        &ns,
        &["vec1:transport=l2tpv3,udp=1,src=127.0.0.2,srcport=1702,dst=127.0.0.1,dstport=1701,rx_session=6,tx_session=5"],
    );
    let run = |session_of: &dyn Fn(usize) -> u32| -> (Vec<u8>, Vec<Vec<u8>>) {
        let (mut bytes, mut frames) = (Vec::new(), Vec::new());
        for i in 0..5 {
            let frame = test_frame(1000, A_MAC, B_MAC, 50 + i as u8);
            bytes.extend_from_slice(&l2tpv3_udp_datagram(session_of(i), &frame));
            frames.push(frame);
        }
        (bytes, frames)
    };
    let peer = |port: u16| {
        let s = ns.enter(|| std::net::UdpSocket::bind(("127.0.0.1", port)).expect("bind"));
        s.connect("127.0.0.2:1702").unwrap();
        // SAFETY: a live int option value with its size.
        let rc = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_UDP,
                libc::UDP_SEGMENT,
                (&1008i32 as *const i32).cast(),
                4,
            )
        };
        assert_eq!(rc, 0, "UDP_SEGMENT: {}", std::io::Error::last_os_error());
        s
    };
    let (bytes, frames) = run(&|i| if i == 2 { 7 } else { 6 });
    peer(1701).send(&bytes).expect("send the run");
    let got = recv(t[0].as_mut(), 4, Duration::from_secs(3));
    let want: Vec<_> = frames
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 2)
        .map(|(_, f)| f.clone())
        .collect();
    assert_eq!(got, want);
    let stats = t[0].stats();
    assert_eq!(stats.rx_dropped_header.wrong_session, 1, "{stats:?}");
    assert_eq!(
        stats.rx_udp_gro_datagrams, 5,
        "the run came merged: {stats:?}"
    );
    let (bytes, _) = run(&|_| 6);
    peer(1703).send(&bytes).expect("send the foreign run");
    assert!(recv(t[0].as_mut(), 1, Duration::from_millis(500)).is_empty());
    let stats = t[0].stats();
    assert_eq!(stats.rx_dropped_foreign, 5, "{stats:?}");
    assert_eq!(stats.rx_udp_gro_datagrams, 10, "{stats:?}");
}

/// A flood of datagrams that are all dropped cannot keep the worker in one receive: through
/// UDP GRO a call returns after a bounded number of them, holding none back
/// (`rx_pending`), and the calls after it go on where it stopped, every datagram counted.
#[test]
fn a_flood_of_foreign_datagrams_returns_from_a_udp_gro_receive_bounded() {
    let ns = tunnel_ns();
    let mut t = open_in(
        &ns,
        &["vec1:transport=l2tpv3,udp=1,src=127.0.0.2,srcport=1702,dst=127.0.0.1,dstport=1701,rx_session=6,tx_session=5"],
    );
    let foreign = ns.enter(|| std::net::UdpSocket::bind("127.0.0.1:1703").expect("bind"));
    const FLOOD: u64 = 2000;
    let datagram = l2tpv3_udp_datagram(6, &test_frame(60, A_MAC, B_MAC, 1));
    for _ in 0..FLOOD {
        foreign.send_to(&datagram, "127.0.0.2:1702").expect("send");
    }
    let mut batch = PacketBatch::new(1, BUF);
    assert_eq!(t[0].recv(&mut batch).expect("recv"), 0);
    let first = t[0].stats();
    assert!(
        first.rx_dropped_foreign > 0 && first.rx_dropped_foreign < FLOOD,
        "one call read {} of {FLOOD}",
        first.rx_dropped_foreign
    );
    assert!(!t[0].rx_pending(), "a short call held datagrams back");
    let mut calls = 1;
    while t[0].stats().rx_dropped_foreign < FLOOD {
        assert_eq!(t[0].recv(&mut batch).expect("recv"), 0);
        assert!(!t[0].rx_pending());
        calls += 1;
        assert!(calls < 100, "{:?}", t[0].stats());
    }
    assert_eq!(t[0].stats().rx_dropped_foreign, FLOOD);
    assert_eq!(
        t[0].stats().rx_dropped_kernel,
        0,
        "the socket's buffer holds the flood"
    );
}

/// A receive that stops at its bound in a flood of dropped datagrams leaves the rest in the
/// socket, which an edge-triggered watch would not announce again: the backend re-arms its
/// watch and comes back for them, so a good frame behind 5,000 foreign datagrams reaches the
/// guest although nothing arrives after it. (`depth=8`: a receive gives up after 512
/// dropped messages.)
#[test]
fn a_good_frame_behind_a_flood_of_dropped_datagrams_reaches_the_guest() {
    use vmm_tests::rig::{frontend, guest_receives};
    let ns = tunnel_ns();
    let dir = TempDir::new("flood");
    let sock = dir.path().join("b.sock");
    let mut backend = net_backend(
        Some(ns.name()),
        &sock,
        "vec0:transport=l2tpv3,udp=1,src=127.0.0.2,srcport=1702,dst=127.0.0.1,dstport=1701,rx_session=6,tx_session=5,depth=8",
        dir.path().join("b.log"),
    );
    let foreign = ns.enter(|| std::net::UdpSocket::bind("127.0.0.1:1703").expect("bind"));
    let flood = l2tpv3_udp_datagram(6, &test_frame(60, A_MAC, B_MAC, 1));
    for _ in 0..5000 {
        foreign.send_to(&flood, "127.0.0.2:1702").expect("send");
    }
    let good = test_frame(200, A_MAC, B_MAC, 2);
    let peer = ns.enter(|| std::net::UdpSocket::bind("127.0.0.1:1701").expect("bind"));
    peer.send_to(&l2tpv3_udp_datagram(6, &good), "127.0.0.2:1702")
        .expect("send");
    // Everything waits in the backend's socket before its worker reads any.
    let mut rig = frontend(&sock);
    let mut idx = 0;
    guest_receives(&mut rig, &mut idx, &good);
    drop(rig);
    // The summary at the disconnect: every foreign datagram read and counted.
    assert!(
        backend.wait_for_log("rx foreign source 5000", Duration::from_secs(5)),
        "{}",
        backend.log()
    );
}

#[test]
fn bess_frames_cross_a_seqpacket_switch_port_byte_exact() {
    let dir = TempDir::new("bess");
    let port = dir.path().join("bess_unix_port");
    let client = dir.path().join("client");
    // The switch side: a listening seqpacket socket, as BESS's unix port.
    let listener = seqpacket_listener(&port);
    let mut t = open(&format!(
        "vec0:transport=bess,src={},dst={}",
        client.display(),
        port.display()
    ));
    let conn = accept(&listener);
    let sent = frames(A_MAC, B_MAC, 1);
    send(t.as_mut(), &sent);
    for s in &sent {
        let mut buf = vec![0u8; 4096];
        assert!(wait_readable(conn.as_raw_fd(), Duration::from_secs(2)));
        // SAFETY: the kernel writes at most buf.len() bytes into buf.
        let n = unsafe { libc::recv(conn.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        assert_eq!(&buf[..n as usize], &s[..]);
    }
    let back = frames(B_MAC, A_MAC, 7);
    for f in &back {
        // SAFETY: the kernel reads f.len() bytes from a live slice.
        let n = unsafe { libc::send(conn.as_raw_fd(), f.as_ptr().cast(), f.len(), 0) };
        assert_eq!(n as usize, f.len());
    }
    assert_eq!(recv(t.as_mut(), back.len(), Duration::from_secs(2)), back);
    // A runt is dropped and counted; a hang-up is counted once and the socket is not read
    // again: no error per receive, no busy loop.
    // SAFETY: as above.
    unsafe { libc::send(conn.as_raw_fd(), [1u8; 5].as_ptr().cast(), 5, 0) };
    std::thread::sleep(Duration::from_millis(100));
    let mut batch = PacketBatch::new(4, BUF);
    assert_eq!(t.recv(&mut batch).expect("recv"), 0);
    assert_eq!(t.stats().rx_dropped_header.too_short, 1);
    drop(conn);
    std::thread::sleep(Duration::from_millis(100));
    for _ in 0..3 {
        assert_eq!(t.recv(&mut batch).expect("recv after the hang-up"), 0);
    }
    assert_eq!(t.stats().peer_hung_up, 1, "{:?}", t.stats());
    send(t.as_mut(), &sent);
    assert_eq!(t.stats().tx_dropped_peer_gone, sent.len() as u64);
    drop(listener);
}

fn seqpacket_listener(path: &std::path::Path) -> OwnedFd {
    // std's UnixListener is SOCK_STREAM only: a seqpacket listener by hand.
    // SAFETY: socket(2) takes no pointers.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0);
    // SAFETY: a fresh descriptor owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut sun = libc::sockaddr_un {
        sun_family: libc::AF_UNIX as libc::sa_family_t,
        sun_path: [0; 108],
    };
    let bytes = path.to_str().expect("utf-8").as_bytes();
    for (o, b) in sun.sun_path.iter_mut().zip(bytes) {
        *o = *b as libc::c_char;
    }
    // SAFETY: a live, initialised sockaddr_un with its size.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sun as *const libc::sockaddr_un).cast(),
            std::mem::size_of::<libc::sockaddr_un>() as u32,
        )
    };
    assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
    // SAFETY: listen(2) takes no pointers.
    assert_eq!(unsafe { libc::listen(fd.as_raw_fd(), 1) }, 0);
    fd
}

/// Accepts one connection, close-on-exec: the backends other tests spawn meanwhile must not
/// inherit it, or dropping it would not hang up on the transport (the bess test's hang-up
/// went unseen whenever a gre test started its backends during it).
fn accept(listener: &OwnedFd) -> OwnedFd {
    // SAFETY: no address is requested; the result is checked.
    let fd = unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        )
    };
    assert!(fd >= 0, "accept: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh descriptor owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

#[test]
fn mcast_two_members_see_each_other_but_not_themselves() {
    let ns = NetNs::new();
    ns.ip(&["link", "set", "lo", "multicast", "on"]);
    ns.ip(&["route", "add", "224.0.0.0/4", "dev", "lo"]);
    let mut t = open_in(
        &ns,
        &[
            "eth0=mcast,,239.192.168.1,1102,1",
            "eth1=mcast,,239.192.168.1,1102,1",
        ],
    );
    let (a, b) = t.split_at_mut(1);
    both_ways(a[0].as_mut(), b[0].as_mut());
    // Each saw its own three frames come back and dropped them.
    assert_eq!(a[0].stats().rx_dropped_own, 3, "{:?}", a[0].stats());
    assert_eq!(b[0].stats().rx_dropped_own, 3, "{:?}", b[0].stats());
}

#[test]
fn ucast_swapped_ports_both_ways() {
    let ns = NetNs::new();
    let mut t = open_in(
        &ns,
        &[
            "eth0=ucast,,127.0.0.1,5001,5002",
            "eth1=ucast,,127.0.0.1,5002,5001",
        ],
    );
    let (a, b) = t.split_at_mut(1);
    both_ways(a[0].as_mut(), b[0].as_mut());
}

/// A burst larger than Linux's default receive buffer waits in a tunnel's socket until the
/// worker reads it: 600 datagrams of 1514-byte frames (about 13 segmented 64 KiB TSO frames,
/// some 1.4 MB of the kernel's memory on loopback, where the default 208 KiB holds about 90)
/// sent before the transport reads any, all delivered byte-exact and none counted as dropped.
#[test]
fn a_burst_of_segments_waits_in_the_tunnels_socket() {
    let ns = NetNs::new();
    let mut t = open_in(&ns, &["eth0=ucast,,127.0.0.1,5101,5102"]).remove(0);
    let sent: Vec<Vec<u8>> = (0..600u32)
        .map(|i| test_frame(1514, A_MAC, B_MAC, i as u8))
        .collect();
    ns.enter(|| {
        let peer = std::net::UdpSocket::bind("127.0.0.1:5102").expect("bind the peer");
        for f in &sent {
            peer.send_to(f, "127.0.0.1:5101").expect("send");
        }
    });
    let got = recv(t.as_mut(), sent.len(), Duration::from_secs(5));
    assert_eq!(
        t.stats().rx_dropped_kernel,
        0,
        "the socket overflowed: its receive buffer is too small for a burst"
    );
    assert_eq!(got.len(), sent.len(), "frames lost");
    assert!(got == sent, "frames changed or reordered");
}

/// A UML guest on UML's own transport `uml_spec` (inside `ns`) and a UML guest on our backend
/// with `our_spec` (the other end) ping each other and run iperf3 (TCP, 3 s).
fn uml_interop(uml_spec: &str, our_spec: &str) {
    if !vmm_tests::guest::uml_usable(&format!("UML interop {uml_spec}")) {
        return;
    }
    let ns = tunnel_ns();
    // For mcast: loopback carries the group.
    ns.ip(&["link", "set", "lo", "multicast", "on"]);
    ns.ip(&["route", "add", "224.0.0.0/4", "dev", "lo"]);
    let dir = TempDir::new("ui");
    let sock = dir.path().join("net.sock");
    let mut backend = net_backend(
        Some(ns.name()),
        &sock,
        our_spec,
        dir.path().join("backend.log"),
    );
    // Both guests mount `dir` at /host and meet there through files.
    let wait = |f: &str| {
        format!(
            "i=0; while [ ! -e /host/{f} ] && [ $i -lt 400 ]; do sleep 0.2; i=$((i+1)); \
             if [ $((i % 50)) = 0 ]; then echo \"waiting for {f}: $i\"; fi; done; echo \"waited for {f}: $i\"\n"
        )
    };
    let uml_script = dir.path().join("uml.sh");
    std::fs::write(
        &uml_script,
        format!(
            "set -e\n\
             iperf3 -s -D -B 10.77.0.1\n\
             touch /host/server-up\n\
             {}\
             ping -c 3 -W 3 10.77.0.2 || s=1\n\
             touch /host/uml-pinged\n\
             {}\
             exit ${{s:-0}}\n",
            wait("ours-up"),
            wait("ours-done")
        ),
    )
    .expect("write script");
    let our_script = dir.path().join("ours.sh");
    std::fs::write(
        &our_script,
        format!(
            "touch /host/ours-up\n\
             {}\
             ping -c 3 -W 3 10.77.0.1 && iperf3 -c 10.77.0.1 -t 3 && iperf3 -c 10.77.0.1 -t 3 -R; s=$?\n\
             {}\
             touch /host/ours-done\n\
             exit $s\n",
            wait("server-up"),
            wait("uml-pinged")
        ),
    )
    .expect("write script");
    let mut uml = Guest::uml(&GuestConfig {
        net: GuestNet::Uml(uml_spec),
        ip: Some("10.77.0.1/24"),
        script: &uml_script,
        netns: Some(ns.name()),
        mem: "256M",
    });
    let mut ours = Guest::uml(&GuestConfig {
        net: GuestNet::VhostUser(&sock),
        ip: Some("10.77.0.2/24"),
        script: &our_script,
        netns: None,
        mem: "256M",
    });
    let ours_status = ours.try_wait_exit(Duration::from_secs(120));
    let uml_status = uml.try_wait_exit(Duration::from_secs(60));
    let report = format!(
        "guest on our backend:\n{}\nguest on UML's transport:\n{}\nbackend log:\n{}",
        ours.console(),
        uml.console(),
        backend.log()
    );
    assert_eq!(ours_status, Some(0), "{report}");
    assert_eq!(uml_status, Some(0), "{report}");
    assert!(ours.console().contains("3 packets received"), "{report}");
    assert!(uml.console().contains("3 packets received"), "{report}");
    let console = ours.console();
    let rates: Vec<&str> = console.lines().filter(|l| l.contains("receiver")).collect();
    assert_eq!(rates.len(), 2, "two iperf3 results expected: {report}");
    eprintln!(
        "{uml_spec}\n  ours -> UML: {}\n  UML -> ours: {}",
        rates[0], rates[1]
    );
    assert!(backend.running(), "{report}");
}

#[test]
fn uml_gre_interop_ping_and_iperf() {
    uml_interop(
        "vec0:transport=gre,src=127.0.0.1,dst=127.0.0.2,rx_key=0x10,tx_key=0x20,sequence=1",
        "vec0:transport=gre,src=127.0.0.2,dst=127.0.0.1,rx_key=0x20,tx_key=0x10,sequence=1",
    );
}

#[test]
fn uml_l2tpv3_udp_interop_ping_and_iperf() {
    uml_interop(
        "vec0:transport=l2tpv3,udp=1,src=127.0.0.1,srcport=1701,dst=127.0.0.2,dstport=1702,rx_session=0x30,tx_session=0x40,rx_cookie=0x1234,tx_cookie=0x5678,counter=1",
        "vec0:transport=l2tpv3,udp=1,src=127.0.0.2,srcport=1702,dst=127.0.0.1,dstport=1701,rx_session=0x40,tx_session=0x30,rx_cookie=0x5678,tx_cookie=0x1234,counter=1",
    );
}

/// L2TPv3 straight over IP (protocol 115), 32-bit cookies and the counter, against UML's own.
#[test]
fn uml_l2tpv3_ip_interop_ping_and_iperf() {
    uml_interop(
        "vec0:transport=l2tpv3,src=127.0.0.1,dst=127.0.0.2,rx_session=0x31,tx_session=0x41,rx_cookie=0xa1,tx_cookie=0xb2,counter=1",
        "vec0:transport=l2tpv3,src=127.0.0.2,dst=127.0.0.1,rx_session=0x41,tx_session=0x31,rx_cookie=0xb2,tx_cookie=0xa1,counter=1",
    );
}

/// Legacy multicast: UML's `eth0=mcast` and ours on the same default group and port.
#[test]
fn uml_mcast_interop_ping_and_iperf() {
    uml_interop("eth0=mcast", "eth0=mcast");
}

/// A stand-in for a BESS switch: two listening seqpacket ports, and every message from the
/// connection on one forwarded, as is, to the connection on the other. UML's `transport=bess`
/// and ours are both clients of a port (bind `src`, connect `dst`), so two of them meet only
/// through something that listens. Returns how many messages it forwarded each way when stopped.
struct BessRelay {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<(u64, u64)>>,
}

impl BessRelay {
    fn start(a: &std::path::Path, b: &std::path::Path) -> BessRelay {
        use std::sync::atomic::{AtomicBool, Ordering};
        let listeners = [seqpacket_listener(a), seqpacket_listener(b)];
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            // Accept one connection on each port, in whatever order the clients come.
            let mut conns: [Option<OwnedFd>; 2] = [None, None];
            while conns.iter().any(Option::is_none) {
                if flag.load(Ordering::Relaxed) {
                    return (0, 0);
                }
                for (l, c) in listeners.iter().zip(conns.iter_mut()) {
                    if c.is_none() && wait_readable(l.as_raw_fd(), Duration::from_millis(50)) {
                        *c = Some(accept(l));
                    }
                }
            }
            let conns = conns.map(|c| c.expect("accepted"));
            let mut forwarded = [0u64; 2];
            let mut buf = vec![0u8; 70_000];
            while !flag.load(Ordering::Relaxed) {
                let mut fds = conns.each_ref().map(|c| libc::pollfd {
                    fd: c.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
                // SAFETY: two live pollfds, their count passed.
                if unsafe { libc::poll(fds.as_mut_ptr(), 2, 50) } <= 0 {
                    continue;
                }
                for from in 0..2 {
                    if fds[from].revents == 0 {
                        continue;
                    }
                    let (src, dst) = (fds[from].fd, fds[1 - from].fd);
                    // SAFETY: the kernel writes at most buf.len() bytes into buf.
                    let n = unsafe { libc::recv(src, buf.as_mut_ptr().cast(), buf.len(), 0) };
                    if n <= 0 {
                        return (forwarded[0], forwarded[1]);
                    }
                    // SAFETY: the kernel reads n bytes from a live buffer.
                    unsafe { libc::send(dst, buf.as_ptr().cast(), n as usize, 0) };
                    forwarded[from] += 1;
                }
            }
            (forwarded[0], forwarded[1])
        });
        BessRelay {
            stop,
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> (u64, u64) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.take().expect("running").join().expect("relay")
    }
}

impl Drop for BessRelay {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// UML's own `vec0:transport=bess` against ours, through a relay that plays the switch.
#[test]
fn uml_bess_interop_ping_and_iperf() {
    if !vmm_tests::guest::uml_usable("UML bess interop") {
        return;
    }
    let dir = TempDir::new("bs");
    let port = |n: &str| dir.path().join(n).display().to_string();
    let relay = BessRelay::start(
        dir.path().join("port-uml").as_path(),
        dir.path().join("port-ours").as_path(),
    );
    uml_interop(
        &format!(
            "vec0:transport=bess,src={},dst={}",
            port("uml"),
            port("port-uml")
        ),
        &format!(
            "vec0:transport=bess,src={},dst={}",
            port("ours"),
            port("port-ours")
        ),
    );
    let (from_uml, from_ours) = relay.stop();
    eprintln!("bess relay: {from_uml} messages from UML, {from_ours} from ours");
    assert!(
        from_uml > 100 && from_ours > 100,
        "{from_uml} / {from_ours}"
    );
}
