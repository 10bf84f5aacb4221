//! One function per route: authenticate, match the route, read and check the body, ask the
//! manager, answer.

use super::errors::ApiError;
use super::execute::ExecuteCall;
use super::reply::{self, Reply};
use super::request::{
    authorize, declared_length, parse, parse_optional, query_flag, read_body, ApiBody,
};
use super::routes::{resolve, Op};
use super::{guard, health, middleware, openapi, plugin_routes, streams, ui, Ctx};
use crate::manifest::PluginKind;
use crate::PluginManager;
use bytes::Bytes;
use http::request::Parts;
use http::{Request, StatusCode};
use http_body_util::Either;
use hyper::body::Incoming;
use plugvisor_host::CallOptions;
use plugvisor_proto::wire::trace::TRACERESPONSE_HEADER;
use plugvisor_proto::wire::{TraceParent, DEFAULT_METHOD};
use plugvisor_proto::Value;
use serde::Deserialize;
use serde_json::json;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

/// `POST /api/plugins/load`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LoadRequest {
    plugin_id: String,
    #[serde(default)]
    config: Option<Value>,
}

/// `POST /api/plugins/{id}/unload` (the body is optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct UnloadRequest {
    #[serde(default)]
    force: bool,
}

/// `POST /api/plugins/{id}/reload` takes no fields (an empty body or `{}`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReloadRequest {}

/// `POST /api/plugins/{id}/tasks/{task}/run` takes no fields (an empty body or `{}`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RunTaskRequest {}

/// `PUT /api/plugins/{id}/config`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigRequest {
    config: Value,
}

/// `POST /api/plugins/execute_stream`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamRequest {
    plugin_id: String,
    input: Value,
    /// The deadline of the whole stream, from the request (start included).
    #[serde(default)]
    timeout_ms: Option<u64>,
}

/// Answers one request; every failure becomes an error answer.
pub(crate) async fn handle(ctx: Arc<Ctx>, req: Request<Incoming>, peer: SocketAddr) -> Reply {
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    let trace = trace_of(&parts);
    let span = tracing::info_span!("api", trace_id = %trace.trace_id_hex());
    let routed = plugvisor_host::with_trace(trace, route(&ctx, &parts, body, peer.ip()));
    let mut reply = match tracing::Instrument::instrument(routed, span).await {
        Ok(reply) => reply,
        Err(e) => reply::error(e),
    };
    if let Ok(value) = http::HeaderValue::try_from(trace.to_string()) {
        reply.headers_mut().insert(TRACERESPONSE_HEADER, value);
    }
    tracing::debug!(
        method = %parts.method,
        path = parts.uri.path(),
        status = reply.status().as_u16(),
        took_us = started.elapsed().as_micros() as u64,
        "API request"
    );
    reply
}

/// The span a request runs in: a child of the client's `traceparent` when it sent a valid
/// one, else a new trace.
fn trace_of(parts: &Parts) -> TraceParent {
    plugvisor_host::traceparent_of(&parts.headers)
        .map_or_else(plugvisor_host::new_trace, plugvisor_host::child_span)
}

async fn route(
    ctx: &Ctx,
    parts: &Parts,
    body: Incoming,
    client: IpAddr,
) -> Result<Reply, ApiError> {
    // The status page and UI plugins' assets: static files, no token (see api/ui).
    if let Some(answer) = ui::answer(ctx, parts).await {
        return answer;
    }
    guard::check(parts, &ctx.options.browser)?;
    let chain = middleware::chain(ctx, parts);
    if chain.is_empty() {
        return dispatch(ctx, parts, Either::Left(body), client).await;
    }
    middleware::wrap(ctx, parts, body, client, chain).await
}

