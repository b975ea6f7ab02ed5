//! `transport=user`: rootless user networking through libslirp, QEMU's user-mode TCP/IP stack.
//!
//! libslirp answers the guest's ARP, DHCP and DNS itself, and carries its TCP and UDP through
//! ordinary sockets of this process (so no privilege is needed); the gateway address (`.2`)
//! stands for the host's loopback, and `hostfwd=` forwards listen on the host.
//!
//! Bindings: the `libslirp-sys` crate (hand-written declarations, linked through pkg-config
//! against Debian's libslirp 4.7). It declares `SlirpConfig` up to version 3, which is all we
//! set (version 4 only adds `disable_dhcp`). The crate's high-level sibling, `libslirp`, runs
//! its own mio poll loop in a thread of its own, which does not fit: here the datapath thread
//! drives libslirp, as below.
//!
//! # How it plugs into the datapath
//! libslirp is single-threaded and callback-driven. The datapath waits, edge-triggered, on one
//! descriptor per transport, so that descriptor is an epoll set of our own holding:
//! - every socket libslirp asks to poll (kept in step with `slirp_pollfds_fill` after each
//!   turn),
//! - a timerfd armed for libslirp's next timer or poll timeout,
//! - an eventfd we write whenever a turn is due: after the guest's frames went in, or when
//!   libslirp calls `notify`.
//!
//! Any of them firing wakes the datapath, whose [`Transport::recv`] runs one turn
//! (`slirp_pollfds_fill`, a non-blocking `poll`, `slirp_pollfds_poll`, expired timers) when
//! the backlog is empty. Frames libslirp hands to its `send_packet` callback go to a bounded
//! backlog that `recv` drains into the batch; a frame that finds the backlog full is dropped
//! and counted (`rx_dropped_backlog`), never silently.

use std::collections::{HashMap, VecDeque};
use std::ffi::{c_char, c_int, c_void, CStr};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use libslirp_sys as ffi;

use super::sys::{self, cvt};
use super::Opening;
use super::{Offloads, PacketBatch, Transport, TransportError, TransportStats};
use crate::config::TransportConfig;
use crate::config::UserConfig;

/// Guest-bound frames kept while the guest does not take them (a TCP window's worth many
/// times over; UDP beyond it is dropped and counted).
const BACKLOG: usize = 4096;

/// `SlirpConfig` version we fill in (fields up to `disable_dns`).
const CONFIG_VERSION: u32 = 3;

/// A libslirp timer: what `timer_new` was given, and when it is due (ms, monotonic clock).
struct Timer {
    cb: ffi::SlirpTimerCb,
    cb_opaque: *mut c_void,
    expire_ms: Option<i64>,
}

/// What libslirp's callbacks reach through their `opaque` pointer.
struct Shared {
    backlog: VecDeque<Vec<u8>>,
    /// Buffers of frames already delivered, reused for the next ones.
    spare: Vec<Vec<u8>>,
    timers: Vec<*mut Timer>,
    stats: TransportStats,
    /// The eventfd that makes the datapath run a turn.
    wake: RawFd,
    /// Sockets libslirp closed since the last turn: their numbers may come back for new
    /// sockets, which must then be added to the epoll set afresh.
    closed: Vec<RawFd>,
}

pub struct User {
    slirp: *mut ffi::Slirp,
    /// Owned (from `Box::into_raw`); freed in `Drop` after libslirp is gone. A raw pointer, not
    /// a `Box`, because libslirp's callbacks write through it while `self` is borrowed.
    shared: *mut Shared,
    epoll: OwnedFd,
    wake: OwnedFd,
    timer: OwnedFd,
    /// Sockets in `epoll` and the events asked for them.
    registered: HashMap<RawFd, u32>,
    /// The poll set of the current turn (capacity kept).
    pollfds: Vec<libc::pollfd>,
}

// SAFETY: libslirp keeps no thread-local state and has no thread affinity; the `Slirp` and
// `Shared` pointers are owned by this value alone and only used through `&mut self` (the
// datapath's lock), so moving the whole to another thread is sound.
unsafe impl Send for User {}

