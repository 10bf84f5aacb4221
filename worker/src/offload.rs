//! Running plugin code away from the server thread, so a plugin that blocks its threads cannot
//! stop the worker from answering health probes.
//!
//! A worker started by `run` has two runtimes: the server's (one thread) and the plugin's.
//! Call connections are served on the plugin runtime entirely (see `lanes.rs`), so plugin
//! code they run is already there: [`offload`] runs it inline. Plugin work asked for on a
//! control connection, which stays on the server thread, is spawned onto the plugin runtime
//! ([`offload`], [`PumpedBody`] for streams).
//!
//! So plugin code never runs on the server thread, and `/v1/health` on a control connection
//! (the host probes on one) answers even while plugin code blocks every plugin thread.
//! Without a plugin runtime (in-process [`crate::serve`] by default), everything runs inline.

use crate::ndjson::NdjsonBody;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame};
use plugvisor_proto::PluginError;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Streamed chunks buffered between the plugin runtime and the connection (each ≤ 64 KiB).
const PUMP_DEPTH: usize = 4;

/// Aborts the task when dropped: a dropped request cancels the plugin's work.
pub(crate) struct AbortOnDrop<T>(pub(crate) JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// True when the current thread is one of `exec`'s (a call connection's task).
pub(crate) fn on_runtime(exec: &Handle) -> bool {
    Handle::try_current().is_ok_and(|current| current.id() == exec.id())
}

/// Runs `work` on `exec` and returns its output; inline without a plugin runtime or when
/// already on it.
///
/// # Cancel safety
/// Dropping the returned future aborts (or drops) the plugin's work.
pub(crate) async fn offload<T, F>(exec: Option<&Handle>, work: F) -> Result<T, PluginError>
where
    T: Send + 'static,
    F: Future<Output = T> + Send + 'static,
{
    let Some(exec) = exec.filter(|exec| !on_runtime(exec)) else {
        return Ok(work.await);
    };
    let mut task = AbortOnDrop(exec.spawn(work));
    (&mut task.0)
        .await
        .map_err(|e| PluginError::Failed(format!("the plugin task ended abnormally: {e}")))
}

/// A streamed answer whose frames are produced on the plugin runtime.
pub(crate) struct PumpedBody {
    chunks: mpsc::Receiver<Bytes>,
    _pump: AbortOnDrop<()>,
}

impl PumpedBody {
    /// Drives `body` (the plugin stream and its NDJSON encoding) on `exec`.
    pub(crate) fn new(mut body: NdjsonBody, exec: &Handle) -> Self {
        let (tx, chunks) = mpsc::channel(PUMP_DEPTH);
        let pump = exec.spawn(async move {
            while let Some(Ok(frame)) = body.frame().await {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                if tx.send(data).await.is_err() {
                    break;
                }
            }
        });
        Self {
            chunks,
            _pump: AbortOnDrop(pump),
        }
    }
}

impl Body for PumpedBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.get_mut()
            .chunks
            .poll_recv(cx)
            .map(|chunk| chunk.map(|data| Ok(Frame::data(data))))
    }
}
