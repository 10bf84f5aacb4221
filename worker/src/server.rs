//! `serve`: the accept loop, one hyper connection task per client, and graceful shutdown.
//! With a plugin runtime, call connections are served there and control connections on the
//! server thread (see `lanes.rs`).
//!
//! Shutdown runs in this order: stop accepting and remove the socket file; ask every
//! connection to finish its current request and close; after the grace period drop whatever
//! still runs (which cancels the plugin calls); run `Plugin::cleanup` once, bounded in time.

use crate::builder::{Extensions, Worker};
use crate::error::WorkerError;
use crate::files;
use crate::lanes::{lane, read_head, Prefixed, Rehome};
use crate::listener::Listener;
use crate::offload::AbortOnDrop;
use crate::options::ServeOptions;
use crate::rewake::Rewake;
use crate::router;
use crate::routes::Routes;
use crate::state::{Counters, Shared};
use crate::transfer::TransferDir;
use crate::unwind::guarded;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use plugvisor_proto::wire::routes::Lane;
use plugvisor_proto::wire::InfoResponse;
use plugvisor_proto::Plugin;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::runtime::Handle;
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
    serve_with(listener, plugin, Extensions::default(), options, shutdown).await
}

/// [`serve`] for a plugin that also serves HTTP routes ([`Routes`]); short for
/// `Worker::shared(plugin).routes().serve(…)`.
///
/// # Errors
/// As [`serve`]; also [`WorkerError::Routes`] when the plugin's `routes()` panics.
pub async fn serve_routed<P: Plugin + Routes>(
    listener: Listener,
    plugin: Arc<P>,
    options: ServeOptions,
    shutdown: CancellationToken,
) -> Result<(), WorkerError> {
    Worker::shared(plugin)
        .routes()
        .serve(listener, options, shutdown)
        .await
}

impl<P: Plugin> Worker<P> {
    /// Serves in-process until `shutdown`, as [`serve`] does.
    ///
    /// # Errors
    /// As [`serve`]; also [`WorkerError::Routes`] or [`WorkerError::Hooks`] when the plugin's
    /// `routes()` or `hooks()` panics.
    pub async fn serve(
        self,
        listener: Listener,
        options: ServeOptions,
        shutdown: CancellationToken,
    ) -> Result<(), WorkerError> {
        let (plugin, extensions) = self.into_parts();
        serve_with(listener, plugin, extensions, options, shutdown).await
    }
}

pub(crate) async fn serve_with<P: Plugin>(
    listener: Listener,
    plugin: Arc<P>,
    extensions: Extensions,
    options: ServeOptions,
    shutdown: CancellationToken,
) -> Result<(), WorkerError> {
    serve_announced(listener, plugin, extensions, options, shutdown, |_| Ok(())).await
}

