//! Packets per second through the backend's datapath with no guest: a synthetic frontend (a
//! split virtqueue in memory, refilled each round) moves 64-byte frames through `raw` on a veth
//! into a namespace, both directions, on one core. The anchor, in the same run: the same
//! AF_PACKET socket driven directly with sendmmsg/recvmmsg and no virtqueue, i.e. the host
//! side's own ceiling; the ratio is what the datapath costs.
//!
//! Guest → host runs twice: with frames sent from the guest's buffers (gather lists, the
//! default on raw) and with every frame copied into the batch first (the path before zero
//! copy, still used where the backend changes frames); once more with 1514-byte frames, where
//! the copy weighs more. The guest's header has a descriptor of its own in those chains; one
//! more run puts it in the frame's descriptor, as Linux and DPDK's virtio PMD do.
//!
//! Then large frames host → guest on tap (1514 bytes, and 64 KiB GSO frames): received
//! straight into the guest's buffers, through the batch, and by reading the tap directly.
//!
//! Then TCP payload host → guest over gre: segments of one flow that the backend merges into
//! GSO frames for a guest that takes them (`gro=1`: software GRO) against the same segments
//! delivered one by one, with the gre socket read directly as the anchor.
//!
//! Then TCP payload guest → host over gre: the guest's 1514-byte frames against its 64 KiB TSO
//! frames that the backend segments (`gro=1` on a tunnel), with the gre socket fed directly
//! as the anchor.
//!
//! Then 64-byte frames both ways through `xdp` on the same veth: the datapath against the
//! AF_XDP socket driven directly, and against raw's bare socket above.
//!
//! Run as root: `cargo bench -p vmm-net --bench backend_pps` (`SECS=N` per measurement;
//! `ONLY=raw` or `ONLY=xdp` runs only that transport's guest → host datapath, for a profile).

use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MRG_RXBUF,
};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_net::backend::datapath::Datapath;
use vmm_net::backend::features::Negotiated;
use vmm_net::config::{CommonOpts, NetSpec, RawConfig, TransportConfig};
use vmm_net::transport::{self, PacketBatch, Transport};

const QSIZE: u16 = 256;
const DATA: u64 = 0x10_0000;
const FRAME: usize = 64;

fn ip(args: &[&str]) {
    let ok = Command::new("ip")
        .args(args)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "ip {}", args.join(" "));
}

/// Runs `f` in namespace `ns` (sockets opened there stay there).
fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    let path = format!("/var/run/netns/{ns}");
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = std::fs::File::open(&path).expect("netns");
            // SAFETY: setns on a namespace file we opened; affects this thread only.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0);
            f()
        })
        .join()
        .expect("thread")
    })
}

fn raw_spec(ifname: &str) -> NetSpec {
    NetSpec {
        name: "vec0".into(),
        common: CommonOpts::default(),
        transport: TransportConfig::Raw(RawConfig {
            ifname: ifname.into(),
        }),
    }
}

