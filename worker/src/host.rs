//! Calling the host back: [`host()`] is this worker's client for the services other plugins
//! provide (`POST /v1/services/<service>` on the host's Unix socket), and the call context
//! that lets the host follow a chain of nested calls.
//!
//! The host gives the endpoint and a token to plugins whose manifest lists `requires` or
//! `optional_requires` (environment variables [`HOST_ADDR_ENV`] and [`HOST_TOKEN_ENV`]). While
//! the runtime serves a call the host made on behalf of another plugin, the call's context
//! travels with every service call made from inside it, so a cycle (A → B → A) ends with
//! [`PluginError::CallCycle`] instead of a deadlock.

use bytes::{Bytes, BytesMut};
use futures_util::stream::{self, Stream};
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use plugvisor_proto::wire::services::{
    CALL_CONTEXT_HEADER, HOST_ADDR_ENV, HOST_TOKEN_ENV, SERVICES_PREFIX, STREAM_SUFFIX,
};
use plugvisor_proto::wire::trace::TRACEPARENT_HEADER;
use plugvisor_proto::wire::{
    ErrorBody, ExecuteResponse, ServiceCall, ServiceInfo, StreamFrame, TraceParent,
};
use plugvisor_proto::{PluginError, PluginStream, Value};
use serde::de::DeserializeOwned;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Mutex, OnceLock};
use std::task::{Context, Poll};
use tokio::net::UnixStream;
use tracing::Instrument;

tokio::task_local! {
    /// What the call the running plugin code serves came with: the host's call context and
    /// its trace, when it named them.
    static SCOPE: Scope;
}

/// The call context and trace of one call from the host, passed on to the service calls its
/// plugin code makes.
#[derive(Debug, Clone)]
pub(crate) struct Scope {
    call: Option<HeaderValue>,
    trace: Option<TraceParent>,
}

/// The trace (W3C `traceparent`) of the call the running plugin code serves, if the host sent
/// one: the host does for every call it makes inside a trace (API requests, task runs,
/// service calls). The runtime already puts its trace id on the plugin's `tracing` log lines
/// and passes it on to [`host()`] calls; this is for plugin code that talks to something
/// else.
pub fn trace() -> Option<TraceParent> {
    SCOPE.try_with(|s| s.trace).ok().flatten()
}

/// Idle connections kept for the next service call.
const MAX_IDLE: usize = 8;

/// The client [`host()`] returns, made once from the environment.
static CLIENT: OnceLock<Option<HostClient>> = OnceLock::new();

/// Reads the endpoint and token from the environment and removes the token from it, so
/// processes the plugin starts do not inherit it. Must run while the process is still
/// single-threaded (the worker runtime calls it with its own token's removal).
pub(crate) fn take_env() {
    CLIENT.get_or_init(HostClient::from_env);
    std::env::remove_var(HOST_TOKEN_ENV);
}

/// This worker's client of the host's service endpoint.
///
/// # Errors
/// [`PluginError::Unavailable`] when the host gave this worker no endpoint: its manifest
/// lists no `requires` or `optional_requires`, or it was not started by a plugvisor host.
///
/// ```no_run
/// # use plugvisor_proto::{json, PluginError, Value};
/// # async fn quote(sku: &str) -> Result<Value, PluginError> {
/// let price = plugvisor_worker::host()?.call("pricing", json!({"sku": sku})).await?;
/// # Ok(price) }
/// ```
pub fn host() -> Result<&'static HostClient, PluginError> {
    CLIENT
        .get_or_init(HostClient::from_env)
        .as_ref()
        .ok_or_else(|| {
            PluginError::Unavailable(format!(
                "this worker has no host endpoint ({HOST_ADDR_ENV} is not set): list the \
                 services it calls in its manifest's requires or optional_requires"
            ))
        })
}

/// A client of the host's service endpoint; get it with [`host()`].
pub struct HostClient {
    socket: PathBuf,
    auth: HeaderValue,
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
}

impl std::fmt::Debug for HostClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostClient")
            .field("socket", &self.socket)
            .finish_non_exhaustive()
    }
}

impl HostClient {
    fn from_env() -> Option<Self> {
        let socket = PathBuf::from(std::env::var_os(HOST_ADDR_ENV)?);
        let token = std::env::var(HOST_TOKEN_ENV).ok()?;
        Self::new(socket, &token)
    }