fn io(op: &'static str) -> impl FnOnce(std::io::Error) -> TransportError {
    move |source| TransportError::Io {
        transport: "user",
        op,
        source,
    }
}

fn now_ns() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a live local the kernel fills.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

fn in_addr(a: Ipv4Addr) -> ffi::in_addr {
    a.into()
}

/// Writes 1 to an eventfd (non-blocking; a full counter is readable already).
fn kick(fd: RawFd) {
    let _ = sys::write(fd, &1u64.to_ne_bytes());
}

/// Reads (and so resets) an eventfd or timerfd.
fn drain(fd: RawFd) {
    let mut b = [0u8; 8];
    let _ = sys::read(fd, &mut b);
}

impl User {
    pub fn open(c: &UserConfig, mtu: u16) -> Result<User, TransportError> {
        // SAFETY: epoll_create1, eventfd and timerfd_create take no pointers; each descriptor
        // returned is new and owned by nobody else.
        let (epoll, wake, timer) = unsafe {
            let e = cvt(libc::epoll_create1(libc::EPOLL_CLOEXEC)).map_err(io("epoll_create1"))?;
            let e = OwnedFd::from_raw_fd(e);
            let w = cvt(libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK))
                .map_err(io("eventfd"))?;
            let w = OwnedFd::from_raw_fd(w);
            let t = cvt(libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_CLOEXEC | libc::TFD_NONBLOCK,
            ))
            .map_err(io("timerfd_create"))?;
            (e, w, OwnedFd::from_raw_fd(t))
        };
        let shared = Box::into_raw(Box::new(Shared {
            backlog: VecDeque::new(),
            spare: Vec::new(),
            timers: Vec::new(),
            stats: TransportStats::default(),
            wake: wake.as_raw_fd(),
            closed: Vec::new(),
        }));
        let mut user = User {
            slirp: std::ptr::null_mut(),
            shared,
            epoll,
            wake,
            timer,
            registered: HashMap::new(),
            pollfds: Vec::with_capacity(64),
        };
        for fd in [user.wake.as_raw_fd(), user.timer.as_raw_fd()] {
            user.epoll_ctl(libc::EPOLL_CTL_ADD, fd, libc::EPOLLIN as u32)
                .map_err(io("epoll_ctl"))?;
        }
        // SAFETY: SlirpConfig is plain data (integers, bools, addresses, pointers); all-zero
        // is valid (null strings mean "default").
        let mut cfg: ffi::SlirpConfig = unsafe { std::mem::zeroed() };
        cfg.version = CONFIG_VERSION;
        cfg.restricted = c_int::from(c.restrict);
        cfg.in_enabled = true;
        cfg.vnetwork = in_addr(c.net);
        cfg.vnetmask = in_addr(c.mask());
        cfg.vhost = in_addr(c.host(2));
        cfg.in6_enabled = false;
        cfg.vdhcp_start = in_addr(c.host(15));
        cfg.vnameserver = in_addr(c.host(3));
        cfg.if_mtu = usize::from(mtu);
        cfg.if_mru = usize::from(mtu);
        // SAFETY: `cfg` is a fully initialised version-3 config (libslirp copies what it keeps);
        // CALLBACKS is static; `shared` lives until after slirp_cleanup (Drop).
        user.slirp = unsafe { ffi::slirp_new(&cfg, &CALLBACKS, shared.cast()) };
        if user.slirp.is_null() {
            return Err(TransportError::Invalid {
                transport: "user",
                reason: "libslirp refused the configuration".into(),
            });
        }
        for f in &c.hostfwd {
            let guest = f.guest_addr.unwrap_or(c.host(15));
            // SAFETY: `slirp` is live; the addresses are passed by value.
            let r = unsafe {
                ffi::slirp_add_hostfwd(
                    user.slirp,
                    c_int::from(f.udp),
                    in_addr(f.host_addr),
                    c_int::from(f.host_port),
                    in_addr(guest),
                    c_int::from(f.guest_port),
                )
            };
            if r < 0 {
                let proto = if f.udp { "udp" } else { "tcp" };
                return Err(TransportError::Invalid {
                    transport: "user",
                    reason: format!(
                        "hostfwd {proto} {}:{} -> {guest}:{}: cannot listen on the host \
                         address (in use, or not this host's)",
                        f.host_addr, f.host_port, f.guest_port
                    ),
                });
            }
        }
        // SAFETY: libslirp returns a static NUL-terminated string.
        let version = unsafe { CStr::from_ptr(ffi::slirp_version_string()) };
        log::info!(
            "user: libslirp {}, guest network {}/{}, gateway {}, DNS {}, {} forward(s){}",
            version.to_string_lossy(),
            c.net,
            c.prefix,
            c.host(2),
            c.host(3),
            c.hostfwd.len(),
            if c.restrict { ", restricted" } else { "" }
        );
        user.sync()?;
        Ok(user)
    }

    fn epoll_ctl(&self, op: c_int, fd: RawFd, events: u32) -> std::io::Result<()> {
        super::sys::epoll_ctl(self.epoll.as_raw_fd(), op, fd, events, fd as u64)
    }

    /// Fills `self.pollfds` from libslirp's current wishes; returns its timeout (ms).
    fn fill(&mut self) -> u32 {
        self.pollfds.clear();
        let mut timeout = u32::MAX;
        // SAFETY: `slirp` is live; `add_poll` receives `self.pollfds`, borrowed only for the
        // call.
        unsafe {
            ffi::slirp_pollfds_fill(
                self.slirp,
                &mut timeout,
                Some(add_poll),
                (&mut self.pollfds as *mut Vec<libc::pollfd>).cast(),
            )
        };
        timeout
    }

    /// One turn: libslirp's sockets polled without waiting, its expired timers run, then the
    /// epoll set and the timer brought in line with what it waits for next.
    fn turn(&mut self) -> Result<(), TransportError> {
        // Empty our epoll set's ready list (what is still ready comes back), so that polling
        // its descriptor means something; the sockets themselves are polled below.
        let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 32];
        // SAFETY: `evs` is a live array of the stated length.
        unsafe { libc::epoll_wait(self.epoll.as_raw_fd(), evs.as_mut_ptr(), 32, 0) };
        drain(self.wake.as_raw_fd());
        drain(self.timer.as_raw_fd());
        self.fill();
        // SAFETY: `pollfds` is a live slice of its stated length.
        let r = unsafe {
            libc::poll(
                self.pollfds.as_mut_ptr(),
                self.pollfds.len() as libc::nfds_t,
                0,
            )
        };
        let select_error = c_int::from(r < 0);
        // SAFETY: as in `fill`; `get_revents` reads the set `fill` built.
        unsafe {
            ffi::slirp_pollfds_poll(
                self.slirp,
                select_error,
                Some(get_revents),
                (&mut self.pollfds as *mut Vec<libc::pollfd>).cast(),
            )
        };
        self.run_timers();
        self.sync()
    }

    /// Runs every timer that is due. A callback may re-arm or free timers, so each is looked
    /// up afresh.
    fn run_timers(&mut self) {
        let now_ms = now_ns() / 1_000_000;
        loop {
            // SAFETY: `shared` is live; the borrow ends before the callback runs.
            let due = unsafe {
                let s = &mut *self.shared;
                s.timers
                    .iter()
                    .copied()
                    .find(|&t| (*t).expire_ms.is_some_and(|e| e <= now_ms))
            };
            let Some(t) = due else { break };
            // SAFETY: `t` is a live timer (still in the list); disarmed before its callback,
            // which libslirp expects to be called once per arming.
            unsafe {
                (*t).expire_ms = None;
                if let Some(cb) = (*t).cb {
                    cb((*t).cb_opaque);
                }
            }
        }
    }

    /// Puts libslirp's sockets in the epoll set with the events it wants, and arms the timer.
    fn sync(&mut self) -> Result<(), TransportError> {
        // SAFETY: `shared` is live; libslirp does not run during this borrow.
        for fd in std::mem::take(unsafe { &mut (*self.shared).closed }) {
            if self.registered.remove(&fd).is_some() {
                let _ = self.epoll_ctl(libc::EPOLL_CTL_DEL, fd, 0);
            }
        }
        let timeout = self.fill();
        let mut wanted: HashMap<RawFd, u32> = HashMap::with_capacity(self.pollfds.len());
        for p in &self.pollfds {
            let mut ev = 0u32;
            if p.events & libc::POLLIN != 0 {
                ev |= libc::EPOLLIN as u32;
            }
            if p.events & libc::POLLOUT != 0 {
                ev |= libc::EPOLLOUT as u32;
            }
            if p.events & libc::POLLPRI != 0 {
                ev |= libc::EPOLLPRI as u32;
            }
            *wanted.entry(p.fd).or_insert(0) |= ev;
        }
        let gone: Vec<RawFd> = self
            .registered
            .keys()
            .filter(|fd| !wanted.contains_key(fd))
            .copied()
            .collect();
        for fd in gone {
            self.registered.remove(&fd);
            // A socket libslirp closed has left the set by itself.
            let _ = self.epoll_ctl(libc::EPOLL_CTL_DEL, fd, 0);
        }
        for (&fd, &ev) in &wanted {
            let r = match self.registered.get(&fd) {
                Some(&old) if old == ev => continue,
                Some(_) => self.epoll_ctl(libc::EPOLL_CTL_MOD, fd, ev).or_else(|e| {
                    // Closed and reopened under the same number since the last turn.
                    if e.raw_os_error() == Some(libc::ENOENT) {
                        self.epoll_ctl(libc::EPOLL_CTL_ADD, fd, ev)
                    } else {
                        Err(e)
                    }
                }),
                None => self.epoll_ctl(libc::EPOLL_CTL_ADD, fd, ev).or_else(|e| {
                    if e.raw_os_error() == Some(libc::EEXIST) {
                        self.epoll_ctl(libc::EPOLL_CTL_MOD, fd, ev)
                    } else {
                        Err(e)
                    }
                }),
            };
            r.map_err(io("epoll_ctl"))?;
            self.registered.insert(fd, ev);
        }
        self.arm(timeout)
    }

    /// Arms the timerfd for the earlier of libslirp's poll timeout and its next timer.
    fn arm(&mut self, timeout_ms: u32) -> Result<(), TransportError> {
        let now = now_ns();
        let mut due_ns: Option<i64> =
            (timeout_ms != u32::MAX).then(|| now + i64::from(timeout_ms) * 1_000_000);
        // SAFETY: `shared` and its timers are live; nothing re-enters during this read.
        unsafe {
            for &t in &(*self.shared).timers {
                if let Some(e) = (*t).expire_ms {
                    let ns = e.saturating_mul(1_000_000);
                    due_ns = Some(due_ns.map_or(ns, |d| d.min(ns)));
                }
            }
        }
        let value = match due_ns {
            // Zero would disarm: a deadline already past fires at once.
            Some(ns) => libc::timespec {
                tv_sec: (ns.max(1)) / 1_000_000_000,
                tv_nsec: (ns.max(1)) % 1_000_000_000,
            },
            None => libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
        };
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: value,
        };
        // SAFETY: `spec` is a live local; no old value is asked for.
        cvt(unsafe {
            libc::timerfd_settime(
                self.timer.as_raw_fd(),
                libc::TFD_TIMER_ABSTIME,
                &spec,
                std::ptr::null_mut(),
            )
        })
        .map_err(io("timerfd_settime"))?;
        Ok(())
    }
}