fn frame(seed: u8) -> [u8; FRAME] {
    let mut f = [seed; FRAME];
    f[..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
    f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
    f[12..14].copy_from_slice(&[0x88, 0xb5]);
    f
}

/// A split virtqueue of QSIZE entries laid out by hand: the descriptor table at 0, the avail
/// ring at 0x1000, the used ring at 0x2000. (virtio-queue 0.18's `MockSplitQueue` starts the
/// used ring `len` bytes after the avail ring, on top of the avail ring's second half: the
/// device's used entries then overwrite heads the driver published, which a full ring of
/// 256 runs into.)
struct Ring;

impl Ring {
    const DESC: u64 = 0;
    const AVAIL: u64 = 0x1000;
    const USED: u64 = 0x2000;

    /// Writes the descriptor table once; returns the queue the device sees.
    fn queue(m: &GuestMemoryMmap, descs: &[RawDescriptor]) -> Queue {
        for (i, d) in descs.iter().enumerate() {
            m.write_obj(*d, GuestAddress(Self::DESC + 16 * i as u64))
                .unwrap();
        }
        m.write_obj(0u16, Self::avail_idx()).unwrap();
        let mut q = Queue::new(QSIZE).unwrap();
        q.set_size(QSIZE);
        q.set_desc_table_address(Some(Self::DESC as u32), Some(0));
        q.set_avail_ring_address(Some(Self::AVAIL as u32), Some(0));
        q.set_used_ring_address(Some(Self::USED as u32), Some(0));
        q.set_ready(true);
        q
    }

    fn avail_idx() -> GuestAddress {
        GuestAddress(Self::AVAIL + 2)
    }
}

/// Makes the chains at `heads` available again, as a driver refilling its ring would:
/// entries go at avail_idx modulo the ring size, and avail_idx wraps.
fn publish(m: &GuestMemoryMmap, heads: impl Iterator<Item = u16>) {
    let mut idx: u16 = m.read_obj(Ring::avail_idx()).unwrap();
    for h in heads {
        let slot = GuestAddress(Ring::AVAIL + 4 + u64::from(idx % QSIZE) * 2);
        m.write_obj(h, slot).unwrap();
        idx = idx.wrapping_add(1);
    }
    m.write_obj(idx, Ring::avail_idx()).unwrap();
}

/// How long each measurement runs (`SECS`, default 3), read once: the loops ask every round.
fn secs() -> Duration {
    static SECS: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *SECS.get_or_init(|| {
        Duration::from_secs(
            std::env::var("SECS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(3),
        )
    })
}

/// How a transmit chain lays out the guest's header and frame.
#[derive(Clone, Copy, PartialEq)]
enum Layout {
    /// The header in a descriptor of its own, the frame in the next (the legacy layout).
    HeaderApart,
    /// Both in one descriptor, the header first: what Linux's virtio-net does with VERSION_1
    /// when the header fits in front of the frame, and DPDK's virtio PMD.
    HeaderJoined,
}

/// Guest → host through the datapath: the ring is refilled with QSIZE transmit chains, the
/// datapath drains it into the transport. Returns chains per second.
fn datapath_tx(t: Box<dyn Transport>, features: u64, zero_copy: bool) -> f64 {
    datapath_tx_of(
        t,
        features,
        [0; 12],
        &frame(0),
        zero_copy,
        Layout::HeaderApart,
    )
}

/// [`datapath_tx`] with every chain carrying `hdr` (the guest's virtio-net header) and
/// `frame`, laid out as `layout` says, from the guest's buffers when `zero_copy` (and the
/// transport can).
fn datapath_tx_of(
    t: Box<dyn Transport>,
    features: u64,
    hdr: [u8; 12],
    frame: &[u8],
    zero_copy: bool,
    layout: Layout,
) -> f64 {
    let m = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap();
    let stride = (12 + frame.len() as u64).next_multiple_of(0x100);
    // Descriptors per chain; chain i's head is `per * i`.
    let per: u16 = if layout == Layout::HeaderApart { 2 } else { 1 };
    let chains = QSIZE / 2;
    let mut descs = Vec::new();
    for i in 0..chains {
        let a = DATA + u64::from(i) * stride;
        m.write_slice(&hdr, GuestAddress(a)).unwrap();
        m.write_slice(frame, GuestAddress(a + 12)).unwrap();
        let d = |addr, len, flags, next| {
            RawDescriptor::from(Descriptor::new(addr, len, flags as u16, next))
        };
        match layout {
            Layout::HeaderApart => {
                descs.push(d(a, 12, VRING_DESC_F_NEXT, 2 * i + 1));
                descs.push(d(a + 12, frame.len() as u32, 0, 0));
            }
            Layout::HeaderJoined => descs.push(d(a, 12 + frame.len() as u32, 0, 0)),
        }
    }
    let mut q = Ring::queue(&m, &descs);
    let mut dp = datapath(t, features);
    dp.set_zero_copy(zero_copy);
    let (mut sent, start) = (0u64, Instant::now());
    let mut next = 0u16;
    while start.elapsed() < secs() {
        // Refill only what the datapath gave back: a ring never holds more than its size.
        let in_flight = m
            .read_obj::<u16>(Ring::avail_idx())
            .unwrap()
            .wrapping_sub(q.next_used());
        let free = chains - in_flight.min(chains);
        publish(&m, (0..free).map(|k| per * ((next + k) % chains)));
        next = (next + free) % chains;
        let before = q.next_used();
        dp.process_tx(&mut q, &m).unwrap();
        sent += u64::from(q.next_used().wrapping_sub(before));
    }
    sent as f64 / start.elapsed().as_secs_f64()
}

/// What a modern guest with merged receive buffers negotiates without offloads.
const PLAIN: u64 = 1 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_NET_F_MRG_RXBUF;

/// ... and with TSO both ways (a Linux guest on raw with `gro=1`): the batches then hold
/// 64 KiB buffers, fewer of them (see `datapath::Geometry`).
const TSO: u64 = PLAIN
    | 1 << VIRTIO_NET_F_GUEST_CSUM
    | 1 << VIRTIO_NET_F_GUEST_TSO4
    | 1 << VIRTIO_NET_F_GUEST_TSO6
    | 1 << VIRTIO_NET_F_CSUM
    | 1 << VIRTIO_NET_F_HOST_TSO4
    | 1 << VIRTIO_NET_F_HOST_TSO6;

/// The datapath as a guest that negotiated `features` sets it up.
fn datapath(t: Box<dyn Transport>, features: u64) -> Datapath {
    let mut dp = Datapath::new(t, 64, 2, 1500);
    dp.set_negotiated(Negotiated::from_features(features))
        .unwrap();
    dp
}

/// Host → guest through the datapath: a generator thread floods the veth peer; the datapath
/// delivers into QSIZE receive buffers, refilled each round.
fn datapath_rx(t: Box<dyn Transport>, features: u64, flood: impl FnOnce(Instant) + Send) -> f64 {
    datapath_rx_with(t, features, true, flood, |_| {})
}

/// [`datapath_rx`], handing the datapath to `done` at the end.
fn datapath_rx_with(
    t: Box<dyn Transport>,
    features: u64,
    zero_copy: bool,
    flood: impl FnOnce(Instant) + Send,
    done: impl FnOnce(&Datapath),
) -> f64 {
    let m = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap();
    let descs: Vec<RawDescriptor> = (0..QSIZE)
        .map(|i| {
            RawDescriptor::from(Descriptor::new(
                DATA + u64::from(i) * 0x800,
                2048,
                VRING_DESC_F_WRITE as u16,
                0,
            ))
        })
        .collect();
    let mut q = Ring::queue(&m, &descs);
    let mut dp = datapath(t, features);
    dp.set_zero_copy(zero_copy);
    let end = Instant::now() + secs();
    let rate = std::thread::scope(|s| {
        s.spawn(|| flood(end));
        let (mut got, start) = (0u64, Instant::now());
        let mut next_head = 0u16;
        while Instant::now() < end {
            // Refill what the datapath used since the last round.
            let used = q.next_used();
            let free = QSIZE
                - (m.read_obj::<u16>(Ring::avail_idx())
                    .unwrap()
                    .wrapping_sub(used));
            publish(&m, (0..free).map(|k| (next_head + k) % QSIZE));
            next_head = (next_head + free) % QSIZE;
            let before = q.next_used();
            dp.process_rx(&mut q, &m).unwrap();
            got += u64::from(q.next_used().wrapping_sub(before));
        }
        got as f64 / start.elapsed().as_secs_f64()
    });
    done(&dp);
    rate
}

/// [`datapath_rx`], returning the datapath's counters.
fn datapath_rx_stats(
    t: Box<dyn Transport>,
    features: u64,
    zero_copy: bool,
    flood: impl FnOnce(Instant) + Send,
) -> std::sync::Arc<vmm_net::backend::NetCounters> {
    let mut stats = None;
    datapath_rx_with(t, features, zero_copy, flood, |dp| stats = Some(dp.stats()));
    stats.expect("stats")
}

/// The virtio-net header of a TCP/IPv4 TSO frame from [`tcp_frame`] (partial checksum).
fn tso4_header(mss: u16) -> [u8; 12] {
    let mut h = [0u8; 12];
    h[0] = 1; // NEEDS_CSUM
    h[1] = 1; // GSO_TCPV4
    h[2..4].copy_from_slice(&54u16.to_le_bytes());
    h[4..6].copy_from_slice(&mss.to_le_bytes());
    h[6..8].copy_from_slice(&34u16.to_le_bytes());
    h[8..10].copy_from_slice(&16u16.to_le_bytes());
    h
}

/// A batch holding `frames`.
fn batch(frames: &[Vec<u8>]) -> PacketBatch {
    let cap = frames.iter().map(Vec::len).max().unwrap_or(0);
    let mut b = PacketBatch::new(frames.len(), cap);
    for f in frames {
        let p = b.next_free().unwrap();
        p.space()[..f.len()].copy_from_slice(f);
        p.set_len(f.len());
        b.commit();
    }
    b
}

/// `frame` behind a `virtio_net_hdr`.
fn with_vnet_hdr(hdr: [u8; 10], frame: &[u8]) -> Vec<u8> {
    [&hdr[..], frame].concat()
}

/// Sends `b` over and over for [`secs`]; frames per second.
fn send_for_secs(t: &mut dyn Transport, b: &PacketBatch) -> f64 {
    let (mut sent, start) = (0u64, Instant::now());
    while start.elapsed() < secs() {
        sent += t.send(b).unwrap() as u64;
    }
    sent as f64 / start.elapsed().as_secs_f64()
}

/// The anchor: the bare transport, batches of 64 frames, no virtqueue.
fn bare_tx(mut t: Box<dyn Transport>) -> f64 {
    send_for_secs(
        t.as_mut(),
        &batch(&vec![with_vnet_hdr([0; 10], &frame(1)); 64]),
    )
}

fn bare_rx(t: Box<dyn Transport>, flood: impl FnOnce(Instant) + Send) -> f64 {
    bare_rx_of(t, 2048, flood)
}

/// [`bare_rx`] into buffers of `capacity` bytes.
fn bare_rx_of(
    mut t: Box<dyn Transport>,
    capacity: usize,
    flood: impl FnOnce(Instant) + Send,
) -> f64 {
    let mut b = PacketBatch::new(64, capacity);
    let end = Instant::now() + secs();
    std::thread::scope(|s| {
        s.spawn(|| flood(end));
        let (mut got, start) = (0u64, Instant::now());
        while Instant::now() < end {
            got += t.recv(&mut b).unwrap() as u64;
        }
        got as f64 / start.elapsed().as_secs_f64()
    })
}

fn main() {
    if unsafe_euid() != 0 {
        eprintln!("backend_pps: needs root (it makes a namespace and a veth pair)");
        return;
    }
    let ns = format!("vpps{}", std::process::id());
    ip(&["netns", "add", &ns]);
    let cleanup = scopeguard(ns.clone());
    ip(&[
        "-n", &ns, "link", "add", "pa", "type", "veth", "peer", "name", "pb",
    ]);
    ip(&["-n", &ns, "link", "set", "pa", "up"]);
    ip(&["-n", &ns, "link", "set", "pb", "up"]);
    let open = |ifname: &str| {
        in_ns(&ns, || {
            transport::open(&raw_spec(ifname)).expect("open raw")
        })
    };
    // The generator: a raw transport on the peer end, sending 64-frame batches until `end`.
    let flood = |end: Instant| {
        let mut g = in_ns(&ns, || {
            transport::open(&raw_spec("pa")).expect("open generator")
        });
        let b = batch(&vec![with_vnet_hdr([0; 10], &frame(2)); 64]);
        while Instant::now() < end {
            let _ = g.send(&b);
        }
    };
    if let Ok(which) = std::env::var("ONLY") {
        only(&ns, &which);
        return;
    }
    let rows: Vec<_> = [("none", PLAIN), ("TSO", TSO)]
        .into_iter()
        .flat_map(|(offloads, features)| {
            [
                (
                    "guest->host",
                    offloads,
                    datapath_tx(open("pb"), features, true),
                    Some(datapath_tx(open("pb"), features, false)),
                    bare_tx(open("pb")),
                ),
                (
                    "host->guest",
                    offloads,
                    datapath_rx(open("pb"), features, flood),
                    None,
                    bare_rx(open("pb"), flood),
                ),
            ]
        })
        .collect();
    println!(
        "64-byte frames, raw on a veth, one core for the datapath ({:?} each)",
        secs()
    );
    println!(
        "{:<12} {:<10} {:>14} {:>12} {:>16} {:>7} {:>12}",
        "direction",
        "offloads",
        "datapath Mpps",
        "copied Mpps",
        "bare socket Mpps",
        "ratio",
        "vs copied"
    );
    let or_dash = |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map_or("-".into(), f);
    for &(dir, offloads, dp, copied, bare) in &rows {
        println!(
            "{dir:<12} {offloads:<10} {:>14.3} {:>12} {:>16.3} {:>7.2} {:>12}",
            dp / 1e6,
            or_dash(copied, &|c| format!("{:.3}", c / 1e6)),
            bare / 1e6,
            dp / bare,
            or_dash(copied, &|c| format!("{:.2}", dp / c)),
        );
    }
    // The first row again with the guest's header in the frame's descriptor, as Linux (with
    // VERSION_1) and DPDK's virtio PMD lay out small frames.
    let joined = datapath_tx_of(
        open("pb"),
        PLAIN,
        [0; 12],
        &frame(0),
        true,
        Layout::HeaderJoined,
    );
    println!(
        "guest->host none, the header in the frame's descriptor: datapath {:.3} Mpps, {:.2} of \
         the bare socket, {:.2} of the header apart",
        joined / 1e6,
        joined / rows[0].4,
        joined / rows[0].2
    );
    let raw_bare = (rows[0].4, rows[1].4);
    xdp(&ns, flood, raw_bare);
    full_frames(&open);
    tap_rx(&ns);
    tunnels(&ns);
    tunnel_rx(&ns);
    drop(cleanup);
}

/// `ONLY=raw` or `ONLY=xdp`: 64-byte frames guest → host through that transport's datapath
/// alone (the header in the frame's descriptor, as Linux and DPDK lay them out), for `SECS`,
/// nothing else: a run to put under `perf record`.
fn only(ns: &str, which: &str) {
    let spec = match which {
        "raw" => "vec0:transport=raw,ifname=pb",
        "xdp" => "vec0:transport=xdp,ifname=pb",
        _ => {
            eprintln!("backend_pps: ONLY={which:?}: `raw` or `xdp`");
            return;
        }
    };
    let t = in_ns(ns, || {
        transport::open(&vmm_net::config::parse_spec(spec).expect("spec")).expect("open")
    });
    let rate = datapath_tx_of(t, PLAIN, [0; 12], &frame(0), true, Layout::HeaderJoined);
    println!(
        "64-byte frames guest->host through {which}'s datapath: {:.3} Mpps",
        rate / 1e6
    );
}

/// 64-byte frames through `xdp` on the veth (one core for the datapath, no offloads), on the
/// generic hook (the default on a veth) and on the driver's: the datapath, the AF_XDP socket
/// driven directly, and raw's bare socket (`raw_bare`: guest→host, host→guest) from the first
/// table.
fn xdp(ns: &str, flood: impl Fn(Instant) + Send + Sync, raw_bare: (f64, f64)) {
    println!();
    println!("64-byte frames, xdp on the same veth, one core for the datapath");
    println!(
        "{:<12} {:<7} {:>14} {:>14} {:>7} {:>14} {:>13}",
        "direction",
        "hook",
        "datapath Mpps",
        "bare xsk Mpps",
        "ratio",
        "raw bare Mpps",
        "xdp/raw bare"
    );
    for hook in ["skb", "native"] {
        let open = || {
            in_ns(ns, || {
                let spec = format!("vec0:transport=xdp,ifname=pb,mode={hook}");
                transport::open(&vmm_net::config::parse_spec(&spec).expect("spec"))
                    .expect("open xdp")
            })
        };
        let tx = datapath_tx(open(), PLAIN, true);
        let tx_bare = send_for_secs(open().as_mut(), &batch(&vec![frame(1).to_vec(); 64]));
        let rx = datapath_rx(open(), PLAIN, &flood);
        let rx_bare = bare_rx(open(), &flood);
        for (dir, dp, bare, raw) in [
            ("guest->host", tx, tx_bare, raw_bare.0),
            ("host->guest", rx, rx_bare, raw_bare.1),
        ] {
            println!(
                "{dir:<12} {hook:<7} {:>14.3} {:>14.3} {:>7.2} {:>14.3} {:>13.2}",
                dp / 1e6,
                bare / 1e6,
                dp / bare,
                raw / 1e6,
                dp / raw
            );
        }
    }
}

/// Guest → host with large frames on raw: 1514-byte frames, and 64 KiB TSO frames (the
/// guest's TCP with `gro=1`), each from the guest's buffers, copied, and the bare socket's
/// batches of the same frames.
fn full_frames(open: &dyn Fn(&str) -> Box<dyn Transport>) {
    const MSS: usize = 1448;
    let tso = tso4_header(MSS as u16);
    println!();
    println!("Large frames guest->host, raw on a veth, one core for the datapath (Gbit/s)");
    println!(
        "{:<24} {:>12} {:>8} {:>8} {:>14} {:>10}",
        "frames", "gathered", "copied", "bare", "gathered/bare", "g/copied"
    );
    for (what, f, hdr, features) in [
        ("1514 bytes", tcp_frame(1460), [0; 12], PLAIN),
        ("64 KiB TSO", tcp_frame(45 * MSS), tso, TSO),
    ] {
        let gbit = |fps: f64| fps * f.len() as f64 * 8.0 / 1e9;
        let gathered = gbit(datapath_tx_of(
            open("pb"),
            features,
            hdr,
            &f,
            true,
            Layout::HeaderApart,
        ));
        let copied = gbit(datapath_tx_of(
            open("pb"),
            features,
            hdr,
            &f,
            false,
            Layout::HeaderApart,
        ));
        let mut vnet = [0u8; 10];
        vnet.copy_from_slice(&hdr[..10]);
        let b = batch(&vec![with_vnet_hdr(vnet, &f); 64]);
        let bare = gbit(send_for_secs(open("pb").as_mut(), &b));
        println!(
            "{what:<24} {gathered:>12.2} {copied:>8.2} {bare:>8.2} {:>14.2} {:>10.2}",
            gathered / bare,
            gathered / copied
        );
    }
}

/// Host → guest with large frames on tap, one core for the datapath: 1514-byte frames and
/// 64 KiB GSO frames (a host TCP sender's, for a guest with `gro=1`) sent into a tap in the
/// namespace through a packet socket on it, and received by the datapath straight into 2 KiB
/// merged buffers (the default on tap), through the batch (the copy it saves), and by the tap
/// read directly into a batch (the bare descriptor).
fn tap_rx(ns: &str) {
    const IFNAME: &str = "vpps-tap";
    const MSS: usize = 1448;
    let open = || {
        in_ns(ns, || {
            let spec = format!("vec0:transport=tap,ifname={IFNAME}");
            let t = transport::open(&vmm_net::config::parse_spec(&spec).expect("spec"));
            ip(&["link", "set", IFNAME, "up"]);
            t.expect("open tap")
        })
    };
    // The datapath on the first CPU, the sender on the last: on a small machine the two
    // otherwise take turns on both, and the rates say more about the scheduler.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    pin(Some(0));
    println!();
    println!("Large frames host->guest, tap, one core for the datapath (Gbit/s)");
    println!(
        "{:<24} {:>8} {:>8} {:>8} {:>13} {:>12} {:>10}",
        "frames", "direct", "copied", "bare", "direct/bare", "d/copied", "% direct"
    );
    for (what, f, hdr, features) in [
        ("1514 bytes", tcp_frame(1460), [0; 10], PLAIN),
        (
            "64 KiB GSO",
            tcp_frame(45 * MSS),
            {
                let mut h = [0u8; 10];
                h.copy_from_slice(&tso4_header(MSS as u16)[..10]);
                h
            },
            TSO,
        ),
    ] {
        let b = batch(&vec![with_vnet_hdr(hdr, &f); 16]);
        let flood = |end: Instant| {
            pin(Some(cpus - 1));
            let mut g = in_ns(ns, || {
                transport::open(&raw_spec(IFNAME)).expect("open generator")
            });
            while Instant::now() < end {
                let _ = g.send(&b);
            }
        };
        let secs = secs().as_secs_f64();
        let gbit = |frames: f64| frames * f.len() as f64 * 8.0 / 1e9;
        let run = |zero_copy: bool| {
            let s = datapath_rx_stats(open(), features, zero_copy, flood);
            let frames = s.rx_packets.load(Ordering::Relaxed) as f64;
            let direct = s.rx_direct.load(Ordering::Relaxed) as f64;
            (gbit(frames / secs), 100.0 * direct / frames.max(1.0))
        };
        let (direct, share) = run(true);
        let (copied, _) = run(false);
        let mut bare_tap = open();
        let n = Negotiated::from_features(features);
        bare_tap.set_offloads(n.rx).expect("TUNSETOFFLOAD");
        let bare = gbit(bare_rx_of(bare_tap, f.len() + 64, flood));
        println!(
            "{what:<24} {direct:>8.2} {copied:>8.2} {bare:>8.2} {:>13.2} {:>12.2} {share:>10.1}",
            direct / bare,
            direct / copied
        );
    }
    pin(None);
}

/// Binds the calling thread to `cpu`, or to every CPU again.
fn pin(cpu: Option<usize>) {
    // SAFETY: cpu_set_t is a plain bit set; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    for c in cpu.map_or(0..n, |c| c..c + 1) {
        // SAFETY: CPU_SET writes one bit of the set we own; `c` is below CPU_SETSIZE.
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    // SAFETY: pid 0 is the calling thread; the set is live and its size is passed.
    unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
}

/// TCP payload host → guest over gre, one core for the datapath: a generator thread sends
/// the 45 segments of a 64 KiB TSO frame (valid checksums, consecutive sequence numbers) over
/// and over from the tunnel's other end; the datapath delivers them into 2 KiB merged
/// receive buffers, merged into GSO frames when the guest took GUEST_TSO4 (`gro=1` on a
/// tunnel), one by one when not. The anchor: the gre socket read directly.
fn tunnel_rx(ns: &str) {
    let open = |spec: &str| {
        in_ns(ns, || {
            transport::open(&vmm_net::config::parse_spec(spec).expect("spec")).expect("gre")
        })
    };
    const MSS: u16 = 1448;
    let big = tcp_frame(45 * usize::from(MSS));
    let p = vmm_net::backend::segment::plan(&big, 1, MSS, 64).expect("plan");
    let segs: Vec<Vec<u8>> = (0..p.count)
        .map(|i| {
            let mut out = vec![0u8; p.max_segment_len()];
            let n = vmm_net::backend::segment::write_segment(&big, &p, i, &mut out);
            out.truncate(n);
            out
        })
        .collect();
    let flood = |end: Instant| {
        let mut g = open("vec0:transport=gre,src=127.0.0.1,dst=127.0.0.2");
        let b = batch(&segs);
        while Instant::now() < end {
            let _ = g.send(&b);
        }
    };
    let rx = "vec0:transport=gre,src=127.0.0.2,dst=127.0.0.1,gro=1";
    let gro = PLAIN | 1 << VIRTIO_NET_F_GUEST_CSUM | 1 << VIRTIO_NET_F_GUEST_TSO4;
    let run = |features: u64| {
        let dp = datapath_rx_stats(open(rx), features, true, flood);
        let secs = secs().as_secs_f64();
        let frames = dp.rx_packets.load(Ordering::Relaxed) as f64 / secs;
        let merged = dp.rx_coalesced.load(Ordering::Relaxed) as f64 / secs;
        (frames, frames + merged)
    };
    let (plain_frames, plain_segs) = run(PLAIN | 1 << VIRTIO_NET_F_GUEST_CSUM);
    let (merged_frames, merged_segs) = run(gro);
    let bare = bare_rx(open(rx), flood);
    let gbit = |segs: f64| segs * f64::from(MSS) * 8.0 / 1e9;
    println!();
    println!("TCP payload host->guest over gre, one core for the datapath");
    println!(
        "{:<36} {:>8} {:>16} {:>14}",
        "the guest takes", "Gbit/s", "guest frames/s", "vs bare socket"
    );
    for (what, frames, segs) in [
        (
            "GSO frames, merged here (gro=1)",
            merged_frames,
            merged_segs,
        ),
        ("1514-byte frames", plain_frames, plain_segs),
        ("(bare gre socket, segments read)", bare, bare),
    ] {
        println!(
            "{what:<36} {:>8.2} {:>16.0} {:>14.2}",
            gbit(segs),
            frames,
            segs / bare
        );
    }
}

/// Ethernet, IPv4 and TCP headers (ACK) and `payload` bytes: what a guest's TCP sends.
fn tcp_frame(payload: usize) -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
    f.extend_from_slice(&[0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 6, 0, 0]);
    f[16..18].copy_from_slice(&((40 + payload) as u16).to_be_bytes());
    f.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2, 0x30, 0x39, 0, 80]);
    f.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1, 0x50, 0x10, 0xff, 0xff, 0, 0, 0, 0]);
    f.resize(54 + payload, 0xab);
    f
}

