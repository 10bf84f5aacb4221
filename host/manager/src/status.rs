//! What the manager reports: one plugin ([`PluginInfo`], with its hook deliveries
//! [`HookInfo`]), the whole ([`ManagerStatus`]), a plugin's configuration ([`PluginConfig`])
//! and health ([`PluginHealth`]).

use crate::manifest::{PluginKind, StartMode};
use plugvisor_proto::Value;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// What `GET /api/plugins` and `list` show of one plugin.
#[derive(Debug, Clone, Serialize)]
pub struct PluginInfo {
    /// Plugin id.
    pub name: String,
    /// Version (from the running worker when loaded, else the manifest).
    pub version: String,
    /// One line for people.
    pub description: String,
    /// Kind.
    pub kind: PluginKind,
    /// Tags.
    pub tags: Vec<String>,
    /// Whether it is loaded.
    pub loaded: bool,
    /// `ready`, `starting`, `failed`, … ; `idle` for a lazy plugin not running; `available`
    /// when not loaded; `failed` with `loaded: false` when its last load failed.
    pub state: String,
    /// Eager or lazy.
    pub start: StartMode,
    /// Current worker pid (the first ready replica's).
    pub pid: Option<u32>,
    /// Restarts of the current supervisor (of all its replicas).
    pub restarts: u64,
    /// The manifest's `replicas`.
    pub replicas: usize,
    /// Each running replica: pid, state, calls in flight, restarts (empty while none runs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workers: Vec<plugvisor_host::ReplicaInfo>,
    /// Seconds since the current worker was started.
    pub uptime_secs: Option<f64>,
    /// Services it provides.
    pub provides: Vec<String>,
    /// Services it requires.
    pub requires: Vec<String>,
    /// Services it may use when present.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub optional_requires: Vec<String>,
    /// The manifest file; for a plugin an entry point describes, its distribution's metadata
    /// directory (`…/site-packages/tiny_plugin-1.2.3.dist-info`).
    pub manifest: PathBuf,
    /// Where the plugin was described, for people: the manifest file, or
    /// `entry point NAME (DIST==VERSION in PYTHON)`.
    pub source: String,
    /// The installed Python package's entry point that describes it (`serve --python`):
    /// `{name, value, dist, dist_version, python, error?}`; `null` for a manifest's plugin.
    pub entry_point: Option<crate::source::EntryPoint>,
    /// The manifest's `[sandbox]`, when it has one: `{filesystem, network, syscalls, read,
    /// write, memory_mib, pids, user, cpu_seconds, allow_degraded}`. A worker that cannot get
    /// it does not start (unless `allow_degraded`).
    pub sandbox: Option<crate::manifest::SandboxManifest>,
    /// What the running worker's sandbox really enforces (`null` when no sandboxed worker is
    /// up): `{filesystem, network, syscalls, memory_mib, pids, tree, uid, missing}`.
    pub enforced: Option<plugvisor_host::Enforced>,
    /// Calls made to it since the manager started (`execute`, streams and route requests,
    /// across reloads), as `plugvisor_calls_total` counts them.
    pub calls_total: u64,
    /// Of those, the ones that failed (every error kind), as `plugvisor_call_errors_total`.
    pub errors_total: u64,
    /// Its HTTP routes as mounted (empty when not loaded: a worker reports them).
    pub routes: Vec<PluginRoute>,
    /// Its named methods beside `execute`, as its worker reports them (empty when it has
    /// none or is not loaded).
    pub methods: Vec<plugvisor_proto::wire::MethodSpec>,
    /// Its own health as its last check reported it (`[health]`; `null` when it has no
    /// health check, before the first check, or with no worker up). A `fail` makes `state`
    /// `degraded` unless the manifest restarts it instead.
    pub plugin_health: Option<plugvisor_proto::wire::HealthReport>,
    /// Its panel on the status page, when the manifest has `ui`.
    pub ui: Option<crate::ui::UiInfo>,
    /// Its scheduled tasks and their last runs (empty when it has none or is not loaded).
    pub tasks: Vec<crate::tasks::TaskInfo>,
    /// The host events its manifest subscribes it to (`hooks`) and how their deliveries
    /// ended, across reloads; `null` when it subscribes to none.
    pub hooks: Option<HookInfo>,
    /// Why it is not serving: for a loaded plugin whose worker is not up (`failed`,
    /// `backoff`, …), its last start error or crash; for one that is not loaded, why its last
    /// load could not start the worker. `null` otherwise.
    pub last_error: Option<String>,
    /// Things worth knowing that do not stop it, e.g. a worker reporting another version than
    /// its manifest declares, or an entry point of the same name its manifest overrides.
    /// Empty when none.
    pub warnings: Vec<String>,
}

/// A plugin's event subscriptions and their deliveries since the manager started, as
/// `plugvisor_hook_deliveries_total` counts them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HookInfo {
    /// The events it subscribes to, by their host names (`loaded`, `task_failed`, …).
    pub subscribed: Vec<String>,
    /// Events its plugin handled.
    pub delivered: u64,
    /// Events whose delivery failed: an error, a crash, no ready worker or no answer in time
    /// (logged, never raised).
    pub failed: u64,
    /// Events dropped because its queue was full (or still queued when it was unloaded).
    pub dropped: u64,
    /// Events not sent because no worker was running (a lazy plugin is not started for one).
    pub skipped: u64,
}

/// One mounted HTTP route of a plugin, as [`PluginInfo::routes`] lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PluginRoute {
    /// `GET`, `POST`, …
    pub method: String,
    /// The full path on the server: the plugin's prefix and the route's pattern
    /// (`/plugins/echo/hello`, `/plugins/chaos/fault/{name}`).
    pub path: String,
    /// One line for people, when the plugin gives one.
    pub summary: Option<String>,
}

/// `GET /api/plugins/status`.
#[derive(Debug, Clone, Serialize)]
pub struct ManagerStatus {
    /// Loaded plugins in the order they were (or would be) started.
    pub initialization_order: Vec<String>,
    /// Which loaded plugin provides each service.
    pub services: BTreeMap<String, String>,
    /// Every loaded plugin.
    pub plugins: Vec<PluginInfo>,
    /// The plugins that are not loaded because their last load failed (state `failed`,
    /// `last_error` says why): at `serve` start-up, or by `POST /api/plugins/load`.
    pub failed: Vec<PluginInfo>,
    /// Manifests that could not be read.
    pub manifest_errors: Vec<String>,
}

/// A loaded plugin's configuration: its JSON Schema and the configuration in force.
#[derive(Debug, Clone, Serialize)]
pub struct PluginConfig {
    /// The JSON Schema the worker reported.
    pub schema: Value,
    /// The configuration in force, secret fields shown as `"***"`.
    pub config: Value,
}

/// A loaded plugin's health, as `GET /api/plugins/health` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PluginHealth {
    /// The state shown in [`PluginInfo::state`].
    pub state: String,
    /// `Some(true)` ready, `Some(false)` running but not ready, `None` not running (a lazy
    /// plugin between calls).
    pub healthy: Option<bool>,
}
