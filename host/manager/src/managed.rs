//! `Managed`: one loaded plugin: its manifest, its layered configuration, and its supervisor,
//! started eagerly or on the first call, stopped after an idle period, swapped on reload.

use crate::config::{
    env_layer, keep_masked_secrets, mask_secrets, merge, schema_defaults, validate,
};
use crate::error::ManagerError;
use crate::hook_delivery::{HookSink, Subscriber};
use crate::idle::{self, IdleStop};
use crate::manifest::{Discovered, StartMode};
use crate::scheduler::{TaskSink, TaskTarget};
use plugvisor_host::{
    CallOptions, CallOutput, Host, OutputStream, PluginError, PluginIdentity, Pool,
    SupervisorConfig, WorkerSpec, WorkerState,
};
use plugvisor_proto::Value;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;
use tokio::task::AbortHandle;
use tokio::time::Instant;

/// One loaded plugin.
#[derive(Debug)]
pub(crate) struct Managed {
    pub(crate) found: Discovered,
    /// The local workers' spec; `None` when the plugin only attaches to remote workers.
    spec: Option<WorkerSpec>,
    supervision: SupervisorConfig,
    /// What the worker said about itself when the plugin was loaded.
    pub(crate) identity: PluginIdentity,
    /// The host paths it wraps, when it is a middleware.
    pub(crate) scope: Option<crate::middleware::Scope>,
    /// Config layers below the API's, merged: schema defaults, manifest, host file, env.
    base_config: Value,
    state: Mutex<State>,
    /// Held while a lazy start, an idle stop or a configuration change runs.
    starting: tokio::sync::Mutex<()>,
    /// Set when a reload replaced this plugin or it was unloaded: calls that failed before
    /// reaching a worker are sent to the replacement.
    replaced: AtomicBool,
    idle_stopper: OnceLock<AbortHandle>,
    /// Its scheduled tasks (`[[tasks]]`).
    pub(crate) tasks: Vec<Arc<crate::scheduler::TaskSlot>>,
    /// Cancelled when the plugin is retired or dropped: each task scheduler (and the health
    /// checker) then ends at its next wait (a run in progress finishes first).
    tasks_end: tokio_util::sync::CancellationToken,
    /// The plugin's last own health report (`None` before the first check, without a worker,
    /// or when it has no health check).
    plugin_health: Mutex<Option<plugvisor_proto::wire::HealthReport>>,
    host: Arc<Host>,
    /// Its right to call services (revoked when this is dropped).
    _grant: Option<crate::services::Grant>,
}

/// What changes while the plugin is loaded.
#[derive(Debug)]
struct State {
    /// The API/CLI configuration layer.
    api_layer: Value,
    /// The configuration in force (validated).
    config: Value,
    /// The running pool of replicas (one for most plugins); `None` for a lazy plugin between
    /// calls.
    current: Option<Pool>,
    last_call: Instant,
    started_at: Option<Instant>,
}

/// How to build a [`Managed`].
pub(crate) struct Plan {
    pub(crate) found: Discovered,
    pub(crate) worker_dir: PathBuf,
    pub(crate) file_layer: Value,
    pub(crate) api_layer: Value,
    /// Its right to call services, when its manifest lists any.
    pub(crate) grant: Option<crate::services::Grant>,
    /// Local workers to start now instead of the manifest's `replicas`: 1 when a rolling
    /// reload brings the others over from the running plugin and replaces them one by one.
    pub(crate) first_replicas: Option<usize>,
}