impl Drop for User {
    fn drop(&mut self) {
        if !self.slirp.is_null() {
            // SAFETY: `slirp` is live and not used again; it frees its timers through our
            // callbacks, which still find `shared`.
            unsafe { ffi::slirp_cleanup(self.slirp) };
        }
        // SAFETY: `shared` came from Box::into_raw and libslirp, now gone, no longer uses it;
        // timers it did not free are ours to free.
        unsafe {
            let shared = Box::from_raw(self.shared);
            for t in shared.timers {
                drop(Box::from_raw(t));
            }
        }
    }
}

impl Transport for User {
    fn name(&self) -> &'static str {
        "user"
    }

    fn opens_sockets(&self) -> bool {
        true
    }

    fn vnet_hdr_len(&self) -> usize {
        0
    }

    fn rx_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    fn tx_fd(&self) -> RawFd {
        // libslirp takes every frame at once: sending never falls short.
        self.epoll.as_raw_fd()
    }

    fn recv(&mut self, batch: &mut PacketBatch) -> Result<usize, TransportError> {
        // SAFETY: `shared` is live; the borrow ends before libslirp runs.
        if unsafe { (*self.shared).backlog.is_empty() } {
            self.turn()?;
        }
        // SAFETY: `shared` is live and libslirp does not run while this borrow lasts.
        let s = unsafe { &mut *self.shared };
        let mut n = 0;
        while n < batch.depth() {
            let Some(frame) = s.backlog.pop_front() else {
                break;
            };
            let buf = &mut batch.bufs_mut()[n];
            if frame.len() > buf.capacity() {
                s.stats.rx_dropped_truncated += 1;
            } else {
                buf.space()[..frame.len()].copy_from_slice(&frame);
                buf.set_len(frame.len());
                n += 1;
            }
            if s.spare.len() < 64 {
                s.spare.push(frame);
            }
        }
        batch.set_count(n);
        Ok(n)
    }

    fn send(&mut self, batch: &PacketBatch) -> Result<usize, TransportError> {
        for p in batch.packets() {
            let data = p.data();
            // SAFETY: `slirp` is live; libslirp copies the frame before returning.
            unsafe { ffi::slirp_input(self.slirp, data.as_ptr(), data.len() as c_int) };
        }
        if batch.count() > 0 {
            // Replies (ARP, DHCP) may be waiting and new sockets may want polling: a turn.
            kick(self.wake.as_raw_fd());
        }
        Ok(batch.count())
    }

    fn set_offloads(&mut self, _offloads: Offloads) -> Result<(), TransportError> {
        Ok(())
    }

    fn stats(&self) -> TransportStats {
        // SAFETY: `shared` is live; a copy is read.
        unsafe { (*self.shared).stats }
    }
}

