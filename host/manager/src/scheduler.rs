//! The task scheduler: one tokio task per scheduled task of a loaded plugin, running it through
//! the plugin's supervisor like a call, and the bookkeeping of each run (state, events,
//! metrics). It ends with its plugin (unloaded or replaced by a reload).
//!
//! It knows the plugin and the manager only through [`TaskTarget`] and [`TaskSink`] (as
//! `idle.rs` knows its plugin), so neither depends on this module's users.

use crate::tasks::{epoch_ms, Overlap, Schedule, TaskInfo, TaskPlan};
use plugvisor_host::{CallOptions, EventKind, PluginError};
use plugvisor_proto::{ErrorKind, Value};
use std::future::Future;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The plugin a task runs on.
pub(crate) trait TaskTarget: Send + Sync + 'static {
    /// Its id.
    fn name(&self) -> &str;
    /// True once it was replaced or unloaded: the scheduler ends.
    fn retired(&self) -> bool;
    /// True while it is failed (too many restarts): runs are paused.
    fn failed(&self) -> bool;
    /// One call, as any caller makes it.
    fn run(
        &self,
        input: &Value,
        options: CallOptions,
    ) -> impl Future<Output = Result<(), PluginError>> + Send;
}

/// Where runs are told: events and metrics (the manager).
pub(crate) trait TaskSink: Send + Sync + 'static {
    /// Publishes a lifecycle event of `plugin`.
    fn emit(&self, plugin: &str, kind: EventKind);
    /// Counts a call of `plugin` (a run is one).
    fn record_call(&self, plugin: &str, took: Duration, error: Option<ErrorKind>);
    /// Counts `n` runs of `task` with `outcome` (`took`: how long the one that ran took).
    fn record_task(
        &self,
        plugin: &str,
        task: &str,
        outcome: &'static str,
        n: u64,
        took: Option<Duration>,
    );
}

/// One task of one loaded plugin: its plan, its state, and the lock a run holds.
#[derive(Debug)]
pub(crate) struct TaskSlot {
    pub(crate) plan: TaskPlan,
    info: Mutex<TaskInfo>,
    run: tokio::sync::Mutex<()>,
}

/// How a run request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RunOutcome {
    /// It ran (and succeeded or failed: see the task's state).
    Done,
    /// Another run was in progress (`overlap = "skip"`).
    Busy,
    /// The plugin is failed: nothing was called.
    Paused,
}

impl TaskSlot {
    pub(crate) fn new(plan: TaskPlan) -> Self {
        Self {
            info: Mutex::new(TaskInfo::new(&plan)),
            plan,
            run: tokio::sync::Mutex::new(()),
        }
    }

    /// The task's state now.
    pub(crate) fn info(&self) -> TaskInfo {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TaskInfo> {
        // Only plain field writes happen under it; a poisoned one is still consistent.
        self.info.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn skipped(&self, outcome: &str) {
        let mut info = self.lock();
        info.skipped += 1;
        info.last_outcome = Some(outcome.to_owned());
    }
}

/// Starts the scheduler of `slot`. It ends when `end` is cancelled (the plugin was retired
/// or dropped) at its next wait: a run in progress is not cut short.
pub(crate) fn spawn<T: TaskTarget>(
    slot: Arc<TaskSlot>,
    plugin: Weak<T>,
    sink: Weak<dyn TaskSink>,
    end: tokio_util::sync::CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut due = first_due(&slot.plan);
        loop {
            slot.lock().next_run_ms = Some(epoch_ms(wall_clock(due)));
            let jitter = jitter(slot.plan.jitter);
            tokio::select! {
                () = end.cancelled() => return,
                () = tokio::time::sleep_until(due + jitter) => {}
            }
            let Some(target) = plugin.upgrade().filter(|p| !p.retired()) else {
                return;
            };
            let Some(sink) = sink.upgrade() else {
                return;
            };
            // While it runs, the status shows the point after this one, never this run's own
            // (already past); the loop's top settles it once the run is over.
            if let Some((next, _)) = next_due(&slot.plan, due) {
                slot.lock().next_run_ms = Some(epoch_ms(wall_clock(next)));
            }
            run_once(&slot, &*target, &*sink, Some(due)).await;
            let name = target.name().to_owned();
            drop(target);
            match next_due(&slot.plan, due) {
                Some((next, missed)) => {
                    if missed > 0 {
                        slot.lock().skipped += missed;
                        sink.record_task(&name, &slot.plan.name, "skipped", missed, None);
                    }
                    due = next;
                }
                None => {
                    tracing::warn!(task = %slot.plan.name, "no next point in the schedule; the task stops");
                    slot.lock().next_run_ms = None;
                    return;
                }
            }
        }
    })
}