impl Managed {
    /// Starts (eager) or probes (lazy) the worker, layers and validates the configuration, and
    /// applies it. Nothing is left running on error.
    pub(crate) async fn load(host: Arc<Host>, plan: Plan) -> Result<Arc<Self>, ManagerError> {
        let manifest = &plan.found.manifest;
        let mut spec = match manifest.command.trim().is_empty() {
            true => None,
            false => Some(worker_spec(&plan.found, &plan.worker_dir)?),
        };
        if let (Some(grant), Some(spec)) = (&plan.grant, spec.as_mut()) {
            spec.env
                .extend(grant.env().map(|(k, v)| (k.into(), v.into())));
        }
        let supervision = manifest.supervision.to_config();
        let local = spec.as_ref().map_or(0, |_| {
            plan.first_replicas.unwrap_or(manifest.start_replicas())
        });
        let first = supervise(&host, &plan.found, spec.as_ref(), local, &supervision).await?;
        let identity = match first.identity() {
            Some(identity) => identity.clone(),
            None => {
                first.shutdown().await;
                return Err(ManagerError::Start {
                    plugin: manifest.name.clone(),
                    reason: "the worker reported no identity".to_owned(),
                });
            }
        };
        if let Some(warning) = version_mismatch(manifest, &identity) {
            tracing::warn!(plugin = %manifest.name, "{warning}");
        }
        if let Err(reason) = kind_contract(manifest, &identity) {
            first.shutdown().await;
            return Err(ManagerError::Start {
                plugin: manifest.name.clone(),
                reason,
            });
        }
        let scope = manifest.middleware.as_ref().map(|m| m.scope());
        let tasks = match task_slots(manifest) {
            Ok(tasks) => tasks,
            Err(reason) => {
                first.shutdown().await;
                return Err(ManagerError::Start {
                    plugin: manifest.name.clone(),
                    reason,
                });
            }
        };
        let mut base = schema_defaults(&identity.config_schema);
        merge(&mut base, &manifest.config_json());
        merge(&mut base, &plan.file_layer);
        merge(&mut base, &env_layer(&manifest.name, std::env::vars()));
        let managed = Arc::new(Self {
            spec,
            supervision,
            identity,
            scope,
            base_config: base,
            state: Mutex::new(State {
                api_layer: plan.api_layer,
                config: Value::Null,
                current: None,
                last_call: Instant::now(),
                started_at: None,
            }),
            starting: tokio::sync::Mutex::new(()),
            replaced: AtomicBool::new(false),
            idle_stopper: OnceLock::new(),
            tasks,
            tasks_end: tokio_util::sync::CancellationToken::new(),
            plugin_health: Mutex::new(None),
            host,
            _grant: plan.grant,
            found: plan.found,
        });
        if let Err(e) = managed.configure_first(&first).await {
            first.shutdown().await;
            return Err(e);
        }
        if managed.found.manifest.start == StartMode::Lazy {
            first.shutdown().await;
        } else {
            managed.install(first);
        }
        managed.start_idle_stopper();
        Ok(managed)
    }

    /// Validates the layered configuration and applies it to the first worker.
    async fn configure_first(&self, first: &Pool) -> Result<(), ManagerError> {
        let config = self.effective(None)?;
        first
            .initialize(Some(config.clone()))
            .await
            .map_err(|e| self.plugin_error(e))?;
        self.lock().config = config;
        Ok(())
    }

    fn start_idle_stopper(self: &Arc<Self>) {
        if let Some(secs) = self.found.manifest.idle_stop_secs {
            let task = idle::spawn(Arc::downgrade(self), Duration::from_secs(secs));
            let _ = self.idle_stopper.set(task.abort_handle());
        }
    }

