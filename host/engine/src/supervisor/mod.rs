//! `Supervisor`: one worker kept alive by an actor task, with a call queue in front of it.
//!
//! The actor (`actor.rs`) owns the worker's lifecycle: Starting → Ready ⇄ Unhealthy →
//! (Exited) → Backoff → Starting, and Failed once restarts exceed the intensity limit. It
//! publishes the current state and worker on a watch channel; calls (`calls.rs`) take a slot
//! (bounded concurrency, bounded queue), wait for a ready worker, and run with an optional
//! deadline.

mod actor;
mod backoff;
mod calls;
mod config;

pub use calls::CallOptions;
pub use config::{BackoffConfig, HealthConfig, RestartPolicy, SupervisorConfig};

use crate::identity::PluginIdentity;
use crate::registry::Registry;
use crate::spec::WorkerSpec;
use crate::worker::WorkerCore;
use plugvisor_proto::Value;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::{mpsc, watch, Semaphore};

/// Where a supervised worker is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    /// A worker is being spawned; calls wait.
    Starting,
    /// A worker serves calls.
    Ready,
    /// It serves calls but missed a health probe.
    Unhealthy,
    /// It is being stopped on request.
    Stopping,
    /// It exited; what happens next is being decided.
    Exited,
    /// Waiting out the backoff delay before the next start; calls wait.
    Backoff,
    /// Too many restarts: calls fail fast with `Unavailable` until [`Supervisor::reset`].
    Failed,
    /// Stopped on request (or the restart policy said no); calls fail with `Unavailable`.
    Stopped,
}

impl WorkerState {
    /// The state's name as it appears in JSON and in the API (`"ready"`, `"backoff"`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Ready => "ready",
            Self::Unhealthy => "unhealthy",
            Self::Stopping => "stopping",
            Self::Exited => "exited",
            Self::Backoff => "backoff",
            Self::Failed => "failed",
            Self::Stopped => "stopped",
        }
    }
}

impl std::fmt::Display for WorkerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the actor publishes: the state and, when one is up, the worker.
#[derive(Debug, Clone)]
pub(crate) struct Slot {
    pub(crate) state: WorkerState,
    pub(crate) worker: Option<Arc<WorkerCore>>,
    pub(crate) reason: Option<String>,
}

/// Requests to the actor.
#[derive(Debug)]
pub(crate) enum Command {
    /// Stop the worker and end supervision.
    Stop,
    /// Leave `Failed` (or a stopped `Never` worker) and start again.
    Reset,
    /// Replace the worker with a fresh one, between calls.
    Recycle(String),
}

/// State shared by the handles and the actor.
#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) label: String,
    pub(crate) identity: OnceLock<PluginIdentity>,
    pub(crate) spec: WorkerSpec,
    pub(crate) config: SupervisorConfig,
    pub(crate) host: Arc<Registry>,
    pub(crate) slot: watch::Sender<Slot>,
    pub(crate) commands: mpsc::UnboundedSender<Command>,
    pub(crate) permits: Arc<Semaphore>,
    pub(crate) queued: AtomicUsize,
    pub(crate) restarts: AtomicU64,
    /// The configuration given through `initialize`, re-applied to every new worker.
    pub(crate) plugin_config: Mutex<Option<Value>>,
    /// Why the last worker failed to start or died, when one did.
    pub(crate) last_failure: Mutex<Option<String>>,
    /// Set once the actor has stopped the worker and ended.
    pub(crate) done: watch::Sender<bool>,
}

impl Inner {
    pub(crate) fn publish(&self, state: WorkerState, worker: Option<Arc<WorkerCore>>) {
        self.slot.send_replace(Slot {
            state,
            worker,
            reason: None,
        });
    }

    /// Changes the state, keeping the published worker.
    pub(crate) fn set_state(&self, state: WorkerState) {
        self.slot.send_modify(|slot| slot.state = state);
    }

    pub(crate) fn publish_reason(&self, state: WorkerState, reason: String) {
        self.slot.send_replace(Slot {
            state,
            worker: None,
            reason: Some(reason),
        });
    }

