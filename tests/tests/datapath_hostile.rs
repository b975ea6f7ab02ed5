//! What a guest or a wire peer sends cannot crash, hang or silently drop: each class of hostile
//! input against the real `vmm net-backend` process, driven by a frontend written here (the
//! VMM's virtio-pci device over a vhost-user connection, descriptors written by hand):
//!
//! - a peer that shuts down its end of an `fd` seqpacket socket: the backend stops reading it
//!   (one warning, counted), burns no CPU, keeps transmitting and stops on SIGTERM;
//! - looping, over-MTU and legal long transmit chains, receive buffers smaller than the
//!   header: refused and counted by reason, or delivered with the right `num_buffers`, and
//!   frames still cross both ways byte-exact afterwards;
//! - a burst the backend cannot drain (the guest posts no receive buffers): the frames the
//!   kernel dropped on the backend's socket reach its counters, and every frame sent is
//!   either in the guest or in that counter (AF_PACKET's `tp_drops` on `raw`; a UDP
//!   socket's drops on `ucast`, equal to what `/proc/net/udp` shows);
//! - a host that takes frames slower than the guest sends them: what the transport refused
//!   leaves, in order and byte-exact, when the host takes more, with no kick from the guest.

use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};
use vmm_devices::pci::PciDevice;
use vmm_devices::virtio_pci::{VirtioPciDevice, MSIX_TABLE_OFFSET};
use vmm_devices::BusDevice;
use vmm_tests::netns::NetNs;
use vmm_tests::peer::{test_frame, PacketPeer, TEST_ETHERTYPE};
use vmm_tests::process::{fd_net_backend, net_backend, Daemon};
use vmm_tests::rig::net_device;
use vmm_tests::{require_root, TempDir};
use vmm_vmm::GuestRam;

const HDR: usize = 12;
const QSIZE: u16 = 32;
const RINGS: u64 = 0x10_0000;
const TX_BUF: u64 = 0x20_0000;
const RX_BUF: u64 = 0x40_0000;
/// Receive buffers are this far apart.
const RX_STRIDE: u64 = 0x1000;
const GUEST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x31];
const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x32];
const VERSION_1: u64 = 1 << 32;
const MRG_RXBUF: u64 = 1 << 15;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;

/// A frontend of the backend process at a socket: a virtio-pci net device and its guest RAM,
/// with the rings' state kept here (next avail index per queue, descriptors written by hand).
struct Front {
    dev: VirtioPciDevice,
    ram: GuestRam,
    avail: [u16; 2],
}

impl Front {
    /// Connects and brings the device up with `features` (VERSION_1 is always added).
    fn connect(sock: &Path, features: u64) -> Front {
        let stream = UnixStream::connect(sock).expect("connect to the backend");
        let (dev, ram) = net_device(stream);
        let mut f = Front {
            dev,
            ram,
            avail: [0; 2],
        };
        f.dev.write_config(1, 0, &[0x06, 0]);
        f.dev.write_config(0x21, 2, &[0, 0x80]);
        f.w(MSIX_TABLE_OFFSET + 12, 4, 1);
        let features = features | VERSION_1;
        f.w(0x14, 1, 0);
        f.w(0x14, 1, 3);
        for sel in 0..2u64 {
            f.w(0x08, 4, sel);
            f.w(0x0c, 4, (features >> (32 * sel)) & 0xffff_ffff);
        }
        f.w(0x14, 1, 0xb);
        for q in 0..2u64 {
            let base = RINGS + q * 0x3000;
            f.w(0x16, 2, q);
            f.w(0x18, 2, u64::from(QSIZE));
            f.w(0x20, 8, base);
            f.w(0x28, 8, base + 0x1000);
            f.w(0x30, 8, base + 0x2000);
            f.w(0x1c, 2, 1);
        }
        f.w(0x14, 1, 0xf);
        let mut s = [0u8; 1];
        f.dev.read(0x14, &mut s);
        assert_eq!(s[0], 0xf, "device status");
        f
    }

    fn w(&mut self, off: u64, len: usize, v: u64) {
        self.dev.write(off, &v.to_le_bytes()[..len]);
    }