    /// The plugin's id.
    pub(crate) fn name(&self) -> &str {
        &self.found.manifest.name
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is only ever replaced field by field; a panic elsewhere leaves it whole.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn plugin_error(&self, source: PluginError) -> ManagerError {
        ManagerError::Plugin {
            plugin: self.name().to_owned(),
            source,
        }
    }

    /// The configuration with `api` (or the current API layer) on top, validated.
    fn effective(&self, api: Option<&Value>) -> Result<Value, ManagerError> {
        let mut config = self.base_config.clone();
        match api {
            Some(layer) => merge(&mut config, layer),
            None => merge(&mut config, &self.lock().api_layer),
        }
        let schema = &self.identity.config_schema;
        validate(schema, &config).map_err(|problems| ManagerError::InvalidConfig {
            plugin: self.name().to_owned(),
            problems,
        })?;
        Ok(config)
    }

    /// The API configuration layer.
    pub(crate) fn api_layer(&self) -> Value {
        self.lock().api_layer.clone()
    }

    /// The configuration in force, secrets masked.
    pub(crate) fn masked_config(&self) -> Value {
        mask_secrets(&self.identity.config_schema, &self.lock().config)
    }

    /// Replaces the API layer and applies the result to the running plugin (no restart).
    /// A secret sent as the mask `"***"` keeps its current value. An invalid configuration is
    /// refused before it reaches the plugin.
    pub(crate) async fn set_config(&self, mut api: Value) -> Result<Value, ManagerError> {
        let current = self.api_layer();
        keep_masked_secrets(&self.identity.config_schema, &mut api, &current);
        let config = self.effective(Some(&api))?;
        // A lazy start reads the configuration and applies it to its new worker while it
        // holds `starting`: with it held here too, the change either lands before that read
        // or finds the started worker installed and is applied to it.
        let _starting = self.starting.lock().await;
        if let Some(sup) = self.current() {
            // A pool rolls it one replica at a time and puts it back on this one if refused.
            let previous = self.lock().config.clone();
            sup.reconfigure(Some(config.clone()), Some(previous))
                .await
                .map_err(|e| self.plugin_error(e))?;
        }
        let mut state = self.lock();
        state.api_layer = api;
        state.config = config;
        drop(state);
        Ok(self.masked_config())
    }

    fn install(&self, sup: Pool) {
        let mut state = self.lock();
        state.current = Some(sup);
        state.started_at = Some(Instant::now());
    }

    /// The running pool, if any.
    pub(crate) fn current(&self) -> Option<Pool> {
        self.lock().current.clone()
    }

    /// When the current worker was started.
    pub(crate) fn started_at(&self) -> Option<Instant> {
        self.lock().started_at
    }

    /// Marks the plugin replaced (reload) or unloaded: no lazy start from now on.
    pub(crate) fn retire(&self) {
        self.replaced.store(true, Ordering::Release);
        self.tasks_end.cancel();
    }

    /// Ends its background work (task schedulers, health checker, hook delivery) without
    /// retiring it: what the manager does before stopping everything.
    pub(crate) fn end_tasks(&self) {
        self.tasks_end.cancel();
    }

    /// Starts the scheduler of each of its tasks, telling `sink` (the manager) of each run.
    pub(crate) fn start_tasks(self: &Arc<Self>, sink: &std::sync::Weak<dyn TaskSink>) {
        for slot in &self.tasks {
            let end = self.tasks_end.clone();
            crate::scheduler::spawn(Arc::clone(slot), Arc::downgrade(self), sink.clone(), end);
        }
    }

    /// Starts delivering the host events its manifest subscribes it to (`hooks`), counted in
    /// `sink`; the delivery ends when the plugin is retired or dropped.
    pub(crate) fn start_hooks(self: &Arc<Self>, sink: &std::sync::Weak<dyn HookSink>) {
        let events = self.found.manifest.hook_events();
        if events.is_empty() {
            return;
        }
        let name = self.name().to_owned();
        let end = self.tasks_end.clone();
        crate::hook_delivery::spawn(
            &self.host,
            Arc::downgrade(self),
            name,
            events,
            sink.clone(),
            end,
        );
    }

    /// Cancelled when the plugin is retired or dropped: its background work ends then.
    pub(crate) fn ending(&self) -> tokio_util::sync::CancellationToken {
        self.tasks_end.clone()
    }

    /// The host its workers run on.
    pub(crate) fn host(&self) -> &Arc<Host> {
        &self.host
    }

    /// How its replicas are supervised.
    pub(crate) fn supervision(&self) -> &SupervisorConfig {
        &self.supervision
    }

    /// The configuration in force.
    pub(crate) fn config(&self) -> Value {
        self.lock().config.clone()
    }

    /// Held while the replicas or the configuration change (a lazy start, an idle stop, a
    /// configuration change, a replica joining): a change made under it sees the
    /// configuration in force and no other change half done.
    pub(crate) async fn changing(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.starting.lock().await
    }

    /// How many local replicas it starts with (`replicas`, kept within `min_replicas` and
    /// `max_replicas` when it scales), 0 when it only attaches to remote workers.
    pub(crate) fn local_replicas(&self) -> usize {
        self.spec
            .as_ref()
            .map_or(0, |_| self.found.manifest.start_replicas())
    }

    /// Starts one more local worker (as [`Managed::start_replica`]) and adds it to the running
    /// pool, all under [`Managed::changing`], so a stop (which takes the pool away under it
    /// too) cannot miss it. `Ok(false)` when the plugin was stopped meanwhile.
    ///
    /// # Errors
    /// As [`Managed::start_replica`].
    pub(crate) async fn add_replica(&self) -> Result<bool, String> {
        let _changing = self.changing().await;
        let Some(pool) = self.current() else {
            return Ok(false);
        };
        pool.add(self.start_replica().await?);
        Ok(true)
    }

    /// Starts one more local worker of this plugin (its spec and supervision), waits until
    /// it is ready and gives it the configuration in force. Call it under
    /// [`Managed::changing`], then put it in the pool. Nothing is left running on error.
    ///
    /// # Errors
    /// The plugin runs no local workers, or the worker did not start or refused the
    /// configuration (the reason, with its last failure).
    pub(crate) async fn start_replica(&self) -> Result<plugvisor_host::Supervisor, String> {
        let spec = self.spec.clone().ok_or("it runs no local workers")?;
        let wait = spec.start_timeout + Duration::from_secs(1);
        let sup = self.host.supervise(spec, self.supervision.clone());
        let state = sup.wait_ready(wait).await;
        let failed = match state {
            WorkerState::Ready => None,
            state => Some(format!(
                "not ready within {wait:?} (state {state}){}",
                sup.last_failure()
                    .map(|f| format!(": {f}"))
                    .unwrap_or_default()
            )),
        };
        let refused = match failed {
            None => plugvisor_proto::Plugin::initialize(&sup, Some(self.config()))
                .await
                .err()
                .map(|e| format!("it refused the configuration in force: {e}")),
            some => some,
        };
        match refused {
            None => Ok(sup),
            Some(why) => {
                sup.shutdown().await;
                Err(why)
            }
        }
    }

    /// Starts asking the worker for its own health, when it has a health check.
    pub(crate) fn start_health_checks(self: &Arc<Self>) {
        if !self.identity.health_check {
            return;
        }
        let every = self.found.manifest.health.interval();
        spawn_health_checker(Arc::downgrade(self), every, self.tasks_end.clone());
    }

    /// One health check of the running worker (none for a lazy plugin between calls or a
    /// worker not ready): stores the report; a `fail` restarts the worker when the manifest
    /// says `restart_on_unhealthy`.
    pub(crate) async fn check_plugin_health(&self) {
        let Some(sup) = self.current() else {
            *self.health_slot() = None;
            return;
        };
        if !matches!(sup.state(), WorkerState::Ready | WorkerState::Unhealthy) {
            return;
        }
        let rules = &self.found.manifest.health;
        let report = sup.check_health(rules.timeout()).await;
        let failed = report.status == plugvisor_proto::wire::HealthStatus::Fail;
        if failed {
            let output = report.output.as_deref().unwrap_or_default();
            tracing::warn!(
                plugin = self.name(),
                output,
                restart = rules.restart_on_unhealthy,
                "plugin health check failed"
            );
        }
        *self.health_slot() = Some(report);
        if failed && rules.restart_on_unhealthy {
            sup.recycle();
        }
    }

    fn health_slot(&self) -> MutexGuard<'_, Option<plugvisor_proto::wire::HealthReport>> {
        self.plugin_health.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The plugin's last own health report.
    pub(crate) fn plugin_health(&self) -> Option<plugvisor_proto::wire::HealthReport> {
        self.health_slot().clone()
    }

    /// Its tasks' state.
    pub(crate) fn task_infos(&self) -> Vec<crate::tasks::TaskInfo> {
        self.tasks.iter().map(|t| t.info()).collect()
    }

    /// True once [`Managed::retire`] was called.
    pub(crate) fn is_retired(&self) -> bool {
        self.replaced.load(Ordering::Acquire)
    }

    /// The running pool, starting one first for a lazy plugin.
    async fn supervisor(&self) -> Result<Pool, PluginError> {
        self.lock().last_call = Instant::now();
        if let Some(sup) = self.current() {
            return Ok(sup);
        }
        if self.is_retired() {
            let gone = format!("{} was replaced", self.name());
            return Err(PluginError::Unavailable(gone));
        }
        let _starting = self.starting.lock().await;
        if let Some(sup) = self.current() {
            return Ok(sup);
        }
        let sup = supervise(
            &self.host,
            &self.found,
            self.spec.as_ref(),
            self.local_replicas(),
            &self.supervision,
        )
        .await
        .map_err(|e| PluginError::Unavailable(plugvisor_host::error_chain(&e)))?;
        let config = self.lock().config.clone();
        sup.initialize(Some(config)).await?;
        self.install(sup.clone());
        Ok(sup)
    }

    /// One call, starting the worker first if needed. The input is borrowed: the caller may
    /// send it to a replacement if this one was retired before the call reached a worker.
    pub(crate) async fn call(
        &self,
        input: &Value,
        options: CallOptions,
    ) -> Result<CallOutput, PluginError> {
        self.supervisor().await?.call_ref(input, options).await
    }

    /// One call of the named method `method`, starting the worker first if needed (input
    /// borrowed as for calls); a method the plugin does not declare in `/v1/info` is not sent.
    pub(crate) async fn call_method(
        &self,
        method: &str,
        input: &Value,
        options: CallOptions,
    ) -> Result<MethodCall, PluginError> {
        let sup = self.supervisor().await?;
        match sup.identity() {
            Some(id) if !id.has_method(method) => Ok(MethodCall::Unknown(id.method_names())),
            _ => {
                let output = sup.call_method_ref(method, input, options).await?;
                Ok(MethodCall::Output(output))
            }
        }
    }

    /// One stream, starting the worker first if needed (input borrowed as for calls); its
    /// items own their output files.
    pub(crate) async fn stream(&self, input: &Value) -> Result<OutputStream, PluginError> {
        self.supervisor().await?.stream_outputs_ref(input).await
    }

    /// One middleware `before_request`, starting the worker first if needed.
    pub(crate) async fn before_request(
        &self,
        request: &plugvisor_proto::wire::HookRequest,
    ) -> Result<plugvisor_proto::wire::BeforeAction, PluginError> {
        self.supervisor().await?.before_request(request).await
    }

    /// One middleware `after_response`, starting the worker first if needed.
    pub(crate) async fn after_response(
        &self,
        exchange: &plugvisor_proto::wire::AfterResponse,
    ) -> Result<plugvisor_proto::wire::HookResponse, PluginError> {
        self.supervisor().await?.after_response(exchange).await
    }

    /// One route request, starting the worker first if needed.
    pub(crate) async fn route(
        &self,
        request: http::Request<impl plugvisor_host::RouteRequestBody>,
    ) -> Result<http::Response<plugvisor_host::RouteBody>, PluginError> {
        self.supervisor().await?.route(request).await
    }

    /// The state to report: the supervisor's, `degraded` for a ready worker whose last own
    /// health check failed (and that is not restarted for it), or `idle` for a lazy plugin
    /// not running.
    pub(crate) fn state(&self) -> &'static str {
        match self.current() {
            Some(sup) if sup.state() == WorkerState::Ready && self.degraded() => "degraded",
            Some(sup) => sup.state().as_str(),
            None => "idle",
        }
    }

