//! One handler per route: read the request, call the plugin (panics contained), answer.

use crate::host;
use crate::ndjson::NdjsonBody;
use crate::offload::{offload, on_runtime, PumpedBody};
use crate::reply::{self, Reply};
use crate::request::{read_call, read_json};
use crate::routes::{ResponseBody, RouteBody, RouteRequest, RouteResponse};
use crate::state::{InFlight, Shared};
use crate::transfer::{denied, TransferDir};
use crate::unwind::{guarded, guarded_sync};
use futures_util::StreamExt;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::{Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use plugvisor_proto::file_ref::visit_file_refs;
use plugvisor_proto::wire::{
    handles_event, routes, AfterResponse, ConfigResponse, ConfigSchemaResponse, EventDelivery,
    HealthResponse, Hook, HookRequest, InfoResponse, InitializeRequest, NDJSON, PROTOCOL_VERSION,
};
use plugvisor_proto::{json, ErrorKind, Plugin, PluginError, Value, WireError};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// What a handler returns: an answer, or an error that becomes an error answer.
pub(crate) type Handled = Result<Reply, WireError>;

/// Capabilities announced by `/v1/info` (and `routes` when the plugin has routes).
const CAPABILITIES: [&str; 3] = ["execute", "stream", "files"];

/// `GET /v1/health`: counters only, never plugin code.
pub(crate) fn health<P>(shared: &Shared<P>) -> Handled {
    let status = if shared.shutdown.is_cancelled() {
        "stopping"
    } else {
        "ok"
    };
    Ok(reply::json(
        StatusCode::OK,
        &HealthResponse {
            status: status.to_owned(),
            in_flight: shared.counters.in_flight(),
            calls_total: shared.counters.calls_total(),
            pid: std::process::id(),
        },
    ))
}

/// `GET /v1/probe` (no token): pass while serving, fail (503) once shutdown began.
pub(crate) fn probe(stopping: bool) -> Reply {
    let (status, word) = match stopping {
        false => (StatusCode::OK, "pass"),
        true => (StatusCode::SERVICE_UNAVAILABLE, "fail"),
    };
    reply::json(status, &json!({ "status": word }))
}

/// `GET /v1/info`: identity, protocol, schema, capabilities.
pub(crate) fn info<P: Plugin>(shared: &Shared<P>) -> Handled {
    let info = info_response(shared)?;
    Ok(reply::json(StatusCode::OK, &info))
}

/// What `GET /v1/info` answers (also put on the handshake line).
///
/// # Errors
/// [`PluginError::Failed`] when the plugin panics in `name`, `version` or `config_schema`.
pub(crate) fn info_response<P: Plugin>(shared: &Shared<P>) -> Result<InfoResponse, PluginError> {
    let plugin = &*shared.plugin;
    guarded_sync(|| InfoResponse {
        name: plugin.name().to_owned(),
        version: plugin.version().to_owned(),
        protocol: PROTOCOL_VERSION,
        config_schema: plugin.config_schema(),
        capabilities: capabilities(shared),
        pid: std::process::id(),
        routes: shared.route_specs.clone(),
        hooks: shared.hooks.clone(),
        methods: shared.method_specs.clone(),
        events: shared.event_names.clone(),
    })
}

fn capabilities<P>(shared: &Shared<P>) -> Vec<String> {
    let mut all: Vec<String> = CAPABILITIES.iter().map(|c| (*c).to_owned()).collect();
    let extensions = [
        ("routes", !shared.route_specs.is_empty()),
        ("middleware", !shared.hooks.is_empty()),
        ("methods", !shared.method_specs.is_empty()),
        ("health_check", shared.health_check.is_some()),
        ("events", !shared.event_names.is_empty()),
        ("file_transfer", shared.transfer.is_some()),
        ("streamed_upload", shared.transfer.is_some()),
    ];
    all.extend(extensions.iter().filter(|e| e.1).map(|e| e.0.to_owned()));
    all
}

/// `POST /v1/plugin_health`: the plugin's own verdict (404 when it has no health check).
pub(crate) async fn plugin_health<P: Plugin>(shared: &Shared<P>) -> Handled {
    refuse_when_stopping(shared)?;
    let Some(check) = shared.health_check.clone() else {
        return Err(WireError::new(
            ErrorKind::NotFound,
            "this plugin has no health check",
        ));
    };
    let work = async move { guarded(async { Ok(check.check().await) }).await };
    let report = offload(shared.exec.as_ref(), work).await??;
    Ok(reply::json(StatusCode::OK, &report))
}

/// `POST /v1/events`: one host event for a subscribed plugin, answered `204` once the plugin
/// handled it (404 when it hears no events or did not declare this one). Not counted as a
/// call.
pub(crate) async fn event<P: Plugin>(shared: &Shared<P>, req: Request<Incoming>) -> Handled {
    refuse_when_stopping(shared)?;
    let Some(events) = shared.events.clone() else {
        return Err(WireError::new(
            ErrorKind::NotFound,
            "this plugin hears no events",
        ));
    };
    let delivery: EventDelivery = read_json(req, shared.max_body).await?;
    if !handles_event(&shared.event_names, &delivery.event) {
        return Err(WireError::new(
            ErrorKind::NotFound,
            format!(
                "this plugin does not handle event {:?} (it handles: {})",
                delivery.event,
                shared.event_names.join(", ")
            ),
        ));
    }
    let work = async move { guarded(events.deliver(delivery)).await };
    offload(shared.exec.as_ref(), work).await??;
    Ok(reply::empty(StatusCode::NO_CONTENT))
}

/// `POST /v1/methods/<name>`: one call of a named method, answered like `execute`.
pub(crate) async fn method<P: Plugin>(shared: &Shared<P>, req: Request<Incoming>) -> Handled {
    refuse_when_stopping(shared)?;
    let name = req.uri().path()[routes::METHOD_PREFIX.len()..].to_owned();
    let methods = match &shared.methods {
        Some(m) if shared.method_specs.iter().any(|s| s.name == name) => Arc::clone(m),
        _ => return Err(unknown_method(shared, &name)),
    };
    let scope = host::scope_of(&req);
    let request = read_call(req, shared.max_body).await?;
    check_file_refs(shared.transfer.as_ref(), &request.input)?;
    let in_flight = shared.counters.start();
    let work = host::scoped(scope, async move {
        let _in_flight = in_flight;
        guarded(methods.call(&name, request.input)).await
    });
    let output = offload(shared.exec.as_ref(), work).await??;
    Ok(reply::output(&output))
}

/// `404` naming the methods the plugin has.
fn unknown_method<P>(shared: &Shared<P>, name: &str) -> WireError {
    let known: Vec<&str> = shared
        .method_specs
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    WireError::new(
        ErrorKind::NotFound,
        format!(
            "no method {name:?} (methods: execute{}{})",
            if known.is_empty() { "" } else { ", " },
            known.join(", ")
        ),
    )
}

/// `POST /v1/hooks/before_request`: the middleware sees a host request.
pub(crate) async fn before_request<P: Plugin>(
    shared: &Shared<P>,
    req: Request<Incoming>,
) -> Handled {
    let middleware = hook_target(shared, Hook::BeforeRequest)?;
    let scope = host::scope_of(&req);
    let request: HookRequest = read_json(req, shared.max_body).await?;
    let _in_flight = shared.counters.start();
    let work = host::scoped(
        scope,
        async move { guarded(middleware.before(request)).await },
    );
    let action = offload(shared.exec.as_ref(), work).await??;
    Ok(reply::json(StatusCode::OK, &action))
}

/// `POST /v1/hooks/after_response`: the middleware sees (and may change) an answer.
pub(crate) async fn after_response<P: Plugin>(
    shared: &Shared<P>,
    req: Request<Incoming>,
) -> Handled {
    let middleware = hook_target(shared, Hook::AfterResponse)?;
    let scope = host::scope_of(&req);
    let exchange: AfterResponse = read_json(req, shared.max_body).await?;
    let _in_flight = shared.counters.start();
    let work = host::scoped(
        scope,
        async move { guarded(middleware.after(exchange)).await },
    );
    let response = offload(shared.exec.as_ref(), work).await??;
    Ok(reply::json(StatusCode::OK, &response))
}

/// The middleware, when it declared `hook` (else 404) and the worker is not stopping.
fn hook_target<P>(
    shared: &Shared<P>,
    hook: Hook,
) -> Result<Arc<dyn crate::middleware::DynMiddleware>, WireError> {
    refuse_when_stopping(shared)?;
    match &shared.middleware {
        Some(m) if shared.hooks.contains(&hook) => Ok(Arc::clone(m)),
        _ => Err(WireError::new(
            ErrorKind::NotFound,
            format!("this plugin serves no {} hook", hook.as_str()),
        )),
    }
}

/// `ANY /v1/route/…`: one request to a plugin route, its body and answer streamed.
pub(crate) async fn route<P: Plugin>(shared: &Shared<P>, req: Request<Incoming>) -> Handled {
    refuse_when_stopping(shared)?;
    let Some(routes) = shared.routes.clone() else {
        return Err(WireError::new(
            ErrorKind::NotFound,
            "this plugin has no routes",
        ));
    };
    let scope = host::scope_of(&req);
    let (parts, body) = req.into_parts();
    let path = parts
        .uri
        .path()
        .strip_prefix(routes::ROUTE_PREFIX)
        .filter(|p| p.starts_with('/'))
        .unwrap_or("/")
        .to_owned();
    let params = match crate::routes::find(&shared.route_specs, &parts.method, &path) {
        Ok((_, params)) => params,
        Err(true) => return Ok(not_allowed(&shared.route_specs, &path, &parts.method)),
        Err(false) => {
            return Err(WireError::new(
                ErrorKind::NotFound,
                format!("no route {path}"),
            ))
        }
    };
    let mut headers = parts.headers;
    headers.remove(http::header::AUTHORIZATION);
    let request = RouteRequest {
        method: parts.method,
        query: parts.uri.query().map(str::to_owned),
        path,
        params,
        headers,
        body: RouteBody(body),
    };
    let in_flight = shared.counters.start();
    let work = host::scoped(scope, async move { guarded(routes.call(request)).await });
    let answer = offload(shared.exec.as_ref(), work).await??;
    Ok(route_reply(answer, in_flight))
}

/// `405` for a route path that exists with other methods, with the `Allow` header.
fn not_allowed(
    specs: &[plugvisor_proto::wire::RouteSpec],
    path: &str,
    method: &http::Method,
) -> Reply {
    let message = format!("{path} does not take {method}");
    let mut answer = reply::error(WireError::new(ErrorKind::MethodNotAllowed, message));
    let allowed = crate::routes::methods_for(specs, path).join(", ");
    if let Ok(value) = HeaderValue::from_str(&allowed) {
        answer.headers_mut().insert(http::header::ALLOW, value);
    }
    answer
}

/// The server's answer for a route's answer; a streamed body keeps the call counted.
fn route_reply(answer: RouteResponse, in_flight: InFlight) -> Reply {
    let body = match answer.body {
        ResponseBody::Full(bytes) => Either::Left(Full::new(bytes)),
        ResponseBody::Stream(chunks) => {
            let counted = chunks.map(move |chunk| {
                let _in_flight = &in_flight;
                chunk
            });
            let body = crate::routes::streamed(Box::pin(counted));
            Either::Right(Either::Right(Either::Right(body)))
        }
    };
    let mut reply = Response::new(body);
    *reply.status_mut() = answer.status;
    *reply.headers_mut() = answer.headers;
    reply
}

/// `GET /v1/config`: the configuration in force.
pub(crate) fn config<P: Plugin>(shared: &Shared<P>) -> Handled {
    let config = guarded_sync(|| shared.plugin.current_config())?;
    Ok(reply::json(StatusCode::OK, &ConfigResponse { config }))
}

/// `GET /v1/config_schema`: the JSON Schema of the configuration.
pub(crate) fn config_schema<P: Plugin>(shared: &Shared<P>) -> Handled {
    let schema = guarded_sync(|| shared.plugin.config_schema())?;
    Ok(reply::json(
        StatusCode::OK,
        &ConfigSchemaResponse { schema },
    ))
}

/// `POST /v1/initialize`: (re-)configure, answer the configuration now in force.
pub(crate) async fn initialize<P: Plugin>(shared: &Shared<P>, req: Request<Incoming>) -> Handled {
    refuse_when_stopping(shared)?;
    let request: InitializeRequest = read_json(req, shared.max_body).await?;
    let plugin = Arc::clone(&shared.plugin);
    let work = async move { guarded(plugin.initialize(request.config)).await };
    offload(shared.exec.as_ref(), work).await??;
    shared.cleaned.store(false, Ordering::Release);
    config(shared)
}

/// `POST /v1/execute`: one call, one result.
pub(crate) async fn execute<P: Plugin>(shared: &Shared<P>, req: Request<Incoming>) -> Handled {
    refuse_when_stopping(shared)?;
    let scope = host::scope_of(&req);
    let request = read_call(req, shared.max_body).await?;
    check_file_refs(shared.transfer.as_ref(), &request.input)?;
    let in_flight = shared.counters.start();
    let plugin = Arc::clone(&shared.plugin);
    let work = host::scoped(scope, async move {
        // Counted until the plugin's future completes or is dropped.
        let _in_flight = in_flight;
        guarded(plugin.execute(request.input)).await
    });
    let output = offload(shared.exec.as_ref(), work).await??;
    Ok(reply::output(&output))
}

/// `POST /v1/execute_stream`: one call, an NDJSON stream of frames.
pub(crate) async fn execute_stream<P: Plugin>(
    shared: &Shared<P>,
    req: Request<Incoming>,
) -> Handled {
    refuse_when_stopping(shared)?;
    let scope = host::scope_of(&req);
    let request = read_call(req, shared.max_body).await?;
    check_file_refs(shared.transfer.as_ref(), &request.input)?;
    let in_flight = shared.counters.start();
    let plugin = Arc::clone(&shared.plugin);
    let work = host::scoped(scope.clone(), async move {
        guarded(plugin.execute_stream(request.input)).await
    });
    let stream = host::scoped_stream(scope, offload(shared.exec.as_ref(), work).await??);
    let body = NdjsonBody::new(stream, in_flight);
    // On a call connection (already on the plugin runtime) the body is encoded inline.
    let body = match &shared.exec {
        Some(exec) if !on_runtime(exec) => Either::Right(Either::Left(PumpedBody::new(body, exec))),
        _ => Either::Left(body),
    };
    let mut answer = Response::new(Either::Right(body));
    let headers = answer.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(NDJSON));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(answer)
}

