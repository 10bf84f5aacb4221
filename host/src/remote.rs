//! `RemotePlugin`: the proxy that implements [`Plugin`] by forwarding every call to a worker.

use crate::client::{ClientError, Lease, WorkerClient};
use crate::launch::Launched;
use crate::process::WorkerProcess;
use crate::transfer::{self, OutputFile, StagedFile, StagedInputs};
use bytes::{Bytes, BytesMut};
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use plugvisor_proto::wire::{self, routes, ErrorBody, ExecuteRequest, StreamFrame};
use plugvisor_proto::{FileBacked, Plugin, PluginError, PluginStream, Value};
use serde::de::DeserializeOwned;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// How long a failed connection waits for the worker's exit before calling it a crash.
const CRASH_WAIT: Duration = Duration::from_secs(1);

/// The shared state of one worker: its process and the client that talks to it.
#[derive(Debug)]
pub(crate) struct WorkerCore {
    pub(crate) process: WorkerProcess,
    pub(crate) client: Arc<WorkerClient>,
    pub(crate) name: String,
    pub(crate) version: String,
    pub(crate) config_schema: Value,
}

impl WorkerCore {
    pub(crate) fn new(launched: Launched) -> Self {
        Self {
            process: launched.process,
            client: launched.client,
            name: launched.info.name,
            version: launched.info.version,
            config_schema: launched.info.config_schema,
        }
    }

