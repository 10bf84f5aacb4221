//! Panic containment: a panicking plugin becomes a `plugin_failed` error, never a dead worker;
//! and a worker reports only its own errors (an inner call's crash is the plugin's failure).

use futures_util::FutureExt;
use plugvisor_proto::PluginError;
use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;

/// Runs a plugin future, turning a panic inside it into [`PluginError::Failed`].
pub(crate) async fn guarded<T>(
    future: impl Future<Output = Result<T, PluginError>>,
) -> Result<T, PluginError> {
    match AssertUnwindSafe(future).catch_unwind().await {
        Ok(result) => result.map_err(own),
        Err(payload) => Err(panicked(payload.as_ref())),
    }
}

/// The error as this worker may report it. `worker_crashed` is the host's to say about this
/// worker, so a plugin passing on another worker's crash (a service call's) reports it as its
/// own failure: otherwise the host would take this live worker for dead (and retry an
/// idempotent call elsewhere).
pub(crate) fn own(err: PluginError) -> PluginError {
    match err {
        PluginError::WorkerCrashed(_) => PluginError::Failed(err.to_string()),
        other => other,
    }
}

/// Runs synchronous plugin code, turning a panic into [`PluginError::Failed`].
pub(crate) fn guarded_sync<T>(f: impl FnOnce() -> T) -> Result<T, PluginError> {
    std::panic::catch_unwind(AssertUnwindSafe(f)).map_err(|payload| panicked(payload.as_ref()))
}

/// The error for a caught panic, quoting its message.
pub(crate) fn panicked(payload: &(dyn Any + Send)) -> PluginError {
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string panic payload".to_owned());
    tracing::error!(%message, "the plugin panicked");
    PluginError::Failed(format!("the plugin panicked: {message}"))
}
