//! Calls through a [`Supervisor`]: a slot in the bounded queue, a ready worker, a deadline,
//! and an opt-in retry for idempotent plugins.

use super::{Command, Inner, Supervisor, WorkerState};
use crate::side_thread::block_on_side_thread;
use crate::worker::{CallOutput, FromOutput, ItemStream, OutputStream, WorkerCore};
use futures_util::StreamExt;
use plugvisor_proto::{Plugin, PluginError, PluginStream, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

/// Per-call settings that override the supervisor's.
#[derive(Debug, Clone, Copy, Default)]
pub struct CallOptions {
    /// Deadline of this call (instead of [`super::SupervisorConfig::call_timeout`]).
    pub timeout: Option<Duration>,
}

impl Inner {
    /// Takes a slot: fails fast when the queue is full, waits up to the queue timeout.
    async fn admit(&self, deadline: Instant) -> Result<OwnedSemaphorePermit, PluginError> {
        if let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() {
            return Ok(permit);
        }
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.config.max_queue {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(PluginError::Unavailable(format!(
                "{}: call queue full ({} waiting)",
                self.label, self.config.max_queue
            )));
        }
        let acquired =
            tokio::time::timeout_at(deadline, Arc::clone(&self.permits).acquire_owned()).await;
        self.queued.fetch_sub(1, Ordering::AcqRel);
        match acquired {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) => Err(PluginError::Unavailable(format!(
                "{} is shut down",
                self.label
            ))),
            Err(_) => Err(PluginError::Unavailable(format!(
                "{}: all {} call slots stayed busy for the queue timeout ({:?})",
                self.label, self.config.max_concurrent, self.config.queue_timeout
            ))),
        }
    }

    fn queue_timeout(&self) -> PluginError {
        PluginError::Unavailable(format!(
            "{}: no worker ready within the queue timeout ({:?})",
            self.label, self.config.queue_timeout
        ))
    }

    /// Waits for a ready worker other than `not` (the address of the worker a retry must
    /// avoid: a remote worker reattached after a lost connection keeps its pid).
    async fn ready_worker(
        &self,
        deadline: Instant,
        not: Option<usize>,
    ) -> Result<Arc<WorkerCore>, PluginError> {
        let mut rx = self.slot.subscribe();
        loop {
            {
                let slot = rx.borrow_and_update();
                match slot.state {
                    WorkerState::Ready | WorkerState::Unhealthy => {
                        if let Some(w) = slot.worker.as_ref().filter(|w| usable(w, not)) {
                            return Ok(Arc::clone(w));
                        }
                    }
                    WorkerState::Backoff | WorkerState::Exited if !self.config.wait_while_down => {
                        let why = slot.reason.as_deref().unwrap_or("its worker is down");
                        return Err(PluginError::Unavailable(format!(
                            "{} is unreachable ({}): {why}",
                            self.label, slot.state
                        )));
                    }
                    WorkerState::Failed | WorkerState::Stopped => {
                        let why = slot.reason.as_deref().unwrap_or_default();
                        return Err(PluginError::Unavailable(format!(
                            "{} is {}: {why}",
                            self.label, slot.state
                        )));
                    }
                    _ => {}
                }
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return Err(self.queue_timeout());
            }
        }
    }

    /// Runs `op` on a ready worker under the call's deadline, retrying once per allowed retry
    /// on a crash when the plugin is idempotent. `op` borrows the call's input, so a retry
    /// sends it again without a copy having been made for it.
    async fn run<T, F, Fut>(&self, options: CallOptions, op: F) -> Result<T, PluginError>
    where
        F: Fn(Arc<WorkerCore>) -> Fut,
        Fut: std::future::Future<Output = Result<T, PluginError>>,
    {
        let queue_deadline = Instant::now() + self.config.queue_timeout;
        let _permit = self.admit(queue_deadline).await?;
        let timeout = options.timeout.or(self.config.call_timeout);
        let mut avoid = None;
        let mut retries = 0;
        loop {
            let worker = self.ready_worker(queue_deadline, avoid).await?;
            self.count_call(&worker);
            let (pid, this) = (worker.process.pid, Arc::as_ptr(&worker) as usize);
            let result = with_deadline(timeout, op(worker)).await;
            match result {
                Err(PluginError::WorkerCrashed(_)) if self.may_retry(retries) => {
                    tracing::info!(plugin = %self.label, pid, "retrying an idempotent call after a crash");
                    retries += 1;
                    avoid = Some(this);
                }
                other => return other,
            }
        }
    }

    /// Runs a control operation (`initialize`, `cleanup`) on a ready worker under the call
    /// timeout, without a call slot: it must not queue behind calls that may run for minutes
    /// (the worker serves it beside them).
    async fn control<T, F, Fut>(&self, op: F) -> Result<T, PluginError>
    where
        F: FnOnce(Arc<WorkerCore>) -> Fut,
        Fut: std::future::Future<Output = Result<T, PluginError>>,
    {
        let deadline = Instant::now() + self.config.queue_timeout;
        let worker = self.ready_worker(deadline, None).await?;
        with_deadline(self.config.call_timeout, op(worker)).await
    }

    fn may_retry(&self, retries: u32) -> bool {
        self.config.idempotent && retries < self.config.max_retries
    }

    /// At its call budget, a worker takes this last call and no more: it is retired (later
    /// calls wait for its replacement) and a recycle is asked for.
    fn count_call(&self, worker: &WorkerCore) {
        if let Some(limit) = self.config.recycle_after_calls {
            if worker.calls_started() + 1 == limit {
                worker.retire();
                self.send(Command::Recycle(format!("served {limit} calls")));
            }
        }
    }
}