/// TCP payload guest → host over gre (to a namespace's loopback), one core: the guest's
/// 1514-byte frames (`gro=0`) against its 64 KiB TSO frames segmented by the backend
/// (`gro=1`), and the gre socket fed 1514-byte frames directly.
fn tunnels(ns: &str) {
    ip(&["-n", ns, "link", "set", "lo", "up"]);
    ip(&["-n", ns, "addr", "add", "127.0.0.2/8", "dev", "lo"]);
    let gre = |opts: &str| {
        let spec = format!("vec0:transport=gre,src=127.0.0.1,dst=127.0.0.2{opts}");
        in_ns(ns, || {
            transport::open(&vmm_net::config::parse_spec(&spec).expect("spec")).expect("gre")
        })
    };
    const MSS: usize = 1448;
    let small = tcp_frame(1460);
    let big = tcp_frame(45 * MSS);
    let tso = tso4_header(MSS as u16);
    let soft_tso = PLAIN | 1 << VIRTIO_NET_F_CSUM | 1 << VIRTIO_NET_F_HOST_TSO4;
    let gbit = |chains: f64, payload: usize| chains * payload as f64 * 8.0 / 1e9;
    let frames = gbit(
        datapath_tx_of(gre(""), PLAIN, [0; 12], &small, true, Layout::HeaderApart),
        1460,
    );
    let segmented = gbit(
        datapath_tx_of(
            gre(",gro=1"),
            soft_tso,
            tso,
            &big,
            true,
            Layout::HeaderApart,
        ),
        45 * MSS,
    );
    let bare = gbit(
        send_for_secs(gre("").as_mut(), &batch(&vec![small.clone(); 64])),
        1460,
    );
    println!();
    println!("TCP payload guest->host over gre, one core for the datapath");
    println!(
        "{:<40} {:>8} {:>14}",
        "guest hands over", "Gbit/s", "vs bare socket"
    );
    for (what, g) in [
        ("1514-byte frames (gro=0)", frames),
        ("64 KiB TSO frames, segmented (gro=1)", segmented),
        ("bare gre socket, 1514-byte frames", bare),
    ] {
        println!("{what:<40} {g:>8.2} {:>14.2}", g / bare);
    }
}

fn unsafe_euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// Deletes the namespace (and its veth) when dropped, also on panic.
fn scopeguard(ns: String) -> impl Drop {
    struct Guard(String);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }
    Guard(ns)
}
