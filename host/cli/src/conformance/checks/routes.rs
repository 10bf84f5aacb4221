//! Section 7: every route of the worker, its status codes and the schema of its answer, and
//! the capabilities `/v1/info` declares against what the worker serves.

use super::Ctx;
use plugvisor_proto::wire::{routes, valid_event_name, valid_method_name, InfoResponse};
use plugvisor_proto::ErrorKind;
use serde_json::{json, Value};

const S7: &str = "§7 routes";

/// `GET /v1/info`: the schema, protocol 1, and capabilities that agree with the lists.
pub(crate) async fn info(ctx: &mut Ctx<'_>) {
    let result = ctx
        .call("GET", routes::INFO, None)
        .await
        .and_then(|a| ctx.expect_json(&a, 200, "InfoResponse"))
        .and_then(|v| serde_json::from_value::<InfoResponse>(v).map_err(|e| e.to_string()))
        .and_then(|info| {
            info_agrees(&info)?;
            ctx.info = Some(info);
            Ok(())
        });
    ctx.report.record(
        S7,
        "GET /v1/info (InfoResponse, capabilities match the lists)",
        result,
    );
}

fn info_agrees(info: &InfoResponse) -> Result<(), String> {
    if info.protocol != 1 {
        return Err(format!("protocol {}, not 1", info.protocol));
    }
    let has = |c: &str| info.capabilities.iter().any(|x| x == c);
    let lists = [
        ("routes", !info.routes.is_empty()),
        ("middleware", !info.hooks.is_empty()),
        ("methods", !info.methods.is_empty()),
        ("events", !info.events.is_empty()),
    ];
    for (capability, listed) in lists {
        if has(capability) != listed {
            return Err(format!(
                "capability {capability:?} {} but its list is {}",
                if has(capability) {
                    "declared"
                } else {
                    "missing"
                },
                if listed { "not empty" } else { "empty" }
            ));
        }
    }
    if let Some(m) = info
        .methods
        .iter()
        .find(|m| !valid_method_name(&m.name) || m.name == "execute")
    {
        return Err(format!("method name {:?} is not allowed", m.name));
    }
    if let Some(e) = info.events.iter().find(|e| !valid_event_name(e)) {
        return Err(format!("event name {e:?} is not allowed"));
    }
    jsonschema::validator_for(&info.config_schema)
        .map_err(|e| format!("config_schema is not a JSON Schema: {e}"))?;
    Ok(())
}

/// `GET /v1/health`: the schema, `ok`, nothing in flight at rest.
pub(crate) async fn health(ctx: &mut Ctx<'_>) -> Option<Value> {
    let answer = ctx.call("GET", routes::HEALTH, None).await;
    let result = answer
        .and_then(|a| ctx.expect_json(&a, 200, "HealthResponse"))
        .and_then(|v| match (&v["status"], &v["in_flight"]) {
            (s, _) if s != "ok" => Err(format!("status {s}, not \"ok\"")),
            (_, n) if n != 0 => Err(format!("in_flight {n} with no call running")),
            _ => Ok(v),
        });
    let value = result.as_ref().ok().cloned();
    ctx.report.record(
        S7,
        "GET /v1/health (HealthResponse, ok, idle)",
        result.map(drop),
    );
    value
}

