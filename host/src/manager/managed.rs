//! `Managed`: one loaded plugin: its manifest, its layered configuration, and its supervisor,
//! started eagerly or on the first call, stopped after an idle period, swapped on reload.

use super::config::{env_layer, mask_secrets, merge, schema_defaults, validate};
use super::manifest::{Discovered, StartMode};
use super::ManagerError;
use crate::core::CallOutput;
use crate::host::HostShared;
use crate::spec::WorkerSpec;
use crate::supervisor::{CallOptions, Supervisor, SupervisorConfig, WorkerState};
use plugvisor_proto::{Plugin, PluginError, PluginStream, Value};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One loaded plugin.
#[derive(Debug)]
pub(crate) struct Managed {
    pub(crate) found: Discovered,
    pub(crate) spec: WorkerSpec,
    pub(crate) supervision: SupervisorConfig,
    pub(crate) schema: Value,
    pub(crate) version: String,
    /// Config layers below the API's, merged: schema defaults, manifest, host file, env.
    base_config: Value,
    /// The API/CLI layer.
    api_layer: Mutex<Value>,
    /// The configuration in force (validated).
    pub(crate) config: Mutex<Value>,
    /// Held while a lazy start or an idle stop runs.
    starting: tokio::sync::Mutex<()>,
    current: Mutex<Option<Supervisor>>,
    last_call: Mutex<Instant>,
    pub(crate) started_at: Mutex<Option<Instant>>,
    /// Set when a reload replaced this plugin: calls that failed as unavailable are retried.
    pub(crate) replaced: AtomicBool,
    host: Arc<HostShared>,
}

/// How to build a [`Managed`].
pub(crate) struct Plan {
    pub(crate) found: Discovered,
    pub(crate) worker_dir: std::path::PathBuf,
    pub(crate) file_layer: Value,
    pub(crate) api_layer: Value,
}

impl Managed {
    /// Starts (eager) or probes (lazy) the worker, layers and validates the configuration, and
    /// applies it. Nothing is left running on error.
    pub(crate) async fn load(host: Arc<HostShared>, plan: Plan) -> Result<Arc<Self>, ManagerError> {
        let manifest = &plan.found.manifest;
        let spec = worker_spec(&plan.found, &plan.worker_dir)?;
        let supervision = manifest.supervision.to_config();
        let first = supervise(&host, &spec, &supervision, &manifest.name).await?;
        let schema = first.config_schema();
        let version = first.version().to_owned();
        let mut base = schema_defaults(&schema);
        merge(&mut base, &manifest.config_json());
        merge(&mut base, &plan.file_layer);
        merge(&mut base, &env_layer(&manifest.name, std::env::vars()));
        let managed = Arc::new(Self {
            spec,
            supervision,
            schema,
            version,
            base_config: base,
            api_layer: Mutex::new(plan.api_layer),
            config: Mutex::new(Value::Null),
            starting: tokio::sync::Mutex::new(()),
            current: Mutex::new(None),
            last_call: Mutex::new(Instant::now()),
            started_at: Mutex::new(None),
            replaced: AtomicBool::new(false),
            host,
            found: plan.found,
        });
        let config = match managed.effective(None) {
            Ok(config) => config,
            Err(e) => {
                first.shutdown().await;
                return Err(e);
            }
        };
        if let Err(e) = first.initialize(Some(config.clone())).await {
            first.shutdown().await;
            return Err(ManagerError::Plugin(managed.name().to_owned(), e));
        }
        set(&managed.config, config);
        if managed.found.manifest.start == StartMode::Lazy {
            first.shutdown().await;
        } else {
            managed.install(first);
        }
        Ok(managed)
    }

    /// The plugin's id.
    pub(crate) fn name(&self) -> &str {
        &self.found.manifest.name
    }

    /// The configuration with `api` (or the current API layer) on top, validated.
    fn effective(&self, api: Option<&Value>) -> Result<Value, ManagerError> {
        let mut config = self.base_config.clone();
        let layer = api.cloned().unwrap_or_else(|| get(&self.api_layer));
        merge(&mut config, &layer);
        validate(&self.schema, &config).map_err(|problems| ManagerError::InvalidConfig {
            plugin: self.name().to_owned(),
            problems,
        })?;
        Ok(config)
    }

    /// The API configuration layer.
    pub(crate) fn api_layer_value(&self) -> Value {
        get(&self.api_layer)
    }

    /// The configuration in force, secrets masked.
    pub(crate) fn masked_config(&self) -> Value {
        mask_secrets(&self.schema, &get(&self.config))
    }

    /// Replaces the API layer and applies the result to the running plugin (no restart).
    /// An invalid configuration is refused before it reaches the plugin.
    pub(crate) async fn set_config(&self, api: Value) -> Result<Value, ManagerError> {
        let config = self.effective(Some(&api))?;
        if let Some(sup) = self.current() {
            sup.initialize(Some(config.clone()))
                .await
                .map_err(|e| ManagerError::Plugin(self.name().to_owned(), e))?;
        }
        set(&self.api_layer, api);
        set(&self.config, config);
        Ok(self.masked_config())
    }