// ---- libslirp's callbacks. `opaque` is always our `Shared` (given to slirp_new). ----

static CALLBACKS: ffi::SlirpCb = ffi::SlirpCb {
    send_packet: Some(send_packet),
    guest_error: Some(guest_error),
    clock_get_ns: Some(clock_get_ns),
    timer_new: Some(timer_new),
    timer_free: Some(timer_free),
    timer_mod: Some(timer_mod),
    register_poll_fd: Some(register_poll_fd),
    unregister_poll_fd: Some(unregister_poll_fd),
    notify: Some(notify),
};

/// A frame for the guest: into the backlog, or counted if it is full.
unsafe extern "C" fn send_packet(buf: *const c_void, len: usize, opaque: *mut c_void) -> isize {
    // SAFETY: `opaque` is our live `Shared`; no other borrow of it is held while libslirp
    // runs; `buf` holds `len` bytes for the duration of the call.
    unsafe {
        let s = &mut *opaque.cast::<Shared>();
        if s.backlog.len() >= BACKLOG {
            s.stats.rx_dropped_backlog += 1;
        } else {
            let mut v = s.spare.pop().unwrap_or_default();
            v.clear();
            v.extend_from_slice(std::slice::from_raw_parts(buf.cast::<u8>(), len));
            s.backlog.push_back(v);
            kick(s.wake);
        }
    }
    len as isize
}

