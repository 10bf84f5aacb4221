//! `Host`: what an embedder holds: it starts workers (one-off or supervised), owns them, and
//! publishes their lifecycle events.

use crate::dirs::HostDir;
use crate::error::HostError;
use crate::events::{EventKind, HookHandle, LifecycleEvent};
use crate::registry::Registry;
use crate::remote::RemotePlugin;
use crate::spec::WorkerSpec;
use crate::supervisor::{Supervisor, SupervisorConfig};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::broadcast;

/// Settings of a [`Host`].
#[derive(Debug, Clone, Default)]
pub struct HostConfig {
    /// Where the host makes its private directory. Default: `$PLUGVISOR_RUNTIME_DIR` if set,
    /// else `/dev/shm/plugvisor-<uid>` when `/dev/shm` is writable (transfer files then live in
    /// memory), else `$TMPDIR/plugvisor-<uid>`.
    pub base_dir: Option<PathBuf>,
}

/// Starts workers and owns them: dropping the host stops every worker it started.
///
/// On creation it makes a private directory (mode 0700) for sockets and transfer files, and
/// removes what hosts that died without cleaning up left behind.
#[derive(Debug)]
pub struct Host {
    registry: Arc<Registry>,
}

impl Host {
    /// A host with the default settings.
    ///
    /// # Errors
    /// When the private directory cannot be created (or exists with the wrong owner or mode).
    pub fn new() -> std::io::Result<Self> {
        Self::with_config(HostConfig::default())
    }

    /// A host with `config`.
    ///
    /// # Errors
    /// As [`Host::new`].
    pub fn with_config(config: HostConfig) -> std::io::Result<Self> {
        let dir = HostDir::create(config.base_dir.as_deref())?;
        tracing::debug!(dir = %dir.path().display(), "host directory ready");
        Ok(Self {
            registry: Arc::new(Registry::new(dir)),
        })
    }

    /// The host's private directory (sockets and transfer directories live under it).
    pub fn dir(&self) -> &Path {
        self.registry.dir()
    }

    /// Starts one unsupervised worker and returns the proxy to it once it has answered
    /// `/v1/info`. If it dies it stays dead; see [`Host::supervise`] for restarts.
    ///
    /// # Errors
    /// [`HostError`]: the program could not be started, exited early, sent no or a bad
    /// handshake within the start timeout, or did not answer. Nothing is left running.
    ///
    /// # Cancel safety
    /// Dropping the future while it waits kills the half-started worker.
    pub async fn spawn(&self, spec: WorkerSpec) -> Result<RemotePlugin, HostError> {
        let core = self.registry.launch(&spec).await?;
        Ok(RemotePlugin::new(core))
    }

    /// Starts a supervised worker: restarted when it crashes or hangs, recycled on request,
    /// with a call queue while it restarts. Returns at once; the first start runs in the
    /// background (see [`Supervisor::wait_ready`]). Needs a tokio runtime.
    pub fn supervise(&self, spec: WorkerSpec, config: SupervisorConfig) -> Supervisor {
        Supervisor::start(Arc::clone(&self.registry), spec, config)
    }

    /// Supervises `replicas` workers of `spec` (at least one), each on its own, behind one
    /// [`crate::Pool`] that sends each call to the least-loaded ready replica.
    pub fn pool(&self, spec: WorkerSpec, config: SupervisorConfig, replicas: usize) -> crate::Pool {
        let all = (0..replicas.max(1))
            .map(|_| self.supervise(spec.clone(), config.clone()))
            .collect();
        crate::Pool::new(all)
    }

    /// A receiver of every lifecycle event of this host's workers from now on.
    pub fn events(&self) -> broadcast::Receiver<LifecycleEvent> {
        self.registry.events.subscribe()
    }

    /// Calls `hook` for every event named `name` (see [`crate::EventBus::register_hook`]).
    pub fn register_hook<F>(&self, name: &str, hook: F) -> HookHandle
    where
        F: Fn(&LifecycleEvent) + Send + Sync + 'static,
    {
        self.registry.events.register_hook(name, hook)
    }

    /// Publishes a lifecycle event about `plugin` to every subscriber and hook (for layers
    /// above the engine: a manager announces loads, unloads, reloads and config changes).
    pub fn emit(&self, plugin: &str, kind: EventKind) {
        self.registry.events.emit(plugin, kind);
    }

    /// Stops every worker this host started and waits until they are gone.
    pub async fn shutdown(self) {
        self.stop_all().await;
    }

    /// [`Host::shutdown`] for a host that is shared: stops every worker, waits until they are
    /// gone and removes the host directory. Nothing can be started with this host after it.
    pub async fn stop_all(&self) {
        self.registry.close();
        let workers = self.registry.live_workers();
        let stops = workers.iter().map(|core| core.stop());
        futures_util::future::join_all(stops).await;
        // Every worker is gone; handles still held elsewhere must not keep the files alive.
        self.registry.remove_dir();
    }
}

impl Drop for Host {
    /// Stops every worker still running (their proxies then answer `Unavailable`).
    fn drop(&mut self) {
        self.registry.close();
        for core in self.registry.live_workers() {
            match tokio::runtime::Handle::try_current() {
                Ok(handle) => {
                    handle.spawn(async move { core.stop().await });
                }
                Err(_) => core.process.begin_stop(),
            }
        }
    }
}