/// [`serve_with`], calling `announce` with what `/v1/info` answers (`None` when the plugin
/// panicked building it) once the plugin's state is built, before the first accept.
pub(crate) async fn serve_announced<P: Plugin>(
    listener: Listener,
    plugin: Arc<P>,
    extensions: Extensions,
    options: ServeOptions,
    shutdown: CancellationToken,
    announce: impl FnOnce(Option<InfoResponse>) -> Result<(), WorkerError>,
) -> Result<(), WorkerError> {
    let mut shared = shared_state(plugin, &options, shutdown)?;
    if let Some(routes) = extensions.routes {
        let specs = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| routes.specs()));
        shared.route_specs = specs.map_err(|_| WorkerError::Routes)?;
        shared.routes = Some(routes);
    }
    if let Some(middleware) = extensions.middleware {
        let hooks =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| middleware.declared()));
        shared.hooks = hooks.map_err(|_| WorkerError::Hooks)?;
        shared.middleware = Some(middleware);
    }
    if let Some(methods) = extensions.methods {
        let specs = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| methods.declared()));
        let specs = specs.map_err(|_| WorkerError::Methods("panicked".into()))?;
        shared.method_specs = specs.map_err(WorkerError::Methods)?;
        shared.methods = Some(methods);
    }
    shared.health_check = extensions.health_check;
    if let Some(events) = extensions.events {
        let names = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| events.declared()));
        let names = names.map_err(|_| WorkerError::Events("panicked".into()))?;
        shared.event_names = names.map_err(WorkerError::Events)?;
        shared.events = Some(events);
    }
    let shared = Arc::new(shared);
    if options.tls.is_some() && !matches!(listener, Listener::Tcp(_)) {
        return Err(WorkerError::Tls("TLS needs a tcp:// listener".into()));
    }
    announce(crate::handlers::info_response(&shared).ok())?;
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
    if let (true, Some(dir)) = (options.owns_transfer_dir, &options.transfer_dir) {
        if let Err(e) = std::fs::remove_dir_all(dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "could not remove the transfer directory");
        }
    }
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
        tls: options.tls.clone(),
        routes: None,
        route_specs: Vec::new(),
        middleware: None,
        hooks: Vec::new(),
        methods: None,
        method_specs: Vec::new(),
        health_check: None,
        events: None,
        event_names: Vec::new(),
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
            widen_send_buffer(&stream);
            spawn_connection(stream, shared, connections);
        }
        Listener::Tcp(listener) => {
            let (stream, peer) = listener.accept().await?;
            stream.set_nodelay(true)?;
            tracing::debug!(%peer, "tcp connection");
            match &shared.tls {
                Some(tls) => spawn_tls(stream, tls.clone(), shared, connections),
                None => spawn_connection(stream, shared, connections),
            }
        }
    }
    Ok(())
}

/// The send buffer asked for on a Unix connection (the kernel caps it at
/// `net.core.wmem_max`): a large answer goes out in one `sendmsg` instead of ≈ 200 KiB pieces
/// with a wake-up of each side between them. Memory is only used while data is in flight.
const SEND_BUFFER: usize = 4 << 20;

/// Asks for [`SEND_BUFFER`] on `stream`; a refusal leaves the default, which works too.
fn widen_send_buffer(stream: &tokio::net::UnixStream) {
    use nix::sys::socket::{setsockopt, sockopt::SndBuf};
    if let Err(e) = setsockopt(stream, SndBuf, &SEND_BUFFER) {
        tracing::debug!(error = %e, "send buffer not widened");
    }
}

/// Spawns the task of one connection: routed by its first request when there is a plugin
/// runtime (see `lanes.rs`), served here otherwise.
fn spawn_connection<P, S>(stream: S, shared: &Arc<Shared<P>>, connections: &mut JoinSet<()>)
where
    P: Plugin,
    S: Rehome + AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let shared = Arc::clone(shared);
    match shared.exec.clone() {
        Some(exec) => connections.spawn(routed(stream, shared, exec)),
        None => connections.spawn(connection(stream, shared)),
    };
}

/// Spawns the task of one TLS connection: the handshake, then HTTP on the server thread
/// (plugin work is offloaded to the plugin runtime, as on a control connection).
fn spawn_tls<P: Plugin>(
    stream: tokio::net::TcpStream,
    tls: crate::TlsServer,
    shared: &Arc<Shared<P>>,
    connections: &mut JoinSet<()>,
) {
    let shared = Arc::clone(shared);
    connections.spawn(async move {
        let peer = stream.peer_addr().ok();
        let handshake = tokio::select! {
            biased;
            () = shared.shutdown.cancelled() => return,
            handshake = tls.accept(stream) => handshake,
        };
        match handshake {
            Ok(stream) => connection(stream, shared).await,
            Err(e) => tracing::info!(?peer, error = %e, "TLS handshake failed"),
        }
    });
}

