//! `GET /api/plugins/health`, in the style of the IETF "Health Check Response Format for HTTP
//! APIs" draft (`application/health+json`): an overall `status` and one `<plugin>:worker`
//! check per loaded plugin.
//!
//! A worker that is `ready`, or a lazy one not running (`idle`), passes; one on its way back
//! (`starting`, `unhealthy`, `exited`, `backoff`, `stopping`) or `degraded` warns; `failed` or
//! `stopped` fails. A plugin with its own health check also has a `<plugin>:plugin` check with
//! its last report; its `fail` counts as `warn` overall (the plugin is still served). The
//! overall status is the worst check: HTTP 200 for pass and warn, 503 for fail.

use super::reply::{self, Reply};
use crate::{PluginInfo, PluginManager};
use http::header::{HeaderValue, CONTENT_TYPE};
use http::StatusCode;
use plugvisor_proto::wire::{HealthReport, HealthStatus};
use serde_json::{json, Map, Value};
use std::time::{SystemTime, UNIX_EPOCH};

/// `application/health+json`.
pub(crate) const HEALTH_JSON: &str = "application/health+json";

/// A check's outcome, worst last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Verdict {
    Pass,
    Warn,
    Fail,
}

impl Verdict {
    fn of(state: &str) -> Self {
        match state {
            "ready" | "idle" => Self::Pass,
            "failed" | "stopped" => Self::Fail,
            _ => Self::Warn,
        }
    }

    fn of_plugin(status: HealthStatus) -> Self {
        match status {
            HealthStatus::Pass => Self::Pass,
            HealthStatus::Warn => Self::Warn,
            HealthStatus::Fail => Self::Fail,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Warn => "warn",
            Self::Fail => "fail",
        }
    }
}

/// The health answer for every loaded plugin.
pub(crate) fn answer(manager: &PluginManager) -> Reply {
    let (verdict, doc) = document(&manager.loaded());
    let status = match verdict {
        Verdict::Fail => StatusCode::SERVICE_UNAVAILABLE,
        Verdict::Pass | Verdict::Warn => StatusCode::OK,
    };
    let mut reply = reply::json(status, &doc);
    if reply.status() == status {
        let value = HeaderValue::from_static(HEALTH_JSON);
        reply.headers_mut().insert(CONTENT_TYPE, value);
    }
    reply
}

/// The overall verdict and the health document of `plugins`.
fn document(plugins: &[PluginInfo]) -> (Verdict, Value) {
    let time = rfc3339(SystemTime::now());
    let mut overall = Verdict::Pass;
    let mut checks = Map::new();
    for p in plugins {
        let verdict = Verdict::of(&p.state);
        overall = overall.max(verdict);
        checks.insert(
            format!("{}:worker", p.name),
            json!([check(p, verdict, &time)]),
        );
        if let Some(report) = &p.plugin_health {
            overall = overall.max(Verdict::of_plugin(report.status).min(Verdict::Warn));
            checks.insert(
                format!("{}:plugin", p.name),
                json!([plugin_check(p, report, &time)]),
            );
        }
    }
    let doc = json!({
        "status": overall.name(),
        "version": "1",
        "releaseId": env!("CARGO_PKG_VERSION"),
        "serviceId": "plugvisor",
        "description": "plugvisor plugin workers",
        "checks": checks,
    });
    (overall, doc)
}

/// The `<plugin>:plugin` check: the plugin's own report as it gave it.
fn plugin_check(p: &PluginInfo, report: &HealthReport, time: &str) -> Value {
    let mut check = json!({
        "componentId": p.name,
        "componentType": "plugin",
        "status": report.status.as_str(),
        "time": time,
    });
    if let Some(output) = &report.output {
        check["output"] = json!(output);
    }
    if let Some(details) = &report.checks {
        check["checks"] = details.clone();
    }
    check
}

fn check(p: &PluginInfo, verdict: Verdict, time: &str) -> Value {
    let mut check = json!({
        "componentId": p.name,
        "componentType": "component",
        "observedValue": p.state,
        "status": verdict.name(),
        "time": time,
        "pid": p.pid,
        "restarts": p.restarts,
    });
    if verdict != Verdict::Pass {
        check["output"] = json!(format!("worker state is {}", p.state));
    }
    check
}

/// `t` as an RFC 3339 UTC timestamp with seconds, e.g. `2025-01-31T12:00:00Z`.
fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400 + 3_723); // 2000-02-29
        assert_eq!(rfc3339(t), "2000-02-29T01:02:03Z");
    }

    #[test]
    fn the_worst_state_decides() {
        assert_eq!(Verdict::of("ready"), Verdict::Pass);
        assert_eq!(Verdict::of("idle"), Verdict::Pass);
        assert_eq!(Verdict::of("backoff"), Verdict::Warn);
        assert_eq!(Verdict::of("starting"), Verdict::Warn);
        assert_eq!(Verdict::of("failed"), Verdict::Fail);
        assert_eq!(document(&[]).0, Verdict::Pass);
    }
}
