//! `Registry`: the live workers of one host (weakly held), its private directory and its
//! event bus; every worker is launched through it, so a shutdown finds them all.

use crate::dirs::HostDir;
use crate::error::HostError;
use crate::events::EventBus;
use crate::launch;
use crate::spec::WorkerSpec;
use crate::worker::WorkerCore;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// The live workers of one host, its directory, and its event bus: what the host and every
/// supervisor share.
#[derive(Debug)]
pub(crate) struct Registry {
    dir: Arc<HostDir>,
    next_id: AtomicU64,
    workers: Mutex<Vec<Weak<WorkerCore>>>,
    closing: AtomicBool,
    pub(crate) events: EventBus,
}

impl Registry {
    pub(crate) fn new(dir: HostDir) -> Self {
        Self {
            dir: Arc::new(dir),
            next_id: AtomicU64::new(1),
            workers: Mutex::new(Vec::new()),
            closing: AtomicBool::new(false),
            events: EventBus::default(),
        }
    }

    /// The host's private directory.
    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// From now on nothing may be (re)started.
    pub(crate) fn close(&self) {
        self.closing.store(true, Ordering::Release);
    }

    /// Removes the host directory (once every worker is gone).
    pub(crate) fn remove_dir(&self) {
        self.dir.remove();
    }

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
        let launched = match &spec.remote {
            Some(remote) => crate::attach::attach(spec, remote, n, &self.dir).await?,
            None => launch::launch(spec, n, &self.dir, &self.events).await?,
        };
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

    /// Every worker still alive.
    pub(crate) fn live_workers(&self) -> Vec<Arc<WorkerCore>> {
        self.workers
            .lock()
            .map(|w| w.iter().filter_map(Weak::upgrade).collect())
            .unwrap_or_default()
    }
}