fn usable(worker: &Arc<WorkerCore>, not: Option<usize>) -> bool {
    let this = Arc::as_ptr(worker) as usize;
    worker.process.exit.get().is_none() && !worker.is_retiring() && Some(this) != not
}

async fn with_deadline<T>(
    timeout: Option<Duration>,
    call: impl std::future::Future<Output = Result<T, PluginError>>,
) -> Result<T, PluginError> {
    match timeout {
        None => call.await,
        Some(limit) => match tokio::time::timeout(limit, call).await {
            Ok(result) => result,
            Err(_) => Err(PluginError::TimedOut(format!(
                "no answer within {limit:?}; the call was cancelled"
            ))),
        },
    }
}

impl Supervisor {
    /// [`Plugin::execute`] with per-call options (a deadline).
    ///
    /// # Errors
    /// As [`Plugin::execute`]; [`PluginError::TimedOut`] past the deadline.
    pub async fn execute_with(
        &self,
        input: Value,
        options: CallOptions,
    ) -> Result<Value, PluginError> {
        self.call_ref(&input, options)
            .await
            .map(CallOutput::leave_files)
    }

    /// Like [`crate::RemotePlugin::call`]: the output's files are handed to the caller.
    ///
    /// # Errors
    /// As [`Plugin::execute`].
    pub async fn call_with(
        &self,
        input: Value,
        options: CallOptions,
    ) -> Result<CallOutput, PluginError> {
        self.call_ref(&input, options).await
    }

    /// [`Supervisor::call_with`] on a borrowed input: the caller keeps it, so it can send it
    /// elsewhere when this call fails before reaching a worker, without having copied it.
    ///
    /// # Errors
    /// As [`Plugin::execute`].
    pub async fn call_ref(
        &self,
        input: &Value,
        options: CallOptions,
    ) -> Result<CallOutput, PluginError> {
        self.inner
            .run(options, |w| async move { w.call(input).await })
            .await
    }

    /// The plugin's named method `name` on a borrowed input (see [`Supervisor::call_ref`]):
    /// admitted, timed, retried and crash-attributed like a call; `execute` is
    /// [`Supervisor::call_ref`].
    ///
    /// # Errors
    /// As [`crate::RemotePlugin::call_method`].
    pub async fn call_method_ref(
        &self,
        name: &str,
        input: &Value,
        options: CallOptions,
    ) -> Result<CallOutput, PluginError> {
        self.inner
            .run(options, |w| async move { w.call_method(name, input).await })
            .await
    }

    /// [`Plugin::execute_stream`] on a borrowed input (see [`Supervisor::call_ref`]); output
    /// files stay in the worker's transfer directory until it stops (use
    /// [`Supervisor::stream_outputs_ref`] to own them).
    ///
    /// # Errors
    /// As [`Plugin::execute_stream`].
    pub async fn stream_ref(&self, input: &Value) -> Result<PluginStream, PluginError> {
        self.stream_as::<Value>(input).await
    }

