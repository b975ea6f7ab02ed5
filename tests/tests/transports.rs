//! Every vector transport of the first set against a real peer: frames of 60 bytes, of MTU
//! size and (with offloads) a 64 KiB TSO frame cross both ways byte-exact.
//!
//! - raw: a veth pair in a test-made namespace; the peer is an AF_PACKET socket on the other
//!   end.
//! - tap, hybrid: a tap in a namespace; the peer is an AF_PACKET socket on the tap interface.
//! - fd: a socketpair (seqpacket and datagram).
//! - raw's bpffile, and hybrid's receive filter replaced (bpfflash's mechanism).
//! - xdp: a veth pair as for raw, with the redirect on the driver's hook and on the generic
//!   one; the program goes with the transport, and a second one on the interface is refused.

use std::os::fd::IntoRawFd;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use vmm_net::config::{
    CommonOpts, FdConfig, HybridConfig, NetSpec, RawConfig, TapConfig, TransportConfig, XdpConfig,
    XdpMode,
};
use vmm_net::transport::{self, Offloads, PacketBatch, Transport};
use vmm_tests::batch::{batch_of, recv_kept, send_at_once};
use vmm_tests::netns::NetNs;
use vmm_tests::peer::{
    is_test_frame, test_frame, tso_frame, wait_readable, wait_writable, PacketPeer,
};
use vmm_tests::TempDir;

const GUEST: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const HOST: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const HDR: usize = 10;
const BUF: usize = HDR + 65_550;

fn spec(transport: TransportConfig, gro: bool) -> NetSpec {
    NetSpec {
        name: "vec0".into(),
        common: CommonOpts {
            gro,
            ..CommonOpts::default()
        },
        transport,
    }
}

/// Prefixes a frame with a zero virtio_net_hdr when the transport carries one.
fn with_hdr(t: &dyn Transport, frame: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8; t.vnet_hdr_len()];
    v.extend_from_slice(frame);
    v
}

/// Sends packets through the transport in one batch, asserting all were taken.
fn send(t: &mut dyn Transport, packets: &[Vec<u8>]) {
    send_at_once(t, packets, BUF);
}

/// Receives until `count` test frames arrived (header bytes kept), or the timeout.
fn recv(t: &mut dyn Transport, count: usize, timeout: Duration) -> Vec<Vec<u8>> {
    let hdr = t.vnet_hdr_len();
    recv_kept(t, count, timeout, BUF, |d| {
        is_test_frame(d, hdr) || d.len() > 20_000
    })
}

fn frames() -> Vec<Vec<u8>> {
    vec![
        test_frame(60, GUEST, HOST, 1),
        test_frame(1514, GUEST, HOST, 2),
    ]
}

/// 60-byte and MTU-size frames both ways between `t` and `peer`, byte-exact; and none of our
/// own transmissions comes back to us.
fn small_frames_both_ways(t: &mut dyn Transport, peer: &PacketPeer) {
    let sent = frames();
    let packets: Vec<Vec<u8>> = sent.iter().map(|f| with_hdr(t, f)).collect();
    send(t, &packets);
    for f in &sent {
        let got = peer
            .recv_matching(Duration::from_secs(3), |b| is_test_frame(b, 0))
            .expect("peer received nothing");
        assert_eq!(&got, f, "frame changed on the way to the peer");
    }
    assert!(
        recv(t, 1, Duration::from_millis(300)).is_empty(),
        "the transport received its own transmission"
    );
    let back = vec![
        test_frame(60, HOST, GUEST, 3),
        test_frame(1514, HOST, GUEST, 4),
    ];
    for f in &back {
        peer.send(f);
    }
    let got = recv(t, back.len(), Duration::from_secs(3));
    assert_eq!(
        got.len(),
        back.len(),
        "transport received {} of {} frames",
        got.len(),
        back.len()
    );
    let h = t.vnet_hdr_len();
    for (g, f) in got.iter().zip(&back) {
        assert_eq!(&g[h..], &f[..], "frame changed on the way in");
        assert_eq!(g[1], 0, "a plain frame arrived marked as GSO");
    }
}

