//! `PluginManager`: discovers plugins from manifests, loads them in dependency order with
//! validated layered configuration, reloads them without failing a call, and reports status.

use crate::deps::{self, Node};
use crate::entry_points::{self, EntryPoints};
use crate::error::ManagerError;
use crate::host_config::{self, default_worker_dir};
use crate::managed::{Managed, MethodCall, Plan};
use crate::manifest::{self, under, Discovered, Manifest, ManifestError};
use crate::metrics::{self, Metrics};
use crate::status::{ManagerStatus, PluginConfig, PluginHealth, PluginInfo, PluginRoute};
use crate::ui::UiInfo;
use plugvisor_host::{
    CallOptions, CallOutput, EventKind, HookHandle, Host, HostConfig, LifecycleEvent, OutputStream,
    PluginError, RouteBody,
};
use plugvisor_proto::wire::{RouteSpec, DEFAULT_METHOD};
use plugvisor_proto::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

mod startup;
pub use startup::StartReport;

/// How long an unloaded or replaced plugin's in-flight calls may finish before it stops.
const DRAIN: Duration = Duration::from_secs(30);

/// Where the manager finds plugins and their configuration.
#[derive(Debug, Clone, Default)]
pub struct ManagerConfig {
    /// Directories of `*.toml` manifests (a later directory's manifest replaces an earlier
    /// one's of the same name; within one directory a second one is a manifest error).
    pub manifest_dirs: Vec<PathBuf>,
    /// Where bare `command` names resolve (default: beside the running executable).
    pub worker_dir: Option<PathBuf>,
    /// Host configuration file (`plugvisor.toml`) with `[plugins.<name>.config]` tables (and
    /// `[discovery] python`, added to `python`).
    pub host_config_file: Option<PathBuf>,
    /// Python interpreters (a virtual environment's `bin/python`) whose installed packages'
    /// entry points of the group `plugvisor.plugins` are plugins too
    /// ([`crate::entry_points`]); a manifest of the same name wins.
    pub python: Vec<PathBuf>,
    /// Settings of the underlying [`Host`].
    pub host: HostConfig,
}

struct Inner {
    host: Arc<Host>,
    config: ManagerConfig,
    worker_dir: PathBuf,
    file_layers: BTreeMap<String, Value>,
    available: RwLock<BTreeMap<String, Discovered>>,
    problems: RwLock<Vec<ManifestError>>,
    /// The interpreters whose entry points are plugins (the config's and the host file's).
    pythons: Vec<PathBuf>,
    /// What their entry points described when last listed.
    entry_points: RwLock<EntryPoints>,
    /// Entry points a manifest overrides: the note, by plugin name.
    overridden: RwLock<BTreeMap<String, String>>,
    loaded: RwLock<BTreeMap<String, Arc<Managed>>>,
    /// Why the last load of a plugin could not start its worker, until one succeeds.
    load_failures: RwLock<BTreeMap<String, String>>,
    ops: tokio::sync::Mutex<()>,
    metrics: Metrics,
    /// Tokens of the plugins that call services, chains in flight, the host's endpoint.
    services: crate::services::Services,
}

/// Discovers, loads, configures, reloads and unloads plugins. Cheap to clone.
#[derive(Clone)]
pub struct PluginManager {
    inner: Arc<Inner>,
}

/// The task schedulers tell the manager of each run (events, metrics); they hold it weakly.
impl crate::scheduler::TaskSink for Inner {
    fn emit(&self, plugin: &str, kind: EventKind) {
        self.host.emit(plugin, kind);
    }

    fn record_call(&self, plugin: &str, took: Duration, error: Option<plugvisor_proto::ErrorKind>) {
        self.metrics.record(plugin, took, error);
    }

    fn record_task(
        &self,
        plugin: &str,
        task: &str,
        outcome: &'static str,
        n: u64,
        took: Option<Duration>,
    ) {
        self.metrics.record_task(plugin, task, outcome, n, took);
    }
}

/// The service endpoint routes calls through the manager; it holds it weakly.
impl crate::services::Backend for Inner {
    fn permission(&self, caller: &str, service: &str) -> Option<bool> {
        read(&self.loaded)
            .get(caller)?
            .found
            .manifest
            .may_call(service)
    }

    fn provider(&self, service: &str) -> Option<String> {
        let loaded = read(&self.loaded);
        let mut providers = loaded
            .iter()
            .filter(|(_, m)| m.found.manifest.provides.iter().any(|s| s == service));
        providers.next().map(|(name, _)| name.clone())
    }

