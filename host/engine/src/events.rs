//! Lifecycle events: a broadcast stream every embedder can subscribe to, and hooks.

use plugvisor_proto::wire::{canonical_event, EventDelivery};
use plugvisor_proto::CrashReport;
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::broadcast;

/// Events kept for slow subscribers; one that falls further behind skips the oldest.
const CAPACITY: usize = 1024;

/// Something that happened to a plugin's worker.
#[derive(Debug, Clone, Serialize)]
pub struct LifecycleEvent {
    /// The plugin it happened to.
    pub plugin: String,
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

/// What happened. Serialized with an `"event"` tag, e.g. `{"event": "crashed", ...}`.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum EventKind {
    /// A worker process was spawned.
    Started {
        /// Its pid.
        pid: u32,
    },
    /// It completed its handshake and answered `/v1/info`; calls go to it.
    Ready {
        /// Its pid.
        pid: u32,
    },
    /// It failed a health probe.
    Unhealthy {
        /// Its pid.
        pid: u32,
        /// Probes failed in a row.
        failures: u32,
    },
    /// It died without being asked to.
    Crashed {
        /// How and why.
        report: CrashReport,
    },
    /// It could not be started.
    StartFailed {
        /// Why.
        error: String,
    },
    /// A new worker will be started after `delay_ms`.
    Restarting {
        /// The backoff delay.
        delay_ms: u64,
        /// Restarts within the current window, this one included.
        attempt: u32,
    },
    /// Too many restarts within the window: calls fail fast until a reset.
    Failed {
        /// Restarts counted in the window.
        restarts: u32,
        /// The window.
        window_ms: u64,
    },
    /// A failed plugin was reset and will start again.
    Reset,
    /// The worker was replaced by a fresh one between calls.
    Recycled {
        /// The old worker's pid.
        old_pid: u32,
        /// The new worker's pid.
        new_pid: u32,
        /// Why.
        reason: String,
    },
    /// The worker was stopped on request.
    Stopped {
        /// Its pid, if one was running.
        pid: Option<u32>,
    },
    /// The manager loaded the plugin.
    Loaded {
        /// Its version.
        version: String,
    },
    /// The manager unloaded the plugin.
    Unloaded,
    /// The manager replaced the plugin's worker with a fresh one (hot swap).
    Reloaded {
        /// The new version.
        version: String,
    },
    /// The plugin's configuration changed (secrets shown as `"***"`).
    ConfigChanged {
        /// The configuration now in force, masked.
        config: serde_json::Value,
    },
    /// A scheduled task's run started.
    TaskStarted {
        /// The task.
        task: String,
        /// How late it started against its schedule, ms (0 for a run asked for by hand).
        late_ms: f64,
    },
    /// A scheduled task's run succeeded.
    TaskFinished {
        /// The task.
        task: String,
        /// How long it took, ms.
        duration_ms: f64,
    },
    /// A scheduled task's run failed (error, crash, timeout).
    TaskFailed {
        /// The task.
        task: String,
        /// How long it took, ms.
        duration_ms: f64,
        /// Why.
        error: String,
    },
}

impl EventKind {
    /// Every event's name, as [`EventKind::name`] gives it (a new variant goes in both; the
    /// manifest's `hooks` accept only these).
    pub const NAMES: [&'static str; 17] = [
        "started",
        "ready",
        "unhealthy",
        "crashed",
        "start_failed",
        "restarting",
        "failed",
        "reset",
        "recycled",
        "stopped",
        "loaded",
        "unloaded",
        "reloaded",
        "config_changed",
        "task_started",
        "task_finished",
        "task_failed",
    ];

    /// The event's name as [`EventKind::NAMES`] and [`EventKind::name`] spell it, for a name
    /// a hook subscription may use (`"loaded"` or `"plugin_loaded"`); `None` for a name no
    /// event has.
    ///
    /// ```
    /// use plugvisor_host::EventKind;
    /// assert_eq!(EventKind::known("plugin_task_failed"), Some("task_failed"));
    /// assert_eq!(EventKind::known("plugin_lodaed"), None);
    /// ```
    pub fn known(name: &str) -> Option<&'static str> {
        let name = canonical_event(name);
        Self::NAMES.into_iter().find(|n| *n == name)
    }

    /// The event's name, as used by [`EventBus::register_hook`]: `"started"`, `"crashed"`, …
    pub fn name(&self) -> &'static str {
        match self {
            Self::Started { .. } => "started",
            Self::Ready { .. } => "ready",
            Self::Unhealthy { .. } => "unhealthy",
            Self::Crashed { .. } => "crashed",
            Self::StartFailed { .. } => "start_failed",
            Self::Restarting { .. } => "restarting",
            Self::Failed { .. } => "failed",
            Self::Reset => "reset",
            Self::Recycled { .. } => "recycled",
            Self::Stopped { .. } => "stopped",
            Self::Loaded { .. } => "loaded",
            Self::Unloaded => "unloaded",
            Self::Reloaded { .. } => "reloaded",
            Self::ConfigChanged { .. } => "config_changed",
            Self::TaskStarted { .. } => "task_started",
            Self::TaskFinished { .. } => "task_finished",
            Self::TaskFailed { .. } => "task_failed",
        }
    }
}

impl LifecycleEvent {
    /// The event as `POST /v1/events` delivers it to a subscribed plugin: its name, plugin
    /// and time, and its own fields as `details`.
    pub fn to_delivery(&self) -> EventDelivery {
        let mut details = match serde_json::to_value(&self.kind) {
            Ok(serde_json::Value::Object(fields)) => fields,
            _ => serde_json::Map::new(),
        };
        details.remove("event");
        EventDelivery {
            event: self.kind.name().to_owned(),
            plugin: self.plugin.clone(),
            at_ms: self.at_ms,
            details: serde_json::Value::Object(details),
        }
    }
}

