//! `vmm net-backend` against hostile frontends: nothing a frontend sends crashes it, hangs it,
//! leaks from it or is dropped without a word. Each test plays a raw vhost-user frontend
//! against the real process (its transport is `fd`, a seqpacket socketpair the test holds),
//! then checks that the backend survived, that it logged exactly one WARN line naming the
//! refused request and the reason, that a well-behaved frontend (the virtio-pci rig of
//! `vmm_tests::rig`) then moves frames both ways byte-exact, and that SIGTERM still stops it.
//!
//! - memory regions larger than their file (SIGBUS in the backend before), and files the
//!   frontend shrinks (or tries to) after `SET_MEM_TABLE`: sealed ones cannot shrink, an
//!   unsealable one is caught by the SIGBUS guard;
//! - a pipe as the kick, a socket or a full pipe as the call (a worker blocked in `read` or
//!   `write` before);
//! - protocol strictness: queue sizes, unoffered protocol features, `ADD_MEM_REG`, rings that
//!   do not exist, a feature the crate's handler refuses;
//! - 2,000 connections under RLIMIT_NOFILE 1024 with a constant descriptor count.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use std::io::{Read, Write};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;
use vmm_tests::process::{fd_net_backend, Daemon};
use vmm_tests::rig::{transport_pair, Rig};
use vmm_tests::TempDir;

const GET_FEATURES: u32 = 1;
const SET_FEATURES: u32 = 2;
const SET_OWNER: u32 = 3;
const SET_MEM_TABLE: u32 = 5;
const SET_VRING_NUM: u32 = 8;
const SET_VRING_ADDR: u32 = 9;
const SET_VRING_KICK: u32 = 12;
const SET_VRING_CALL: u32 = 13;
const GET_PROTOCOL_FEATURES: u32 = 15;
const SET_PROTOCOL_FEATURES: u32 = 16;
const SET_VRING_ENABLE: u32 = 18;
const ADD_MEM_REG: u32 = 37;

const VERSION_1: u32 = 0x1;
const NEED_REPLY: u32 = 0x8;
const PROTOCOL_FEATURES_BIT: u64 = 1 << 30;
const REPLY_ACK: u64 = 0x8;
const CONFIGURE_MEM_SLOTS: u64 = 0x8000;
const MIB: u64 = 1 << 20;
/// Where the raw frontend claims its guest memory sits in its own address space.
const USER_ADDR: u64 = 0x7f00_0000_0000;

/// The backend process, its socket and the test's end of its transport.
struct Backend {
    daemon: Daemon,
    sock: PathBuf,
    peer: UnixDatagram,
    _dir: TempDir,
}

impl Backend {
    /// Starts `vmm net-backend` on `vec0:transport=fd,fd=3`, with RLIMIT_NOFILE `nofile` if
    /// given.
    fn start(prefix: &str, nofile: Option<u64>) -> Backend {
        let dir = TempDir::new(prefix);
        let (theirs, peer) = transport_pair();
        let (daemon, sock) = fd_net_backend(dir.path(), theirs, nofile);
        Backend {
            daemon,
            sock,
            peer,
            _dir: dir,
        }
    }

    fn connect(&self) -> Raw {
        let s = UnixStream::connect(&self.sock).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Raw(s)
    }

    /// The WARN lines logged so far.
    fn warnings(&self) -> Vec<String> {
        self.daemon
            .log()
            .lines()
            .filter(|l| l.contains(" WARN "))
            .map(str::to_string)
            .collect()
    }

    /// Waits for the one WARN line a dropped frontend costs, after `before` lines, and checks
    /// that it names `request` and says `why`.
    fn expect_warning(&mut self, before: usize, request: &str, why: &str) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.warnings().len() == before && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        // A second line would come right after the first.
        std::thread::sleep(Duration::from_millis(50));
        let w = self.warnings();
        assert_eq!(w.len(), before + 1, "{}", self.daemon.log());
        let line = &w[before];
        assert!(
            line.contains(&format!("frontend dropped: {request} refused")) && line.contains(why),
            "expected {request} refused ({why}), got: {line}"
        );
        assert!(
            self.daemon.running(),
            "backend died:\n{}",
            self.daemon.log()
        );
    }

    /// A well-behaved frontend is served: frames both ways, byte-exact.
    fn serves_frames(&self) {
        let peer = self.peer.try_clone().unwrap();
        let stream = UnixStream::connect(&self.sock).expect("connect");
        let mut rig = Rig::connect(stream, peer);
        rig.frames_flow();
    }

    /// SIGTERM stops it: exit status 0 within 5 s, socket removed.
    fn stops(mut self) {
        let status = self
            .daemon
            .terminate(Duration::from_secs(5))
            .expect("did not stop on SIGTERM");
        assert!(status.success(), "{status:?}:\n{}", self.daemon.log());
        assert!(!self.sock.exists(), "socket left behind");
    }

    fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.daemon.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

