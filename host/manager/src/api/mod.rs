//! The management REST API over a [`PluginManager`]: list, load, configure, reload, unload and
//! call plugins over HTTP/1.1 with JSON bodies (routes and status codes: `docs/API.md`).
//!
//! - `mod.rs`: [`serve_api`] (accept loop, connections, graceful shutdown), [`ApiOptions`],
//!   [`check_bind`];
//! - `routes.rs`: the route table and path matching (404 / 405);
//! - `handlers.rs`: one function per route;
//! - `request.rs`: authentication, body limits and timeouts, JSON parsing;
//! - `reply.rs`: JSON and text answers;
//! - `errors.rs`: `ApiError` and the status of every manager and plugin error;
//! - `guard.rs`: the `Host` and `Origin` checks that keep web pages out;
//! - `files.rs`: uploads, downloads, and the paths clients may name;
//! - `middleware.rs`: the chain of middleware plugins around the call routes and plugin
//!   routes (`before_request`, `after_response`);
//! - `streams.rs`: the NDJSON answers (`execute_stream`, `events`);
//! - `health.rs`: the health-check document;
//! - `openapi.rs`: the OpenAPI document, built from the route table;
//! - `ui/`: the status page (`GET /`) and UI plugins' assets (`/ui/plugins/<plugin>/…`).

mod errors;
mod execute;
mod files;
mod guard;
mod handlers;
mod health;
mod middleware;
mod openapi;
mod plugin_routes;
mod reply;
mod request;
mod routes;
mod streams;
mod ui;

use crate::PluginManager;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

pub use files::{FileOptions, DOWNLOAD_TAG, UPLOAD_TAG};
pub use guard::BrowserPolicy;
pub use openapi::{openapi_document, openapi_with_routes};
pub use tokio_util::sync::CancellationToken;

/// The port the API listens on by default, on `127.0.0.1`.
pub const DEFAULT_PORT: u16 = 8620;

/// Largest request body accepted by default (1 MiB).
pub const DEFAULT_MAX_BODY: usize = 1 << 20;

/// How long a client may take to send a request's head or body by default.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// After shutdown is requested, how long open connections may finish their answers.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Settings of the API server.
#[derive(Clone)]
pub struct ApiOptions {
    /// When set, every route requires `Authorization: Bearer <token>` (else 401).
    pub token: Option<String>,
    /// Largest request body in bytes (else 413). Default 1 MiB.
    pub max_body: usize,
    /// How long a client may take to send a request's head, and its body (else the
    /// connection is closed, or 408); for uploads, the longest pause between two pieces of
    /// the body. Default 10 s.
    pub read_timeout: Duration,
    /// Extra host names and origins browsers may use (see [`BrowserPolicy`]).
    pub browser: BrowserPolicy,
    /// Uploads, downloads and the paths clients may name (see [`FileOptions`]).
    pub files: FileOptions,
}

impl Default for ApiOptions {
    fn default() -> Self {
        Self {
            token: None,
            max_body: DEFAULT_MAX_BODY,
            read_timeout: DEFAULT_READ_TIMEOUT,
            browser: BrowserPolicy::default(),
            files: FileOptions::default(),
        }
    }
}

impl std::fmt::Debug for ApiOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiOptions")
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("max_body", &self.max_body)
            .field("read_timeout", &self.read_timeout)
            .field("browser", &self.browser)
            .field("files", &self.files)
            .finish()
    }
}

/// Checks that the API may listen on `addr`: a token, if given, must not be empty, and an
/// address other than loopback (`127.0.0.0/8`, `::1`) requires one.
///
/// # Errors
/// [`BindError`], saying what is wrong and how to fix it.
pub fn check_bind(addr: &SocketAddr, token: Option<&str>) -> Result<(), BindError> {
    match token {
        Some(t) if t.trim().is_empty() => Err(BindError::EmptyToken),
        Some(_) => Ok(()),
        None if addr.ip().is_loopback() => Ok(()),
        None => Err(BindError::TokenRequired(*addr)),
    }
}

/// Why the API may not listen where it was asked to (see [`check_bind`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BindError {
    /// A token was given but it is empty.
    #[error("the API token must not be empty")]
    EmptyToken,
    /// The address is not loopback and no token was given.
    #[error(
        "refusing to serve the API on {0} without a token: it is not a loopback address; \
         set a token or bind 127.0.0.1"
    )]
    TokenRequired(SocketAddr),
}

/// What every connection shares.
pub(crate) struct Ctx {
    pub(crate) manager: PluginManager,
    pub(crate) options: ApiOptions,
    pub(crate) files: Arc<files::FileStore>,
    pub(crate) shutdown: CancellationToken,
}

