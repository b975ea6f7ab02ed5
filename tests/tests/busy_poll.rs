//! `busy_poll=US`: after an event, the backend's worker keeps looking for work for that long.
//! Driven as a guest driver drives the device ([`Rig`]) over the `fd` transport: the driver
//! kicks for one frame, sees it used, then, a moment later, adds a second chain without a
//! kick. With `busy_poll=1000` the worker, still looking, sends the second frame byte-exact;
//! without it, the second frame waits for its kick. `busy_poll=auto` looks after a stream of
//! chains, and not after a lull.

use std::os::fd::IntoRawFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};
use vmm_net::backend::{affinity, NetBackend, NetControl};
use vmm_net::config::{parse_spec, CpuSet};
use vmm_tests::peer::test_frame;
use vmm_tests::rig::{transport_pair, Rig, HDR, RINGS, TX_BUF};

const GUEST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x21];
const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x22];
const ATTEMPTS: u16 = 10;
/// How long after the device used the first chain the driver adds the second: long past the
/// worker's own last look at the ring (it re-arms notifications and looks once more within
/// microseconds), well within a `busy_poll` of 1000 µs.
const DELAY: Duration = Duration::from_micros(300);

/// A device over `fd` with `busy_poll` µs, serving a rig that holds the transport's far end;
/// and its control handle.
fn serve(busy_poll: &str) -> (Rig, NetControl) {
    let (fd, theirs) = transport_pair();
    let spec = format!(
        "vec0:transport=fd,fd={},busy_poll={busy_poll}",
        fd.into_raw_fd()
    );
    let backend = NetBackend::open(&parse_spec(&spec).expect("spec")).expect("backend");
    let ctl = backend.control();
    let (ours, dev) = UnixStream::pair().unwrap();
    std::thread::spawn(move || {
        // The worker threads inherit this: they look on a core the driver does not spin on.
        pin(Core::Backend);
        backend.serve_connection(dev, None)
    });
    let mut rig = Rig::connect(ours, theirs);
    rig.zero_rings();
    assert_eq!(rig.bring_up(RINGS), 0xf);
    (rig, ctl)
}

enum Core {
    Driver,
    Backend,
}

/// Pins the calling thread to the first core (the driver) or the last (the backend, its
/// workers), where there are two or more: a spinning driver and a spinning worker on one core
/// would take turns a scheduler's time slice apart, longer than the worker looks.
fn pin(core: Core) {
    // Not available_parallelism(): it counts the calling thread's cores, one once pinned.
    // SAFETY: sysconf reads a system setting.
    let cores = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as usize;
    if cores < 2 {
        return;
    }
    let cpu = match core {
        Core::Driver => 0,
        Core::Backend => cores - 1,
    };
    // Best effort, as ever: a thread left unpinned only makes the test less reliable.
    if let Some(set) = u16::try_from(cpu).ok().and_then(|c| CpuSet::new([c])) {
        let _ = affinity::pin(&set);
    }
}

/// Writes `frame` behind a zero header at `TX_BUF`; returns the chain's length.
fn stage(rig: &Rig, frame: &[u8]) -> u32 {
    let mut buf = vec![0u8; HDR];
    buf.extend_from_slice(frame);
    rig.ram
        .memory()
        .write_slice(&buf, GuestAddress(TX_BUF))
        .unwrap();
    buf.len() as u32
}

/// Spins until the transmit queue's used index is `want` (no sleep: the driver must act
/// right after), for 3 s at most.
fn spin_until_used(rig: &Rig, want: u16) {
    let deadline = Instant::now() + Duration::from_secs(3);
    while rig.used_idx(1) != want {
        assert!(Instant::now() < deadline, "used index stuck below {want}");
        std::hint::spin_loop();
    }
}

fn sent(rig: &Rig) -> Vec<u8> {
    let mut out = vec![0u8; 2048];
    let n = rig.peer.recv(&mut out).expect("a frame from the transport");
    out.truncate(n);
    out
}

/// What the driver does before each attempt: `lead` chains, each kicked `pause` after the
/// one before was used (a stream when the pause is none, a lull when it is milliseconds).
struct Lead {
    chains: u16,
    pause: Duration,
}

/// None: the measured pair alone, after the worker slept.
const NO_LEAD: Lead = Lead {
    chains: 0,
    pause: Duration::ZERO,
};

/// A stream: chains back to back.
const STREAM: Lead = Lead {
    chains: 8,
    pause: Duration::ZERO,
};

/// Waits `d`: sleeping where it is long (the worker then sleeps too), spinning where it is
/// short (the driver must act right after).
fn wait(d: Duration) {
    if d >= Duration::from_millis(1) {
        std::thread::sleep(d);
    } else {
        let start = Instant::now();
        while start.elapsed() < d {
            std::hint::spin_loop();
        }
    }
}

/// The device's busy-polling counters after a run.
#[derive(Debug)]
struct Looked {
    finds: u64,
    spells: u64,
    us: u64,
}

