//! `PluginManager`: discovers plugins from manifests, loads them in dependency order with
//! validated layered configuration, reloads them without failing a call, and reports status.
//!
//! - `manifest.rs`: the manifest format and discovery;
//! - `config.rs`: configuration layers, JSON Schema validation, secret masking;
//! - `deps.rs`: start order from `provides`/`requires`;
//! - `managed.rs`: one loaded plugin (lazy start, idle stop, hot swap);
//! - `metrics.rs`: call counters and latency histogram for `/metrics`.

pub mod config;
pub mod deps;
mod managed;
pub mod manifest;
pub mod metrics;

use crate::events::EventKind;
use crate::host::{Host, HostConfig};
use crate::supervisor::CallOptions;
use deps::{DepError, Node};
use managed::{Managed, Plan};
use manifest::{Discovered, Manifest, ManifestError};
use plugvisor_proto::{PluginError, PluginStream, Value};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

pub use crate::core::CallOutput;

/// How long an unloaded or replaced plugin's in-flight calls may finish before it stops.
const DRAIN: Duration = Duration::from_secs(30);

/// Why a manager operation failed. Each names the plugin(s) involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManagerError {
    /// No manifest with that name was discovered.
    #[error("unknown plugin {0:?}")]
    Unknown(String),
    /// The plugin is not loaded.
    #[error("plugin {0:?} is not loaded")]
    NotLoaded(String),
    /// The plugin is already loaded.
    #[error("plugin {0:?} is already loaded")]
    AlreadyLoaded(String),
    /// Requirements cannot be met, or form a cycle.
    #[error(transparent)]
    Dependencies(#[from] DepError),
    /// Loaded plugins require a service only this plugin provides.
    #[error("plugin {plugin} is required by {}; unload them first or force it", dependents.join(", "))]
    Required {
        /// The plugin to unload.
        plugin: String,
        /// The loaded plugins that need it.
        dependents: Vec<String>,
    },
    /// The configuration does not match the plugin's schema; the plugin was not touched.
    #[error("invalid config for {plugin}: {}", problems.join("; "))]
    InvalidConfig {
        /// The plugin.
        plugin: String,
        /// Each problem, naming the field and the rule.
        problems: Vec<String>,
    },
    /// The worker could not be started.
    #[error("plugin {0} could not start: {1}")]
    Start(String, String),
    /// The plugin itself refused (for instance its own config check).
    #[error("plugin {0}: {1}")]
    Plugin(String, #[source] PluginError),
    /// A manifest file is broken.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The host configuration file is broken.
    #[error("host config {0}: {1}")]
    HostConfig(PathBuf, String),
    /// The host's runtime directory could not be made.
    #[error("cannot start the host: {0}")]
    Io(#[from] std::io::Error),
}

/// Where the manager finds plugins and their configuration.
#[derive(Debug, Clone, Default)]
pub struct ManagerConfig {
    /// Directories of `*.toml` manifests (later ones win on a name clash).
    pub manifest_dirs: Vec<PathBuf>,
    /// Where bare `command` names resolve (default: beside the running executable).
    pub worker_dir: Option<PathBuf>,
    /// Host configuration file (`plugvisor.toml`) with `[plugins.<name>.config]` tables.
    pub host_config_file: Option<PathBuf>,
    /// Settings of the underlying [`Host`].
    pub host: HostConfig,
}

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
    pub kind: manifest::PluginKind,
    /// Tags.
    pub tags: Vec<String>,
    /// Whether it is loaded.
    pub loaded: bool,
    /// `ready`, `starting`, `failed`, … ; `idle` for a lazy plugin not running; `available`
    /// when not loaded.
    pub state: String,
    /// Eager or lazy.
    pub start: manifest::StartMode,
    /// Current worker pid.
    pub pid: Option<u32>,
    /// Restarts of the current supervisor.
    pub restarts: u64,
    /// Seconds since the current worker was started.
    pub uptime_secs: Option<f64>,
    /// Services it provides.
    pub provides: Vec<String>,
    /// Services it requires.
    pub requires: Vec<String>,
    /// The manifest file.
    pub manifest: PathBuf,
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
    /// Manifests that could not be read.
    pub manifest_errors: Vec<String>,
}

struct Inner {
    host: Host,
    config: ManagerConfig,
    worker_dir: PathBuf,
    file_layers: BTreeMap<String, Value>,
    available: RwLock<BTreeMap<String, Discovered>>,
    problems: RwLock<Vec<ManifestError>>,
    loaded: RwLock<BTreeMap<String, Arc<Managed>>>,
    ops: tokio::sync::Mutex<()>,
    metrics: metrics::Metrics,
}

/// Discovers, loads, configures, reloads and unloads plugins. Cheap to clone.
#[derive(Clone)]
pub struct PluginManager {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PluginManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginManager")
            .field("manifest_dirs", &self.inner.config.manifest_dirs)
            .finish_non_exhaustive()
    }
}

