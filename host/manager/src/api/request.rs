//! Reading requests: the bearer token, the body (size limit, read deadline) and its JSON.

use super::errors::ApiError;
use super::ApiOptions;
use bytes::{Bytes, BytesMut};
use http::header::{AUTHORIZATION, CONTENT_LENGTH};
use http::request::Parts;
use http_body_util::BodyExt;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use serde::de::DeserializeOwned;

/// A request body: as the client sends it, or complete (rebuilt after a middleware's
/// `before_request` changed it).
pub(crate) type ApiBody = Either<Incoming, Full<Bytes>>;

/// Checks `Authorization: Bearer <token>` when a token is configured.
///
/// # Errors
/// 401 when the header is missing, not a bearer token, or the wrong token.
pub(crate) fn authorize(parts: &Parts, token: Option<&str>) -> Result<(), ApiError> {
    let Some(expected) = token else {
        return Ok(());
    };
    let Some(header) = parts.headers.get(AUTHORIZATION) else {
        return Err(ApiError::unauthorized(
            "this API needs an Authorization: Bearer <token> header",
        ));
    };
    let given = header
        .to_str()
        .ok()
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(given) if same(given.as_bytes(), expected.as_bytes()) => Ok(()),
        _ => Err(ApiError::unauthorized("wrong or malformed bearer token")),
    }
}

/// Compares in time independent of where the first difference is.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The most bytes read and thrown away after a body turned out too large, so the client is
/// still reading when its 413 comes (a client cut off mid-upload sees a reset instead).
const DRAIN_MAX: u64 = 16 << 20;

/// The body length the client declared (`Content-Length`).
pub(crate) fn declared_length(parts: &Parts) -> Option<u64> {
    parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// Reads the whole body, at most `options.max_body` bytes, within `options.read_timeout`.
///
/// # Errors
/// 413 over the limit (from `Content-Length` before reading, or while reading; the rest of the
/// body is drained, up to 16 MiB, so the client can read the answer), 408 when the body is too
/// slow, 400 when the connection fails mid-body.
pub(crate) async fn read_body(
    parts: &Parts,
    mut body: ApiBody,
    options: &ApiOptions,
) -> Result<Bytes, ApiError> {
    let limit = options.max_body;
    if declared_length(parts).is_some_and(|n| n > limit as u64) {
        drain(body, options.read_timeout).await;
        return Err(ApiError::too_large(limit));
    }
    let mut data = BytesMut::new();
    let read = async {
        while let Some(frame) = body.frame().await {
            let frame = frame
                .map_err(|e| ApiError::bad_request(format!("cannot read the request body: {e}")))?;
            if let Ok(piece) = frame.into_data() {
                if data.len() + piece.len() > limit {
                    return Ok(false);
                }
                data.extend_from_slice(&piece);
            }
        }
        Ok(true)
    };
    match tokio::time::timeout(options.read_timeout, read).await {
        Err(_) => Err(ApiError::read_timeout()),
        Ok(Err(e)) => Err(e),
        Ok(Ok(true)) => Ok(data.freeze()),
        Ok(Ok(false)) => {
            drain(body, options.read_timeout).await;
            Err(ApiError::too_large(limit))
        }
    }
}

/// Reads and discards what is left of `body`, at most [`DRAIN_MAX`] bytes and `within`.
pub(crate) async fn drain(mut body: ApiBody, within: std::time::Duration) {
    let mut seen = 0u64;
    let discard = async {
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(piece) = frame.into_data() {
                seen += piece.len() as u64;
                if seen > DRAIN_MAX {
                    return;
                }
            }
        }
    };
    let _ = tokio::time::timeout(within, discard).await;
}

/// Parses `bytes` as the JSON object `T`; an empty body is refused.
///
/// # Errors
/// 400 naming the problem: not an object (serde would read an array as a struct), syntax
/// with line and column, a missing or unknown field.
pub(crate) fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    match first {
        None => Err(ApiError::bad_request(
            "the request needs a JSON body; see GET /api/openapi.json",
        )),
        Some(b'{') => serde_json::from_slice(bytes)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}"))),
        Some(_) => Err(ApiError::bad_request(format!(
            "the body must be a JSON object, got {}",
            json_kind(bytes)
        ))),
    }
}

/// What kind of JSON value `bytes` hold, for messages.
fn json_kind(bytes: &[u8]) -> &'static str {
    match serde_json::from_slice::<serde_json::Value>(bytes) {
        Ok(serde_json::Value::Array(_)) => "an array",
        Ok(serde_json::Value::String(_)) => "a string",
        Ok(serde_json::Value::Number(_)) => "a number",
        Ok(serde_json::Value::Bool(_)) => "a boolean",
        Ok(serde_json::Value::Null) => "null",
        Ok(serde_json::Value::Object(_)) => "an object",
        Err(_) => "something that is not JSON",
    }
}

/// Parses `bytes` as `T`, or `T::default()` for an empty body.
///
/// # Errors
/// As [`parse`].
pub(crate) fn parse_optional<T: DeserializeOwned + Default>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    parse(bytes)
}

/// The boolean query parameter `name`: absent is false; `name`, `name=true` or `name=1` true;
/// `name=false` or `name=0` false.
///
/// # Errors
/// 400 for another value.
pub(crate) fn query_flag(query: Option<&str>, name: &str) -> Result<bool, ApiError> {
    let pairs = query.unwrap_or("").split('&').filter(|p| !p.is_empty());
    let mut value = false;
    for pair in pairs {
        // A bare `?force` is the flag set; with `=`, only `true` or `false` (the OpenAPI
        // document's boolean): schemathesis found `?force=` taken for true.
        let (key, raw) = pair.split_once('=').unwrap_or((pair, "true"));
        if key != name {
            continue;
        }
        value = match raw {
            "true" => true,
            "false" => false,
            other => {
                return Err(ApiError::bad_request(format!(
                    "query parameter {name}={other:?}: expected true or false"
                )))
            }
        };
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_and_bad_values_are_named() {
        assert!(!query_flag(None, "force").unwrap());
        assert!(query_flag(Some("force"), "force").unwrap());
        assert!(query_flag(Some("a=1&force=true"), "force").unwrap());
        assert!(!query_flag(Some("force=false"), "force").unwrap());
        for bad in ["force=maybe", "force=", "force=1", "force=0"] {
            let err = query_flag(Some(bad), "force").unwrap_err();
            assert!(err.message.contains("force"), "{bad}: {}", err.message);
        }
    }

    #[test]
    fn tokens_compare_exactly() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"abcd"));
    }

    #[test]
    fn malformed_json_names_the_problem() {
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Load {
            plugin_id: String,
        }
        let err = parse::<Load>(b"{\"plugin_id\": ").unwrap_err();
        assert!(err.message.contains("line 1"), "{}", err.message);
        let err = parse::<Load>(b"{\"plugn_id\": \"x\"}").unwrap_err();
        assert!(err.message.contains("plugn_id"), "{}", err.message);
        assert!(parse::<Load>(b"").is_err());
    }
}
