//! The HTTP/1.1 client that talks to one worker: small pools of kept-alive connections.
//!
//! Every call leases a connection (reusing an idle one, else dialling a new one) and gives it
//! back only once the response body has been read to its end. A lease dropped before that (the
//! caller dropped the call future or the result stream) aborts the connection's task, which
//! closes the socket: that is how a cancelled call reaches the worker.
//!
//! Connections come in two lanes that never mix ([`Lane`], the rule written once in the
//! protocol crate): *call* connections carry requests that run plugin code (`initialize`,
//! `execute`, `execute_stream`, `cleanup`) and *control* connections everything else
//! (`health`, `info`, `config`, `shutdown`). A worker serves a connection on the thread its
//! first request calls for: call connections on the plugin's runtime (no hand-off per call),
//! control connections on its server thread, which plugin code never blocks, so health probes
//! answer even while the plugin is stuck.

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use http::{HeaderName, HeaderValue, Method, Request, Response, Uri};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use plugvisor_proto::wire::routes::{self, Lane};
use plugvisor_proto::wire::services::CALL_CONTEXT_HEADER;
use plugvisor_proto::wire::trace::TRACEPARENT_HEADER;
use plugvisor_proto::wire::Transport;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};
use tokio::task::JoinHandle;

/// `Host` of every request to a worker.
const HOST_VALUE: HeaderValue = HeaderValue::from_static("plugvisor");
/// `Content-Type` of every protocol request.
const APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");
/// The call-context header, parsed once.
const CALL_CONTEXT: HeaderName = HeaderName::from_static(CALL_CONTEXT_HEADER);
/// The `traceparent` header, parsed once.
const TRACEPARENT: HeaderName = HeaderName::from_static(TRACEPARENT_HEADER);

/// The URIs of the calls, parsed once (a `Uri` clone of a static path copies no bytes).
static CALL_URIS: std::sync::LazyLock<[(&str, Uri); 2]> = std::sync::LazyLock::new(|| {
    [routes::EXECUTE, routes::EXECUTE_STREAM].map(|path| (path, Uri::from_static(path)))
});

/// The URI of `path`: a call's from [`CALL_URIS`], any other parsed.
fn uri_of(path: &str) -> Result<Uri, http::Error> {
    if let Some((_, uri)) = CALL_URIS.iter().find(|(p, _)| *p == path) {
        return Ok(uri.clone());
    }
    Ok(Uri::try_from(path)?)
}

/// Idle connections kept per worker; more concurrent calls dial extra connections.
const MAX_IDLE: usize = 64;

/// Why a request did not get a response.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClientError {
    /// The worker's address could not be reached.
    #[error("cannot connect to the worker")]
    Connect(#[source] std::io::Error),
    /// The TLS handshake with a remote worker failed (its certificate, or ours).
    #[error("TLS handshake with the worker failed")]
    Tls(#[source] std::io::Error),
    /// The connection failed mid-request (typically: the worker died).
    #[error("connection to the worker failed")]
    Http(#[from] hyper::Error),
    /// The request could not be built (a bug, reported rather than panicking).
    #[error("cannot build the request")]
    Build(#[from] http::Error),
}

/// A request body: a complete one (every protocol request) or a streamed one (plugin routes).
pub(crate) enum ReqBody {
    Full(Full<Bytes>),
    Streamed(UnsyncBoxBody<Bytes, BoxError>),
}

impl hyper::body::Body for ReqBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Self::Full(body) => std::pin::Pin::new(body)
                .poll_frame(cx)
                .map_err(|never| match never {}),
            Self::Streamed(body) => std::pin::Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Full(body) => body.is_end_stream(),
            Self::Streamed(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            Self::Full(body) => body.size_hint(),
            Self::Streamed(body) => body.size_hint(),
        }
    }
}

/// Errors of a streamed request body.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

struct Conn {
    sender: SendRequest<ReqBody>,
    task: JoinHandle<()>,
}

/// Pools of connections to one worker, with its bearer token.
pub(crate) struct WorkerClient {
    transport: Transport,
    /// TLS over the TCP transport (remote workers).
    tls: Option<crate::tls::TlsClient>,
    auth: HeaderValue,
    idle: [Mutex<Vec<Conn>>; 2],
    /// Every connection's task, for [`WorkerClient::abort_all`] (finished ones are pruned
    /// on each dial).
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
}

/// The index of `lane`'s pool in [`WorkerClient::idle`].
fn slot(lane: Lane) -> usize {
    match lane {
        Lane::Call => 0,
        Lane::Control => 1,
    }
}

impl std::fmt::Debug for WorkerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token is deliberately left out.
        f.debug_struct("WorkerClient")
            .field("transport", &self.transport)
            .finish_non_exhaustive()
    }
}

