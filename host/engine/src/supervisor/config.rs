//! Supervision knobs and their defaults (design brief §6).

use std::time::Duration;

/// When a worker that exited is started again. Exits the host asked for never count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestartPolicy {
    /// Restart whatever the exit.
    #[default]
    Always,
    /// Restart unless it exited with status 0.
    OnFailure,
    /// Never restart; calls fail with `Unavailable` once it is gone.
    Never,
}

/// Exponential backoff between restarts: `initial × factor^n`, capped at `max`, ± `jitter`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackoffConfig {
    /// First delay. Default 100 ms.
    pub initial: Duration,
    /// Largest delay. Default 30 s.
    pub max: Duration,
    /// Growth per restart. Default 2.
    pub factor: f64,
    /// Random spread as a fraction of the delay (0.2 = ±20 %). Default 0.2.
    pub jitter: f64,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
            factor: 2.0,
            jitter: 0.2,
        }
    }
}

/// Health probing: `GET /v1/health` every `interval`; `failures` misses in a row (each
/// unanswered within `timeout`) and the worker is killed and restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthConfig {
    /// Time between probes. Default 5 s.
    pub interval: Duration,
    /// Time a probe may take. Default 2 s.
    pub timeout: Duration,
    /// Misses in a row before the kill. Default 3.
    pub failures: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            failures: 3,
        }
    }
}

/// How one worker is supervised. `Default` gives the documented defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct SupervisorConfig {
    /// Restart policy. Default [`RestartPolicy::Always`].
    pub restart: RestartPolicy,
    /// Backoff between restarts.
    pub backoff: BackoffConfig,
    /// A worker that ran this long resets the backoff. Default 10 s.
    pub stable_after: Duration,
    /// More than this many restarts within `restart_window` → `Failed`. Default 5.
    pub max_restarts: u32,
    /// The window for `max_restarts`. Default 60 s.
    pub restart_window: Duration,
    /// Health probing; `None` turns it off.
    pub health: Option<HealthConfig>,
    /// Deadline of every call unless the caller gives its own. Default none.
    pub call_timeout: Option<Duration>,
    /// Calls running on the worker at once (at least 1, at most tokio's semaphore limit,
    /// 2^61 - 1); control operations (`initialize`, `cleanup`) take no slot. Default 64.
    pub max_concurrent: usize,
    /// Calls waiting for a slot or for a (re)starting worker; more fail fast. Default 1024.
    pub max_queue: usize,
    /// How long a call may wait in the queue. Default 30 s.
    pub queue_timeout: Duration,
    /// Calls wait (up to `queue_timeout`) while the worker restarts. Default true; false
    /// fails them at once with `Unavailable` while it backs off: what a pool of remote
    /// workers wants, so that an unreachable replica costs its callers nothing.
    pub wait_while_down: bool,
    /// The plugin is idempotent: a call that hit a crash is retried on the restarted worker
    /// (at most `max_retries` times). Default false: at-most-once.
    pub idempotent: bool,
    /// Retries of an idempotent call. Default 1.
    pub max_retries: u32,
    /// Replace the worker after this many calls. Default off.
    pub recycle_after_calls: Option<u64>,
    /// Replace the worker when its resident memory exceeds this many bytes. Default off.
    pub rss_limit: Option<u64>,
    /// How often the RSS is read when `rss_limit` is set. Default 1 s.
    pub rss_interval: Duration,
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        Self {
            restart: RestartPolicy::Always,
            backoff: BackoffConfig::default(),
            stable_after: Duration::from_secs(10),
            max_restarts: 5,
            restart_window: Duration::from_secs(60),
            health: Some(HealthConfig::default()),
            call_timeout: None,
            max_concurrent: 64,
            max_queue: 1024,
            queue_timeout: Duration::from_secs(30),
            wait_while_down: true,
            idempotent: false,
            max_retries: 1,
            recycle_after_calls: None,
            rss_limit: None,
            rss_interval: Duration::from_secs(1),
        }
    }
}
