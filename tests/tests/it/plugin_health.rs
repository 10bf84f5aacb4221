//! Plugin-defined health end to end: chaos's own health check (`CHAOS_HEALTH`) as
//! `/api/plugins/health` and `PluginInfo` show it: pass, warn, fail → `degraded` but served,
//! a hung check → fail, and fail with `restart_on_unhealthy` → a new worker.

use crate::api::{info_until, manifest, Api};
use plugvisor_manager::api::ApiOptions;
use plugvisor_tests::serially;
use serde_json::{json, Value};

/// A chaos plugin called `name` whose health check answers `health`.
fn chaos(name: &str, health: &str, extra: &str) -> (String, String) {
    let text = format!(
        "env = {{ CHAOS_HEALTH = \"{health}\" }}\n[health]\ninterval_ms = 100\ntimeout_ms = 300\n{extra}"
    );
    manifest(name, "chaos", &text)
}

#[test]
fn plugin_health_is_shown_and_acted_on() {
    serially(async {
        let plugins = [
            chaos("c-pass", "pass", ""),
            chaos("c-warn", "warn", ""),
            chaos("c-fail", "fail", ""),
            chaos("c-hang", "hang", ""),
            chaos("c-restart", "fail", "restart_on_unhealthy = true"),
        ];
        let api = Api::start(&plugins, ApiOptions::default()).await;
        let c = &api.client;
        for (name, _) in &plugins {
            let loaded = c
                .post("/api/plugins/load", &json!({"plugin_id": name}))
                .await;
            assert_eq!(loaded.status, 200, "{}", loaded.text());
        }
        let first_pid = c.get("/api/plugins/c-restart").await.json()["pid"].clone();

        let reported = |want: &'static str| move |i: &Value| i["plugin_health"]["status"] == want;
        let pass = info_until(c, "c-pass", reported("pass")).await;
        assert_eq!(pass["state"], "ready");
        let warn = info_until(c, "c-warn", reported("warn")).await;
        assert_eq!(warn["state"], "ready");
        let fail = info_until(c, "c-fail", |i| i["state"] == "degraded").await;
        assert_eq!(fail["plugin_health"]["output"], "CHAOS_HEALTH says fail");
        let hang = info_until(c, "c-hang", |i| i["state"] == "degraded").await;
        let output = hang["plugin_health"]["output"].as_str().unwrap();
        assert!(output.contains("no answer within"), "{output}");

        // Degraded is still served.
        let call = json!({"plugin_id": "c-fail", "input": {"fault": "none"}});
        let served = c.post("/api/plugins/execute", &call).await;
        assert_eq!(served.status, 200, "{}", served.text());

        // restart_on_unhealthy: the worker is replaced, the plugin is never `degraded`.
        let restarted = info_until(c, "c-restart", |i| {
            i["pid"] != first_pid && i["pid"].is_number()
        })
        .await;
        assert_ne!(restarted["state"], "degraded", "{restarted}");

        let health = c.get("/api/plugins/health").await;
        assert_eq!(
            health.status,
            200,
            "a plugin's own fail is a warn overall: {}",
            health.text()
        );
        let doc = health.json();
        assert_eq!(doc["status"], "warn", "{doc}");
        assert_eq!(doc["checks"]["c-pass:plugin"][0]["status"], "pass", "{doc}");
        assert_eq!(doc["checks"]["c-fail:plugin"][0]["status"], "fail", "{doc}");
        assert_eq!(
            doc["checks"]["c-fail:worker"][0]["observedValue"], "degraded",
            "{doc}"
        );
        let status = c.get("/api/plugins/status").await.json();
        let states: Vec<(&str, &str)> = status["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["name"].as_str().unwrap(), p["state"].as_str().unwrap()))
            .collect();
        assert!(states.contains(&("c-fail", "degraded")), "{states:?}");
        api.finish().await;
    })
}
