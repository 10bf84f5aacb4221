//! Forwarding one HTTP request to a plugin route: the request goes to the worker's
//! `/v1/route/…` with its body streamed, and the answer comes back with its body streamed
//! ([`RouteBody`]), holding the worker connection and the call's in-flight count until it ends.

use crate::client::{Lease, ReqBody};
use crate::worker::{InFlight, WorkerCore};
use bytes::Bytes;
use http::header::{self, HeaderName};
use http::{Request, Response, Uri};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use plugvisor_proto::wire::routes::ROUTE_PREFIX;
use plugvisor_proto::PluginError;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// Headers that belong to one connection (RFC 9110 §7.6.1), never forwarded; `Authorization`
/// is the host's (or its API's), never a plugin's to see; `Expect` was the client's exchange
/// with the host, which already answered it.
const NOT_FORWARDED: [HeaderName; 10] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::AUTHORIZATION,
    header::EXPECT,
];

/// A request body a plugin route can be forwarded with: any body of [`Bytes`] whose error
/// can be boxed (a hyper `Incoming`, `Full`, `Empty`, a `StreamBody`, …).
pub trait RouteRequestBody:
    Body<Data = Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>> + Send + 'static
{
}

impl<B> RouteRequestBody for B
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
}

/// The streamed answer of a plugin route. Dropping it before its end closes the worker
/// connection (cancelling the plugin's work); reading it to the end returns the connection.
pub struct RouteBody {
    body: Incoming,
    lease: Option<Lease>,
    _in_flight: InFlight,
    _slot: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl RouteBody {
    /// Holds a supervisor's call slot until the body ends or is dropped.
    pub(crate) fn holding(mut self, slot: tokio::sync::OwnedSemaphorePermit) -> Self {
        self._slot = Some(slot);
        self
    }
}

impl std::fmt::Debug for RouteBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteBody").finish_non_exhaustive()
    }
}

impl Body for RouteBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        // At the end (which a server may learn from the last frame and never poll past),
        // the connection goes back to the pool.
        let ended = match &polled {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => this.body.is_end_stream(),
            _ => false,
        };
        if ended {
            if let Some(mut lease) = this.lease.take() {
                lease.finish();
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl WorkerCore {
    /// Forwards `request` (its URI is the path below the plugin's mount point, with its query)
    /// to the worker's route.
    ///
    /// # Errors
    /// [`PluginError::InvalidInput`] for a path that does not start with `/`; the worker
    /// crashing or being unreachable before it answered, as for any call.
    pub(crate) async fn route(
        self: &Arc<Self>,
        request: Request<impl RouteRequestBody>,
    ) -> Result<Response<RouteBody>, PluginError> {
        let in_flight = self.begin_call();
        let (mut parts, body) = request.into_parts();
        parts.uri = worker_uri(&parts.uri)?;
        for name in &NOT_FORWARDED {
            parts.headers.remove(name);
        }
        // A request without a body goes as one (no chunked encoding), so the worker's HTTP
        // server sees its end at once and notices the connection closing while the plugin
        // still works on the request: a route the host gave up on is cancelled in the worker.
        let body = if body.is_end_stream() {
            ReqBody::Full(http_body_util::Full::new(Bytes::new()))
        } else {
            ReqBody::Streamed(body.map_err(Into::into).boxed_unsync())
        };
        let request = Request::from_parts(parts, body);
        let (response, lease) = match self.client.send_request(request).await {
            Ok(answer) => answer,
            Err(e) => return Err(self.failure(e).await),
        };
        let (parts, body) = response.into_parts();
        let body = RouteBody {
            body,
            lease: Some(lease),
            _in_flight: in_flight,
            _slot: None,
        };
        Ok(Response::from_parts(parts, body))
    }
}

/// `/v1/route` + the plugin-relative path and query.
fn worker_uri(uri: &Uri) -> Result<Uri, PluginError> {
    let path_and_query = uri.path_and_query().map_or("/", |pq| pq.as_str());
    if !path_and_query.starts_with('/') {
        return Err(PluginError::InvalidInput(format!(
            "a route path must start with '/', got {path_and_query:?}"
        )));
    }
    format!("{ROUTE_PREFIX}{path_and_query}")
        .parse()
        .map_err(|e| PluginError::InvalidInput(format!("route path {path_and_query:?}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worker_uri_keeps_path_and_query_below_the_prefix() {
        let uri: Uri = "/hello?x=1".parse().unwrap();
        assert_eq!(worker_uri(&uri).unwrap(), "/v1/route/hello?x=1");
        let root: Uri = "/".parse().unwrap();
        assert_eq!(worker_uri(&root).unwrap(), "/v1/route/");
    }
}
