//! Multi-queue devices (`queues=N`): the transports' per-pair descriptors and their steering
//! against the kernel (a multi-queue tap, an AF_PACKET fanout group, AF_XDP sockets on the
//! queues of a multi-queue veth), and the backend against
//! a real multi-queue vhost-user frontend (DPDK's testpmd, `net_virtio_user` with
//! `queues=2`). Frames are checked byte-exact and counted: each frame the host sends reaches
//! exactly one pair.

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::time::Duration;

use std::os::unix::net::UnixListener;

use vmm_net::backend::{BackendError, NetBackend, NetControl};
use vmm_net::config::{parse_spec, NetSpec};
use vmm_net::transport::{self, Steering, Transport};
use vmm_tests::batch::{recv_kept, send_at_once};
use vmm_tests::netns::NetNs;
use vmm_tests::peer::{ipv4_header, PacketPeer};
use vmm_tests::process::Daemon;
use vmm_tests::TempDir;

const BUF: usize = 10 + 65_550;
const HOST: [u8; 6] = [0x02, 0, 0, 0, 0, 0x31];
const GUEST: [u8; 6] = [0x02, 0, 0, 0, 0, 0x32];
/// Flows per round: with two pairs, all of them landing on one is a 2^-127 chance.
const FLOWS: u16 = 128;

/// A UDP frame of flow `port` (its source port), carrying `round` and `port` in its payload.
fn flow_frame(port: u16, round: u8) -> Vec<u8> {
    let payload = [0x5a, round, (port >> 8) as u8, port as u8, 0, 0, 0, 0];
    let mut f = Vec::with_capacity(14 + 20 + 8 + payload.len());
    f.extend_from_slice(&GUEST);
    f.extend_from_slice(&HOST);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let ip = ipv4_header(20 + 8 + payload.len(), 17, [10, 9, 0, 1], [10, 9, 0, 2]);
    f.extend_from_slice(&ip);
    f.extend_from_slice(&port.to_be_bytes());
    f.extend_from_slice(&7u16.to_be_bytes());
    f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(&payload);
    f
}

fn is_flow_frame(frame: &[u8], round: u8) -> bool {
    frame.len() == 14 + 20 + 8 + 8 && frame[12..14] == [8, 0] && frame[42..44] == [0x5a, round]
}

/// Sends one round of flows from `peer`; returns what each pair received (headers stripped),
/// checking every frame arrived byte-exact at exactly one pair.
fn round(peer: &PacketPeer, pairs: &mut [Box<dyn Transport>], round: u8) -> Vec<HashSet<Vec<u8>>> {
    let sent: Vec<Vec<u8>> = (0..FLOWS).map(|p| flow_frame(1000 + p, round)).collect();
    for f in &sent {
        peer.send(f);
    }
    collect(pairs, sent, round)
}

/// What each pair received of the frames `sent` in `round` (headers stripped), checking every
/// frame arrived byte-exact at exactly one pair.
fn collect(
    pairs: &mut [Box<dyn Transport>],
    sent: Vec<Vec<u8>>,
    round: u8,
) -> Vec<HashSet<Vec<u8>>> {
    let mut got: Vec<HashSet<Vec<u8>>> = Vec::new();
    let mut total = 0;
    for t in pairs.iter_mut() {
        let hdr = t.vnet_hdr_len();
        let frames: HashSet<Vec<u8>> = recv_kept(
            t.as_mut(),
            sent.len(),
            Duration::from_millis(500),
            BUF,
            |d| is_flow_frame(&d[hdr..], round),
        )
        .into_iter()
        .map(|d| d[hdr..].to_vec())
        .collect();
        total += frames.len();
        got.push(frames);
    }
    let count = sent.len();
    let all: HashSet<Vec<u8>> = got.iter().flatten().cloned().collect();
    let expected: HashSet<Vec<u8>> = sent.into_iter().collect();
    let stats: Vec<String> = pairs.iter().map(|t| t.stats().to_string()).collect();
    assert!(
        all == expected,
        "round {round}: frames lost or changed: {} of {count} arrived ({})",
        all.intersection(&expected).count(),
        stats.join("; ")
    );
    assert_eq!(total, count, "round {round}: a frame reached two pairs");
    got
}

