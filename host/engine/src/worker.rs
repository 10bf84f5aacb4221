//! `WorkerCore`: one live worker and every operation on it (calls, streams, staging,
//! in-flight count, stop), shared by `RemotePlugin` and the supervisor; and crash attribution:
//! where a failed connection is told apart as a crash (the process exited) or a live worker
//! that cannot be reached ([`WorkerCore::failure`]).

use crate::client::{ClientError, Lease, WorkerClient};
use crate::error::chain;
use crate::exchange::{self, call_body, to_body, Failure};
use crate::identity::PluginIdentity;
use crate::launch::Launched;
use crate::process::WorkerProcess;
use crate::sandbox::Enforced;
use crate::stream::{self, Fault};
use crate::transfer::{self, OutputFile, StagedInputs};
use bytes::Bytes;
use http::Method;
use hyper::body::Incoming;
use plugvisor_proto::wire::{self, routes};
use plugvisor_proto::{PluginError, PluginStream, Value};
use serde::de::DeserializeOwned;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// How long a failed connection waits for the worker's exit before calling it a crash.
const CRASH_WAIT: Duration = Duration::from_secs(1);

/// The result of a call that hands output files to the caller.
#[derive(Debug)]
pub struct CallOutput {
    /// The plugin's output, `FileRef`s included as the worker returned them.
    pub value: Value,
    /// The files referenced by `value`, deleted when dropped unless persisted.
    pub files: Vec<OutputFile>,
}

/// A stream whose items own the output files they reference (see [`CallOutput`]).
pub type OutputStream = ItemStream<CallOutput>;

/// A boxed stream of `T`s or the error ending it.
pub(crate) type ItemStream<T> =
    Pin<Box<dyn futures_util::Stream<Item = Result<T, PluginError>> + Send + 'static>>;

/// One live worker: its process, the client that talks to it, and what it said about itself.
#[derive(Debug)]
pub(crate) struct WorkerCore {
    pub(crate) process: WorkerProcess,
    pub(crate) client: Arc<WorkerClient>,
    pub(crate) identity: PluginIdentity,
    pub(crate) sandbox: Option<Enforced>,
    in_flight: Arc<Gauge>,
    calls: AtomicU64,
    retiring: AtomicBool,
    stopped: tokio::sync::OnceCell<()>,
}

/// Calls in flight on a worker, and a wake-up for whoever waits for none (a `watch` channel
/// did this before and cost ≈ 900 instructions per call notifying its eight slots).
#[derive(Debug, Default)]
struct Gauge {
    count: AtomicU64,
    idle: tokio::sync::Notify,
}

/// Counts one call as in flight on a worker until dropped.
#[derive(Debug)]
pub(crate) struct InFlight {
    gauge: Arc<Gauge>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.gauge.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.gauge.idle.notify_waiters();
        }
    }
}

impl WorkerCore {
    pub(crate) fn new(launched: Launched) -> Self {
        Self {
            process: launched.process,
            client: launched.client,
            identity: launched.identity,
            sandbox: launched.sandbox,
            in_flight: Arc::default(),
            calls: AtomicU64::new(0),
            retiring: AtomicBool::new(false),
            stopped: tokio::sync::OnceCell::new(),
        }
    }

    /// Marks one call in flight (see [`WorkerCore::drained`]).
    pub(crate) fn begin_call(&self) -> InFlight {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.in_flight.count.fetch_add(1, Ordering::AcqRel);
        InFlight {
            gauge: Arc::clone(&self.in_flight),
        }
    }

    /// Takes no new calls from now on (it is about to be replaced).
    pub(crate) fn retire(&self) {
        self.retiring.store(true, Ordering::Release);
    }

    /// True once [`WorkerCore::retire`] was called.
    pub(crate) fn is_retiring(&self) -> bool {
        self.retiring.load(Ordering::Acquire)
    }