/// `GET /v1/config_schema`, `POST /v1/initialize` with the kit's config, `GET /v1/config`:
/// the schemas, and the configuration in force matches the config schema.
pub(crate) async fn config(ctx: &mut Ctx<'_>) {
    let schema = ctx
        .call("GET", routes::CONFIG_SCHEMA, None)
        .await
        .and_then(|a| ctx.expect_json(&a, 200, "ConfigSchemaResponse"))
        .and_then(|v| {
            jsonschema::validator_for(&v["schema"])
                .map_err(|e| format!("not a JSON Schema: {e}"))?;
            Ok(v["schema"].clone())
        });
    let config_schema = schema.as_ref().ok().cloned();
    ctx.report.record(
        S7,
        "GET /v1/config_schema (ConfigSchemaResponse, a JSON Schema)",
        schema.map(drop),
    );
    let body = json!({"config": ctx.inputs.config});
    let initialized = ctx
        .post(routes::INITIALIZE, &body)
        .await
        .and_then(|a| ctx.expect_json(&a, 200, "ConfigResponse"))
        .and_then(|v| in_schema(config_schema.as_ref(), &v["config"]).map(|()| v));
    let in_force = initialized.as_ref().ok().cloned();
    ctx.report.record(
        S7,
        "POST /v1/initialize (ConfigResponse, valid under the config schema)",
        initialized.map(drop),
    );
    let current = ctx
        .call("GET", routes::CONFIG, None)
        .await
        .and_then(|a| ctx.expect_json(&a, 200, "ConfigResponse"))
        .and_then(|v| match &in_force {
            Some(f) if f["config"] != v["config"] => Err(format!(
                "GET /v1/config says {} but initialize answered {}",
                v["config"], f["config"]
            )),
            _ => Ok(()),
        });
    ctx.report.record(
        S7,
        "GET /v1/config (the configuration initialize answered)",
        current,
    );
}

fn in_schema(schema: Option<&Value>, config: &Value) -> Result<(), String> {
    match schema {
        Some(schema) => plugvisor_manager::config::validate(schema, config).map_err(|p| {
            format!(
                "the configuration in force breaks the config schema: {}",
                p.join("; ")
            )
        }),
        None => Ok(()),
    }
}

/// `POST /v1/execute` with the kit's input: an `ExecuteResponse` or a typed plugin error,
/// counted once in `calls_total`.
pub(crate) async fn execute(ctx: &mut Ctx<'_>) {
    let before = calls_total(ctx).await;
    let body = json!({"input": ctx.inputs.input});
    let result = ctx
        .post(routes::EXECUTE, &body)
        .await
        .and_then(|a| ctx.expect_answer(&a, "ExecuteResponse"));
    let after = calls_total(ctx).await;
    let counted = match (result, before, after) {
        (Err(e), _, _) => Err(e),
        (Ok(()), Some(b), Some(a)) if a == b + 1 => Ok(()),
        (Ok(()), b, a) => Err(format!(
            "calls_total went from {b:?} to {a:?}, not up by one"
        )),
    };
    ctx.report.record(
        S7,
        "POST /v1/execute (ExecuteResponse or typed error, counted in calls_total)",
        counted,
    );
}

async fn calls_total(ctx: &mut Ctx<'_>) -> Option<u64> {
    let answer = ctx.call("GET", routes::HEALTH, None).await.ok()?;
    answer.json().ok()?["calls_total"].as_u64()
}

/// `POST /v1/methods/<name>` for each declared method, and `404` for one it lacks.
pub(crate) async fn methods(ctx: &mut Ctx<'_>) {
    let methods = ctx
        .info
        .as_ref()
        .map(|i| i.methods.clone())
        .unwrap_or_default();
    if methods.is_empty() {
        ctx.report.skip(
            S7,
            "POST /v1/methods/<name>",
            "/v1/info declares no methods",
        );
    }
    for method in methods {
        let name = method.name;
        let input = method
            .input_schema
            .as_ref()
            .and_then(example_of)
            .unwrap_or_else(|| ctx.inputs.input.clone());
        let body = json!({ "input": input });
        let result = ctx
            .post(&format!("{}{name}", routes::METHOD_PREFIX), &body)
            .await
            .and_then(|a| ctx.expect_answer(&a, "ExecuteResponse"));
        ctx.report.record(
            S7,
            &format!("POST /v1/methods/{name} (ExecuteResponse or typed error)"),
            result,
        );
    }
    let result = ctx
        .post("/v1/methods/no-such-method", &json!({"input": null}))
        .await
        .and_then(|a| ctx.expect_error(&a, ErrorKind::NotFound).map(drop));
    ctx.report
        .record(S7, "POST /v1/methods/<undeclared> is 404 not_found", result);
}

/// An input a method's schema offers: its first `examples` entry, else its `default`.
fn example_of(schema: &Value) -> Option<Value> {
    schema["examples"]
        .get(0)
        .or_else(|| schema.get("default"))
        .cloned()
}

