//! What a queue pair's worker listens for on its transport's descriptors: readable always,
//! writable only while the host refuses frames.
//!
//! Both are edge-triggered: the datapath drains until the host would block or the guest is
//! out of buffers and resumes on the guest's kick, so a full ring never spins the worker.
//! Writability is asked for only while frames wait for the host ([`Watch::want_out`]),
//! because an `EPOLLOUT` interest is not free: every sent frame's buffer, freed, wakes the
//! socket's wait queue (`sock_def_write_space`), and with `EPOLLOUT` in the interest each of
//! those wake-ups runs epoll's callback and queues a ready event the worker then reads.
//! Measured (resources/bench/HISTORY.md): about 2 % of the packet rate with 64-byte frames.
//!
//! Nothing is lost by asking late: `EPOLL_CTL_MOD` (a descriptor that also receives) and
//! `EPOLL_CTL_ADD` (one that only sends) poll the descriptor as they add the interest, so a
//! socket that became writable between the refused send and the request reports at once.
//!
//! A watch holds its worker's epoll weakly: the connection's workers own the epoll and may be
//! gone (the frontend left) while the datapath, which outlives connections, still holds the
//! watch; then it does nothing. The datapath's lock orders every change: the worker changes
//! the interest under it, and a transport swap moves the watch under it, so the worker never
//! touches a descriptor that is not registered or was just closed.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Weak};

// Every call below holds the worker's epoll through an upgraded `Arc`, so the number it passes
// is that epoll, not a descriptor that took its number after the worker went.
use crate::transport::epoll_ctl as ctl;

/// A worker's epoll and the event numbers its transport descriptors report as (receive,
/// transmit; see `device::transport_events`).
#[derive(Clone)]
pub struct Poller {
    epoll: Weak<dyn AsRawFd + Send + Sync>,
    events: (u64, u64),
}

impl Poller {
    /// The worker owning `epoll` (held weakly) reports the transport's readiness as `events`.
    pub fn new(epoll: &Arc<dyn AsRawFd + Send + Sync>, events: (u64, u64)) -> Poller {
        Poller {
            epoll: Arc::downgrade(epoll),
            events,
        }
    }
}

/// A transport's descriptors (receive, transmit) registered on a worker's epoll.
pub struct Watch {
    poller: Poller,
    fds: (RawFd, RawFd),
    /// Whether `EPOLLOUT` is in the transmit descriptor's interest now.
    out: bool,
}

impl Watch {
    /// Registers `fds` (receive, transmit) on `poller`'s epoll, the receive descriptor for
    /// readable. A separate transmit descriptor is not registered until writability is asked
    /// for: merely being on an epoll puts a sleeper on its wait queue, which every freed
    /// buffer then wakes. `Ok(None)` when the worker is gone.
    pub fn add(poller: Poller, fds: (RawFd, RawFd)) -> io::Result<Option<Watch>> {
        let Some(epoll) = poller.epoll.upgrade() else {
            return Ok(None);
        };
        let (rx_event, _) = poller.events;
        ctl(
            epoll.as_raw_fd(),
            libc::EPOLL_CTL_ADD,
            fds.0,
            interest(true, false),
            rx_event,
        )?;
        Ok(Some(Watch {
            poller,
            fds,
            out: false,
        }))
    }

    /// Takes the descriptors off the epoll (before they are closed) and gives back the
    /// poller, to watch a transport that replaces this one.
    pub fn remove(self) -> Poller {
        if let Some(epoll) = self.poller.epoll.upgrade() {
            let (rx, tx) = self.fds;
            let _ = ctl(epoll.as_raw_fd(), libc::EPOLL_CTL_DEL, rx, 0, 0);
            if tx != rx && self.out {
                let _ = ctl(epoll.as_raw_fd(), libc::EPOLL_CTL_DEL, tx, 0, 0);
            }
        }
        self.poller
    }