    /// Calls started on this worker so far.
    pub(crate) fn calls_started(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Calls in flight on this worker now.
    pub(crate) fn in_flight(&self) -> u64 {
        self.in_flight.count.load(Ordering::Acquire)
    }

    /// Waits until no call is in flight on this worker.
    pub(crate) async fn drained(&self) {
        loop {
            // Registered before the count is read, so the last call's wake-up is not missed.
            let idle = self.in_flight.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.in_flight() == 0 {
                return;
            }
            idle.await;
        }
    }

    /// Stops the worker: shutdown request, then SIGTERM, then SIGKILL; files removed. Runs
    /// once; concurrent and later callers wait for that one stop to finish.
    pub(crate) async fn stop(&self) {
        self.stopped.get_or_init(|| self.stop_once()).await;
    }

    /// True once a stop has completed.
    pub(crate) fn is_stopped(&self) -> bool {
        self.stopped.initialized()
    }

    async fn stop_once(&self) {
        let already_stopping = self.process.is_stopping();
        self.process.begin_stop();
        let remote = self.process.is_remote();
        if !already_stopping && !remote && self.process.exit.get().is_none() {
            let ask = self
                .client
                .send(Method::POST, routes::SHUTDOWN, Bytes::new());
            let _ = tokio::time::timeout(self.process.grace, ask).await;
        }
        let exit = self.process.terminate().await;
        tracing::info!(plugin = %self.identity.name, pid = self.process.pid, %exit, "worker stopped");
        self.client.close_idle();
        self.process.remove_files();
    }

    /// Kills a worker that stopped answering health probes; a remote one's link is lost
    /// instead, and the calls waiting on it fail now.
    pub(crate) fn kill_unresponsive(&self) {
        self.process.kill_unresponsive();
        if self.process.is_remote() {
            self.client.abort_all();
        }
    }

    /// Turns a failed connection into the right error: a crash if the worker died.
    pub(crate) async fn failure(&self, err: ClientError) -> PluginError {
        let reason = format!("worker {}: {}", self.identity.name, chain(&err));
        self.failure_with(reason).await
    }

    /// A crash report if the worker died (waiting briefly for its exit), else `Unavailable`
    /// with `message`; `Unavailable` too when the host itself stopped the worker.
    pub(crate) async fn failure_with(&self, message: String) -> PluginError {
        if self.process.is_stopping() {
            return PluginError::Unavailable(format!("worker {} was stopped", self.identity.name));
        }
        // A remote worker's link is lost with the connection: what happened to the worker
        // is not known here, and the supervisor reconnects.
        if self.process.is_remote() {
            self.process.lose(&message);
            self.client.abort_all();
        }
        if self.process.exit.wait_timeout(CRASH_WAIT).await.is_some() {
            return PluginError::WorkerCrashed(self.process.crash_report().await);
        }
        PluginError::Unavailable(message)
    }

    /// The error of a failed exchange: the worker's own, or an attributed connection failure.
    async fn attribute(&self, failure: Failure) -> PluginError {
        match failure {
            Failure::Answer(e) => e,
            Failure::Transport(e) => self.failure(e).await,
        }
    }

    /// The last item of a stream that did not end with `end`.
    async fn attribute_stream(&self, fault: Fault) -> PluginError {
        match fault {
            Fault::Plugin(e) => e,
            Fault::Broken(e) => self.failure(e).await,
            Fault::CutShort => {
                let msg = "the stream ended without a terminal frame".to_owned();
                // A stream cut short while the worker lives is a protocol error, never an end.
                match self.failure_with(msg).await {
                    PluginError::Unavailable(m) => PluginError::Protocol(m),
                    other => other,
                }
            }
        }
    }

    async fn post(&self, path: &str, body: Bytes) -> Result<(Incoming, Lease), PluginError> {
        match exchange::send(&self.client, Method::POST, path, body).await {
            Ok(ok) => Ok(ok),
            Err(f) => Err(self.attribute(f).await),
        }
    }

    async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<T, PluginError> {
        match exchange::json(&self.client, method, path, body).await {
            Ok(value) => Ok(value),
            Err(f) => Err(self.attribute(f).await),
        }
    }

    /// `POST /v1/initialize`.
    pub(crate) async fn initialize(&self, config: Option<Value>) -> Result<Value, PluginError> {
        let body = to_body(&wire::InitializeRequest { config })?;
        let answer: wire::ConfigResponse =
            self.json(Method::POST, routes::INITIALIZE, body).await?;
        Ok(answer.config)
    }

    /// `POST /v1/execute`, staging input files and adopting output files.
    pub(crate) async fn call(&self, input: &Value) -> Result<CallOutput, PluginError> {
        self.call_at(routes::EXECUTE, input).await
    }

    /// `POST /v1/methods/<name>` (`/v1/execute` for `execute`), as [`WorkerCore::call`].
    pub(crate) async fn call_method(
        &self,
        name: &str,
        input: &Value,
    ) -> Result<CallOutput, PluginError> {
        if name == wire::DEFAULT_METHOD {
            return self.call(input).await;
        }
        if !wire::valid_method_name(name) {
            return Err(PluginError::InvalidInput(format!(
                "{} has no method {name:?}",
                self.identity.name
            )));
        }
        self.call_at(&format!("{}{name}", routes::METHOD_PREFIX), input)
            .await
    }

    async fn call_at(&self, path: &str, input: &Value) -> Result<CallOutput, PluginError> {
        let _guard = self.begin_call();
        let (body, staged) = self.request_body(input).await?;
        let mut output = match exchange::output(&self.client, path, body).await {
            Ok(output) => output,
            Err(f) => return Err(self.attribute(f).await),
        };
        self.fetch_outputs(&mut output).await?;
        let dir = &self.process.transfer_dir;
        let files = transfer::adopt_outputs(dir, &output, &staged)?;
        Ok(CallOutput {
            value: output,
            files,
        })
    }

    /// `POST /v1/execute_stream`, each item with the output files it references adopted (see
    /// [`CallOutput`]). The stream holds the call's staged input files and its in-flight count
    /// until it ends or is dropped.
    pub(crate) async fn stream(
        self: &Arc<Self>,
        input: &Value,
    ) -> Result<OutputStream, PluginError> {
        Ok(Box::pin(self.items::<CallOutput>(input).await?))
    }

    /// `POST /v1/execute_stream` as the [`Plugin::execute_stream`](plugvisor_proto::Plugin)
    /// view: the values alone, their files left in the worker's transfer directory. One
    /// stream, not [`stream`](Self::stream) behind a mapping one (≈ 100 instructions per item
    /// of moving each item through a second boxed stream).
    pub(crate) async fn stream_values(
        self: &Arc<Self>,
        input: &Value,
    ) -> Result<PluginStream, PluginError> {
        Ok(Box::pin(self.items::<Value>(input).await?))
    }

    /// The items of `POST /v1/execute_stream` as `T`s.
    pub(crate) async fn items<T: FromOutput>(
        self: &Arc<Self>,
        input: &Value,
    ) -> Result<
        impl futures_util::Stream<Item = Result<T, PluginError>> + Send + 'static,
        PluginError,
    > {
        let guard = self.begin_call();
        let (body, staged) = self.request_body(input).await?;
        let (body, lease) = self.post(routes::EXECUTE_STREAM, body).await?;
        Ok(Items {
            decoded: stream::decode(body, lease),
            core: Arc::clone(self),
            staged,
            _in_flight: guard,
            pending: None,
            out: PhantomData,
        })
    }

    /// The body of a call on `input`. File references are staged into the transfer directory
    /// first, on a copy of the input rewritten to point at the staged files (the caller's
    /// input is not touched, so it can be sent again).
    async fn request_body(&self, input: &Value) -> Result<(Bytes, StagedInputs), PluginError> {
        if !plugvisor_proto::file_ref::contains_file_refs(input) {
            let body = call_body(input)?;
            return Ok((body, StagedInputs::default()));
        }
        if self.process.is_remote() {
            return self.remote_request_body(input).await;
        }
        let dir = self.process.transfer_dir.clone();
        let other_user = self.sandbox.as_ref().is_some_and(|s| s.uid.is_some());
        let mut owned = input.clone();
        let (staged, owned) = tokio::task::spawn_blocking(move || {
            let staged = transfer::stage_inputs(&dir, &mut owned, other_user);
            (staged, owned)
        })
        .await
        .map_err(|e| PluginError::Failed(format!("staging files panicked: {e}")))?;
        let staged = staged?;
        let body = call_body(&owned)?;
        Ok((body, staged))
    }

    /// A remote worker's call body: its file references streamed to it first (content
    /// addressed, docs/PROTOCOL.md §14), when it can receive files.
    async fn remote_request_body(
        &self,
        input: &Value,
    ) -> Result<(Bytes, StagedInputs), PluginError> {
        if !self.identity.file_transfer {
            return Err(PluginError::FileAccess(format!(
                "{} is a remote worker without file_transfer: it shares no filesystem with the \
                 host, so a file reference cannot be passed to it",
                self.identity.name
            )));
        }
        let sent = match crate::remote_files::send_inputs(
            &self.client,
            input,
            self.identity.streamed_upload,
        )
        .await
        {
            Ok(sent) => sent,
            Err(f) => return Err(self.attribute(f).await),
        };
        let body = call_body(&sent)?;
        Ok((body, StagedInputs::default()))
    }

    /// True when `output` references files on a remote worker, to be copied here.
    fn fetches_outputs(&self, output: &Value) -> bool {
        self.process.is_remote() && plugvisor_proto::file_ref::contains_file_refs(output)
    }

    /// One stream item of a remote worker: its output files copied here and adopted (a
    /// remote call stages no inputs here, so none of them can be one of its own).
    async fn remote_item(&self, mut value: Value) -> Result<CallOutput, PluginError> {
        self.fetch_outputs(&mut value).await?;
        let dir = &self.process.transfer_dir;
        let files = transfer::adopt_outputs(dir, &value, &StagedInputs::default())?;
        Ok(CallOutput { value, files })
    }

    /// A remote worker's output files, copied into the host's transfer directory.
    async fn fetch_outputs(&self, output: &mut Value) -> Result<(), PluginError> {
        if !self.fetches_outputs(output) {
            return Ok(());
        }
        let dir = &self.process.transfer_dir;
        match crate::remote_files::fetch_outputs(&self.client, output, dir).await {
            Ok(()) => Ok(()),
            Err(f) => Err(self.attribute(f).await),
        }
    }

    /// `POST /v1/hooks/before_request`.
    pub(crate) async fn before_request(
        &self,
        request: &wire::HookRequest,
    ) -> Result<wire::BeforeAction, PluginError> {
        let _guard = self.begin_call();
        let body = to_body(request)?;
        self.json(Method::POST, routes::BEFORE_REQUEST, body).await
    }

    /// `POST /v1/hooks/after_response`.
    pub(crate) async fn after_response(
        &self,
        exchange: &wire::AfterResponse,
    ) -> Result<wire::HookResponse, PluginError> {
        let _guard = self.begin_call();
        let body = to_body(exchange)?;
        self.json(Method::POST, routes::AFTER_RESPONSE, body).await
    }

    /// `POST /v1/events`: one host event for a subscribed plugin (not counted as a call); the
    /// answer's body, if any, is read and ignored.
    pub(crate) async fn deliver_event(
        &self,
        event: &wire::EventDelivery,
    ) -> Result<(), PluginError> {
        let body = to_body(event)?;
        let (answer, lease) = self.post(routes::EVENTS, body).await?;
        match exchange::read_all(answer, lease).await {
            Ok(_) => Ok(()),
            Err(e) => Err(self.failure(e).await),
        }
    }

    /// `POST /v1/plugin_health`: the plugin's own check (not counted as a call).
    pub(crate) async fn plugin_health(&self) -> Result<wire::HealthReport, PluginError> {
        self.json(Method::POST, routes::PLUGIN_HEALTH, Bytes::new())
            .await
    }

    /// `GET /v1/health`.
    pub(crate) async fn health(&self) -> Result<wire::HealthResponse, PluginError> {
        let answer = self.json(Method::GET, routes::HEALTH, Bytes::new()).await;
        if answer.is_ok() {
            self.process.answered();
        }
        answer
    }

    /// `GET /v1/config`.
    pub(crate) async fn fetch_config(&self) -> Result<Value, PluginError> {
        let answer: wire::ConfigResponse =
            self.json(Method::GET, routes::CONFIG, Bytes::new()).await?;
        Ok(answer.config)
    }

    /// `POST /v1/cleanup`.
    pub(crate) async fn cleanup(&self) -> Result<(), PluginError> {
        let _: Value = self
            .json(Method::POST, routes::CLEANUP, Bytes::new())
            .await?;
        Ok(())
    }
}

impl CallOutput {
    /// The value alone; the files stay in the worker's transfer directory until it stops.
    pub(crate) fn leave_files(self) -> Value {
        // Most items have no files: no iterator built and dropped for them (P3's per-item path).
        if !self.files.is_empty() {
            self.files.into_iter().for_each(|file| file.disarm());
        }
        self.value
    }
}

/// What a streamed item becomes for its caller: the output owning its files
/// ([`WorkerCore::stream`]) or the value alone ([`WorkerCore::stream_values`]).
pub(crate) trait FromOutput: Send + 'static {
    /// Converts one item.
    fn from_output(output: CallOutput) -> Self;
}