/// A raw vhost-user frontend.
struct Raw(UnixStream);

impl Raw {
    fn send(&self, request: u32, flags: u32, payload: &[u8], fds: &[RawFd]) {
        let mut msg = Vec::with_capacity(12 + payload.len());
        for v in [request, flags, payload.len() as u32] {
            msg.extend_from_slice(&v.to_le_bytes());
        }
        msg.extend_from_slice(payload);
        let bufs: [&[u8]; 1] = [&msg];
        let sent = self.0.send_with_fds(&bufs[..], fds).expect("send");
        assert_eq!(sent, msg.len());
    }

    /// Reads one reply's u64 payload; `None` if the backend hung up.
    fn reply(&self) -> Option<u64> {
        let mut buf = [0u8; 20];
        (&self.0).read_exact(&mut buf).ok()?;
        Some(u64::from_le_bytes(buf[12..20].try_into().unwrap()))
    }

    /// A request that expects a REPLY_ACK; returns its status.
    fn acked(&self, request: u32, payload: &[u8], fds: &[RawFd]) -> Option<u64> {
        self.send(request, VERSION_1 | NEED_REPLY, payload, fds);
        self.reply()
    }

    /// Features, protocol features (`protocol`), owner: where every real frontend starts.
    fn handshake(&self, protocol: u64) {
        self.send(GET_FEATURES, VERSION_1, &[], &[]);
        let offered = self.reply().expect("GET_FEATURES");
        assert_ne!(offered & PROTOCOL_FEATURES_BIT, 0);
        self.send(
            SET_FEATURES,
            VERSION_1,
            &(offered & (PROTOCOL_FEATURES_BIT | 1 << 32)).to_le_bytes(),
            &[],
        );
        self.send(GET_PROTOCOL_FEATURES, VERSION_1, &[], &[]);
        self.reply().expect("GET_PROTOCOL_FEATURES");
        self.send(
            SET_PROTOCOL_FEATURES,
            VERSION_1,
            &protocol.to_le_bytes(),
            &[],
        );
        self.send(SET_OWNER, VERSION_1, &[], &[]);
    }

    /// SET_MEM_TABLE with one region of `size` bytes at guest address 0, backed by `file`.
    fn mem_table(&self, file: &File, size: u64) -> Option<u64> {
        let mut p = vec![0u8; 40];
        p[0] = 1;
        p[16..24].copy_from_slice(&size.to_le_bytes());
        p[24..32].copy_from_slice(&USER_ADDR.to_le_bytes());
        self.acked(SET_MEM_TABLE, &p, &[file.as_raw_fd()])
    }

    /// SET_VRING_NUM and SET_VRING_ADDR for ring 0, rings in the first 12 KiB.
    fn ring(&self) -> Option<u64> {
        let status = self.acked(SET_VRING_NUM, &state(0, 16), &[])?;
        assert_eq!(status, 0, "SET_VRING_NUM");
        let mut addr = vec![0u8; 40];
        for (at, off) in [(8, 0u64), (16, 0x2000), (24, 0x1000)] {
            addr[at..at + 8].copy_from_slice(&(USER_ADDR + off).to_le_bytes());
        }
        self.acked(SET_VRING_ADDR, &addr, &[])
    }

    /// Whether the backend closed the connection (reading past any pending reply).
    fn hung_up(&self) -> bool {
        let mut buf = [0u8; 64];
        loop {
            match (&self.0).read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(_) => return false,
            }
        }
    }
}

fn state(index: u32, num: u32) -> Vec<u8> {
    [index.to_le_bytes(), num.to_le_bytes()].concat()
}

fn memfd(size: u64, flags: libc::c_uint) -> File {
    // SAFETY: a literal name and plain flags.
    let fd = unsafe { libc::memfd_create(c"hostile".as_ptr(), libc::MFD_CLOEXEC | flags) };
    assert!(fd >= 0);
    // SAFETY: a fresh descriptor nobody else owns.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(size).unwrap();
    f
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut p = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the live array.
    assert_eq!(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: fresh descriptors nobody else owns.
    unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) }
}