fn open_pairs(spec: &str) -> Vec<Box<dyn Transport>> {
    let spec: NetSpec = parse_spec(spec).expect("spec");
    transport::open_queues(&spec).expect("open the pairs")
}

const SERVED: Steering = Steering {
    served: true,
    leading: 2,
};
const ONLY_PAIR_0: Steering = Steering {
    served: false,
    leading: 1,
};

/// Pair 1 not served yet: every flow goes to pair 0. Served: the flows spread over both
/// pairs, each flow staying on its pair from round to round. No longer served: pair 0 takes
/// them all again.
fn steered_by_service(peer: &PacketPeer, pairs: &mut [Box<dyn Transport>]) {
    let got = round(peer, pairs, 1);
    assert_eq!(got[1].len(), 0, "pair 1 got frames before it was served");

    pairs[1].steer(SERVED).expect("steer to pair 1");
    let got = round(peer, pairs, 2);
    assert!(
        !got[0].is_empty() && !got[1].is_empty(),
        "flows not spread: {} and {}",
        got[0].len(),
        got[1].len()
    );
    let again = round(peer, pairs, 2);
    assert_eq!(
        again, got,
        "flows moved between pairs from one round to the next"
    );

    pairs[1].steer(ONLY_PAIR_0).expect("steer back");
    let got = round(peer, pairs, 3);
    assert_eq!(got[0].len(), FLOWS as usize);
}

/// Raw, two pairs on a veth end: until pair 1 is served every frame goes to pair 0; then the
/// flows spread over both; steered back, pair 0 takes them all again.
#[test]
fn raw_fanout_spreads_flows_over_the_served_pairs_only() {
    let ns = NetNs::new();
    let (va, vb) = ns.veth_pair(None);
    ns.disable_ipv6();
    ns.enter(|| {
        let mut pairs = open_pairs(&format!("vec0:transport=raw,ifname={va},queues=2"));
        assert_eq!(pairs.len(), 2);
        let peer = PacketPeer::open(&vb, false);
        steered_by_service(&peer, &mut pairs);
    });
}

/// Tap, two queues of a new multi-queue tap: queue 1 starts detached and gets nothing; once
/// attached the kernel spreads the flows over both; detached again, queue 0 takes them all.
#[test]
fn tap_queues_attach_and_detach_as_their_pairs_are_served() {
    let ns = NetNs::new();
    ns.disable_ipv6();
    let (mut pairs, ifname) = ns.enter(|| {
        let pairs = open_pairs("vec0:transport=tap,queues=2");
        match pairs[0].queue_group() {
            transport::QueueGroup::Tap(ifname) => (pairs, ifname),
            other => panic!("not a tap: {other:?}"),
        }
    });
    ns.ip(&["link", "set", &ifname, "up"]);
    wait_up(&ns, &ifname);
    // Frames the host transmits on the tap reach its queues.
    let peer = ns.enter(|| PacketPeer::open(&ifname, false));
    steered_by_service(&peer, &mut pairs);
}

/// A persistent tap made without `multi_queue` is refused with `queues=2`, saying how to make
/// one that works.
#[test]
fn a_single_queue_tap_is_refused_with_queues_2() {
    let ns = NetNs::new();
    let tap = ns.tap(None);
    let err = ns.enter(|| {
        let spec = parse_spec(&format!("vec0:transport=tap,ifname={tap},queues=2")).unwrap();
        transport::open_queues(&spec).err().expect("opened")
    });
    let msg = err.to_string();
    assert!(
        msg.contains("queues=2") && msg.contains("multi_queue") && msg.contains(&tap),
        "{msg}"
    );
}