/// A 64 KiB TSO super-frame both ways, whole (GSO metadata in the header, frame byte-exact).
fn tso_both_ways(t: &mut dyn Transport, peer: &PacketPeer) {
    let out = tso_frame(60_000, GUEST, HOST);
    send(t, std::slice::from_ref(&out));
    let got = peer
        .recv_matching(Duration::from_secs(3), |b| b.len() > 20_000)
        .expect("peer received no TSO frame");
    assert_eq!(got[1], 1, "peer saw gso_type {} (want TCPV4)", got[1]);
    assert_eq!(&got[4..6], &1448u16.to_le_bytes(), "gso_size");
    assert_eq!(
        &got[HDR..],
        &out[HDR..],
        "TSO frame changed on the way to the peer"
    );

    let back = tso_frame(60_000, HOST, GUEST);
    peer.send(&back);
    let got = recv(t, 1, Duration::from_secs(3));
    let got = got.first().expect("transport received no TSO frame");
    assert_eq!(got[1], 1, "transport saw gso_type {}", got[1]);
    assert_eq!(&got[HDR..], &back[HDR..], "TSO frame changed on the way in");
}

fn open_in(ns: &NetNs, s: NetSpec, peer_if: &str, vnet: bool) -> (Box<dyn Transport>, PacketPeer) {
    let (t, peer) = ns.enter(|| {
        let t = transport::open(&s).unwrap_or_else(|e| panic!("open: {e}"));
        (t, PacketPeer::open(peer_if, vnet))
    });
    // A tap's carrier comes with our descriptor; wait until the kernel really passes frames.
    ns.wait_link_up(peer_if);
    (t, peer)
}

/// A raw transport on one end of a veth in a fresh namespace (offloads as `gro` says), and
/// the AF_PACKET peer on the other end, whose name comes back too.
fn raw_on_a_veth(gro: bool) -> (NetNs, String, Box<dyn Transport>, PacketPeer) {
    let ns = NetNs::new();
    let (peer_end, dp_end) = ns.veth_pair(None);
    let s = spec(TransportConfig::Raw(RawConfig { ifname: dp_end }), gro);
    let (t, peer) = open_in(&ns, s, &peer_end, gro);
    (ns, peer_end, t, peer)
}

#[test]
fn raw_frames_cross_a_veth_byte_exact() {
    let (_ns, _peer_end, mut t, peer) = raw_on_a_veth(false);
    small_frames_both_ways(t.as_mut(), &peer);
}

/// A veth whose peer is down drops what it is given (`ENOBUFS` from `sendmmsg`): the frames
/// are dropped and counted, not an error that would leave the guest's ring stopped.
#[test]
fn raw_counts_what_the_veth_drops() {
    let (ns, peer_end, mut t, _peer) = raw_on_a_veth(false);
    ns.ip(&["link", "set", &peer_end, "down"]);
    let frames: Vec<Vec<u8>> = (0..5)
        .map(|i| with_hdr(t.as_ref(), &test_frame(60, GUEST, HOST, i)))
        .collect();
    send(t.as_mut(), &frames);
    assert_eq!(t.stats().tx_dropped, 5, "{}", t.stats());
}

#[test]
fn raw_tso_frames_cross_a_veth_whole() {
    let (_ns, _peer_end, mut t, peer) = raw_on_a_veth(true);
    tso_both_ways(t.as_mut(), &peer);
}

/// The hook of the XDP program on `ifname` in `ns`, as `ip -d link` reports it: `native`,
/// `skb`, or `None` when there is no program.
fn xdp_hook(ns: &NetNs, ifname: &str) -> Option<&'static str> {
    let (ok, out) = ns.run("ip", &["-d", "link", "show", "dev", ifname]);
    assert!(ok, "ip link show {ifname}: {out}");
    // The link line says `xdpgeneric` or `xdp` (the hook); the details name the program.
    if !out.contains("prog/xdp") {
        None
    } else if out.contains(" xdpgeneric ") {
        Some("skb")
    } else {
        Some("native")
    }
}

