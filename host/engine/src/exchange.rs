//! JSON exchanges with a worker: send one request, read its whole answer, and turn it into a
//! value or the worker's typed error. What a failed connection *means* (a crash, or a live
//! worker that cannot be reached) is decided by the caller, who knows the process.

use crate::client::{ClientError, Lease, WorkerClient};
use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Body as _;
use hyper::body::Incoming;
use plugvisor_proto::fast_json::{field_bytes, Field, FieldBody};
use plugvisor_proto::wire::{ErrorBody, ExecuteResponse};
use plugvisor_proto::{PluginError, Value};
use serde::de::DeserializeOwned;
use std::sync::Arc;

/// Why an exchange produced no value.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The connection failed: no answer, or the answer was cut off.
    Transport(ClientError),
    /// The worker answered, with an error or with something unreadable.
    Answer(PluginError),
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        Self::Transport(e)
    }
}

/// Sends a request; a success answer's body is returned unread with its connection lease, an
/// error answer is read and parsed into the worker's error.
///
/// # Cancel safety
/// Dropping the future closes the connection, which cancels the work in the worker.
pub(crate) async fn send(
    client: &Arc<WorkerClient>,
    method: Method,
    path: &str,
    body: Bytes,
) -> Result<(Incoming, Lease), Failure> {
    let (response, lease) = client.send(method, path, body).await?;
    let status = response.status();
    let body = response.into_body();
    if status.is_success() {
        return Ok((body, lease));
    }
    let bytes = read_all(body, lease).await?;
    Err(Failure::Answer(error_from_body(status, &bytes)))
}

/// Reads a body to its end and gives the connection back to the pool.
pub(crate) async fn read_all(body: Incoming, mut lease: Lease) -> Result<Bytes, ClientError> {
    let collected = body.collect().await?;
    lease.finish();
    Ok(collected.to_bytes())
}

/// Sends a request and parses its JSON answer.
pub(crate) async fn json<T: DeserializeOwned>(
    client: &Arc<WorkerClient>,
    method: Method,
    path: &str,
    body: Bytes,
) -> Result<T, Failure> {
    let (body, lease) = send(client, method, path, body).await?;
    let bytes = read_all(body, lease).await?;
    parse(&bytes).map_err(Failure::Answer)
}

/// Sends a call's body and reads the `output` of its answer: a plain string output
/// (`{"output":"…"}` without escapes) without the JSON parser and read straight into its
/// `String` ([`FieldBody`]), anything else parsed.
pub(crate) async fn output(
    client: &Arc<WorkerClient>,
    path: &str,
    body: Bytes,
) -> Result<Value, Failure> {
    let (body, lease) = send(client, Method::POST, path, body).await?;
    match read_field(body, lease, "output").await? {
        Field::Plain(text) => Ok(Value::String(text)),
        Field::Body(bytes) => {
            let answer: ExecuteResponse = parse(&bytes).map_err(Failure::Answer)?;
            Ok(answer.output)
        }
    }
}

/// The most a body's declared length reserves up front; a longer body grows as it arrives
/// (a worker's `Content-Length` is a claim, not an allocation order).
const MAX_RESERVE: u64 = 64 << 20;

/// Reads a call's answer `{"<key>":…}` to its end and gives the connection back to the pool.
async fn read_field(
    mut body: Incoming,
    mut lease: Lease,
    key: &'static str,
) -> Result<Field, ClientError> {
    let expected = body.size_hint().exact().unwrap_or(0).min(MAX_RESERVE);
    let mut field = FieldBody::new(key, usize::try_from(expected).unwrap_or(0));
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            field.push(data);
        }
    }
    lease.finish();
    Ok(field.finish())
}

/// Parses a worker's JSON answer.
pub(crate) fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, PluginError> {
    serde_json::from_slice(bytes)
        .map_err(|e| PluginError::Protocol(format!("unreadable answer from the worker: {e}")))
}

/// The worker's typed error from an error answer, or a protocol error quoting what it sent.
pub(crate) fn error_from_body(status: StatusCode, bytes: &[u8]) -> PluginError {
    match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(body) => from_worker(body.error),
        Err(_) => PluginError::Protocol(format!(
            "worker answered {status} with {}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
        )),
    }
}

/// A worker's error as the host believes it: `worker_crashed` is the host's own statement
/// about a worker, so a live worker claiming it (with a made-up report) is a protocol error,
/// never a crash that would send an idempotent call's retry waiting for another worker.
pub(crate) fn from_worker(wire: plugvisor_proto::WireError) -> PluginError {
    match wire.kind {
        plugvisor_proto::ErrorKind::WorkerCrashed => PluginError::Protocol(format!(
            "the worker answered worker_crashed, which only the host reports: {}",
            wire.message
        )),
        _ => wire.into(),
    }
}

/// Serializes the body of a call, `{"input":…}`: what [`to_body`] writes, with strings copied
/// whole instead of byte by byte.
pub(crate) fn call_body(input: &Value) -> Result<Bytes, PluginError> {
    field_bytes("input", input)
        .map_err(|e| PluginError::InvalidInput(format!("input is not serializable: {e}")))
}

/// Serializes a request body.
pub(crate) fn to_body<T: serde::Serialize>(value: &T) -> Result<Bytes, PluginError> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| PluginError::InvalidInput(format!("input is not serializable: {e}")))
}
