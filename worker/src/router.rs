//! The router: bearer-token check, route table, and dispatch to the handlers.

use crate::handlers::{self, Handled};
use crate::reply::{self, Reply};
use crate::state::Shared;
use http::header::{HeaderValue, ALLOW, AUTHORIZATION};
use http::{HeaderMap, Method, Request};
use hyper::body::{Body as _, Incoming};
use plugvisor_proto::wire::routes;
use plugvisor_proto::{ErrorKind, Plugin, WireError};
use std::convert::Infallible;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// The routes of the worker protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Health,
    Info,
    Config,
    ConfigSchema,
    Initialize,
    Execute,
    ExecuteStream,
    Cleanup,
    Shutdown,
    /// A plugin route: `ANY /v1/route/…`.
    Plugin,
    /// The plugin's own health check.
    PluginHealth,
    /// A named method: `POST /v1/methods/<name>`.
    Method,
    /// A middleware's `before_request` hook.
    BeforeRequest,
    /// A middleware's `after_response` hook.
    AfterResponse,
    /// A host event for a subscribed plugin.
    Events,
    /// `GET` (is it here?) or `PUT` (upload) of content by its SHA-256.
    Files,
    /// `GET` (download) or `DELETE` of a file in the transfer directory.
    File,
}

/// Path, method and route of every endpoint.
const TABLE: [(&str, Method, Route); 13] = [
    (routes::HEALTH, Method::GET, Route::Health),
    (routes::INFO, Method::GET, Route::Info),
    (routes::CONFIG, Method::GET, Route::Config),
    (routes::CONFIG_SCHEMA, Method::GET, Route::ConfigSchema),
    (routes::INITIALIZE, Method::POST, Route::Initialize),
    (routes::EXECUTE, Method::POST, Route::Execute),
    (routes::EXECUTE_STREAM, Method::POST, Route::ExecuteStream),
    (routes::CLEANUP, Method::POST, Route::Cleanup),
    (routes::SHUTDOWN, Method::POST, Route::Shutdown),
    (routes::BEFORE_REQUEST, Method::POST, Route::BeforeRequest),
    (routes::AFTER_RESPONSE, Method::POST, Route::AfterResponse),
    (routes::PLUGIN_HEALTH, Method::POST, Route::PluginHealth),
    (routes::EVENTS, Method::POST, Route::Events),
];

/// Answers one request. Never fails: every problem is an error answer.
///
/// # Cancel safety
/// Dropping the future (the client closed the connection) drops the plugin call with it.
pub(crate) async fn handle<P: Plugin>(
    shared: Arc<Shared<P>>,
    req: Request<Incoming>,
) -> Result<Reply, Infallible> {
    if req.uri().path() == routes::PROBE && req.method() == Method::GET {
        return Ok(early(handlers::probe(shared.shutdown.is_cancelled()), &req));
    }
    if !authorized(&shared.expected_auth, req.headers()) {
        tracing::debug!(path = req.uri().path(), "unauthorized request");
        let err = WireError::new(ErrorKind::Unauthorized, "missing or wrong bearer token");
        return Ok(early(reply::error(err), &req));
    }
    let route = match find(req.method(), req.uri().path()) {
        Ok(route) => route,
        Err(answer) => return Ok(early(*answer, &req)),
    };
    Ok(dispatch(&shared, route, req)
        .await
        .unwrap_or_else(reply::error))
}

/// An answer given before the request's body was read closes the connection after it: the
/// unread rest of the body must never be parsed as a next request (hyper 1.12 then trips over
/// its own state: a debug assertion, or a lost answer in release builds).
fn early(mut answer: Reply, req: &Request<Incoming>) -> Reply {
    if !req.body().is_end_stream() {
        let close = HeaderValue::from_static("close");
        answer.headers_mut().insert(http::header::CONNECTION, close);
    }
    answer
}