    fn install(&self, sup: Supervisor) {
        if let Ok(mut slot) = self.current.lock() {
            *slot = Some(sup);
        }
        set(&self.started_at, Some(Instant::now()));
    }

    /// The running supervisor, if any.
    pub(crate) fn current(&self) -> Option<Supervisor> {
        self.current.lock().ok().and_then(|s| s.clone())
    }

    /// The running supervisor, starting one first for a lazy plugin.
    async fn supervisor(&self) -> Result<Supervisor, PluginError> {
        set(&self.last_call, Instant::now());
        if let Some(sup) = self.current() {
            return Ok(sup);
        }
        if self.replaced.load(Ordering::Acquire) {
            return Err(PluginError::Unavailable(format!(
                "{} was replaced",
                self.name()
            )));
        }
        let _starting = self.starting.lock().await;
        if let Some(sup) = self.current() {
            return Ok(sup);
        }
        let sup = supervise(&self.host, &self.spec, &self.supervision, self.name())
            .await
            .map_err(|e| PluginError::Unavailable(e.to_string()))?;
        sup.initialize(Some(get(&self.config))).await?;
        self.install(sup.clone());
        Ok(sup)
    }

    /// One call, starting the worker first if needed.
    pub(crate) async fn call(
        &self,
        input: Value,
        options: CallOptions,
    ) -> Result<CallOutput, PluginError> {
        self.supervisor().await?.call_with(input, options).await
    }

    /// One stream, starting the worker first if needed.
    pub(crate) async fn stream(&self, input: Value) -> Result<PluginStream, PluginError> {
        self.supervisor().await?.execute_stream(input).await
    }

    /// The state to report: the supervisor's, or `idle` for a lazy plugin not running.
    pub(crate) fn state(&self) -> String {
        match self.current() {
            Some(sup) => serde_json::to_value(sup.state())
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            None => "idle".to_owned(),
        }
    }

    /// Stops the worker if it has had no call for `idle` and none is running.
    pub(crate) async fn stop_if_idle(&self, idle: Duration) -> bool {
        let quiet = self
            .last_call
            .lock()
            .map(|t| t.elapsed() >= idle)
            .unwrap_or(false);
        let Some(sup) = self.current() else {
            return false;
        };
        if !quiet || sup.in_flight() > 0 {
            return false;
        }
        let _starting = self.starting.lock().await;
        if let Ok(mut slot) = self.current.lock() {
            *slot = None;
        }
        set(&self.started_at, None);
        sup.shutdown().await;
        true
    }

    /// Stops the worker after its in-flight calls finish (at most `drain`).
    pub(crate) async fn stop(&self, drain: Duration) {
        let sup = self.current.lock().ok().and_then(|mut s| s.take());
        if let Some(sup) = sup {
            let deadline = Instant::now() + drain;
            while sup.in_flight() > 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            sup.shutdown().await;
        }
    }

    /// Reports whether a running worker is healthy: `Ready`, or no worker (lazy, idle).
    pub(crate) fn healthy(&self) -> Option<bool> {
        self.current()
            .map(|sup| matches!(sup.state(), WorkerState::Ready))
    }
}

/// Starts a supervisor for `spec` and waits until it is ready.
async fn supervise(
    host: &Arc<HostShared>,
    spec: &WorkerSpec,
    config: &SupervisorConfig,
    name: &str,
) -> Result<Supervisor, ManagerError> {
    let sup = Supervisor::start(Arc::clone(host), spec.clone(), config.clone());
    let wait = spec.start_timeout + Duration::from_secs(1);
    match sup.wait_ready(wait).await {
        WorkerState::Ready => Ok(sup),
        state => {
            let reason = sup.reason().unwrap_or_else(|| format!("{state:?}"));
            sup.shutdown().await;
            Err(ManagerError::Start(name.to_owned(), reason))
        }
    }
}

/// The worker spec a manifest describes.
fn worker_spec(found: &Discovered, worker_dir: &Path) -> Result<WorkerSpec, ManagerError> {
    let m = &found.manifest;
    let program = if m.command.contains('/') {
        let base = found.file.parent().unwrap_or(Path::new("."));
        base.join(&m.command)
    } else {
        worker_dir.join(&m.command)
    };
    if !program.is_file() {
        return Err(ManagerError::Start(
            m.name.clone(),
            format!("worker binary {} does not exist", program.display()),
        ));
    }
    let mut spec = WorkerSpec::new(program).name(m.name.clone());
    spec.args = m.args.iter().map(Into::into).collect();
    spec.env = m.env.iter().map(|(k, v)| (k.into(), v.into())).collect();
    if let Some(secs) = m.supervision.start_timeout_secs {
        spec.start_timeout = Duration::from_secs(secs);
    }
    if let Some(ms) = m.supervision.stop_grace_ms {
        spec.stop_grace = Duration::from_millis(ms);
    }
    Ok(spec)
}

fn get<T: Clone + Default>(m: &Mutex<T>) -> T {
    m.lock().map(|v| v.clone()).unwrap_or_default()
}

fn set<T>(m: &Mutex<T>, value: T) {
    if let Ok(mut slot) = m.lock() {
        *slot = value;
    }
}
