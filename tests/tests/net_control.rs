//! The backend's control handle (`NetBackend::control`), exercised on a device that serves a
//! real vhost-user connection, driven from Rust as a guest driver drives it ([`Rig`]), over
//! real transports:
//!
//! - counters move by exactly the frames and bytes that crossed;
//! - a swap from one `fd` socketpair to another while the device serves: frames then cross on
//!   the new one byte-exact, both ways, and no longer on the old one (its descriptor closed);
//!   a swap to a missing interface fails naming it and the current transport keeps working;
//!   a swap from `tap` with offloads to `fd` is refused, and so is one that would change how
//!   the workers run (`busy_poll`, `affinity`) or the MTU; `tap` to `raw` in a namespace works;
//!   `raw` to `xdp` on the same veth and back, the XDP program there only while `xdp` serves;
//! - a capture with a filter holds exactly the matching frames of both directions, as tshark
//!   reads them; a bad filter is an error; with the capture off, the file does not change;
//! - a filter flash (`bpfflash=1`) on raw in a namespace: frames of a kind arrive, then, with
//!   a program from tcpdump's compiler that drops them, they do not while others still do and
//!   our own transmissions still do not come back; refused without `bpfflash=1`; a bad file
//!   is named and leaves the filter as it was.

use std::os::fd::IntoRawFd;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use vmm_net::backend::{CaptureError, FlashError, NetBackend, NetControl, SwapError};
use vmm_net::config::parse_spec;
use vmm_tests::netns::NetNs;
use vmm_tests::peer::{is_test_frame, test_frame, PacketPeer};
use vmm_tests::rig::{guest_sends_frame, transport_pair, used_frame, Rig, RINGS, RX_BUF};
use vmm_tests::TempDir;

/// Guest buffers of our own (the rig's are at 0x20_0000 and 0x30_0000).
const GUEST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x21];
const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x22];

/// A device serving a rig, over `spec`, with its control handle.
fn serve(spec: &str, peer: UnixDatagram) -> (Rig, NetControl) {
    let backend = NetBackend::open(&parse_spec(spec).expect("spec")).expect("backend");
    let ctl = backend.control();
    let (ours, theirs) = UnixStream::pair().unwrap();
    std::thread::spawn(move || backend.serve_connection(theirs, None));
    let mut rig = Rig::connect(ours, peer);
    rig.zero_rings();
    assert_eq!(rig.bring_up(RINGS), 0xf);
    (rig, ctl)
}

fn fd_spec(fd: std::os::fd::OwnedFd) -> String {
    format!("vec0:transport=fd,fd={}", fd.into_raw_fd())
}

/// A receive buffer is posted (entry `idx`), `send` puts a frame on the wire, and the frame
/// the guest got is returned.
fn guest_gets(rig: &mut Rig, idx: u16, send: impl FnOnce(&Rig)) -> Vec<u8> {
    rig.offer(0, idx, RX_BUF, 2048, 2);
    send(rig);
    rig.wait_used(0, idx + 1);
    used_frame(rig, idx)
}