impl PluginManager {
    /// A manager over `config`: makes the host and discovers every manifest directory. Broken
    /// manifests are kept as problems ([`PluginManager::manifest_errors`]), not errors.
    ///
    /// # Errors
    /// The host's runtime directory or the host configuration file cannot be used.
    pub fn new(config: ManagerConfig) -> Result<Self, ManagerError> {
        let host = Host::with_config(config.host.clone())?;
        let worker_dir = match &config.worker_dir {
            Some(dir) => dir.clone(),
            None => default_worker_dir(),
        };
        let file_layers = match &config.host_config_file {
            Some(path) => read_host_config(path)?,
            None => BTreeMap::new(),
        };
        let manager = Self {
            inner: Arc::new(Inner {
                host,
                config,
                worker_dir,
                file_layers,
                available: RwLock::new(BTreeMap::new()),
                problems: RwLock::new(Vec::new()),
                loaded: RwLock::new(BTreeMap::new()),
                ops: tokio::sync::Mutex::new(()),
                metrics: metrics::Metrics::default(),
            }),
        };
        manager.rediscover();
        Ok(manager)
    }

    /// The host the plugins run under (events, hooks).
    pub fn host(&self) -> &Host {
        &self.inner.host
    }

    /// Calls `hook` for every event named `name`: `"plugin_loaded"`, `"plugin_unloaded"`,
    /// `"plugin_reloaded"`, `"plugin_config_changed"`, `"plugin_crashed"`, … (the `plugin_`
    /// prefix is optional; `"*"` matches all). See [`crate::EventBus::register_hook`].
    pub fn register_hook<F>(&self, name: &str, hook: F) -> crate::HookHandle
    where
        F: Fn(&crate::LifecycleEvent) + Send + Sync + 'static,
    {
        self.inner.host.register_hook(name, hook)
    }

    /// Re-reads every manifest directory.
    pub fn rediscover(&self) {
        let mut available = BTreeMap::new();
        let mut problems = Vec::new();
        for dir in &self.inner.config.manifest_dirs {
            let (found, errors) = manifest::discover(dir);
            for d in found {
                available.insert(d.manifest.name.clone(), d);
            }
            problems.extend(errors);
        }
        for p in &problems {
            tracing::warn!(problem = %p, "manifest skipped");
        }
        write(&self.inner.available, available);
        write(&self.inner.problems, problems);
    }

    /// Manifests that could not be used, with file, line and reason.
    pub fn manifest_errors(&self) -> Vec<ManifestError> {
        read(&self.inner.problems)
    }

    /// Every discovered plugin, loaded or not.
    pub fn available(&self) -> Vec<PluginInfo> {
        let available = read(&self.inner.available);
        available.values().map(|d| self.info_of(d)).collect()
    }

    /// Every loaded plugin.
    pub fn loaded(&self) -> Vec<PluginInfo> {
        let loaded = read(&self.inner.loaded);
        loaded.values().map(|m| self.info_of(&m.found)).collect()
    }

    /// One plugin (loaded or available).
    ///
    /// # Errors
    /// [`ManagerError::Unknown`].
    pub fn info(&self, name: &str) -> Result<PluginInfo, ManagerError> {
        if let Some(m) = self.managed(name) {
            return Ok(self.info_of(&m.found));
        }
        let available = read(&self.inner.available);
        available
            .get(name)
            .map(|d| self.info_of(d))
            .ok_or_else(|| ManagerError::Unknown(name.to_owned()))
    }