    /// Listens for the transmit descriptor's writability, or stops; a no-op when that is
    /// already so. On an error the interest is unchanged (and a later call tries again).
    pub fn want_out(&mut self, out: bool) -> io::Result<()> {
        if out == self.out {
            return Ok(());
        }
        let Some(epoll) = self.poller.epoll.upgrade() else {
            return Ok(());
        };
        let (rx, tx) = self.fds;
        let (rx_event, tx_event) = self.poller.events;
        let epoll = epoll.as_raw_fd();
        if tx == rx {
            ctl(
                epoll,
                libc::EPOLL_CTL_MOD,
                rx,
                interest(true, out),
                rx_event,
            )?;
        } else if out {
            ctl(
                epoll,
                libc::EPOLL_CTL_ADD,
                tx,
                interest(false, true),
                tx_event,
            )?;
        } else {
            ctl(epoll, libc::EPOLL_CTL_DEL, tx, 0, 0)?;
        }
        self.out = out;
        Ok(())
    }

    /// Has the epoll look at the receive descriptor again, as if it had just been added: if
    /// it is readable (a receive stopped at its bound with more waiting), an event is queued
    /// at once, and the worker comes back to it after what else is ready. `EPOLL_CTL_MOD`
    /// with the interest unchanged is how an edge-triggered watch is re-armed.
    pub fn rearm_rx(&self) -> io::Result<()> {
        let Some(epoll) = self.poller.epoll.upgrade() else {
            return Ok(());
        };
        let (rx, tx) = self.fds;
        let (rx_event, _) = self.poller.events;
        ctl(
            epoll.as_raw_fd(),
            libc::EPOLL_CTL_MOD,
            rx,
            interest(true, tx == rx && self.out),
            rx_event,
        )
    }

    /// Whether `EPOLLOUT` is in the interest now.
    pub fn wants_out(&self) -> bool {
        self.out
    }
}

/// The epoll interest: edge-triggered, readable and writable as asked (errors and hang-ups
/// are always reported).
fn interest(readable: bool, writable: bool) -> u32 {
    let mut events = libc::EPOLLET as u32;
    if readable {
        events |= libc::EPOLLIN as u32;
    }
    if writable {
        events |= libc::EPOLLOUT as u32;
    }
    events
}

/// An epoll as a worker's, for tests here and of the datapath.
#[cfg(test)]
pub(crate) mod testing {
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
    use std::sync::Arc;

    struct Epoll(OwnedFd);

    impl AsRawFd for Epoll {
        fn as_raw_fd(&self) -> RawFd {
            self.0.as_raw_fd()
        }
    }