/// Runs the handler of `route`.
///
/// The handlers whose futures are larger than `execute`'s are boxed: the request's future is
/// as large as the largest handler it may run (3.8 KB before, with a plugin route's), and
/// hyper copies it into place for every request.
async fn dispatch<P: Plugin>(shared: &Shared<P>, route: Route, req: Request<Incoming>) -> Handled {
    match route {
        Route::Health => handlers::health(shared),
        Route::Info => handlers::info(shared),
        Route::Config => handlers::config(shared),
        Route::ConfigSchema => handlers::config_schema(shared),
        Route::Initialize => handlers::initialize(shared, req).await,
        Route::Execute => handlers::execute(shared, req).await,
        Route::ExecuteStream => Box::pin(handlers::execute_stream(shared, req)).await,
        Route::Cleanup => handlers::cleanup(shared).await,
        Route::Shutdown => handlers::shutdown(shared),
        Route::Plugin => Box::pin(handlers::route(shared, req)).await,
        Route::Method => handlers::method(shared, req).await,
        Route::PluginHealth => handlers::plugin_health(shared).await,
        Route::BeforeRequest => Box::pin(handlers::before_request(shared, req)).await,
        Route::AfterResponse => Box::pin(handlers::after_response(shared, req)).await,
        Route::Events => handlers::event(shared, req).await,
        Route::Files => files(shared, req).await,
        Route::File if req.method() == Method::DELETE => crate::uploads::remove(shared, &req),
        Route::File => crate::uploads::download(shared, &req),
    }
}

/// `PUT /v1/files`, or `GET` or `PUT /v1/files/<sha256>`.
async fn files<P: Plugin>(shared: &Shared<P>, req: Request<Incoming>) -> Handled {
    let Some(sha) = req.uri().path().strip_prefix(routes::FILES_PREFIX) else {
        return crate::uploads::upload(shared, None, req).await;
    };
    let sha = sha.to_owned();
    match *req.method() {
        Method::PUT => crate::uploads::upload(shared, Some(&sha), req).await,
        _ => crate::uploads::lookup(shared, &sha),
    }
}

/// The route for `method` and `path`, or the 404 / 405 answer.
fn find(method: &Method, path: &str) -> Result<Route, Box<Reply>> {
    let plugin_route = path
        .strip_prefix(routes::ROUTE_PREFIX)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
    if plugin_route {
        return Ok(Route::Plugin);
    }
    if path == routes::FILES {
        return match *method {
            Method::PUT => Ok(Route::Files),
            _ => Err(Box::new(wrong_method(path, &Method::PUT, method))),
        };
    }
    if path.starts_with(routes::FILES_PREFIX) {
        return match *method {
            Method::GET | Method::PUT => Ok(Route::Files),
            _ => Err(Box::new(wrong_method(path, &Method::PUT, method))),
        };
    }
    if path == routes::FILE {
        return match *method {
            Method::GET | Method::DELETE => Ok(Route::File),
            _ => Err(Box::new(wrong_method(path, &Method::GET, method))),
        };
    }
    if path.starts_with(routes::METHOD_PREFIX) {
        return match *method {
            Method::POST => Ok(Route::Method),
            _ => Err(Box::new(wrong_method(path, &Method::POST, method))),
        };
    }
    let Some((_, allowed, route)) = TABLE.iter().find(|(p, _, _)| *p == path) else {
        let err = WireError::new(ErrorKind::NotFound, format!("no route {path}"));
        return Err(Box::new(reply::error(err)));
    };
    if method != allowed {
        return Err(Box::new(wrong_method(path, allowed, method)));
    }
    Ok(*route)
}

/// `405` naming the method `path` takes, with the `Allow` header.
fn wrong_method(path: &str, allowed: &Method, method: &Method) -> Reply {
    let message = format!("{path} takes {allowed}, not {method}");
    let mut answer = reply::error(WireError::new(ErrorKind::MethodNotAllowed, message));
    if let Ok(value) = HeaderValue::from_str(allowed.as_str()) {
        answer.headers_mut().insert(ALLOW, value);
    }
    answer
}

/// True when the `Authorization` header is exactly `Bearer <token>` (constant-time compare).
fn authorized(expected: &[u8], headers: &HeaderMap) -> bool {
    headers
        .get(AUTHORIZATION)
        .is_some_and(|got| bool::from(got.as_bytes().ct_eq(expected)))
}
