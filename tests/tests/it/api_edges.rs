//! Rough edges of the REST API found by using it (issue 11): a load that used a stale
//! manifest, no way to read a plugin's configuration alone.

use crate::api::{manifest, Api};
use plugvisor_manager::api::ApiOptions;
use plugvisor_tests::serially;
use serde_json::json;

/// `POST /api/plugins/load` used the manifest as discovered earlier, not as edited since.
#[test]
fn load_reads_the_manifest_as_edited_since_discovery() {
    serially(async {
        let api = Api::start(&[manifest("echo", "echo", "")], ApiOptions::default()).await;
        let c = &api.client;
        let (_, edited) = manifest("echo", "echo", "[config]\nprefix = \"new-\"");
        std::fs::write(api.manifest_dir().join("echo.toml"), edited).unwrap();
        let loaded = c
            .post("/api/plugins/load", &json!({"plugin_id": "echo"}))
            .await;
        assert_eq!(loaded.status, 200, "{}", loaded.text());
        let out = c
            .post(
                "/api/plugins/execute",
                &json!({"plugin_id": "echo", "input": "hi"}),
            )
            .await;
        assert_eq!(out.json()["output"], "new-hi", "{}", out.text());
        api.finish().await;
    })
}

/// `GET /api/plugins/{id}/config` answers the configuration in force and its schema.
#[test]
fn the_config_route_answers_the_config_in_force_and_its_schema() {
    serially(async {
        let api = Api::start(&[manifest("echo", "echo", "")], ApiOptions::default()).await;
        let c = &api.client;
        let before = c.get("/api/plugins/echo/config").await;
        assert_eq!(before.status, 409, "not loaded yet: {}", before.text());
        assert_eq!(before.error_kind(), "not_loaded");
        let unknown = c.get("/api/plugins/nope/config").await;
        assert_eq!(unknown.status, 404, "{}", unknown.text());
        c.post("/api/plugins/load", &json!({"plugin_id": "echo"}))
            .await;
        let set = c
            .put(
                "/api/plugins/echo/config",
                &json!({"config": {"mode": "upper"}}),
            )
            .await;
        assert_eq!(set.status, 200, "{}", set.text());
        let answer = c.get("/api/plugins/echo/config").await;
        assert_eq!(answer.status, 200, "{}", answer.text());
        let body = answer.json();
        assert_eq!(body["config"]["mode"], "upper", "{body}");
        assert_eq!(body["schema"]["type"], "object", "{body}");
        assert!(body["schema"]["properties"]["mode"].is_object(), "{body}");
        api.finish().await;
    })
}

/// `execute_stream` ignored `timeout_ms` (refused it as an unknown field).
#[test]
fn execute_stream_ends_with_timed_out_at_its_timeout_ms() {
    serially(async {
        let api = Api::start(&[manifest("ticker", "ticker", "")], ApiOptions::default()).await;
        let c = &api.client;
        c.post("/api/plugins/load", &json!({"plugin_id": "ticker"}))
            .await;
        let lines = |body: serde_json::Value| async move {
            let body = body.to_string();
            let mut stream = c
                .open("POST", "/api/plugins/execute_stream", Some(body.as_bytes()))
                .await;
            assert_eq!(stream.status, 200);
            let mut lines = Vec::new();
            while let Some(line) = stream.next_line().await {
                lines.push(serde_json::from_str::<serde_json::Value>(&line).unwrap());
            }
            lines
        };
        let slow = json!({"n": 1000, "bytes": 2, "interval_ms": 20});
        let cut = lines(json!({"plugin_id": "ticker", "input": slow, "timeout_ms": 200})).await;
        let last = cut.last().unwrap();
        assert_eq!(last["error"]["kind"], "timed_out", "{last}");
        assert!(cut.len() > 1 && cut.len() < 1000, "{} frames", cut.len());
        // The positive control: a stream within its timeout ends cleanly.
        let quick = json!({"n": 3, "bytes": 2, "interval_ms": 20});
        let whole = lines(json!({"plugin_id": "ticker", "input": quick, "timeout_ms": 5000})).await;
        assert_eq!(whole.len(), 4);
        assert_eq!(whole[3]["end"]["count"], 3, "{whole:?}");
        let zero = c
            .post(
                "/api/plugins/execute_stream",
                &json!({"plugin_id": "ticker", "input": quick, "timeout_ms": 0}),
            )
            .await;
        assert_eq!(zero.status, 400, "{}", zero.text());
        api.finish().await;
    })
}
