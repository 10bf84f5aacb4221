//! The OpenAPI 3.1 document of the API (`GET /api/openapi.json`), built from the route table
//! so that every route is described and nothing else is.

use super::routes::{Endpoint, Op, ENDPOINTS};
use super::DEFAULT_PORT;
use plugvisor_proto::wire::RouteSpec;
use serde_json::{json, Map, Value};

/// How one operation is described.
struct Doc {
    summary: &'static str,
    /// Schema name and an example of the request body; `required` when the body must be there.
    body: Option<(&'static str, Value, bool)>,
    /// Media type and schema name of the success answer.
    ok: (&'static str, &'static str),
    /// Status of the success answer (200, or 201 for an upload).
    ok_status: u16,
    /// Error statuses the route can answer (401 and 500 are added to all).
    errors: Vec<u16>,
}

const BODY_ERRORS: [u16; 3] = [400, 408, 413];

/// The OpenAPI 3.1 document describing every route of the API.
/// [`openapi_document`] with the loaded plugins' routes: each under its mount path, tagged
/// with its plugin.
pub fn openapi_with_routes(routes: &[(String, String, RouteSpec)]) -> Value {
    let mut doc = openapi_document();
    for (plugin, prefix, spec) in routes {
        let path = format!("{prefix}{}", spec.path.replace("{*", "{"));
        let entry = &mut doc["paths"][path.as_str()];
        if entry.is_null() {
            *entry = json!({});
        }
        entry[spec.method.to_lowercase()] = route_operation(plugin, &path, spec);
    }
    doc
}

/// The operation of one plugin route: its summary and schemas, the host's error answers.
fn route_operation(plugin: &str, path: &str, spec: &RouteSpec) -> Value {
    let error = json!({"description": "An error answer of the host or the plugin", "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    let mut responses = json!({"200": {"description": "The plugin's answer"}});
    for status in [
        "400", "401", "403", "404", "405", "409", "413", "500", "502", "503", "504",
    ] {
        responses[status] = error.clone();
    }
    if let Some(schema) = &spec.response_schema {
        responses["200"]["content"] = json!({"application/json": {"schema": schema}});
    }
    let parameters: Vec<Value> = path
        .split('/')
        .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
        .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
        .collect();
    let mut operation = json!({
        "tags": [plugin],
        "summary": spec.summary.clone().unwrap_or_else(|| format!("A route of {plugin}")),
        "operationId": format!("{plugin}:{} {}", spec.method, spec.path),
        "responses": responses,
    });
    if !parameters.is_empty() {
        operation["parameters"] = Value::from(parameters);
    }
    if let Some(schema) = &spec.request_schema {
        operation["requestBody"] =
            json!({"content": {"application/json": {"schema": schema}}, "required": false});
    }
    operation
}

/// The plugin kinds (`PluginKind::ALL`, by name).
const KINDS: [&str; 7] = [
    "provider",
    "tool",
    "middleware",
    "export",
    "ui",
    "auth_provider",
    "system",
];

/// The OpenAPI document of the management API (without plugin routes).
pub fn openapi_document() -> Value {
    let mut paths = Map::new();
    for endpoint in ENDPOINTS {
        let item = paths
            .entry(endpoint.path.to_owned())
            .or_insert_with(|| json!({}));
        item[endpoint.method.to_lowercase()] = operation(endpoint);
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "plugvisor management API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Load, configure, reload, unload and call crash-isolated plugins. \
                When the server has a token, every route needs `Authorization: Bearer <token>`."
        },
        "servers": [{ "url": format!("http://127.0.0.1:{DEFAULT_PORT}") }],
        "security": [{ "bearerAuth": [] }, {}],
        "paths": paths,
        "components": {
            "securitySchemes": { "bearerAuth": { "type": "http", "scheme": "bearer" } },
            "schemas": schemas(),
        },
    })
}

/// The operation object of `endpoint`.
fn operation(endpoint: &Endpoint) -> Value {
    let mut doc = describe(endpoint.op);
    if endpoint.path.contains('{') {
        // A path segment that does not percent-decode to a plain name.
        doc.errors.push(400);
    }
    let mut op = json!({
        "operationId": format!("{:?}", endpoint.op),
        "summary": doc.summary,
        "responses": responses(&doc),
    });
    let mut parameters = Vec::new();
    if endpoint.op == Op::Download {
        parameters.push(json!({
            "name": "download", "in": "path", "required": true,
            "description": "The download id from a `$download` object of a call's output.",
            "schema": { "type": "string", "pattern": "^[0-9a-f]{32}$" }
        }));
    } else if endpoint.path.contains("{id}") {
        parameters.push(json!({
            "name": "id", "in": "path", "required": true,
            "description": "The plugin id (its manifest's `name`).",
            "schema": { "type": "string", "pattern": "^[A-Za-z0-9_-]+$" },
            "example": "echo"
        }));
    }
    if endpoint.path.contains("{task}") {
        parameters.push(json!({
            "name": "task", "in": "path", "required": true,
            "description": "The task's name (`[[tasks]] name`).",
            "schema": { "type": "string", "pattern": "^[A-Za-z0-9_-]+$" },
            "example": "greet"
        }));
    }
    if matches!(endpoint.op, Op::ListLoaded | Op::ListAvailable) {
        parameters.push(json!({
            "name": "kind", "in": "query", "required": false,
            "description": "Only plugins of this kind.",
            "schema": { "enum": KINDS }
        }));
    }
    if endpoint.op == Op::Unload {
        parameters.push(json!({
            "name": "force", "in": "query", "required": false,
            "description": "Unload even though loaded plugins require it.",
            "schema": { "type": "boolean" }
        }));
    }
    if !parameters.is_empty() {
        op["parameters"] = Value::Array(parameters);
    }
    if let Some((schema, example, required)) = doc.body {
        op["requestBody"] = json!({
            "required": required,
            "content": { "application/json": { "schema": schema_ref(schema), "example": example } }
        });
    }
    if endpoint.op == Op::Upload {
        op["requestBody"] = json!({
            "required": true,
            "description": "The file's bytes, streamed (any media type; it is kept as the file's media type)",
            "content": { "application/octet-stream": { "schema": { "type": "string", "format": "binary", "minLength": 1 } } }
        });
    }
    op
}

/// The responses object of `doc`: 200 with its media type, then each error status.
fn responses(doc: &Doc) -> Value {
    let (media, schema) = doc.ok;
    let mut out = Map::new();
    let described = match schema {
        "" => json!({}),
        "Binary" => json!({ "type": "string", "format": "binary" }),
        name => schema_ref(name),
    };
    out.insert(
        doc.ok_status.to_string(),
        json!({ "description": "OK", "content": { media: { "schema": described } } }),
    );
    let mut codes = doc.errors.clone();
    codes.extend([401, 403, 500]);
    codes.sort_unstable();
    codes.dedup();
    for code in codes {
        let (media, schema) = match (code, doc.ok.1) {
            (503, "Health") => ("application/health+json", "Health"),
            _ => ("application/json", "Error"),
        };
        out.insert(
            code.to_string(),
            json!({ "description": reason(code), "content": { media: { "schema": schema_ref(schema) } } }),
        );
    }
    Value::Object(out)
}

fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

/// What an error status means in this API.
fn reason(code: u16) -> &'static str {
    match code {
        400 => "Malformed JSON or a body of the wrong shape (the message names the problem), or the plugin rejected the input (`invalid_input`)",
        401 => "A token is configured and the request has no or a wrong `Authorization: Bearer` header",
        403 => "A browser request from another origin (`forbidden_origin`) or by a host name the server does not answer to (`forbidden_host`); a file path outside every `--file-root` (`file_path_refused`); or the plugin refused a file reference (`file_access_denied`), or it returned a service call's refusal (`forbidden`: a service its manifest does not list)",
        404 => "No plugin with this id, or no such upload or download (`not_found`)",
        408 => "The request body did not arrive within the read timeout",
        409 => "Conflict with the plugin's state: `already_loaded`, `not_loaded`, `required_by_others` (with `dependents`), or the plugin is `not_initialized`",
        413 => "The request body exceeds the server's limit",
        429 => "The client holds as many uploads as its quota allows (`quota_exceeded`)",
        422 => "The configuration fails the plugin's schema (`invalid_config`, with `problems` naming field and rule); nothing was changed",
        424 => "A required service is provided by no plugin, or requirements form a cycle (`dependency_unmet`)",
        499 => "The plugin cancelled the call (`cancelled`)",
        500 => "The plugin failed (`plugin_failed`), or an internal error",
        502 => "The worker crashed (`worker_crashed`, with a `crash` report), could not start (`start_failed`), or spoke garbage (`protocol`)",
        503 => "The plugin cannot take calls now (`unavailable`, e.g. failed after too many restarts)",
        504 => "The call exceeded its deadline (`timed_out`)",
        508 => "The plugin returned a service call's `call_cycle`: a chain of calls between plugins that would loop (A -> B -> A) or nest more than 8 deep",
        _ => "Error",
    }
}

