//! Busy polling (`busy_poll=USECS`, `busy_poll=auto`): after an event, a worker keeps looking
//! for more work (chains the guest added, frames the host queued) for a while before it goes
//! back to sleep in its epoll, as Linux's `SO_BUSY_POLL` and vhost-net's `busyloop_timeout`
//! do.
//!
//! Why: a guest that streams is paced by how soon its buffers come back and its frames
//! leave. Asleep, the worker learns of new chains only through the guest's kick, an eventfd
//! that wakes it a scheduler's latency later; looking, it finds them as they come. The cost
//! is a core's time spent looking: at most the window after each event, so an idle device
//! costs nothing, and a busy one converts the worker's idle moments into looks.
//!
//! `busy_poll=US` looks for a fixed window. `busy_poll=auto` sizes the window from how long
//! the worker has been sleeping, as QEMU's event loop sizes its polling (`poll-max-ns`): when
//! the next event came soon after the last work ([`GROW_WITHIN`]), looking would have caught
//! it, and the window doubles, up to [`AUTO_MAX`]; when it came later, the looking was
//! wasted, and the window halves, down to none. A window starts only at the second close event
//! in a row, as a lone one is most often a reply to what the worker just sent (a ping's echo).
//! A stream's events come microseconds apart and keep the window at its top; a NIC that
//! carries a frame now and then, or pings, or nothing, looks for nothing.
//!
//! `auto` is the default, as adaptive polling is QEMU's for its I/O threads. Measured with
//! the UML guest over tap (`resources/bench/busy-poll-cost.sh`, README): an idle or pinged NIC
//! costs no CPU time the kernel can count; a stream 1.8–2.0 times the backend's CPU of no
//! looking for 1.1–2.0 times the throughput, as a fixed 50 µs does; a trickle of datagrams a
//! few hundred microseconds apart, 1.0–1.2 times, where a fixed 50 µs costs 2.2–3. A ping's
//! round trip took 1.2–1.4 times as long as with no looking on the 2-core VM measured, where
//! the looking worker and the guest share the cores, until its echo stopped starting a
//! window ([`Pace::last_close`]): since, a ping's events find the window at none.

use std::fmt;
use std::time::{Duration, Instant};

use crate::config::BusyPollOpt;

/// The most a worker spends in one spell of looking, however much work it keeps finding:
/// it then goes back through its epoll, where the exit event and the other descriptors are.
const MAX_SPELL: Duration = Duration::from_millis(1);

/// The top of an adaptive window (`busy_poll=auto`): the fixed window that measured best on
/// the UML benchmarks (`busy_poll=50`), near QEMU's 32 µs `poll-max-ns`.
pub const AUTO_MAX: Duration = Duration::from_micros(50);

/// How soon after the worker's last work an event must wake it for the window to grow: four
/// times the window's top, as the time a sleeping worker sees includes the wake-up its sleep
/// cost (an idle CPU's, tens of microseconds on a VM). Measured on a UML guest's stream over
/// tap: asleep, the worker saw most events 50–500 µs after its last work, and with a 50 µs
/// window the same stream's events came within it; a limit of 50 µs kept the window at none
/// for most of the stream, and it moved as little as with no looking.
const GROW_WITHIN: Duration = Duration::from_micros(200);

/// The smallest adaptive window: a window that grows from none starts here, and one that
/// halves below it is none. Below a few microseconds a look or two is all it buys.
const AUTO_MIN: Duration = Duration::from_micros(4);

/// How a device's workers look for work after an event (`busy_poll`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BusyPoll {
    /// Straight back to sleep (`busy_poll=0`).
    Off,
    /// For this long after the last work found (`busy_poll=US`).
    Fixed(Duration),
    /// For a window that follows the worker's sleeps, up to [`AUTO_MAX`] (`busy_poll=auto`,
    /// the default).
    Auto,
}

/// One worker's adaptive window (`busy_poll=auto`), and when it last did work; each worker
/// has its own, as each queue pair's traffic is its own.
#[derive(Debug, Default)]
pub struct Pace {
    window: Duration,
    /// When the worker's last event's work ended, or its last look that found work: an
    /// event that wakes it within [`GROW_WITHIN`] of this grows the window.
    last_work: Option<Instant>,
    /// Whether the last event came within [`GROW_WITHIN`] of the work before it. A window
    /// starts only at the second such event in a row: a ping's echo, or a TCP ack, reaches
    /// the worker microseconds after it sent the request, often before it sleeps, and then
    /// nothing comes for milliseconds. Traced over 50 pings 10 ms apart through tap, each
    /// round trip was two events, the request about 10 ms after the last work and its echo
    /// 0–1 µs after the request's; the 4 µs window each echo started found work after 1 of
    /// the 50 (with this rule the window stayed none at 103 of 104 events). A stream's events
    /// come close one after another, and its window starts one event later.
    last_close: bool,
}

