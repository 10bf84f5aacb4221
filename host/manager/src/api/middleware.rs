//! The middleware chain around the call routes and plugin routes: each covering middleware's
//! `before_request` in priority order (it may change the request's headers and JSON body, or
//! answer it), the route, then the `after_response` hooks in reverse order (status, headers,
//! and a complete JSON body).
//!
//! The host's own checks run first (Host/Origin, the token unless the plugin route is public),
//! so no plugin code runs for a request the host refuses; the host's `Authorization` header is
//! never shown to a middleware and cannot be changed by one.

use super::errors::{ApiError, ApiKind};
use super::handlers::dispatch;
use super::plugin_routes::normalise;
use super::reply::{self, Body, Reply};
use super::request::{authorize, declared_length, read_body, ApiBody};
use super::Ctx;
use crate::middleware::{ChainLink, OnError};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Request, StatusCode};
use http_body::Body as _;
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use plugvisor_proto::wire::{AfterResponse, BeforeAction, Hook, HookRequest, HookResponse};
use plugvisor_proto::Value;
use serde_json::json;
use std::net::IpAddr;

/// The call routes a middleware may cover (plugin routes are the rest).
const CALL_ROUTES: [&str; 2] = ["/api/plugins/execute", "/api/plugins/execute_stream"];

/// Headers a middleware neither sees nor sets: the host's credentials, and what belongs to
/// the connection or the body's framing.
const RESERVED: [HeaderName; 9] = [
    header::AUTHORIZATION,
    header::PROXY_AUTHORIZATION,
    header::CONNECTION,
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
    header::HOST,
];

/// The middlewares covering this request, in chain order; empty for every path a middleware
/// may not cover (so the management routes never pay for the lookup).
pub(crate) fn chain(ctx: &Ctx, parts: &Parts) -> Vec<ChainLink> {
    let raw = parts.uri.path();
    if raw.starts_with("/api/") {
        if CALL_ROUTES.contains(&raw) {
            return ctx.manager.middleware_chain(raw);
        }
        return Vec::new();
    }
    match normalise(raw) {
        Ok(path) if path.starts_with("/plugins/") => ctx.manager.middleware_chain(&path),
        _ => Vec::new(),
    }
}

/// A request body a middleware was shown (read whole), or one that streams past it.
enum Held {
    Shown(Bytes),
    Streamed(Incoming),
}

/// Runs `chain` around the request and answers it.
pub(crate) async fn wrap(
    ctx: &Ctx,
    parts: &Parts,
    body: Incoming,
    client: IpAddr,
    chain: Vec<ChainLink>,
) -> Result<Reply, ApiError> {
    host_checks(ctx, parts)?;
    let path = normalise(parts.uri.path()).map_err(ApiError::bad_request)?;
    let (held, shown) = hold_body(ctx, parts, body, &path).await?;
    let mut request = hook_request(parts, path, shown);
    let original_body = request.body.clone();
    let mut entered: Vec<&ChainLink> = Vec::new();
    let mut early = None;
    for link in chain
        .iter()
        .filter(|l| l.serves(Hook::BeforeRequest) || l.serves(Hook::AfterResponse))
    {
        if !link.serves(Hook::BeforeRequest) {
            entered.push(link);
            continue;
        }
        match before(ctx, link, &request).await {
            Ok(Step::Continue(next)) => {
                request = next;
                entered.push(link);
            }
            Ok(Step::Respond(answer)) => {
                early = Some(answer);
                break;
            }
            Err(failure) => match link.on_error {
                OnError::Skip => skipped(link, Hook::BeforeRequest, &failure),
                OnError::FailClosed => {
                    early = Some(reply::error(failure));
                    break;
                }
            },
        }
    }
    let answer = match early {
        Some(answer) => answer,
        None => {
            let changed = request.body != original_body;
            let (parts, body) = rebuilt(parts, &request, held, changed)?;
            dispatch(ctx, &parts, body, client)
                .await
                .unwrap_or_else(reply::error)
        }
    };
    request.body = None;
    Ok(after_all(ctx, &entered, &request, answer).await)
}