unsafe extern "C" fn guest_error(msg: *const c_char, _opaque: *mut c_void) {
    // SAFETY: libslirp passes a NUL-terminated message.
    let msg = unsafe { CStr::from_ptr(msg) };
    log::warn!("user: guest error: {}", msg.to_string_lossy());
}

unsafe extern "C" fn clock_get_ns(_opaque: *mut c_void) -> i64 {
    now_ns()
}

unsafe extern "C" fn timer_new(
    cb: ffi::SlirpTimerCb,
    cb_opaque: *mut c_void,
    opaque: *mut c_void,
) -> *mut c_void {
    let t = Box::into_raw(Box::new(Timer {
        cb,
        cb_opaque,
        expire_ms: None,
    }));
    // SAFETY: `opaque` is our live `Shared`, not otherwise borrowed while libslirp runs.
    unsafe { (*opaque.cast::<Shared>()).timers.push(t) };
    t.cast()
}

unsafe extern "C" fn timer_free(timer: *mut c_void, opaque: *mut c_void) {
    let t = timer.cast::<Timer>();
    // SAFETY: as in `timer_new`; `t` came from `timer_new` and is freed once, here.
    unsafe {
        let timers = &mut (*opaque.cast::<Shared>()).timers;
        if let Some(i) = timers.iter().position(|&x| x == t) {
            timers.swap_remove(i);
            drop(Box::from_raw(t));
        }
    }
}