    /// Remembers why a worker failed to start or died (see [`Supervisor::last_failure`]).
    pub(crate) fn record_failure(&self, why: String) {
        if let Ok(mut last) = self.last_failure.lock() {
            *last = Some(why);
        }
    }

    pub(crate) fn send(&self, command: Command) {
        // The actor is gone only after Stop; then there is nothing left to ask.
        let _ = self.commands.send(command);
    }
}

/// Stops supervision when the last [`Supervisor`] handle is dropped.
#[derive(Debug)]
struct Owner {
    commands: mpsc::UnboundedSender<Command>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Stop);
    }
}

/// A supervised plugin: a cheap, cloneable handle that implements [`plugvisor_proto::Plugin`].
///
/// Made by [`crate::Host::supervise`]. Calls made while the worker (re)starts wait in a bounded
/// queue (up to [`SupervisorConfig::queue_timeout`]) and are served by the new worker. When the
/// last handle is dropped the worker is stopped.
///
/// # Errors of every call
/// What the plugin returns, plus [`plugvisor_proto::PluginError::WorkerCrashed`] (the worker
/// died during the call; not retried unless [`SupervisorConfig::idempotent`]),
/// [`plugvisor_proto::PluginError::TimedOut`] (the call's deadline passed; it was cancelled in
/// the worker), [`plugvisor_proto::PluginError::Unavailable`] (failed, stopped, or the queue is
/// full or timed out).
#[derive(Debug, Clone)]
pub struct Supervisor {
    inner: Arc<Inner>,
    _owner: Arc<Owner>,
}

impl Supervisor {
    pub(crate) fn start(host: Arc<Registry>, spec: WorkerSpec, config: SupervisorConfig) -> Self {
        let (commands, rx) = mpsc::unbounded_channel();
        let initial = Slot {
            state: WorkerState::Starting,
            worker: None,
            reason: None,
        };
        let inner = Arc::new(Inner {
            label: spec.label(),
            identity: OnceLock::new(),
            permits: Arc::new(Semaphore::new(call_slots(&config))),
            spec,
            config,
            host,
            slot: watch::channel(initial).0,
            commands: commands.clone(),
            queued: AtomicUsize::new(0),
            restarts: AtomicU64::new(0),
            plugin_config: Mutex::new(None),
            last_failure: Mutex::new(None),
            done: watch::channel(false).0,
        });
        tokio::spawn(actor::run(Arc::clone(&inner), rx));
        Self {
            inner,
            _owner: Arc::new(Owner { commands }),
        }
    }

    /// The current state.
    pub fn state(&self) -> WorkerState {
        self.inner.slot.borrow().state
    }

    /// Whether `other` is a handle to this same supervisor.
    pub fn same(&self, other: &Supervisor) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// The address of the remote worker it attaches to (see [`crate::Attach::address`]);
    /// `None` for a worker the host starts.
    pub fn remote_address(&self) -> Option<String> {
        self.inner.spec.remote.as_ref().map(crate::Attach::address)
    }

    /// True while its worker is gone and being started again (or reconnected).
    pub(crate) fn is_down(&self) -> bool {
        matches!(
            self.state(),
            WorkerState::Backoff | WorkerState::Exited | WorkerState::Starting
        )
    }

    /// Why the worker is not serving, when it is `Failed` or `Stopped`.
    pub fn reason(&self) -> Option<String> {
        self.inner.slot.borrow().reason.clone()
    }

    /// Why the last worker failed to start (the start error: spawn, handshake, `/v1/info`,
    /// exit before the handshake with its last stderr line, a rejected configuration) or
    /// died (its crash report), if one ever did; kept across restarts and states.
    pub fn last_failure(&self) -> Option<String> {
        self.inner.last_failure.lock().ok().and_then(|l| l.clone())
    }

    /// The current worker's pid, if one is up.
    pub fn pid(&self) -> Option<u32> {
        self.inner
            .slot
            .borrow()
            .worker
            .as_ref()
            .map(|w| w.process.pid)
    }

