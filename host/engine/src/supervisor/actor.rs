//! The supervisor's actor: one task per supervised worker that starts it, watches it, restarts
//! it with backoff, and gives up (Failed) when it restarts too often.

use super::backoff::{random_unit, Restarts, Verdict};
use super::{Command, Inner, WorkerState};
use crate::error::{chain, HostError};
use crate::events::EventKind;
use crate::worker::WorkerCore;
use plugvisor_proto::ExitReason;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::JoinSet;
use tokio::time::{Instant, Interval};

/// Longest wait for a replaced worker's in-flight calls before it is stopped anyway.
const DRAIN_MAX: Duration = Duration::from_secs(60);

/// How one worker's life ended.
enum Outcome {
    /// Supervision ends (stop requested, last handle dropped, host closing).
    Stop,
    /// The worker is gone; maybe restart.
    Ended { why: Ending, ran: Duration },
    /// Restarting cannot help (incompatible worker).
    Fatal(String),
}

enum Ending {
    Exited(ExitReason),
    StartFailed,
}

type Probe = Pin<Box<dyn Future<Output = bool> + Send>>;

/// The actor's state across worker lives.
struct Life {
    inner: Arc<Inner>,
    commands: UnboundedReceiver<Command>,
    restarts: Restarts,
    /// Replaced workers finishing their calls before they stop (recycling).
    drains: JoinSet<()>,
    retired: Vec<Arc<WorkerCore>>,
}

/// Runs supervision until stopped.
pub(crate) async fn run(inner: Arc<Inner>, commands: UnboundedReceiver<Command>) {
    let mut life = Life {
        restarts: Restarts::new(&inner.config),
        inner: Arc::clone(&inner),
        commands,
        drains: JoinSet::new(),
        retired: Vec::new(),
    };
    life.supervise().await;
    life.stop_retired().await;
    let state = inner.slot.borrow().state;
    if state != WorkerState::Stopped {
        inner.publish_reason(WorkerState::Stopped, "supervision ended".to_owned());
    }
    inner.done.send_replace(true);
}

impl Life {
    fn emit(&self, kind: EventKind) {
        self.inner.host.events.emit(&self.inner.label, kind);
    }

    async fn supervise(&mut self) {
        loop {
            if self.inner.host.is_closing() {
                return;
            }
            let keep_going = match self.one_life().await {
                Outcome::Stop => false,
                Outcome::Ended { why, ran } => self.after_exit(why, ran).await,
                Outcome::Fatal(reason) => self.fail(reason).await,
            };
            if !keep_going {
                return;
            }
        }
    }

    /// Decides what follows an unrequested exit; false ends supervision.
    async fn after_exit(&mut self, why: Ending, ran: Duration) -> bool {
        if !self.should_restart(&why) {
            let reason = format!("exited; restart policy is {:?}", self.inner.config.restart);
            self.inner.publish_reason(WorkerState::Stopped, reason);
            return self.wait_for_reset().await;
        }
        let (delay, attempt) = match self.restarts.after_exit(ran, random_unit()) {
            Verdict::Restart { delay, attempt } => (delay, attempt),
            Verdict::GiveUp { attempt } => {
                let window = self.inner.config.restart_window;
                return self
                    .fail(format!("{attempt} restarts within {window:?}"))
                    .await;
            }
        };
        self.inner.restarts.fetch_add(1, Ordering::Relaxed);
        self.emit(EventKind::Restarting {
            delay_ms: delay.as_millis() as u64,
            attempt,
        });
        self.inner.publish(WorkerState::Backoff, None);
        self.sleep_or_stop(delay).await
    }

    fn should_restart(&self, why: &Ending) -> bool {
        use super::RestartPolicy::*;
        match (self.inner.config.restart, why) {
            (Always, _) => true,
            (OnFailure, Ending::Exited(ExitReason::Code(0))) => false,
            (OnFailure, _) => true,
            (Never, _) => false,
        }
    }

    /// Enters `Failed` and waits for a reset; false ends supervision.
    async fn fail(&mut self, reason: String) -> bool {
        let c = &self.inner.config;
        self.emit(EventKind::Failed {
            restarts: c.max_restarts,
            window_ms: c.restart_window.as_millis() as u64,
        });
        self.inner.publish_reason(WorkerState::Failed, reason);
        self.wait_for_reset().await
    }

