//! Plugin-defined health: the manifest's `[health]` table (the loop that asks a loaded
//! plugin's worker for its own verdict, `POST /v1/plugin_health`, is in `managed.rs`).
//!
//! A `fail` marks the plugin `degraded` (still served), or, with `restart_on_unhealthy`,
//! has the supervisor replace the worker. The supervisor's liveness probe is separate and
//! never runs plugin code.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Default time between two checks.
pub const DEFAULT_INTERVAL_MS: u64 = 30_000;
/// Default time a check may take before it counts as `fail`.
pub const DEFAULT_TIMEOUT_MS: u64 = 5_000;
/// The shortest interval honoured (a smaller one is raised to it).
const MIN_INTERVAL_MS: u64 = 10;

/// The `[health]` table: how often the host asks a plugin with a health check, and what a
/// `fail` does.
///
/// ```toml
/// [health]
/// interval_ms = 30000            # between checks (default 30 s)
/// timeout_ms = 5000              # a check still running then is a fail (default 5 s)
/// restart_on_unhealthy = false   # true: a fail restarts the worker instead of `degraded`
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthManifest {
    /// Milliseconds between checks.
    pub interval_ms: Option<u64>,
    /// Milliseconds a check may take.
    pub timeout_ms: Option<u64>,
    /// Restart the worker on a `fail` instead of marking the plugin `degraded`.
    #[serde(default)]
    pub restart_on_unhealthy: bool,
}

impl HealthManifest {
    /// The time between checks.
    pub fn interval(&self) -> Duration {
        let ms = self.interval_ms.unwrap_or(DEFAULT_INTERVAL_MS);
        Duration::from_millis(ms.max(MIN_INTERVAL_MS))
    }

    /// The time a check may take.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS).max(1))
    }
}
