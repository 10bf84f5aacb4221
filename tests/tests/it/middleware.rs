//! Middleware plugins through `plugvisor serve`'s API server: chains in priority order around
//! plugin routes and the call routes, early answers, fail-closed vs skip, crashes, the host
//! token kept from middlewares, and the kind's contract.

use crate::api::{assert_error, load_plugins, manifest, Api};
use plugvisor_manager::api::ApiOptions;
use plugvisor_tests::{eventually, serially};
use serde_json::{json, Value};
use std::time::Duration;

fn echo() -> (String, String) {
    manifest("echo", "echo", "[config]\nmode = \"identity\"")
}

/// A `guard` middleware named `name`: key header `X-Key-<stamp>`, key `k<stamp>`.
fn guard(name: &str, stamp: &str, priority: i32, paths: &str) -> (String, String) {
    let extra = format!(
        "kind = \"middleware\"\n\
         [config]\napi_key = \"k{stamp}\"\nheader = \"X-Key-{stamp}\"\nstamp = \"{stamp}\"\n\
         [middleware]\npriority = {priority}\npaths = {paths}\n"
    );
    manifest(name, "guard", &extra)
}

/// `chaos-worker` as a middleware.
fn chaos(name: &str, priority: i32, paths: &str, on_error: &str) -> (String, String) {
    let extra = format!(
        "kind = \"middleware\"\n[supervision]\nbackoff_initial_ms = 20\n\
         [middleware]\npriority = {priority}\npaths = {paths}\non_error = \"{on_error}\"\n"
    );
    manifest(name, "chaos", &extra)
}

async fn load(api: &Api, ids: &[&str]) {
    load_plugins(&api.client, ids).await;
}

fn execute(input: Value) -> Value {
    json!({"plugin_id": "echo", "input": input})
}

#[test]
fn middlewares_compose_in_priority_order_and_can_answer_early() {
    serially(async {
        let paths = "[\"/plugins/echo/**\", \"/api/plugins/execute\"]";
        // Listed b first: the order comes from priority, not from loading or names.
        let manifests = [
            echo(),
            guard("guard-b", "b", 20, paths),
            guard("guard-a", "a", 10, paths),
        ];
        let api = Api::start(&manifests, ApiOptions::default()).await;
        load(&api, &["echo", "guard-b", "guard-a"]).await;
        let c = &api.client;
        let with_a = c.with_header("X-Key-a", "ka");
        let with_both = with_a.with_header("X-Key-b", "kb");

        // No key: the first guard (a) answers 401 itself; echo never sees the request.
        let refused = c.get("/plugins/echo/headers").await;
        assert_eq!(refused.status, 401, "{}", refused.text());
        assert_eq!(refused.header("x-guarded-by"), Some("a"));
        assert!(refused.text().contains("X-Key-a"), "{}", refused.text());
        // a's key only: b answers 401, and a's after_response still stamps that answer.
        let refused = with_a.get("/plugins/echo/headers").await;
        assert_eq!(refused.status, 401, "{}", refused.text());
        assert_eq!(refused.header("x-chain"), Some("a"));
        assert!(refused.text().contains("X-Key-b"), "{}", refused.text());
        // Both keys: before_request a then b, after_response b then a.
        let passed = with_both.get("/plugins/echo/headers").await;
        assert_eq!(passed.status, 200, "{}", passed.text());
        assert_eq!(passed.json()["x-chain"], json!("a, b"));
        assert_eq!(passed.header("x-chain"), Some("b, a"));
        assert_eq!(passed.header("x-guarded-by"), Some("a"));

        // The call route too, with its JSON answer intact.
        let called = with_both
            .post("/api/plugins/execute", &execute(json!("hi")))
            .await;
        assert_eq!(called.status, 200, "{}", called.text());
        assert_eq!(called.json()["output"], json!("hi"));
        assert_eq!(called.header("x-chain"), Some("b, a"));
        let refused = c.post("/api/plugins/execute", &execute(json!("hi"))).await;
        assert_eq!(refused.status, 401, "{}", refused.text());
        // What they do not cover is untouched: execute_stream, the management API.
        let listed = c.get("/api/plugins").await;
        assert_eq!(listed.status, 200, "{}", listed.text());
        assert_eq!(listed.header("x-chain"), None);
        let streamed = c
            .post("/api/plugins/execute_stream", &execute(json!("x")))
            .await;
        assert_eq!(streamed.status, 200, "{}", streamed.text());
        api.finish().await;
    })
}