/// Pins the calling thread to `cpu`.
fn pin_to(cpu: usize) {
    // SAFETY: cpu_set_t is a plain bit array, valid all-zero; CPU_SET writes inside it and
    // sched_setaffinity reads it, for the calling thread (pid 0).
    let ok = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    };
    assert!(ok, "pin to CPU {cpu}: {}", std::io::Error::last_os_error());
}

/// Xdp, two pairs on a veth made with two queues each way: pair K's AF_XDP socket is bound
/// to receive queue K and the program redirects each queue's frames to its socket (a veth
/// hands a frame to the receive queue of the number of the transmit queue it left by). The
/// peer's flows, sent from both CPUs, reach both pairs, each frame exactly one and byte-exact,
/// each flow staying on its pair. Both pairs send. A third pair, for a queue the veth does
/// not have, is refused saying how many it has; the program leaves with the last pair.
#[test]
fn xdp_pairs_serve_the_receive_queues_of_their_numbers() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < 2 {
        eprintln!("SKIPPED: one CPU: frames cannot be sent on two veth queues (by CPU)");
        return;
    }
    let ns = NetNs::new();
    let va = vmm_tests::unique_name("xa");
    let vb = vmm_tests::unique_name("xb");
    let two = ["numtxqueues", "2", "numrxqueues", "2"];
    let mut add = vec!["link", "add", &va];
    add.extend(two);
    add.extend(["type", "veth", "peer", "name", &vb]);
    add.extend(two);
    ns.ip(&add);
    ns.ip(&["link", "set", &va, "up"]);
    ns.ip(&["link", "set", &vb, "up"]);
    ns.disable_ipv6();

    let err = ns.enter(|| {
        let spec = parse_spec(&format!("vec0:transport=xdp,ifname={va},queues=3")).unwrap();
        transport::open_queues(&spec)
            .err()
            .expect("three pairs on two queues")
    });
    let msg = err.to_string();
    assert!(
        msg.contains("queues=3") && msg.contains("it has 2") && msg.contains(&va),
        "{msg}"
    );

    let (mut pairs, peer) = ns.enter(|| {
        (
            open_pairs(&format!("vec0:transport=xdp,ifname={va},queues=2")),
            PacketPeer::open(&vb, false),
        )
    });
    assert_eq!(pairs.len(), 2);
    assert_eq!(pairs[0].queue_group(), pairs[1].queue_group());
    // Each pair's UMEM is half a single pair's: the device stays at 512 KiB.
    assert_eq!(
        pairs[0].buffer_bytes() + pairs[1].buffer_bytes(),
        512 * 1024
    );
    ns.wait_link_up(&vb);
    for pair in &mut pairs {
        pair.steer(SERVED).expect("steer");
    }

    // Half the flows from a thread on each CPU: whether the kernel picks a frame's transmit
    // queue by its CPU (AF_PACKET's way for years) or by its flow's hash, both queues carry
    // frames. Each frame reaches exactly one pair, and a flow stays on its pair.
    // 64 flows: a pair's receive ring holds 64 frames (the device's 128 chunks, halved), and
    // nobody reads until all are sent.
    let xdp_round = |pairs: &mut [Box<dyn Transport>], round: u8| {
        let sent: Vec<Vec<u8>> = (0..FLOWS / 2)
            .map(|p| flow_frame(2000 + p, round))
            .collect();
        std::thread::scope(|s| {
            for (cpu, half) in sent.chunks(sent.len() / 2).enumerate() {
                let peer = &peer;
                s.spawn(move || {
                    pin_to(cpu);
                    for f in half {
                        peer.send(f);
                    }
                });
            }
        });
        collect(pairs, sent, round)
    };
    let got = xdp_round(&mut pairs, 10);
    assert!(
        !got[0].is_empty() && !got[1].is_empty(),
        "both queues' frames reached one pair: {} and {}",
        got[0].len(),
        got[1].len()
    );
    let again = xdp_round(&mut pairs, 10);
    assert_eq!(
        again, got,
        "flows moved between pairs from one round to the next"
    );

    for (k, pair) in pairs.iter_mut().enumerate() {
        let frame = flow_frame(3000 + k as u16, 20);
        send_at_once(pair.as_mut(), std::slice::from_ref(&frame), BUF);
        let got = peer
            .recv_matching(Duration::from_secs(2), |d| is_flow_frame(d, 20))
            .unwrap_or_else(|| panic!("pair {k}'s frame did not arrive"));
        assert_eq!(got, frame, "pair {k}'s frame changed on the way");
    }

    let (_, link) = ns.run("ip", &["-d", "link", "show", "dev", &va]);
    assert!(link.contains("prog/xdp"), "no XDP program on {va}: {link}");
    drop(pairs);
    let (_, link) = ns.run("ip", &["-d", "link", "show", "dev", &va]);
    assert!(
        !link.contains("prog/xdp"),
        "the program outlived the pairs: {link}"
    );
}

