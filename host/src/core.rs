//! `WorkerCore`: one live worker and every operation on it, shared by `RemotePlugin` and the
//! supervisor.

use crate::client::{ClientError, Lease, WorkerClient};
use crate::launch::Launched;
use crate::process::WorkerProcess;
use crate::transfer::{self, OutputFile, StagedInputs};
use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use plugvisor_proto::wire::{self, routes, ErrorBody, ExecuteRequest};
use plugvisor_proto::{PluginError, PluginStream, Value};
use serde::de::DeserializeOwned;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

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

/// One live worker: its process, the client that talks to it, and what it said about itself.
#[derive(Debug)]
pub(crate) struct WorkerCore {
    pub(crate) process: WorkerProcess,
    pub(crate) client: Arc<WorkerClient>,
    pub(crate) name: String,
    pub(crate) version: String,
    pub(crate) config_schema: Value,
    in_flight: watch::Sender<u64>,
    calls: AtomicU64,
    retiring: std::sync::atomic::AtomicBool,
    stopped: tokio::sync::OnceCell<()>,
}

/// Counts one call as in flight on a worker until dropped.
#[derive(Debug)]
pub(crate) struct InFlight {
    counter: watch::Sender<u64>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.counter.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl WorkerCore {
    pub(crate) fn new(launched: Launched) -> Self {
        Self {
            process: launched.process,
            client: launched.client,
            name: launched.info.name,
            version: launched.info.version,
            config_schema: launched.info.config_schema,
            in_flight: watch::channel(0).0,
            calls: AtomicU64::new(0),
            retiring: std::sync::atomic::AtomicBool::new(false),
            stopped: tokio::sync::OnceCell::new(),
        }
    }

    /// Marks one call in flight (see [`WorkerCore::drained`]).
    pub(crate) fn begin_call(&self) -> InFlight {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.in_flight.send_modify(|n| *n += 1);
        InFlight {
            counter: self.in_flight.clone(),
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
        *self.in_flight.borrow()
    }

    /// Waits until no call is in flight on this worker.
    pub(crate) async fn drained(&self) {
        let mut rx = self.in_flight.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
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
        if !already_stopping && self.process.exit.get().is_none() {
            let ask = self
                .client
                .send(Method::POST, routes::SHUTDOWN, Bytes::new());
            let _ = tokio::time::timeout(self.process.grace, ask).await;
        }
        let exit = self.process.terminate().await;
        tracing::info!(plugin = %self.name, pid = self.process.pid, %exit, "worker stopped");
        self.client.close_idle();
        self.process.remove_files();
    }

    /// Turns a failed exchange into the right error: a crash if the worker died.
    pub(crate) async fn failure(&self, err: ClientError) -> PluginError {
        self.failure_with(format!("worker {}: {err}", self.name))
            .await
    }

    /// A crash report if the worker died (waiting briefly for its exit), else `Unavailable`.
    pub(crate) async fn failure_with(&self, message: String) -> PluginError {
        if self.process.is_stopping() {
            return PluginError::Unavailable(format!("worker {} was stopped", self.name));
        }
        if self.process.exit.wait_timeout(CRASH_WAIT).await.is_some() {
            return PluginError::WorkerCrashed(self.process.crash_report().await);
        }
        PluginError::Unavailable(message)
    }

    async fn post(&self, path: &str, body: Bytes) -> Result<(Incoming, Lease), PluginError> {
        let sent = self.client.send(Method::POST, path, body).await;
        let (response, lease) = match sent {
            Ok(ok) => ok,
            Err(e) => return Err(self.failure(e).await),
        };
        let status = response.status();
        let body = response.into_body();
        if status.is_success() {
            return Ok((body, lease));
        }
        let bytes = self.read_body(body, lease).await?;
        Err(error_from_body(status, &bytes))
    }

    async fn read_body(&self, body: Incoming, mut lease: Lease) -> Result<Bytes, PluginError> {
        match body.collect().await {
            Ok(collected) => {
                lease.finish();
                Ok(collected.to_bytes())
            }
            Err(e) => Err(self.failure(ClientError::Http(e)).await),
        }
    }

    async fn post_json<T: DeserializeOwned>(
        &self,
        path: &str,
        body: Bytes,
    ) -> Result<T, PluginError> {
        let (body, lease) = self.post(path, body).await?;
        let bytes = self.read_body(body, lease).await?;
        parse(&bytes)
    }

    async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, PluginError> {
        match get_json(&self.client, path).await {
            Err(PluginError::Unavailable(m)) => Err(self.failure_with(m).await),
            other => other,
        }
    }

    /// `POST /v1/initialize`.
    pub(crate) async fn initialize(&self, config: Option<Value>) -> Result<Value, PluginError> {
        let body = to_body(&wire::InitializeRequest { config })?;
        let answer: wire::ConfigResponse = self.post_json(routes::INITIALIZE, body).await?;
        Ok(answer.config)
    }

    /// `POST /v1/execute`, staging input files and adopting output files.
    pub(crate) async fn call(&self, mut input: Value) -> Result<CallOutput, PluginError> {
        let _guard = self.begin_call();
        let staged = self.stage_inputs(&mut input).await?;
        let body = to_body(&ExecuteRequest { input: &input })?;
        drop(input);
        let response: wire::ExecuteResponse = self.post_json(routes::EXECUTE, body).await?;
        let dir = &self.process.transfer_dir;
        let files = transfer::adopt_outputs(dir, &response.output, &staged)?;
        Ok(CallOutput {
            value: response.output,
            files,
        })
    }

    /// `POST /v1/execute_stream`.
    pub(crate) async fn execute_stream(
        self: &Arc<Self>,
        mut input: Value,
    ) -> Result<PluginStream, PluginError> {
        let guard = self.begin_call();
        let staged = self.stage_inputs(&mut input).await?;
        let body = to_body(&ExecuteRequest { input: &input })?;
        let (body, lease) = self.post(routes::EXECUTE_STREAM, body).await?;
        Ok(crate::stream::decode(
            body,
            lease,
            Arc::clone(self),
            staged,
            guard,
        ))
    }

    /// `GET /v1/health`.
    pub(crate) async fn health(&self) -> Result<wire::HealthResponse, PluginError> {
        self.get_json(routes::HEALTH).await
    }

    /// `GET /v1/config`.
    pub(crate) async fn fetch_config(&self) -> Result<Value, PluginError> {
        let answer: wire::ConfigResponse = self.get_json(routes::CONFIG).await?;
        Ok(answer.config)
    }

    /// `POST /v1/cleanup`.
    pub(crate) async fn cleanup(&self) -> Result<(), PluginError> {
        let _: Value = self.post_json(routes::CLEANUP, Bytes::new()).await?;
        Ok(())
    }

    async fn stage_inputs(&self, input: &mut Value) -> Result<StagedInputs, PluginError> {
        if !plugvisor_proto::file_ref::contains_file_refs(input) {
            return Ok(StagedInputs::default());
        }
        let dir = self.process.transfer_dir.clone();
        let mut owned = std::mem::take(input);
        let (staged, back) = tokio::task::spawn_blocking(move || {
            let staged = transfer::stage_inputs(&dir, &mut owned);
            (staged, owned)
        })
        .await
        .map_err(|e| PluginError::Failed(format!("staging files panicked: {e}")))?;
        *input = back;
        staged
    }
}

fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, PluginError> {
    serde_json::from_slice(bytes)
        .map_err(|e| PluginError::Protocol(format!("unreadable answer from the worker: {e}")))
}

fn error_from_body(status: StatusCode, bytes: &[u8]) -> PluginError {
    match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(body) => body.error.into(),
        Err(_) => PluginError::Protocol(format!(
            "worker answered {status} with {}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
        )),
    }
}

/// `GET path` and parse the JSON answer (also used before a [`WorkerCore`] exists).
pub(crate) async fn get_json<T: DeserializeOwned>(
    client: &Arc<WorkerClient>,
    path: &str,
) -> Result<T, PluginError> {
    let (response, mut lease) = client
        .send(Method::GET, path, Bytes::new())
        .await
        .map_err(|e| PluginError::Unavailable(e.to_string()))?;
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|e| PluginError::Unavailable(e.to_string()))?
        .to_bytes();
    lease.finish();
    if !status.is_success() {
        return Err(error_from_body(status, &bytes));
    }
    parse(&bytes)
}

fn to_body<T: serde::Serialize>(value: &T) -> Result<Bytes, PluginError> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| PluginError::InvalidInput(format!("input is not serializable: {e}")))
}

impl CallOutput {
    /// The value alone; the files stay in the worker's transfer directory until it stops.
    pub(crate) fn leave_files(self) -> Value {
        for file in self.files {
            file.disarm();
        }
        self.value
    }
}

/// Runs `fut` to completion from synchronous code, inside or outside a runtime: on a scoped
/// thread with a runtime of its own, so a single-threaded caller's runtime cannot deadlock.
pub(crate) fn block_on_side_thread<F>(fut: F) -> Value
where
    F: std::future::Future<Output = Value> + Send,
{
    let run = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map(|rt| rt.block_on(fut))
            .unwrap_or(Value::Null)
    };
    std::thread::scope(|s| s.spawn(run).join().unwrap_or(Value::Null))
}