fn eventfd() -> OwnedFd {
    // SAFETY: plain flags.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: a fresh descriptor nobody else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

#[test]
fn memory_regions_must_fit_their_files_and_cannot_shrink_after() {
    let mut b = Backend::start("bhmem", None);

    // Declared 2 MiB over a 64 KiB memfd: refused before anything maps it.
    let fe = b.connect();
    fe.handshake(REPLY_ACK);
    let small = memfd(64 << 10, libc::MFD_ALLOW_SEALING);
    let n = b.warnings().len();
    assert_eq!(
        fe.mem_table(&small, 2 * MIB),
        None,
        "a reply to a bad table"
    );
    assert!(fe.hung_up());
    b.expect_warning(
        n,
        "SET_MEM_TABLE",
        "beyond the end of its 0x10000-byte file",
    );

    // A sealable memfd the frontend did not seal: the backend seals it, the frontend's
    // ftruncate fails, and the rings (whose set-up reads guest memory) are set up.
    let fe = b.connect();
    fe.handshake(REPLY_ACK);
    let file = memfd(2 * MIB, libc::MFD_ALLOW_SEALING);
    assert_eq!(fe.mem_table(&file, 2 * MIB), Some(0));
    assert!(file.set_len(64 << 10).is_err(), "the memfd could shrink");
    assert_eq!(fe.ring(), Some(0));
    drop(fe);

    // A frontend that sealed it itself, as QEMU and our VMM do, is served as before.
    let fe = b.connect();
    fe.handshake(REPLY_ACK);
    let sealed = memfd(2 * MIB, libc::MFD_ALLOW_SEALING);
    // SAFETY: fcntl with integer arguments on our own descriptor.
    let rc = unsafe { libc::fcntl(sealed.as_raw_fd(), libc::F_ADD_SEALS, libc::F_SEAL_SHRINK) };
    assert_eq!(rc, 0);
    assert_eq!(fe.mem_table(&sealed, 2 * MIB), Some(0));
    assert_eq!(fe.ring(), Some(0));
    drop(fe);

    // A memfd that cannot be sealed (no MFD_ALLOW_SEALING; UML's temporary file is the same
    // case): accepted, then shrunk under the backend's mapping before the rings are set up.
    // The access that faults reads zeros and the frontend is dropped, the process lives.
    let fe = b.connect();
    fe.handshake(REPLY_ACK);
    let unsealable = memfd(2 * MIB, 0);
    assert_eq!(fe.mem_table(&unsealable, 2 * MIB), Some(0));
    unsealable.set_len(4096).unwrap();
    let n = b.warnings().len();
    let _ = fe.ring();
    assert!(fe.hung_up());
    b.expect_warning(n, "SET_MEM_TABLE", "shrank under its mapping");

    assert!(b.daemon.running(), "{}", b.daemon.log());
    b.serves_frames();
    b.stops();
}

#[test]
fn kicks_must_be_eventfds_and_calls_cannot_block() {
    let mut b = Backend::start("bhfd", None);
    let file = memfd(2 * MIB, libc::MFD_ALLOW_SEALING);

    // A blocking pipe as the kick: the worker would block in read().
    let fe = b.connect();
    fe.handshake(REPLY_ACK);
    assert_eq!(fe.mem_table(&file, 2 * MIB), Some(0));
    assert_eq!(fe.ring(), Some(0));
    let (r, _w) = pipe();
    let n = b.warnings().len();
    fe.acked(SET_VRING_KICK, &0u64.to_le_bytes(), &[r.as_raw_fd()]);
    assert!(fe.hung_up());
    b.expect_warning(n, "SET_VRING_KICK", "not an eventfd");

    // An IP socket as the call: neither an eventfd, nor a pipe, nor a unix socket (UML's
    // `os_pipe()`, which is a socketpair).
    let fe = b.connect();
    fe.handshake(REPLY_ACK);
    assert_eq!(fe.mem_table(&file, 2 * MIB), Some(0));
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let n = b.warnings().len();
    fe.acked(SET_VRING_CALL, &0u64.to_le_bytes(), &[sock.as_raw_fd()]);
    assert!(fe.hung_up());
    b.expect_warning(
        n,
        "SET_VRING_CALL",
        "not an eventfd, a pipe or a unix socket",
    );

    // A full pipe as the call (UML signals through a pipe): taken, but made non-blocking (the
    // flag is shared with us), so the worker's write cannot block with the datapath held; an
    // eventfd kick, likewise.
    let fe = b.connect();
    fe.handshake(REPLY_ACK);
    assert_eq!(fe.mem_table(&file, 2 * MIB), Some(0));
    assert_eq!(fe.ring(), Some(0));
    let (_r, w) = pipe();
    let mut filler = File::from(w.try_clone().unwrap());
    // SAFETY: fcntl with integer arguments on our own descriptor.
    unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    while filler.write(&[0; 4096]).is_ok() {}
    // SAFETY: as above.
    unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETFL, 0) };
    let kick = eventfd();
    assert_eq!(
        fe.acked(SET_VRING_CALL, &0u64.to_le_bytes(), &[w.as_raw_fd()]),
        Some(0)
    );
    assert_eq!(
        fe.acked(SET_VRING_KICK, &0u64.to_le_bytes(), &[kick.as_raw_fd()]),
        Some(0)
    );
    for fd in [w.as_raw_fd(), kick.as_raw_fd()] {
        // SAFETY: as above.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        assert_ne!(flags & libc::O_NONBLOCK, 0, "descriptor left blocking");
    }
    drop(fe);

    b.serves_frames();
    // A frontend that connects and then says nothing does not keep SIGTERM from working.
    let _idle = b.connect();
    std::thread::sleep(Duration::from_millis(100));
    b.stops();
}