/// `POST /v1/plugin_health`: a `HealthReport` with `health_check`, else `404`.
pub(crate) async fn plugin_health(ctx: &mut Ctx<'_>) {
    let declared = ctx.has("health_check");
    let answer = ctx.call("POST", routes::PLUGIN_HEALTH, Some(b"")).await;
    let result = answer.and_then(|a| {
        if declared {
            ctx.expect_json(&a, 200, "HealthReport").map(drop)
        } else {
            ctx.expect_error(&a, ErrorKind::NotFound).map(drop)
        }
    });
    let name = if declared {
        "POST /v1/plugin_health (HealthReport)"
    } else {
        "POST /v1/plugin_health without health_check is 404"
    };
    ctx.report.record(S7, name, result);
}

/// `POST /v1/events`: `404` for an event not declared (or without `events`), `400` for a
/// malformed delivery, `2xx` or a typed error for a declared one.
pub(crate) async fn events(ctx: &mut Ctx<'_>) {
    let declared: Vec<String> = ctx
        .info
        .as_ref()
        .map(|i| i.events.clone())
        .unwrap_or_default();
    let delivery =
        |event: &str| json!({"event": event, "plugin": "conformance", "at_ms": 1, "details": {}});
    if declared.iter().any(|e| e == "*") {
        ctx.report.skip(
            S7,
            "POST /v1/events for an undeclared event is 404",
            "the worker handles every event (\"*\")",
        );
    } else {
        let result = ctx
            .post(routes::EVENTS, &delivery("conformance_never_sent"))
            .await
            .and_then(|a| ctx.expect_error(&a, ErrorKind::NotFound).map(drop));
        ctx.report
            .record(S7, "POST /v1/events for an undeclared event is 404", result);
    }
    let Some(event) = declared.first().cloned() else {
        ctx.report
            .skip(S7, "POST /v1/events (204)", "/v1/info declares no events");
        return;
    };
    let event = if event == "*" {
        "loaded".to_owned()
    } else {
        event
    };
    let mut body = delivery(&event);
    body["conformance_unknown"] = json!(1);
    body["details"]["conformance_unknown"] = json!(1);
    let result = ctx.post(routes::EVENTS, &body).await.and_then(|a| {
        if a.status == 204 || (200..300).contains(&a.status) {
            Ok(())
        } else {
            ctx.expect_answer(&a, "ErrorBody")
        }
    });
    ctx.report.record(
        S7,
        &format!("POST /v1/events {event:?} with unknown fields (2xx or typed error, not 400)"),
        result,
    );
    let malformed = ctx
        .post(routes::EVENTS, &json!({"event": event}))
        .await
        .and_then(|a| ctx.expect_error(&a, ErrorKind::BadRequest).map(drop));
    ctx.report.record(
        S7,
        "POST /v1/events with a malformed delivery is 400",
        malformed,
    );
}

/// The middleware hooks: each declared one answers its schema, an undeclared one is `404`.
pub(crate) async fn hooks(ctx: &mut Ctx<'_>) {
    let declared: Vec<String> = ctx
        .info
        .as_ref()
        .map(|i| i.hooks.iter().map(|h| h.as_str().to_owned()).collect())
        .unwrap_or_default();
    let request = json!({"method": "GET", "path": "/plugins/conformance/x", "headers": {}});
    let after = json!({"request": request, "response": {"status": 200, "headers": {}, "body": {"ok": true}}});
    for (hook, body, schema) in [
        ("before_request", &request, "BeforeAction"),
        ("after_response", &after, "HookResponse"),
    ] {
        let path = format!("/v1/hooks/{hook}");
        let answer = ctx.post(&path, body).await;
        let (name, result) = if declared.iter().any(|h| h == hook) {
            let r = answer.and_then(|a| ctx.expect_answer(&a, schema));
            (format!("POST {path} ({schema} or typed error)"), r)
        } else {
            let r = answer.and_then(|a| ctx.expect_error(&a, ErrorKind::NotFound).map(drop));
            (format!("POST {path} without the hook is 404"), r)
        };
        ctx.report.record(S7, &name, result);
    }
}