    fn degraded(&self) -> bool {
        let failed = self
            .health_slot()
            .as_ref()
            .is_some_and(|r| r.status == plugvisor_proto::wire::HealthStatus::Fail);
        failed && !self.found.manifest.health.restart_on_unhealthy
    }

    /// Stops the worker if it has had no call for `idle` and none is running.
    async fn stop_idle(&self, idle: Duration) -> bool {
        let (quiet, sup) = {
            let state = self.lock();
            (state.last_call.elapsed() >= idle, state.current.clone())
        };
        let Some(sup) = sup else {
            return false;
        };
        if !quiet || sup.in_flight() > 0 {
            return false;
        }
        let _starting = self.starting.lock().await;
        {
            let mut state = self.lock();
            state.current = None;
            state.started_at = None;
        }
        sup.shutdown().await;
        true
    }

    /// Stops the worker after its in-flight calls finish (at most `drain`), and the idle
    /// stopper with it.
    pub(crate) async fn stop(&self, drain: Duration) {
        if let Some(stopper) = self.idle_stopper.get() {
            stopper.abort();
        }
        // Under `changing`: a replica being added or swapped in lands before the pool is
        // taken (and is stopped with it) or finds no pool.
        let sup = {
            let _changing = self.starting.lock().await;
            self.lock().current.take()
        };
        if let Some(sup) = sup {
            let _ = tokio::time::timeout(drain, sup.drained()).await;
            sup.shutdown().await;
        }
    }

