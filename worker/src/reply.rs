//! Building answers: JSON bodies, error bodies with the status of their kind, and `ResBody`.

use crate::ndjson::NdjsonBody;
use crate::offload::PumpedBody;
use crate::routes::StreamedBody;
use bytes::Bytes;
use http::header::{HeaderValue, CONNECTION, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{Response, StatusCode};
use http_body_util::{Either, Full};
use plugvisor_proto::fast_json::field_bytes;
use plugvisor_proto::wire::ErrorBody;
use plugvisor_proto::{ErrorKind, Value, WireError};
use serde::Serialize;

/// The body of every answer: a complete document, an NDJSON stream (encoded on the serving
/// runtime or pumped from the plugin runtime), or a plugin route's streamed answer.
pub(crate) type ResBody = Either<Full<Bytes>, Either<NdjsonBody, Either<PumpedBody, StreamedBody>>>;

/// An answer of the worker.
pub(crate) type Reply = Response<ResBody>;

const APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");

/// A JSON answer with `status`.
pub(crate) fn json<T: Serialize>(status: StatusCode, value: &T) -> Reply {
    match serde_json::to_vec(value) {
        Ok(bytes) => with_body(status, APPLICATION_JSON, Bytes::from(bytes)),
        Err(e) => error(WireError::new(
            ErrorKind::PluginFailed,
            format!("the answer could not be serialized: {e}"),
        )),
    }
}

/// The `200` answer of a call, `{"output":…}`: what [`json`] writes, with strings copied
/// whole instead of byte by byte (a large string output is the common bulk case).
pub(crate) fn output(value: &Value) -> Reply {
    match field_bytes("output", value) {
        Ok(bytes) => with_body(StatusCode::OK, APPLICATION_JSON, bytes),
        Err(e) => error(WireError::new(
            ErrorKind::PluginFailed,
            format!("the answer could not be serialized: {e}"),
        )),
    }
}

/// An answer without a body (`204 No Content`).
pub(crate) fn empty(status: StatusCode) -> Reply {
    let mut reply = Response::new(Either::Left(Full::new(Bytes::new())));
    *reply.status_mut() = status;
    reply
}

/// The error answer for `err`: status from its kind, body `{"error": {...}}`.
pub(crate) fn error(err: WireError) -> Reply {
    let status =
        StatusCode::from_u16(err.kind.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let kind = err.kind;
    let bytes = serde_json::to_vec(&ErrorBody { error: err }).unwrap_or_default();
    let mut reply = with_body(status, APPLICATION_JSON, Bytes::from(bytes));
    match kind {
        ErrorKind::Unauthorized => {
            let bearer = HeaderValue::from_static("Bearer");
            reply.headers_mut().insert(WWW_AUTHENTICATE, bearer);
        }
        // The rest of an oversized body is not worth reading: close after answering.
        ErrorKind::PayloadTooLarge => {
            reply
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        _ => {}
    }
    reply
}

/// An answer with a complete body.
fn with_body(status: StatusCode, content_type: HeaderValue, body: Bytes) -> Reply {
    let mut reply = Response::new(Either::Left(Full::new(body)));
    *reply.status_mut() = status;
    reply.headers_mut().insert(CONTENT_TYPE, content_type);
    reply
}