/// Of `ATTEMPTS` unkicked chains, how many the device sent without their kick, each added
/// `delay` after a kicked chain was used, itself after `lead`; and the device's
/// busy-polling counters.
fn unkicked_chains_sent(busy_poll: &str, lead: Lead, delay: Duration) -> (u16, Looked) {
    pin(Core::Driver);
    let (mut rig, ctl) = serve(busy_poll);
    let mut without_kick = 0;
    let mut idx = 0u16;
    for a in 0..ATTEMPTS {
        // The worker asleep again (a spell lasts 1 ms at most): the kick below starts one.
        std::thread::sleep(Duration::from_millis(5));
        for _ in 0..lead.chains {
            wait(lead.pause);
            let frame = test_frame(80, GUEST_MAC, HOST_MAC, idx as u8);
            let len = stage(&rig, &frame);
            rig.offer(1, idx, TX_BUF, len, 0);
            spin_until_used(&rig, idx + 1);
            assert_eq!(sent(&rig), frame, "attempt {a}: a lead frame");
            idx += 1;
        }
        wait(lead.pause);
        let first = test_frame(100, GUEST_MAC, HOST_MAC, idx as u8);
        let len = stage(&rig, &first);
        rig.offer(1, idx, TX_BUF, len, 0);
        spin_until_used(&rig, idx + 1);
        wait(delay);
        let second = test_frame(200, GUEST_MAC, HOST_MAC, idx as u8 + 1);
        let len = stage(&rig, &second);
        rig.publish(1, idx + 1, TX_BUF, len, 0);
        assert_eq!(sent(&rig), first, "attempt {a}: the kicked frame");
        let deadline = Instant::now() + Duration::from_millis(50);
        while rig.used_idx(1) != idx + 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        if rig.used_idx(1) == idx + 2 {
            without_kick += 1;
        } else {
            rig.kick(1);
            rig.wait_used(1, idx + 2);
        }
        assert_eq!(sent(&rig), second, "attempt {a}: the unkicked frame");
        idx += 2;
    }
    // The last spell adds its finds as it ends, within 1 ms.
    std::thread::sleep(Duration::from_millis(10));
    let stats = ctl.stats();
    let counter = |name| stats.get(name).expect(name);
    let looked = Looked {
        finds: counter("busy_poll_finds"),
        spells: counter("busy_poll_spells"),
        us: counter("busy_poll_us"),
    };
    (without_kick, looked)
}

/// With `busy_poll=1000` the worker still looks when the chain comes, and sends it unkicked
/// (in every attempt on a quiet machine, 8 of 10 with a build running beside it); without
/// busy polling the same chain waits for its kick. One
/// test, the two in turn: both spin (the driver to add its chain on time, the worker to look),
/// and run side by side on a two-core machine they would take each other's cores. Not exact
/// counts: a worker preempted at the wrong moment can miss a chain, or, without busy polling,
/// find one in its last look before it sleeps.
#[test]
fn a_busy_polling_worker_takes_chains_it_was_not_kicked_for() {
    let (without, off) = unkicked_chains_sent("0", NO_LEAD, DELAY);
    let (with, on) = unkicked_chains_sent("1000", NO_LEAD, DELAY);
    let said = format!(
        "left without a kick: {without} of {ATTEMPTS} without busy polling, {with} with it; \
         {off:?} and {on:?}"
    );
    eprintln!("{said}");
    assert!(without <= 2 && with >= ATTEMPTS / 2, "{said}");
    // Each chain sent unkicked was a find; nothing looks with busy polling off.
    assert!(off.finds == 0 && on.finds >= u64::from(with), "{said}");
    assert!(off.spells == 0 && off.us == 0, "{said}");
    // A spell after each kicked chain at least, each lasting its window or more.
    assert!(on.spells >= u64::from(ATTEMPTS), "{said}");
    assert!(on.us >= on.spells * 1000, "{said}");
}

/// `busy_poll=auto`: after a stream of chains the worker looks (each chain woke it within
/// 200 µs of its last work, so its window grew) and sends a chain added as soon as the one
/// before was used without its kick; after a lull (chains 5 ms apart) its window is none, and
/// the same chain waits for its kick, and the worker does not look at all
/// (`busy_poll_spells`). Not exact counts, for the reasons above.
#[test]
fn an_auto_worker_looks_after_a_stream_not_after_a_lull() {
    let soon = Duration::ZERO;
    let (with, stream) = unkicked_chains_sent("auto", STREAM, soon);
    let lull = Lead {
        chains: 4,
        pause: Duration::from_millis(5),
    };
    let (without, lulls) = unkicked_chains_sent("auto", lull, soon);
    let said = format!(
        "left without a kick: {with} of {ATTEMPTS} after a stream, {without} after a lull; \
         {stream:?} and {lulls:?}"
    );
    eprintln!("{said}");
    assert!(with >= ATTEMPTS / 2 && without <= 2, "{said}");
    assert!(stream.finds >= u64::from(with), "{said}");
    assert!(stream.spells > 0 && stream.us > 0, "{said}");
    // A lull never opens the window (0 spells here); as above, not exact.
    assert!(lulls.spells <= 2, "{said}");
}
