//! Metrics in Prometheus text: calls, errors by kind and latency per plugin (counted as calls
//! finish), restarts per plugin and loaded plugins by state (read off the plugins' status).

use crate::status::PluginInfo;
use plugvisor_proto::ErrorKind;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of the latency histogram's buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0,
];

#[derive(Debug, Default, Clone)]
struct PluginMetrics {
    calls: u64,
    errors: BTreeMap<&'static str, u64>,
    buckets: [u64; BUCKETS.len()],
    sum_seconds: f64,
}

/// Counters of every plugin's calls.
#[derive(Debug, Default)]
pub struct Metrics {
    plugins: Mutex<BTreeMap<String, PluginMetrics>>,
}

impl Metrics {
    /// Records one finished call.
    pub fn record(&self, plugin: &str, took: Duration, error: Option<ErrorKind>) {
        let Ok(mut plugins) = self.plugins.lock() else {
            return;
        };
        let m = plugins.entry(plugin.to_owned()).or_default();
        m.calls += 1;
        let secs = took.as_secs_f64();
        m.sum_seconds += secs;
        for (i, bound) in BUCKETS.iter().enumerate() {
            if secs <= *bound {
                m.buckets[i] += 1;
            }
        }
        if let Some(kind) = error {
            *m.errors.entry(kind.as_str()).or_default() += 1;
        }
    }

    /// Calls of `plugin` so far and how many of them failed.
    pub fn counts(&self, plugin: &str) -> (u64, u64) {
        let Ok(plugins) = self.plugins.lock() else {
            return (0, 0);
        };
        plugins
            .get(plugin)
            .map_or((0, 0), |m| (m.calls, m.errors.values().sum()))
    }

    /// The call metrics in Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let plugins = self.plugins.lock().map(|p| p.clone()).unwrap_or_default();
        header(
            out,
            "plugvisor_calls_total",
            "counter",
            "Calls made to a plugin.",
        );
        for (name, m) in &plugins {
            let _ = writeln!(
                out,
                "plugvisor_calls_total{{plugin=\"{name}\"}} {}",
                m.calls
            );
        }
        header(
            out,
            "plugvisor_call_errors_total",
            "counter",
            "Failed calls by error kind.",
        );
        for (name, m) in &plugins {
            for (kind, n) in &m.errors {
                let _ = writeln!(
                    out,
                    "plugvisor_call_errors_total{{plugin=\"{name}\",kind=\"{kind}\"}} {n}"
                );
            }
        }
        let help = "Call latency as seen by the host.";
        header(out, "plugvisor_call_duration_seconds", "histogram", help);
        for (name, m) in &plugins {
            render_histogram(out, name, m);
        }
    }
}

/// Restarts per plugin and loaded plugins by state, in Prometheus text.
pub fn render_plugins(out: &mut String, plugins: &[PluginInfo]) {
    header(
        out,
        "plugvisor_restarts_total",
        "counter",
        "Worker restarts.",
    );
    for p in plugins {
        let _ = writeln!(
            out,
            "plugvisor_restarts_total{{plugin=\"{}\"}} {}",
            p.name, p.restarts
        );
    }
    header(
        out,
        "plugvisor_workers",
        "gauge",
        "Loaded plugins by state.",
    );
    let mut by_state: BTreeMap<&str, u64> = BTreeMap::new();
    for p in plugins {
        *by_state.entry(p.state.as_str()).or_default() += 1;
    }
    for (state, n) in by_state {
        let _ = writeln!(out, "plugvisor_workers{{state=\"{state}\"}} {n}");
    }
}

fn render_histogram(out: &mut String, name: &str, m: &PluginMetrics) {
    let metric = "plugvisor_call_duration_seconds";
    for (bound, count) in BUCKETS.iter().zip(m.buckets) {
        let _ = writeln!(
            out,
            "{metric}_bucket{{plugin=\"{name}\",le=\"{bound}\"}} {count}"
        );
    }
    let _ = writeln!(
        out,
        "{metric}_bucket{{plugin=\"{name}\",le=\"+Inf\"}} {}",
        m.calls
    );
    let _ = writeln!(out, "{metric}_sum{{plugin=\"{name}\"}} {}", m.sum_seconds);
    let _ = writeln!(out, "{metric}_count{{plugin=\"{name}\"}} {}", m.calls);
}

/// Writes the `# HELP` and `# TYPE` lines of a metric.
pub fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_errors_and_a_cumulative_histogram() {
        let m = Metrics::default();
        m.record("echo", Duration::from_micros(80), None);
        m.record(
            "echo",
            Duration::from_millis(3),
            Some(ErrorKind::InvalidInput),
        );
        let mut out = String::new();
        m.render(&mut out);
        assert!(
            out.contains("plugvisor_calls_total{plugin=\"echo\"} 2"),
            "{out}"
        );
        assert!(
            out.contains("plugvisor_call_errors_total{plugin=\"echo\",kind=\"invalid_input\"} 1")
        );
        assert!(
            out.contains("plugvisor_call_duration_seconds_bucket{plugin=\"echo\",le=\"0.0001\"} 1")
        );
        assert!(
            out.contains("plugvisor_call_duration_seconds_bucket{plugin=\"echo\",le=\"0.005\"} 2")
        );
        assert!(out.contains("plugvisor_call_duration_seconds_count{plugin=\"echo\"} 2"));
        assert_eq!(m.counts("echo"), (2, 1));
        assert_eq!(m.counts("nobody"), (0, 0));
    }
}