#[test]
fn counters_move_by_what_crossed_and_a_swap_moves_the_device_to_the_new_transport() {
    let (theirs_a, peer_a) = transport_pair();
    let (mut rig, ctl) = serve(&fd_spec(theirs_a), peer_a);
    let before = ctl.stats();
    assert_eq!(before.transport, "fd");
    for n in ["rx_packets", "tx_packets", "rx_bytes", "tx_bytes", "swaps"] {
        assert_eq!(before.get(n), Some(0), "{n}");
    }
    // Two frames out (70 and 90 bytes), one in (1514), checked byte-exact by the rig.
    rig.transmit(0, 1);
    rig.receive(0, 2);
    rig.transmit(1, 3);
    let st = ctl.stats();
    assert_eq!(st.get("tx_packets"), Some(2), "{st:?}");
    assert_eq!(st.get("tx_bytes"), Some(70 + 90), "{st:?}");
    assert_eq!(st.get("rx_packets"), Some(1), "{st:?}");
    assert_eq!(st.get("rx_bytes"), Some(1514), "{st:?}");
    let dropped: u64 = st
        .counters
        .iter()
        .filter(|(n, _)| n.contains("dropped") || n.starts_with("bad_chain"))
        .map(|&(_, v)| v)
        .sum();
    assert_eq!(dropped, 0, "{st:?}");

    // Swap to socketpair B while the device serves.
    let (theirs_b, peer_b) = transport_pair();
    ctl.swap(parse_spec(&fd_spec(theirs_b)).unwrap())
        .expect("swap to B");
    let peer_a = std::mem::replace(&mut rig.peer, peer_b);
    rig.transmit(2, 4);
    rig.receive(1, 5);
    rig.transmit(3, 6);
    // A's end was closed with the old transport: end-of-file, no frame, and nothing sent
    // there can reach the guest any more.
    peer_a
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut buf = [0u8; 2048];
    assert_eq!(
        peer_a.recv(&mut buf).unwrap(),
        0,
        "a frame still came out on A"
    );
    assert!(peer_a
        .send(&test_frame(100, HOST_MAC, GUEST_MAC, 9))
        .is_err());
    let st = ctl.stats();
    assert_eq!(
        (st.get("tx_packets"), st.get("rx_packets"), st.get("swaps")),
        (Some(4), Some(2), Some(1)),
        "{st:?}"
    );
    assert_eq!(st.get("dropped_at_swap"), Some(0));

    // A swap to an interface that does not exist fails, naming it; B keeps serving.
    let e = ctl
        .swap(parse_spec("vec0:transport=raw,ifname=nosuchctl0").unwrap())
        .unwrap_err();
    assert!(matches!(e, SwapError::Open { .. }), "{e:?}");
    assert!(e.to_string().contains("nosuchctl0"), "{e}");
    rig.transmit(4, 7);
    rig.receive(2, 8);
    let st = ctl.stats();
    assert_eq!(
        (st.get("tx_packets"), st.get("rx_packets"), st.get("swaps")),
        (Some(5), Some(3), Some(1)),
        "{st:?}"
    );
}

/// A swap replaces the transport only: `busy_poll` and `affinity` are how the workers run
/// (started with the device) and the MTU is in the guest's config space, so a spec giving
/// other values is refused, naming the option and both values, and the device serves on;
/// the same values, or none, swap.
#[test]
fn a_swap_keeps_how_the_workers_run_and_refuses_to_change_it() {
    let cpu = vmm_net::backend::affinity::allowed().unwrap().cpus()[0];
    let with = |fd: std::os::fd::OwnedFd, opts: &str| format!("{}{opts}", fd_spec(fd));
    let (theirs_a, peer_a) = transport_pair();
    let (mut rig, ctl) = serve(
        &with(theirs_a, &format!(",busy_poll=50,affinity={cpu}")),
        peer_a,
    );
    rig.transmit(0, 1);
    for (opts, what, message) in [
        (
            ",busy_poll=20".to_string(),
            "busy_poll",
            "`busy_poll=20`: the device runs with busy_poll=50".to_string(),
        ),
        (
            ",busy_poll=0".to_string(),
            "busy_poll",
            "`busy_poll=0`: the device runs with busy_poll=50".to_string(),
        ),
        (
            format!(",busy_poll=50,affinity={cpu},affinity=1023"),
            "affinity",
            format!("`affinity={cpu},1023`: the device runs with affinity={cpu}"),
        ),
        (",mtu=9000".to_string(), "mtu", "mtu 9000".to_string()),
    ] {
        let (theirs, _peer) = transport_pair();
        let e = ctl
            .swap(parse_spec(&with(theirs, &opts)).unwrap())
            .unwrap_err();
        assert!(e.to_string().contains(&message), "{opts}: {e}");
        match e {
            SwapError::Workers { what: w, .. } | SwapError::GuestVisible { what: w, .. } => {
                assert_eq!(w, what, "{opts}")
            }
            other => panic!("{opts}: {other:?}"),
        }
        assert_eq!(ctl.stats().get("swaps"), Some(0));
    }
    // Still on A.
    rig.receive(0, 2);
    // Given again, or left out: the swap goes through, and frames cross on the new one.
    for (i, opts) in [format!(",busy_poll=50,affinity={cpu}"), String::new()]
        .iter()
        .enumerate()
    {
        let (theirs, peer) = transport_pair();
        ctl.swap(parse_spec(&with(theirs, opts)).unwrap())
            .unwrap_or_else(|e| panic!("{opts}: {e}"));
        rig.peer = peer;
        let i = i as u16;
        rig.transmit(1 + i, 3 + 2 * i as u8);
        rig.receive(1 + i, 4 + 2 * i as u8);
    }
    assert_eq!(ctl.stats().get("swaps"), Some(2));
}