/// `transport=xdp` on `ifname` with the redirect asked for as `mode`, no receive offloads.
fn xdp_spec(ifname: &str, mode: XdpMode) -> NetSpec {
    spec(
        TransportConfig::Xdp(XdpConfig {
            ifname: ifname.to_string(),
            mode,
        }),
        false,
    )
}

/// The redirect asked for as `mode`, found on `hook`.
fn xdp_crosses_a_veth(mode: XdpMode, hook: &str) {
    let ns = NetNs::new();
    let (peer_end, dp_end) = ns.veth_pair(None);
    let xdp = |ifname: &str| xdp_spec(ifname, mode);
    let (mut t, peer) = open_in(&ns, xdp(&dp_end), &peer_end, false);
    assert_eq!(t.vnet_hdr_len(), 0);
    // 128 chunks of 2 KiB each way at MTU 1500, reported beside the datapath's batches.
    assert_eq!(t.buffer_bytes(), 512 * 1024);
    assert_eq!(
        xdp_hook(&ns, &dp_end),
        Some(hook),
        "the XDP program on {dp_end}"
    );
    small_frames_both_ways(t.as_mut(), &peer);
    // Frames too short for an Ethernet header or too long for a chunk are dropped, counted,
    // and do not stop the frames behind them.
    let frames = vec![
        vec![0u8; 8],
        vec![0u8; 5000],
        test_frame(60, GUEST, HOST, 7),
    ];
    send(t.as_mut(), &frames);
    let got = peer
        .recv_matching(Duration::from_secs(3), |b| is_test_frame(b, 0))
        .expect("the frame behind two bad ones did not arrive");
    assert_eq!(got, frames[2]);
    assert_eq!(t.stats().tx_dropped, 2, "{}", t.stats());

    // Down, the interface takes nothing. The batch handed over as it went down stays on the
    // socket's ring (AF_XDP cannot take it back) and leaves once it is up; from then on
    // frames are dropped and counted, not queued, and nothing stalls.
    ns.ip(&["link", "set", &dp_end, "down"]);
    let before = t.stats().tx_dropped;
    let held: Vec<Vec<u8>> = (0..10)
        .map(|i| test_frame(60, GUEST, HOST, 100 + i))
        .collect();
    send(t.as_mut(), &held);
    let dropped: Vec<Vec<u8>> = (0..10)
        .map(|i| test_frame(60, GUEST, HOST, 120 + i))
        .collect();
    send(t.as_mut(), &dropped);
    assert_eq!(t.stats().tx_dropped - before, 10, "{}", t.stats());
    ns.ip(&["link", "set", &dp_end, "up"]);
    ns.wait_link_up(&dp_end);
    let fresh = test_frame(60, GUEST, HOST, 42);
    send(t.as_mut(), std::slice::from_ref(&fresh));
    let mut arrived = Vec::new();
    while let Some(f) = peer.recv_matching(Duration::from_secs(1), |b| is_test_frame(b, 0)) {
        arrived.push(f);
    }
    assert_eq!(
        arrived.last(),
        Some(&fresh),
        "the frame sent once up did not arrive last"
    );
    for f in &arrived[..arrived.len() - 1] {
        assert!(held.contains(f), "a frame dropped while down went out");
    }

    let second = ns.enter(|| transport::open(&xdp(&dp_end)).err());
    let err = second
        .expect("a second XDP program was attached")
        .to_string();
    assert!(err.contains("already has an AF_XDP socket"), "{err}");
    drop(t);
    assert_eq!(
        xdp_hook(&ns, &dp_end),
        None,
        "the program outlived its transport"
    );
    // Opened again at once (a swap or a reboot onto the same interface), it gets the queue
    // the closed socket held, and carries frames.
    let (mut t, peer) = open_in(&ns, xdp(&dp_end), &peer_end, false);
    small_frames_both_ways(t.as_mut(), &peer);
}