/// When the first run is due: now with `run_at_start`, else the first point of the schedule.
fn first_due(plan: &TaskPlan) -> Instant {
    if plan.run_at_start {
        return Instant::now();
    }
    point_after(&plan.schedule, Instant::now())
        .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600))
}

/// The next point after the run that was due at `due`, and how many points were missed
/// while it ran: with `skip`, the first point after now (the missed ones are skipped and
/// counted); with `queue`, the next one after `due`, run at once when it is already past (all
/// missed points coalesce into that one run).
fn next_due(plan: &TaskPlan, due: Instant) -> Option<(Instant, u64)> {
    let now = Instant::now();
    match (&plan.schedule, plan.overlap) {
        (Schedule::Every(period), Overlap::Skip) => {
            let next = due + *period;
            if next > now {
                return Some((next, 0));
            }
            let behind = now.duration_since(next).as_nanos() / period.as_nanos().max(1);
            let missed = u32::try_from(behind + 1).unwrap_or(u32::MAX);
            Some((next + *period * missed, u64::from(missed)))
        }
        (Schedule::Every(period), Overlap::Queue) => Some(((due + *period).max(now), 0)),
        (schedule, Overlap::Skip) => {
            let missed = point_after(schedule, due).is_some_and(|p| p <= now);
            point_after(schedule, now).map(|next| (next, u64::from(missed)))
        }
        (schedule, Overlap::Queue) => point_after(schedule, due).map(|next| (next.max(now), 0)),
    }
}

/// The schedule's first point after `after`, on tokio's clock.
fn point_after(schedule: &Schedule, after: Instant) -> Option<Instant> {
    let wall = wall_clock(after);
    let next = schedule.next_after(wall)?;
    let ahead = next.duration_since(wall).unwrap_or_default();
    Some(after + ahead)
}

/// The wall-clock time of `instant`.
fn wall_clock(instant: Instant) -> SystemTime {
    let now = Instant::now();
    if instant >= now {
        SystemTime::now() + (instant - now)
    } else {
        SystemTime::now() - (now - instant)
    }
}

fn jitter(max: Duration) -> Duration {
    if max.is_zero() {
        return Duration::ZERO;
    }
    let nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(fastrand::u64(0..=nanos))
}

