//! Plugin routes on the API server: a request under a loaded plugin's prefix
//! (`/plugins/<plugin>/…` by default) is checked (path, token, size), given forwarding
//! headers, and reverse-proxied to the plugin's worker with both bodies streamed.

use super::errors::ApiError;
use super::reply::{Body, BodyError, Reply};
use super::request::{authorize, declared_length, drain, ApiBody};
use super::Ctx;
use crate::manager::RouteTarget;
use http::header::{HeaderName, HeaderValue, HOST};
use http::request::Parts;
use http::{Request, Uri};
use http_body_util::BodyExt;
use std::net::IpAddr;

/// Headers the host sets on every forwarded request.
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The plugin route `parts` addresses, if any: its path is normalised first, so no encoded
/// or dot segment can lead anywhere else.
///
/// # Errors
/// 400 for a path that cannot be normalised safely (an encoded `/`, a `..` above the root,
/// control characters) when it would otherwise reach a plugin's prefix.
pub(crate) fn target(ctx: &Ctx, parts: &Parts) -> Result<Option<RouteTarget>, ApiError> {
    let raw = parts.uri.path();
    let normalised = match normalise(raw) {
        Ok(path) => path,
        // Only a problem when it is meant for a plugin (the API answers 404 otherwise).
        Err(why) if raw.starts_with("/plugins/") || ctx.manager.route_target(raw).is_some() => {
            return Err(ApiError::bad_request(format!("path {raw:?}: {why}")));
        }
        Err(_) => return Ok(None),
    };
    Ok(ctx.manager.route_target(&normalised))
}

/// Forwards the request to the target plugin's route and answers with its answer.
pub(crate) async fn forward(
    ctx: &Ctx,
    parts: &Parts,
    body: ApiBody,
    client: IpAddr,
    target: RouteTarget,
) -> Result<Reply, ApiError> {
    if !target.http.public {
        authorize(parts, ctx.options.token.as_deref())?;
    }
    let method = parts.method.as_str();
    let limit = target.http.max_body(method, &target.rest);
    if declared_length(parts).is_some_and(|n| n > limit) {
        drain(body, ctx.options.read_timeout).await;
        return Err(ApiError::too_large(
            usize::try_from(limit).unwrap_or(usize::MAX),
        ));
    }
    let request = forwarded(parts, &target, client)?;
    let limited = http_body_util::Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX));
    let request = request
        .body(limited)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let answer = tokio::time::timeout(
        target.http.timeout(method, &target.rest),
        ctx.manager.route(&target.plugin, request),
    )
    .await
    .map_err(|_| timed_out(&target, method))?
    .map_err(ApiError::from_call)?;
    let (parts, body) = answer.into_parts();
    let body: Body = body
        .map_err(|e| -> BodyError { Box::new(e) })
        .boxed_unsync();
    Ok(Reply::from_parts(parts, body))
}

fn timed_out(target: &RouteTarget, method: &str) -> ApiError {
    let message = format!(
        "{} did not answer {method} {} within {:?}",
        target.plugin,
        target.rest,
        target.http.timeout(method, &target.rest)
    );
    ApiError::new(
        super::errors::ApiKind::Wire(plugvisor_proto::ErrorKind::TimedOut),
        message,
    )
}

/// The head of the forwarded request: the path below the prefix (normalised) with the
/// query, the client's headers, and the forwarding headers.
fn forwarded(
    parts: &Parts,
    target: &RouteTarget,
    client: IpAddr,
) -> Result<http::request::Builder, ApiError> {
    let query = parts
        .uri
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let uri: Uri = format!("{}{query}", encode_path(&target.rest))
        .parse()
        .map_err(|e| ApiError::bad_request(format!("path: {e}")))?;
    let mut builder = Request::builder().method(parts.method.clone()).uri(uri);
    let headers = builder
        .headers_mut()
        .ok_or_else(|| ApiError::internal("request builder"))?;
    for (name, value) in &parts.headers {
        headers.append(name, value.clone());
    }
    let host = parts.headers.get(HOST).cloned();
    headers.insert(X_FORWARDED_FOR, header_value(&client.to_string()));
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    if let Some(host) = host {
        headers.insert(X_FORWARDED_HOST, host);
    }
    let id = uuid::Uuid::new_v4().simple().to_string();
    headers.insert(X_REQUEST_ID, header_value(&id));
    Ok(builder)
}

fn header_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// The path with every segment percent-decoded and `.`/`..` resolved.
///
/// # Errors
/// A segment that decodes to `/`, `\` or a control character, invalid UTF-8, or a `..`
/// above the root.
pub(crate) fn normalise(path: &str) -> Result<String, &'static str> {
    let mut out: Vec<String> = Vec::new();
    for segment in path.split('/').skip(1) {
        let decoded = percent_decode(segment)?;
        if decoded.contains(['/', '\\']) || decoded.chars().any(char::is_control) {
            return Err("a segment holds an encoded '/', a '\\' or a control character");
        }
        match decoded.as_str() {
            "." => {}
            ".." => {
                out.pop().ok_or("'..' climbs above the root")?;
            }
            _ => out.push(decoded),
        }
    }
    Ok(format!("/{}", out.join("/")))
}

pub(crate) fn percent_decode(segment: &str) -> Result<String, &'static str> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or("a truncated %-escape")?;
            let text = std::str::from_utf8(hex).map_err(|_| "a bad %-escape")?;
            out.push(u8::from_str_radix(text, 16).map_err(|_| "a bad %-escape")?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "a segment is not UTF-8")
}

/// `path` with the characters a URI path may not hold raw percent-encoded again.
fn encode_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for byte in path.bytes() {
        let plain = byte.is_ascii_alphanumeric() || b"/-._~!$&'()*+,;=:@".contains(&byte);
        if plain {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_decoded_and_dot_segments_resolved_or_refused() {
        assert_eq!(
            normalise("/plugins/echo/hello").unwrap(),
            "/plugins/echo/hello"
        );
        assert_eq!(
            normalise("/plugins/echo/./a/../hello").unwrap(),
            "/plugins/echo/hello"
        );
        assert_eq!(
            normalise("/plugins/%65cho/hello").unwrap(),
            "/plugins/echo/hello"
        );
        assert_eq!(
            normalise("/plugins/echo/%2e%2e/%2e%2e/api").unwrap(),
            "/api"
        );
        assert!(normalise("/plugins/echo/..%2F..%2Fapi").is_err());
        assert!(normalise("/../../etc").is_err());
        assert!(normalise("/plugins/echo/a%00b").is_err());
        assert!(normalise("/plugins/echo/%zz").is_err());
        assert_eq!(encode_path("/a b/ü"), "/a%20b/%C3%BC");
    }
}