    /// A client of the endpoint at `socket` presenting `token` (what [`host()`] makes from
    /// the environment; for tests and embedders).
    pub fn new(socket: PathBuf, token: &str) -> Option<Self> {
        let mut auth = HeaderValue::try_from(format!("Bearer {token}")).ok()?;
        auth.set_sensitive(true);
        Some(Self {
            socket,
            auth,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// Calls `service`'s `execute` with `input`, through the host.
    ///
    /// # Errors
    /// The provider's own error; [`PluginError::Forbidden`] for a service the manifest does
    /// not list; [`PluginError::Unavailable`] when no loaded plugin provides it (a missing
    /// optional service) or the host cannot be reached; [`PluginError::WorkerCrashed`] when
    /// the provider died during the call; [`PluginError::CallCycle`] when the call would come
    /// back to a plugin already waiting in its chain.
    pub async fn call(&self, service: &str, input: Value) -> Result<Value, PluginError> {
        self.call_with(service, ServiceCall::new(input)).await
    }

    /// Calls `service`'s named method `method` with `input`.
    ///
    /// # Errors
    /// As [`HostClient::call`]; `invalid_input` naming the provider's methods for an unknown
    /// method.
    pub async fn call_method(
        &self,
        service: &str,
        method: &str,
        input: Value,
    ) -> Result<Value, PluginError> {
        let mut call = ServiceCall::new(input);
        call.method = Some(method.to_owned());
        self.call_with(service, call).await
    }

    /// Calls `service` as `call` says (input, method, timeout).
    ///
    /// # Errors
    /// As [`HostClient::call`].
    pub async fn call_with(&self, service: &str, call: ServiceCall) -> Result<Value, PluginError> {
        let body = to_body(&call)?;
        let answer = self.send(Method::POST, &path(service, ""), body).await?;
        let reply: ExecuteResponse = read(answer).await?;
        Ok(reply.output)
    }

    /// Streams from `service`'s `execute_stream` with `input`.
    ///
    /// # Errors
    /// As [`HostClient::call`], before the first item; later errors are the stream's last
    /// item.
    pub async fn stream(&self, service: &str, input: Value) -> Result<PluginStream, PluginError> {
        let body = to_body(&ServiceCall::new(input))?;
        let answer = self
            .send(Method::POST, &path(service, STREAM_SUFFIX), body)
            .await?;
        if !answer.status().is_success() {
            return Err(error_of(answer).await);
        }
        Ok(Box::pin(frames(answer.into_body())))
    }

    /// Whether this plugin may call `service` and which plugin provides it now
    /// (`get_service`).
    ///
    /// # Errors
    /// [`PluginError::Forbidden`] for a service the manifest does not list,
    /// [`PluginError::Unavailable`] when no loaded plugin provides it.
    pub async fn service(&self, service: &str) -> Result<ServiceInfo, PluginError> {
        let answer = self
            .send(Method::GET, &path(service, ""), Bytes::new())
            .await?;
        read(answer).await
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<Response<Incoming>, PluginError> {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, HeaderValue::from_static("plugvisor-host"))
            .header(AUTHORIZATION, self.auth.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(Full::new(body))
            .map_err(|e| PluginError::InvalidInput(format!("service request: {e}")))?;
        if let Ok(scope) = SCOPE.try_with(Scope::clone) {
            let headers = request.headers_mut();
            if let Some(context) = scope.call {
                headers.insert(CALL_CONTEXT, context);
            }
            let child = scope.trace.map(|t| t.child(fastrand::u64(1..)).to_string());
            if let Some(value) = child.and_then(|c| HeaderValue::try_from(c).ok()) {
                headers.insert(TRACEPARENT, value);
            }
        }
        let mut sender = self.checkout().await?;
        let answer = sender
            .send_request(request)
            .await
            .map_err(|e| unreachable(&self.socket, &e))?;
        self.checkin(sender);
        Ok(answer)
    }

    async fn checkout(&self) -> Result<SendRequest<Full<Bytes>>, PluginError> {
        while let Some(mut sender) = self.idle.lock().ok().and_then(|mut idle| idle.pop()) {
            if sender.ready().await.is_ok() {
                return Ok(sender);
            }
        }
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|e| unreachable(&self.socket, &e))?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(&self.socket, &e))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "host connection ended");
            }
        });
        Ok(sender)
    }

    /// Keeps a connection for the next call. hyper queues the next request behind the current
    /// answer's body, so a connection whose answer is still being read is not reused early:
    /// [`SendRequest::ready`] waits for it at checkout.
    fn checkin(&self, sender: SendRequest<Full<Bytes>>) {
        if sender.is_closed() {
            return;
        }
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < MAX_IDLE {
                idle.push(sender);
            }
        }
    }
}

fn path(service: &str, suffix: &str) -> String {
    let encoded: String = service
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    format!("{SERVICES_PREFIX}{encoded}{suffix}")
}

fn to_body(call: &ServiceCall) -> Result<Bytes, PluginError> {
    serde_json::to_vec(call)
        .map(Bytes::from)
        .map_err(|e| PluginError::InvalidInput(format!("service input: {e}")))
}

fn unreachable(socket: &std::path::Path, e: &dyn std::fmt::Display) -> PluginError {
    PluginError::Unavailable(format!(
        "the host's service endpoint {} cannot be reached: {e}",
        socket.display()
    ))
}

/// The answer's JSON body, or its error.
async fn read<T: DeserializeOwned>(answer: Response<Incoming>) -> Result<T, PluginError> {
    if !answer.status().is_success() {
        return Err(error_of(answer).await);
    }
    let bytes = collect(answer.into_body()).await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| PluginError::Protocol(format!("the host's answer: {e}")))
}