/// Runs the task once now (`due`: when the schedule wanted it, for its lateness; `None` for a
/// run asked for through the API), honouring `overlap`, and records the outcome.
pub(crate) async fn run_once<T: TaskTarget + ?Sized>(
    slot: &TaskSlot,
    target: &T,
    sink: &dyn TaskSink,
    due: Option<Instant>,
) -> RunOutcome {
    let plugin = target.name();
    let _running = match slot.plan.overlap {
        Overlap::Skip => match slot.run.try_lock() {
            Ok(guard) => guard,
            Err(_) => {
                slot.skipped("skipped");
                sink.record_task(plugin, &slot.plan.name, "skipped", 1, None);
                return RunOutcome::Busy;
            }
        },
        Overlap::Queue => slot.run.lock().await,
    };
    if target.failed() {
        slot.skipped("paused");
        sink.record_task(plugin, &slot.plan.name, "paused", 1, None);
        return RunOutcome::Paused;
    }
    let late = due.map(|d| Instant::now().saturating_duration_since(d));
    started(slot, late);
    let task = slot.plan.name.clone();
    let late_ms = late.map_or(0.0, |l| l.as_secs_f64() * 1e3);
    sink.emit(plugin, EventKind::TaskStarted { task, late_ms });
    let began = Instant::now();
    let options = CallOptions {
        timeout: slot.plan.timeout,
    };
    // Each run is a trace of its own, so its worker's log lines can be told apart.
    let trace = plugvisor_host::new_trace();
    let span =
        tracing::info_span!("task", task = %slot.plan.name, trace_id = %trace.trace_id_hex());
    let run = plugvisor_host::with_trace(trace, target.run(&slot.plan.input, options));
    let result = tracing::Instrument::instrument(run, span).await;
    let took = began.elapsed();
    sink.record_call(plugin, took, result.as_ref().err().map(PluginError::kind));
    finished(slot, plugin, sink, took, result);
    RunOutcome::Done
}

fn started(slot: &TaskSlot, late: Option<Duration>) {
    let mut info = slot.lock();
    info.running = true;
    info.runs += 1;
    info.last_started_ms = Some(epoch_ms(SystemTime::now()));
    if let Some(late) = late {
        info.last_late_ms = Some(late.as_secs_f64() * 1e3);
    }
}

fn finished(
    slot: &TaskSlot,
    plugin: &str,
    sink: &dyn TaskSink,
    took: Duration,
    result: Result<(), PluginError>,
) {
    let task = slot.plan.name.clone();
    let duration_ms = took.as_secs_f64() * 1e3;
    let error = result.err().map(|e| e.to_string());
    {
        let mut info = slot.lock();
        info.running = false;
        info.last_duration_ms = Some(duration_ms);
        info.last_outcome = Some(if error.is_some() { "failed" } else { "ok" }.to_owned());
        if error.is_some() {
            info.failures += 1;
            info.last_error.clone_from(&error);
        }
    }
    let outcome = if error.is_some() { "failed" } else { "ok" };
    sink.record_task(plugin, &task, outcome, 1, Some(took));
    let kind = match error {
        None => EventKind::TaskFinished { task, duration_ms },
        Some(error) => {
            tracing::warn!(plugin, task = %task, %error, "task failed");
            EventKind::TaskFailed {
                task,
                duration_ms,
                error,
            }
        }
    };
    sink.emit(plugin, kind);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::TaskManifest;

    fn plan(text: &str) -> TaskPlan {
        let manifest: TaskManifest = toml::from_str(&format!("name = \"t\"\n{text}")).unwrap();
        manifest.plan().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn skip_jumps_missed_points_and_queue_runs_one_at_once() {
        let skip = plan("every = \"1s\"");
        let queue = plan("every = \"1s\"\noverlap = \"queue\"");
        let due = Instant::now();
        // The run took 3.5 s: skip goes to the next point after now, queue runs at once.
        tokio::time::advance(Duration::from_millis(3500)).await;
        let now = Instant::now();
        assert_eq!(
            next_due(&skip, due),
            Some((due + Duration::from_secs(4), 3))
        );
        assert_eq!(next_due(&queue, due), Some((now, 0)));
        // On time: both go one period on.
        let due = Instant::now();
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(
            next_due(&skip, due),
            Some((due + Duration::from_secs(1), 0))
        );
        assert_eq!(
            next_due(&queue, due),
            Some((due + Duration::from_secs(1), 0))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_run_is_a_period_away_unless_at_start() {
        let now = Instant::now();
        assert_eq!(
            first_due(&plan("every = \"2s\"")),
            now + Duration::from_secs(2)
        );
        assert_eq!(first_due(&plan("every = \"2s\"\nrun_at_start = true")), now);
        assert!(jitter(Duration::from_millis(5)) <= Duration::from_millis(5));
        assert_eq!(jitter(Duration::ZERO), Duration::ZERO);
    }
}