/// `POST /v1/cleanup`: run the plugin's cleanup now.
pub(crate) async fn cleanup<P: Plugin>(shared: &Shared<P>) -> Handled {
    let plugin = Arc::clone(&shared.plugin);
    let work = async move { guarded(plugin.cleanup()).await };
    offload(shared.exec.as_ref(), work).await??;
    shared.cleaned.store(true, Ordering::Release);
    Ok(reply::json(StatusCode::OK, &json!({"status": "cleaned"})))
}

/// `POST /v1/shutdown`: answer 202, then begin shutdown.
pub(crate) fn shutdown<P>(shared: &Shared<P>) -> Handled {
    tracing::info!("shutdown requested over HTTP");
    shared.shutdown.cancel();
    Ok(reply::json(
        StatusCode::ACCEPTED,
        &json!({"status": "stopping"}),
    ))
}

/// New calls are refused with `unavailable` once shutdown has begun.
fn refuse_when_stopping<P>(shared: &Shared<P>) -> Result<(), WireError> {
    if shared.shutdown.is_cancelled() {
        return Err(WireError::new(
            ErrorKind::Unavailable,
            "the worker is shutting down",
        ));
    }
    Ok(())
}

/// Why a file reference in an input was not accepted.
enum RefProblem {
    /// A `$file` object with a bad body: the request is malformed (400).
    Malformed(String),
    /// A well-formed reference the worker may not open (403).
    Denied(PluginError),
}

