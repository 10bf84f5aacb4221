//! Section 7, the core routes: info (its capabilities against its lists), health, config,
//! initialize, execute, cleanup, and the 404s and 405s of unknown paths and wrong methods.

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