#[test]
fn a_failing_middleware_fails_closed_or_is_skipped_and_a_crashed_one_restarts() {
    serially(async {
        let manifests = [
            echo(),
            chaos("strict", 10, "[\"/plugins/echo/**\"]", "fail_closed"),
            chaos("lenient", 10, "[\"/api/plugins/execute\"]", "skip"),
        ];
        let api = Api::start(&manifests, ApiOptions::default()).await;
        load(&api, &["echo", "strict", "lenient"]).await;
        let c = &api.client;

        // fail_closed: an error in the hook is a 502 naming the middleware.
        let failed = c
            .with_header("x-chaos-hook", "panic_in_call")
            .get("/plugins/echo/hello")
            .await;
        assert_error(&failed, 502, "middleware_failed");
        let error = &failed.json()["error"];
        assert_eq!(error["middleware"], json!("strict"), "{error}");
        assert_eq!(error["hook"], json!("before_request"), "{error}");
        // A crash: 502 with the crash cause; the worker restarts and the next request passes.
        let pid = api.client.get("/api/plugins/strict").await.json()["pid"].clone();
        let crashed = c
            .with_header("x-chaos-hook", "abort")
            .get("/plugins/echo/hello")
            .await;
        assert_error(&crashed, 502, "middleware_failed");
        assert_eq!(
            crashed.json()["error"]["cause"]["kind"],
            json!("worker_crashed")
        );
        let restarted = eventually(Duration::from_secs(10), || {
            let info = api
                .manager
                .loaded()
                .into_iter()
                .find(|p| p.name == "strict");
            info.is_some_and(|p| p.state == "ready" && json!(p.pid) != pid)
        })
        .await;
        assert!(restarted, "strict did not restart");
        let passed = c.get("/plugins/echo/hello").await;
        assert_eq!(passed.status, 200, "{}", passed.text());
        assert_eq!(passed.header("x-chain"), Some("chaos"));
        // after_response failing, fail_closed: the answer becomes the 502.
        let failed = c
            .with_header("x-chaos-after", "panic_in_call")
            .get("/plugins/echo/hello")
            .await;
        assert_error(&failed, 502, "middleware_failed");
        assert_eq!(failed.json()["error"]["hook"], json!("after_response"));

        // skip: the same failures leave the call alone.
        for header in ["x-chaos-hook", "x-chaos-after"] {
            let skipped = c
                .with_header(header, "panic_in_call")
                .post("/api/plugins/execute", &execute(json!("kept")))
                .await;
            assert_eq!(skipped.status, 200, "{header}: {}", skipped.text());
            assert_eq!(skipped.json()["output"], json!("kept"));
        }
        // A middleware may change a JSON body it was shown (echo's /transform returns it).
        let changed = c
            .with_header("x-chaos-hook", "body")
            .post("/plugins/echo/transform", &json!({"a": 1}))
            .await;
        assert_eq!(changed.status, 200, "{}", changed.text());
        assert_eq!(changed.json(), json!({"a": 1, "chaos": true}));
        api.finish().await;
    })
}

#[test]
fn a_middleware_never_sees_the_host_token() {
    serially(async {
        let paths = "[\"/plugins/echo/**\", \"/api/plugins/execute\"]";
        let manifests = [echo(), chaos("spy", 10, paths, "fail_closed")];
        let options = ApiOptions {
            token: Some("s3cret-token".into()),
            ..ApiOptions::default()
        };
        let api = Api::start(&manifests, options).await;
        let c = api.client.with_token("s3cret-token");
        load_plugins(&c, &["echo", "spy"]).await;
        // Without the token the host refuses before any plugin code runs.
        let refused = api.client.get("/plugins/echo/hello").await;
        assert_error(&refused, 401, "unauthorized");
        assert_eq!(refused.header("x-chaos-saw"), None);
        // With it, the middleware reports what it saw: the probe header (positive control:
        // headers sent like the token do reach it) but never the Authorization header.
        for path in ["/plugins/echo/hello", "/api/plugins/execute"] {
            let spy = c
                .with_header("x-chaos-hook", "report")
                .with_header("X-Probe", "s3cret-token")
                .send("POST", path, Some(execute(json!(1)).to_string().as_bytes()))
                .await;
            assert_eq!(spy.status, 200, "{path}: {}", spy.text());
            let seen = &spy.json()["seen"];
            assert_eq!(seen["headers"]["x-probe"], json!("s3cret-token"), "{seen}");
            assert_eq!(seen["headers"].get("authorization"), None, "{seen}");
            assert_eq!(seen["path"], json!(path), "{seen}");
            assert!(!spy.text().contains("Bearer"), "{path}: {}", spy.text());
        }
        // after_response sees the request's header names: no authorization among them.
        let answer = c.get("/plugins/echo/hello").await;
        assert_eq!(answer.status, 200, "{}", answer.text());
        let saw = answer.header("x-chaos-saw").unwrap_or_default().to_owned();
        assert!(
            saw.contains("x-chain") && !saw.contains("authorization"),
            "{saw}"
        );
        api.finish().await;
    })
}

#[test]
fn the_middleware_kind_has_a_contract() {
    serially(async {
        let manifests = [
            echo(),
            // Kind middleware without [middleware].
            manifest("bare", "guard", "kind = \"middleware\""),
            // [middleware] on another kind.
            manifest(
                "misplaced",
                "guard",
                "[middleware]\npaths = [\"/plugins/**\"]",
            ),
            // A path no middleware may cover.
            chaos("greedy", 1, "[\"/api/**\"]", "skip"),
            // A worker that serves no hooks.
            manifest(
                "hookless",
                "echo",
                "kind = \"middleware\"\n[middleware]\npaths = [\"/plugins/**\"]",
            ),
        ];
        let api = Api::start(&manifests, ApiOptions::default()).await;
        let c = &api.client;
        let available = c.get("/api/plugins/available").await.json();
        let errors = available["manifest_errors"].to_string();
        assert!(
            errors.contains("bare.toml") && errors.contains("needs a [middleware] table"),
            "{errors}"
        );
        assert!(
            errors.contains("misplaced.toml") && errors.contains("only for kind"),
            "{errors}"
        );
        assert!(
            errors.contains("greedy.toml") && errors.contains("\\\"/api/**\\\""),
            "{errors}"
        );
        let refused = c
            .post("/api/plugins/load", &json!({"plugin_id": "hookless"}))
            .await;
        assert_error(&refused, 502, "start_failed");
        assert!(
            refused.error_message().contains("serves no hooks"),
            "{}",
            refused.text()
        );
        // Positive control: the same worker loads as a tool.
        load(&api, &["echo"]).await;
        api.finish().await;
    })
}
