//! Reading requests: the bearer token, the body (size limit, read deadline) and its JSON.

use super::errors::ApiError;
use super::ApiOptions;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_LENGTH};
use http::request::Parts;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use serde::de::DeserializeOwned;

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

/// Reads the whole body, at most `options.max_body` bytes, within `options.read_timeout`.
///
/// # Errors
/// 413 over the limit (from `Content-Length` before reading, or while reading), 408 when the
/// body is too slow, 400 when the connection fails mid-body.
pub(crate) async fn read_body(
    parts: &Parts,
    body: Incoming,
    options: &ApiOptions,
) -> Result<Bytes, ApiError> {
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > options.max_body as u64) {
        return Err(ApiError::too_large(options.max_body));
    }
    let collect = Limited::new(body, options.max_body).collect();
    match tokio::time::timeout(options.read_timeout, collect).await {
        Err(_) => Err(ApiError::read_timeout()),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<LengthLimitError>() => Err(ApiError::too_large(options.max_body)),
        Ok(Err(e)) => Err(ApiError::bad_request(format!(
            "cannot read the request body: {e}"
        ))),
    }
}

/// Parses `bytes` as `T`; an empty body is refused.
///
/// # Errors
/// 400 naming the problem (syntax with line and column, a missing or unknown field).
pub(crate) fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "the request needs a JSON body; see GET /api/openapi.json",
        ));
    }
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
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
        let (key, raw) = pair.split_once('=').unwrap_or((pair, "true"));
        if key != name {
            continue;
        }
        value = match raw {
            "" | "true" | "1" => true,
            "false" | "0" => false,
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
        assert!(!query_flag(Some("force=0"), "force").unwrap());
        let err = query_flag(Some("force=maybe"), "force").unwrap_err();
        assert!(err.message.contains("force"), "{}", err.message);
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