    fn write(&self, addr: u64, bytes: &[u8]) {
        self.ram
            .memory()
            .write_slice(bytes, GuestAddress(addr))
            .unwrap();
    }

    fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.ram
            .memory()
            .read_slice(&mut v, GuestAddress(addr))
            .unwrap();
        v
    }

    /// Writes descriptor `i` of queue `q`.
    fn desc(&self, q: u64, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        self.write(RINGS + q * 0x3000 + u64::from(i) * 16, &d);
    }

    /// Makes the chains headed by `heads` available on queue `q` and kicks. Returns the used
    /// index to wait for.
    fn publish(&mut self, q: u64, heads: &[u16]) -> u16 {
        let avail = RINGS + q * 0x3000 + 0x1000;
        for &h in heads {
            let slot = self.avail[q as usize] % QSIZE;
            self.write(avail + 4 + 2 * u64::from(slot), &h.to_le_bytes());
            self.avail[q as usize] = self.avail[q as usize].wrapping_add(1);
        }
        self.write(avail + 2, &self.avail[q as usize].to_le_bytes());
        let (_, kick) = self.dev.notifiers().nth(q as usize).unwrap();
        kick.write(1).unwrap();
        self.avail[q as usize]
    }

    fn used_idx(&self, q: u64) -> u16 {
        let b = self.read(RINGS + q * 0x3000 + 0x2000 + 2, 2);
        u16::from_le_bytes([b[0], b[1]])
    }

    /// Entry `i` of queue `q`'s used ring: (head, length).
    fn used(&self, q: u64, i: u16) -> (u32, u32) {
        let b = self.read(
            RINGS + q * 0x3000 + 0x2000 + 4 + 8 * u64::from(i % QSIZE),
            8,
        );
        (
            u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
        )
    }

    fn wait_used(&self, q: u64, want: u16, backend: &Daemon) {
        let deadline = Instant::now() + Duration::from_secs(3);
        while self.used_idx(q) != want {
            assert!(
                Instant::now() < deadline,
                "queue {q}: used index stuck at {} (want {want})\n{}",
                self.used_idx(q),
                backend.log()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// A frame (header of zeros + `frame`) in one read-only descriptor 0; waits for its use.
    fn transmit(&mut self, frame: &[u8], backend: &Daemon) {
        let mut buf = vec![0u8; HDR];
        buf.extend_from_slice(frame);
        self.write(TX_BUF, &buf);
        self.desc(1, 0, TX_BUF, buf.len() as u32, 0, 0);
        let want = self.publish(1, &[0]);
        self.wait_used(1, want, backend);
    }

    /// Offers `count` receive chains of one `size`-byte buffer each (descriptors 0..count).
    fn offer_rx(&mut self, count: u16, size: u32) -> u16 {
        for i in 0..count {
            let addr = RX_BUF + u64::from(i) * RX_STRIDE;
            self.desc(0, i, addr, size, F_WRITE, 0);
        }
        let heads: Vec<u16> = (0..count).collect();
        self.publish(0, &heads)
    }
}

/// CPU time (user + system) of process `pid` so far, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// Stops the backend with SIGTERM (it must exit in time) and returns its log.
fn stop(mut backend: Daemon) -> String {
    let status = backend.terminate(Duration::from_secs(5));
    let log = backend.log();
    let status = status.unwrap_or_else(|| panic!("SIGTERM did not stop the backend:\n{log}"));
    assert!(status.success(), "exit status {status:?}:\n{log}");
    log
}

/// The last summary line the backend logged.
fn summary(log: &str) -> &str {
    log.lines()
        .rev()
        .find(|l| l.contains("stopped;"))
        .unwrap_or_else(|| panic!("no summary line:\n{log}"))
}

/// The number after `name ` in `line` (a counter of the summary line).
fn counter(line: &str, name: &str) -> u64 {
    let at = line
        .find(&format!("{name} "))
        .unwrap_or_else(|| panic!("no `{name}` in: {line}"));
    line[at + name.len() + 1..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number after `{name}` in: {line}"))
}

/// Receives a frame in a 2048-byte buffer and checks it byte-exact, `num_buffers` 1.
fn receive_one(front: &mut Front, peer: &UnixDatagram, frame: &[u8], backend: &Daemon) {
    let want = front.offer_rx(1, 2048);
    peer.send(frame).unwrap();
    front.wait_used(0, want, backend);
    let (id, len) = front.used(0, want.wrapping_sub(1));
    assert_eq!((id, len as usize), (0, HDR + frame.len()));
    let got = front.read(RX_BUF, HDR + frame.len());
    assert_eq!(&got[10..12], &1u16.to_le_bytes(), "num_buffers");
    assert_eq!(&got[HDR..], frame, "received frame");
}

fn transmit_one(front: &mut Front, peer: &UnixDatagram, frame: &[u8], backend: &Daemon) {
    front.transmit(frame, backend);
    let mut out = vec![0u8; 4096];
    let n = peer.recv(&mut out).expect("frame out of the transport");
    assert_eq!(&out[..n], frame, "transmitted frame");
}

#[test]
fn fd_peer_hangup_is_noticed_once_and_does_not_spin() {
    let dir = TempDir::new("dh-eof");
    let (theirs, peer) = vmm_tests::rig::transport_pair();
    let (backend, sock) = fd_net_backend(dir.path(), theirs, None);
    let mut front = Front::connect(&sock, 0);
    transmit_one(
        &mut front,
        &peer,
        &test_frame(60, GUEST_MAC, HOST_MAC, 1),
        &backend,
    );
    receive_one(
        &mut front,
        &peer,
        &test_frame(1514, HOST_MAC, GUEST_MAC, 2),
        &backend,
    );

    // Buffers posted, then the peer's end-of-file: the backend used to receive empty
    // messages forever, at 100 % CPU with the datapath locked.
    front.offer_rx(4, 2048);
    peer.shutdown(std::net::Shutdown::Write).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let before = cpu_ticks(backend.pid());
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_ticks(backend.pid()) - before;
    assert!(
        used < 20,
        "backend used {used} ticks of CPU in 1 s after the peer's end-of-file\n{}",
        backend.log()
    );

    // Half-closed: the peer still reads, so frames from the guest still reach it.
    transmit_one(
        &mut front,
        &peer,
        &test_frame(200, GUEST_MAC, HOST_MAC, 3),
        &backend,
    );
    let log = stop(backend);
    assert_eq!(
        log.matches("the peer hung up").count(),
        1,
        "one warning:\n{log}"
    );
    let line = summary(&log);
    assert_eq!(counter(line, "peer hung up"), 1, "{line}");
    assert_eq!(counter(line, "tx"), 2, "{line}");
    assert_eq!(counter(line, "rx"), 1, "{line}");
}

#[test]
fn hostile_chains_are_refused_and_counted_then_frames_flow() {
    let dir = TempDir::new("dh-chains");
    let (theirs, peer) = vmm_tests::rig::transport_pair();
    peer.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let (backend, sock) = fd_net_backend(dir.path(), theirs, None);
    let mut front = Front::connect(&sock, MRG_RXBUF);
    let mut out = vec![0u8; 65_536];

    // A loop (0 -> 1 -> 0) of 100-byte buffers: used to leave as one 3.2 KB frame.
    front.write(TX_BUF, &[0u8; HDR]);
    front.desc(1, 0, TX_BUF, 100, F_NEXT, 1);
    front.desc(1, 1, TX_BUF, 100, F_NEXT, 0);
    let want = front.publish(1, &[0]);
    front.wait_used(1, want, &backend);
    assert_eq!(front.used(1, want - 1), (0, 0));
    // A frame over the MTU (2000 bytes, no GSO) in one buffer.
    let big = test_frame(2000, GUEST_MAC, HOST_MAC, 4);
    let mut buf = vec![0u8; HDR];
    buf.extend_from_slice(&big);
    front.write(TX_BUF, &buf);
    front.desc(1, 0, TX_BUF, buf.len() as u32, 0, 0);
    let want = front.publish(1, &[0]);
    front.wait_used(1, want, &backend);
    assert!(
        peer.recv(&mut out).is_err(),
        "nothing of the loop or the oversize frame may leave"
    );

    // A legal chain as long as the queue: header + 31 pieces of 16 bytes, one frame.
    let long = test_frame(12 + 31 * 16 - HDR, GUEST_MAC, HOST_MAC, 5);
    let mut buf = vec![0u8; HDR];
    buf.extend_from_slice(&long);
    front.write(TX_BUF, &buf);
    for i in 0..QSIZE {
        let last = i == QSIZE - 1;
        let len = if i == 0 { HDR as u32 } else { 16 };
        let addr = if i == 0 {
            TX_BUF
        } else {
            TX_BUF + HDR as u64 + u64::from(i - 1) * 16
        };
        front.desc(1, i, addr, len, if last { 0 } else { F_NEXT }, i + 1);
    }
    let want = front.publish(1, &[0]);
    front.wait_used(1, want, &backend);
    let n = peer.recv(&mut out).expect("the long legal chain leaves");
    assert_eq!(&out[..n], &long[..]);

    // Receive buffers of 4 bytes (smaller than the header) with MRG_RXBUF: the frame takes
    // 18 of them and num_buffers, in the third, says 18.
    let frame = test_frame(60, HOST_MAC, GUEST_MAC, 6);
    let want = front.offer_rx(18, 4);
    peer.send(&frame).unwrap();
    front.wait_used(0, want, &backend);
    let mut got = Vec::new();
    for i in 0..18u16 {
        let (id, len) = front.used(0, want - 18 + i);
        assert_eq!((id, len), (u32::from(i), 4));
        got.extend(front.read(RX_BUF + u64::from(i) * RX_STRIDE, 4));
    }
    assert_eq!(&got[10..12], &18u16.to_le_bytes(), "num_buffers");
    assert_eq!(&got[HDR..], &frame[..]);

    // A well-behaved frontend's frames still cross both ways byte-exact.
    peer.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    transmit_one(
        &mut front,
        &peer,
        &test_frame(1514, GUEST_MAC, HOST_MAC, 7),
        &backend,
    );
    receive_one(
        &mut front,
        &peer,
        &test_frame(1514, HOST_MAC, GUEST_MAC, 8),
        &backend,
    );
    let log = stop(backend);
    let line = summary(&log);
    assert_eq!(counter(line, "unterminated"), 1, "{line}");
    assert_eq!(counter(line, "over-mtu"), 1, "{line}");
    assert_eq!(counter(line, "tx"), 2, "{line}");
    assert_eq!(counter(line, "rx"), 2, "{line}");
}

/// A host that takes frames slower than the guest sends them: the backend keeps what the
/// transport refuses and sends it when the host takes more, woken by the transport alone (no
/// kick from the guest, which has nothing more to send), in order and byte-exact. The
/// backend's end of the socket pair gets an 8 KiB send buffer (the kernel books 16 KiB, room
/// for 8 of these frames), so every burst of 32 full-size frames meets a full socket; the
/// peer then reads slowly. Three bursts, so the wake-up is armed again after each backlog
/// clears. (With the transport's `EPOLLOUT` not watched, the first burst stops at frame 8.)
#[test]
fn tx_refused_by_a_full_host_leaves_when_the_host_takes_more() {
    use std::os::fd::AsRawFd;
    const BURSTS: usize = 3;
    let dir = TempDir::new("dh-full");
    let (theirs, peer) = vmm_tests::rig::transport_pair();
    vmm_net::transport::setsockopt_int(
        theirs.as_raw_fd(),
        libc::SOL_SOCKET,
        libc::SO_SNDBUF,
        8 * 1024,
    )
    .expect("SO_SNDBUF");
    let (backend, sock) = fd_net_backend(dir.path(), theirs, None);
    let mut front = Front::connect(&sock, 0);
    let mut out = vec![0u8; 4096];
    for burst in 0..BURSTS {
        let frames: Vec<Vec<u8>> = (0..QSIZE)
            .map(|i| {
                let mut f = test_frame(1514, GUEST_MAC, HOST_MAC, i as u8);
                f[14..18].copy_from_slice(&((burst * 100 + usize::from(i)) as u32).to_be_bytes());
                f
            })
            .collect();
        for (i, f) in frames.iter().enumerate() {
            let addr = TX_BUF + i as u64 * 0x800;
            let mut buf = vec![0u8; HDR];
            buf.extend_from_slice(f);
            front.write(addr, &buf);
            front.desc(1, i as u16, addr, buf.len() as u32, 0, 0);
        }
        let heads: Vec<u16> = (0..QSIZE).collect();
        let want = front.publish(1, &heads);
        // The backend sends what fits and waits; nothing more comes from the guest.
        std::thread::sleep(Duration::from_millis(200));
        for (i, f) in frames.iter().enumerate() {
            let n = peer.recv(&mut out).unwrap_or_else(|e| {
                panic!(
                    "burst {burst}: frame {i} of {QSIZE} never left ({e}); tx used index {} \
                     of {want}\n{}",
                    front.used_idx(1),
                    backend.log()
                )
            });
            assert!(out[..n] == f[..], "burst {burst}: frame {i} differs");
            // A slow host: a pause now and then, so the backend meets a full socket again.
            if i % 8 == 7 {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        front.wait_used(1, want, &backend);
    }
    assert!(
        peer.recv(&mut out).is_err(),
        "a frame more than the guest sent"
    );
    let log = stop(backend);
    let line = summary(&log);
    assert_eq!(
        counter(line, "tx"),
        (BURSTS * usize::from(QSIZE)) as u64,
        "{line}"
    );
}

/// Reads a frame from receive buffer `i` as the guest would: (used length, frame).
fn rx_frame(front: &Front, slot: u16) -> Vec<u8> {
    let (id, len) = front.used(0, slot);
    let addr = RX_BUF + u64::from(id) * RX_STRIDE;
    front.read(addr + HDR as u64, (len as usize).saturating_sub(HDR))
}

/// A namespace without IPv6 chatter, so the only frames are the test's.
fn quiet_ns() -> NetNs {
    require_root();
    let ns = NetNs::new();
    ns.disable_ipv6();
    ns
}

/// A backend serving `spec` in `ns` whose guest posts no receive buffers while `burst` sends
/// `sent` numbered frames from the host side: whatever the kernel could not queue for the
/// backend must appear in its summary as kernel drops, and every frame must be either in the
/// guest (once buffers are posted) or counted.
fn burst_is_delivered_or_counted(ns: &NetNs, spec: &str, sent: usize, burst: impl FnOnce()) {
    let dir = TempDir::new("dh-kdrop");
    let sock = dir.path().join("net.sock");
    let backend = net_backend(Some(ns.name()), &sock, spec, dir.path().join("backend.log"));
    let mut front = Front::connect(&sock, MRG_RXBUF);
    burst();
    let seen = drain_rx(&mut front);
    let log = stop(backend);
    let line = summary(&log);
    let dropped = counter(line, "rx kernel drops (queue full)");
    assert!(dropped > 0, "the burst must have overflowed: {line}");
    assert_eq!(
        seen.len() as u64 + dropped,
        sent as u64,
        "every frame is in the guest or counted as a kernel drop: {line}"
    );
}

#[test]
fn kernel_drops_on_a_full_raw_socket_reach_the_counters() {
    let ns = quiet_ns();
    let (peer_if, ours_if) = ns.veth_pair(None);
    // The guest posts no receive buffers: the backend takes one batch and then leaves the
    // socket alone (backpressure), so the burst overflows its receive queue in the kernel.
    // The socket asks for 4 MiB (the kernel books 8 MiB), some 3,500 frames of 1514 bytes.
    const SENT: usize = 8000;
    let spec = format!("vec0:transport=raw,ifname={ours_if}");
    burst_is_delivered_or_counted(&ns, &spec, SENT, || {
        ns.enter(|| {
            let peer = PacketPeer::open(&peer_if, false);
            for i in 0..SENT {
                peer.send(&numbered_frame(i));
                // Paced so that the veth's own backlog never overflows: drops are the
                // socket's.
                if i % 50 == 49 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        })
    });
}

/// The same on `tap`: the frames the host sends towards a full tap queue are dropped by the
/// kernel and counted in the tap's `tx_dropped`, which the backend reports.
#[test]
fn kernel_drops_on_a_full_tap_queue_reach_the_counters() {
    let ns = quiet_ns();
    let tap = ns.tap(None);
    // More than the tap's queue (txqueuelen 1000) holds, with no guest buffers posted.
    const SENT: usize = 1500;
    let spec = format!("vec0:transport=tap,ifname={tap}");
    burst_is_delivered_or_counted(&ns, &spec, SENT, || {
        ns.wait_link_up(&tap);
        ns.enter(|| {
            let peer = PacketPeer::open(&tap, false);
            for i in 0..SENT {
                peer.send(&numbered_frame(i));
            }
        })
    });
}

/// Hands a ring of receive buffers to the guest at a time and collects the test frames that
/// arrive (by the sequence number in their first payload bytes), until a round is not used up.
fn drain_rx(front: &mut Front) -> std::collections::BTreeSet<u32> {
    let mut seen = std::collections::BTreeSet::new();
    loop {
        let before = front.used_idx(0);
        let full = front.offer_rx(QSIZE, 2048);
        let (mut last, mut quiet) = (before, Instant::now());
        while last != full && quiet.elapsed() < Duration::from_millis(300) {
            std::thread::sleep(Duration::from_millis(2));
            let now = front.used_idx(0);
            if now != last {
                (last, quiet) = (now, Instant::now());
            }
        }
        for slot in before..last {
            let f = rx_frame(front, slot);
            if f.len() >= 18 && f[12..14] == TEST_ETHERTYPE {
                seen.insert(u32::from_be_bytes([f[14], f[15], f[16], f[17]]));
            }
        }
        // The descriptors are reused only once the whole ring came back.
        if last != full {
            return seen;
        }
    }
}

/// A test frame carrying sequence number `i`.
fn numbered_frame(i: usize) -> Vec<u8> {
    let mut f = test_frame(1514, HOST_MAC, GUEST_MAC, i as u8);
    f[14..18].copy_from_slice(&(i as u32).to_be_bytes());
    f
}

/// The `drops` column of the UDP socket bound to local `port` in namespace `ns`.
fn proc_udp_drops(ns: &NetNs, port: u16) -> u64 {
    let (ok, text) = ns.run("cat", &["/proc/net/udp"]);
    assert!(ok, "{text}");
    let local = format!(":{port:04X} ");
    let line = text
        .lines()
        .find(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|a| format!("{a} ").ends_with(&local))
        })
        .unwrap_or_else(|| panic!("no UDP socket on port {port}:\n{text}"));
    line.split_whitespace()
        .last()
        .and_then(|d| d.parse().ok())
        .unwrap_or_else(|| panic!("drops column: {line}"))
}

#[test]
fn kernel_drops_on_a_full_udp_socket_match_the_kernel() {
    require_root();
    let ns = NetNs::new();
    let dir = TempDir::new("dh-udpdrop");
    let sock = dir.path().join("net.sock");
    let backend = net_backend(
        Some(ns.name()),
        &sock,
        "eth0=ucast,,127.0.0.1,5001,5002",
        dir.path().join("backend.log"),
    );
    let mut front = Front::connect(&sock, MRG_RXBUF);
    // More than a tunnel's receive buffer holds: 4 MiB asked for, 8 MiB booked, about 3,600
    // datagrams of 1514 bytes on loopback.
    const SENT: usize = 8000;
    ns.enter(|| {
        let peer = std::net::UdpSocket::bind("127.0.0.1:5002").expect("bind the peer");
        for i in 0..SENT {
            peer.send_to(&numbered_frame(i), "127.0.0.1:5001").unwrap();
        }
    });
    let seen = drain_rx(&mut front);
    let kernel = proc_udp_drops(&ns, 5001);
    let log = stop(backend);
    let line = summary(&log);
    let dropped = counter(line, "rx kernel drops (queue full)");
    assert!(dropped > 0, "the burst must have overflowed: {line}");
    assert_eq!(dropped, kernel, "our count is the kernel's: {line}");
    assert_eq!(
        seen.len() as u64 + dropped,
        SENT as u64,
        "every frame is in the guest or counted as a kernel drop: {line}"
    );
}