/// The checks the route itself would make before any plugin code, made before the chain: the
/// token, unless the request is for a public plugin route.
fn host_checks(ctx: &Ctx, parts: &Parts) -> Result<(), ApiError> {
    let public = super::plugin_routes::target(ctx, parts)?.is_some_and(|t| t.http.public);
    if public {
        Ok(())
    } else {
        authorize(parts, ctx.options.token.as_deref())
    }
}

/// Reads the body when a middleware may see it: the call routes' JSON, or a plugin route's
/// JSON body of declared length within the API's body limit. Anything else streams.
async fn hold_body(
    ctx: &Ctx,
    parts: &Parts,
    body: Incoming,
    path: &str,
) -> Result<(Held, Option<Value>), ApiError> {
    let limit = u64::try_from(ctx.options.max_body).unwrap_or(u64::MAX);
    let call_route = CALL_ROUTES.contains(&path);
    let small_json = is_json(&parts.headers) && declared_length(parts).is_some_and(|n| n <= limit);
    if !call_route && !small_json {
        return Ok((Held::Streamed(body), None));
    }
    let bytes = read_body(parts, Either::Left(body), &ctx.options).await?;
    let shown = serde_json::from_slice(&bytes).ok();
    Ok((Held::Shown(bytes), shown))
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::trim)
        .is_some_and(|t| t.eq_ignore_ascii_case("application/json") || t.ends_with("+json"))
}

/// The request as middlewares see it.
fn hook_request(parts: &Parts, path: String, body: Option<Value>) -> HookRequest {
    HookRequest {
        method: parts.method.to_string(),
        path,
        query: parts.uri.query().map(str::to_owned),
        headers: shown_headers(&parts.headers, &[]),
        body,
    }
}

/// `headers` as a middleware sees them: lower-case names, repeated values joined, without the
/// reserved ones (and without `also`).
fn shown_headers(
    headers: &HeaderMap,
    also: &[HeaderName],
) -> plugvisor_proto::wire::hooks::Headers {
    let mut shown = plugvisor_proto::wire::hooks::Headers::new();
    for name in headers.keys() {
        if RESERVED.contains(name) || also.contains(name) {
            continue;
        }
        let values: Vec<String> = headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        shown.insert(name.as_str().to_owned(), values.join(", "));
    }
    shown
}

/// What one `before_request` decided.
enum Step {
    Continue(HookRequest),
    Respond(Reply),
}

/// Runs one middleware's `before_request` and checks what it answered.
async fn before(ctx: &Ctx, link: &ChainLink, request: &HookRequest) -> Result<Step, ApiError> {
    let action = ctx
        .manager
        .before_request(&link.plugin, request)
        .await
        .map_err(|e| failed(link, Hook::BeforeRequest, &e.to_string(), Some(&e)))?;
    match action {
        BeforeAction::Continue { headers, body } => {
            let mut next = request.clone();
            if let Some(headers) = headers {
                header_map(&headers)
                    .map_err(|why| failed(link, Hook::BeforeRequest, &why, None))?;
                next.headers = headers;
            }
            if let Some(body) = body {
                if request.body.is_none() {
                    let why = "it returned a body for a request whose body it was not shown";
                    return Err(failed(link, Hook::BeforeRequest, why, None));
                }
                next.body = Some(body);
            }
            Ok(Step::Continue(next))
        }
        BeforeAction::Respond(answer) => {
            let reply = answer_reply(&answer, None)
                .map_err(|why| failed(link, Hook::BeforeRequest, &why, None))?;
            Ok(Step::Respond(reply))
        }
    }
}

/// The 502 for a failed hook, naming the middleware (and the plugin's error, with its crash
/// report when it crashed).
fn failed(
    link: &ChainLink,
    hook: Hook,
    why: &str,
    source: Option<&crate::ManagerError>,
) -> ApiError {
    let message = format!(
        "middleware {:?} failed in {}: {why}",
        link.plugin,
        hook.as_str()
    );
    let mut error = ApiError::new(ApiKind::MiddlewareFailed, message)
        .with("middleware", json!(link.plugin))
        .with("hook", json!(hook.as_str()));
    if let Some(crate::ManagerError::Plugin { source, .. }) = source {
        let cause = ApiError::from_plugin(source);
        let mut inner = serde_json::Map::new();
        inner.insert("kind".into(), json!(cause.kind.as_str()));
        inner.extend(cause.extra);
        error = error.with("cause", Value::Object(inner));
    }
    error
}

