//! `Host`: the private runtime directory, the workers it started, and the event bus.

use crate::core::WorkerCore;
use crate::dirs::HostDir;
use crate::error::HostError;
use crate::events::{EventBus, HookHandle, LifecycleEvent};
use crate::remote::RemotePlugin;
use crate::spec::WorkerSpec;
use crate::supervisor::{Supervisor, SupervisorConfig};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use tokio::sync::broadcast;

/// Settings of a [`Host`].
#[derive(Debug, Clone, Default)]
pub struct HostConfig {
    /// Where the host makes its private directory. Default: `$PLUGVISOR_RUNTIME_DIR` if set,
    /// else `/dev/shm/plugvisor-<uid>` when `/dev/shm` is writable (transfer files then live in
    /// memory), else `$TMPDIR/plugvisor-<uid>`.
    pub base_dir: Option<PathBuf>,
}

/// What the host and every supervisor share.
#[derive(Debug)]
pub(crate) struct HostShared {
    dir: Arc<HostDir>,
    next_id: AtomicU64,
    workers: Mutex<Vec<Weak<WorkerCore>>>,
    closing: AtomicBool,
    pub(crate) events: EventBus,
}

impl HostShared {
    /// True once the host is shutting down: nothing may be (re)started.
    pub(crate) fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Starts one worker of `spec` and registers it.
    pub(crate) async fn launch(&self, spec: &WorkerSpec) -> Result<Arc<WorkerCore>, HostError> {
        if self.is_closing() {
            return Err(HostError::ShuttingDown);
        }
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let launched = crate::launch::launch(spec, n, &self.dir, &self.events).await?;
        let core = Arc::new(WorkerCore::new(launched));
        if let Ok(mut workers) = self.workers.lock() {
            workers.retain(|w| w.strong_count() > 0);
            workers.push(Arc::downgrade(&core));
        }
        // A shutdown that began while this worker was starting would not have seen it.
        if self.is_closing() {
            core.stop().await;
            return Err(HostError::ShuttingDown);
        }
        Ok(core)
    }

    fn live_workers(&self) -> Vec<Arc<WorkerCore>> {
        self.workers
            .lock()
            .map(|w| w.iter().filter_map(Weak::upgrade).collect())
            .unwrap_or_default()
    }
}

/// Starts workers and owns them: dropping the host stops every worker it started.
///
/// On creation it makes a private directory (mode 0700) for sockets and transfer files, and
/// removes what hosts that died without cleaning up left behind.
#[derive(Debug)]
pub struct Host {
    pub(crate) shared: Arc<HostShared>,
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
            shared: Arc::new(HostShared {
                dir: Arc::new(dir),
                next_id: AtomicU64::new(1),
                workers: Mutex::new(Vec::new()),
                closing: AtomicBool::new(false),
                events: EventBus::default(),
            }),
        })
    }

    /// The host's private directory (sockets and transfer directories live under it).
    pub fn dir(&self) -> &Path {
        self.shared.dir.path()
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
        let core = self.shared.launch(&spec).await?;
        Ok(RemotePlugin::new(core))
    }

    /// Starts a supervised worker: restarted when it crashes or hangs, recycled on request,
    /// with a call queue while it restarts. Returns at once; the first start runs in the
    /// background (see [`Supervisor::wait_ready`]). Needs a tokio runtime.
    pub fn supervise(&self, spec: WorkerSpec, config: SupervisorConfig) -> Supervisor {
        Supervisor::start(Arc::clone(&self.shared), spec, config)
    }

    /// A receiver of every lifecycle event of this host's workers from now on.
    pub fn events(&self) -> broadcast::Receiver<LifecycleEvent> {
        self.shared.events.subscribe()
    }

    /// Calls `hook` for every event named `name` (see [`EventBus::register_hook`]).
    pub fn register_hook<F>(&self, name: &str, hook: F) -> HookHandle
    where
        F: Fn(&LifecycleEvent) + Send + Sync + 'static,
    {
        self.shared.events.register_hook(name, hook)
    }

    /// Stops every worker this host started and waits until they are gone.
    pub async fn shutdown(self) {
        self.stop_all().await;
    }

    /// [`Host::shutdown`] for a host that is shared (the manager's): nothing starts after it.
    pub(crate) async fn stop_all(&self) {
        self.shared.closing.store(true, Ordering::Release);
        let workers = self.shared.live_workers();
        let stops = workers.iter().map(|core| core.stop());
        futures_util::future::join_all(stops).await;
        // Every worker is gone; handles still held elsewhere must not keep the files alive.
        self.shared.dir.remove();
    }
}

impl Drop for Host {
    /// Stops every worker still running (their proxies then answer `Unavailable`).
    fn drop(&mut self) {
        self.shared.closing.store(true, Ordering::Release);
        for core in self.shared.live_workers() {
            match tokio::runtime::Handle::try_current() {
                Ok(handle) => {
                    handle.spawn(async move { core.stop().await });
                }
                Err(_) => core.process.begin_stop(),
            }
        }
    }
}