/// The default takes the driver's hook where it has one, as a veth does.
#[test]
fn xdp_frames_cross_a_veth_byte_exact_on_the_drivers_hook_by_default() {
    xdp_crosses_a_veth(XdpMode::Auto, "native");
}

#[test]
fn xdp_frames_cross_a_veth_byte_exact_on_the_generic_hook() {
    xdp_crosses_a_veth(XdpMode::Skb, "skb");
}

/// `xdp` sends through a socket of its own, sharing the receiving socket's UMEM (so the
/// worker's epoll, which sits on the receiving one, costs the frames sent nothing), and that
/// socket is what says the transport takes frames again: a burst of numbered frames longer
/// than the UMEM's transmit half is taken in parts, each part once the sending socket is
/// writable, and arrives whole and in order.
#[test]
fn xdp_sends_a_burst_larger_than_its_umem_through_its_own_socket() {
    let ns = NetNs::new();
    let (peer_end, dp_end) = ns.veth_pair(None);
    let s = xdp_spec(&dp_end, XdpMode::Auto);
    let (mut t, peer) = open_in(&ns, s, &peer_end, false);
    assert_ne!(
        t.tx_fd(),
        t.rx_fd(),
        "xdp sends through its receiving socket"
    );
    const BURST: u32 = 1000;
    let frames: Vec<Vec<u8>> = (0..BURST)
        .map(|i| {
            let mut f = test_frame(60, GUEST, HOST, 9);
            f[14..18].copy_from_slice(&i.to_be_bytes());
            f
        })
        .collect();
    let number = |f: &[u8]| u32::from_be_bytes(f[14..18].try_into().expect("4 bytes"));
    let mut arrived = Vec::new();
    let drain = |arrived: &mut Vec<Vec<u8>>| {
        while let Some(f) = peer.recv_matching(Duration::from_millis(20), |b| is_test_frame(b, 0)) {
            arrived.push(f);
        }
    };
    let (mut taken, mut parts) = (0, 0);
    while taken < frames.len() {
        let n = t.send(&batch_of(&frames[taken..], BUF)).expect("send");
        taken += n;
        parts += 1;
        drain(&mut arrived);
        if taken < frames.len() {
            assert!(
                wait_writable(t.tx_fd(), Duration::from_secs(3)),
                "the sending socket never became writable again with {taken} of {BURST} \
                 frames taken"
            );
        }
    }
    drain(&mut arrived);
    assert!(
        parts > 1,
        "the UMEM took the whole burst at once: nothing tested"
    );
    let numbers: Vec<u32> = arrived.iter().map(|f| number(f)).collect();
    assert_eq!(
        numbers,
        (0..BURST).collect::<Vec<_>>(),
        "frames lost or reordered"
    );
    for (got, sent) in arrived.iter().zip(&frames) {
        assert_eq!(got, sent, "frame {} changed on the way", number(sent));
    }
    assert_eq!(t.stats().tx_dropped, 0, "{}", t.stats());
}