fn skipped(link: &ChainLink, hook: Hook, failure: &ApiError) {
    tracing::warn!(
        middleware = %link.plugin,
        hook = hook.as_str(),
        error = %failure.message,
        "middleware failed; skipped (on_error = \"skip\")"
    );
}

/// `headers` as a header map.
///
/// # Errors
/// A name or value HTTP does not allow, or a reserved header, named.
fn header_map(headers: &plugvisor_proto::wire::hooks::Headers) -> Result<HeaderMap, String> {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("it returned an invalid header name {name:?}"))?;
        if RESERVED.contains(&name) {
            return Err(format!("it may not set the header {name}"));
        }
        let value = HeaderValue::from_str(value)
            .map_err(|_| format!("it returned an invalid value for header {name}"))?;
        map.insert(name, value);
    }
    Ok(map)
}

/// The request to route after the chain: the middlewares' headers plus the host's reserved
/// ones, and the body as held (re-serialized when a middleware changed it).
fn rebuilt(
    parts: &Parts,
    request: &HookRequest,
    held: Held,
    changed: bool,
) -> Result<(Parts, ApiBody), ApiError> {
    let mut headers = header_map(&request.headers).map_err(ApiError::internal)?;
    for name in &RESERVED {
        for value in parts.headers.get_all(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    let body = match held {
        Held::Streamed(body) => Either::Left(body),
        Held::Shown(bytes) => {
            let bytes = match (&request.body, changed) {
                (Some(value), true) => Bytes::from(serde_json::to_vec(value).unwrap_or_default()),
                _ => bytes,
            };
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
            headers.remove(header::TRANSFER_ENCODING);
            Either::Right(Full::new(bytes))
        }
    };
    let (mut new, ()) = Request::new(()).into_parts();
    new.method = parts.method.clone();
    new.uri = parts.uri.clone();
    new.version = parts.version;
    new.headers = headers;
    Ok((new, body))
}

/// An answer a middleware gave (`Respond`, or an `after_response` result), with `body` as its
/// body instead of the JSON one (a streamed answer's body).
fn answer_reply(answer: &HookResponse, streamed: Option<Body>) -> Result<Reply, String> {
    let status = StatusCode::from_u16(answer.status)
        .ok()
        .filter(|s| (200..600).contains(&s.as_u16()))
        .ok_or_else(|| format!("it returned the status {}", answer.status))?;
    let headers = header_map(&answer.headers)?;
    let body = match (streamed, &answer.body) {
        (Some(body), _) => body,
        (None, Some(value)) => {
            let bytes = serde_json::to_vec(value).map_err(|e| e.to_string())?;
            reply::boxed(Full::new(Bytes::from(bytes)))
        }
        (None, None) => reply::boxed(http_body_util::Empty::new()),
    };
    let mut reply = Reply::new(body);
    *reply.status_mut() = status;
    *reply.headers_mut() = headers;
    Ok(reply)
}

/// Runs the `after_response` hooks of the middlewares the request went through, innermost
/// first.
async fn after_all(
    ctx: &Ctx,
    entered: &[&ChainLink],
    request: &HookRequest,
    answer: Reply,
) -> Reply {
    let afters: Vec<&&ChainLink> = entered
        .iter()
        .rev()
        .filter(|l| l.serves(Hook::AfterResponse))
        .collect();
    if afters.is_empty() {
        return answer;
    }
    let (mut shown, mut kept) = show_answer(ctx, answer).await;
    for link in afters {
        let exchange = AfterResponse {
            request: request.clone(),
            response: shown.clone(),
        };
        match after(ctx, link, exchange, shown.streamed).await {
            Ok(next) => shown = next,
            Err(failure) => match link.on_error {
                OnError::Skip => skipped(link, Hook::AfterResponse, &failure),
                OnError::FailClosed => {
                    let error = reply::error(failure);
                    (shown, kept) = show_answer(ctx, error).await;
                }
            },
        }
    }
    finish(shown, kept)
}

/// Runs one `after_response` and checks its answer can be used.
async fn after(
    ctx: &Ctx,
    link: &ChainLink,
    exchange: AfterResponse,
    streamed: bool,
) -> Result<HookResponse, ApiError> {
    let mut next = ctx
        .manager
        .after_response(&link.plugin, &exchange)
        .await
        .map_err(|e| failed(link, Hook::AfterResponse, &e.to_string(), Some(&e)))?;
    header_map(&next.headers).map_err(|why| failed(link, Hook::AfterResponse, &why, None))?;
    if StatusCode::from_u16(next.status).is_err() || !(200..600).contains(&next.status) {
        let why = format!("it returned the status {}", next.status);
        return Err(failed(link, Hook::AfterResponse, &why, None));
    }
    if streamed || exchange.response.body.is_none() {
        // Only a JSON body it was shown can be changed.
        next.body = exchange.response.body;
    }
    next.streamed = streamed;
    Ok(next)
}

/// The parts of an answer the host keeps while the hooks run: the framing headers, and the body
/// when it streams (or is not JSON).
struct Kept {
    framing: Vec<(HeaderName, HeaderValue)>,
    body: Option<Body>,
}

/// An answer as `after_response` hooks see it: a complete JSON body of at most the API's body
/// limit is read and shown; anything else streams past.
async fn show_answer(ctx: &Ctx, answer: Reply) -> (HookResponse, Kept) {
    let (parts, body) = answer.into_parts();
    let framing = RESERVED
        .iter()
        .flat_map(|n| {
            parts
                .headers
                .get_all(n)
                .iter()
                .map(|v| (n.clone(), v.clone()))
        })
        .filter(|(n, _)| *n != header::CONTENT_LENGTH && *n != header::TRANSFER_ENCODING)
        .collect();
    let mut shown = HookResponse {
        status: parts.status.as_u16(),
        headers: shown_headers(&parts.headers, &[]),
        body: None,
        streamed: true,
    };
    let limit = u64::try_from(ctx.options.max_body).unwrap_or(u64::MAX);
    let small = body.size_hint().exact().is_some_and(|n| n <= limit);
    if !(small && is_json(&parts.headers)) {
        let framing = keep_length(&parts.headers, framing);
        return (
            shown,
            Kept {
                framing,
                body: Some(body),
            },
        );
    }
    match body.collect().await {
        Ok(collected) => {
            let bytes = collected.to_bytes();
            shown.streamed = false;
            shown.body = serde_json::from_slice(&bytes).ok();
            let body = match shown.body {
                Some(_) => None,
                None => Some(reply::boxed(Full::new(bytes))),
            };
            (shown, Kept { framing, body })
        }
        Err(e) => {
            let error = ApiError::new(
                ApiKind::Wire(plugvisor_proto::ErrorKind::WorkerCrashed),
                format!("the answer broke off: {e}"),
            );
            let bytes = Bytes::from(error.body_bytes());
            let mut shown = HookResponse::json(error.status.as_u16(), Value::Null);
            shown.body = serde_json::from_slice(&bytes).ok();
            (
                shown,
                Kept {
                    framing,
                    body: None,
                },
            )
        }
    }
}

/// A streamed answer keeps its declared length.
fn keep_length(
    headers: &HeaderMap,
    mut framing: Vec<(HeaderName, HeaderValue)>,
) -> Vec<(HeaderName, HeaderValue)> {
    if let Some(length) = headers.get(header::CONTENT_LENGTH) {
        framing.push((header::CONTENT_LENGTH, length.clone()));
    }
    framing
}

/// The answer after every hook.
fn finish(shown: HookResponse, kept: Kept) -> Reply {
    match answer_reply(&shown, kept.body) {
        Ok(mut reply) => {
            for (name, value) in kept.framing {
                reply.headers_mut().append(name, value);
            }
            reply
        }
        Err(why) => reply::error(ApiError::internal(why)),
    }
}