    /// Reports whether a running worker is healthy: `Ready`, or no worker (lazy, idle).
    pub(crate) fn healthy(&self) -> Option<bool> {
        self.current()
            .map(|sup| matches!(sup.state(), WorkerState::Ready))
    }
}

impl Drop for Managed {
    fn drop(&mut self) {
        if let Some(stopper) = self.idle_stopper.get() {
            stopper.abort();
        }
        self.tasks_end.cancel();
    }
}

/// The manifest's tasks, compiled.
fn task_slots(
    manifest: &crate::manifest::Manifest,
) -> Result<Vec<Arc<crate::scheduler::TaskSlot>>, String> {
    manifest
        .tasks
        .iter()
        .map(|t| {
            let plan = t.plan().map_err(|(_, why)| why)?;
            Ok(Arc::new(crate::scheduler::TaskSlot::new(plan)))
        })
        .collect()
}

impl TaskTarget for Managed {
    fn name(&self) -> &str {
        Managed::name(self)
    }

    fn retired(&self) -> bool {
        self.is_retired()
    }

    fn failed(&self) -> bool {
        self.state() == WorkerState::Failed.as_str()
    }

    async fn run(&self, input: &Value, options: CallOptions) -> Result<(), PluginError> {
        // A run's output (and its files) is not kept.
        self.call(input, options).await.map(drop)
    }
}

