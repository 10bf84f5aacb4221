//! Restart arithmetic: the backoff delay, the restart-intensity window, and `Restarts`, which
//! combines them with `stable_after` into one decision per exit. Pure, no I/O; time is tokio's,
//! so tests drive it with a paused clock.

use super::config::{BackoffConfig, SupervisorConfig};
use std::collections::VecDeque;
use std::time::Duration;
use tokio::time::Instant;

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

/// What to do after a worker ended on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Restart after `delay`; this is restart number `attempt` within the window.
    Restart { delay: Duration, attempt: u32 },
    /// Too many restarts within the window: the plugin has failed.
    GiveUp { attempt: u32 },
}

/// The restart decisions of one supervisor across worker lives.
#[derive(Debug)]
pub(crate) struct Restarts {
    backoff: Backoff,
    intensity: Intensity,
    stable_after: Duration,
}

impl Restarts {
    pub(crate) fn new(config: &SupervisorConfig) -> Self {
        Self {
            backoff: Backoff::new(config.backoff),
            intensity: Intensity::new(config.max_restarts, config.restart_window),
            stable_after: config.stable_after,
        }
    }

    /// Decides after a worker that ran for `ran` ended (`random` in `[0, 1)` for the jitter):
    /// a stable run forgets the backoff; too many restarts in the window give up.
    pub(crate) fn after_exit(&mut self, ran: Duration, random: f64) -> Verdict {
        if ran >= self.stable_after {
            self.backoff.reset();
        }
        let (attempt, exceeded) = self.intensity.record(Instant::now());
        if exceeded {
            return Verdict::GiveUp { attempt };
        }
        Verdict::Restart {
            delay: self.backoff.next(random),
            attempt,
        }
    }

    /// Forgets every restart (a reset by the operator).
    pub(crate) fn reset(&mut self) {
        self.backoff.reset();
        self.intensity.clear();
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

    fn supervision(max_restarts: u32) -> SupervisorConfig {
        SupervisorConfig {
            backoff: BackoffConfig {
                initial: Duration::from_millis(20),
                max: Duration::from_secs(1),
                factor: 2.0,
                jitter: 0.0,
            },
            max_restarts,
            restart_window: Duration::from_secs(60),
            stable_after: Duration::from_secs(10),
            ..SupervisorConfig::default()
        }
    }

    fn delay(v: Verdict) -> u128 {
        match v {
            Verdict::Restart { delay, .. } => delay.as_millis(),
            Verdict::GiveUp { attempt } => panic!("gave up at attempt {attempt}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_crash_loop_backs_off_and_a_stable_run_forgets_it() {
        let mut r = Restarts::new(&supervision(100));
        let quick = Duration::from_millis(5);
        let delays: Vec<u128> = (0..4).map(|_| delay(r.after_exit(quick, 0.5))).collect();
        assert_eq!(delays, [20, 40, 80, 160]);
        // Ran just short of stable_after: the backoff keeps growing.
        tokio::time::advance(Duration::from_secs(9)).await;
        assert_eq!(delay(r.after_exit(Duration::from_secs(9), 0.5)), 320);
        // A run of stable_after or more starts the backoff over.
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(delay(r.after_exit(Duration::from_secs(10), 0.5)), 20);
    }

    #[tokio::test(start_paused = true)]
    async fn too_many_restarts_in_the_window_give_up_until_the_window_moves_on() {
        let mut r = Restarts::new(&supervision(3));
        let quick = Duration::from_millis(5);
        for attempt in 1..=3 {
            let v = r.after_exit(quick, 0.5);
            assert!(
                matches!(v, Verdict::Restart { attempt: a, .. } if a == attempt),
                "{v:?}"
            );
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        assert_eq!(r.after_exit(quick, 0.5), Verdict::GiveUp { attempt: 4 });
        // Still inside the window a minute after the first one: three of four remain.
        tokio::time::advance(Duration::from_secs(58)).await;
        assert_eq!(r.after_exit(quick, 0.5), Verdict::GiveUp { attempt: 4 });
        // A minute after the last of them, the window is empty again.
        tokio::time::advance(Duration::from_secs(62)).await;
        assert!(matches!(
            r.after_exit(quick, 0.5),
            Verdict::Restart { attempt: 1, .. }
        ));
        // A reset forgets the window and the backoff at once.
        r.reset();
        assert_eq!(
            r.after_exit(quick, 0.5),
            Verdict::Restart {
                delay: Duration::from_millis(20),
                attempt: 1
            }
        );
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