/// The description of each operation.
fn describe(op: Op) -> Doc {
    const CALL_ERRORS: &[u16] = &[400, 403, 404, 408, 409, 413, 422, 499, 502, 503, 504, 508];
    const CHANGE_ERRORS: &[u16] = &[400, 404, 408, 409, 413, 422, 502, 503, 504];
    let read = |summary, schema| Doc {
        summary,
        body: None,
        ok: ("application/json", schema),
        ok_status: 200,
        errors: Vec::new(),
    };
    match op {
        Op::ListLoaded => Doc {
            errors: vec![400],
            ..read("Loaded plugins (of one kind with `?kind=`)", "PluginList")
        },
        Op::ListAvailable => Doc {
            errors: vec![400],
            ..read(
                "Every discovered plugin, loaded or not (of one kind with `?kind=`), and broken manifests",
                "AvailableList",
            )
        },
        Op::Status => read(
            "Start order, services and per-plugin state",
            "ManagerStatus",
        ),
        Op::Get => Doc {
            errors: vec![404],
            ..read(
                "One plugin; with its config schema and config (secrets masked) when loaded",
                "PluginDetail",
            )
        },
        Op::Health => Doc {
            ok: ("application/health+json", "Health"),
            errors: vec![503],
            ..read("Health of every loaded plugin's worker", "Health")
        },
        Op::Events => Doc {
            ok: ("application/x-ndjson", "LifecycleEvent"),
            ..read("Live lifecycle events, one JSON object per line", "")
        },
        Op::OpenApi => read("This document", "OpenApi"),
        Op::Upload => Doc {
            ok_status: 201,
            errors: vec![400, 408, 413, 429],
            ..read(
                "Upload a file; use its `ref` (`{\"$upload\": ID}`) in one call's input",
                "Upload",
            )
        },
        Op::Download => Doc {
            ok: ("application/octet-stream", "Binary"),
            errors: vec![404],
            ..read(
                "Download an output file of a call (once; then it is deleted)",
                "",
            )
        },
        Op::GetConfig => Doc {
            errors: vec![404, 409],
            ..read(
                "A loaded plugin's configuration in force (secrets masked) and its JSON Schema",
                "PluginConfigAnswer",
            )
        },
        Op::Tasks => Doc {
            errors: vec![404, 409],
            ..read("A loaded plugin's scheduled tasks and their last runs", "TaskList")
        },
        Op::Metrics => Doc {
            ok: ("text/plain; version=0.0.4", "Metrics"),
            ..read("Prometheus metrics", "")
        },
        other => describe_change(other, CALL_ERRORS, CHANGE_ERRORS),
    }
}