impl From<String> for RefProblem {
    fn from(message: String) -> Self {
        Self::Malformed(message)
    }
}

/// Checks every file reference in `input` names a regular file inside the transfer directory.
fn check_file_refs(transfer: Option<&TransferDir>, input: &Value) -> Result<(), WireError> {
    let result = visit_file_refs(input, &mut |file| match transfer {
        Some(dir) => dir.open_ref(&file).map(drop).map_err(RefProblem::Denied),
        None => Err(RefProblem::Denied(denied(
            &file.path,
            "this worker has no transfer directory",
        ))),
    });
    match result {
        Ok(()) => Ok(()),
        Err(RefProblem::Malformed(message)) => Err(WireError::new(ErrorKind::BadRequest, message)),
        Err(RefProblem::Denied(err)) => {
            tracing::warn!(error = %err, "file reference refused");
            Err(WireError::from(err))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Counters;
    use http_body_util::BodyExt;
    use std::sync::atomic::AtomicBool;
    use tokio_util::sync::CancellationToken;

    struct Nop;

    impl Plugin for Nop {
        fn name(&self) -> &str {
            "nop"
        }
        fn version(&self) -> &str {
            "0.0.0"
        }
        async fn execute(&self, input: Value) -> Result<Value, PluginError> {
            Ok(input)
        }
    }

    fn shared() -> Shared<Nop> {
        Shared {
            plugin: Arc::new(Nop),
            expected_auth: b"Bearer t".to_vec(),
            transfer: None,
            max_body: 1024,
            shutdown: CancellationToken::new(),
            counters: Arc::new(Counters::default()),
            cleaned: AtomicBool::new(false),
            exec: None,
            tls: None,
            routes: None,
            route_specs: Vec::new(),
            middleware: None,
            hooks: Vec::new(),
            methods: None,
            method_specs: Vec::new(),
            health_check: None,
            events: None,
            event_names: Vec::new(),
        }
    }

    async fn health_of(shared: &Shared<Nop>) -> HealthResponse {
        let Ok(answer) = health(shared) else {
            panic!("health failed")
        };
        let bytes = answer.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn health_counts_calls_and_reports_stopping() {
        let shared = shared();
        let guard = shared.counters.start();
        let health = health_of(&shared).await;
        assert_eq!((health.status.as_str(), health.in_flight), ("ok", 1));
        drop(guard);
        shared.shutdown.cancel();
        let health = health_of(&shared).await;
        assert_eq!(health.status, "stopping");
        assert_eq!((health.in_flight, health.calls_total), (0, 1));
        assert_eq!(health.pid, std::process::id());
    }

    #[test]
    fn file_refs_are_refused_without_a_transfer_dir() {
        let input = json!({"a": [plugvisor_proto::FileRef::new("/x/y", 1).to_value()]});
        let err = check_file_refs(None, &input).unwrap_err();
        assert_eq!(err.kind, ErrorKind::FileAccessDenied);
        assert!(err.message.starts_with("/x/y: "), "{}", err.message);
        assert!(check_file_refs(None, &json!({"path": "/x/y"})).is_ok());
    }
}