    pub fn epoll() -> Arc<dyn AsRawFd + Send + Sync> {
        // SAFETY: no pointers; a new descriptor or -1.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        assert!(fd >= 0, "epoll_create1: {}", io::Error::last_os_error());
        // SAFETY: `fd` was just created and is owned by nothing else.
        Arc::new(Epoll(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// The events ready now (no waiting), as (event number, EPOLLIN, EPOLLOUT).
    pub fn ready(epoll: &Arc<dyn AsRawFd + Send + Sync>) -> Vec<(u64, bool, bool)> {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 8];
        // SAFETY: `events` has room for the 8 events asked for.
        let n = unsafe { libc::epoll_wait(epoll.as_raw_fd(), events.as_mut_ptr(), 8, 0) };
        assert!(n >= 0, "epoll_wait: {}", io::Error::last_os_error());
        events[..n as usize]
            .iter()
            .map(|e| {
                let (bits, data) = (e.events, e.u64);
                (
                    data,
                    bits & libc::EPOLLIN as u32 != 0,
                    bits & libc::EPOLLOUT as u32 != 0,
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{epoll, ready};
    use super::*;
    use std::os::unix::net::UnixDatagram;

    #[test]
    fn writability_is_reported_only_while_asked_for() {
        let ep = epoll();
        let (a, b) = UnixDatagram::pair().unwrap();
        let fd = a.as_raw_fd();
        let mut w = Watch::add(Poller::new(&ep, (7, 8)), (fd, fd))
            .unwrap()
            .expect("the epoll is alive");
        // Writable, but not asked: nothing.
        assert_eq!(ready(&ep), vec![]);
        // Asked while already writable: reported at once, by the request itself.
        w.want_out(true).unwrap();
        assert!(w.wants_out());
        assert_eq!(ready(&ep), vec![(7, false, true)]);
        // Edge-triggered: not again until something changes.
        assert_eq!(ready(&ep), vec![]);
        w.want_out(false).unwrap();
        // Readable is always reported.
        b.send(b"x").unwrap();
        assert_eq!(ready(&ep), vec![(7, true, false)]);
        let poller = w.remove();
        b.send(b"y").unwrap();
        assert_eq!(ready(&ep), vec![], "removed descriptors report nothing");
        // The poller watches again (what a transport swap does).
        let w = Watch::add(poller, (fd, fd)).unwrap().unwrap();
        assert_eq!(ready(&ep), vec![(7, true, false)]);
        w.remove();
    }

    #[test]
    fn a_separate_transmit_descriptor_is_on_the_epoll_only_while_writability_is_asked_for() {
        let ep = epoll();
        let (rx, rx_peer) = UnixDatagram::pair().unwrap();
        let (tx, _tx_peer) = UnixDatagram::pair().unwrap();
        let mut w = Watch::add(Poller::new(&ep, (7, 8)), (rx.as_raw_fd(), tx.as_raw_fd()))
            .unwrap()
            .unwrap();
        assert_eq!(ready(&ep), vec![]);
        rx_peer.send(b"x").unwrap();
        assert_eq!(ready(&ep), vec![(7, true, false)]);
        w.want_out(true).unwrap();
        assert_eq!(ready(&ep), vec![(8, false, true)]);
        w.want_out(false).unwrap();
        // Off the epoll: registering it again is no EEXIST.
        w.want_out(true).unwrap();
        assert_eq!(ready(&ep), vec![(8, false, true)]);
        let poller = w.remove();
        // Both off: a new watch of the same descriptors registers them afresh (and reports
        // the datagram still unread at once).
        let mut w = Watch::add(poller, (rx.as_raw_fd(), tx.as_raw_fd()))
            .unwrap()
            .unwrap();
        w.want_out(true).unwrap();
        assert_eq!(ready(&ep), vec![(7, true, false), (8, false, true)]);
        w.remove();
    }

    #[test]
    fn a_gone_worker_makes_the_watch_do_nothing() {
        let ep = epoll();
        let (a, _b) = UnixDatagram::pair().unwrap();
        let fd = a.as_raw_fd();
        let poller = Poller::new(&ep, (7, 8));
        let mut w = Watch::add(poller.clone(), (fd, fd)).unwrap().unwrap();
        drop(ep);
        w.want_out(true).unwrap();
        assert!(!w.wants_out(), "no epoll, no interest");
        assert!(Watch::add(w.remove(), (fd, fd)).unwrap().is_none());
    }

    #[test]
    fn a_failed_request_leaves_the_interest_as_it_was() {
        let ep = epoll();
        let (rx, _rx_peer) = UnixDatagram::pair().unwrap();
        let (tx, _tx_peer) = UnixDatagram::pair().unwrap();
        // Something else put the transmit descriptor on the epoll.
        let other = Watch::add(Poller::new(&ep, (9, 10)), (tx.as_raw_fd(), tx.as_raw_fd()))
            .unwrap()
            .unwrap();
        let mut w = Watch::add(Poller::new(&ep, (7, 8)), (rx.as_raw_fd(), tx.as_raw_fd()))
            .unwrap()
            .unwrap();
        let err = w
            .want_out(true)
            .expect_err("the descriptor is already on the epoll");
        assert_eq!(err.raw_os_error(), Some(libc::EEXIST));
        assert!(!w.wants_out());
        // Removing this watch leaves the other's registration alone.
        w.remove();
        let mut other = other;
        other.want_out(true).unwrap();
        assert_eq!(ready(&ep), vec![(9, false, true)]);
        other.remove();
    }
}
