//! Plugin routes through `plugvisor serve`'s API server: mounted under `/plugins/<plugin>`,
//! forwarded to the worker with bodies streamed both ways, lazily started, crash-isolated,
//! bounded, and safe against path tricks and header leaks.

use crate::api::{assert_error, manifest, Api};
use plugvisor_manager::api::ApiOptions;
use plugvisor_tests::serially;
use serde_json::{json, Value};

fn routed() -> Vec<(String, String)> {
    vec![
        manifest(
            "echo",
            "echo",
            "[config]\nmode = \"upper\"\n[http]\nmax_body_mib = 1\n\
             [[http.routes]]\npath = \"/count\"\nmax_body_mib = 4",
        ),
        manifest("ticker", "ticker", "start = \"lazy\""),
        manifest(
            "chaos",
            "chaos",
            "[supervision]\nbackoff_initial_ms = 20\n\
             [[http.routes]]\npath = \"/fault/hang\"\ntimeout_secs = 1",
        ),
    ]
}

async fn load_all(api: &Api) {
    for id in ["echo", "ticker", "chaos"] {
        let loaded = api
            .client
            .post("/api/plugins/load", &json!({"plugin_id": id}))
            .await;
        assert_eq!(loaded.status, 200, "{}", loaded.text());
    }
}

#[test]
fn plugin_routes_answer_stream_and_start_lazily() {
    serially(async {
        let api = Api::start(&routed(), ApiOptions::default()).await;
        load_all(&api).await;
        let c = &api.client;
        let hello = c.get("/plugins/echo/hello").await;
        assert_eq!(hello.status, 200, "{}", hello.text());
        assert_eq!(hello.json(), json!({"message": "HELLO FROM ECHO"}));
        let transformed = c
            .post("/plugins/echo/transform", &json!({"a": ["b"]}))
            .await;
        assert_eq!(transformed.json(), json!({"a": ["B"]}));
        // Bodies stream through up to the route's limit: /count allows 4 MiB ([[http.routes]]),
        // echo's other routes 1 MiB; a larger body is a readable 413.
        let two_mib = vec![7u8; 2 << 20];
        let counted = c.send("POST", "/plugins/echo/count", Some(&two_mib)).await;
        assert_eq!(
            counted.json(),
            json!({"bytes": 2 << 20}),
            "{}",
            counted.text()
        );
        let big = c
            .send("POST", "/plugins/echo/transform", Some(&two_mib))
            .await;
        assert_error(&big, 413, "payload_too_large");
        let bigger = c
            .send("POST", "/plugins/echo/count", Some(&vec![7u8; 5 << 20]))
            .await;
        assert_error(&bigger, 413, "payload_too_large");
        // The lazy ticker starts on its first route request; Server-Sent Events stream.
        let info = c.get("/api/plugins/ticker").await.json();
        assert_eq!(info["pid"], Value::Null, "{info}");
        let events = c.get("/plugins/ticker/events?n=3&interval_ms=10").await;
        assert_eq!(events.status, 200, "{}", events.text());
        assert_eq!(events.header("content-type"), Some("text/event-stream"));
        assert_eq!(
            events.text(),
            "data: tick 1\n\ndata: tick 2\n\ndata: tick 3\n\n"
        );
        // The worker's own answers: unknown route 404, wrong method 405, typed.
        assert_error(&c.get("/plugins/echo/nope").await, 404, "not_found");
        let wrong = c.send("DELETE", "/plugins/echo/hello", None).await;
        assert_error(&wrong, 405, "method_not_allowed");
        assert_eq!(wrong.header("allow"), Some("GET"));
        // The routes are listed by the API's document under a tag per plugin.
        let doc = c.get("/api/openapi.json").await.json();
        assert!(
            doc["paths"]["/plugins/echo/hello"]["get"]["tags"][0] == json!("echo"),
            "{}",
            doc["paths"]
        );
        api.finish().await;
    })
}

#[test]
fn a_crash_in_a_route_is_a_502_and_the_next_request_works() {
    serially(async {
        let api = Api::start(&routed(), ApiOptions::default()).await;
        load_all(&api).await;
        let c = &api.client;
        let crashed = c.get("/plugins/chaos/fault/abort").await;
        assert_error(&crashed, 502, "worker_crashed");
        assert_eq!(crashed.json()["error"]["crash"]["cause"], json!("abort"));
        let mut back = c.get("/plugins/chaos/fault/none").await;
        for _ in 0..50 {
            if back.status == 200 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            back = c.get("/plugins/chaos/fault/none").await;
        }
        assert_eq!(back.status, 200, "{}", back.text());
        // A route with its own timeout: no answer's head within 1 s is a 504.
        let hung = c.get("/plugins/chaos/fault/hang").await;
        assert_error(&hung, 504, "timed_out");
        api.finish().await;
    })
}