    /// What the current worker's sandbox enforces, if one is up and sandboxed.
    pub fn sandbox(&self) -> Option<crate::Enforced> {
        let slot = self.inner.slot.borrow();
        slot.worker.as_ref().and_then(|w| w.sandbox.clone())
    }

    /// What the plugin said about itself when its first worker became ready.
    pub fn identity(&self) -> Option<&PluginIdentity> {
        self.inner.identity.get()
    }

    /// Waits until no call runs on the current worker (at once when no worker is up).
    pub async fn drained(&self) {
        let worker = self.inner.slot.borrow().worker.clone();
        if let Some(worker) = worker {
            worker.drained().await;
        }
    }

    /// Calls running on the current worker now.
    pub fn in_flight(&self) -> u64 {
        self.inner
            .slot
            .borrow()
            .worker
            .as_ref()
            .map(|w| w.in_flight())
            .unwrap_or(0)
    }

    /// How busy it is, for a [`crate::Pool`] choosing a replica: call slots taken (calls,
    /// streams and route requests in flight) plus calls queued for one.
    pub fn load(&self) -> usize {
        let slots = call_slots(&self.inner.config);
        let taken = slots.saturating_sub(self.inner.permits.available_permits());
        taken + self.inner.queued.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Restarts since supervision began.
    pub fn restarts(&self) -> u64 {
        self.inner
            .restarts
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A receiver that sees every state change.
    pub fn watch_state(&self) -> watch::Receiver<WorkerState> {
        let mut slot = self.inner.slot.subscribe();
        let (tx, rx) = watch::channel(slot.borrow().state);
        tokio::spawn(async move {
            while slot.changed().await.is_ok() {
                let state = slot.borrow_and_update().state;
                if tx.send(state).is_err() {
                    break;
                }
            }
        });
        rx
    }

    /// Waits until a worker is ready, up to `timeout`; returns the state reached.
    pub async fn wait_ready(&self, timeout: Duration) -> WorkerState {
        let mut rx = self.inner.slot.subscribe();
        let ready = rx.wait_for(|s| {
            matches!(
                s.state,
                WorkerState::Ready | WorkerState::Failed | WorkerState::Stopped
            )
        });
        let _ = tokio::time::timeout(timeout, ready).await;
        self.state()
    }

    /// Leaves `Failed` (or a worker the restart policy left stopped) and starts again. The
    /// state is `Starting` as soon as this returns, so [`Supervisor::wait_ready`] waits for the
    /// new worker.
    pub fn reset(&self) {
        if *self.inner.done.borrow() {
            return;
        }
        self.inner.slot.send_if_modified(|slot| {
            let parked = matches!(slot.state, WorkerState::Failed | WorkerState::Stopped);
            if parked {
                slot.state = WorkerState::Starting;
                slot.reason = None;
            }
            parked
        });
        self.inner.send(Command::Reset);
    }

    /// Replaces the worker with a fresh one between calls (no call fails).
    pub fn recycle(&self) {
        self.inner.send(Command::Recycle("requested".to_owned()));
    }

    /// Stops the worker and ends supervision; waits until it is stopped.
    pub async fn shutdown(&self) {
        self.inner.send(Command::Stop);
        let mut rx = self.inner.done.subscribe();
        let _ = rx.wait_for(|done| *done).await;
    }
}

/// The call slots a supervisor has: `max_concurrent`, at least one, and at most what tokio's
/// semaphore holds (it panics above `MAX_PERMITS`; no real limit comes near it).
fn call_slots(config: &SupervisorConfig) -> usize {
    config.max_concurrent.clamp(1, Semaphore::MAX_PERMITS)
}

#[cfg(test)]
mod tests {
    use super::WorkerState;

    #[test]
    fn state_names_are_the_serialized_names() {
        use WorkerState::*;
        for state in [
            Starting, Ready, Unhealthy, Stopping, Exited, Backoff, Failed, Stopped,
        ] {
            assert_eq!(serde_json::to_value(state).unwrap(), state.as_str());
            assert_eq!(state.to_string(), state.as_str());
        }
    }
}