/// The host's event bus. Cheap to clone.
#[derive(Debug, Clone)]
pub struct EventBus {
    tx: broadcast::Sender<LifecycleEvent>,
}

impl Default for EventBus {
    fn default() -> Self {
        Self {
            tx: broadcast::channel(CAPACITY).0,
        }
    }
}

impl EventBus {
    /// A new receiver of every event from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<LifecycleEvent> {
        self.tx.subscribe()
    }

    /// Publishes an event and logs it with structured fields.
    pub(crate) fn emit(&self, plugin: &str, kind: EventKind) {
        let event = LifecycleEvent {
            plugin: plugin.to_owned(),
            at_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or(Duration::ZERO)
                .as_millis() as u64,
            kind,
        };
        log(&event);
        // No subscriber is fine.
        let _ = self.tx.send(event);
    }

    /// Calls `hook` for every event named `name` (`"crashed"`, …; a `plugin_` prefix, as in
    /// `"plugin_crashed"`, is accepted; `"*"` matches all). The hook runs on a task of its own,
    /// so a slow hook delays only itself. Needs a tokio runtime.
    pub fn register_hook<F>(&self, name: &str, hook: F) -> HookHandle
    where
        F: Fn(&LifecycleEvent) + Send + Sync + 'static,
    {
        let name = name.strip_prefix("plugin_").unwrap_or(name).to_owned();
        let hook = Arc::new(hook);
        let mut rx = self.subscribe();
        let task = tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(event) if name == "*" || event.kind.name() == name => hook(&event),
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        });
        HookHandle { task }
    }
}

fn log(event: &LifecycleEvent) {
    let plugin = event.plugin.as_str();
    let name = event.kind.name();
    match &event.kind {
        EventKind::Crashed { report } => tracing::warn!(
            plugin, event = name, pid = report.pid, exit = %report.exit, cause = ?report.cause,
            "worker crashed"
        ),
        EventKind::Failed { restarts, .. } => {
            tracing::error!(
                plugin,
                event = name,
                restarts,
                "worker failed: too many restarts"
            )
        }
        EventKind::StartFailed { error } => {
            tracing::warn!(plugin, event = name, %error, "worker failed to start")
        }
        other => tracing::info!(plugin, event = name, details = ?other, "lifecycle"),
    }
}

/// A registered hook; [`HookHandle::remove`] unregisters it. Dropping the handle keeps the hook.
#[derive(Debug)]
pub struct HookHandle {
    task: tokio::task::JoinHandle<()>,
}

impl HookHandle {
    /// Unregisters the hook.
    pub fn remove(self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn every_kind() -> Vec<EventKind> {
        vec![
            EventKind::Started { pid: 1 },
            EventKind::Ready { pid: 1 },
            EventKind::Unhealthy {
                pid: 1,
                failures: 1,
            },
            EventKind::StartFailed {
                error: String::new(),
            },
            EventKind::Restarting {
                delay_ms: 1,
                attempt: 1,
            },
            EventKind::Failed {
                restarts: 1,
                window_ms: 1,
            },
            EventKind::Reset,
            EventKind::Recycled {
                old_pid: 1,
                new_pid: 2,
                reason: String::new(),
            },
            EventKind::Stopped { pid: None },
            EventKind::Loaded {
                version: String::new(),
            },
            EventKind::Unloaded,
            EventKind::Reloaded {
                version: String::new(),
            },
            EventKind::ConfigChanged { config: json!({}) },
            EventKind::TaskStarted {
                task: String::new(),
                late_ms: 0.0,
            },
            EventKind::TaskFinished {
                task: String::new(),
                duration_ms: 0.0,
            },
            EventKind::TaskFailed {
                task: String::new(),
                duration_ms: 0.0,
                error: String::new(),
            },
        ]
    }

    #[test]
    fn names_lists_every_kind_and_known_takes_the_prefix() {
        // `Crashed` needs a crash report; its name is checked by the listing alone.
        let mut named: Vec<&str> = every_kind().iter().map(EventKind::name).collect();
        named.push("crashed");
        named.sort_unstable();
        let mut listed = EventKind::NAMES.to_vec();
        listed.sort_unstable();
        assert_eq!(named, listed);
        for name in EventKind::NAMES {
            assert_eq!(EventKind::known(name), Some(name));
            assert_eq!(EventKind::known(&format!("plugin_{name}")), Some(name));
        }
        assert_eq!(EventKind::known("plugin_lodaed"), None);
        assert_eq!(EventKind::known("*"), None);
    }

    #[test]
    fn a_delivery_carries_the_events_own_fields_as_details() {
        let event = LifecycleEvent {
            plugin: "ticker".to_owned(),
            at_ms: 42,
            kind: EventKind::TaskFailed {
                task: "tick".to_owned(),
                duration_ms: 1.5,
                error: "boom".to_owned(),
            },
        };
        let delivery = event.to_delivery();
        assert_eq!(delivery.event, "task_failed");
        assert_eq!((delivery.plugin.as_str(), delivery.at_ms), ("ticker", 42));
        let details = json!({"task": "tick", "duration_ms": 1.5, "error": "boom"});
        assert_eq!(delivery.details, details);
        let unloaded = LifecycleEvent {
            kind: EventKind::Unloaded,
            ..event
        };
        assert_eq!(unloaded.to_delivery().details, json!({}));
    }
}