    fn call(
        self: Arc<Self>,
        provider: String,
        call: plugvisor_proto::wire::ServiceCall,
        timeout: Option<Duration>,
    ) -> futures_util::future::BoxFuture<'static, Result<Value, PluginError>> {
        let manager = PluginManager { inner: self };
        Box::pin(async move {
            let method = call.method.as_deref().unwrap_or(DEFAULT_METHOD);
            let options = CallOptions { timeout };
            let result = manager
                .call_method(&provider, method, call.input, options)
                .await;
            result.map_err(service_error).and_then(served_value)
        })
    }

    fn stream(
        self: Arc<Self>,
        provider: String,
        input: Value,
    ) -> futures_util::future::BoxFuture<
        'static,
        Result<futures_util::stream::BoxStream<'static, Result<Value, PluginError>>, PluginError>,
    > {
        use futures_util::StreamExt;
        let manager = PluginManager { inner: self };
        Box::pin(async move {
            let items = manager
                .stream(&provider, input)
                .await
                .map_err(service_error)?;
            Ok(items.map(|item| item.and_then(served_value)).boxed())
        })
    }
}

/// A provider's answer as a service call passes it on: its value, when it references no
/// files (they would be deleted before the caller could read them; they are deleted now).
fn served_value(output: CallOutput) -> Result<Value, PluginError> {
    if output.files.is_empty() {
        return Ok(output.value);
    }
    Err(PluginError::Failed(
        "the provider answered with file references, which a service call cannot pass on"
            .to_owned(),
    ))
}

/// A manager error as the plugin calling a service sees it.
fn service_error(e: ManagerError) -> PluginError {
    match e {
        ManagerError::Plugin { source, .. } => source,
        ManagerError::UnknownMethod { .. } => PluginError::InvalidInput(e.to_string()),
        other => PluginError::Unavailable(other.to_string()),
    }
}