/// The description of each operation that takes a body.
fn describe_change(op: Op, call_errors: &'static [u16], change_errors: &'static [u16]) -> Doc {
    let (summary, body, ok, errors): (_, (&str, Value, bool), _, &'static [u16]) = match op {
        Op::Load => (
            "Load a plugin (and first the plugins providing what it requires)",
            (
                "LoadRequest",
                json!({"plugin_id": "echo", "config": {"mode": "upper"}}),
                true,
            ),
            "PluginInfo",
            &[400, 404, 408, 409, 413, 422, 424, 502, 503, 504],
        ),
        Op::Unload => (
            "Unload a plugin",
            ("UnloadRequest", json!({"force": false}), false),
            "PluginInfo",
            &[400, 404, 408, 409, 413],
        ),
        Op::Reload => (
            "Hot swap: start a new worker, switch calls to it, drain and stop the old one",
            ("ReloadRequest", json!({}), false),
            "PluginInfo",
            change_errors,
        ),
        Op::SetConfig => (
            "Replace the API configuration layer and re-initialize the plugin (no restart)",
            ("ConfigRequest", json!({"config": {"mode": "upper"}}), true),
            "ConfigAnswer",
            change_errors,
        ),
        Op::RunTask => (
            "Run a scheduled task now (its schedule goes on); a failed run is reported in the task's state",
            ("RunTaskRequest", json!({}), false),
            "TaskInfo",
            &[400, 404, 408, 409, 413, 503],
        ),
        Op::ExecuteStream => (
            "Stream a call's results as NDJSON frames ending with `end` or `error`",
            (
                "ExecuteStreamRequest",
                json!({"plugin_id": "echo", "input": "one two three"}),
                true,
            ),
            "StreamFrame",
            call_errors,
        ),
        _ => (
            "Call a plugin once",
            (
                "ExecuteRequest",
                json!({"plugin_id": "echo", "input": {"text": "hi"}, "timeout_ms": 5000}),
                true,
            ),
            "ExecuteAnswer",
            call_errors,
        ),
    };
    let media = match op {
        Op::ExecuteStream => "application/x-ndjson",
        _ => "application/json",
    };
    let mut all = errors.to_vec();
    all.extend(BODY_ERRORS);
    all.sort_unstable();
    all.dedup();
    Doc {
        summary,
        body: Some(body),
        ok: (media, ok),
        ok_status: 200,
        errors: all,
    }
}

