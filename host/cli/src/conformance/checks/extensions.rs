//! Section 7, the extensions a worker declares in `/v1/info`: named methods, plugin health,
//! events, middleware hooks and plugin routes; each is checked when declared and answers 404
//! when not.

use super::Ctx;
use plugvisor_proto::wire::routes;
use plugvisor_proto::ErrorKind;
use serde_json::{json, Value};

const S7: &str = "§7 routes";

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