#[test]
fn route_paths_headers_and_tokens_are_a_security_edge() {
    serially(async {
        let options = ApiOptions {
            token: Some("s3cret".to_owned()),
            ..ApiOptions::default()
        };
        let api = Api::start(&routed(), options).await;
        let c = api.client.with_token("s3cret");
        for id in ["echo", "ticker", "chaos"] {
            let loaded = c.post("/api/plugins/load", &json!({"plugin_id": id})).await;
            assert_eq!(loaded.status, 200, "{}", loaded.text());
        }
        // Routes follow the API token (the manifest's `public = true` opens them).
        assert_error(
            &api.client.get("/plugins/echo/hello").await,
            401,
            "unauthorized",
        );
        let seen = c.get("/plugins/echo/headers").await.json();
        let names: Vec<&str> = seen["names"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(
            !names.contains(&"authorization"),
            "the token reached the plugin: {seen}"
        );
        assert_eq!(seen["x-forwarded-for"], json!("127.0.0.1"), "{seen}");
        assert_eq!(seen["x-forwarded-proto"], json!("http"), "{seen}");
        assert!(
            seen["x-forwarded-host"].is_string() && seen["x-request-id"].is_string(),
            "{seen}"
        );
        // Encoded and dot segments are resolved before matching, and never lead elsewhere.
        let dotted = c.get("/plugins/echo/./x/../hello").await;
        assert_eq!(dotted.json(), json!({"message": "HELLO FROM ECHO"}));
        assert_error(
            &c.get("/plugins/echo/..%2F..%2Fapi/plugins").await,
            400,
            "bad_request",
        );
        let climbed = c.get("/plugins/echo/%2e%2e/%2e%2e/api/plugins").await;
        assert_error(&climbed, 404, "not_found");
        let other = c.get("/plugins/echo/..%2Fticker/events").await;
        assert_error(&other, 400, "bad_request");
        api.finish().await;
    })
}

#[test]
fn overlapping_prefixes_are_a_load_error_naming_both_plugins() {
    serially(async {
        let squatter = manifest(
            "squatter",
            "echo",
            "[http]\nprefix = \"/plugins/echo/admin\"",
        );
        let reserved = manifest("grabber", "echo", "[http]\nprefix = \"/api/x\"");
        let api = Api::start(
            &[routed().remove(0), squatter, reserved],
            ApiOptions::default(),
        )
        .await;
        let c = &api.client;
        assert_eq!(
            c.post("/api/plugins/load", &json!({"plugin_id": "echo"}))
                .await
                .status,
            200
        );
        let refused = c
            .post("/api/plugins/load", &json!({"plugin_id": "squatter"}))
            .await;
        assert_error(&refused, 409, "route_conflict");
        assert_eq!(refused.json()["error"]["conflicts_with"], json!("echo"));
        assert!(
            refused.error_message().contains("squatter"),
            "{}",
            refused.text()
        );
        let problems = c.get("/api/plugins/available").await.json();
        let text = problems["manifest_errors"].to_string();
        assert!(text.contains("/api belongs to the host"), "{text}");
        api.finish().await;
    })
}

#[test]
fn lists_filter_by_kind_and_an_unknown_kind_names_the_kinds() {
    serially(async {
        let guard = manifest(
            "guard",
            "guard",
            "kind = \"middleware\"\n[middleware]\npaths = [\"/plugins/guard/**\"]",
        );
        // A `ui` plugin ships its assets (a directory holding index.html).
        let assets = tempfile::tempdir().unwrap();
        std::fs::write(assets.path().join("index.html"), "<p>panel</p>").unwrap();
        let ui = format!(
            "kind = \"ui\"\nui = {{ dir = \"{}\" }}\n[http]\nprefix = \"/panel\"",
            assets.path().display()
        );
        let panel = manifest("panel", "echo", &ui);
        let api = Api::start(&[routed().remove(0), guard, panel], ApiOptions::default()).await;
        let c = &api.client;
        for id in ["echo", "guard"] {
            let loaded = c.post("/api/plugins/load", &json!({"plugin_id": id})).await;
            assert_eq!(loaded.status, 200, "{}", loaded.text());
        }
        let names = |v: Value| -> Vec<String> {
            let list = v["plugins"].as_array().cloned().unwrap_or_default();
            list.iter()
                .map(|p| p["name"].as_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(
            names(c.get("/api/plugins?kind=middleware").await.json()),
            ["guard"]
        );
        assert_eq!(
            names(c.get("/api/plugins?kind=tool").await.json()),
            ["echo"]
        );
        assert_eq!(
            names(c.get("/api/plugins/available?kind=ui").await.json()),
            ["panel"]
        );
        let mut all = names(c.get("/api/plugins").await.json());
        all.sort();
        assert_eq!(all, ["echo", "guard"]);
        let bad = c.get("/api/plugins?kind=gadget").await;
        assert_error(&bad, 400, "bad_request");
        assert!(
            bad.error_message().contains("auth_provider"),
            "{}",
            bad.text()
        );
        api.finish().await;
    })
}
