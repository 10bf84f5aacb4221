//! `RemotePlugin`: the proxy that implements [`Plugin`] by forwarding every call to one worker.

use crate::identity::PluginIdentity;
use crate::sandbox::Enforced;
use crate::side_thread::block_on_side_thread;
use crate::transfer::StagedFile;
use crate::worker::{CallOutput, OutputStream, WorkerCore};
use plugvisor_proto::wire;
use plugvisor_proto::{FileBacked, Plugin, PluginError, PluginStream, Value};
use std::io;
use std::path::Path;
use std::sync::Arc;

/// A plugin running in its own worker process, called through the same [`Plugin`] trait.
///
/// Made by [`crate::Host::spawn`]. This is one process with no restarts: once the worker has
/// died every call answers [`PluginError::WorkerCrashed`]; a [`crate::Supervisor`] restarts.
/// Dropping it stops the worker (shutdown request, SIGTERM, SIGKILL after the grace period;
/// always reaped); [`RemotePlugin::shutdown`] does the same and waits for it.
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

    /// What the plugin said about itself in `/v1/info`.
    pub fn identity(&self) -> &PluginIdentity {
        &self.core.identity
    }

    /// What the worker's sandbox really enforces, when it has one ([`WorkerSpec::sandbox`]).
    ///
    /// [`WorkerSpec::sandbox`]: crate::WorkerSpec::sandbox
    pub fn sandbox(&self) -> Option<&Enforced> {
        self.core.sandbox.as_ref()
    }

    /// The worker's process id.
    pub fn pid(&self) -> u32 {
        self.core.process.pid
    }

    /// The worker's resident memory (RSS) now, in bytes, read from `/proc`; `None` for a
    /// remote worker (its process is not on this machine) or one that has exited.
    pub fn resident_bytes(&self) -> Option<u64> {
        if self.core.process.is_remote() {
            return None;
        }
        crate::rss::rss_bytes(self.core.process.pid)
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

    /// Like [`Plugin::execute`], but hands the output's files to the caller as
    /// [`crate::OutputFile`]s.
    ///
    /// Through [`Plugin::execute`] output files stay in the transfer directory until the worker
    /// stops; use `call` to own (and [`persist`](crate::OutputFile::persist)) them.
    ///
    /// # Errors
    /// As [`Plugin::execute`]; also [`PluginError::Protocol`] when the worker returns a file
    /// reference outside its transfer directory.
    pub async fn call(&self, input: Value) -> Result<CallOutput, PluginError> {
        self.core.call(&input).await
    }

    /// Calls the plugin's named method `name` (`execute` is [`RemotePlugin::call`]); output
    /// files are handed to the caller as for `call`.
    ///
    /// # Errors
    /// As [`RemotePlugin::call`]; [`PluginError::Protocol`] (`not found: …`, naming its
    /// methods) when the plugin has no method `name`, [`PluginError::InvalidInput`] for a name
    /// no plugin may have.
    pub async fn call_method(&self, name: &str, input: Value) -> Result<CallOutput, PluginError> {
        self.core.call_method(name, &input).await
    }

    /// Forwards an HTTP request to one of the plugin's routes: `request`'s URI is the path
    /// below the plugin's mount point (`/hello?x=1`); bodies stream both ways.
    ///
    /// # Errors
    /// As for any call: the worker crashed or cannot be reached before it answered.
    pub async fn route(
        &self,
        request: http::Request<impl crate::RouteRequestBody>,
    ) -> Result<http::Response<crate::RouteBody>, PluginError> {
        self.core.route(request).await
    }

    /// Like [`Plugin::execute_stream`], but each item hands the files it references to the
    /// caller (as [`RemotePlugin::call`] does), deleted when the item is dropped unless
    /// persisted.
    ///
    /// # Errors
    /// As [`Plugin::execute_stream`]; an item referencing a file outside the transfer directory,
    /// or something that is not a regular file, is a [`PluginError::Protocol`] item.
    pub async fn stream(&self, input: Value) -> Result<OutputStream, PluginError> {
        self.core.stream(&input).await
    }

    /// Runs the worker's `before_request` middleware hook on `request`.
    ///
    /// # Errors
    /// As for any call; [`PluginError::Protocol`] when the plugin serves no such hook.
    pub async fn before_request(
        &self,
        request: &wire::HookRequest,
    ) -> Result<wire::BeforeAction, PluginError> {
        self.core.before_request(request).await
    }

    /// Runs the worker's `after_response` middleware hook on `exchange`.
    ///
    /// # Errors
    /// As [`RemotePlugin::before_request`].
    pub async fn after_response(
        &self,
        exchange: &wire::AfterResponse,
    ) -> Result<wire::HookResponse, PluginError> {
        self.core.after_response(exchange).await
    }

    /// Health as the worker reports it (never touches plugin code).
    ///
    /// # Errors
    /// As for any call: crashed, unavailable.
    pub async fn health(&self) -> Result<wire::HealthResponse, PluginError> {
        self.core.health().await
    }

    /// The worker's current configuration, asked over the socket.
    ///
    /// # Errors
    /// As for any call: crashed, unavailable.
    pub async fn fetch_config(&self) -> Result<Value, PluginError> {
        self.core.fetch_config().await
    }

    /// Stops the worker and waits until it is gone and its files are removed.
    pub async fn shutdown(self) {
        self.core.stop().await;
    }
}

impl Drop for RemotePlugin {
    fn drop(&mut self) {
        if self.core.is_stopped() {
            return;
        }
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
        &self.core.identity.name
    }

    fn version(&self) -> &str {
        &self.core.identity.version
    }

    async fn initialize(&self, config: Option<Value>) -> Result<(), PluginError> {
        self.core.initialize(config).await.map(drop)
    }

    async fn execute(&self, input: Value) -> Result<Value, PluginError> {
        let output = self.core.call(&input).await?;
        Ok(output.leave_files())
    }

    async fn execute_stream(&self, input: Value) -> Result<PluginStream, PluginError> {
        self.core.stream_values(&input).await
    }

    fn config_schema(&self) -> Value {
        self.core.identity.config_schema.clone()
    }

    /// The worker's current configuration. This trait method is synchronous, so it blocks the
    /// calling thread on the worker's answer; async code should prefer
    /// [`RemotePlugin::fetch_config`].
    fn current_config(&self) -> Value {
        let core = Arc::clone(&self.core);
        block_on_side_thread(async move { core.fetch_config().await.unwrap_or(Value::Null) })
    }

    async fn cleanup(&self) -> Result<(), PluginError> {
        self.core.cleanup().await
    }
}
