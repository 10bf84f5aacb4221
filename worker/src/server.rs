//! `serve`: the accept loop, one hyper connection task per client, and graceful shutdown.
//!
//! Shutdown runs in this order: stop accepting and remove the socket file; ask every
//! connection to finish its current request and close; after the grace period drop whatever
//! still runs (which cancels the plugin calls); run `Plugin::cleanup` once, bounded in time.

use crate::error::WorkerError;
use crate::files;
use crate::listener::Listener;
use crate::options::ServeOptions;
use crate::router;
use crate::state::{Counters, Shared};
use crate::transfer::TransferDir;
use crate::unwind::guarded;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use plugvisor_proto::Plugin;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Serves `plugin` on `listener` until `shutdown` is cancelled (or `POST /v1/shutdown`).
///
/// Use it in-process (tests, benchmarks); worker binaries call [`run`](crate::run), which
/// adds argument parsing, the handshake and the shutdown triggers around it. When `options`
/// names a transfer directory it also becomes [`files::transfer_dir`] for plugin code (the
/// first one in a process wins).
///
/// ```no_run
/// # async fn demo(plugin: std::sync::Arc<impl plugvisor_proto::Plugin>) -> Result<(), plugvisor_worker::WorkerError> {
/// use plugvisor_worker::{serve, ListenAddr, Listener, ServeOptions};
/// use tokio_util::sync::CancellationToken;
///
/// let listener = Listener::bind(&"unix:/tmp/echo.sock".parse()?).await?;
/// let shutdown = CancellationToken::new();
/// serve(listener, plugin, ServeOptions::new("token"), shutdown.clone()).await
/// # }
/// ```
///
/// # Errors
/// [`WorkerError::MissingToken`] for an empty token, [`WorkerError::TransferDir`] when the
/// transfer directory cannot be opened. Once serving, errors of single connections are
/// logged, never returned.
///
/// # Cancel safety
/// Dropping the future drops every connection and in-flight call without running cleanup;
/// cancel `shutdown` instead to stop gracefully.
pub async fn serve<P: Plugin>(
    listener: Listener,
    plugin: Arc<P>,
    options: ServeOptions,
    shutdown: CancellationToken,
) -> Result<(), WorkerError> {
    let shared = Arc::new(shared_state(plugin, &options, shutdown)?);
    let socket_path = listener.socket_path();
    tracing::info!(plugin = shared.plugin.name(), "serving");
    let mut connections = JoinSet::new();
    accept_until_shutdown(&listener, &shared, &mut connections).await;
    drop(listener);
    if let Some(path) = socket_path {
        remove_socket_file(&path);
    }
    drain(&mut connections, options.grace).await;
    cleanup(&shared, options.cleanup_timeout).await;
    tracing::info!("stopped");
    Ok(())
}

/// Checks the options and builds the state all connections share.
fn shared_state<P: Plugin>(
    plugin: Arc<P>,
    options: &ServeOptions,
    shutdown: CancellationToken,
) -> Result<Shared<P>, WorkerError> {
    if options.token.is_empty() {
        return Err(WorkerError::MissingToken("the token is empty".into()));
    }
    let transfer = match &options.transfer_dir {
        Some(path) => {
            let open_err = |source| WorkerError::TransferDir {
                path: path.clone(),
                source,
            };
            files::install(path).map_err(open_err)?;
            Some(TransferDir::open(path).map_err(open_err)?)
        }
        None => None,
    };
    Ok(Shared {
        plugin,
        expected_auth: format!("Bearer {}", options.token).into_bytes(),
        transfer,
        max_body: options.max_body,
        shutdown,
        counters: Arc::new(Counters::default()),
        cleaned: AtomicBool::new(false),
        exec: options.plugin_runtime.clone(),
    })
}

/// Accepts connections and spawns a task for each until shutdown begins.
async fn accept_until_shutdown<P: Plugin>(
    listener: &Listener,
    shared: &Arc<Shared<P>>,
    connections: &mut JoinSet<()>,
) {
    loop {
        let accepted = tokio::select! {
            biased;
            () = shared.shutdown.cancelled() => return,
            accepted = accept(listener, shared, connections) => accepted,
        };
        if let Err(e) = accepted {
            // Typically EMFILE: back off briefly instead of spinning.
            tracing::warn!(error = %e, "accept failed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        while connections.try_join_next().is_some() {}
    }
}

/// Accepts one connection and spawns its task.
///
/// # Cancel safety
/// Cancel-safe: tokio's `accept` is, and the spawn happens after it returns.
async fn accept<P: Plugin>(
    listener: &Listener,
    shared: &Arc<Shared<P>>,
    connections: &mut JoinSet<()>,
) -> io::Result<()> {
    match listener {
        Listener::Unix(listener) => {
            let (stream, _) = listener.accept().await?;
            connections.spawn(connection(stream, Arc::clone(shared)));
        }
        Listener::Tcp(listener) => {
            let (stream, peer) = listener.accept().await?;
            stream.set_nodelay(true)?;
            tracing::debug!(%peer, "tcp connection");
            connections.spawn(connection(stream, Arc::clone(shared)));
        }
    }
    Ok(())
}

/// Serves HTTP/1.1 on one connection until the client leaves or shutdown completes it.
async fn connection<P, S>(stream: S, shared: Arc<Shared<P>>)
where
    P: Plugin,
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let shutdown = shared.shutdown.clone();
    let service = service_fn(move |req| router::handle(Arc::clone(&shared), req));
    let conn = http1::Builder::new()
        .keep_alive(true)
        .half_close(false)
        .header_read_timeout(None)
        .serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// Waits up to `grace` for the connections to finish, then drops the rest.
async fn drain(connections: &mut JoinSet<()>, grace: Duration) {
    let all_done = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(grace, all_done).await.is_ok() {
        return;
    }
    tracing::warn!(
        remaining = connections.len(),
        "grace period over; dropping the calls still running"
    );
    connections.abort_all();
    while connections.join_next().await.is_some() {}
}

/// Runs `Plugin::cleanup` once (unless `/v1/cleanup` already did), bounded by `limit`.
async fn cleanup<P: Plugin>(shared: &Shared<P>, limit: Duration) {
    if shared.cleaned.swap(true, Ordering::AcqRel) {
        return;
    }
    match tokio::time::timeout(limit, guarded(shared.plugin.cleanup())).await {
        Ok(Ok(())) => tracing::debug!("plugin cleaned up"),
        Ok(Err(e)) => tracing::warn!(error = %e, "plugin cleanup failed"),
        Err(_) => tracing::warn!(?limit, "plugin cleanup timed out"),
    }
}

/// Removes the socket file; a missing file is fine.
pub(crate) fn remove_socket_file(path: &std::path::Path) {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove the socket file");
        }
        _ => {}
    }
}