/// Routes a request that passed the browser guard (and the middlewares covering it).
pub(crate) async fn dispatch(
    ctx: &Ctx,
    parts: &Parts,
    body: ApiBody,
    client: IpAddr,
) -> Result<Reply, ApiError> {
    // Plugin routes live outside /api (a prefix may never be under it).
    if !parts.uri.path().starts_with("/api/") {
        if let Some(target) = plugin_routes::target(ctx, parts)? {
            return plugin_routes::forward(ctx, parts, body, client, target).await;
        }
    }
    authorize(parts, ctx.options.token.as_deref())?;
    let matched = resolve(&parts.method, parts.uri.path())?;
    let id = matched.id.unwrap_or_default();
    let m = &ctx.manager;
    match matched.op {
        Op::ListLoaded => {
            let kind = kind_filter(parts.uri.query())?;
            let plugins: Vec<_> = m
                .loaded()
                .into_iter()
                .filter(|p| of_kind(p, kind))
                .collect();
            Ok(reply::ok(&json!({ "plugins": plugins })))
        }
        Op::ListAvailable => Ok(available(m, kind_filter(parts.uri.query())?)),
        Op::Health => Ok(health::answer(m)),
        Op::Status => Ok(reply::ok(&m.status())),
        Op::Events => Ok(reply::streamed(
            streams::NDJSON,
            streams::events(m, ctx.shutdown.clone()),
        )),
        Op::Load => load(ctx, parse(&body_of(ctx, parts, body).await?)?).await,
        Op::Execute => {
            let call = ExecuteCall::parse(&body_of(ctx, parts, body).await?)?;
            execute(ctx, call, client).await
        }
        Op::ExecuteStream => {
            let req = parse(&body_of(ctx, parts, body).await?)?;
            execute_stream(ctx, req, client).await
        }
        Op::Upload => upload(ctx, parts, body, client).await,
        Op::Download => ctx.files.download(&id).await,
        Op::Get => get(m, &id),
        Op::Unload => {
            let query = query_flag(parts.uri.query(), "force")?;
            let req: UnloadRequest = parse_optional(&body_of(ctx, parts, body).await?)?;
            let force = req.force || query;
            unload(m, &id, force).await
        }
        Op::Reload => {
            let ReloadRequest {} = parse_optional(&body_of(ctx, parts, body).await?)?;
            reload(m, &id).await
        }
        Op::SetConfig => set_config(m, &id, parse(&body_of(ctx, parts, body).await?)?).await,
        Op::GetConfig => {
            let config = m.config(&id).map_err(ApiError::from_manager)?;
            Ok(reply::ok(
                &json!({ "config": config.config, "schema": config.schema }),
            ))
        }
        Op::Tasks => {
            let tasks = m.tasks(&id).map_err(ApiError::from_manager)?;
            Ok(reply::ok(&json!({ "plugin": id, "tasks": tasks })))
        }
        Op::RunTask => {
            let RunTaskRequest {} = parse_optional(&body_of(ctx, parts, body).await?)?;
            let task = matched.task.unwrap_or_default();
            let info = m
                .run_task(&id, &task)
                .await
                .map_err(ApiError::from_manager)?;
            Ok(reply::ok(&info))
        }
        Op::OpenApi => Ok(reply::ok(&openapi::openapi_with_routes(&m.routes()))),
        Op::Metrics => Ok(metrics(m)),
    }
}

async fn body_of(ctx: &Ctx, parts: &Parts, body: ApiBody) -> Result<Bytes, ApiError> {
    read_body(parts, body, &ctx.options).await
}

/// Every manifest (re-read from disk first, of `kind` if given) and the problems of broken
/// ones.
fn available(m: &PluginManager, kind: Option<PluginKind>) -> Reply {
    m.rediscover();
    let plugins: Vec<_> = m
        .available()
        .into_iter()
        .filter(|p| of_kind(p, kind))
        .collect();
    reply::ok(&json!({
        "plugins": plugins,
        "manifest_errors": m.manifest_errors(),
    }))
}

/// The `kind` query parameter, if any (400 naming the kinds for an unknown one).
fn kind_filter(query: Option<&str>) -> Result<Option<PluginKind>, ApiError> {
    let wanted = query
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.strip_prefix("kind="))
        .next_back();
    wanted
        .map(|name| PluginKind::parse(name).map_err(ApiError::bad_request))
        .transpose()
}

fn of_kind(plugin: &crate::status::PluginInfo, kind: Option<PluginKind>) -> bool {
    kind.is_none_or(|k| plugin.kind == k)
}

/// A plugin's info, plus its schema and configuration (secrets masked) when loaded.
fn get(m: &PluginManager, id: &str) -> Result<Reply, ApiError> {
    let info = m.info(id).map_err(ApiError::from_manager)?;
    let mut doc = serde_json::to_value(&info).map_err(|e| ApiError::internal(e.to_string()))?;
    if let (Ok(config), Some(fields)) = (m.config(id), doc.as_object_mut()) {
        fields.insert("config_schema".to_owned(), config.schema);
        fields.insert("config".to_owned(), config.config);
    }
    Ok(reply::ok(&doc))
}

