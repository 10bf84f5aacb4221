//! `Pool`: several supervised replicas of one plugin, each with its own worker, restarts,
//! backoff and recycling; every call goes to the least-loaded ready replica.
//!
//! Load is what a replica's [`Supervisor::load`] counts: calls and streams holding a call slot
//! plus calls queued for one. Ties go round-robin, so an idle pool spreads sequential calls
//! too. A replica that is starting, backing off or failed is skipped while another is ready;
//! a crash fails only the calls in flight on that replica.
//!
//! A configuration change rolls ([`Pool::reconfigure`]): one replica at a time is held out of
//! dispatch, drained, given the new configuration and put back; a refusal stops the roll and
//! puts the replicas that already changed back on the previous configuration.
//!
//! The replica list can change while calls pick from it ([`Pool::add`], [`Pool::remove`],
//! [`Pool::swap`]): a rolling reload, autoscaling and re-resolution of remote workers change
//! it in place. A call that picked a replica keeps it until it ends.

use crate::identity::PluginIdentity;
use crate::supervisor::{CallOptions, Supervisor, WorkerState};
use crate::worker::{CallOutput, OutputStream};
use crate::{RouteBody, RouteRequestBody};
use futures_util::future::join_all;
use plugvisor_proto::wire::{
    AfterResponse, BeforeAction, EventDelivery, HealthReport, HealthStatus, HookRequest,
    HookResponse,
};
use plugvisor_proto::{PluginError, Value};
use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Replicas of one plugin behind one call surface (cheap to clone: handles to the same pool).
#[derive(Debug, Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The replicas now, replaced whole when one joins or leaves (calls read a snapshot).
    replicas: RwLock<Arc<[Replica]>>,
    next: AtomicUsize,
    /// One rolling change at a time.
    rolling: tokio::sync::Mutex<()>,
}

/// One replica and whether a rolling change holds it out of dispatch.
#[derive(Debug, Clone)]
struct Replica {
    sup: Supervisor,
    held: Arc<AtomicBool>,
}

impl Replica {
    fn new(sup: Supervisor) -> Self {
        Self {
            sup,
            held: Arc::new(AtomicBool::new(false)),
        }
    }

    fn is_held(&self) -> bool {
        self.held.load(Ordering::Acquire)
    }
}

/// The longest a rolling change waits for a held replica's calls to finish before it applies
/// the change anyway (applying a configuration does not fail the calls still running).
const ROLL_DRAIN_MAX: Duration = Duration::from_secs(30);

/// What status pages show of one replica.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReplicaInfo {
    /// Its place in the pool, from 0.
    pub index: usize,
    /// Its worker's process id, when one runs.
    pub pid: Option<u32>,
    /// Its supervisor's state (`ready`, `backoff`, …).
    pub state: WorkerState,
    /// Calls and streams running on it now.
    pub in_flight: u64,
    /// Its restarts since the pool started.
    pub restarts: u64,
    /// Where a remote replica's worker is (`https://ADDR`); absent for a local one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