    /// Waits for `Reset` (true) or `Stop` (false).
    async fn wait_for_reset(&mut self) -> bool {
        loop {
            match self.commands.recv().await {
                Some(Command::Reset) => {
                    self.restarts.reset();
                    self.emit(EventKind::Reset);
                    return true;
                }
                Some(Command::Recycle(_)) => {}
                Some(Command::Stop) | None => return false,
            }
        }
    }

    /// Sleeps out the backoff; false if a stop came first (a reset cuts the sleep short).
    async fn sleep_or_stop(&mut self, delay: Duration) -> bool {
        let wake = Instant::now() + delay;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => return true,
                cmd = self.commands.recv() => match cmd {
                    Some(Command::Stop) | None => return false,
                    Some(Command::Reset) => return true,
                    Some(Command::Recycle(_)) => {}
                },
            }
        }
    }

    /// Starts a worker and serves it until it ends.
    async fn one_life(&mut self) -> Outcome {
        self.inner.publish(WorkerState::Starting, None);
        let inner = Arc::clone(&self.inner);
        let started = tokio::select! {
            started = start(&inner) => started,
            stop = stop_requested(&mut self.commands) => return stop,
        };
        match started {
            Ok(core) => self.serve(core).await,
            Err(e @ HostError::Incompatible { .. }) => {
                self.inner.record_failure(chain(&e));
                Outcome::Fatal(chain(&e))
            }
            Err(HostError::ShuttingDown) => Outcome::Stop,
            Err(e) => {
                self.inner.record_failure(chain(&e));
                self.emit(EventKind::StartFailed { error: chain(&e) });
                Outcome::Ended {
                    why: Ending::StartFailed,
                    ran: Duration::ZERO,
                }
            }
        }
    }

    /// Watches a ready worker: its exit, health probes, memory, and commands.
    async fn serve(&mut self, mut core: Arc<WorkerCore>) -> Outcome {
        let mut started = Instant::now();
        self.ready(&core);
        let health = self.inner.config.health;
        let mut health_tick =
            health.map(|h| tokio::time::interval_at(started + h.interval, h.interval));
        let mut rss_tick = self
            .inner
            .config
            .rss_limit
            .map(|_| tokio::time::interval(self.inner.config.rss_interval));
        let mut probe: Option<Probe> = None;
        let mut failures = 0u32;
        loop {
            tokio::select! {
                exit = core.process.exit.wait() => return self.exited(&core, exit, started.elapsed()).await,
                cmd = self.commands.recv() => match cmd {
                    Some(Command::Stop) | None => return self.stop(&core).await,
                    Some(Command::Reset) => {}
                    Some(Command::Recycle(why)) => {
                        if let Some(new) = self.replace(&core, why).await {
                            core = new;
                            started = Instant::now();
                            (probe, failures) = (None, 0);
                        }
                    }
                },
                _ = tick(&mut health_tick), if probe.is_none() => probe = Some(start_probe(&core, health)),
                ok = finish_probe(&mut probe), if probe.is_some() => {
                    probe = None;
                    failures = self.on_probe(&core, ok, failures);
                }
                _ = tick(&mut rss_tick) => {
                    if let Some(why) = self.over_memory(&core) {
                        if let Some(new) = self.replace(&core, why).await {
                            core = new;
                            started = Instant::now();
                            (probe, failures) = (None, 0);
                        }
                    }
                }
            }
        }
    }

    fn ready(&self, core: &Arc<WorkerCore>) {
        let _ = self.inner.identity.set(core.identity.clone());
        self.inner
            .publish(WorkerState::Ready, Some(Arc::clone(core)));
        self.emit(EventKind::Ready {
            pid: core.process.pid,
        });
    }

    async fn exited(&self, core: &WorkerCore, exit: ExitReason, ran: Duration) -> Outcome {
        if core.process.is_stopping() {
            // Stopped by the host shutting down, not a crash.
            self.inner
                .publish_reason(WorkerState::Stopped, "host shut down".to_owned());
            return Outcome::Stop;
        }
        self.inner.publish(WorkerState::Exited, None);
        let report = core.process.crash_report().await;
        self.inner.record_failure(report.to_string());
        self.emit(EventKind::Crashed { report });
        core.client.close_idle();
        core.process.remove_files();
        // A worker killed as unresponsive ended by SIGKILL: a failure for every policy.
        Outcome::Ended {
            why: Ending::Exited(exit),
            ran,
        }
    }

    async fn stop(&self, core: &WorkerCore) -> Outcome {
        self.inner.publish(WorkerState::Stopping, None);
        core.stop().await;
        self.emit(EventKind::Stopped {
            pid: Some(core.process.pid),
        });
        self.inner
            .publish_reason(WorkerState::Stopped, "stopped on request".to_owned());
        Outcome::Stop
    }

    /// Counts a probe result; kills the worker at the failure limit. Returns the new count.
    fn on_probe(&self, core: &WorkerCore, ok: bool, failures: u32) -> u32 {
        let Some(health) = self.inner.config.health else {
            return 0;
        };
        if ok {
            if failures > 0 {
                self.inner.set_state(WorkerState::Ready);
            }
            return 0;
        }
        let failures = failures + 1;
        let pid = core.process.pid;
        self.emit(EventKind::Unhealthy { pid, failures });
        self.inner.set_state(WorkerState::Unhealthy);
        if failures >= health.failures {
            tracing::warn!(plugin = %self.inner.label, pid, failures, "worker unresponsive; killing it");
            core.kill_unresponsive();
        }
        failures
    }

    fn over_memory(&self, core: &WorkerCore) -> Option<String> {
        let limit = self.inner.config.rss_limit?;
        if core.process.is_remote() {
            return None; // Its pid is not a process of this machine.
        }
        let rss = crate::rss::rss_bytes(core.process.pid)?;
        (rss > limit).then(|| format!("resident memory {rss} bytes above the limit of {limit}"))
    }

    /// Starts a fresh worker, switches calls to it, then drains and stops the old one.
    async fn replace(&mut self, old: &Arc<WorkerCore>, why: String) -> Option<Arc<WorkerCore>> {
        let new = match start(&self.inner).await {
            Ok(new) => new,
            Err(e) => {
                let error = chain(&e);
                tracing::warn!(plugin = %self.inner.label, %error, "could not start a replacement; keeping the old worker");
                return None;
            }
        };
        self.ready(&new);
        self.emit(EventKind::Recycled {
            old_pid: old.process.pid,
            new_pid: new.process.pid,
            reason: why,
        });
        self.retire(Arc::clone(old));
        Some(new)
    }

    /// Lets `old` finish its in-flight calls (at most [`DRAIN_MAX`]), then stops it.
    fn retire(&mut self, old: Arc<WorkerCore>) {
        while self.drains.try_join_next().is_some() {}
        self.retired.retain(|w| !w.is_stopped());
        self.retired.push(Arc::clone(&old));
        self.drains.spawn(async move {
            let _ = tokio::time::timeout(DRAIN_MAX, old.drained()).await;
            old.stop().await;
        });
    }

    /// Supervision ends: replaced workers still draining are stopped now.
    async fn stop_retired(&mut self) {
        self.drains.abort_all();
        while self.drains.join_next().await.is_some() {}
        let stops = self
            .retired
            .drain(..)
            .map(|old| async move { old.stop().await });
        futures_util::future::join_all(stops).await;
    }
}