impl BusyPoll {
    /// As the spec asks; not given, `auto`.
    pub fn from_opt(opt: Option<BusyPollOpt>) -> BusyPoll {
        match opt {
            None | Some(BusyPollOpt::Auto) => BusyPoll::Auto,
            Some(BusyPollOpt::Micros(us)) => BusyPoll::from_micros(us),
        }
    }

    pub fn from_micros(us: u16) -> BusyPoll {
        if us == 0 {
            BusyPoll::Off
        } else {
            BusyPoll::Fixed(Duration::from_micros(u64::from(us)))
        }
    }
}

impl Pace {
    /// As an event wakes the worker: the window it looks for after this event's work.
    pub fn wake(&mut self, policy: BusyPoll) -> Duration {
        match policy {
            BusyPoll::Off => Duration::ZERO,
            BusyPoll::Fixed(window) => window,
            BusyPoll::Auto => {
                if let Some(last) = self.last_work.take() {
                    self.adapt(last.elapsed());
                }
                self.window
            }
        }
    }

    /// The auto window after an event `idle` past the last work.
    fn adapt(&mut self, idle: Duration) {
        let close = idle <= GROW_WITHIN;
        let after_close = std::mem::replace(&mut self.last_close, close);
        self.window = if close && self.window.is_zero() && !after_close {
            // A lone close event after a quiet spell: most often the answer to what the
            // worker just sent (see [`Pace::last_close`]); looking after it finds nothing.
            Duration::ZERO
        } else if close {
            // Looking long enough would have found this event without sleeping.
            (self.window * 2).clamp(AUTO_MIN, AUTO_MAX)
        } else if self.window / 2 >= AUTO_MIN {
            // Looking as long as allowed would not have found this event: look less.
            self.window / 2
        } else {
            Duration::ZERO
        };
    }

    /// Calls `look` (which does what work it finds and says whether it found any) until it
    /// has found none for `window`, each find starting the window again, and for
    /// [`MAX_SPELL`] at most; says how many looks found work and how long it looked. Call it
    /// with the window [`Pace::wake`] gave, zero included, as the event's work is done: it
    /// marks when.
    pub fn spin(&mut self, window: Duration, mut look: impl FnMut() -> bool) -> Spell {
        let start = Instant::now();
        let mut last_find = start;
        let mut spell = Spell::default();
        while !window.is_zero() {
            let now = Instant::now();
            spell.took = now.duration_since(start);
            if now.duration_since(last_find) >= window || spell.took >= MAX_SPELL {
                break;
            }
            if look() {
                spell.finds += 1;
                last_find = Instant::now();
            } else {
                // Gives the core to any thread waiting for it here (the guest's, just woken by
                // our call, most often), as vhost-net's busy loop stops when the scheduler
                // wants its CPU; with nothing waiting it returns at once.
                std::thread::yield_now();
            }
        }
        self.last_work = Some(last_find);
        spell
    }
}

/// What one spell of looking did ([`Pace::spin`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Spell {
    /// Looks that found work.
    pub finds: u64,
    /// From the spell's start to its last look at the clock, by the clock: the work found
    /// included, and any time the core was yielded to another thread.
    pub took: Duration,
}