#[test]
fn protocol_violations_cost_the_connection_and_one_warning() {
    let mut b = Backend::start("bhproto", None);
    let file = memfd(2 * MIB, libc::MFD_ALLOW_SEALING);
    type Step = (&'static str, &'static str, fn(&Raw, &File));
    let steps: [Step; 6] = [
        (
            "SET_VRING_NUM",
            "queue size 3 is not a power of two",
            |fe, _| {
                fe.acked(SET_VRING_NUM, &state(0, 3), &[]);
            },
        ),
        ("SET_VRING_NUM", "queue size 2048", |fe, _| {
            fe.acked(SET_VRING_NUM, &state(1, 2048), &[]);
        }),
        ("SET_PROTOCOL_FEATURES", "never offered", |fe, _| {
            let v = REPLY_ACK | CONFIGURE_MEM_SLOTS;
            fe.send(SET_PROTOCOL_FEATURES, VERSION_1, &v.to_le_bytes(), &[]);
        }),
        (
            "ADD_MEM_REG",
            "CONFIGURE_MEM_SLOTS is not offered",
            |fe, file| {
                assert_eq!(fe.mem_table(file, 2 * MIB), Some(0));
                let mut p = vec![0u8; 40];
                p[16..24].copy_from_slice(&MIB.to_le_bytes());
                fe.acked(ADD_MEM_REG, &p, &[file.as_raw_fd()]);
            },
        ),
        ("SET_VRING_ENABLE", "ring 64 does not exist", |fe, _| {
            fe.send(SET_VRING_ENABLE, VERSION_1, &state(64, 1), &[]);
        }),
        // Refused by the crate's handler rather than the relay: still named.
        ("SET_FEATURES", "by the vhost-user handler", |fe, _| {
            fe.send(SET_FEATURES, VERSION_1, &(1u64 << 62).to_le_bytes(), &[]);
        }),
    ];
    for (request, why, step) in steps {
        let fe = b.connect();
        // The early SET_VRING_ENABLE comes before any feature is acked, as QEMU sends it.
        if request != "SET_VRING_ENABLE" && request != "SET_PROTOCOL_FEATURES" {
            fe.handshake(REPLY_ACK);
        }
        let n = b.warnings().len();
        step(&fe, &file);
        assert!(fe.hung_up(), "{request}: still connected");
        b.expect_warning(n, request, why);
    }
    b.serves_frames();
    b.stops();
}

/// Waits until the backend's descriptor count settles at `want` (a connection's teardown
/// finishes after the frontend sees its socket close); returns the last count.
fn settles_at(b: &Backend, want: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let n = b.fd_count();
        if n == want || Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The descriptor count once it has not changed for 200 ms.
fn stable_count(b: &Backend) -> usize {
    let mut last = b.fd_count();
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let n = b.fd_count();
        if n == last {
            return n;
        }
        last = n;
    }
}

/// Connections in the soak: 2,000 in CI; `VMM_SOAK_CYCLES` sets more for a longer run
/// (resources/bench/soak-frontends.sh).
fn soak_cycles() -> usize {
    std::env::var("VMM_SOAK_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000)
}

#[test]
fn two_thousand_frontends_under_rlimit_nofile_1024_leak_nothing() {
    let cycles = soak_cycles();
    let b = Backend::start("bhsoak", Some(1024));
    // One complete connection first, so that everything opened once (the log, lazily
    // initialised state) is open when the baseline is taken.
    b.serves_frames();
    let cycle = || {
        let fe = b.connect();
        fe.send(GET_FEATURES, VERSION_1, &[], &[]);
        assert!(
            fe.reply().is_some(),
            "connection refused:\n{}",
            b.daemon.log()
        );
        drop(fe);
    };
    cycle();
    let baseline = stable_count(&b);
    for i in 0..cycles {
        cycle();
        if i % 500 == 499 {
            assert_eq!(
                settles_at(&b, baseline),
                baseline,
                "after {} connections",
                i + 1
            );
        }
    }
    b.serves_frames();
    assert_eq!(
        settles_at(&b, baseline),
        baseline,
        "after the last frontend"
    );
    assert!(
        b.daemon.log().matches("frontend connected").count() > cycles + 2,
        "{}",
        b.daemon.log()
    );
    b.stops();
}