    /// A stream whose items own the output files they reference, as [`Supervisor::call_ref`]
    /// does for one answer: each item's files are deleted when its [`CallOutput`] is dropped,
    /// unless persisted.
    ///
    /// # Errors
    /// As [`Plugin::execute_stream`]; an item whose file reference points outside the worker's
    /// transfer directory, or at something that is not a regular file, is a
    /// [`PluginError::Protocol`] item.
    pub async fn stream_outputs_ref(&self, input: &Value) -> Result<OutputStream, PluginError> {
        self.stream_as::<CallOutput>(input).await
    }

    /// A stream of `T`s (values alone, or outputs owning their files), admitted and timed.
    async fn stream_as<T: FromOutput>(&self, input: &Value) -> Result<ItemStream<T>, PluginError> {
        let queue_deadline = Instant::now() + self.inner.config.queue_timeout;
        let permit = self.inner.admit(queue_deadline).await?;
        let worker = self.inner.ready_worker(queue_deadline, None).await?;
        self.inner.count_call(&worker);
        let timeout = self.inner.config.call_timeout;
        let stream = with_deadline(timeout, worker.items::<T>(input)).await?;
        // The slot is held until the stream ends or is dropped.
        Ok(Box::pin(stream.map(move |item| {
            let _held = &permit;
            item
        })))
    }

    /// Forwards an HTTP request to a route of the current worker (see
    /// [`RemotePlugin::route`](crate::RemotePlugin::route)), admitted and timed like a call:
    /// the call timeout bounds the wait for the answer's head, and the call slot is held
    /// until the answer's body ends.
    ///
    /// # Errors
    /// As [`Plugin::execute`].
    pub async fn route(
        &self,
        request: http::Request<impl crate::RouteRequestBody>,
    ) -> Result<http::Response<crate::RouteBody>, PluginError> {
        let queue_deadline = Instant::now() + self.inner.config.queue_timeout;
        let permit = self.inner.admit(queue_deadline).await?;
        let worker = self.inner.ready_worker(queue_deadline, None).await?;
        self.inner.count_call(&worker);
        let timeout = self.inner.config.call_timeout;
        let answer = with_deadline(timeout, worker.route(request)).await?;
        Ok(answer.map(|body| body.holding(permit)))
    }

    /// Runs the worker's `before_request` middleware hook, admitted, timed and retried like a
    /// call.
    ///
    /// # Errors
    /// As [`Plugin::execute`]; [`PluginError::Protocol`] when the plugin serves no such hook.
    pub async fn before_request(
        &self,
        request: &plugvisor_proto::wire::HookRequest,
    ) -> Result<plugvisor_proto::wire::BeforeAction, PluginError> {
        let options = CallOptions::default();
        self.inner
            .run(options, |w| async move { w.before_request(request).await })
            .await
    }

    /// Runs the worker's `after_response` middleware hook, like [`Supervisor::before_request`].
    ///
    /// # Errors
    /// As [`Supervisor::before_request`].
    pub async fn after_response(
        &self,
        exchange: &plugvisor_proto::wire::AfterResponse,
    ) -> Result<plugvisor_proto::wire::HookResponse, PluginError> {
        let options = CallOptions::default();
        self.inner
            .run(options, |w| async move { w.after_response(exchange).await })
            .await
    }

    /// The plugin's own health check on the current worker, within `timeout`. It takes no
    /// call slot (a busy plugin is still asked) and is no call. Every failure is a `fail`
    /// report saying why: no worker up, no answer within `timeout` (a hung check), an error
    /// or a panic in the check.
    pub async fn check_health(&self, timeout: Duration) -> plugvisor_proto::wire::HealthReport {
        use plugvisor_proto::wire::HealthReport;
        let worker = self.inner.slot.borrow().worker.clone();
        let Some(worker) = worker else {
            return HealthReport::fail(format!("{} has no worker up", self.inner.label));
        };
        match tokio::time::timeout(timeout, worker.plugin_health()).await {
            Ok(Ok(report)) => report,
            Ok(Err(e)) => HealthReport::fail(format!("health check failed: {e}")),
            Err(_) => HealthReport::fail(format!("health check gave no answer within {timeout:?}")),
        }
    }