/// The backend of `spec`, opened in `ns`, serving a rig (its rings up) from a thread of its own.
fn serve_in(ns: &NetNs, spec: &str) -> (NetControl, Rig) {
    let backend = ns
        .enter(|| NetBackend::open(&parse_spec(spec).unwrap()))
        .unwrap_or_else(|e| panic!("{spec}: {e}"));
    let ctl = backend.control();
    let (ours, theirs) = UnixStream::pair().unwrap();
    std::thread::spawn(move || backend.serve_connection(theirs, None));
    let (_unused, rig_peer) = transport_pair();
    let mut rig = Rig::connect(ours, rig_peer);
    rig.zero_rings();
    assert_eq!(rig.bring_up(RINGS), 0xf);
    (ctl, rig)
}

/// An Ethernet/IPv4/UDP frame from `sport` to `dport` with `payload` bytes.
fn udp_frame(src: [u8; 6], dst: [u8; 6], sport: u16, dport: u16, payload: usize) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&vmm_tests::peer::ipv4_header(
        28 + payload,
        17,
        [10, 7, 7, 1],
        [10, 7, 7, 2],
    ));
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&((8 + payload) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend((0..payload).map(|i| (i % 251) as u8));
    f
}

/// `tshark -r FILE -T fields -e frame.len -e udp.dstport`, one (len, port) per frame.
fn tshark(path: &Path) -> Vec<(usize, u16)> {
    let out = Command::new("tshark")
        .args(["-r"])
        .arg(path)
        .args(["-T", "fields", "-e", "frame.len", "-e", "udp.dstport"])
        .output()
        .expect("run tshark");
    assert!(
        out.status.success(),
        "tshark: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let mut f = l.split('\t');
            let len = f.next().unwrap().trim().parse().expect("frame.len");
            let port = f.next().unwrap_or("").trim().parse().unwrap_or(0);
            (len, port)
        })
        .collect()
}