impl Subscriber for Managed {
    fn name(&self) -> &str {
        Managed::name(self)
    }

    async fn deliver(
        &self,
        event: &plugvisor_proto::wire::EventDelivery,
        timeout: Duration,
    ) -> Option<Result<(), PluginError>> {
        // A lazy plugin between calls is not started for an event.
        let sup = self.current()?;
        Some(sup.deliver_event(event, timeout).await)
    }
}

impl IdleStop for Managed {
    fn name(&self) -> &str {
        Managed::name(self)
    }

    fn retired(&self) -> bool {
        self.is_retired()
    }

    async fn stop_if_idle(&self, idle: Duration) -> bool {
        self.stop_idle(idle).await
    }
}

/// Starts `local` replicas of `spec` and attaches the manifest's remote ones, and waits
/// until every one is ready; a remote replica that is not reachable yet does not hold up a
/// pool in which another replica serves (it joins when it is reached).
async fn supervise(
    host: &Host,
    found: &Discovered,
    spec: Option<&WorkerSpec>,
    local: usize,
    config: &SupervisorConfig,
) -> Result<Pool, ManagerError> {
    let manifest = &found.manifest;
    let start_error = |reason| ManagerError::Start {
        plugin: manifest.name.clone(),
        reason,
    };
    let remote = crate::attach::remote_specs(found)
        .await
        .map_err(start_error)?;
    let mut replicas: Vec<_> = (0..local)
        .filter_map(|_| spec.map(|s| host.supervise(s.clone(), config.clone())))
        .collect();
    let remote_config = crate::attach::remote_config(config);
    let wait = spec
        .into_iter()
        .chain(&remote)
        .map(|s| s.start_timeout)
        .max()
        .unwrap_or_default()
        + Duration::from_secs(1);
    replicas.extend(
        remote
            .into_iter()
            .map(|s| host.supervise(s, remote_config.clone())),
    );
    let pool = Pool::new(replicas);
    match pool.wait_ready(wait).await {
        WorkerState::Ready => Ok(pool),
        _ if serving_without_remote_stragglers(&pool, local) => Ok(pool),
        state => {
            let reason = start_failure(&pool, state, wait);
            pool.shutdown().await;
            Err(ManagerError::Start {
                plugin: manifest.name.clone(),
                reason,
            })
        }
    }
}

