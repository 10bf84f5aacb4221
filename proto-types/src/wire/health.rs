//! Plugin-defined health: the answer of `POST /v1/plugin_health`, in the style of the IETF
//! "Health Check Response Format for HTTP APIs" draft (`status`, `checks`, `output`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A plugin's own verdict on itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    /// Healthy.
    Pass,
    /// Healthy, with a concern.
    Warn,
    /// Unhealthy: the host marks the plugin `degraded` (or restarts it when its manifest says
    /// `restart_on_unhealthy = true`).
    Fail,
}

impl HealthStatus {
    /// `pass`, `warn` or `fail`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Warn => "warn",
            Self::Fail => "fail",
        }
    }
}

/// Answer of `POST /v1/plugin_health`.
///
/// ```
/// use plugvisor_proto::wire::{HealthReport, HealthStatus};
/// let report = HealthReport::fail("scratch space is full");
/// assert_eq!(report.status, HealthStatus::Fail);
/// let json = serde_json::to_value(&report).unwrap();
/// assert_eq!(json, serde_json::json!({"status": "fail", "output": "scratch space is full"}));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct HealthReport {
    /// The verdict.
    pub status: HealthStatus,
    /// Details per component, `{"<component>:<measurement>": [{...}]}` as in the draft.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checks: Option<Value>,
    /// A human-readable reason, mostly for `warn` and `fail`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
}

impl HealthReport {
    /// A `pass` with nothing more to say.
    pub fn pass() -> Self {
        Self {
            status: HealthStatus::Pass,
            checks: None,
            output: None,
        }
    }

    /// A `warn` saying why.
    pub fn warn(output: impl Into<String>) -> Self {
        Self::with(HealthStatus::Warn, output)
    }

    /// A `fail` saying why.
    pub fn fail(output: impl Into<String>) -> Self {
        Self::with(HealthStatus::Fail, output)
    }

    fn with(status: HealthStatus, output: impl Into<String>) -> Self {
        Self {
            status,
            checks: None,
            output: Some(output.into()),
        }
    }

    /// Adds the `checks` object.
    pub fn checks(mut self, checks: Value) -> Self {
        self.checks = Some(checks);
        self
    }
}