#[test]
fn a_filtered_capture_holds_exactly_the_matching_frames_of_both_directions() {
    let dir = std::env::temp_dir().join(format!("net-control-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("cap.pcap");
    let (theirs, peer) = transport_pair();
    let (mut rig, ctl) = serve(&fd_spec(theirs), peer);

    let e = ctl.capture_start(&path, Some("udp port nine")).unwrap_err();
    assert!(matches!(e, CaptureError::Filter { .. }), "{e:?}");
    assert!(e.to_string().contains("`udp port nine`"), "{e}");
    assert!(!path.exists());

    ctl.capture_start(&path, Some("udp port 9999")).unwrap();
    // Guest to wire: 9999 (kept), 53 (not), 9999 (kept).
    let out = [
        udp_frame(GUEST_MAC, HOST_MAC, 4000, 9999, 10),
        udp_frame(GUEST_MAC, HOST_MAC, 4000, 53, 20),
        udp_frame(GUEST_MAC, HOST_MAC, 4001, 9999, 300),
    ];
    let mut buf = vec![0u8; 4096];
    for (i, f) in out.iter().enumerate() {
        guest_sends_frame(&mut rig, i as u16, f);
        let n = rig.peer.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], &f[..]);
    }
    // Wire to guest: 9999 (kept), 8888 (not), from port 9999 to 7 (kept: `port` is either).
    let inn = [
        udp_frame(HOST_MAC, GUEST_MAC, 5000, 9999, 1000),
        udp_frame(HOST_MAC, GUEST_MAC, 5000, 8888, 40),
        udp_frame(HOST_MAC, GUEST_MAC, 9999, 7, 50),
    ];
    for (i, f) in inn.iter().enumerate() {
        let got = guest_gets(&mut rig, i as u16, |rig| {
            rig.peer.send(f).unwrap();
        });
        assert_eq!(&got, f);
    }
    let live = ctl.stats();
    assert_eq!(live.get("capture_active"), Some(1));
    assert_eq!(live.get("capture_frames_filtered"), Some(2), "{live:?}");
    let s = ctl.capture_stop().unwrap();
    assert_eq!(
        (
            s.frames_written,
            s.frames_filtered,
            s.frames_dropped,
            s.write_errors
        ),
        (4, 2, 0, 0),
        "{s:?}"
    );
    let kept = [&out[0], &out[2], &inn[0], &inn[2]];
    assert_eq!(s.bytes, kept.iter().map(|f| f.len() as u64).sum::<u64>());
    let want: Vec<(usize, u16)> = kept
        .iter()
        .map(|f| (f.len(), u16::from_be_bytes([f[36], f[37]])))
        .collect();
    assert_eq!(tshark(&path), want);

    // Capture off: frames cross, the file stays as it was.
    let before = std::fs::read(&path).unwrap();
    guest_sends_frame(&mut rig, 3, &out[0]);
    let _ = rig.peer.recv(&mut buf).unwrap();
    let got = guest_gets(&mut rig, 3, |rig| {
        rig.peer.send(&inn[0]).unwrap();
    });
    assert_eq!(got, inn[0]);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(std::fs::read(&path).unwrap(), before, "the file changed");
    assert!(matches!(ctl.capture_stop(), Err(CaptureError::NotRunning)));
    let st = ctl.stats();
    assert_eq!(
        (st.get("tx_packets"), st.get("rx_packets")),
        (Some(4), Some(4))
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn offloads_the_guest_was_offered_pin_the_swap_and_tap_goes_to_raw_in_a_namespace() {
    let ns = NetNs::new();
    // No IPv6 on the links: their router solicitations and MLD reports would reach the guest
    // before our frames.
    ns.disable_ipv6();
    let tap = ns.tap(None);
    let (va, vb) = ns.veth_pair(None);
    let (ctl, mut rig) = serve_in(&ns, &format!("vec0:transport=tap,ifname={tap},gro=1"));
    ns.wait_link_up(&tap);

    // fd carries no virtio-net header: the guest was offered offloads it could not keep.
    let (theirs, _peer) = transport_pair();
    let e = ctl.swap(parse_spec(&fd_spec(theirs)).unwrap()).unwrap_err();
    assert!(matches!(e, SwapError::Offloads { .. }), "{e:?}");
    assert!(e.to_string().contains("GUEST_TSO4"), "{e}");
    // raw without gro=1 would offer less than the guest was offered, too.
    let e = ns
        .enter(|| ctl.swap(parse_spec(&format!("vec0:transport=raw,ifname={va}")).unwrap()))
        .unwrap_err();
    assert!(matches!(e, SwapError::Offloads { .. }), "{e:?}");
    assert_eq!(ctl.stats().transport, "tap");

    // Frames go out on the tap.
    let on_tap = ns.enter(|| PacketPeer::open(&tap, false));
    let frame = test_frame(200, GUEST_MAC, HOST_MAC, 1);
    guest_sends_frame(&mut rig, 0, &frame);
    let got = on_tap
        .recv_matching(Duration::from_secs(3), |f| is_test_frame(f, 0))
        .expect("frame on the tap");
    assert_eq!(got, frame);

    // raw with gro=1 on the veth: frames now leave there, byte-exact, and not on the tap.
    ns.enter(|| ctl.swap(parse_spec(&format!("vec0:transport=raw,ifname={va},gro=1")).unwrap()))
        .expect("swap to raw");
    assert_eq!(ctl.stats().transport, "raw");
    let on_vb = ns.enter(|| PacketPeer::open(&vb, false));
    let frame = test_frame(300, GUEST_MAC, HOST_MAC, 2);
    guest_sends_frame(&mut rig, 1, &frame);
    let got = on_vb
        .recv_matching(Duration::from_secs(3), |f| is_test_frame(f, 0))
        .expect("frame on the veth");
    assert_eq!(got, frame);
    assert!(
        on_tap
            .recv_matching(Duration::from_millis(300), |f| is_test_frame(f, 0))
            .is_none(),
        "a frame still left on the tap"
    );
    // And in: a frame sent from the veth's far end reaches the guest.
    let back = test_frame(400, HOST_MAC, GUEST_MAC, 3);
    let got = guest_gets(&mut rig, 0, |_| on_vb.send(&back));
    assert_eq!(got, back);
    let st = ctl.stats();
    assert_eq!(
        (st.get("tx_packets"), st.get("rx_packets"), st.get("swaps")),
        (Some(2), Some(1), Some(1)),
        "{st:?}"
    );
}

/// Whether an XDP program is attached to `ifname` in `ns`.
fn has_xdp(ns: &NetNs, ifname: &str) -> bool {
    let (ok, out) = ns.run("ip", &["-d", "link", "show", "dev", ifname]);
    assert!(ok, "{out}");
    out.contains("prog/xdp")
}

/// One frame each way between the guest and `peer` (the veth's far end), byte-exact.
fn one_each_way(rig: &mut Rig, peer: &PacketPeer, idx: u16, seed: u8) {
    let frame = test_frame(300, GUEST_MAC, HOST_MAC, seed);
    guest_sends_frame(rig, idx, &frame);
    let got = peer
        .recv_matching(Duration::from_secs(3), |f| is_test_frame(f, 0))
        .expect("frame on the veth");
    assert_eq!(got, frame);
    let back = test_frame(400, HOST_MAC, GUEST_MAC, seed.wrapping_add(1));
    let got = guest_gets(rig, idx, |_| peer.send(&back));
    assert_eq!(got, back);
}

/// `raw` to `xdp` on the same veth while the device serves, and back, and to `xdp` again at
/// once: frames cross both ways after each swap, the XDP program is on the interface only
/// while `xdp` serves, and a new `xdp` gets the queue the last one held.
#[test]
fn raw_swaps_to_xdp_on_the_same_veth_and_back() {
    let ns = NetNs::new();
    ns.disable_ipv6();
    let (va, vb) = ns.veth_pair(None);
    let (ctl, mut rig) = serve_in(&ns, &format!("vec0:transport=raw,ifname={va}"));
    let peer = ns.enter(|| PacketPeer::open(&vb, false));
    one_each_way(&mut rig, &peer, 0, 10);
    for (i, transport) in ["xdp", "raw", "xdp"].into_iter().enumerate() {
        let spec = format!("vec0:transport={transport},ifname={va}");
        ns.enter(|| ctl.swap(parse_spec(&spec).unwrap()))
            .unwrap_or_else(|e| panic!("swap to {transport}: {e}"));
        assert_eq!(ctl.stats().transport, transport);
        assert_eq!(
            has_xdp(&ns, &va),
            transport == "xdp",
            "after the swap to {transport}"
        );
        one_each_way(&mut rig, &peer, 1 + i as u16, 20 + 2 * i as u8);
    }
    assert_eq!(ctl.stats().get("swaps"), Some(3));
}

/// Writes tcpdump's compilation of `expr` (for Ethernet) as the file `bpffile=` reads: one
/// `struct sock_filter` (u16 code, u8 jt, u8 jf, u32 k, host byte order) per instruction.
fn write_bpf(path: &Path, expr: &str) {
    let out = Command::new("tcpdump")
        .args(["-y", "EN10MB", "-ddd", expr])
        .output()
        .expect("run tcpdump (resources/setup.sh installs it)");
    assert!(
        out.status.success(),
        "tcpdump -ddd {expr}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let count: usize = lines.next().expect("count").trim().parse().expect("count");
    let mut bytes = Vec::new();
    for line in lines.take(count) {
        let f: Vec<u32> = line
            .split_whitespace()
            .map(|w| w.parse().expect("number"))
            .collect();
        assert_eq!(f.len(), 4, "{line}");
        bytes.extend_from_slice(&(f[0] as u16).to_ne_bytes());
        bytes.extend_from_slice(&[f[1] as u8, f[2] as u8]);
        bytes.extend_from_slice(&f[3].to_ne_bytes());
    }
    assert_eq!(bytes.len(), 8 * count);
    std::fs::write(path, bytes).expect("write the program");
}

#[test]
fn a_flashed_filter_replaces_the_raw_receive_filter_only_with_bpfflash() {
    let ns = NetNs::new();
    ns.disable_ipv6();
    let (va, vb) = ns.veth_pair(None);
    let dir = TempDir::new("bf");
    let drop_9999 = dir.path().join("not-9999.bpf");
    write_bpf(&drop_9999, "not udp port 9999");

    // Without bpfflash=1 the filter stays as configured.
    let plain = ns
        .enter(|| {
            NetBackend::open(&parse_spec(&format!("vec0:transport=raw,ifname={va}")).unwrap())
        })
        .expect("raw backend");
    let e = plain.control().flash_bpf(&drop_9999).unwrap_err();
    assert!(matches!(e, FlashError::NotAllowed { .. }), "{e:?}");
    assert!(e.to_string().contains("`bpfflash=1` not set"), "{e}");
    drop(plain);

    let (ctl, mut rig) = serve_in(&ns, &format!("vec0:transport=raw,ifname={va},bpfflash=1"));
    let on_vb = ns.enter(|| PacketPeer::open(&vb, false));

    // Before: frames to port 9999 (X) and to 53 (Y) both reach the guest, byte-exact.
    let x = udp_frame(HOST_MAC, GUEST_MAC, 5000, 9999, 100);
    let y = udp_frame(HOST_MAC, GUEST_MAC, 5000, 53, 120);
    assert_eq!(guest_gets(&mut rig, 0, |_| on_vb.send(&x)), x);
    assert_eq!(guest_gets(&mut rig, 1, |_| on_vb.send(&y)), y);

    ctl.flash_bpf(&drop_9999).expect("flash");
    // After: X is dropped in the kernel, Y still arrives: the first frame the guest gets
    // after sending X then Y is Y.
    let got = guest_gets(&mut rig, 2, |_| {
        on_vb.send(&x);
        on_vb.send(&y);
    });
    assert_eq!(got, y, "a frame to port 9999 passed the flashed filter");
    // Our own transmissions still stay out: the guest sends a frame (it leaves on the
    // veth), then the next frame it gets is the one sent from the far end, not an echo.
    let out = udp_frame(GUEST_MAC, HOST_MAC, 4000, 7, 80);
    guest_sends_frame(&mut rig, 0, &out);
    let left = on_vb
        .recv_matching(Duration::from_secs(3), |f| f == out.as_slice())
        .expect("the guest's frame on the veth");
    assert_eq!(left, out);
    let z = udp_frame(HOST_MAC, GUEST_MAC, 5001, 54, 60);
    assert_eq!(guest_gets(&mut rig, 3, |_| on_vb.send(&z)), z);

    // A bad file is named and changes nothing: X is still dropped.
    let bad = dir.path().join("bad.bpf");
    std::fs::write(&bad, [1u8, 2, 3]).unwrap();
    let e = ctl.flash_bpf(&bad).unwrap_err();
    assert!(matches!(e, FlashError::Program { .. }), "{e:?}");
    assert!(e.to_string().contains(&bad.display().to_string()), "{e}");
    let e = ctl.flash_bpf(&dir.path().join("missing.bpf")).unwrap_err();
    assert!(e.to_string().contains("missing.bpf"), "{e}");
    let got = guest_gets(&mut rig, 4, |_| {
        on_vb.send(&x);
        on_vb.send(&z);
    });
    assert_eq!(
        got, z,
        "the flashed filter did not stay after a refused flash"
    );

    // Flashing a program that passes everything lets X through again.
    let all = dir.path().join("all.bpf");
    std::fs::write(&all, vmm_net::transport::BpfProgram::ret(u32::MAX)).unwrap();
    ctl.flash_bpf(&all).expect("flash pass-all");
    assert_eq!(guest_gets(&mut rig, 5, |_| on_vb.send(&x)), x);
    let st = ctl.stats();
    assert_eq!(
        (st.get("rx_packets"), st.get("tx_packets")),
        (Some(6), Some(1)),
        "{st:?}"
    );
}
