//! Which queue pairs of a multi-queue device (`queues=N`) the guest serves, and steering the
//! host's frames to those only.
//!
//! A guest enables as many pairs as it wants (Linux: one per vCPU, up to the pairs offered;
//! `ethtool -L` changes it), and the frontend says so with `SET_VRING_ENABLE`, which
//! vhost-user-backend handles without telling the device. So each pair's worker looks at its
//! own receive ring whenever it runs (a kick, the transport's descriptor) and reports what it
//! sees here; when that changes, the pair's transport is steered
//! ([`Transport::steer`](crate::transport::Transport::steer)): a tap queue is attached or
//! detached, a fanout group spreads flows over the pairs served from 0 on. A pair that finds
//! frames on its transport while its ring is not served drops them, counted in
//! `rx_dropped_unserved`: they arrived before the steering changed, and no ring will take them.
//! Pair 0 is never steered away from: what no other pair can take waits there for the guest,
//! as on a single-queue device.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::datapath::Datapath;
use crate::transport::Steering;

/// The device's served pairs: bit `i` set when pair `i`'s receive ring is served, as its
/// worker last saw it. Read without the lock on every event (a change is rare); changed under
/// it, which also orders the steering calls, so the fanout group's program always matches the
/// latest bits.
pub struct Steerer {
    pairs: u16,
    served: AtomicU64,
    /// Held while the bits change; counts the changes logged since the frontend came.
    changing: Mutex<u32>,
}

/// Changes logged (INFO) per frontend; a frontend that keeps switching rings on and off gets
/// the rest at DEBUG, so it cannot flood the log.
const LOGGED_CHANGES: u32 = 64;

impl Steerer {
    pub fn new(pairs: u16) -> Steerer {
        Steerer {
            pairs,
            served: AtomicU64::new(0),
            changing: Mutex::new(0),
        }
    }

    /// How many pairs from 0 on are served without a gap, at least 1.
    fn leading(bits: u64) -> u16 {
        ((!bits).trailing_zeros() as u16).max(1)
    }

    /// Pair `pair`'s worker saw its receive ring `served` (or not); `dp` is that pair's
    /// datapath, locked by the caller. Steers its transport when that is news.
    pub fn observe(&self, pair: u16, served: bool, dp: &mut Datapath) {
        let bit = 1u64 << pair;
        let known = |bits: u64| (bits & bit != 0) == served;
        if self.pairs <= 1 || known(self.served.load(Ordering::Acquire)) {
            return;
        }
        let mut logged = self.changing.lock().unwrap_or_else(|p| p.into_inner());
        let bits = self.served.load(Ordering::Acquire);
        if known(bits) {
            return;
        }
        let bits = if served { bits | bit } else { bits & !bit };
        self.served.store(bits, Ordering::Release);
        let steering = Steering {
            served,
            leading: Self::leading(bits),
        };
        let name = dp.transport().name();
        match dp.transport_mut().steer(steering) {
            Ok(()) => {
                *logged = logged.saturating_add(1);
                let level = if *logged <= LOGGED_CHANGES {
                    log::Level::Info
                } else {
                    log::Level::Debug
                };
                log::log!(
                    level,
                    "{name}: queue pair {pair} {}; received flows go to pairs 0..{}{}",
                    if served { "served" } else { "no longer served" },
                    steering.leading,
                    if *logged == LOGGED_CHANGES {
                        " (further changes are logged at debug level)"
                    } else {
                        ""
                    }
                );
            }
            Err(e) => log::warn!("steering received frames: {e}"),
        }
    }

    /// Pair `pair` has a new transport (a swap): steers it as the pair is served now, since
    /// a new one starts steered away from (pair 0 takes all). `dp` is the pair's datapath,
    /// locked by the caller.
    pub fn reapply(&self, pair: u16, dp: &mut Datapath) {
        if self.pairs <= 1 {
            return;
        }
        let _changing = self.changing.lock().unwrap_or_else(|p| p.into_inner());
        let bits = self.served.load(Ordering::Acquire);
        let steering = Steering {
            served: bits & (1 << pair) != 0,
            leading: Self::leading(bits),
        };
        if let Err(e) = dp.transport_mut().steer(steering) {
            log::warn!("steering received frames after a swap: {e}");
        }
    }

    /// The frontend is gone: nothing is served; every pair but 0 is steered away from (pair
    /// `i`'s datapath is `dps[i]`, each locked here in turn).
    pub fn reset(&self, dps: &[std::sync::Arc<Mutex<Datapath>>]) {
        if self.pairs <= 1 {
            return;
        }
        // Not under `changing` while datapaths are locked below: a worker takes its datapath,
        // then that lock (the workers are gone by now anyway).
        self.served.store(0, Ordering::Release);
        *self.changing.lock().unwrap_or_else(|p| p.into_inner()) = 0;
        let steering = Steering {
            served: false,
            leading: 1,
        };
        for dp in dps {
            let mut dp = super::device::lock(dp);
            if let Err(e) = dp.transport_mut().steer(steering) {
                log::warn!("steering received frames back to pair 0: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leading_counts_served_pairs_from_0_without_a_gap() {
        assert_eq!(Steerer::leading(0), 1);
        assert_eq!(Steerer::leading(0b1), 1);
        assert_eq!(Steerer::leading(0b11), 2);
        assert_eq!(Steerer::leading(0b1011), 2);
        assert_eq!(Steerer::leading(0b1110), 1);
        assert_eq!(Steerer::leading(0xffff), 16);
    }
}
