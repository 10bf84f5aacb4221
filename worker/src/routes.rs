//! Plugin routes: the optional [`Routes`] extension a plugin implements to serve HTTP routes
//! the host mounts under `/plugins/<plugin>/…`, the request and answer types it sees, and the
//! matching of a request path against the declared patterns.
//!
//! The seed [`Plugin`](plugvisor_proto::Plugin) trait is untouched: a plugin with routes also
//! implements [`Routes`] and its `main` calls [`run_routed`](crate::run_routed) instead of
//! [`run`](crate::run).

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use http_body_util::{BodyExt, BodyStream, StreamBody};
use hyper::body::{Frame, Incoming};
use plugvisor_proto::wire::RouteSpec;
use plugvisor_proto::{PluginError, Value};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;

/// A plugin's HTTP routes.
///
/// ```no_run
/// use plugvisor_proto::wire::RouteSpec;
/// use plugvisor_worker::{RouteRequest, RouteResponse, Routes};
/// # use plugvisor_proto::{Plugin, PluginError, Value};
/// # #[derive(Default)] struct Hello;
/// # impl Plugin for Hello {
/// #     fn name(&self) -> &str { "hello" }
/// #     fn version(&self) -> &str { "0.1.0" }
/// #     async fn execute(&self, input: Value) -> Result<Value, PluginError> { Ok(input) }
/// # }
///
/// impl Routes for Hello {
///     fn routes(&self) -> Vec<RouteSpec> {
///         vec![RouteSpec::new("GET", "/hello").summary("A greeting")]
///     }
///
///     async fn handle(&self, request: RouteRequest) -> Result<RouteResponse, PluginError> {
///         Ok(RouteResponse::json(200, &serde_json::json!({"message": "Hello"})))
///     }
/// }
///
/// fn main() {
///     plugvisor_worker::run_routed(Hello::default())
/// }
/// ```
pub trait Routes: Send + Sync + 'static {
    /// The routes, reported once in `/v1/info`. Paths start with `/`; a segment `{name}` matches
    /// any one segment (its value is in [`RouteRequest::params`]), a last segment `{*name}`
    /// matches the rest of the path.
    fn routes(&self) -> Vec<RouteSpec>;

    /// Answers one request to a declared route. An error becomes the typed JSON error answer
    /// of its kind (`invalid_input` 400, `not_found` 404, …); a panic is contained as `500`.
    fn handle(
        &self,
        request: RouteRequest,
    ) -> impl Future<Output = Result<RouteResponse, PluginError>> + Send;
}

/// The object-safe form of [`Routes`] the server holds.
pub(crate) trait DynRoutes: Send + Sync + 'static {
    fn specs(&self) -> Vec<RouteSpec>;
    fn call(
        &self,
        request: RouteRequest,
    ) -> Pin<Box<dyn Future<Output = Result<RouteResponse, PluginError>> + Send + '_>>;
}

impl<R: Routes> DynRoutes for R {
    fn specs(&self) -> Vec<RouteSpec> {
        self.routes()
    }

    fn call(
        &self,
        request: RouteRequest,
    ) -> Pin<Box<dyn Future<Output = Result<RouteResponse, PluginError>> + Send + '_>> {
        Box::pin(self.handle(request))
    }
}

/// One request to a plugin route, as the host forwarded it.
#[derive(Debug)]
pub struct RouteRequest {
    /// The method.
    pub method: Method,
    /// The path below the plugin's mount point, normalised by the host (e.g. `/hello`).
    pub path: String,
    /// The query string, without `?`.
    pub query: Option<String>,
    /// The values of the pattern's `{name}` segments.
    pub params: BTreeMap<String, String>,
    /// The request headers (hop-by-hop headers and `Authorization` removed; `X-Forwarded-*`
    /// and `X-Request-Id` set by the host).
    pub headers: HeaderMap,
    /// The body, streamed.
    pub body: RouteBody,
}

impl RouteRequest {
    /// The value of query parameter `name` (first occurrence, not percent-decoded).
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query.as_deref()?.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == name).then_some(v)
        })
    }
}

/// A request body, streamed from the client through the host.
#[derive(Debug)]
pub struct RouteBody(pub(crate) Incoming);

impl RouteBody {
    /// Reads the whole body, refusing more than `limit` bytes.
    ///
    /// # Errors
    /// [`PluginError::InvalidInput`] when the body is larger than `limit` or breaks off.
    pub async fn bytes(self, limit: usize) -> Result<Bytes, PluginError> {
        let limited = http_body_util::Limited::new(self.0, limit);
        limited
            .collect()
            .await
            .map(|c| c.to_bytes())
            .map_err(|e| PluginError::InvalidInput(format!("request body: {e}")))
    }

    /// Reads the whole body as JSON, refusing more than `limit` bytes.
    ///
    /// # Errors
    /// As [`RouteBody::bytes`], and [`PluginError::InvalidInput`] for a body that is not JSON.
    pub async fn json(self, limit: usize) -> Result<Value, PluginError> {
        let bytes = self.bytes(limit).await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| PluginError::InvalidInput(format!("request body is not JSON: {e}")))
    }

    /// The body as a stream of chunks, for bodies of any size in O(1) memory.
    pub fn into_stream(self) -> impl Stream<Item = Result<Bytes, PluginError>> + Send {
        BodyStream::new(self.0).filter_map(|frame| async move {
            match frame {
                Ok(frame) => frame.into_data().ok().map(Ok),
                Err(e) => Some(Err(PluginError::InvalidInput(format!("request body: {e}")))),
            }
        })
    }
}