/// Launches a worker and applies the configuration the supervisor was given.
async fn start(inner: &Inner) -> Result<Arc<WorkerCore>, HostError> {
    let core = inner.host.launch(&inner.spec).await?;
    let config = inner.plugin_config.lock().ok().and_then(|c| c.clone());
    if let Some(config) = config {
        if let Err(e) = core.initialize(Some(config)).await {
            core.stop().await;
            return Err(HostError::ConfigRejected {
                program: inner.spec.program.clone(),
                source: e,
            });
        }
    }
    Ok(core)
}

/// Resolves only on `Stop` (or when every handle is gone); other commands are dropped.
async fn stop_requested(commands: &mut UnboundedReceiver<Command>) -> Outcome {
    loop {
        match commands.recv().await {
            Some(Command::Stop) | None => return Outcome::Stop,
            Some(_) => {}
        }
    }
}

fn start_probe(core: &Arc<WorkerCore>, health: Option<super::HealthConfig>) -> Probe {
    let core = Arc::clone(core);
    let timeout = health.map(|h| h.timeout).unwrap_or(Duration::from_secs(2));
    Box::pin(async move {
        matches!(
            tokio::time::timeout(timeout, core.health()).await,
            Ok(Ok(_))
        )
    })
}

async fn finish_probe(probe: &mut Option<Probe>) -> bool {
    match probe {
        Some(p) => p.as_mut().await,
        None => std::future::pending().await,
    }
}

async fn tick(interval: &mut Option<Interval>) {
    match interval {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}