    fn info_of(&self, found: &Discovered) -> PluginInfo {
        let m = &found.manifest;
        let managed = self.managed(&m.name);
        let sup = managed.as_ref().and_then(|x| x.current());
        let started = managed
            .as_ref()
            .and_then(|x| x.started_at.lock().ok().and_then(|s| *s));
        PluginInfo {
            name: m.name.clone(),
            version: managed
                .as_ref()
                .map(|x| x.version.clone())
                .unwrap_or_else(|| m.version.clone()),
            description: m.description.clone(),
            kind: m.kind,
            tags: m.tags.clone(),
            loaded: managed.is_some(),
            state: managed
                .as_ref()
                .map(|x| x.state())
                .unwrap_or_else(|| "available".to_owned()),
            start: m.start,
            pid: sup.as_ref().and_then(|s| s.pid()),
            restarts: sup.as_ref().map(|s| s.restarts()).unwrap_or(0),
            uptime_secs: started.map(|t| t.elapsed().as_secs_f64()),
            provides: m.provides.clone(),
            requires: m.requires.clone(),
            manifest: found.file.clone(),
        }
    }

    fn managed(&self, name: &str) -> Option<Arc<Managed>> {
        read(&self.inner.loaded).get(name).cloned()
    }

    fn loaded_or_err(&self, name: &str) -> Result<Arc<Managed>, ManagerError> {
        self.managed(name)
            .ok_or_else(|| ManagerError::NotLoaded(name.to_owned()))
    }

    /// The JSON Schema and the configuration in force (secrets masked) of a loaded plugin.
    ///
    /// # Errors
    /// [`ManagerError::NotLoaded`].
    pub fn config(&self, name: &str) -> Result<(Value, Value), ManagerError> {
        let m = self.loaded_or_err(name)?;
        Ok((m.schema.clone(), m.masked_config()))
    }

    /// Loads every discovered plugin in dependency order (lazy ones are checked but start on
    /// their first call).
    ///
    /// # Errors
    /// A missing requirement or a cycle (nothing is started then), or the first plugin that
    /// fails to load (those loaded before it stay loaded).
    pub async fn load_all(&self) -> Result<Vec<String>, ManagerError> {
        let names: Vec<String> = read(&self.inner.available).keys().cloned().collect();
        let order = self.order_for(&names)?;
        for name in &order {
            if self.managed(name).is_none() {
                self.load(name, None).await?;
            }
        }
        Ok(order)
    }

    /// The start order of `names` and everything they require, from the available manifests
    /// (a broken requirement elsewhere does not block them).
    fn order_for(&self, names: &[String]) -> Result<Vec<String>, ManagerError> {
        let available = read(&self.inner.available);
        let manifests: Vec<&Manifest> = available.values().map(|d| &d.manifest).collect();
        let needed = closure(&manifests, names);
        let nodes: Vec<Node<'_>> = manifests
            .iter()
            .filter(|m| needed.contains(&m.name))
            .map(|m| node(m))
            .collect();
        Ok(deps::start_order(&nodes)?)
    }

    /// Loads `name` (and, first, the plugins providing what it requires) with `config` as
    /// its API configuration layer.
    ///
    /// # Errors
    /// Unknown plugin, already loaded, unmet requirements or a cycle, a configuration that
    /// fails the plugin's schema (nothing left running), or a worker that does not start.
    pub async fn load(
        &self,
        name: &str,
        config: Option<Value>,
    ) -> Result<PluginInfo, ManagerError> {
        let _op = self.inner.ops.lock().await;
        if self.managed(name).is_some() {
            return Err(ManagerError::AlreadyLoaded(name.to_owned()));
        }
        let found = self.discovered(name)?;
        let order = self.order_for(&[name.to_owned()])?;
        for dep in order.iter().filter(|d| d.as_str() != name) {
            if self.managed(dep).is_none() {
                self.load_one(self.discovered(dep)?, None).await?;
            }
        }
        self.load_one(found, config).await
    }