/// The error an answer carries (`{"error": {...}}`), by its kind.
async fn error_of(answer: Response<Incoming>) -> PluginError {
    let status = answer.status();
    match collect(answer.into_body()).await {
        Ok(bytes) => match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(body) => PluginError::from(body.error),
            Err(_) => unexpected(status),
        },
        Err(e) => e,
    }
}

fn unexpected(status: StatusCode) -> PluginError {
    PluginError::Protocol(format!("the host answered {status} without an error body"))
}

async fn collect(body: Incoming) -> Result<Bytes, PluginError> {
    body.collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| PluginError::Protocol(format!("the host's answer was cut: {e}")))
}

/// The items of an NDJSON stream answer; a stream cut before its terminal frame ends with a
/// [`PluginError::Protocol`] item.
fn frames(body: Incoming) -> impl Stream<Item = Result<Value, PluginError>> + Send {
    let state = (body, BytesMut::new(), false);
    stream::unfold(state, |(mut body, mut buf, done)| async move {
        if done {
            return None;
        }
        loop {
            if let Some(at) = buf.iter().position(|b| *b == b'\n') {
                let line = buf.split_to(at + 1);
                return match decode(&line[..at]) {
                    Line::Item(value) => Some((Ok(value), (body, buf, false))),
                    Line::End => None,
                    Line::Failed(e) => Some((Err(e), (body, buf, true))),
                };
            }
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        buf.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => {
                    let cut = PluginError::Protocol(format!("the service stream was cut: {e}"));
                    return Some((Err(cut), (body, buf, true)));
                }
                None => {
                    let cut = PluginError::Protocol("the service stream ended early".into());
                    return Some((Err(cut), (body, buf, true)));
                }
            }
        }
    })
}

/// One line of a stream answer.
#[derive(Debug, PartialEq)]
enum Line {
    Item(Value),
    End,
    Failed(PluginError),
}

fn decode(line: &[u8]) -> Line {
    match serde_json::from_slice::<StreamFrame>(line) {
        Ok(StreamFrame::Item(value)) => Line::Item(value),
        Ok(StreamFrame::End { .. }) => Line::End,
        Ok(StreamFrame::Error(wire)) => Line::Failed(PluginError::from(wire)),
        Err(e) => Line::Failed(PluginError::Protocol(format!("a bad stream frame: {e}"))),
    }
}

/// Runs `work` in `scope`: its service calls carry the call context and a child of the
/// trace, and its `tracing` log lines the trace id.
pub(crate) async fn scoped<F: std::future::Future>(scope: Scope, work: F) -> F::Output {
    match (&scope.call, scope.trace) {
        (None, None) => work.await,
        (_, trace) => {
            let span = span_of(trace);
            SCOPE.scope(scope, work.instrument(span)).await
        }
    }
}

/// `stream` polled in `scope` (a stream's items run plugin code).
pub(crate) fn scoped_stream(scope: Scope, stream: PluginStream) -> PluginStream {
    if scope.call.is_none() && scope.trace.is_none() {
        return stream;
    }
    let span = span_of(scope.trace);
    Box::pin(Scoped {
        scope,
        span,
        inner: stream,
    })
}

/// The span plugin code runs in: `call{trace_id=…}` (disabled without a trace).
fn span_of(trace: Option<TraceParent>) -> tracing::Span {
    match trace {
        Some(t) => tracing::info_span!("call", trace_id = %t.trace_id_hex()),
        None => tracing::Span::none(),
    }
}

struct Scoped {
    scope: Scope,
    span: tracing::Span,
    inner: PluginStream,
}

impl Stream for Scoped {
    type Item = Result<Value, PluginError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let _entered = this.span.enter();
        SCOPE.sync_scope(this.scope.clone(), || this.inner.as_mut().poll_next(cx))
    }
}

/// The call-context header, parsed once (a lookup by `&str` parses the name each time:
/// ≈ 300 instructions per header per call).
const CALL_CONTEXT: HeaderName = HeaderName::from_static(CALL_CONTEXT_HEADER);
/// The `traceparent` header, parsed once.
const TRACEPARENT: HeaderName = HeaderName::from_static(TRACEPARENT_HEADER);

/// The call context and trace a request names, if any (an invalid `traceparent` is none).
pub(crate) fn scope_of<B>(req: &Request<B>) -> Scope {
    let headers = req.headers();
    Scope {
        call: headers.get(CALL_CONTEXT).cloned(),
        trace: headers
            .get(TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .and_then(TraceParent::parse),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names_are_percent_encoded_in_paths() {
        assert_eq!(path("pricing", ""), "/v1/services/pricing");
        assert_eq!(path("a b/c", "/stream"), "/v1/services/a%20b%2Fc/stream");
    }

    #[test]
    fn frames_decode_items_ends_and_errors() {
        assert_eq!(decode(br#"{"item": 1}"#), Line::Item(Value::from(1)));
        assert_eq!(decode(br#"{"end": {"count": 1}}"#), Line::End);
        let err = decode(br#"{"error": {"kind": "forbidden", "message": "no"}}"#);
        assert_eq!(err, Line::Failed(PluginError::Forbidden("no".into())));
        assert!(matches!(
            decode(b"nope"),
            Line::Failed(PluginError::Protocol(_))
        ));
    }
}