async fn load(ctx: &Ctx, req: LoadRequest) -> Result<Reply, ApiError> {
    let m = &ctx.manager;
    if let Some(config) = &req.config {
        require_object(config)?;
    }
    // A manifest added or edited since the last discovery is used as it is now.
    m.rediscover();
    let info = m
        .load(&req.plugin_id, req.config)
        .await
        .map_err(ApiError::from_manager)?;
    Ok(reply::ok(&info))
}

async fn unload(m: &PluginManager, id: &str, force: bool) -> Result<Reply, ApiError> {
    m.unload(id, force).await.map_err(ApiError::from_manager)?;
    match m.info(id) {
        Ok(info) => Ok(reply::ok(&info)),
        Err(_) => Ok(reply::ok(&json!({"name": id, "loaded": false}))),
    }
}

async fn reload(m: &PluginManager, id: &str) -> Result<Reply, ApiError> {
    let info = m.reload(id).await.map_err(ApiError::from_manager)?;
    Ok(reply::ok(&info))
}

async fn set_config(m: &PluginManager, id: &str, req: ConfigRequest) -> Result<Reply, ApiError> {
    require_object(&req.config)?;
    let masked = m
        .set_config(id, req.config)
        .await
        .map_err(ApiError::from_manager)?;
    Ok(reply::ok(&json!({ "config": masked })))
}

async fn execute(ctx: &Ctx, mut req: ExecuteCall, client: IpAddr) -> Result<Reply, ApiError> {
    let claimed = ctx.files.resolve_input(&mut req.input)?;
    let options = CallOptions {
        timeout: req.timeout,
    };
    let output = if req.method == DEFAULT_METHOD {
        ctx.manager.call(&req.plugin, req.input, options).await
    } else {
        let m = &ctx.manager;
        m.call_method(&req.plugin, &req.method, req.input, options)
            .await
    };
    let output = output.map_err(ApiError::from_call)?;
    drop(claimed);
    let mut value = output.value;
    ctx.files.publish(client, &mut value, output.files);
    Ok(reply::ok(&json!({ "output": value })))
}

async fn execute_stream(
    ctx: &Ctx,
    mut req: StreamRequest,
    client: IpAddr,
) -> Result<Reply, ApiError> {
    let deadline = match req.timeout_ms {
        Some(0) => return Err(ApiError::bad_request("timeout_ms must be at least 1")),
        other => other.map(|ms| tokio::time::Instant::now() + std::time::Duration::from_millis(ms)),
    };
    let claimed = ctx.files.resolve_input(&mut req.input)?;
    let started = ctx.manager.stream(&req.plugin_id, req.input);
    let stream = match deadline {
        Some(at) => match tokio::time::timeout_at(at, started).await {
            Ok(started) => started.map(|s| streams::with_deadline(s, at)),
            Err(_) => Err(crate::ManagerError::Plugin {
                plugin: req.plugin_id.clone(),
                source: plugvisor_proto::PluginError::TimedOut(
                    "the stream did not start within its timeout_ms".to_owned(),
                ),
            }),
        },
        None => started.await,
    }
    .map_err(ApiError::from_call)?;
    // Each item's output files become downloads, as for `execute`; the uploads the stream
    // reads are deleted when it ends.
    let files = Arc::clone(&ctx.files);
    let stream = Box::pin(futures_util::StreamExt::map(stream, move |item| {
        let _held = &claimed;
        item.map(|output| {
            let mut value = output.value;
            files.publish(client, &mut value, output.files);
            value
        })
    }));
    Ok(reply::streamed(streams::NDJSON, streams::frames(stream)))
}

/// `POST /api/files`: the raw body becomes an upload.
async fn upload(
    ctx: &Ctx,
    parts: &Parts,
    body: ApiBody,
    client: IpAddr,
) -> Result<Reply, ApiError> {
    let declared = declared_length(parts);
    let media_type = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .filter(|t| !t.starts_with("application/x-www-form-urlencoded"))
        .unwrap_or("application/octet-stream")
        .to_owned();
    let idle = ctx.options.read_timeout;
    ctx.files
        .upload(client, declared, media_type, body, idle)
        .await
}

fn metrics(m: &PluginManager) -> Reply {
    reply::with_body(
        StatusCode::OK,
        "text/plain; version=0.0.4; charset=utf-8",
        Bytes::from(m.metrics()),
    )
}

/// A configuration must be a JSON object (400 otherwise).
fn require_object(config: &Value) -> Result<(), ApiError> {
    if config.is_object() {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "config must be a JSON object, got {}",
            kind_of(config)
        )))
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