/// True when every local replica (the first `local`) is ready and so is at least one replica.
fn serving_without_remote_stragglers(pool: &Pool, local: usize) -> bool {
    let ready = |s: &plugvisor_host::Supervisor| s.state() == WorkerState::Ready;
    let replicas = pool.replicas();
    replicas[..local].iter().all(ready) && replicas.iter().any(ready)
}

/// Why `sup` did not become ready within `waited`: the real cause (its last start error or
/// crash, with the exit status and last stderr line), then the state it was left in.
fn start_failure(sup: &Pool, state: WorkerState, waited: Duration) -> String {
    let left = match sup.reason() {
        Some(reason) => format!("state {state}: {reason}"),
        None => format!("state {state} after {waited:?}"),
    };
    match sup.last_failure() {
        Some(cause) => format!("{cause} ({left})"),
        None => format!("not ready within {waited:?} ({left})"),
    }
}

/// Why the worker of a loaded plugin is not serving, when it is not.
pub(crate) fn not_serving(sup: &Pool) -> Option<String> {
    match sup.state() {
        WorkerState::Ready | WorkerState::Unhealthy | WorkerState::Stopping => None,
        _ => sup.last_failure().or_else(|| sup.reason()),
    }
}

/// The worker spec a manifest describes.
fn worker_spec(found: &Discovered, worker_dir: &Path) -> Result<WorkerSpec, ManagerError> {
    let m = &found.manifest;
    let program = crate::command::resolve_command(found, worker_dir).map_err(|reason| {
        ManagerError::Start {
            plugin: m.name.clone(),
            reason,
        }
    })?;
    let mut spec = WorkerSpec::new(program).name(m.name.clone());
    spec.args = crate::command::resolve_args(found);
    spec.env = m.env.iter().map(|(k, v)| (k.into(), v.into())).collect();
    if let Some(secs) = m.supervision.start_timeout_secs {
        spec.start_timeout = Duration::from_secs(secs);
    }
    if let Some(ms) = m.supervision.stop_grace_ms {
        spec.stop_grace = Duration::from_millis(ms);
    }
    if let Some(sandbox) = &m.sandbox {
        spec.sandbox = Some(sandbox.to_sandbox());
        if sandbox.cpu_seconds.is_some() {
            spec.limits.cpu_seconds = sandbox.cpu_seconds;
        }
    }
    Ok(spec)
}

/// A warning when the worker reports another version than its manifest declares.
pub(crate) fn version_mismatch(
    manifest: &crate::manifest::Manifest,
    identity: &PluginIdentity,
) -> Option<String> {
    (identity.version != manifest.version).then(|| {
        format!(
            "the worker reports version {:?} but the manifest declares {:?}",
            identity.version, manifest.version
        )
    })
}

/// What a kind promises that only the running worker can show: a `middleware` serves at least
/// one hook; and what `hooks` needs: a worker that handles every subscribed event.
fn kind_contract(
    manifest: &crate::manifest::Manifest,
    identity: &PluginIdentity,
) -> Result<(), String> {
    if manifest.kind == crate::manifest::PluginKind::Middleware && identity.hooks.is_empty() {
        return Err(
            "kind = \"middleware\" but the worker serves no hooks (implement Middleware and \
             run it with Worker::new(plugin).middleware())"
                .to_owned(),
        );
    }
    crate::hook_delivery::contract(manifest, identity)
}

/// The outcome of [`Managed::call_method`] that reached the plugin's method table.
#[derive(Debug)]
pub(crate) enum MethodCall {
    /// The method ran.
    Output(CallOutput),
    /// The plugin has no such method: these are the ones it has.
    Unknown(Vec<String>),
}

/// Checks `managed`'s plugin every `every` until it is dropped (or the task is aborted).
fn spawn_health_checker(
    managed: std::sync::Weak<Managed>,
    every: Duration,
    end: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            tokio::select! {
                () = end.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let Some(managed) = managed.upgrade() else {
                return;
            };
            managed.check_plugin_health().await;
        }
    })
}