    /// Delivers one host event to the worker (`POST /v1/events`), within `timeout` all told:
    /// waiting for a ready worker (one restarting after a crash is waited for), then for its
    /// answer. It takes no call slot, so it never waits behind busy calls, and it is no call.
    ///
    /// # Errors
    /// [`PluginError::Unavailable`] when the plugin is failed or stopped or no worker is ready
    /// in time, [`PluginError::TimedOut`] when the answer does not come in time (the request is
    /// then cancelled), [`PluginError::WorkerCrashed`] when the worker died meanwhile, and
    /// the plugin's own error.
    ///
    /// # Cancel safety
    /// Dropping the future closes the connection, which cancels the handler in the worker.
    pub async fn deliver_event(
        &self,
        event: &plugvisor_proto::wire::EventDelivery,
        timeout: Duration,
    ) -> Result<(), PluginError> {
        let deadline = Instant::now() + timeout;
        let worker = match self.inner.ready_worker(deadline, None).await {
            Ok(worker) => worker,
            Err(_) if Instant::now() >= deadline => {
                return Err(PluginError::Unavailable(format!(
                    "{}: no worker ready within {timeout:?}",
                    self.inner.label
                )))
            }
            Err(e) => return Err(e),
        };
        match tokio::time::timeout_at(deadline, worker.deliver_event(event)).await {
            Ok(result) => result,
            Err(_) => Err(PluginError::TimedOut(format!(
                "the event was not handled within {timeout:?}; the delivery was cancelled"
            ))),
        }
    }

    /// Health of the current worker, if one is up.
    ///
    /// # Errors
    /// [`PluginError::Unavailable`] when no worker is up.
    pub async fn health(&self) -> Result<plugvisor_proto::wire::HealthResponse, PluginError> {
        let worker = self.inner.slot.borrow().worker.clone();
        match worker {
            Some(w) => w.health().await,
            None => Err(PluginError::Unavailable(format!(
                "{} has no worker up",
                self.inner.label
            ))),
        }
    }
}

impl Plugin for Supervisor {
    fn name(&self) -> &str {
        self.identity()
            .map(|i| i.name.as_str())
            .unwrap_or(&self.inner.label)
    }

    fn version(&self) -> &str {
        self.identity().map(|i| i.version.as_str()).unwrap_or("")
    }

    /// Configures the live worker, and remembers the configuration so every restarted worker
    /// gets it too. Takes no call slot: a configuration change does not wait for busy calls.
    async fn initialize(&self, config: Option<Value>) -> Result<(), PluginError> {
        let config_ref = &config;
        let applied = self
            .inner
            .control(|w| async move { w.initialize(config_ref.clone()).await })
            .await;
        match applied {
            Ok(_) => {}
            // An unreachable remote worker gets it when it is reached again.
            Err(PluginError::Unavailable(why))
                if !self.inner.config.wait_while_down && self.is_down() =>
            {
                tracing::info!(plugin = %self.inner.label, %why, "configuration kept for a worker that is down");
            }
            Err(e) => return Err(e),
        }
        if let Ok(mut kept) = self.inner.plugin_config.lock() {
            *kept = config;
        }
        Ok(())
    }

    async fn execute(&self, input: Value) -> Result<Value, PluginError> {
        self.execute_with(input, CallOptions::default()).await
    }

    async fn execute_stream(&self, input: Value) -> Result<PluginStream, PluginError> {
        self.stream_ref(&input).await
    }

    fn config_schema(&self) -> Value {
        self.identity()
            .map(|i| i.config_schema.clone())
            .unwrap_or_else(|| serde_json::json!({"type": "object"}))
    }

    fn current_config(&self) -> Value {
        let worker = self.inner.slot.borrow().worker.clone();
        match worker {
            Some(w) => {
                block_on_side_thread(async move { w.fetch_config().await.unwrap_or(Value::Null) })
            }
            None => Value::Null,
        }
    }

    async fn cleanup(&self) -> Result<(), PluginError> {
        self.inner
            .control(|w| async move { w.cleanup().await })
            .await
    }
}
