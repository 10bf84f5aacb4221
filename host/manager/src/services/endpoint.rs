//! The host's service endpoint: HTTP/1.1 on a Unix socket in the host's directory, where
//! workers call the services other plugins provide (`docs/PROTOCOL.md`, "Services").
//!
//! Every request names its plugin by bearer token; the call then goes to the provider through
//! the manager like any call (lazy start, supervisor, timeouts, crash reports, metrics), inside
//! the call context of its chain.

use super::{caller_of, enter, lookup, Backend, Chains, Entered};
use bytes::Bytes;
use futures_util::stream::{self, BoxStream, StreamExt};
use http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use plugvisor_host::{with_call_context, with_trace, CallContext, PluginError};
use plugvisor_proto::file_ref::contains_file_refs;
use plugvisor_proto::wire::services::{CALL_CONTEXT_HEADER, SERVICES_PREFIX, STREAM_SUFFIX};
use plugvisor_proto::wire::{
    ErrorBody, ExecuteResponse, ServiceCall, StreamFrame, DEFAULT_MAX_BODY, NDJSON,
};
use plugvisor_proto::{ErrorKind, Value, WireError};
use serde::Serialize;
use std::collections::HashMap;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::net::UnixListener;
use tokio::task::{AbortHandle, JoinSet};

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// What every connection of the endpoint shares.
pub(crate) struct Shared {
    pub(crate) backend: Weak<dyn Backend>,
    pub(crate) tokens: Arc<Mutex<HashMap<String, String>>>,
    pub(crate) chains: Chains,
}

/// The running endpoint: stopped, and its socket removed, when dropped.
pub(crate) struct Running {
    socket: PathBuf,
    accept: AbortHandle,
}

impl Drop for Running {
    fn drop(&mut self) {
        // Aborting the accept loop drops its set of connections, which aborts them.
        self.accept.abort();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Binds `socket` (owner-only) and serves it until the [`Running`] is dropped.
///
/// # Errors
/// The socket cannot be bound: the message names it and the reason.
pub(crate) fn start(socket: &Path, shared: Shared) -> Result<Running, String> {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::remove_file(socket);
    let listener = UnixListener::bind(socket)
        .map_err(|e| format!("the service endpoint {}: {e}", socket.display()))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("the service endpoint {}: {e}", socket.display()))?;
    let shared = Arc::new(shared);
    let accept = tokio::spawn(accept_loop(listener, shared)).abort_handle();
    Ok(Running {
        socket: socket.to_path_buf(),
        accept,
    })
}

async fn accept_loop(listener: UnixListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let shared = Arc::clone(&shared);
                    connections.spawn(serve_connection(stream, shared));
                }
                Err(e) => tracing::warn!(error = %e, "service endpoint: accept failed"),
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn serve_connection(stream: tokio::net::UnixStream, shared: Arc<Shared>) {
    let service = service_fn(move |req| {
        let shared = Arc::clone(&shared);
        async move { Ok::<_, Infallible>(handle(&shared, req).await) }
    });
    if let Err(e) = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        tracing::debug!(error = %e, "service endpoint: connection ended");
    }
}

/// One request inside its trace (the caller's `traceparent`, else a new trace), so the
/// provider's call continues it.
async fn handle(shared: &Shared, req: Request<Incoming>) -> Response<Body> {
    let trace =
        plugvisor_host::traceparent_of(req.headers()).unwrap_or_else(plugvisor_host::new_trace);
    let span = tracing::info_span!("service", trace_id = %trace.trace_id_hex());
    let answer = with_trace(trace, answer(shared, req));
    tracing::Instrument::instrument(answer, span).await
}

/// Who calls, which service, then the lookup, call or stream.
async fn answer(shared: &Shared, req: Request<Incoming>) -> Response<Body> {
    let Some(caller) = bearer(&req).and_then(|t| caller_of(&shared.tokens, t)) else {
        return unauthorized();
    };
    let Some((service, stream)) = service_of(req.uri().path()) else {
        return error(WireError::new(
            ErrorKind::NotFound,
            format!(
                "no route {}: use {SERVICES_PREFIX}<service>",
                req.uri().path()
            ),
        ));
    };
    let Some(backend) = shared.backend.upgrade() else {
        return error(WireError::new(
            ErrorKind::Unavailable,
            "the host is shutting down",
        ));
    };
    let answer = match (req.method(), stream) {
        (&Method::GET, false) => lookup(backend.as_ref(), &caller, &service).map(|i| json(&i)),
        (&Method::POST, false) => call(shared, backend, &caller, &service, req).await,
        (&Method::POST, true) => open_stream(shared, backend, &caller, &service, req).await,
        (method, _) => {
            return error(WireError::new(
                ErrorKind::MethodNotAllowed,
                format!("{method} is not allowed here: GET or POST a service, POST its stream"),
            ))
        }
    };
    answer.unwrap_or_else(|e| error(WireError::from(&e)))
}