unsafe extern "C" fn timer_mod(timer: *mut c_void, expire_ms: i64, opaque: *mut c_void) {
    // SAFETY: `timer` came from `timer_new` and is live; `opaque` as in `timer_new`.
    unsafe {
        (*timer.cast::<Timer>()).expire_ms = Some(expire_ms);
        // The next deadline may be earlier than the armed one: re-arm in the next turn.
        kick((*opaque.cast::<Shared>()).wake);
    }
}

/// New sockets are picked up from `slirp_pollfds_fill` at each turn; nothing to do here.
unsafe extern "C" fn register_poll_fd(_fd: c_int, _opaque: *mut c_void) {}

/// A socket closes: forget it at the next turn.
unsafe extern "C" fn unregister_poll_fd(fd: c_int, opaque: *mut c_void) {
    // SAFETY: `opaque` is our live `Shared`, not otherwise borrowed while libslirp runs.
    unsafe { (*opaque.cast::<Shared>()).closed.push(fd) };
}

unsafe extern "C" fn notify(opaque: *mut c_void) {
    // SAFETY: `opaque` is our live `Shared`.
    unsafe { kick((*opaque.cast::<Shared>()).wake) };
}

fn slirp_to_poll(events: c_int) -> libc::c_short {
    let mut e = 0;
    if events & ffi::SLIRP_POLL_IN != 0 {
        e |= libc::POLLIN;
    }
    if events & ffi::SLIRP_POLL_OUT != 0 {
        e |= libc::POLLOUT;
    }
    if events & ffi::SLIRP_POLL_PRI != 0 {
        e |= libc::POLLPRI;
    }
    e
}

fn poll_to_slirp(revents: libc::c_short) -> c_int {
    let mut e = 0;
    for (p, s) in [
        (libc::POLLIN, ffi::SLIRP_POLL_IN),
        (libc::POLLOUT, ffi::SLIRP_POLL_OUT),
        (libc::POLLPRI, ffi::SLIRP_POLL_PRI),
        (libc::POLLERR, ffi::SLIRP_POLL_ERR),
        (libc::POLLHUP, ffi::SLIRP_POLL_HUP),
    ] {
        if revents & p != 0 {
            e |= s;
        }
    }
    e
}

unsafe extern "C" fn add_poll(fd: c_int, events: c_int, opaque: *mut c_void) -> c_int {
    // SAFETY: `opaque` is the `Vec<pollfd>` that `fill` passed, borrowed only by this call.
    let fds = unsafe { &mut *opaque.cast::<Vec<libc::pollfd>>() };
    fds.push(libc::pollfd {
        fd,
        events: slirp_to_poll(events),
        revents: 0,
    });
    (fds.len() - 1) as c_int
}

unsafe extern "C" fn get_revents(idx: c_int, opaque: *mut c_void) -> c_int {
    // SAFETY: `opaque` is the `Vec<pollfd>` that `turn` passed.
    let fds = unsafe { &*opaque.cast::<Vec<libc::pollfd>>() };
    usize::try_from(idx)
        .ok()
        .and_then(|i| fds.get(i))
        .map_or(0, |p| poll_to_slirp(p.revents))
}

/// The opener of `transport=user` (see [`crate::kind`]).
pub(crate) fn from_config(
    config: &TransportConfig,
    o: &Opening,
) -> Result<Box<dyn Transport>, TransportError> {
    let TransportConfig::User(c) = config else {
        return Err(super::wrong_config("user"));
    };
    Ok(Box::new(User::open(c, o.mtu)?))
}

#[cfg(test)]
mod tests;