    /// Stops the worker: shutdown request, then SIGTERM, then SIGKILL; files removed.
    pub(crate) async fn stop(&self) {
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
    async fn failure(&self, err: ClientError) -> PluginError {
        self.failure_with(format!("worker {}: {err}", self.name))
            .await
    }

    /// A crash report if the worker died (waiting briefly for its exit), else `Unavailable`.
    async fn failure_with(&self, message: String) -> PluginError {
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

/// `GET path` and parse the JSON answer (used before a [`WorkerCore`] exists).
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

/// The result of [`RemotePlugin::call`]: the output and the files it references, now owned by
/// the caller.
#[derive(Debug)]
pub struct CallOutput {
    /// The plugin's output, `FileRef`s included as the worker returned them.
    pub value: Value,
    /// The files referenced by `value`, deleted when dropped unless persisted.
    pub files: Vec<OutputFile>,
}

/// A plugin running in its own worker process, called through the same [`Plugin`] trait.
///
/// Made by [`crate::Host::spawn`]. Dropping it stops the worker (shutdown request, SIGTERM,
/// SIGKILL after the grace period; always reaped); [`RemotePlugin::shutdown`] does the same and
/// waits for it.
///
/// # Errors of every call
/// Besides what the plugin itself returns: [`PluginError::WorkerCrashed`] with the exit status
/// and stderr tail when the worker died during the call (it may or may not have run),
/// [`PluginError::Unavailable`] when the worker was stopped or cannot be reached.
///
/// # Cancel safety
/// Dropping a call future, or a stream before its end, closes that call's connection, and the
/// worker drops the plugin's work. Other calls are unaffected.
#[derive(Debug)]
pub struct RemotePlugin {
    core: Arc<WorkerCore>,
}

impl RemotePlugin {
    pub(crate) fn new(core: Arc<WorkerCore>) -> Self {
        Self { core }
    }

    /// The worker's process id.
    pub fn pid(&self) -> u32 {
        self.core.process.pid
    }

    /// The worker's transfer directory: the only place it reads files from.
    pub fn transfer_dir(&self) -> &Path {
        &self.core.process.transfer_dir
    }

    /// Writes `data` into the worker's transfer directory; put the returned file's
    /// [`to_value`](StagedFile::to_value) into inputs. The file is deleted when dropped.
    ///
    /// # Errors
    /// The I/O error of [`FileBacked::to_temp_file`], or a file written outside the directory.
    pub fn stage(&self, data: &dyn FileBacked) -> io::Result<StagedFile> {
        StagedFile::create(self.transfer_dir(), data)
    }

    /// Like [`Plugin::execute`], but hands the output's files to the caller as [`OutputFile`]s.
    ///
    /// Through [`Plugin::execute`] output files stay in the transfer directory until the worker
    /// stops; use `call` to own (and [`persist`](OutputFile::persist)) them.
    ///
    /// # Errors
    /// As [`Plugin::execute`]; also [`PluginError::Protocol`] when the worker returns a file
    /// reference outside its transfer directory.
    pub async fn call(&self, mut input: Value) -> Result<CallOutput, PluginError> {
        let staged = self.stage_inputs(&mut input).await?;
        let body = to_body(&ExecuteRequest { input: &input })?;
        drop(input);
        let response: wire::ExecuteResponse = self.core.post_json(routes::EXECUTE, body).await?;
        let files = transfer::adopt_outputs(self.transfer_dir(), &response.output, &staged)?;
        Ok(CallOutput {
            value: response.output,
            files,
        })
    }

    /// Health as the worker reports it (never touches plugin code).
    ///
    /// # Errors
    /// As for any call: crashed, unavailable.
    pub async fn health(&self) -> Result<wire::HealthResponse, PluginError> {
        match get_json(&self.core.client, routes::HEALTH).await {
            Err(PluginError::Unavailable(m)) => Err(self.core.failure_with(m).await),
            other => other,
        }
    }

    /// Stops the worker and waits until it is gone and its files are removed.
    pub async fn shutdown(self) {
        self.core.stop().await;
    }

    async fn stage_inputs(&self, input: &mut Value) -> Result<StagedInputs, PluginError> {
        if !plugvisor_proto::file_ref::contains_file_refs(input) {
            return Ok(StagedInputs::default());
        }
        let dir = self.transfer_dir().to_path_buf();
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

impl Drop for RemotePlugin {
    fn drop(&mut self) {
        let core = Arc::clone(&self.core);
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move { core.stop().await });
            }
            // No runtime: WorkerProcess's Drop stops it with signals once the last handle goes.
            Err(_) => drop(core),
        }
    }
}

impl Plugin for RemotePlugin {
    fn name(&self) -> &str {
        &self.core.name
    }

    fn version(&self) -> &str {
        &self.core.version
    }

    async fn initialize(&self, config: Option<Value>) -> Result<(), PluginError> {
        let body = to_body(&wire::InitializeRequest { config })?;
        let _: wire::ConfigResponse = self.core.post_json(routes::INITIALIZE, body).await?;
        Ok(())
    }

    async fn execute(&self, input: Value) -> Result<Value, PluginError> {
        let mut output = self.call(input).await?;
        // Owned by the transfer directory until the worker stops (see `call`).
        for file in output.files.drain(..) {
            std::mem::forget(file);
        }
        Ok(output.value)
    }

    async fn execute_stream(&self, mut input: Value) -> Result<PluginStream, PluginError> {
        let staged = self.stage_inputs(&mut input).await?;
        let body = to_body(&ExecuteRequest { input: &input })?;
        let (body, lease) = self.core.post(routes::EXECUTE_STREAM, body).await?;
        let decoder = FrameDecoder {
            body,
            buf: BytesMut::new(),
            scanned: 0,
            lease: Some(lease),
            core: Arc::clone(&self.core),
            _staged: staged,
            done: false,
        };
        Ok(Box::pin(futures_util::stream::unfold(
            decoder,
            |mut d| async move {
                let item = d.next_item().await?;
                Some((item, d))
            },
        )))
    }

    fn config_schema(&self) -> Value {
        self.core.config_schema.clone()
    }

    /// The worker's current configuration. This trait method is synchronous, so it blocks the
    /// calling thread on the worker's answer; async code should prefer
    /// [`RemotePlugin::fetch_config`].
    fn current_config(&self) -> Value {
        let core = Arc::clone(&self.core);
        let fetch = async move {
            get_json::<wire::ConfigResponse>(&core.client, routes::CONFIG)
                .await
                .map(|c| c.config)
                .unwrap_or(Value::Null)
        };
        block_on_current(fetch)
    }

    async fn cleanup(&self) -> Result<(), PluginError> {
        let _: Value = self.core.post_json(routes::CLEANUP, Bytes::new()).await?;
        Ok(())
    }
}

impl RemotePlugin {
    /// The worker's current configuration, asked over the socket.
    ///
    /// # Errors
    /// As for any call: crashed, unavailable.
    pub async fn fetch_config(&self) -> Result<Value, PluginError> {
        get_json::<wire::ConfigResponse>(&self.core.client, routes::CONFIG)
            .await
            .map(|c| c.config)
    }
}

/// Runs `fut` to completion from synchronous code, inside or outside a runtime: on a scoped
/// thread with a runtime of its own, so a single-threaded caller's runtime cannot deadlock.
fn block_on_current<F>(fut: F) -> Value
where
    F: std::future::Future<Output = Value> + Send + 'static,
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

/// Reads NDJSON frames off a streamed answer.
struct FrameDecoder {
    body: Incoming,
    buf: BytesMut,
    scanned: usize,
    lease: Option<Lease>,
    core: Arc<WorkerCore>,
    _staged: StagedInputs,
    done: bool,
}

impl FrameDecoder {
    async fn next_item(&mut self) -> Option<Result<Value, PluginError>> {
        if self.done {
            return None;
        }
        loop {
            if let Some(line) = self.next_line() {
                return self.on_frame(&line).await;
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => {
                    self.done = true;
                    return Some(Err(self.core.failure(ClientError::Http(e)).await));
                }
                None => {
                    self.done = true;
                    let msg = "the stream ended without a terminal frame".to_owned();
                    return Some(Err(self.core.failure_with(msg).await.into_cut_short()));
                }
            }
        }
    }

    fn next_line(&mut self) -> Option<BytesMut> {
        let pos = self.buf[self.scanned..].iter().position(|&b| b == b'\n');
        match pos {
            Some(i) => {
                let line = self.buf.split_to(self.scanned + i + 1);
                self.scanned = 0;
                Some(line)
            }
            None => {
                self.scanned = self.buf.len();
                None
            }
        }
    }

    async fn on_frame(&mut self, line: &[u8]) -> Option<Result<Value, PluginError>> {
        match serde_json::from_slice::<StreamFrame>(line) {
            Ok(StreamFrame::Item(value)) => Some(Ok(value)),
            Ok(StreamFrame::End { .. }) => {
                self.done = true;
                self.finish().await;
                None
            }
            Ok(StreamFrame::Error(wire)) => {
                self.done = true;
                self.finish().await;
                Some(Err(wire.into()))
            }
            Err(e) => {
                self.done = true;
                Some(Err(PluginError::Protocol(format!("bad stream frame: {e}"))))
            }
        }
    }

    /// Reads the (empty) rest of the body so the connection can be reused.
    async fn finish(&mut self) {
        if self.body.frame().await.is_none() && self.buf.is_empty() {
            if let Some(lease) = self.lease.as_mut() {
                lease.finish();
            }
        }
        self.lease.take();
    }
}

trait CutShort {
    fn into_cut_short(self) -> PluginError;
}

impl CutShort for PluginError {
    /// A stream that ended early while the worker lives is a protocol error, never a clean end.
    fn into_cut_short(self) -> PluginError {
        match self {
            PluginError::Unavailable(m) => PluginError::Protocol(m),
            other => other,
        }
    }
}