/// As `busy_poll=` takes it.
impl fmt::Display for BusyPoll {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BusyPoll::Off => f.write_str("0"),
            BusyPoll::Fixed(window) => write!(f, "{}", window.as_micros()),
            BusyPoll::Auto => f.write_str("auto"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zero_window_never_looks() {
        let mut looks = 0;
        let mut pace = Pace::default();
        let window = pace.wake(BusyPoll::Off);
        assert_eq!(window, Duration::ZERO);
        assert_eq!(
            pace.spin(window, || {
                looks += 1;
                true
            }),
            Spell::default()
        );
        assert_eq!(looks, 0);
    }

    /// With nothing to find it looks for the window and stops; each find starts it again.
    #[test]
    fn looks_for_the_window_after_the_last_find() {
        let mut pace = Pace::default();
        let window = pace.wake(BusyPoll::from_micros(200));
        assert_eq!(window, Duration::from_micros(200));
        let start = Instant::now();
        let spell = pace.spin(window, || false);
        let idle = start.elapsed();
        assert_eq!(spell.finds, 0);
        assert!(idle >= Duration::from_micros(200), "{idle:?}");
        // The spell's own count of its time: the window at least, no more than it took.
        assert!(
            spell.took >= window && spell.took <= idle,
            "{spell:?} {idle:?}"
        );

        // Work found at the first three looks: the window runs from the third.
        let mut left = 3;
        let start = Instant::now();
        let spell = pace.spin(window, || {
            let work = left > 0;
            left -= i32::from(work);
            work
        });
        assert_eq!(spell.finds, 3);
        assert!(start.elapsed() >= Duration::from_micros(200));
        assert!(spell.took >= window, "{spell:?}");
    }

    /// Work that never stops still ends the spell, so the worker gets back to its epoll.
    #[test]
    fn a_spell_ends_however_much_work_there_is() {
        let start = Instant::now();
        let found = Pace::default().spin(Duration::from_micros(500), || true);
        let spell = start.elapsed();
        assert!(found.finds > 0);
        assert!(spell >= MAX_SPELL, "{spell:?}");
        assert!(spell < Duration::from_secs(1), "{spell:?}");
        assert!(found.took >= MAX_SPELL && found.took <= spell, "{found:?}");
    }

    /// `busy_poll=auto` starts with no window; from the second event in a row that comes
    /// within [`GROW_WITHIN`] of the last work, each doubles it from [`AUTO_MIN`] up to
    /// [`AUTO_MAX`], and it stays there.
    #[test]
    fn an_auto_window_grows_while_events_come_close() {
        let mut pace = Pace::default();
        assert_eq!(pace.wake(BusyPoll::Auto), Duration::ZERO);
        let mut windows = Vec::new();
        for idle in [0, 3, 200, 50, 120, 1, 7] {
            pace.adapt(Duration::from_micros(idle));
            windows.push(pace.window.as_micros());
        }
        assert_eq!(windows, [0, 4, 8, 16, 32, 50, 50]);
    }

    /// A ping through the worker: the request after a quiet spell, its echo at once. The echo
    /// alone starts no window, round trip after round trip; a burst that follows does.
    #[test]
    fn a_lone_close_event_starts_no_window() {
        let mut pace = Pace::default();
        let mut windows = Vec::new();
        for _ in 0..5 {
            for idle in [10_000, 1] {
                pace.adapt(Duration::from_micros(idle));
                windows.push(pace.window.as_micros());
            }
        }
        assert_eq!(windows, [0; 10]);
        for idle in [3, 5] {
            pace.adapt(Duration::from_micros(idle));
            windows.push(pace.window.as_micros());
        }
        assert_eq!(windows[10..], [4, 8]);
    }

    /// An event later than [`GROW_WITHIN`] after the last work halves the window, down to none:
    /// a NIC that carries a frame now and then does not look. Two close ones grow it again.
    #[test]
    fn an_auto_window_shrinks_to_none_when_events_come_far_apart() {
        let mut pace = Pace::default();
        for _ in 0..8 {
            pace.adapt(Duration::ZERO);
        }
        let mut windows = Vec::new();
        for idle in [201, 1000, 260, 10_000_000, 201, 201] {
            pace.adapt(Duration::from_micros(idle));
            windows.push(pace.window.as_micros());
        }
        assert_eq!(windows, [25, 12, 6, 0, 0, 0]);
        pace.adapt(Duration::from_micros(2));
        assert_eq!(pace.window, Duration::ZERO);
        pace.adapt(Duration::from_micros(2));
        assert_eq!(pace.window, AUTO_MIN);
    }

    /// The clock through `wake` and `spin`: an event long after the work shrinks the window,
    /// and a spell that finds work marks its last find as the work's end.
    #[test]
    fn an_auto_window_follows_the_time_since_the_last_work() {
        let mut pace = Pace::default();
        for _ in 0..3 {
            pace.adapt(Duration::ZERO);
        }
        assert_eq!(pace.window, AUTO_MIN * 2);
        pace.spin(Duration::ZERO, || false);
        std::thread::sleep(AUTO_MAX * 20);
        assert_eq!(pace.wake(BusyPoll::Auto), AUTO_MIN);
        let mut left = 2;
        pace.spin(AUTO_MIN, || {
            left -= 1;
            left >= 0
        });
        assert!(pace
            .last_work
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1)));
    }

    /// A fixed window does not adapt, and `off` is none, whatever the worker's sleeps.
    #[test]
    fn fixed_and_off_windows_do_not_adapt() {
        let mut pace = Pace::default();
        for _ in 0..3 {
            assert_eq!(
                pace.wake(BusyPoll::from_micros(30)),
                Duration::from_micros(30)
            );
            assert_eq!(pace.wake(BusyPoll::from_micros(0)), Duration::ZERO);
            pace.spin(Duration::ZERO, || false);
        }
        assert_eq!(BusyPoll::from_micros(0), BusyPoll::Off);
    }

    #[test]
    fn shown_as_the_option_takes_it() {
        let shown =
            [BusyPoll::Off, BusyPoll::from_micros(50), BusyPoll::Auto].map(|b| b.to_string());
        assert_eq!(shown, ["0", "50", "auto"]);
    }
}