/// Serves a call connection on the plugin runtime `exec` (plugin code inline, no hand-off
/// per call) and any other connection here, on the server thread.
async fn routed<P, S>(mut stream: S, shared: Arc<Shared<P>>, exec: Handle)
where
    P: Plugin,
    S: Rehome + AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let head = tokio::select! {
        biased;
        () = shared.shutdown.cancelled() => return,
        head = read_head(&mut stream) => head,
    };
    let head = match head {
        Ok(head) if !head.is_empty() => head,
        Ok(_) => return,
        Err(e) => {
            tracing::debug!(error = %e, "connection failed before its first request");
            return;
        }
    };
    if lane(&head) == Lane::Control {
        return connection(Prefixed::new(head, stream), shared).await;
    }
    let std = match stream.into_std() {
        Ok(std) => std,
        Err(e) => {
            tracing::warn!(error = %e, "cannot move a connection to the plugin runtime");
            return;
        }
    };
    // Rewake: hyper wakes the connection's task while it answers; re-polling at once spares
    // the multi-thread runtime waking a sibling thread for every call (rewake.rs).
    let task = exec.spawn(Rewake::new(async move {
        match S::from_std(std) {
            Ok(stream) => connection(Prefixed::new(head, stream), shared).await,
            Err(e) => tracing::warn!(error = %e, "cannot serve a connection on the plugin runtime"),
        }
    }));
    // Aborting this task (shutdown past its grace period) aborts the connection with it.
    let mut task = AbortOnDrop(task);
    let _ = (&mut task.0).await;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::listener::ListenAddr;
    use plugvisor_proto::{PluginError, Value};
    use std::path::Path;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixStream;

    /// Blocks its thread (not only its task) in `execute` until released.
    struct Blocker(Arc<AtomicBool>);

    impl Plugin for Blocker {
        fn name(&self) -> &str {
            "blocker"
        }
        fn version(&self) -> &str {
            "0.0.0"
        }
        async fn execute(&self, _input: Value) -> Result<Value, PluginError> {
            while !self.0.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(1));
            }
            Ok(Value::from("released"))
        }
    }

    async fn send(conn: &mut UnixStream, method: &str, path: &str, body: &str) {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nhost: w\r\nauthorization: Bearer t\r\n\
             content-length: {}\r\n\r\n{body}",
            body.len()
        );
        conn.write_all(head.as_bytes()).await.unwrap();
    }

    /// Reads one answer with a `content-length` body; returns its body.
    async fn answer(conn: &mut UnixStream) -> String {
        let mut buf = Vec::new();
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 1024];
            let n = conn.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the connection closed");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        while buf.len() < end + length {
            let mut chunk = [0u8; 1024];
            let n = conn.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the connection closed");
            buf.extend_from_slice(&chunk[..n]);
        }
        String::from_utf8(buf[end..end + length].to_vec()).unwrap()
    }

    async fn in_flight(control: &mut UnixStream) -> u64 {
        send(control, "GET", "/v1/health", "").await;
        let within = Duration::from_secs(2);
        let body = tokio::time::timeout(within, answer(control))
            .await
            .expect("health answers while plugin code blocks");
        let health: Value = serde_json::from_str(&body).unwrap();
        health["in_flight"].as_u64().unwrap()
    }

    async fn scenario(socket: &Path, plugins: Handle, release: Arc<AtomicBool>) {
        let listener = Listener::bind(&ListenAddr::Unix(socket.to_path_buf()))
            .await
            .unwrap();
        let shutdown = CancellationToken::new();
        let options = ServeOptions::new("t").with_plugin_runtime(plugins);
        let plugin = Arc::new(Blocker(Arc::clone(&release)));
        let serving = tokio::spawn(serve(listener, plugin, options, shutdown.clone()));
        // A call connection: served on the plugin runtime, whose only thread the call blocks.
        let mut call = UnixStream::connect(socket).await.unwrap();
        send(&mut call, "POST", "/v1/execute", r#"{"input":null}"#).await;
        // A control connection: served on the server thread, so health still answers.
        let mut control = UnixStream::connect(socket).await.unwrap();
        while in_flight(&mut control).await == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(in_flight(&mut control).await, 1, "still blocked");
        release.store(true, Ordering::Release);
        assert_eq!(answer(&mut call).await, r#"{"output":"released"}"#);
        shutdown.cancel();
        serving.await.unwrap().unwrap();
    }

    #[test]
    fn health_answers_on_a_control_connection_while_a_call_blocks_every_plugin_thread() {
        let plugins = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let server = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("w.sock");
        let release = Arc::new(AtomicBool::new(false));
        server.block_on(scenario(&socket, plugins.handle().clone(), release));
        plugins.shutdown_timeout(Duration::from_secs(1));
    }
}