async fn call(
    shared: &Shared,
    backend: Arc<dyn Backend>,
    caller: &str,
    service: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>, PluginError> {
    let (entered, call, provider) = admit(shared, backend.as_ref(), caller, service, req).await?;
    let work = backend.call(provider, call, entered.timeout);
    let output = with_call_context(entered.context, work).await?;
    drop(entered);
    Ok(json(&ExecuteResponse { output }))
}

async fn open_stream(
    shared: &Shared,
    backend: Arc<dyn Backend>,
    caller: &str,
    service: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>, PluginError> {
    let (entered, call, provider) = admit(shared, backend.as_ref(), caller, service, req).await?;
    let work = backend.stream(provider, call.input);
    let items = with_call_context(entered.context, work).await?;
    let mut answer = Response::new(ndjson(items, entered));
    let headers = answer.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(NDJSON));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(answer)
}

/// Reads the call and admits it: allowed, no file references, into its chain. Returns the
/// chain entry, the call and the provider.
async fn admit(
    shared: &Shared,
    backend: &dyn Backend,
    caller: &str,
    service: &str,
    req: Request<Incoming>,
) -> Result<(Entered, ServiceCall, String), PluginError> {
    let info = lookup(backend, caller, service)?;
    let context = req
        .headers()
        .get(CALL_CONTEXT_HEADER)
        .and_then(|v| CallContext::parse(v.as_bytes()));
    let call = read_call(req).await?;
    if contains_file_refs(&call.input) {
        return Err(PluginError::InvalidInput(
            "file references cannot be passed to a service (pass the data, or a path both \
             plugins are granted in their sandbox)"
                .to_owned(),
        ));
    }
    let timeout = call.timeout_ms.map(Duration::from_millis);
    let entered = enter(&shared.chains, caller, context, &info.provider, timeout)?;
    Ok((entered, call, info.provider))
}

async fn read_call(req: Request<Incoming>) -> Result<ServiceCall, PluginError> {
    let limit = usize::try_from(DEFAULT_MAX_BODY).unwrap_or(usize::MAX);
    let bytes = Limited::new(req.into_body(), limit)
        .collect()
        .await
        .map_err(|e| PluginError::InvalidInput(format!("the service call's body: {e}")))?
        .to_bytes();
    serde_json::from_slice(&bytes)
        .map_err(|e| PluginError::InvalidInput(format!("the service call's body: {e}")))
}

/// The NDJSON answer of a stream: its items, then `end` or `error`. The chain entry lives
/// until the stream is done or dropped.
fn ndjson(items: BoxStream<'static, Result<Value, PluginError>>, entered: Entered) -> Body {
    let state = (items, Some(entered), 0u64);
    let frames = stream::unfold(state, |(mut items, entered, count)| async move {
        let entered = entered?;
        let (frame, next) = match items.next().await {
            Some(Ok(value)) => (StreamFrame::Item(value), Some(entered)),
            Some(Err(e)) => (StreamFrame::Error(WireError::from(&e)), None),
            None => (StreamFrame::End { count }, None),
        };
        let mut line = serde_json::to_vec(&frame).unwrap_or_default();
        line.push(b'\n');
        let frame = Ok::<_, Infallible>(Frame::data(Bytes::from(line)));
        Some((frame, (items, next, count + 1)))
    });
    StreamBody::new(frames).boxed_unsync()
}

fn bearer<B>(req: &Request<B>) -> Option<&str> {
    req.headers()
        .get(AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

/// The service a path names, and whether it asks for a stream.
fn service_of(path: &str) -> Option<(String, bool)> {
    let rest = path.strip_prefix(SERVICES_PREFIX)?;
    let (name, stream) = match rest.strip_suffix(STREAM_SUFFIX) {
        Some(name) => (name, true),
        None => (rest, false),
    };
    let name = percent_encoding::percent_decode_str(name)
        .decode_utf8()
        .ok()?
        .into_owned();
    (!name.is_empty() && !name.contains('/')).then_some((name, stream))
}

fn json<T: Serialize>(value: &T) -> Response<Body> {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    let mut answer = Response::new(Full::new(Bytes::from(bytes)).boxed_unsync());
    answer
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    answer
}

fn error(err: WireError) -> Response<Body> {
    let status =
        StatusCode::from_u16(err.kind.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut answer = json(&ErrorBody { error: err });
    *answer.status_mut() = status;
    answer
}

fn unauthorized() -> Response<Body> {
    let mut answer = error(WireError::new(
        ErrorKind::Unauthorized,
        "no or unknown bearer token: the host gives one to plugins that list services in \
         requires or optional_requires",
    ));
    answer
        .headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_a_service_and_whether_it_streams() {
        assert_eq!(
            service_of("/v1/services/pricing"),
            Some(("pricing".into(), false))
        );
        assert_eq!(
            service_of("/v1/services/a%20b/stream"),
            Some(("a b".into(), true))
        );
        for bad in [
            "/v1/services/",
            "/v1/other/x",
            "/v1/services/a/b",
            "/v1/services/%FF",
        ] {
            assert_eq!(service_of(bad), None, "{bad}");
        }
    }
}