impl FromOutput for CallOutput {
    fn from_output(output: CallOutput) -> Self {
        output
    }
}

impl FromOutput for Value {
    fn from_output(output: CallOutput) -> Self {
        output.leave_files()
    }
}

/// A streamed answer's items as the caller gets them. An item of a local worker has its output
/// files adopted as it passes, synchronously: the usual item costs no future of its own (it
/// was a `then` whose per-item future was ≈ 150 instructions of P3's budget). A remote
/// worker's item with files to fetch, or the fault that ended the stream, waits for its
/// future here.
struct Items<S, T> {
    decoded: S,
    core: Arc<WorkerCore>,
    /// The call's staged input files: not outputs, and deleted with the stream.
    staged: StagedInputs,
    /// The call stays in flight until the stream is dropped.
    _in_flight: InFlight,
    /// The item being fetched, or the stream's fault being attributed.
    pending: Option<SlowItem>,
    /// What each item is handed on as.
    out: PhantomData<fn() -> T>,
}

/// An item that needs a future: a remote worker's files fetched, or a fault attributed.
type SlowItem = Pin<Box<dyn Future<Output = Result<CallOutput, PluginError>> + Send>>;

impl<S, T> futures_util::Stream for Items<S, T>
where
    S: futures_util::Stream<Item = Result<Value, Fault>> + Unpin,
    T: FromOutput,
{
    type Item = Result<T, PluginError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(pending) = this.pending.as_mut() {
                let output = futures_util::ready!(pending.as_mut().poll(cx));
                this.pending = None;
                return Poll::Ready(Some(output.map(T::from_output)));
            }
            let slow: SlowItem =
                match futures_util::ready!(Pin::new(&mut this.decoded).poll_next(cx)) {
                    None => return Poll::Ready(None),
                    // A string or a number cannot reference a file: nothing to adopt.
                    Some(Ok(value)) if !matches!(value, Value::Object(_) | Value::Array(_)) => {
                        let output = CallOutput {
                            value,
                            files: Vec::new(),
                        };
                        return Poll::Ready(Some(Ok(T::from_output(output))));
                    }
                    Some(Ok(value)) if !this.core.fetches_outputs(&value) => {
                        let dir = &this.core.process.transfer_dir;
                        let adopted = transfer::adopt_outputs(dir, &value, &this.staged);
                        let output = adopted.map(|files| CallOutput { value, files });
                        return Poll::Ready(Some(output.map(T::from_output)));
                    }
                    // A remote worker's output files travel back before the item is handed on.
                    Some(Ok(value)) => {
                        let core = Arc::clone(&this.core);
                        Box::pin(async move { core.remote_item(value).await })
                    }
                    Some(Err(fault)) => {
                        let core = Arc::clone(&this.core);
                        Box::pin(async move { Err(core.attribute_stream(fault).await) })
                    }
                };
            this.pending = Some(slow);
        }
    }
}