/// The component schemas.
fn schemas() -> Value {
    let mut all = Map::new();
    for part in [info_schemas(), request_schemas(), answer_schemas()] {
        if let Value::Object(map) = part {
            all.extend(map);
        }
    }
    Value::Object(all)
}

/// `PluginInfo.hooks` (apart: one `json!` of every info schema exceeds the macro's recursion
/// limit).
fn hook_info_schema() -> Value {
    let count = |what: &str| json!({"type": "integer", "description": what});
    json!({
        "description": "The host events its manifest subscribes it to (`hooks`) and how their deliveries ended since the server started (across reloads); null when it subscribes to none",
        "oneOf": [{"type": "null"}, {
            "type": "object",
            "required": ["subscribed", "delivered", "failed", "dropped", "skipped"],
            "properties": {
                "subscribed": {"type": "array", "items": {"type": "string"}, "description": "Event names without the plugin_ prefix: loaded, unloaded, task_failed, …"},
                "delivered": count("Handled by the plugin"),
                "failed": count("An error, a crash, no ready worker or no answer within 5 s (logged, never raised)"),
                "dropped": count("Its queue of 64 was full, or it was unloaded or reloaded before handling them"),
                "skipped": count("No worker running (a lazy plugin is not started for an event)")
            }
        }]
    })
}

