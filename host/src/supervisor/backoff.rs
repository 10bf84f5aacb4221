//! Restart arithmetic: the backoff delay and the restart-intensity window. Pure, no I/O.

use super::config::BackoffConfig;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The delay before the next restart, growing with each one.
#[derive(Debug)]
pub(crate) struct Backoff {
    config: BackoffConfig,
    attempt: u32,
}

impl Backoff {
    pub(crate) fn new(config: BackoffConfig) -> Self {
        Self { config, attempt: 0 }
    }

    /// Forgets past restarts (after a stable run or a reset).
    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The next delay, given a random number in `[0, 1)` for the jitter.
    pub(crate) fn next(&mut self, random: f64) -> Duration {
        let c = &self.config;
        let grown = c.initial.as_secs_f64() * c.factor.max(1.0).powi(self.attempt as i32);
        let capped = grown.min(c.max.as_secs_f64());
        self.attempt = self.attempt.saturating_add(1);
        let spread = 1.0 + c.jitter.clamp(0.0, 1.0) * (2.0 * random - 1.0);
        // The cap holds after the jitter too: `max` is a real maximum.
        let jittered = (capped * spread).min(c.max.as_secs_f64());
        Duration::from_secs_f64(jittered.max(0.0))
    }
}

/// Restarts within a sliding window; too many means the plugin has failed.
#[derive(Debug)]
pub(crate) struct Intensity {
    max: u32,
    window: Duration,
    restarts: VecDeque<Instant>,
}

impl Intensity {
    pub(crate) fn new(max: u32, window: Duration) -> Self {
        Self {
            max,
            window,
            restarts: VecDeque::new(),
        }
    }

    /// Records a restart at `now`; returns how many fall in the window, and whether that is
    /// more than allowed.
    pub(crate) fn record(&mut self, now: Instant) -> (u32, bool) {
        while let Some(&first) = self.restarts.front() {
            if now.duration_since(first) > self.window {
                self.restarts.pop_front();
            } else {
                break;
            }
        }
        self.restarts.push_back(now);
        let count = self.restarts.len() as u32;
        (count, count > self.max)
    }

    /// Forgets every restart (after a reset).
    pub(crate) fn clear(&mut self) {
        self.restarts.clear();
    }
}

/// A random number in `[0, 1)` from the OS's randomness (via a fresh v4 UUID).
pub(crate) fn random_unit() -> f64 {
    let bits = uuid::Uuid::new_v4().as_u64_pair().0 >> 11;
    bits as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> BackoffConfig {
        BackoffConfig {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            factor: 2.0,
            jitter: 0.2,
        }
    }

    #[test]
    fn grows_by_the_factor_up_to_the_cap() {
        let mut b = Backoff::new(config());
        let delays: Vec<u128> = (0..6).map(|_| b.next(0.5).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        b.reset();
        assert_eq!(b.next(0.5).as_millis(), 100);
    }

    #[test]
    fn jitter_stays_within_its_fraction() {
        let mut low = Backoff::new(config());
        let mut high = Backoff::new(config());
        assert_eq!(low.next(0.0).as_millis(), 80);
        assert_eq!(high.next(0.999_999).as_millis(), 119);
        let mut capped = Backoff::new(config());
        let delays: Vec<u128> = (0..8).map(|_| capped.next(0.999_999).as_millis()).collect();
        assert!(delays.iter().all(|d| *d <= 1000), "{delays:?}");
        let r = random_unit();
        assert!((0.0..1.0).contains(&r));
    }

    #[test]
    fn intensity_counts_only_the_window() {
        let mut i = Intensity::new(2, Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(i.record(t0), (1, false));
        assert_eq!(i.record(t0 + Duration::from_secs(1)), (2, false));
        assert_eq!(i.record(t0 + Duration::from_secs(2)), (3, true));
        // Eleven seconds after the first two, they have left the window.
        let later = t0 + Duration::from_secs(12);
        assert_eq!(i.record(later), (2, false));
        i.clear();
        assert_eq!(i.record(later), (1, false));
    }
}