/// Waits (up to 2 s) until `ifname` in `ns` is up with a real queueing discipline. A tap we
/// created reports its operational state as UNKNOWN, which [`NetNs::wait_link_up`] (made for
/// links that report UP) would wait on forever.
fn wait_up(ns: &NetNs, ifname: &str) {
    for _ in 0..100 {
        let (_, text) = ns.run("ip", &["-o", "link", "show", "dev", ifname]);
        if text.contains(",UP") && !text.contains("qdisc noop") {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{ifname} did not come up");
}

/// A backend on `spec` opened in `ns` and served in a thread of this process to the first
/// frontend that connects at `sock`, so the test can read its control handle.
fn serve_in_process(
    ns: &NetNs,
    spec: &str,
    sock: &std::path::Path,
) -> (
    NetControl,
    std::thread::JoinHandle<Result<(), BackendError>>,
) {
    let spec = parse_spec(spec).expect("spec");
    let backend = ns.enter(|| NetBackend::open(&spec).expect("open the backend"));
    let control = backend.control();
    let listener = UnixListener::bind(sock).expect("bind the vhost-user socket");
    let server = std::thread::spawn(move || {
        let (stream, _) = listener.accept().expect("accept testpmd");
        backend.serve_connection(stream, None)
    });
    (control, server)
}

/// dpdk-testpmd as a two-pair frontend (`net_virtio_user`, its own control queue) on
/// `sock`, forwarding in `mode` until a signal (SIGINT or SIGTERM: then it prints its
/// statistics).
fn testpmd(sock: &std::path::Path, mode: &str) -> Command {
    let mut cmd = Command::new("dpdk-testpmd");
    cmd.args(["-l", "0-1", "--no-huge", "-m", "512", "--no-pci"])
        .arg(format!("--file-prefix={}", vmm_tests::unique_name("tpmd")))
        .arg(format!(
            "--vdev=net_virtio_user0,path={},queues=2,cq=1,queue_size=256",
            sock.display()
        ))
        .args(["--", "--txq=2", "--rxq=2", "--total-num-mbufs=8192"])
        .arg(format!("--forward-mode={mode}"))
        .args(["--txpkts=64", "--auto-start", "--stats-period", "1"])
        .stdin(Stdio::null());
    cmd
}

/// Queue `q`'s count of `what` (`RX-packets`, `TX-packets`) in testpmd's final statistics.
fn queue_stat(text: &str, q: u32, what: &str) -> u64 {
    let head = format!("Forward Stats for RX Port= 0/Queue= {q} -> TX Port= 0/Queue= {q}");
    let at = text
        .find(&head)
        .unwrap_or_else(|| panic!("no stats for queue {q}:\n{text}"));
    let line = text[at..].lines().nth(1).unwrap_or("");
    line.split(&format!("{what}:"))
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {what} for queue {q}: {line}"))
}

/// DPDK's testpmd, a real multi-queue vhost-user frontend (`net_virtio_user`, `queues=2`,
/// its own control queue), transmits 64-byte frames on both pairs of our backend on raw,
/// served here in-process so its control handle can be read: the backend takes MQ and serves
/// both rings (each queue's count grows far past the ring's 256 slots, which only a backend
/// draining that ring allows), every frame it took reaches the veth's far end, the counters
/// are the sum over both pairs, and a capture running meanwhile is offered the frames of both
/// pairs. Both pairs' workers busy-poll (`busy_poll=50`), each under its own pair's lock, and
/// find testpmd's chains while they look.
#[test]
fn dpdk_testpmd_sends_on_two_queue_pairs() {
    let ns = NetNs::new();
    let (va, vb) = ns.veth_pair(None);
    ns.disable_ipv6();
    let dir = TempDir::new("mq");
    let sock = dir.path().join("net.sock");
    let (control, server) = serve_in_process(
        &ns,
        &format!("vec0:transport=raw,ifname={va},queues=2,busy_poll=50"),
        &sock,
    );
    let pcap = dir.path().join("both.pcap");
    control.capture_start(&pcap, None).expect("capture");
    let counter = |link: &str, name: &str| -> u64 {
        let path = format!("/sys/class/net/{link}/statistics/{name}");
        let (ok, out) = ns.run("cat", &[&path]);
        assert!(ok, "{out}");
        out.trim().parse().expect("a counter")
    };
    let rx = || counter(&vb, "rx_packets");
    let before = rx();
    // Three seconds of forwarding, counted from when testpmd says it forwards: its start-up
    // (EAL, 512 MiB without huge pages, the vhost-user handshake) takes seconds of its own on
    // a busy machine, and once took most of a fixed budget that included it.
    let mut pmd = Daemon::spawn(testpmd(&sock, "txonly"), dir.path().join("testpmd.log"));
    assert!(
        pmd.wait_for_log("packet forwarding - ports=", Duration::from_secs(60)),
        "dpdk-testpmd (resources/setup.sh installs dpdk-dev) exited before forwarding:\n{}",
        pmd.log()
    );
    std::thread::sleep(Duration::from_secs(3));
    // testpmd takes SIGTERM as SIGINT: it stops forwarding, prints its statistics and exits.
    let status = pmd.terminate(Duration::from_secs(20));
    let text = pmd.log();
    assert!(status.is_some(), "testpmd did not exit:\n{text}");
    server
        .join()
        .expect("the backend thread")
        .expect("serving testpmd");
    let (q0, q1) = (
        queue_stat(&text, 0, "TX-packets"),
        queue_stat(&text, 1, "TX-packets"),
    );
    assert!(
        q0 > 10_000 && q1 > 10_000,
        "a ring was not drained: queue 0 sent {q0}, queue 1 {q1}\n{text}"
    );
    let summary = control.capture_stop().expect("stop the capture");
    std::thread::sleep(Duration::from_millis(200));
    let received = rx() - before;
    let st = control.stats();
    let taken = st.get("tx_packets").expect("tx_packets");
    // Frames testpmd queued and the backend never took stay in the rings: 256 a queue at most.
    assert!(
        taken <= q0 + q1 && taken + 512 >= q0 + q1,
        "the backend counted {taken} of {} frames queued",
        q0 + q1
    );
    // Each frame taken is received, or counted as dropped: by us, or by the veth (its
    // peer's backlog full).
    let dropped = st.get("transport_tx_dropped").unwrap() + counter(&va, "tx_dropped");
    assert!(
        received <= taken && received + dropped >= taken,
        "the veth got {received} of {taken} frames sent, {dropped} dropped"
    );
    // More than one ring could hold, on top of all of queue 0's: pair 1's frames were offered.
    let offered = summary.frames_written + summary.frames_dropped + summary.frames_filtered;
    assert!(
        offered > q0 + 256,
        "the capture saw {offered} frames, queue 0 alone sent {q0}: {summary:?}"
    );
    assert!(st.get("batch_buffer_bytes").unwrap() <= 1 << 20, "{st:?}");
    assert!(st.get("busy_poll_finds").unwrap() > 0, "{st:?}");
}

/// The receive side with a real frontend: testpmd (`queues=2`, rxonly) polls both receive
/// rings while the host sends 128 flows, four times over, into the veth's far end. Our raw
/// fanout group spreads them over both pairs (the control handle's per-pair counts say so),
/// and every frame arrives once. Then, testpmd still running, the device swaps to raw on a
/// second veth: frames sent on the first one no longer arrive, the second one's flows spread
/// over both pairs again (the new fanout group is steered as the guest serves its pairs).
#[test]
fn dpdk_testpmd_receives_the_hosts_flows_on_two_queue_pairs_across_a_swap() {
    let ns = NetNs::new();
    let (va, vb) = ns.veth_pair(None);
    let (va2, vb2) = ns.veth_pair(None);
    ns.disable_ipv6();
    let dir = TempDir::new("mqrx");
    let sock = dir.path().join("net.sock");
    let (control, server) = serve_in_process(
        &ns,
        &format!("vec0:transport=raw,ifname={va},queues=2"),
        &sock,
    );
    let cmd = testpmd(&sock, "rxonly");
    let mut testpmd = Daemon::spawn(cmd, dir.path().join("testpmd.log"));
    testpmd.wait_for_log("packet forwarding - ports=", Duration::from_secs(20));
    let peer = ns.enter(|| PacketPeer::open(&vb, false));
    let peer2 = ns.enter(|| PacketPeer::open(&vb2, false));
    // Pair 0 delivers before the host's rounds start (testpmd enables both pairs as it
    // starts; the pause lets pair 1's worker see its ring served).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while control.stats().get("rx_packets") == Some(0) && std::time::Instant::now() < deadline {
        peer.send(&flow_frame(1, 0));
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(300));
    let rounds = 4u8;
    let sent = u64::from(FLOWS) * u64::from(rounds);
    // Sends the rounds from `peer`, first flow `first`; returns each pair's new frames.
    let spread = |peer: &PacketPeer, first: u16| -> Vec<u64> {
        let before = control.stats().pairs;
        for round in 1..=rounds {
            for port in 0..FLOWS {
                peer.send(&flow_frame(first + port, round));
            }
        }
        std::thread::sleep(Duration::from_millis(500));
        let after = control.stats().pairs;
        before
            .iter()
            .zip(&after)
            .map(|(b, a)| a.rx_packets - b.rx_packets)
            .collect()
    };
    let warmup = control.stats().get("rx_packets").unwrap();
    let on_a = spread(&peer, 2000);
    assert_eq!(on_a.iter().sum::<u64>(), sent, "per pair: {on_a:?}");
    assert!(on_a.iter().all(|&n| n > 0), "not spread: {on_a:?}");

    let spec2 = parse_spec(&format!("vec0:transport=raw,ifname={va2},queues=2")).unwrap();
    ns.enter(|| control.swap(spec2))
        .expect("swap to the second veth");
    let stale = spread(&peer, 3000);
    assert_eq!(stale, vec![0, 0], "frames on the old veth still arrive");
    let on_b = spread(&peer2, 4000);
    assert_eq!(
        on_b.iter().sum::<u64>(),
        sent,
        "per pair after the swap: {on_b:?}"
    );
    assert!(
        on_b.iter().all(|&n| n > 0),
        "not spread after the swap: {on_b:?}"
    );

    testpmd.terminate(Duration::from_secs(10));
    server
        .join()
        .expect("the backend thread")
        .expect("serving testpmd");
    let text = testpmd.log();
    let (q0, q1) = (
        queue_stat(&text, 0, "RX-packets"),
        queue_stat(&text, 1, "RX-packets"),
    );
    assert_eq!(
        q0 + q1,
        warmup + 2 * sent,
        "testpmd got {q0} + {q1}\n{text}"
    );
    let st = control.stats();
    assert_eq!(st.get("swaps"), Some(1));
    assert_eq!(st.get("rx_dropped_unserved"), Some(0), "{st:?}");
}