/// Hook deliveries are counted in the manager's metrics; the delivery tasks hold it weakly.
impl crate::hook_delivery::HookSink for Inner {
    fn record_hook(&self, plugin: &str, outcome: crate::hook_delivery::Outcome, n: u64) {
        self.metrics.record_hook(plugin, outcome, n);
    }
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
        let host = Arc::new(Host::with_config(config.host.clone())?);
        let worker_dir = match &config.worker_dir {
            Some(dir) => dir.clone(),
            None => default_worker_dir(),
        };
        let host_file = match &config.host_config_file {
            Some(path) => host_config::read(path)?,
            None => host_config::HostFile::default(),
        };
        let mut pythons = config.python.clone();
        pythons.extend(host_file.python);
        let entry_points = entry_points::discover(&pythons);
        let services = crate::services::Services::new(host.dir());
        let manager = Self {
            inner: Arc::new(Inner {
                services,
                host,
                config,
                worker_dir,
                file_layers: host_file.layers,
                available: RwLock::new(BTreeMap::new()),
                problems: RwLock::new(Vec::new()),
                pythons,
                entry_points: RwLock::new(entry_points),
                overridden: RwLock::new(BTreeMap::new()),
                loaded: RwLock::new(BTreeMap::new()),
                load_failures: RwLock::new(BTreeMap::new()),
                ops: tokio::sync::Mutex::new(()),
                metrics: Metrics::default(),
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
    /// prefix is optional; `"*"` matches all). See [`plugvisor_host::EventBus::register_hook`].
    pub fn register_hook<F>(&self, name: &str, hook: F) -> HookHandle
    where
        F: Fn(&LifecycleEvent) + Send + Sync + 'static,
    {
        self.inner.host.register_hook(name, hook)
    }

    /// Re-reads every manifest directory, and adds the entry points last listed (those no
    /// manifest overrides).
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
        let eps = read(&self.inner.entry_points);
        let overridden = entry_points::merge(&mut available, &eps);
        problems.extend(eps.problems.iter().cloned());
        drop(eps);
        for p in &problems {
            tracing::warn!(problem = %p, "manifest skipped");
        }
        for note in overridden.values() {
            tracing::info!(note = %note, "entry point overridden");
        }
        *write(&self.inner.available) = available;
        *write(&self.inner.problems) = problems;
        *write(&self.inner.overridden) = overridden;
    }

    /// Lists the interpreters' entry points again (it runs each interpreter, blocking up to
    /// [`entry_points::LIST_TIMEOUT`]), then [`PluginManager::rediscover`]s.
    pub fn relist(&self) {
        let eps = entry_points::discover(&self.inner.pythons);
        *write(&self.inner.entry_points) = eps;
        self.rediscover();
    }

    /// [`PluginManager::relist`] from async code: on a multi-threaded runtime the other tasks
    /// move to other threads while the interpreters run.
    fn relist_in_task(&self) {
        use tokio::runtime::{Handle, RuntimeFlavor};
        let multi =
            Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::MultiThread);
        if multi {
            tokio::task::block_in_place(|| self.relist());
        } else {
            self.relist();
        }
    }

    /// Manifests (and entry points, and interpreters) that could not be used, with file, line
    /// and reason.
    pub fn manifest_errors(&self) -> Vec<ManifestError> {
        read(&self.inner.problems).clone()
    }

    /// One line per entry point a manifest of the same name overrides (the manifest wins).
    pub fn overridden_entry_points(&self) -> Vec<String> {
        read(&self.inner.overridden).values().cloned().collect()
    }

    /// Every discovered plugin, loaded or not.
    pub fn available(&self) -> Vec<PluginInfo> {
        let available = read(&self.inner.available);
        available.values().map(|d| self.info_of(d)).collect()
    }

    /// Every loaded plugin.
    pub fn loaded(&self) -> Vec<PluginInfo> {
        self.all_loaded()
            .iter()
            .map(|m| self.noted(info_of(&m.found, Some(m), &self.inner.metrics)))
            .collect()
    }

    /// `info` with the entry point its manifest overrides, if any, among its warnings.
    fn noted(&self, mut info: PluginInfo) -> PluginInfo {
        if info.entry_point.is_none() {
            let overridden = read(&self.inner.overridden);
            info.warnings.extend(overridden.get(&info.name).cloned());
        }
        info
    }

    /// One plugin (loaded or available).
    ///
    /// # Errors
    /// [`ManagerError::Unknown`].
    pub fn info(&self, name: &str) -> Result<PluginInfo, ManagerError> {
        if let Some(m) = self.managed(name) {
            return Ok(self.noted(info_of(&m.found, Some(&m), &self.inner.metrics)));
        }
        let found = read(&self.inner.available).get(name).cloned();
        found
            .map(|d| self.info_of(&d))
            .ok_or_else(|| ManagerError::Unknown(name.to_owned()))
    }

    fn info_of(&self, found: &Discovered) -> PluginInfo {
        let name = &found.manifest.name;
        let managed = self.managed(name);
        let mut info = self.noted(info_of(found, managed.as_ref(), &self.inner.metrics));
        if managed.is_none() {
            info.last_error = read(&self.inner.load_failures).get(name).cloned();
            if info.last_error.is_some() {
                info.state = "failed".to_owned();
            }
        }
        info
    }

    /// Every loaded plugin, as a list (the map's lock is not held while they are used).
    fn all_loaded(&self) -> Vec<Arc<Managed>> {
        read(&self.inner.loaded).values().cloned().collect()
    }

    fn managed(&self, name: &str) -> Option<Arc<Managed>> {
        read(&self.inner.loaded).get(name).cloned()
    }

    /// The loaded plugin `name`; [`ManagerError::NotLoaded`] if a manifest describes it,
    /// [`ManagerError::Unknown`] if none does.
    fn loaded_or_err(&self, name: &str) -> Result<Arc<Managed>, ManagerError> {
        if let Some(m) = self.managed(name) {
            return Ok(m);
        }
        if read(&self.inner.available).contains_key(name) {
            Err(ManagerError::NotLoaded(name.to_owned()))
        } else {
            Err(ManagerError::Unknown(name.to_owned()))
        }
    }

    /// The JSON Schema and the configuration in force (secrets masked) of a loaded plugin.
    ///
    /// # Errors
    /// [`ManagerError::NotLoaded`], [`ManagerError::Unknown`].
    pub fn config(&self, name: &str) -> Result<PluginConfig, ManagerError> {
        let m = self.loaded_or_err(name)?;
        Ok(PluginConfig {
            schema: m.identity.config_schema.clone(),
            config: m.masked_config(),
        })
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
        let all: Vec<Node<'_>> = available.values().map(|d| node(&d.manifest)).collect();
        let needed = deps::closure(&all, names);
        let nodes: Vec<Node<'_>> = all
            .into_iter()
            .filter(|n| needed.iter().any(|name| name == n.name))
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

    /// The manifest of `name`; a broken `<name>.toml` is reported as what is wrong with it
    /// (e.g. a UI plugin without its `index.html`), not as an unknown plugin.
    fn discovered(&self, name: &str) -> Result<Discovered, ManagerError> {
        if let Some(found) = read(&self.inner.available).get(name) {
            return Ok(found.clone());
        }
        let broken = read(&self.inner.problems)
            .iter()
            .find(|p| {
                let toml = p.file.extension().is_some_and(|x| x == "toml");
                toml && p.file.file_stem().is_some_and(|stem| stem == name)
            })
            .cloned();
        Err(broken.map_or_else(|| ManagerError::Unknown(name.to_owned()), Into::into))
    }

    /// The re-read manifest of loaded plugin `name`, which came from `file`: a problem with
    /// that file now is reported as what is wrong with it, not as an unknown plugin.
    fn rediscovered(&self, name: &str, file: &std::path::Path) -> Result<Discovered, ManagerError> {
        if let Some(found) = read(&self.inner.available).get(name) {
            return Ok(found.clone());
        }
        let broken = read(&self.inner.problems)
            .iter()
            .find(|p| p.file == file)
            .cloned();
        match broken {
            Some(problem) => Err(problem.into()),
            None => self.discovered(name),
        }
    }

    async fn load_one(
        &self,
        found: Discovered,
        api: Option<Value>,
    ) -> Result<PluginInfo, ManagerError> {
        let name = found.manifest.name.clone();
        if let Some(reason) = entry_point_error(&found) {
            write(&self.inner.load_failures).insert(name.clone(), reason.clone());
            return Err(ManagerError::Start {
                plugin: name,
                reason,
            });
        }
        self.check_prefix(&found)?;
        let plan = Plan {
            file_layer: self.file_layer(&name),
            worker_dir: self.inner.worker_dir.clone(),
            api_layer: api.unwrap_or(Value::Object(Default::default())),
            grant: self.grant(&found)?,
            first_replicas: None,
            found,
        };
        let managed = match Managed::load(Arc::clone(&self.inner.host), plan).await {
            Ok(managed) => managed,
            Err(e) => {
                if let ManagerError::Start { reason, .. } = &e {
                    write(&self.inner.load_failures).insert(name, reason.clone());
                }
                return Err(e);
            }
        };
        write(&self.inner.load_failures).remove(&name);
        let version = managed.identity.version.clone();
        write(&self.inner.loaded).insert(name.clone(), Arc::clone(&managed));
        // Subscribed before its own `loaded`, which it hears too.
        managed.start_hooks(&self.hook_sink());
        self.emit(&name, EventKind::Loaded { version });
        managed.start_tasks(&self.task_sink());
        managed.start_health_checks();
        crate::resolver::start(&managed);
        crate::autoscale::start(&managed);
        self.info(&name)
    }

    /// Refuses a plugin whose route prefix is, contains or lies beneath a loaded plugin's.
    fn check_prefix(&self, found: &Discovered) -> Result<(), ManagerError> {
        let name = &found.manifest.name;
        let prefix = found.manifest.http.prefix_of(name);
        for (other, managed) in read(&self.inner.loaded).iter() {
            let theirs = managed.found.manifest.http.prefix_of(other);
            if other != name && (under(&prefix, &theirs) || under(&theirs, &prefix)) {
                return Err(ManagerError::RouteConflict {
                    plugin: name.clone(),
                    other: other.clone(),
                    prefix,
                });
            }
        }
        Ok(())
    }

    /// The loaded plugin whose route prefix holds `path` (the longest), with the path below
    /// it and its `[http]` settings.
    pub fn route_target(&self, path: &str) -> Option<RouteTarget> {
        let loaded = read(&self.inner.loaded);
        let (plugin, prefix, http) = loaded
            .iter()
            .map(|(name, m)| {
                let http = &m.found.manifest.http;
                (name, http.prefix_of(name), http)
            })
            .filter(|(_, prefix, _)| under(path, prefix))
            .max_by_key(|(_, prefix, _)| prefix.len())?;
        let rest = match &path[prefix.len()..] {
            "" => "/".to_owned(),
            rest => rest.to_owned(),
        };
        Some(RouteTarget {
            plugin: plugin.clone(),
            prefix,
            rest,
            http: http.clone(),
        })
    }

    /// The assets directory of loaded plugin `name`'s UI, when its manifest has `ui`.
    pub fn ui_dir(&self, name: &str) -> Option<std::path::PathBuf> {
        let managed = self.managed(name)?;
        let found = &managed.found;
        found.manifest.ui.as_ref().map(|ui| ui.dir_of(&found.file))
    }

    /// Every loaded plugin's routes: (plugin, mount prefix, route).
    pub fn routes(&self) -> Vec<(String, String, RouteSpec)> {
        let loaded = read(&self.inner.loaded);
        let mut all = Vec::new();
        for (name, m) in loaded.iter() {
            let prefix = m.found.manifest.http.prefix_of(name);
            for spec in &m.identity.routes {
                all.push((name.clone(), prefix.clone(), spec.clone()));
            }
        }
        all
    }

    /// Forwards an HTTP request to a route of `name` (starting a lazy plugin first); the
    /// request's URI is the path below the plugin's prefix. Counted like a call.
    ///
    /// # Errors
    /// As [`PluginManager::call`].
    pub async fn route(
        &self,
        name: &str,
        request: http::Request<impl plugvisor_host::RouteRequestBody>,
    ) -> Result<http::Response<RouteBody>, ManagerError> {
        let managed = self.loaded_or_err(name)?;
        let started = Instant::now();
        let result = managed.route(request).await;
        self.record(name, started, &result);
        result.map_err(|source| plugin_error(name, source))
    }

    /// The middlewares that wrap a request to the (normalised) host `path`, in chain order:
    /// by priority, lowest first, then by name. Empty when none covers it.
    pub fn middleware_chain(&self, path: &str) -> Vec<crate::middleware::ChainLink> {
        let loaded = read(&self.inner.loaded);
        let mut chain: Vec<_> = loaded
            .iter()
            .filter_map(|(name, m)| {
                let scope = m.scope.as_ref()?;
                let table = m.found.manifest.middleware.as_ref()?;
                scope.covers(path).then(|| crate::middleware::ChainLink {
                    plugin: name.clone(),
                    priority: table.priority,
                    on_error: table.on_error,
                    hooks: m.identity.hooks.clone(),
                })
            })
            .collect();
        chain.sort_by(|a, b| (a.priority, &a.plugin).cmp(&(b.priority, &b.plugin)));
        chain
    }

    /// Runs middleware `name`'s `before_request` hook (counted in its metrics like a call).
    ///
    /// # Errors
    /// [`ManagerError::NotLoaded`], [`ManagerError::Plugin`] when the hook failed.
    pub async fn before_request(
        &self,
        name: &str,
        request: &plugvisor_proto::wire::HookRequest,
    ) -> Result<plugvisor_proto::wire::BeforeAction, ManagerError> {
        let managed = self.loaded_or_err(name)?;
        let started = Instant::now();
        let result = managed.before_request(request).await;
        self.record(name, started, &result);
        result.map_err(|source| plugin_error(name, source))
    }

    /// Runs middleware `name`'s `after_response` hook (counted in its metrics like a call).
    ///
    /// # Errors
    /// As [`PluginManager::before_request`].
    pub async fn after_response(
        &self,
        name: &str,
        exchange: &plugvisor_proto::wire::AfterResponse,
    ) -> Result<plugvisor_proto::wire::HookResponse, ManagerError> {
        let managed = self.loaded_or_err(name)?;
        let started = Instant::now();
        let result = managed.after_response(exchange).await;
        self.record(name, started, &result);
        result.map_err(|source| plugin_error(name, source))
    }

    /// Unloads `name`. Refused while loaded plugins require a service only it provides,
    /// unless `force`.
    ///
    /// # Errors
    /// [`ManagerError::NotLoaded`], [`ManagerError::Required`].
    pub async fn unload(&self, name: &str, force: bool) -> Result<(), ManagerError> {
        let managed = self.take_out(name, force).await?;
        // Drained without the manager-wide lock: the other plugins stay manageable meanwhile.
        managed.stop(DRAIN).await;
        self.emit(name, EventKind::Unloaded);
        Ok(())
    }

    /// Removes `name` from the loaded plugins and retires it, under the manager-wide lock.
    async fn take_out(&self, name: &str, force: bool) -> Result<Arc<Managed>, ManagerError> {
        let _op = self.inner.ops.lock().await;
        let managed = self.loaded_or_err(name)?;
        let dependents = self.dependents(&managed);
        if !dependents.is_empty() && !force {
            return Err(ManagerError::Required {
                plugin: name.to_owned(),
                dependents,
            });
        }
        write(&self.inner.loaded).remove(name);
        managed.retire();
        Ok(managed)
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
    /// A plugin with several local replicas rolls: the new version's first worker is
    /// validated before anything changes, then each old replica in turn is replaced by a new
    /// worker that is ready and configured before the old one leaves dispatch
    /// (`rollout`); the manifest's new `replicas` count is reached at the end.
    ///
    /// # Errors
    /// Not loaded, a manifest that is now broken ([`ManagerError::Manifest`] with its file,
    /// line and reason), or a new worker that cannot start; the old one keeps serving. A
    /// replica that cannot be replaced mid-roll stops the roll ([`ManagerError::Start`],
    /// saying how many replicas run which version); the others keep serving.
    pub async fn reload(&self, name: &str) -> Result<PluginInfo, ManagerError> {
        let (old, new, carried) = self.swap(name).await?;
        // Drained without the manager-wide lock, as in `unload`.
        old.stop(DRAIN).await;
        let rolled = crate::rollout::replace(&new, carried).await;
        let version = new.identity.version.clone();
        self.emit(name, EventKind::Reloaded { version });
        rolled.map_err(|reason| ManagerError::Start {
            plugin: name.to_owned(),
            reason,
        })?;
        self.info(name)
    }

    /// Loads a new `Managed` for `name` from its re-read manifest and puts it in place of the
    /// old one, which is retired and returned with the new one, and the old replicas the new
    /// one took over to replace one by one.
    async fn swap(
        &self,
        name: &str,
    ) -> Result<(Arc<Managed>, Arc<Managed>, crate::rollout::Carried), ManagerError> {
        let _op = self.inner.ops.lock().await;
        let old = self.loaded_or_err(name)?;
        if old.found.entry_point.is_some() {
            // The package may have been upgraded: ask its interpreter again.
            self.relist_in_task();
        } else {
            self.rediscover();
        }
        let found = self.rediscovered(name, &old.found.file)?;
        if let Some(reason) = entry_point_error(&found) {
            return Err(ManagerError::Start {
                plugin: name.to_owned(),
                reason,
            });
        }
        let old_pool = old.current();
        let old_local = old_pool.as_ref().map_or(0, |p| {
            let replicas = p.replicas();
            replicas
                .iter()
                .filter(|s| s.remote_address().is_none())
                .count()
        });
        let eager = found.manifest.start != crate::manifest::StartMode::Lazy;
        // A scaling pool keeps the size it grew to (within the new bounds).
        let wanted = match found.manifest.scaling() {
            Some(s) => old_local.clamp(s.min, s.max),
            None => found.manifest.start_replicas(),
        };
        let carry = crate::rollout::carried_count(old_local, wanted * usize::from(eager));
        let plan = Plan {
            file_layer: self.file_layer(name),
            worker_dir: self.inner.worker_dir.clone(),
            api_layer: old.api_layer(),
            grant: self.grant(&found)?,
            first_replicas: (carry > 0).then_some(1),
            found,
        };
        let new = Managed::load(Arc::clone(&self.inner.host), plan).await?;
        let carried = match (&old_pool, new.current()) {
            (Some(old_pool), Some(new_pool)) if carry > 0 => {
                crate::rollout::carry_over(old_pool, &new_pool, carry, wanted)
            }
            _ => crate::rollout::Carried::default(),
        };
        write(&self.inner.loaded).insert(name.to_owned(), Arc::clone(&new));
        old.retire();
        new.start_hooks(&self.hook_sink());
        new.start_tasks(&self.task_sink());
        new.start_health_checks();
        crate::resolver::start(&new);
        crate::autoscale::start(&new);
        Ok((old, new, carried))
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
    /// [`ManagerError::Unknown`] for a name no manifest has, [`ManagerError::NotLoaded`] for
    /// a plugin that is not loaded, and [`ManagerError::Plugin`] with the call's own error
    /// (as [`plugvisor_host::Supervisor`] calls).
    pub async fn call(
        &self,
        name: &str,
        input: Value,
        options: CallOptions,
    ) -> Result<CallOutput, ManagerError> {
        let managed = self.loaded_or_err(name)?;
        let started = Instant::now();
        let mut result = managed.call(&input, options).await;
        if resend(&result, &managed) {
            // It never reached a worker: safe to send to the replacement.
            let next = self.loaded_or_err(name)?;
            result = next.call(&input, options).await;
        }
        self.record(name, started, &result);
        result.map_err(|source| plugin_error(name, source))
    }

    /// Calls method `method` of `name` once (`execute` is [`PluginManager::call`]): started
    /// lazily, counted in the metrics and sent again after a reload as a call is.
    ///
    /// # Errors
    /// As [`PluginManager::call`]; [`ManagerError::UnknownMethod`] naming the plugin's methods
    /// when it declares no method `method` (nothing is sent, no call is counted).
    pub async fn call_method(
        &self,
        name: &str,
        method: &str,
        input: Value,
        options: CallOptions,
    ) -> Result<CallOutput, ManagerError> {
        let managed = self.loaded_or_err(name)?;
        let started = Instant::now();
        let mut result = managed.call_method(method, &input, options).await;
        if resend(&result, &managed) {
            let next = self.loaded_or_err(name)?;
            result = next.call_method(method, &input, options).await;
        }
        let result = match result {
            Ok(MethodCall::Unknown(known)) => {
                return Err(ManagerError::UnknownMethod {
                    plugin: name.to_owned(),
                    method: method.to_owned(),
                    known,
                })
            }
            Ok(MethodCall::Output(output)) => Ok(output),
            Err(e) => Err(e),
        };
        self.record(name, started, &result);
        result.map_err(|source| plugin_error(name, source))
    }

    /// Streams from `name`. A stream counts as one call, timed to its start. Each item owns
    /// the output files it references (as [`PluginManager::call`]'s answer does): they are
    /// deleted when the item is dropped unless persisted.
    ///
    /// # Errors
    /// As [`PluginManager::call`].
    pub async fn stream(&self, name: &str, input: Value) -> Result<OutputStream, ManagerError> {
        let managed = self.loaded_or_err(name)?;
        let started = Instant::now();
        let mut result = managed.stream(&input).await;
        if resend(&result, &managed) {
            let next = self.loaded_or_err(name)?;
            result = next.stream(&input).await;
        }
        self.record(name, started, &result);
        result.map_err(|source| plugin_error(name, source))
    }

    fn record<T>(&self, name: &str, started: Instant, result: &Result<T, PluginError>) {
        let error = result.as_ref().err().map(PluginError::kind);
        self.inner.metrics.record(name, started.elapsed(), error);
    }

    /// Start order, services and per-plugin state.
    pub fn status(&self) -> ManagerStatus {
        let plugins = self.loaded();
        let loaded = self.all_loaded();
        let nodes: Vec<Node<'_>> = loaded.iter().map(|m| node(&m.found.manifest)).collect();
        ManagerStatus {
            initialization_order: deps::start_order(&nodes).unwrap_or_default(),
            services: deps::services(&nodes),
            plugins,
            failed: self.failed_infos(),
            manifest_errors: self
                .manifest_errors()
                .iter()
                .map(ToString::to_string)
                .collect(),
        }
    }

    /// Health of every loaded plugin, by name.
    pub fn health(&self) -> BTreeMap<String, PluginHealth> {
        self.all_loaded()
            .iter()
            .map(|m| {
                let health = PluginHealth {
                    state: m.state().to_owned(),
                    healthy: m.healthy(),
                };
                (m.name().to_owned(), health)
            })
            .collect()
    }

    /// Prometheus text: calls, errors by kind, latency, restarts, workers by state.
    pub fn metrics(&self) -> String {
        let mut out = String::new();
        self.inner.metrics.render(&mut out);
        metrics::render_plugins(&mut out, &self.loaded());
        out
    }

    /// Stops every plugin and the host; waits until every worker is gone.
    pub async fn shutdown(self) {
        let all = std::mem::take(&mut *write(&self.inner.loaded));
        // Background work first (schedulers, health checks, hook deliveries), so none of it
        // fails against a stopping worker.
        all.values().for_each(|m| m.end_tasks());
        let stops = all.values().map(|m| m.stop(Duration::from_secs(5)));
        futures_util::future::join_all(stops).await;
        self.inner.services.stop();
        self.inner.host.stop_all().await;
    }

    /// The right of `found`'s plugin to call services, when its manifest lists any.
    fn grant(&self, found: &Discovered) -> Result<Option<crate::services::Grant>, ManagerError> {
        if !found.manifest.calls_services() {
            return Ok(None);
        }
        let inner: Arc<dyn crate::services::Backend> = self.inner.clone();
        let backend = Arc::downgrade(&inner);
        let grant = self.inner.services.grant(&found.manifest.name, backend);
        grant.map(Some).map_err(|reason| ManagerError::Start {
            plugin: found.manifest.name.clone(),
            reason,
        })
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
        self.inner.host.emit(name, kind);
    }

    /// The manager as the task schedulers see it, held weakly.
    fn task_sink(&self) -> std::sync::Weak<dyn crate::scheduler::TaskSink> {
        let inner: Arc<dyn crate::scheduler::TaskSink> = self.inner.clone();
        Arc::downgrade(&inner)
    }

    /// The manager as the hook deliveries see it, held weakly.
    fn hook_sink(&self) -> std::sync::Weak<dyn crate::hook_delivery::HookSink> {
        let inner: Arc<dyn crate::hook_delivery::HookSink> = self.inner.clone();
        Arc::downgrade(&inner)
    }

    /// The scheduled tasks of loaded plugin `name` and their last runs.
    ///
    /// # Errors
    /// [`ManagerError::NotLoaded`], [`ManagerError::Unknown`].
    pub fn tasks(&self, name: &str) -> Result<Vec<crate::tasks::TaskInfo>, ManagerError> {
        Ok(self.loaded_or_err(name)?.task_infos())
    }

    /// Runs task `task` of `name` now (besides its schedule) and returns its state after the
    /// run; a failed run is reported in that state (`last_outcome`, `last_error`).
    ///
    /// # Errors
    /// [`ManagerError::UnknownTask`], [`ManagerError::TaskBusy`] while a run is in progress
    /// (`overlap = "skip"`), [`ManagerError::TaskPaused`] while the plugin is failed.
    pub async fn run_task(
        &self,
        name: &str,
        task: &str,
    ) -> Result<crate::tasks::TaskInfo, ManagerError> {
        let managed = self.loaded_or_err(name)?;
        let Some(slot) = managed.tasks.iter().find(|t| t.plan.name == task) else {
            return Err(ManagerError::UnknownTask {
                plugin: name.to_owned(),
                task: task.to_owned(),
                known: managed.tasks.iter().map(|t| t.plan.name.clone()).collect(),
            });
        };
        let (plugin, task) = (name.to_owned(), task.to_owned());
        match crate::scheduler::run_once(slot, &*managed, &*self.inner, None).await {
            crate::scheduler::RunOutcome::Done => Ok(slot.info()),
            crate::scheduler::RunOutcome::Busy => Err(ManagerError::TaskBusy { plugin, task }),
            crate::scheduler::RunOutcome::Paused => Err(ManagerError::TaskPaused { plugin, task }),
        }
    }
}

/// True when a call failed before reaching a worker because its plugin was replaced.
fn resend<T>(result: &Result<T, PluginError>, managed: &Managed) -> bool {
    matches!(result, Err(PluginError::Unavailable(_))) && managed.is_retired()
}

fn plugin_error(name: &str, source: PluginError) -> ManagerError {
    ManagerError::Plugin {
        plugin: name.to_owned(),
        source,
    }
}

fn node(m: &Manifest) -> Node<'_> {
    m.node()
}

/// Why the entry point describing `found` cannot run, naming it; `None` for a manifest.
fn entry_point_error(found: &Discovered) -> Option<String> {
    let ep = found.entry_point.as_ref()?;
    let error = ep.error.as_ref()?;
    Some(format!("{}: {error}", ep.describe()))
}

/// What the API shows of `found`, loaded as `managed` or not loaded, with its call counts.
fn info_of(found: &Discovered, managed: Option<&Arc<Managed>>, metrics: &Metrics) -> PluginInfo {
    let m = &found.manifest;
    let sup = managed.and_then(|x| x.current());
    let (calls_total, errors_total) = metrics.counts(&m.name);
    PluginInfo {
        name: m.name.clone(),
        version: managed
            .map(|x| x.identity.version.clone())
            .unwrap_or_else(|| m.version.clone()),
        description: m.description.clone(),
        kind: m.kind,
        tags: m.tags.clone(),
        loaded: managed.is_some(),
        state: managed.map(|x| x.state()).unwrap_or("available").to_owned(),
        start: m.start,
        pid: sup.as_ref().and_then(|s| s.pid()),
        restarts: sup.as_ref().map(|s| s.restarts()).unwrap_or(0),
        replicas: m.replicas,
        workers: sup.as_ref().map(|s| s.infos()).unwrap_or_default(),
        uptime_secs: managed
            .and_then(|x| x.started_at())
            .map(|t| t.elapsed().as_secs_f64()),
        provides: m.provides.clone(),
        requires: m.requires.clone(),
        optional_requires: m.optional_requires.clone(),
        manifest: found.file.clone(),
        source: found.source(),
        entry_point: found.entry_point.clone(),
        sandbox: m.sandbox.clone(),
        enforced: sup.as_ref().and_then(|s| s.sandbox()),
        calls_total,
        errors_total,
        routes: managed.map(|x| mounted_routes(x)).unwrap_or_default(),
        methods: managed
            .map(|x| x.identity.methods.clone())
            .unwrap_or_default(),
        plugin_health: managed.and_then(|x| x.plugin_health()),
        ui: m.ui.as_ref().map(|ui| UiInfo::of(&m.name, ui)),
        tasks: managed.map(|x| x.task_infos()).unwrap_or_default(),
        hooks: hook_info(m, metrics),
        last_error: sup.as_ref().and_then(crate::managed::not_serving),
        warnings: managed
            .and_then(|x| crate::managed::version_mismatch(m, &x.identity))
            .into_iter()
            .collect(),
    }
}

/// The subscriptions of `m` and their deliveries so far; `None` when it subscribes to none.
fn hook_info(m: &Manifest, metrics: &Metrics) -> Option<crate::status::HookInfo> {
    use crate::hook_delivery::Outcome;
    let subscribed = m.hook_events();
    if subscribed.is_empty() {
        return None;
    }
    let count = |outcome| metrics.hook_count(&m.name, outcome);
    Some(crate::status::HookInfo {
        subscribed: subscribed.into_iter().map(str::to_owned).collect(),
        delivered: count(Outcome::Delivered),
        failed: count(Outcome::Failed),
        dropped: count(Outcome::Dropped),
        skipped: count(Outcome::Skipped),
    })
}

/// The routes a loaded plugin's worker reported, with their full paths.
fn mounted_routes(managed: &Managed) -> Vec<PluginRoute> {
    let manifest = &managed.found.manifest;
    let prefix = manifest.http.prefix_of(&manifest.name);
    managed
        .identity
        .routes
        .iter()
        .map(|r| PluginRoute {
            method: r.method.clone(),
            path: format!("{prefix}{}", r.path),
            summary: r.summary.clone(),
        })
        .collect()
}

/// Where a route request goes (see [`PluginManager::route_target`]).
#[derive(Debug, Clone)]
pub struct RouteTarget {
    /// The plugin.
    pub plugin: String,
    /// Its mount prefix.
    pub prefix: String,
    /// The request path below the prefix (`/` at least).
    pub rest: String,
    /// Its `[http]` settings.
    pub http: crate::manifest::HttpManifest,
}

// The maps are replaced or edited whole under the lock; a panic elsewhere cannot leave one
// half-written, so a poisoned lock is still good to use.
fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}
