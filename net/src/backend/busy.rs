//! Busy polling (`busy_poll=USECS`): after an event, a worker keeps looking for more work
//! (chains the guest added, frames the host queued) for that long before it goes back to
//! sleep in its epoll, as Linux's `SO_BUSY_POLL` and vhost-net's `busyloop_timeout` do.
//!
//! Why: a guest that streams is paced by how soon its buffers come back and its frames
//! leave. Asleep, the worker learns of new chains only through the guest's kick, an eventfd
//! that wakes it a scheduler's latency later; looking, it finds them as they come. The cost
//! is a core's time spent looking: at most USECS after each event, so an idle device costs
//! nothing, and a busy one converts the worker's idle moments into looks. Off by default,
//! as in Linux.

use std::time::{Duration, Instant};

/// The most a worker spends in one spell of looking, however much work it keeps finding:
/// it then goes back through its epoll, where the exit event and the other descriptors are.
const MAX_SPELL: Duration = Duration::from_millis(1);

/// How long a worker keeps looking for work after an event; zero is off.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BusyPoll(Duration);

impl BusyPoll {
    pub fn from_micros(us: u16) -> BusyPoll {
        BusyPoll(Duration::from_micros(u64::from(us)))
    }

    /// The budget in microseconds, as `busy_poll=` gave it.
    pub fn micros(&self) -> u128 {
        self.0.as_micros()
    }

    pub fn is_off(&self) -> bool {
        self.0.is_zero()
    }

    /// Calls `look` (which does what work it finds and says whether it found any) until it
    /// has found none for the whole budget, each find starting the budget again, and for
    /// [`MAX_SPELL`] at most; returns how many looks found work.
    pub fn spin(&self, mut look: impl FnMut() -> bool) -> u64 {
        if self.is_off() {
            return 0;
        }
        let start = Instant::now();
        let mut last_find = start;
        let mut found = 0;
        loop {
            let now = Instant::now();
            if now.duration_since(last_find) >= self.0 || now.duration_since(start) >= MAX_SPELL {
                return found;
            }
            if look() {
                found += 1;
                last_find = Instant::now();
            } else {
                // Gives the core to any thread waiting for it here (the guest's, just woken by
                // our call, most often), as vhost-net's busy loop stops when the scheduler
                // wants its CPU; with nothing waiting it returns at once.
                std::thread::yield_now();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_never_looks() {
        let mut looks = 0;
        assert_eq!(
            BusyPoll::default().spin(|| {
                looks += 1;
                true
            }),
            0
        );
        assert_eq!(looks, 0);
    }

    /// With nothing to find it looks for the budget and stops; each find starts it again.
    #[test]
    fn looks_for_the_budget_after_the_last_find() {
        let poll = BusyPoll::from_micros(200);
        let start = Instant::now();
        assert_eq!(poll.spin(|| false), 0);
        let idle = start.elapsed();
        assert!(idle >= Duration::from_micros(200), "{idle:?}");

        // Work found at the first three looks: the budget runs from the third.
        let mut left = 3;
        let start = Instant::now();
        let found = poll.spin(|| {
            let work = left > 0;
            left -= i32::from(work);
            work
        });
        assert_eq!(found, 3);
        assert!(start.elapsed() >= Duration::from_micros(200));
    }

    /// Work that never stops still ends the spell, so the worker gets back to its epoll.
    #[test]
    fn a_spell_ends_however_much_work_there_is() {
        let start = Instant::now();
        let found = BusyPoll::from_micros(500).spin(|| true);
        let spell = start.elapsed();
        assert!(found > 0);
        assert!(spell >= MAX_SPELL, "{spell:?}");
        assert!(spell < Duration::from_secs(1), "{spell:?}");
    }
}