impl WorkerClient {
    /// A client for the worker at `transport`, authenticating with `token`.
    pub(crate) fn new(transport: Transport, token: &str) -> Result<Self, http::Error> {
        let mut auth = HeaderValue::try_from(format!("Bearer {token}"))?;
        auth.set_sensitive(true);
        Ok(Self {
            transport,
            tls: None,
            auth,
            idle: [Mutex::new(Vec::new()), Mutex::new(Vec::new())],
            tasks: Mutex::new(Vec::new()),
        })
    }

    /// The same client, speaking TLS over its TCP transport when `tls` is given.
    pub(crate) fn with_tls(mut self, tls: Option<crate::tls::TlsClient>) -> Self {
        self.tls = tls;
        self
    }

    /// Sends one request and returns the response head plus the lease on its connection.
    ///
    /// The request is built field by field, not with `Request::builder` (whose checked
    /// steps, a header name parsed from a string for each header removed, and the `Uri`
    /// parsed anew each time cost ≈ 3,400 instructions of a small call's ≈ 30,000).
    ///
    /// # Cancel safety
    /// Dropping the future closes the connection it was using, which cancels the work in the
    /// worker; no other call is affected.
    pub(crate) async fn send(
        self: &Arc<Self>,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<(Response<Incoming>, Lease), ClientError> {
        let mut request = Request::new(ReqBody::Full(Full::new(body)));
        *request.method_mut() = method;
        *request.uri_mut() = uri_of(path)?;
        let headers = request.headers_mut();
        headers.reserve(4);
        headers.insert(HOST, HOST_VALUE);
        headers.insert(AUTHORIZATION, self.auth.clone());
        headers.insert(CONTENT_TYPE, APPLICATION_JSON);
        // The host's own request: no call context or trace of anyone else's to drop.
        if let Some(context) = crate::call_context::current() {
            headers.insert(CALL_CONTEXT, context.to_header());
        }
        if let Some(trace) = crate::trace::outgoing_own() {
            headers.insert(TRACEPARENT, trace);
        }
        self.dispatch(request).await
    }

    /// Sends `request` as it is, with the worker's `Host` and token set (a plugin route's
    /// forwarded request, its body streamed).
    ///
    /// # Cancel safety
    /// As [`WorkerClient::send`].
    pub(crate) async fn send_request(
        self: &Arc<Self>,
        mut request: Request<ReqBody>,
    ) -> Result<(Response<Incoming>, Lease), ClientError> {
        let headers = request.headers_mut();
        headers.insert(HOST, HOST_VALUE);
        headers.insert(AUTHORIZATION, self.auth.clone());
        // Only the host names a call context: one a route's client sent is dropped.
        match crate::call_context::current() {
            Some(context) => headers.insert(CALL_CONTEXT, context.to_header()),
            None => headers.remove(CALL_CONTEXT),
        };
        match crate::trace::outgoing(headers) {
            Some(trace) => headers.insert(TRACEPARENT, trace),
            None => headers.remove(TRACEPARENT),
        };
        self.dispatch(request).await
    }

    /// Sends a finished request on a leased connection of its lane.
    async fn dispatch(
        self: &Arc<Self>,
        request: Request<ReqBody>,
    ) -> Result<(Response<Incoming>, Lease), ClientError> {
        let lane = Lane::of(request.method() == Method::GET, request.uri().path());
        let mut lease = Lease {
            conn: Some(self.checkout(lane).await?),
            client: Arc::clone(self),
            lane,
            finished: false,
        };
        let conn = lease
            .conn
            .as_mut()
            .ok_or_else(|| ClientError::Connect(gone()))?;
        let response = conn.sender.send_request(request).await?;
        Ok((response, lease))
    }

    async fn checkout(&self, lane: Lane) -> Result<Conn, ClientError> {
        while let Some(mut conn) = self.pop_idle(lane) {
            if conn.sender.ready().await.is_ok() {
                return Ok(conn);
            }
            conn.task.abort();
        }
        self.dial().await
    }

    fn pop_idle(&self, lane: Lane) -> Option<Conn> {
        self.idle[slot(lane)].lock().ok()?.pop()
    }

    fn checkin(&self, lane: Lane, conn: Conn) {
        if conn.sender.is_closed() {
            conn.task.abort();
            return;
        }
        match self.idle[slot(lane)].lock() {
            Ok(mut idle) if idle.len() < MAX_IDLE => idle.push(conn),
            _ => conn.task.abort(),
        }
    }

    async fn dial(&self) -> Result<Conn, ClientError> {
        // Boxed: dialling (a TLS handshake among its states) is rare and its future large;
        // inline, every call's future carried its size and was copied with it.
        let conn = Box::pin(self.dial_new()).await?;
        if let Ok(mut tasks) = self.tasks.lock() {
            tasks.retain(|t| !t.is_finished());
            tasks.push(conn.task.abort_handle());
        }
        Ok(conn)
    }

    /// Ends every connection, idle or in use: their requests fail at once. For a remote
    /// worker whose link was lost: a request on a partitioned TCP connection would otherwise
    /// wait for an answer that never comes (a local worker's exit closes its sockets itself).
    pub(crate) fn abort_all(&self) {
        self.close_idle();
        if let Ok(mut tasks) = self.tasks.lock() {
            tasks.drain(..).for_each(|t| t.abort());
        }
    }

    async fn dial_new(&self) -> Result<Conn, ClientError> {
        match &self.transport {
            Transport::Unix(path) => {
                let stream = UnixStream::connect(path)
                    .await
                    .map_err(ClientError::Connect)?;
                widen_send_buffer(&stream);
                handshake(stream).await
            }
            Transport::Tcp(addr) => {
                let stream = TcpStream::connect(addr)
                    .await
                    .map_err(ClientError::Connect)?;
                stream.set_nodelay(true).map_err(ClientError::Connect)?;
                match &self.tls {
                    Some(tls) => {
                        handshake(tls.connect(stream).await.map_err(ClientError::Tls)?).await
                    }
                    None => handshake(stream).await,
                }
            }
        }
    }

    /// Closes every idle connection.
    pub(crate) fn close_idle(&self) {
        for lane in &self.idle {
            if let Ok(mut idle) = lane.lock() {
                for conn in idle.drain(..) {
                    conn.task.abort();
                }
            }
        }
    }
}

impl Drop for WorkerClient {
    fn drop(&mut self) {
        self.close_idle();
    }
}

/// The send buffer asked for on a Unix call connection (the kernel caps it at
/// `net.core.wmem_max`): a 1 MiB body goes out in one `sendmsg` instead of ≈ 200 KiB pieces
/// with a wake-up of each side between them. Memory is only used while data is in flight.
const SEND_BUFFER: usize = 4 << 20;

/// Asks for [`SEND_BUFFER`] on `stream`; a refusal leaves the default, which works too.
fn widen_send_buffer(stream: &UnixStream) {
    use nix::sys::socket::{setsockopt, sockopt::SndBuf};
    if let Err(e) = setsockopt(stream, SndBuf, &SEND_BUFFER) {
        tracing::debug!(error = %e, "send buffer not widened");
    }
}

async fn handshake<S>(stream: S) -> Result<Conn, ClientError>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
    let task = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "worker connection ended");
        }
    });
    Ok(Conn { sender, task })
}

fn gone() -> std::io::Error {
    std::io::Error::other("connection lease already released")
}

/// A connection on loan to one request. Give it back with [`Lease::finish`] once the response
/// body has been read to its end; dropping it unfinished closes the connection.
pub(crate) struct Lease {
    conn: Option<Conn>,
    client: Arc<WorkerClient>,
    lane: Lane,
    finished: bool,
}

impl Lease {
    /// Marks the exchange complete, so the connection returns to the pool when dropped.
    pub(crate) fn finish(&mut self) {
        self.finished = true;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        if self.finished {
            self.client.checkin(self.lane, conn);
        } else {
            conn.task.abort();
        }
    }
}