impl Pool {
    /// A pool of `replicas` (at least one).
    ///
    /// # Panics
    /// When `replicas` is empty: a pool always has a replica to send a call to.
    pub fn new(replicas: Vec<Supervisor>) -> Self {
        assert!(!replicas.is_empty(), "a pool needs at least one replica");
        let list: Arc<[Replica]> = replicas.into_iter().map(Replica::new).collect();
        Self {
            inner: Arc::new(Inner {
                replicas: RwLock::new(list),
                next: AtomicUsize::new(0),
                rolling: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// The replicas now (a snapshot).
    fn list(&self) -> Arc<[Replica]> {
        let list = self
            .inner
            .replicas
            .read()
            .unwrap_or_else(|p| p.into_inner());
        Arc::clone(&list)
    }

    /// Changes the replica list with `change` (which gets a copy to edit).
    fn edit<T>(&self, change: impl FnOnce(&mut Vec<Replica>) -> T) -> T {
        let mut list = self
            .inner
            .replicas
            .write()
            .unwrap_or_else(|p| p.into_inner());
        let mut edited = list.to_vec();
        let out = change(&mut edited);
        *list = edited.into();
        out
    }

    /// Its replicas, in order (a snapshot: the pool may change right after).
    pub fn replicas(&self) -> Vec<Supervisor> {
        self.list().iter().map(|r| r.sup.clone()).collect()
    }

    /// How many replicas it has now.
    pub fn len(&self) -> usize {
        self.list().len()
    }

    /// Never true: a pool always has a replica (here for clippy's `len_without_is_empty`).
    pub fn is_empty(&self) -> bool {
        self.list().is_empty()
    }

    /// Adds `replica` to dispatch (it takes calls once it serves).
    pub fn add(&self, replica: Supervisor) {
        self.edit(|list| list.push(Replica::new(replica)));
    }

    /// Takes `replica` out of dispatch and returns true, unless it is the last one or not in
    /// the pool. Its running calls go on; the caller drains and stops it.
    pub fn remove(&self, replica: &Supervisor) -> bool {
        self.edit(|list| {
            let found = list.iter().position(|r| r.sup.same(replica));
            match found {
                Some(i) if list.len() > 1 => {
                    list.remove(i);
                    true
                }
                _ => false,
            }
        })
    }

    /// Puts `new` in the place of `old` and returns true, or false when `old` is not in the
    /// pool (`new` is then not added). `old`'s running calls go on; the caller drains and
    /// stops it.
    pub fn swap(&self, old: &Supervisor, new: Supervisor) -> bool {
        self.edit(|list| match list.iter().position(|r| r.sup.same(old)) {
            Some(i) => {
                list[i] = Replica::new(new);
                true
            }
            None => false,
        })
    }

    /// The replica the next call goes to: the least-loaded one that serves (ready or
    /// unhealthy) and is not held out by a rolling change, ties round-robin; else the
    /// least-loaded one that serves though held; while none serves, the first that will
    /// (starting, backing off), else the first (whose call then fails fast as it is failed or
    /// stopped).
    pub fn pick(&self) -> Supervisor {
        let list = self.list();
        let n = list.len();
        if n == 1 {
            return list[0].sup.clone();
        }
        let start = self.inner.next.fetch_add(1, Ordering::Relaxed) % n;
        let order = (0..n).map(|i| &list[(start + i) % n]);
        let least = |held_too: bool| {
            order
                .clone()
                .filter(|r| held_too || !r.is_held())
                .map(|r| &r.sup)
                .filter(|s| serves(s.state()))
                .min_by_key(|s| s.load())
        };
        least(false)
            .or_else(|| least(true))
            .or_else(|| {
                order
                    .clone()
                    .map(|r| &r.sup)
                    .find(|s| will_serve(s.state()))
            })
            .unwrap_or(&list[0].sup)
            .clone()
    }

    /// Whether replica `index` is held out of dispatch by a rolling change now.
    pub fn is_held(&self, index: usize) -> bool {
        self.list().get(index).is_some_and(Replica::is_held)
    }

    /// The pool's state: the best of its replicas' (a pool with one ready replica is ready).
    pub fn state(&self) -> WorkerState {
        self.list()
            .iter()
            .map(|r| r.sup.state())
            .min_by_key(|s| rank(*s))
            .unwrap_or(WorkerState::Stopped)
    }

    /// Each replica as status pages show it.
    pub fn infos(&self) -> Vec<ReplicaInfo> {
        self.list()
            .iter()
            .map(|r| &r.sup)
            .enumerate()
            .map(|(index, s)| ReplicaInfo {
                index,
                pid: s.pid(),
                state: s.state(),
                in_flight: s.in_flight(),
                restarts: s.restarts(),
                address: s.remote_address(),
            })
            .collect()
    }

    /// The first replica's worker's process id (of a ready one when there is one).
    pub fn pid(&self) -> Option<u32> {
        let list = self.list();
        let ready = list.iter().find(|r| serves(r.sup.state()));
        ready.unwrap_or(&list[0]).sup.pid()
    }

    /// Calls and streams running or waiting on all replicas (what [`Supervisor::load`]
    /// counts, summed).
    pub fn load(&self) -> usize {
        self.list().iter().map(|r| r.sup.load()).sum()
    }

    /// Calls running on all replicas.
    pub fn in_flight(&self) -> u64 {
        self.list().iter().map(|r| r.sup.in_flight()).sum()
    }

    /// Restarts of all replicas.
    pub fn restarts(&self) -> u64 {
        self.list().iter().map(|r| r.sup.restarts()).sum()
    }

    /// What the workers said about themselves (the first replica that knows).
    pub fn identity(&self) -> Option<PluginIdentity> {
        self.list().iter().find_map(|r| r.sup.identity().cloned())
    }

    /// The sandbox the first replica's worker runs in.
    pub fn sandbox(&self) -> Option<crate::Enforced> {
        self.list()[0].sup.sandbox()
    }

    /// Why a replica is not serving (the first one's reason).
    pub fn reason(&self) -> Option<String> {
        self.list().iter().find_map(|r| r.sup.reason())
    }

    /// Why a replica's last worker failed (the first one that did).
    pub fn last_failure(&self) -> Option<String> {
        self.list().iter().find_map(|r| r.sup.last_failure())
    }

    /// Waits up to `timeout` for every replica to be ready; returns the worst state seen.
    pub async fn wait_ready(&self, timeout: Duration) -> WorkerState {
        let list = self.list();
        let states = join_all(list.iter().map(|r| r.sup.wait_ready(timeout))).await;
        states
            .into_iter()
            .max_by_key(|s| rank(*s))
            .unwrap_or(WorkerState::Stopped)
    }

    /// Applies `config` to every replica (and to each one's later workers).
    ///
    /// # Errors
    /// The first replica's refusal; replicas that accepted keep the new configuration (the
    /// host validates a configuration against the schema before it gets here).
    pub async fn initialize(&self, config: Option<Value>) -> Result<(), PluginError> {
        let list = self.list();
        let applied = join_all(
            list.iter()
                .map(|r| crate::Plugin::initialize(&r.sup, config.clone())),
        )
        .await;
        applied.into_iter().collect()
    }

    /// Applies `config` to a serving pool one replica at a time, with no failed call: each
    /// replica in turn is held out of dispatch (the others take new calls), waits for its
    /// running calls to finish (up to 30 s), takes the configuration and is put back. A pool
    /// of one applies it at once, as [`Pool::initialize`] (its calls keep running meanwhile).
    ///
    /// # Errors
    /// When a replica refuses `config`, the roll stops there: the replicas that already took
    /// it are given `previous` again (one that refuses that too is logged and restarted, so
    /// it comes back on the configuration its supervisor keeps, `previous`), and the error
    /// says which replica refused and why, in the refusal's own kind. The pool serves on the
    /// previous configuration throughout.
    pub async fn reconfigure(
        &self,
        config: Option<Value>,
        previous: Option<Value>,
    ) -> Result<(), PluginError> {
        let list = self.list();
        let n = list.len();
        if n == 1 {
            return crate::Plugin::initialize(&list[0].sup, config).await;
        }
        let _one_at_a_time = self.inner.rolling.lock().await;
        for (index, replica) in list.iter().enumerate() {
            let outcome = roll_one(replica, config.clone()).await;
            let Err(refused) = outcome else { continue };
            for (back, done) in list[..index].iter().enumerate() {
                let undone = roll_one(done, previous.clone()).await;
                if let Err(e) = undone {
                    tracing::warn!(replica = back, error = %e, "rollback refused; restarting the replica");
                    done.sup.recycle();
                }
            }
            tracing::warn!(replica = index, replicas = n, error = %refused, rolled_back = index, "configuration refused; rolled back");
            let why = format!(
                "replica {index} of {n} refused the configuration ({index} replica(s) that had \
                 taken it were put back on the previous one, which the plugin serves on)"
            );
            return Err(with_context(refused, &why));
        }
        Ok(())
    }

    /// Replaces every replica's worker with a fresh one, between calls.
    pub fn recycle(&self) {
        self.list().iter().for_each(|r| r.sup.recycle());
    }

    /// Leaves `Failed` on every replica that is in it.
    pub fn reset(&self) {
        self.list().iter().for_each(|r| r.sup.reset());
    }

    /// Waits until no call runs on any replica.
    pub async fn drained(&self) {
        let list = self.list();
        join_all(list.iter().map(|r| r.sup.drained())).await;
    }

    /// Stops every replica.
    pub async fn shutdown(&self) {
        let list = self.list();
        join_all(list.iter().map(|r| r.sup.shutdown())).await;
    }

    /// One call on the least-loaded replica.
    ///
    /// # Errors
    /// As [`Supervisor::call_ref`].
    pub async fn call_ref(
        &self,
        input: &Value,
        options: CallOptions,
    ) -> Result<CallOutput, PluginError> {
        self.pick().call_ref(input, options).await
    }

    /// One named-method call on the least-loaded replica.
    ///
    /// # Errors
    /// As [`Supervisor::call_method_ref`].
    pub async fn call_method_ref(
        &self,
        method: &str,
        input: &Value,
        options: CallOptions,
    ) -> Result<CallOutput, PluginError> {
        self.pick().call_method_ref(method, input, options).await
    }

    /// One stream on the least-loaded replica (it counts as load there until it ends).
    ///
    /// # Errors
    /// As [`Supervisor::stream_outputs_ref`].
    pub async fn stream_outputs_ref(&self, input: &Value) -> Result<OutputStream, PluginError> {
        self.pick().stream_outputs_ref(input).await
    }

    /// One plugin-route request on the least-loaded replica.
    ///
    /// # Errors
    /// As [`Supervisor::route`].
    pub async fn route(
        &self,
        request: http::Request<impl RouteRequestBody>,
    ) -> Result<http::Response<RouteBody>, PluginError> {
        self.pick().route(request).await
    }

    /// One middleware `before_request` on the least-loaded replica.
    ///
    /// # Errors
    /// As [`Supervisor::before_request`].
    pub async fn before_request(&self, request: &HookRequest) -> Result<BeforeAction, PluginError> {
        self.pick().before_request(request).await
    }

    /// One middleware `after_response` on the least-loaded replica.
    ///
    /// # Errors
    /// As [`Supervisor::after_response`].
    pub async fn after_response(
        &self,
        exchange: &AfterResponse,
    ) -> Result<HookResponse, PluginError> {
        self.pick().after_response(exchange).await
    }

    /// A host event, delivered once: to the least-loaded replica (the plugin is one plugin,
    /// however many processes serve it).
    ///
    /// # Errors
    /// As [`Supervisor::deliver_event`].
    pub async fn deliver_event(
        &self,
        event: &EventDelivery,
        timeout: Duration,
    ) -> Result<(), PluginError> {
        self.pick().deliver_event(event, timeout).await
    }

    /// The plugin's own health, asked of every serving replica: the worst report wins (a
    /// replica that fails makes the plugin fail), its output naming the replica.
    pub async fn check_health(&self, timeout: Duration) -> HealthReport {
        let list = self.list();
        if list.len() == 1 {
            return list[0].sup.check_health(timeout).await;
        }
        let serving: Vec<(usize, &Supervisor)> = list
            .iter()
            .map(|r| &r.sup)
            .enumerate()
            .filter(|(_, s)| serves(s.state()))
            .collect();
        let reports = join_all(serving.iter().map(|(_, s)| s.check_health(timeout))).await;
        let worst = serving
            .iter()
            .map(|(i, _)| *i)
            .zip(reports)
            .max_by_key(|(_, r)| severity(r.status));
        match worst {
            Some((index, mut report)) => {
                let output = report.output.take().unwrap_or_default();
                report.output = Some(format!("replica {index}: {output}").trim_end().to_owned());
                report
            }
            None => list[0].sup.check_health(timeout).await,
        }
    }
}

/// `e` of the same kind, its message led by `why`.
fn with_context(e: PluginError, why: &str) -> PluginError {
    match e {
        PluginError::InvalidInput(m) => PluginError::InvalidInput(format!("{why}: {m}")),
        PluginError::InvalidConfig(m) => PluginError::InvalidConfig(format!("{why}: {m}")),
        PluginError::NotInitialized(m) => PluginError::NotInitialized(format!("{why}: {m}")),
        PluginError::Failed(m) => PluginError::Failed(format!("{why}: {m}")),
        PluginError::TimedOut(m) => PluginError::TimedOut(format!("{why}: {m}")),
        PluginError::Unavailable(m) => PluginError::Unavailable(format!("{why}: {m}")),
        PluginError::Protocol(m) => PluginError::Protocol(format!("{why}: {m}")),
        // A crash report keeps its own shape; the log line names the replica.
        other => other,
    }
}

/// Holds `replica` out of dispatch, lets its calls finish, applies `config` to it, and puts
/// it back (also when the configuration is refused).
async fn roll_one(replica: &Replica, config: Option<Value>) -> Result<(), PluginError> {
    replica.held.store(true, Ordering::Release);
    let _back = Unhold(&replica.held);
    let _ = tokio::time::timeout(ROLL_DRAIN_MAX, replica.sup.drained()).await;
    crate::Plugin::initialize(&replica.sup, config).await
}

/// Puts a held replica back in dispatch when dropped.
struct Unhold<'a>(&'a AtomicBool);

impl Drop for Unhold<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

fn serves(state: WorkerState) -> bool {
    matches!(state, WorkerState::Ready | WorkerState::Unhealthy)
}

fn will_serve(state: WorkerState) -> bool {
    matches!(
        state,
        WorkerState::Starting | WorkerState::Exited | WorkerState::Backoff
    )
}

/// How well a state serves: lower is better.
fn rank(state: WorkerState) -> u8 {
    match state {
        WorkerState::Ready => 0,
        WorkerState::Unhealthy => 1,
        WorkerState::Starting => 2,
        WorkerState::Exited => 3,
        WorkerState::Backoff => 4,
        WorkerState::Stopping => 5,
        WorkerState::Failed => 6,
        WorkerState::Stopped => 7,
    }
}

fn severity(status: HealthStatus) -> u8 {
    match status {
        HealthStatus::Pass => 0,
        HealthStatus::Warn => 1,
        HealthStatus::Fail => 2,
    }
}