/// The Internet checksum of `data` after `sum`, unfolded into a u16 (0xffff verifies).
fn ones_sum(data: &[u8], mut sum: u32) -> u16 {
    for c in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// A UDP datagram from the peer namespace's own stack reaches the transport with a checksum
/// that verifies: the veth offloads checksums, so the sender leaves it partial, and AF_XDP
/// carries no word of that; the transport completes it.
#[test]
fn xdp_completes_checksums_a_local_sender_left_partial() {
    let ns = NetNs::new();
    let (peer_end, dp_end) = ns.veth_pair(Some("10.77.0.1/24"));
    ns.ip(&[
        "neigh",
        "add",
        "10.77.0.2",
        "lladdr",
        "02:00:00:00:00:01",
        "dev",
        &peer_end,
    ]);
    let s = xdp_spec(&dp_end, XdpMode::Auto);
    let (mut t, _peer) = open_in(&ns, s, &peer_end, false);
    let payload = b"a checksum the veth was to finish".repeat(20);
    ns.enter(|| {
        let sock = std::net::UdpSocket::bind("10.77.0.1:0").expect("bind");
        sock.send_to(&payload, "10.77.0.2:9").expect("send");
    });
    let got = recv_kept(t.as_mut(), 1, Duration::from_secs(3), BUF, |f| {
        f.len() > 34 && f[12..14] == [8, 0] && f[23] == 17
    });
    let f = got.first().expect("the datagram did not arrive");
    let udp = &f[34..34 + 8 + payload.len()];
    assert_eq!(&udp[8..], &payload[..]);
    let pseudo = u32::from(ones_sum(&f[26..34], 17 + udp.len() as u32));
    assert_eq!(
        ones_sum(udp, pseudo),
        0xffff,
        "the UDP checksum does not verify: {:02x?}",
        &udp[6..8]
    );
}

#[test]
fn raw_bpffile_filters_and_malformed_files_are_refused() {
    let ns = NetNs::new();
    let (peer_end, dp_end) = ns.veth_pair(None);
    let dir = TempDir::new("bpf");
    let drop_all = dir.path().join("drop.bpf");
    std::fs::write(&drop_all, vmm_net::transport::BpfProgram::ret(0)).unwrap();
    let bad = dir.path().join("bad.bpf");
    std::fs::write(&bad, [0u8; 7]).unwrap();
    let mk = |file: &std::path::Path| {
        let mut s = spec(
            TransportConfig::Raw(RawConfig {
                ifname: dp_end.clone(),
            }),
            false,
        );
        s.common.bpffile = Some(file.to_path_buf());
        s
    };
    let err = transport::open(&mk(&bad))
        .err()
        .expect("malformed filter accepted")
        .to_string();
    assert!(err.contains("bad.bpf") && err.contains("8-byte"), "{err}");
    let (mut t, peer) = open_in(&ns, mk(&drop_all), &peer_end, false);
    peer.send(&test_frame(60, HOST, GUEST, 9));
    assert!(
        recv(t.as_mut(), 1, Duration::from_millis(500)).is_empty(),
        "drop-all filter let a frame through"
    );
}

/// `bpfflash`'s mechanism on hybrid: a replaced receive filter is composed with hybrid's own
/// direction check, so frames we inject through the tap still never come back, whatever the
/// new program accepts; a program that drops everything, then one that passes everything.
#[test]
fn hybrid_replaced_filter_keeps_the_direction_check() {
    use vmm_net::transport::BpfProgram;
    let (_ns, mut t, peer) = on_a_tap(hybrid, false);
    let prog = |k: u32| BpfProgram::parse(&BpfProgram::ret(k)).expect("program");
    t.replace_filter(&prog(0)).expect("drop-all filter");
    peer.send(&test_frame(60, HOST, GUEST, 9));
    assert!(
        recv(t.as_mut(), 1, Duration::from_millis(500)).is_empty(),
        "a frame passed the drop-all filter"
    );
    t.replace_filter(&prog(u32::MAX)).expect("pass-all filter");
    // Both ways still, byte-exact, and none of our own transmissions comes back.
    small_frames_both_ways(t.as_mut(), &peer);
}

fn tap(ifname: String) -> TransportConfig {
    TransportConfig::Tap(TapConfig {
        ifname: Some(ifname),
    })
}

fn hybrid(ifname: String) -> TransportConfig {
    TransportConfig::Hybrid(HybridConfig { ifname })
}

/// `config` (tap or hybrid) opened on a new tap in a new namespace, with `gro`, and a peer
/// on the tap's far side; the namespace goes with the first value.
fn on_a_tap(
    config: fn(String) -> TransportConfig,
    gro: bool,
) -> (NetNs, Box<dyn Transport>, PacketPeer) {
    let ns = NetNs::new();
    let tap = ns.tap(None);
    let (t, peer) = open_in(&ns, spec(config(tap.clone()), gro), &tap, gro);
    (ns, t, peer)
}

const TSO: Offloads = Offloads {
    csum: true,
    tso4: true,
    tso6: true,
    ecn: false,
};

/// Small frames both ways byte-exact over `config` on a tap, or with `tso` a 64 KiB TSO
/// frame each way, whole.
fn crosses_a_tap(config: fn(String) -> TransportConfig, tso: bool) {
    let (_ns, mut t, peer) = on_a_tap(config, tso);
    if tso {
        t.set_offloads(TSO).expect("offloads");
        tso_both_ways(t.as_mut(), &peer);
    } else {
        small_frames_both_ways(t.as_mut(), &peer);
    }
}

#[test]
fn tap_frames_cross_byte_exact() {
    crosses_a_tap(tap, false);
}

#[test]
fn tap_tso_frames_cross_whole() {
    crosses_a_tap(tap, true);
}

#[test]
fn hybrid_frames_cross_byte_exact() {
    crosses_a_tap(hybrid, false);
}

#[test]
fn hybrid_tso_frames_cross_whole() {
    crosses_a_tap(hybrid, true);
}

/// A batch of `depth` frames in one call each way over a socketpair of type `ty`.
fn fd_batches(ty: libc::c_int) {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two descriptors into the live array.
    let rc =
        unsafe { libc::socketpair(libc::AF_UNIX, ty | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) };
    assert_eq!(rc, 0);
    // SAFETY: fds[1] is ours alone; UnixDatagram's send/recv keep message boundaries on a
    // seqpacket socket too.
    let peer = unsafe { <UnixDatagram as std::os::fd::FromRawFd>::from_raw_fd(fds[1]) };
    let mut s = spec(TransportConfig::Fd(FdConfig { fd: fds[0] }), false);
    s.common.depth = 8;
    let mut t = transport::open(&s).expect("open fd");
    assert_eq!(t.vnet_hdr_len(), 0);
    assert_eq!(t.buffer_bytes(), 0);
    let out: Vec<Vec<u8>> = (0..8u8)
        .map(|i| test_frame(if i % 2 == 0 { 60 } else { 1514 }, GUEST, HOST, i))
        .collect();
    send(t.as_mut(), &out);
    let mut buf = vec![0u8; 2000];
    for f in &out {
        let n = peer.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], &f[..]);
    }
    let back: Vec<Vec<u8>> = (0..8u8)
        .map(|i| test_frame(60 + usize::from(i) * 100, HOST, GUEST, i))
        .collect();
    for f in &back {
        peer.send(f).unwrap();
    }
    let mut batch = PacketBatch::new(8, BUF);
    assert!(wait_readable(t.rx_fd(), Duration::from_secs(2)));
    assert_eq!(
        t.recv(&mut batch).unwrap(),
        8,
        "one recvmmsg should take the whole batch"
    );
    for (p, f) in batch.packets().iter().zip(&back) {
        assert_eq!(p.data(), &f[..]);
    }
}

#[test]
fn fd_seqpacket_moves_whole_batches_byte_exact() {
    fd_batches(libc::SOCK_SEQPACKET);
}

#[test]
fn fd_datagram_moves_whole_batches_byte_exact() {
    fd_batches(libc::SOCK_DGRAM);
}

#[test]
fn fd_refuses_stream_sockets_and_closed_descriptors() {
    let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
    let fd = a.into_raw_fd();
    let s = spec(TransportConfig::Fd(FdConfig { fd }), false);
    let err = transport::open(&s)
        .err()
        .expect("stream accepted")
        .to_string();
    assert!(err.contains("stream"), "{err}");
    // SAFETY: fd is ours and no longer used.
    unsafe { libc::close(fd) };
    let s = spec(TransportConfig::Fd(FdConfig { fd: 999 }), false);
    let err = transport::open(&s)
        .err()
        .expect("closed fd accepted")
        .to_string();
    assert!(err.contains("fd=999"), "{err}");
}