/// Serves the API on `listener` until `shutdown` is cancelled, then stops accepting, ends the
/// event streams, lets open answers finish (at most 5 s) and returns. The manager is not shut
/// down: that is the caller's.
///
/// Files uploaded by clients and files of answers waiting for download live in the host's
/// directory until used, fetched or expired, and are all removed when this returns.
///
/// # Errors
/// An empty token ([`std::io::ErrorKind::InvalidInput`]), a `--file-root` that does not exist,
/// or a file store that cannot be made. Failed accepts are logged and retried, never
/// returned.
pub async fn serve_api(
    listener: TcpListener,
    manager: PluginManager,
    options: ApiOptions,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    if options.token.as_deref().is_some_and(|t| t.is_empty()) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the API token must not be empty",
        ));
    }
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, auth = options.token.is_some(), "management API listening");
    }
    let store_dir = manager.host().dir().join("api-files");
    let files = Arc::new(files::FileStore::new(store_dir, options.files.clone())?);
    let ctx = Arc::new(Ctx {
        manager,
        options,
        files,
        shutdown: shutdown.clone(),
    });
    let sweeper = tokio::spawn(sweep_files(Arc::clone(&ctx)));
    let mut connections = JoinSet::new();
    accept_loop(&listener, &ctx, &mut connections).await;
    drop(listener);
    finish_connections(connections).await;
    sweeper.abort();
    let _ = sweeper.await;
    ctx.files.clear();
    Ok(())
}

/// Deletes expired uploads and downloads until shutdown.
async fn sweep_files(ctx: Arc<Ctx>) {
    let mut tick = tokio::time::interval(ctx.files.sweep_interval());
    loop {
        tokio::select! {
            () = ctx.shutdown.cancelled() => return,
            _ = tick.tick() => ctx.files.sweep(),
        }
    }
}

/// Accepts connections until shutdown, each served on a task of its own.
async fn accept_loop(listener: &TcpListener, ctx: &Arc<Ctx>, connections: &mut JoinSet<()>) {
    loop {
        let accepted = tokio::select! {
            () = ctx.shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        while connections.try_join_next().is_some() {}
        match accepted {
            Ok((stream, peer)) => {
                connections.spawn(serve_connection(stream, peer, Arc::clone(ctx)));
            }
            Err(e) => {
                // Out of fds or similar: wait a little instead of spinning.
                tracing::warn!(error = %e, "accepting an API connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Waits for open connections to finish their answers, then drops the rest.
async fn finish_connections(mut connections: JoinSet<()>) {
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open = connections.len(),
            "API connections still busy at shutdown; closing them"
        );
        connections.shutdown().await;
    }
}

/// Serves one connection: HTTP/1.1 with keep-alive, a deadline for each request head, and a
/// graceful close on shutdown.
async fn serve_connection(stream: TcpStream, peer: SocketAddr, ctx: Arc<Ctx>) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "TCP_NODELAY could not be set");
    }
    let shutdown = ctx.shutdown.clone();
    let read_timeout = ctx.options.read_timeout;
    let service = service_fn(move |req| {
        let ctx = Arc::clone(&ctx);
        async move { Ok::<_, std::convert::Infallible>(handlers::handle(ctx, req, peer).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(read_timeout)
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
        tracing::debug!(%peer, error = %e, "API connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_goes_without_a_token() {
        let local: SocketAddr = "127.0.0.1:8620".parse().unwrap();
        let local6: SocketAddr = "[::1]:8620".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:8620".parse().unwrap();
        assert!(check_bind(&local, None).is_ok());
        assert!(check_bind(&local6, None).is_ok());
        let refused = check_bind(&any, None).unwrap_err();
        assert_eq!(refused, BindError::TokenRequired(any));
        assert!(refused.to_string().contains("token"), "{refused}");
        assert!(check_bind(&any, Some("s3cret")).is_ok());
        assert_eq!(check_bind(&local, Some(" ")), Err(BindError::EmptyToken));
    }

    #[tokio::test]
    async fn an_empty_token_is_refused() {
        let base = tempfile::tempdir().unwrap();
        let manager = PluginManager::new(crate::ManagerConfig {
            host: plugvisor_host::HostConfig {
                base_dir: Some(base.path().to_path_buf()),
            },
            ..Default::default()
        })
        .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let options = ApiOptions {
            token: Some(String::new()),
            ..ApiOptions::default()
        };
        let served = serve_api(listener, manager.clone(), options, CancellationToken::new()).await;
        assert_eq!(served.unwrap_err().kind(), std::io::ErrorKind::InvalidInput);
        manager.shutdown().await;
    }

    #[test]
    fn debug_hides_the_token() {
        let options = ApiOptions {
            token: Some("s3cret".into()),
            ..ApiOptions::default()
        };
        let shown = format!("{options:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert_eq!(options.max_body, 1 << 20);
        assert_eq!(options.read_timeout, Duration::from_secs(10));
    }
}