    fn discovered(&self, name: &str) -> Result<Discovered, ManagerError> {
        read(&self.inner.available)
            .get(name)
            .cloned()
            .ok_or_else(|| ManagerError::Unknown(name.to_owned()))
    }

    async fn load_one(
        &self,
        found: Discovered,
        api: Option<Value>,
    ) -> Result<PluginInfo, ManagerError> {
        let name = found.manifest.name.clone();
        let plan = Plan {
            file_layer: self.file_layer(&name),
            worker_dir: self.inner.worker_dir.clone(),
            api_layer: api.unwrap_or(Value::Object(Default::default())),
            found,
        };
        let managed = Managed::load(Arc::clone(&self.inner.host.shared), plan).await?;
        if let Some(idle) = managed.found.manifest.idle_stop_secs {
            spawn_idle_stopper(Arc::downgrade(&managed), Duration::from_secs(idle));
        }
        let version = managed.version.clone();
        if let Ok(mut loaded) = self.inner.loaded.write() {
            loaded.insert(name.clone(), managed);
        }
        self.emit(&name, EventKind::Loaded { version });
        self.info(&name)
    }

    /// Unloads `name`. Refused while loaded plugins require a service only it provides,
    /// unless `force`.
    ///
    /// # Errors
    /// [`ManagerError::NotLoaded`], [`ManagerError::Required`].
    pub async fn unload(&self, name: &str, force: bool) -> Result<(), ManagerError> {
        let _op = self.inner.ops.lock().await;
        let managed = self.loaded_or_err(name)?;
        let dependents = self.dependents(&managed);
        if !dependents.is_empty() && !force {
            return Err(ManagerError::Required {
                plugin: name.to_owned(),
                dependents,
            });
        }
        if let Ok(mut loaded) = self.inner.loaded.write() {
            loaded.remove(name);
        }
        managed
            .replaced
            .store(true, std::sync::atomic::Ordering::Release);
        managed.stop(DRAIN).await;
        self.emit(name, EventKind::Unloaded);
        Ok(())
    }

    /// Loaded plugins that require a service only `managed` provides.
    fn dependents(&self, managed: &Managed) -> Vec<String> {
        let loaded = read(&self.inner.loaded);
        let gone = &managed.found.manifest;
        let others = loaded.values().filter(|m| m.name() != gone.name);
        let still_provided = |service: &String| {
            loaded
                .values()
                .any(|m| m.name() != gone.name && m.found.manifest.provides.contains(service))
        };
        others
            .filter(|m| {
                m.found
                    .manifest
                    .requires
                    .iter()
                    .any(|s| gone.provides.contains(s) && !still_provided(s))
            })
            .map(|m| m.name().to_owned())
            .collect()
    }

    /// Hot swap: re-reads the manifest, starts a new worker, waits until it is ready and
    /// configured, switches calls to it, then drains and stops the old one. No call fails.
    ///
    /// # Errors
    /// Not loaded, or the new worker cannot start (the old one then keeps serving).
    pub async fn reload(&self, name: &str) -> Result<PluginInfo, ManagerError> {
        let _op = self.inner.ops.lock().await;
        let old = self.loaded_or_err(name)?;
        self.rediscover();
        let found = self.discovered(name)?;
        let api = old_api_layer(&old);
        let plan = Plan {
            file_layer: self.file_layer(name),
            worker_dir: self.inner.worker_dir.clone(),
            api_layer: api,
            found,
        };
        let new = Managed::load(Arc::clone(&self.inner.host.shared), plan).await?;
        let version = new.version.clone();
        if let Ok(mut loaded) = self.inner.loaded.write() {
            loaded.insert(name.to_owned(), new);
        }
        old.replaced
            .store(true, std::sync::atomic::Ordering::Release);
        old.stop(DRAIN).await;
        self.emit(name, EventKind::Reloaded { version });
        self.info(name)
    }