/// Plugin routes: an undeclared route is `404`; a declared literal path with a method it does
/// not declare is `405`.
pub(crate) async fn plugin_routes(ctx: &mut Ctx<'_>) {
    let result = ctx
        .call("GET", "/v1/route/conformance-no-such-route", None)
        .await
        .and_then(|a| ctx.expect_error(&a, ErrorKind::NotFound).map(drop));
    ctx.report
        .record(S7, "GET /v1/route/<undeclared> is 404 not_found", result);
    let declared = ctx
        .info
        .as_ref()
        .map(|i| i.routes.clone())
        .unwrap_or_default();
    let literal = declared.iter().find(|r| {
        !r.path.contains('{')
            && !declared
                .iter()
                .any(|o| o.path == r.path && o.method == "DELETE")
    });
    let Some(route) = literal else {
        ctx.report.skip(
            S7,
            "a declared route with another method is 405",
            "/v1/info declares no route with a literal path",
        );
        return;
    };
    let path = format!("{}{}", routes::ROUTE_PREFIX, route.path);
    let result = ctx
        .call("DELETE", &path, None)
        .await
        .and_then(|a| ctx.expect_error(&a, ErrorKind::MethodNotAllowed).map(drop));
    ctx.report.record(
        S7,
        &format!("DELETE {path} (declared {} only) is 405", route.method),
        result,
    );
}

/// Unknown paths are `404`; known paths with the wrong method are `405` naming the method in
/// `Allow`.
pub(crate) async fn unknown_and_wrong_method(ctx: &mut Ctx<'_>) {
    for method in ["GET", "POST"] {
        let body = (method == "POST").then_some(&b"{}"[..]);
        let result = ctx
            .call(method, "/v1/conformance-no-such-path", body)
            .await
            .and_then(|a| ctx.expect_error(&a, ErrorKind::NotFound).map(drop));
        ctx.report.record(
            S7,
            &format!("{method} on an unknown path is 404 not_found"),
            result,
        );
    }
    for (method, path, allow) in [
        ("POST", routes::HEALTH, "GET"),
        ("POST", routes::INFO, "GET"),
        ("GET", routes::EXECUTE, "POST"),
        ("GET", routes::SHUTDOWN, "POST"),
    ] {
        let body = (method == "POST").then_some(&b"{}"[..]);
        let result = ctx.call(method, path, body).await.and_then(|a| {
            ctx.expect_error(&a, ErrorKind::MethodNotAllowed)?;
            match a.header("allow") {
                Some(v) if v.split(',').any(|m| m.trim() == allow) => Ok(()),
                other => Err(format!("405 without `Allow: {allow}` (got {other:?})")),
            }
        });
        ctx.report.record(
            S7,
            &format!("{method} {path} is 405 with Allow: {allow}"),
            result,
        );
    }
}

/// `POST /v1/cleanup` answers `{"status": "cleaned"}`.
pub(crate) async fn cleanup(ctx: &mut Ctx<'_>) {
    let result = ctx
        .call("POST", routes::CLEANUP, Some(b""))
        .await
        .and_then(|a| ctx.expect_json(&a, 200, "CleanupResponse").map(drop));
    ctx.report
        .record(S7, "POST /v1/cleanup (CleanupResponse)", result);
}

#[cfg(test)]
mod tests {
    use super::*;
    use plugvisor_proto::wire::MethodSpec;

    fn info() -> InfoResponse {
        serde_json::from_value(json!({"name": "x", "version": "1", "protocol": 1,
            "config_schema": {"type": "object"}, "capabilities": ["execute"], "pid": 1}))
        .unwrap()
    }

    #[test]
    fn capabilities_must_agree_with_the_lists() {
        assert!(info_agrees(&info()).is_ok());
        let mut i = info();
        i.capabilities.push("methods".into());
        assert!(info_agrees(&i).unwrap_err().contains("methods"));
        i.methods.push(MethodSpec::new("Shout"));
        assert!(info_agrees(&i).unwrap_err().contains("Shout"));
        let mut i = info();
        i.protocol = 2;
        assert!(info_agrees(&i).is_err());
        let mut i = info();
        i.config_schema = json!({"type": 5});
        assert!(info_agrees(&i).unwrap_err().contains("config_schema"));
    }
}
