//! Reading request bodies: the size limit (up front and while reading) and strict JSON.

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use plugvisor_proto::fast_json::{Field, FieldBody};
use plugvisor_proto::wire::ExecuteRequest;
use plugvisor_proto::{ErrorKind, Value, WireError};
use serde::de::DeserializeOwned;

/// Reads the whole body of `req`, at most `max_body` bytes, and parses it as `T`.
///
/// An empty body reads as `{}`, so a body-less `POST /v1/initialize` means "defaults".
/// Anything but a JSON object (arrays included) is refused.
///
/// # Errors
/// `payload_too_large` when the body exceeds `max_body` (by `Content-Length` or while
/// reading), `bad_request` when it is not JSON of the shape `T` (serde's message).
pub(crate) async fn read_json<T: DeserializeOwned>(
    req: Request<Incoming>,
    max_body: u64,
) -> Result<T, WireError> {
    let bytes = read_body(req, max_body).await?;
    parse_json(&bytes)
}

/// Reads the body of a call (`execute`, `execute_stream`, a named method) as [`read_json`]
/// does, taking a plain string input (`{"input":"…"}` without escapes, the usual shape of a
/// large input) without the JSON parser and without copying it again
/// ([`FieldBody`]: its chunks are read into what becomes the `String`).
///
/// # Errors
/// As [`read_json`].
pub(crate) async fn read_call(
    req: Request<Incoming>,
    max_body: u64,
) -> Result<ExecuteRequest, WireError> {
    let declared = declared_length(&req);
    if declared.is_some_and(|length| length > max_body) {
        return Err(too_large(max_body));
    }
    let limit = usize::try_from(max_body).unwrap_or(usize::MAX);
    let expected = declared.and_then(|l| usize::try_from(l).ok()).unwrap_or(0);
    let mut field = FieldBody::new("input", expected.min(limit));
    let mut body = Limited::new(req.into_body(), limit);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| unreadable(e, max_body))?;
        if let Ok(data) = frame.into_data() {
            field.push(data);
        }
    }
    match field.finish() {
        Field::Plain(text) => Ok(ExecuteRequest {
            input: Value::String(text),
        }),
        Field::Body(bytes) => parse_json(&bytes),
    }
}

/// Parses a body as `T`, an empty one as `{}`; only objects are accepted.
fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, WireError> {
    let bad = |message: String| WireError::new(ErrorKind::BadRequest, message);
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        None => serde_json::from_slice(b"{}").map_err(|e| bad(e.to_string())),
        // serde would also read a struct from an array; the protocol wants objects only.
        Some(b'{') => serde_json::from_slice(bytes).map_err(|e| bad(e.to_string())),
        Some(_) => Err(bad("the request body must be a JSON object".into())),
    }
}

/// Reads the whole body, refusing more than `max_body` bytes.
async fn read_body(req: Request<Incoming>, max_body: u64) -> Result<Bytes, WireError> {
    if let Some(length) = declared_length(&req) {
        if length > max_body {
            return Err(too_large(max_body));
        }
    }
    let limit = usize::try_from(max_body).unwrap_or(usize::MAX);
    match Limited::new(req.into_body(), limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) => Err(unreadable(e, max_body)),
    }
}

/// The error for a body that could not be read: too large, or cut off.
fn unreadable(e: Box<dyn std::error::Error + Send + Sync>, max_body: u64) -> WireError {
    if e.is::<LengthLimitError>() {
        return too_large(max_body);
    }
    WireError::new(
        ErrorKind::BadRequest,
        format!("cannot read the request body: {e}"),
    )
}

/// The body's `Content-Length`, as hyper parsed (and checked) it: its exact size hint.
fn declared_length(req: &Request<Incoming>) -> Option<u64> {
    hyper::body::Body::size_hint(req.body()).exact()
}

fn too_large(max_body: u64) -> WireError {
    WireError::new(
        ErrorKind::PayloadTooLarge,
        format!("the request body exceeds the limit of {max_body} bytes; pass large data as a file reference"),
    )
}
