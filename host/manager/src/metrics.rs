//! Metrics in Prometheus text: calls, errors by kind and latency per plugin (counted as calls
//! finish), scheduled task runs, hook deliveries by outcome, restarts per plugin and loaded
//! plugins by state (read off the plugins' status).

use crate::hook_delivery::Outcome;
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

/// Runs of one scheduled task by outcome, and the duration histogram of those that ran.
#[derive(Debug, Default, Clone)]
struct TaskMetrics {
    outcomes: BTreeMap<&'static str, u64>,
    timing: PluginMetrics,
}

/// Counters of every plugin's calls and scheduled tasks.
#[derive(Debug, Default)]
pub struct Metrics {
    plugins: Mutex<BTreeMap<String, PluginMetrics>>,
    tasks: Mutex<BTreeMap<(String, String), TaskMetrics>>,
    hooks: Mutex<BTreeMap<String, BTreeMap<Outcome, u64>>>,
}

impl Metrics {
    /// Records one finished call.
    pub fn record(&self, plugin: &str, took: Duration, error: Option<ErrorKind>) {
        let Ok(mut plugins) = self.plugins.lock() else {
            return;
        };
        let m = plugins.entry(plugin.to_owned()).or_default();
        m.observe(took);
        if let Some(kind) = error {
            *m.errors.entry(kind.as_str()).or_default() += 1;
        }
    }

    /// Records `n` runs of `plugin`'s `task` with `outcome` (`ok`, `failed`, `skipped`,
    /// `paused`) and, for one that ran, how long it took.
    pub fn record_task(
        &self,
        plugin: &str,
        task: &str,
        outcome: &'static str,
        n: u64,
        took: Option<Duration>,
    ) {
        let Ok(mut tasks) = self.tasks.lock() else {
            return;
        };
        let m = tasks
            .entry((plugin.to_owned(), task.to_owned()))
            .or_default();
        *m.outcomes.entry(outcome).or_default() += n;
        if let Some(took) = took {
            m.timing.observe(took);
        }
    }

    /// Counts `n` hook events of subscriber `plugin` that ended with `outcome`.
    pub fn record_hook(&self, plugin: &str, outcome: Outcome, n: u64) {
        let Ok(mut hooks) = self.hooks.lock() else {
            return;
        };
        let counts = hooks.entry(plugin.to_owned()).or_default();
        *counts.entry(outcome).or_default() += n;
    }

    /// Hook events of subscriber `plugin` so far with `outcome`.
    pub fn hook_count(&self, plugin: &str, outcome: Outcome) -> u64 {
        let Ok(hooks) = self.hooks.lock() else {
            return 0;
        };
        hooks
            .get(plugin)
            .and_then(|c| c.get(&outcome))
            .copied()
            .unwrap_or(0)
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
        let metric = "plugvisor_call_duration_seconds";
        header(out, metric, "histogram", help);
        for (name, m) in &plugins {
            render_histogram(out, metric, &format!("plugin=\"{name}\""), m);
        }
        self.render_tasks(out);
        self.render_hooks(out);
    }

    fn render_hooks(&self, out: &mut String) {
        let hooks = self.hooks.lock().map(|h| h.clone()).unwrap_or_default();
        if hooks.is_empty() {
            return;
        }
        let metric = "plugvisor_hook_deliveries_total";
        let help =
            "Host events for subscribed plugins by outcome (delivered, failed, dropped, skipped).";
        header(out, metric, "counter", help);
        for (plugin, counts) in &hooks {
            for (outcome, n) in counts {
                let outcome = outcome.as_str();
                let _ = writeln!(
                    out,
                    "{metric}{{plugin=\"{plugin}\",outcome=\"{outcome}\"}} {n}"
                );
            }
        }
    }

    fn render_tasks(&self, out: &mut String) {
        let tasks = self.tasks.lock().map(|t| t.clone()).unwrap_or_default();
        if tasks.is_empty() {
            return;
        }
        let help = "Scheduled task runs by outcome (ok, failed, skipped, paused).";
        header(out, "plugvisor_task_runs_total", "counter", help);
        for ((plugin, task), m) in &tasks {
            for (outcome, n) in &m.outcomes {
                let _ = writeln!(
                    out,
                    "plugvisor_task_runs_total{{plugin=\"{plugin}\",task=\"{task}\",outcome=\"{outcome}\"}} {n}"
                );
            }
        }
        let metric = "plugvisor_task_duration_seconds";
        header(out, metric, "histogram", "Duration of scheduled task runs.");
        for ((plugin, task), m) in &tasks {
            let labels = format!("plugin=\"{plugin}\",task=\"{task}\"");
            render_histogram(out, metric, &labels, &m.timing);
        }
    }
}

impl PluginMetrics {
    /// Counts one call (or run) that took `took`.
    fn observe(&mut self, took: Duration) {
        self.calls += 1;
        let secs = took.as_secs_f64();
        self.sum_seconds += secs;
        for (i, bound) in BUCKETS.iter().enumerate() {
            if secs <= *bound {
                self.buckets[i] += 1;
            }
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

fn render_histogram(out: &mut String, metric: &str, labels: &str, m: &PluginMetrics) {
    for (bound, count) in BUCKETS.iter().zip(m.buckets) {
        let _ = writeln!(out, "{metric}_bucket{{{labels},le=\"{bound}\"}} {count}");
    }
    let _ = writeln!(out, "{metric}_bucket{{{labels},le=\"+Inf\"}} {}", m.calls);
    let _ = writeln!(out, "{metric}_sum{{{labels}}} {}", m.sum_seconds);
    let _ = writeln!(out, "{metric}_count{{{labels}}} {}", m.calls);
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
        assert!(!out.contains("plugvisor_hook_deliveries_total"), "{out}");
    }

    #[test]
    fn renders_hook_deliveries_by_outcome() {
        let m = Metrics::default();
        m.record_hook("echo", Outcome::Delivered, 1);
        m.record_hook("echo", Outcome::Delivered, 2);
        m.record_hook("echo", Outcome::Dropped, 5);
        let mut out = String::new();
        m.render(&mut out);
        assert!(
            out.contains("# TYPE plugvisor_hook_deliveries_total counter"),
            "{out}"
        );
        assert!(
            out.contains(
                "plugvisor_hook_deliveries_total{plugin=\"echo\",outcome=\"delivered\"} 3"
            ),
            "{out}"
        );
        assert!(
            out.contains("plugvisor_hook_deliveries_total{plugin=\"echo\",outcome=\"dropped\"} 5")
        );
        assert_eq!(m.hook_count("echo", Outcome::Dropped), 5);
        assert_eq!(m.hook_count("echo", Outcome::Failed), 0);
    }
}
