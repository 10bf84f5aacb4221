//! `Host`: the private runtime directory and the registry of workers it started.

use crate::dirs::HostDir;
use crate::error::HostError;
use crate::core::WorkerCore;
use crate::remote::RemotePlugin;
use crate::spec::WorkerSpec;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

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
    dir: Arc<HostDir>,
    next_id: AtomicU64,
    workers: Mutex<Vec<Weak<WorkerCore>>>,
    closing: AtomicBool,
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
            dir: Arc::new(dir),
            next_id: AtomicU64::new(1),
            workers: Mutex::new(Vec::new()),
            closing: AtomicBool::new(false),
        })
    }

    /// The host's private directory (sockets and transfer directories live under it).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Starts a worker and returns the proxy to it once it has answered `/v1/info`.
    ///
    /// # Errors
    /// [`HostError`]: the program could not be started, exited early, sent no or a bad
    /// handshake within the start timeout, or did not answer. Nothing is left running.
    ///
    /// # Cancel safety
    /// Dropping the future while it waits kills the half-started worker.
    pub async fn spawn(&self, spec: WorkerSpec) -> Result<RemotePlugin, HostError> {
        if self.closing.load(Ordering::Acquire) {
            return Err(HostError::ShuttingDown);
        }
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let launched = crate::launch::launch(&spec, n, &self.dir).await?;
        let core = Arc::new(WorkerCore::new(launched));
        self.register(&core);
        Ok(RemotePlugin::new(core))
    }

    fn register(&self, core: &Arc<WorkerCore>) {
        if let Ok(mut workers) = self.workers.lock() {
            workers.retain(|w| w.strong_count() > 0);
            workers.push(Arc::downgrade(core));
        }
    }

    fn live_workers(&self) -> Vec<Arc<WorkerCore>> {
        self.workers
            .lock()
            .map(|w| w.iter().filter_map(Weak::upgrade).collect())
            .unwrap_or_default()
    }

    /// Stops every worker this host started and waits until they are gone.
    pub async fn shutdown(self) {
        self.closing.store(true, Ordering::Release);
        let stops = self
            .live_workers()
            .into_iter()
            .map(|core| async move { core.stop().await });
        futures_util::future::join_all(stops).await;
    }
}

impl Drop for Host {
    /// Stops every worker still running (their proxies then answer `Unavailable`).
    fn drop(&mut self) {
        self.closing.store(true, Ordering::Release);
        for core in self.live_workers() {
            match tokio::runtime::Handle::try_current() {
                Ok(handle) => {
                    handle.spawn(async move { core.stop().await });
                }
                Err(_) => core.process.begin_stop(),
            }
        }
    }
}