/// `PluginInfo.source` and `PluginInfo.entry_point` (apart: one `json!` of all of
/// `PluginInfo` would pass the macro's recursion limit).
fn source_schemas() -> [(&'static str, Value); 2] {
    let source = json!({"type": "string", "description": "Where it was described, for people: the manifest file, or `entry point NAME (DIST==VERSION in PYTHON)`"});
    [("source", source), ("entry_point", entry_point_schema())]
}

/// `PluginInfo.entry_point`.
fn entry_point_schema() -> Value {
    json!({"description": "The installed Python package's entry point (group plugvisor.plugins) that describes it (serve --python); null for a manifest's plugin", "oneOf": [{"type": "null"}, {
        "type": "object", "required": ["name", "value", "dist", "dist_version", "python"],
        "properties": {"name": {"type": "string"}, "value": {"type": "string"}, "dist": {"type": "string"}, "dist_version": {"type": "string"}, "python": {"type": "string"}, "error": {"type": "string", "description": "Why it cannot run (absent when it can)"}}}]})
}

/// `PluginInfo.workers` (apart, for the same reason as [`hook_info_schema`]).
fn workers_schema() -> Value {
    json!({
        "type": "array",
        "description": "Each running replica (absent while none runs): calls go to the least-loaded ready one",
        "items": {
            "type": "object",
            "required": ["index", "pid", "state", "in_flight", "restarts"],
            "properties": {
                "index": {"type": "integer"}, "pid": {"type": ["integer", "null"]},
                "state": {"type": "string"}, "in_flight": {"type": "integer"},
                "restarts": {"type": "integer"},
                "address": {"type": "string", "description": "A remote replica's worker address (absent for a local one)"}
            }
        }
    })
}

fn info_schemas() -> Value {
    let mut schemas = json!({
        "PluginInfo": {
            "type": "object",
            "required": ["name", "version", "loaded", "state"],
            "properties": {
                "name": {"type": "string"}, "version": {"type": "string"},
                "description": {"type": "string"},
                "kind": {"enum": KINDS},
                "tags": {"type": "array", "items": {"type": "string"}},
                "loaded": {"type": "boolean"},
                "state": {"type": "string", "description": "ready, starting, unhealthy, exited, backoff, stopping, failed, stopped; degraded (ready, but its own health check failed); idle (lazy, not running); available (not loaded)"},
                "start": {"enum": ["eager", "lazy"]},
                "pid": {"type": ["integer", "null"]}, "restarts": {"type": "integer"},
                "uptime_secs": {"type": ["number", "null"]},
                "provides": {"type": "array", "items": {"type": "string"}},
                "requires": {"type": "array", "items": {"type": "string"}},
                "optional_requires": {"type": "array", "items": {"type": "string"}, "description": "Services it calls when present (absent when empty)"},
                "manifest": {"type": "string", "description": "The manifest file; for a plugin an entry point describes, its distribution's metadata directory"},
                "sandbox": {"type": ["object", "null"], "description": "The manifest's [sandbox] table (filesystem, network, syscalls, read, write, memory_mib, pids, user, cpu_seconds, allow_degraded), or null when the plugin runs unsandboxed"},
                "enforced": {"oneOf": [{"type": "null"}, {"$ref": "#/components/schemas/Enforced"}], "description": "What the running worker's sandbox really enforces; null when no sandboxed worker is up"},
                "calls_total": {"type": "integer", "description": "Calls (execute, streams, route requests) since the server started"},
                "errors_total": {"type": "integer", "description": "Of those, the failed ones"},
                "last_error": {"type": ["string", "null"], "description": "Why it is not serving: a loaded plugin's last start error or crash while its worker is not up, or why its last load could not start it"},
                "routes": {"type": "array", "description": "Its mounted HTTP routes (loaded plugins)", "items": {
                    "type": "object", "required": ["method", "path"],
                    "properties": {"method": {"type": "string"}, "path": {"type": "string"}, "summary": {"type": ["string", "null"]}}}},
                "methods": {"type": "array", "description": "Its named methods beside `execute` (loaded plugins); call one with POST /api/plugins/execute and `method`", "items": {
                    "type": "object", "required": ["name"],
                    "properties": {"name": {"type": "string"}, "summary": {"type": "string"}, "input_schema": {}}}},
                "plugin_health": {"description": "Its own health as its last check reported it ([health]); null without a health check, before the first check, or with no worker up", "oneOf": [{"type": "null"}, {
                    "type": "object", "required": ["status"],
                    "properties": {"status": {"enum": ["pass", "warn", "fail"]}, "checks": {"type": "object"}, "output": {"type": "string"}}}]},
                "ui": {"description": "Its panel on the status page (GET /), when the manifest has `ui`", "oneOf": [{"type": "null"}, {
                    "type": "object", "required": ["mount_point", "url"],
                    "properties": {"mount_point": {"enum": ["sidebar", "toolbar", "main"]}, "url": {"type": "string"}}}]},
                "tasks": {"type": "array", "description": "Its scheduled tasks and their last runs", "items": {"$ref": "#/components/schemas/TaskInfo"}},
                "hooks": hook_info_schema(),
                "warnings": {"type": "array", "description": "Things worth knowing that do not stop it, e.g. a worker reporting another version than its manifest declares, or an entry point of the same name its manifest overrides", "items": {"type": "string"}}
            }
        },
        "TaskInfo": {
            "type": "object",
            "required": ["name", "schedule", "overlap", "running", "runs", "failures", "skipped"],
            "properties": {
                "name": {"type": "string"},
                "schedule": {"type": "string", "description": "`every 30s` or `cron */5 * * * *` (UTC)"},
                "overlap": {"enum": ["skip", "queue"]},
                "running": {"type": "boolean"},
                "runs": {"type": "integer"}, "failures": {"type": "integer"}, "skipped": {"type": "integer"},
                "last_started_ms": {"type": ["integer", "null"], "description": "ms since the Unix epoch"},
                "last_duration_ms": {"type": ["number", "null"]},
                "last_outcome": {"type": ["string", "null"], "description": "ok, failed, skipped (still running), paused (the plugin was failed)"},
                "last_error": {"type": ["string", "null"]},
                "last_late_ms": {"type": ["number", "null"], "description": "How late the last scheduled run started"},
                "next_run_ms": {"type": ["integer", "null"], "description": "ms since the Unix epoch"}
            }
        },
        "TaskList": {
            "type": "object", "required": ["plugin", "tasks"],
            "properties": {"plugin": {"type": "string"}, "tasks": {"type": "array", "items": {"$ref": "#/components/schemas/TaskInfo"}}}
        },
        "RunTaskRequest": {"type": "object", "additionalProperties": false, "properties": {}},
        "Enforced": {
            "type": "object",
            "required": ["filesystem", "network", "syscalls", "tree", "missing"],
            "properties": {
                "filesystem": {"enum": ["landlock", "off"]},
                "network": {"enum": ["none", "loopback", "host"]},
                "syscalls": {"enum": ["seccomp", "off"]},
                "memory_mib": {"type": ["integer", "null"]},
                "pids": {"type": ["integer", "null"]},
                "tree": {"enum": ["cgroup", "process-group"], "description": "cgroup: the whole process tree is killed at stop and on the host's death; process-group: a descendant in a new session can escape"},
                "uid": {"type": ["integer", "null"], "description": "The uid it runs as, when `user` switched it"},
                "missing": {"type": "array", "items": {"type": "string"}, "description": "Requested protections the machine could not give (allow_degraded only)"}
            }
        },
        "PluginDetail": {"allOf": [{"$ref": "#/components/schemas/PluginInfo"}, {
            "type": "object",
            "properties": {
                "config_schema": {"type": "object", "description": "JSON Schema of the plugin's config (when loaded)"},
                "config": {"type": "object", "description": "Config in force, secrets (`writeOnly` fields) as \"***\" (when loaded)"}
            }
        }]},
        "PluginList": {"type": "object", "properties": {"plugins": {"type": "array", "items": {"$ref": "#/components/schemas/PluginInfo"}}}},
        "ManifestError": {"type": "object", "properties": {"file": {"type": "string"}, "line": {"type": ["integer", "null"]}, "reason": {"type": "string"}}},
        "AvailableList": {"type": "object", "properties": {
            "plugins": {"type": "array", "items": {"$ref": "#/components/schemas/PluginInfo"}},
            "manifest_errors": {"type": "array", "items": {"$ref": "#/components/schemas/ManifestError"}}
        }},
        "ManagerStatus": {"type": "object", "properties": {
            "initialization_order": {"type": "array", "items": {"type": "string"}},
            "services": {"type": "object", "additionalProperties": {"type": "string"}},
            "plugins": {"type": "array", "items": {"$ref": "#/components/schemas/PluginInfo"}},
            "failed": {"type": "array", "description": "Plugins not loaded because their last load failed (state `failed`, `last_error` says why)", "items": {"$ref": "#/components/schemas/PluginInfo"}},
            "manifest_errors": {"type": "array", "items": {"type": "string"}}
        }},
    });
    // Added apart: one `json!` of every property exceeds the macro's recursion limit.
    let properties = &mut schemas["PluginInfo"]["properties"];
    properties["replicas"] =
        json!({"type": "integer", "description": "Workers the manifest asks for (`replicas`)"});
    properties["workers"] = workers_schema();
    for (key, schema) in source_schemas() {
        properties[key] = schema;
    }
    schemas
}

fn request_schemas() -> Value {
    json!({
        "LoadRequest": {"type": "object", "required": ["plugin_id"], "additionalProperties": false, "properties": {
            "plugin_id": {"type": "string"},
            "config": {"type": "object", "description": "The API configuration layer (on top of schema defaults, manifest, host file, environment), checked against the plugin's own JSON Schema (422 `invalid_config` when it fails)"}
        }},
        "UnloadRequest": {"type": "object", "additionalProperties": false, "properties": {"force": {"type": "boolean", "default": false}}},
        "ReloadRequest": {"type": "object", "additionalProperties": false, "properties": {}},
        "ConfigRequest": {"type": "object", "required": ["config"], "additionalProperties": false, "properties": {"config": {"type": "object", "description": "Checked against the plugin's own JSON Schema (`config_schema` of GET /api/plugins/{id}); a config that fails it is answered 422 `invalid_config` with `problems`, and nothing changes"}}},
        "ExecuteRequest": {"description": "One of three bodies, told apart by their fields; a body mixing them is a 400 naming the accepted ones", "oneOf": [
            {"$ref": "#/components/schemas/ExecuteInputRequest"},
            {"$ref": "#/components/schemas/ExecuteArgsRequest"},
            {"$ref": "#/components/schemas/ExecuteDataRequest"}
        ]},
        "ExecuteInputRequest": {"type": "object", "required": ["plugin_id", "input"], "additionalProperties": false, "properties": {
            "plugin_id": {"type": "string"}, "input": {},
            "method": {"type": ["string", "null"], "default": "execute", "description": "A named method of the plugin (its `methods`; null: `execute`); an unknown one is a 404 listing them"},
            "timeout_ms": {"type": ["integer", "null"], "minimum": 1, "description": "Deadline of this call (default, or null: the manifest's call_timeout_ms, or none)"}
        }},
        "ExecuteArgsRequest": {"type": "object", "required": ["plugin_id", "method"], "additionalProperties": false, "description": "AI Chat Studio's shape: the method's input is exactly {\"args\": args, \"kwargs\": kwargs}", "properties": {
            "plugin_id": {"type": "string"},
            "method": {"type": "string", "description": "`execute` or a named method of the plugin; an unknown one is a 404 listing them"},
            "args": {"type": "array", "default": []},
            "kwargs": {"type": "object", "default": {}},
            "timeout_ms": {"type": ["integer", "null"], "minimum": 1}
        }},
        "ExecuteDataRequest": {"type": "object", "required": ["plugin", "data"], "additionalProperties": false, "description": "CodexContinue's shape: `data` is the input of `execute`", "properties": {
            "plugin": {"type": "string"}, "data": {}
        }},
        "ExecuteStreamRequest": {"type": "object", "required": ["plugin_id", "input"], "additionalProperties": false, "properties": {
            "plugin_id": {"type": "string"}, "input": {},
            "timeout_ms": {"type": ["integer", "null"], "minimum": 1, "description": "Deadline of the whole stream (null: none of its own); past it the stream ends with a timed_out error frame (504 if it has not started)"}
        }},
    })
}

fn answer_schemas() -> Value {
    json!({
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {
            "type": "object", "required": ["kind", "message"],
            "properties": {
                "kind": {"type": "string"}, "message": {"type": "string"},
                "crash": {"$ref": "#/components/schemas/CrashReport"},
                "problems": {"type": "array", "items": {"type": "string"}},
                "dependents": {"type": "array", "items": {"type": "string"}},
                "file": {"type": "string", "description": "invalid_manifest: the manifest file"},
                "line": {"type": ["integer", "null"], "description": "invalid_manifest: the line of the problem"},
                "reason": {"type": "string", "description": "invalid_manifest: what is wrong"},
                "start_error": {"type": "string", "description": "start_failed: why the worker could not start (its start error, or exit status and last stderr line)"}
            }
        }}},
        "CrashReport": {"type": "object", "properties": {
            "plugin": {"type": "string"}, "pid": {"type": "integer"}, "exit": {},
            "cause": {"type": "string"}, "stderr_tail": {"type": "array", "items": {"type": "string"}}
        }},
        "ExecuteAnswer": {"type": "object", "required": ["output"], "properties": {"output": {"description": "The plugin's output; each output file is a `{\"$download\": {\"id\", \"url\", \"size\", \"media_type\", \"name\"}}` object to fetch once from its url"}}},
        "Upload": {"type": "object", "required": ["id", "size", "sha256", "ref"], "properties": {
            "id": {"type": "string"}, "size": {"type": "integer"}, "sha256": {"type": "string"},
            "expires_in_secs": {"type": "integer"},
            "ref": {"type": "object", "description": "Put this object anywhere in one execute or execute_stream input", "properties": {"$upload": {"type": "string"}}}
        }},
        "PluginConfigAnswer": {"type": "object", "required": ["config", "schema"], "properties": {
            "config": {"type": "object", "description": "The configuration in force, secret fields shown as \"***\""},
            "schema": {"type": "object", "description": "The JSON Schema the worker reports"}
        }},
        "ConfigAnswer": {"type": "object", "required": ["config"], "properties": {"config": {"type": "object"}}},
        "StreamFrame": {"oneOf": [
            {"type": "object", "required": ["item"], "properties": {"item": {}}},
            {"type": "object", "required": ["end"], "properties": {"end": {"type": "object", "properties": {"count": {"type": "integer"}}}}},
            {"type": "object", "required": ["error"], "properties": {"error": {"$ref": "#/components/schemas/Error/properties/error"}}}
        ]},
        "LifecycleEvent": {"type": "object", "required": ["plugin", "at_ms", "event"], "properties": {
            "plugin": {"type": "string"}, "at_ms": {"type": "integer"},
            "event": {"type": "string", "description": "started, ready, unhealthy, crashed, start_failed, restarting, failed, reset, recycled, stopped, loaded, unloaded, reloaded, config_changed"}
        }, "additionalProperties": true},
        "Health": {"type": "object", "required": ["status"], "properties": {
            "status": {"enum": ["pass", "warn", "fail"]},
            "checks": {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "object", "properties": {
                "componentId": {"type": "string"}, "componentType": {"type": "string"},
                "observedValue": {"type": "string"}, "status": {"enum": ["pass", "warn", "fail"]},
                "time": {"type": "string"}, "output": {"type": "string"}
            }}}}
        }},
        "Metrics": {"type": "string", "description": "Prometheus text exposition format 0.0.4"},
        "OpenApi": {"type": "object", "description": "This document"},
    })
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_documented_kinds_are_the_kinds() {
        let names: Vec<&str> = crate::manifest::PluginKind::ALL
            .iter()
            .map(|k| k.as_str())
            .collect();
        assert_eq!(names, KINDS);
    }
    use super::*;

    #[test]
    fn every_route_is_documented_once_with_its_refs_resolving() {
        let doc = openapi_document();
        for e in ENDPOINTS {
            let op = &doc["paths"][e.path][e.method.to_lowercase()];
            assert!(op.is_object(), "{} {} missing", e.method, e.path);
            let ok = if e.op == Op::Upload { "201" } else { "200" };
            assert!(op["responses"][ok].is_object(), "{} {}", e.method, e.path);
            assert!(op["responses"]["401"].is_object());
        }
        let text = doc.to_string();
        for piece in text.split("#/components/schemas/").skip(1) {
            let name = piece.split(['"', '/']).next().unwrap();
            assert!(
                doc["components"]["schemas"][name].is_object(),
                "dangling $ref {name}"
            );
        }
    }
}