    /// Replaces the API configuration layer of `name` and re-initializes the running plugin
    /// (no restart). Returns the configuration now in force, secrets masked.
    ///
    /// # Errors
    /// [`ManagerError::InvalidConfig`] naming each field and rule (the plugin is not touched),
    /// or the plugin's own refusal.
    pub async fn set_config(&self, name: &str, config: Value) -> Result<Value, ManagerError> {
        let _op = self.inner.ops.lock().await;
        let managed = self.loaded_or_err(name)?;
        let masked = managed.set_config(config).await?;
        self.emit(
            name,
            EventKind::ConfigChanged {
                config: masked.clone(),
            },
        );
        Ok(masked)
    }

    /// Calls `name` once. A call that found the plugin mid-reload is sent to the new worker.
    ///
    /// # Errors
    /// [`PluginError::Unavailable`] for a plugin that is not loaded; otherwise as
    /// [`crate::Supervisor`] calls.
    pub async fn call(
        &self,
        name: &str,
        input: Value,
        options: CallOptions,
    ) -> Result<CallOutput, PluginError> {
        let started = Instant::now();
        let result = self.call_inner(name, input, options).await;
        let error = result.as_ref().err().map(PluginError::kind);
        self.inner.metrics.record(name, started.elapsed(), error);
        result
    }

    async fn call_inner(
        &self,
        name: &str,
        input: Value,
        options: CallOptions,
    ) -> Result<CallOutput, PluginError> {
        let managed = self.managed(name).ok_or_else(|| not_loaded(name))?;
        match managed.call(input.clone(), options).await {
            Err(PluginError::Unavailable(_))
                if managed.replaced.load(std::sync::atomic::Ordering::Acquire) =>
            {
                // It never reached a worker: safe to send to the replacement.
                let next = self.managed(name).ok_or_else(|| not_loaded(name))?;
                next.call(input, options).await
            }
            other => other,
        }
    }

    /// Streams from `name`.
    ///
    /// # Errors
    /// As [`PluginManager::call`].
    pub async fn stream(&self, name: &str, input: Value) -> Result<PluginStream, PluginError> {
        let started = Instant::now();
        let result = self.stream_inner(name, input).await;
        // A stream counts as one call, timed to its start.
        let error = result.as_ref().err().map(PluginError::kind);
        self.inner.metrics.record(name, started.elapsed(), error);
        result
    }

    async fn stream_inner(&self, name: &str, input: Value) -> Result<PluginStream, PluginError> {
        let managed = self.managed(name).ok_or_else(|| not_loaded(name))?;
        match managed.stream(input.clone()).await {
            Err(PluginError::Unavailable(_))
                if managed.replaced.load(std::sync::atomic::Ordering::Acquire) =>
            {
                let next = self.managed(name).ok_or_else(|| not_loaded(name))?;
                next.stream(input).await
            }
            other => other,
        }
    }

    /// Start order, services and per-plugin state.
    pub fn status(&self) -> ManagerStatus {
        let plugins = self.loaded();
        let loaded = read(&self.inner.loaded);
        let manifests: Vec<&Manifest> = loaded.values().map(|m| &m.found.manifest).collect();
        let nodes: Vec<Node<'_>> = manifests.iter().map(|m| node(m)).collect();
        ManagerStatus {
            initialization_order: deps::start_order(&nodes).unwrap_or_default(),
            services: deps::services(&nodes),
            plugins,
            manifest_errors: self
                .manifest_errors()
                .iter()
                .map(ToString::to_string)
                .collect(),
        }
    }

    /// Per loaded plugin: `Some(true)` ready, `Some(false)` not, `None` not running (lazy).
    pub fn health(&self) -> BTreeMap<String, (String, Option<bool>)> {
        read(&self.inner.loaded)
            .iter()
            .map(|(name, m)| (name.clone(), (m.state(), m.healthy())))
            .collect()
    }