/// A chunk stream answered by a route.
pub(crate) type ChunkStream = Pin<Box<dyn Stream<Item = Bytes> + Send>>;

/// The answer of a route: status, headers and a complete or streamed body.
pub struct RouteResponse {
    /// The status.
    pub status: StatusCode,
    /// The headers.
    pub headers: HeaderMap,
    pub(crate) body: ResponseBody,
}

impl std::fmt::Debug for RouteResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteResponse")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .finish_non_exhaustive()
    }
}

/// The body of a [`RouteResponse`].
pub(crate) enum ResponseBody {
    Full(Bytes),
    Stream(ChunkStream),
}

impl RouteResponse {
    /// An answer with `status`, `content_type` and a complete body.
    pub fn bytes(status: u16, content_type: &str, body: impl Into<Bytes>) -> Self {
        let mut headers = HeaderMap::new();
        if let Ok(value) = HeaderValue::from_str(content_type) {
            headers.insert(http::header::CONTENT_TYPE, value);
        }
        Self {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            headers,
            body: ResponseBody::Full(body.into()),
        }
    }

    /// A JSON answer.
    pub fn json(status: u16, value: &impl serde::Serialize) -> Self {
        let body = serde_json::to_vec(value).unwrap_or_default();
        Self::bytes(status, "application/json", body)
    }

    /// A plain-text answer.
    pub fn text(status: u16, text: impl Into<String>) -> Self {
        Self::bytes(status, "text/plain; charset=utf-8", text.into())
    }

    /// A streamed answer: each chunk is sent as soon as the stream yields it.
    pub fn stream(
        status: u16,
        content_type: &str,
        chunks: impl Stream<Item = Bytes> + Send + 'static,
    ) -> Self {
        let mut answer = Self::bytes(status, content_type, Bytes::new());
        answer.body = ResponseBody::Stream(Box::pin(chunks));
        answer
    }

    /// A Server-Sent Events answer: each item of `events` is sent as one `data:` event.
    pub fn sse(events: impl Stream<Item = String> + Send + 'static) -> Self {
        let chunks = events.map(|data| {
            let lines: String = data.lines().map(|l| format!("data: {l}\n")).collect();
            Bytes::from(format!("{lines}\n"))
        });
        let mut answer = Self::stream(200, "text/event-stream", chunks);
        answer.headers.insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        );
        answer
    }

    /// Sets a header (any case; an invalid name or value is left out).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        let name = http::HeaderName::from_bytes(name.as_bytes());
        if let (Ok(name), Ok(value)) = (name, HeaderValue::from_str(value)) {
            self.headers.insert(name, value);
        }
        self
    }
}

/// The body type the server sends for a streamed route answer.
pub(crate) type StreamedBody = StreamBody<
    futures_util::stream::Map<ChunkStream, fn(Bytes) -> Result<Frame<Bytes>, Infallible>>,
>;

/// Frames of a streamed answer.
pub(crate) fn streamed(chunks: ChunkStream) -> StreamedBody {
    fn frame(data: Bytes) -> Result<Frame<Bytes>, Infallible> {
        Ok(Frame::data(data))
    }
    StreamBody::new(chunks.map(frame as fn(Bytes) -> Result<Frame<Bytes>, Infallible>))
}

/// The declared route `path` (below the mount point) matches for `method`: its index and the
/// values of its parameters. `Err(true)` when the path matches another method's route only.
pub(crate) fn find(
    specs: &[RouteSpec],
    method: &Method,
    path: &str,
) -> Result<(usize, BTreeMap<String, String>), bool> {
    let mut other_method = false;
    for (i, spec) in specs.iter().enumerate() {
        let Some(params) = plugvisor_proto::wire::route_params(&spec.path, path) else {
            continue;
        };
        if spec.method.eq_ignore_ascii_case(method.as_str()) {
            return Ok((i, params));
        }
        other_method = true;
    }
    Err(other_method)
}

/// The methods of the declared routes whose pattern matches `path`.
pub(crate) fn methods_for(specs: &[RouteSpec], path: &str) -> Vec<String> {
    let mut methods: Vec<String> = specs
        .iter()
        .filter(|s| plugvisor_proto::wire::route_params(&s.path, path).is_some())
        .map(|s| s.method.to_ascii_uppercase())
        .collect();
    methods.dedup();
    methods
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_literals_params_and_the_rest() {
        let specs = vec![
            RouteSpec::new("GET", "/hello"),
            RouteSpec::new("POST", "/items/{id}"),
            RouteSpec::new("GET", "/files/{*rest}"),
        ];
        assert_eq!(find(&specs, &Method::GET, "/hello").unwrap().0, 0);
        let (i, params) = find(&specs, &Method::POST, "/items/42").unwrap();
        assert_eq!((i, params["id"].as_str()), (1, "42"));
        let (_, params) = find(&specs, &Method::GET, "/files/a/b.txt").unwrap();
        assert_eq!(params["rest"], "a/b.txt");
        assert_eq!(find(&specs, &Method::GET, "/items/42"), Err(true));
        assert_eq!(find(&specs, &Method::GET, "/nope"), Err(false));
        assert_eq!(find(&specs, &Method::GET, "/hello/extra"), Err(false));
        assert_eq!(find(&specs, &Method::POST, "/items/"), Err(false));
        assert_eq!(methods_for(&specs, "/items/7"), ["POST"]);
        let answer = RouteResponse::text(200, "x")
            .header("X-Custom", "1")
            .header("bad name", "2");
        assert_eq!(answer.headers["x-custom"], "1");
        assert_eq!(answer.headers.len(), 2, "content-type and x-custom");
    }
}
