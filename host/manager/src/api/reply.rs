//! Building answers: JSON and text bodies, error answers, and the boxed body type every route
//! answers with (complete or streamed).

use super::errors::ApiError;
use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::{Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use serde::Serialize;
use std::convert::Infallible;

/// Why a streamed answer broke off (a plugin route's worker died mid-answer): hyper then
/// aborts the connection, so the client sees a cut answer, never a clean end.
pub(crate) type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// The body of every answer.
pub(crate) type Body = UnsyncBoxBody<Bytes, BodyError>;

/// `body` (which cannot fail) as the answer body type.
pub(crate) fn boxed<B>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes, Error = Infallible> + Send + 'static,
{
    body.map_err(|never| match never {}).boxed_unsync()
}

/// An answer.
pub(crate) type Reply = Response<Body>;

/// `application/json`.
pub(crate) const JSON: &str = "application/json";

/// A JSON answer with `status`; a value that cannot be serialized is a 500.
pub(crate) fn json<T: Serialize>(status: StatusCode, value: &T) -> Reply {
    match serde_json::to_vec(value) {
        Ok(bytes) => with_body(status, JSON, Bytes::from(bytes)),
        Err(e) => error(ApiError::internal(format!(
            "the answer could not be serialized: {e}"
        ))),
    }
}

/// A 200 JSON answer.
pub(crate) fn ok<T: Serialize>(value: &T) -> Reply {
    json(StatusCode::OK, value)
}

/// The answer for `err`: its status and headers, body `{"error": {...}}`.
pub(crate) fn error(err: ApiError) -> Reply {
    let bytes = err.body_bytes();
    let mut reply = with_body(err.status, JSON, Bytes::from(bytes));
    for (name, value) in err.headers {
        reply.headers_mut().insert(name, value);
    }
    reply
}

/// An answer with a complete body of `content_type`.
pub(crate) fn with_body(status: StatusCode, content_type: &'static str, body: Bytes) -> Reply {
    let mut reply = Response::new(boxed(Full::new(body)));
    *reply.status_mut() = status;
    let headers = reply.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    reply
}

/// A 200 answer streaming `body` as `content_type`.
pub(crate) fn streamed(content_type: &'static str, body: Body) -> Reply {
    let mut reply = Response::new(body);
    let headers = reply.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    reply
}