    /// Prometheus text: calls, errors by kind, latency, restarts, workers by state.
    pub fn metrics(&self) -> String {
        let mut out = String::new();
        self.inner.metrics.render(&mut out);
        let infos = self.loaded();
        metrics::header(
            &mut out,
            "plugvisor_restarts_total",
            "counter",
            "Worker restarts.",
        );
        for p in &infos {
            out.push_str(&format!(
                "plugvisor_restarts_total{{plugin=\"{}\"}} {}\n",
                p.name, p.restarts
            ));
        }
        metrics::header(
            &mut out,
            "plugvisor_workers",
            "gauge",
            "Loaded plugins by state.",
        );
        let mut by_state: BTreeMap<String, u64> = BTreeMap::new();
        for p in &infos {
            *by_state.entry(p.state.clone()).or_default() += 1;
        }
        for (state, n) in by_state {
            out.push_str(&format!("plugvisor_workers{{state=\"{state}\"}} {n}\n"));
        }
        out
    }

    /// Stops every plugin and the host; waits until every worker is gone.
    pub async fn shutdown(self) {
        let all: Vec<Arc<Managed>> = read(&self.inner.loaded).values().cloned().collect();
        let stops = all.iter().map(|m| m.stop(Duration::from_secs(5)));
        futures_util::future::join_all(stops).await;
        write(&self.inner.loaded, BTreeMap::new());
        self.inner.host.stop_all().await;
    }

    /// The host file's layer for `name`; an empty object when it has none (never `null`,
    /// which would wipe the layers below in a merge).
    fn file_layer(&self, name: &str) -> Value {
        self.inner
            .file_layers
            .get(name)
            .cloned()
            .unwrap_or_else(|| Value::Object(Default::default()))
    }

    fn emit(&self, name: &str, kind: EventKind) {
        self.inner.host.shared.events.emit(name, kind);
    }
}

fn not_loaded(name: &str) -> PluginError {
    PluginError::Unavailable(format!("plugin {name:?} is not loaded"))
}

fn old_api_layer(old: &Managed) -> Value {
    old.api_layer_value()
}

fn node(m: &Manifest) -> Node<'_> {
    Node {
        name: &m.name,
        provides: &m.provides,
        requires: &m.requires,
    }
}

/// `names` and every plugin they transitively require.
fn closure(manifests: &[&Manifest], names: &[String]) -> Vec<String> {
    let mut needed: Vec<String> = names.to_vec();
    let mut i = 0;
    while i < needed.len() {
        let Some(m) = manifests.iter().find(|m| m.name == needed[i]) else {
            i += 1;
            continue;
        };
        for service in &m.requires {
            for provider in manifests.iter().filter(|p| p.provides.contains(service)) {
                if !needed.contains(&provider.name) {
                    needed.push(provider.name.clone());
                }
            }
        }
        i += 1;
    }
    needed
}

fn spawn_idle_stopper(managed: std::sync::Weak<Managed>, idle: Duration) {
    let tick = (idle / 4).max(Duration::from_millis(50));
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(tick).await;
            let Some(m) = managed.upgrade() else { return };
            if m.replaced.load(std::sync::atomic::Ordering::Acquire) {
                return;
            }
            if m.stop_if_idle(idle).await {
                tracing::info!(plugin = m.name(), "stopped after an idle period");
            }
        }
    });
}

/// `plugvisor.toml`: `[plugins.<name>.config]` tables become each plugin's file layer.
fn read_host_config(path: &Path) -> Result<BTreeMap<String, Value>, ManagerError> {
    let err = |reason: String| ManagerError::HostConfig(path.to_path_buf(), reason);
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| err(e.message().to_owned()))?;
    let mut layers = BTreeMap::new();
    let plugins = table.get("plugins").and_then(toml::Value::as_table);
    for (name, section) in plugins.into_iter().flatten() {
        if let Some(config) = section.get("config") {
            let json = serde_json::to_value(config).map_err(|e| err(e.to_string()))?;
            layers.insert(name.clone(), json);
        }
    }
    Ok(layers)
}

/// The directory of the running executable (worker binaries sit beside `plugvisor`).
pub fn default_worker_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
        .unwrap_or_default()
}

fn read<T: Clone>(lock: &RwLock<T>) -> T {
    match lock.read() {
        Ok(guard) => guard.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    }
}

fn write<T>(lock: &RwLock<T>, value: T) {
    match lock.write() {
        Ok(mut guard) => *guard = value,
        Err(poisoned) => *poisoned.into_inner() = value,
    }
}
