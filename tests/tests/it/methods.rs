//! Named methods end to end: the three bodies of `POST /api/plugins/execute`, an unknown
//! method, a crash inside a method, and `plugvisor call NAME.METHOD`.

use crate::api::{assert_error, echo, manifest, Api};
use plugvisor_manager::api::ApiOptions;
use plugvisor_tests::{bin, eventually, files_under, serially};
use serde_json::{json, Value};
use std::process::Command;
use std::time::Duration;

#[test]
fn every_execute_body_calls_its_method() {
    serially(async {
        let api = Api::start(&[echo()], ApiOptions::default()).await;
        let c = &api.client;
        let loaded = c
            .post("/api/plugins/load", &json!({"plugin_id": "echo"}))
            .await;
        assert_eq!(loaded.status, 200, "{}", loaded.text());
        let names: Vec<Value> = loaded.json()["methods"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["name"].clone())
            .collect();
        assert_eq!(names, [json!("shout"), json!("reverse"), json!("events")]);

        for (body, want) in [
            (json!({"plugin_id": "echo", "input": "hi"}), json!("hi")),
            (
                json!({"plugin_id": "echo", "method": "shout", "input": "hi"}),
                json!("HI!"),
            ),
            (
                json!({"plugin_id": "echo", "method": "reverse", "args": ["abc"], "kwargs": {}}),
                json!("cba"),
            ),
            // args/kwargs become the input {"args", "kwargs"}: execute echoes it back.
            (
                json!({"plugin_id": "echo", "method": "execute", "kwargs": {"k": "v"}}),
                json!({"args": [], "kwargs": {"k": "v"}}),
            ),
            (
                json!({"plugin": "echo", "data": {"a": "b"}}),
                json!({"a": "b"}),
            ),
        ] {
            let answer = c.post("/api/plugins/execute", &body).await;
            assert_eq!(answer.status, 200, "{body}: {}", answer.text());
            assert_eq!(answer.json()["output"], want, "{body}");
        }

        let unknown = c
            .post(
                "/api/plugins/execute",
                &json!({"plugin_id": "echo", "method": "whisper", "input": "x"}),
            )
            .await;
        assert_error(&unknown, 404, "not_found");
        let error = &unknown.json()["error"];
        assert_eq!(
            error["methods"],
            json!(["execute", "shout", "reverse", "events"])
        );
        let message = error["message"].as_str().unwrap();
        assert!(
            message.contains("echo") && message.contains("whisper"),
            "{message}"
        );

        for mixed in [
            json!({"plugin_id": "echo", "data": "x"}),
            json!({"plugin_id": "echo", "input": "x", "args": []}),
            json!({"plugin": "echo", "data": "x", "timeout_ms": 5}),
        ] {
            let refused = c.post("/api/plugins/execute", &mixed).await;
            assert_error(&refused, 400, "bad_request");
            assert!(
                refused.text().contains("{plugin, data}"),
                "{}",
                refused.text()
            );
        }
        let bad_input = c
            .post(
                "/api/plugins/execute",
                &json!({"plugin_id": "echo", "method": "shout", "input": 3}),
            )
            .await;
        assert_error(&bad_input, 400, "invalid_input");

        let metrics = c.get("/metrics").await.text();
        let calls = metrics
            .lines()
            .find(|l| l.starts_with("plugvisor_calls_total{") && l.contains("\"echo\""))
            .unwrap_or_default();
        assert!(
            calls.ends_with(" 6"),
            "5 calls and the invalid input: {calls}"
        );
        api.finish().await;
    })
}

#[test]
fn a_crash_inside_a_method_is_reported_and_the_plugin_comes_back() {
    serially(async {
        let chaos = manifest("chaos", "chaos", "[supervision]\nbackoff_initial_ms = 50");
        let api = Api::start(&[chaos], ApiOptions::default()).await;
        let c = &api.client;
        let loaded = c
            .post("/api/plugins/load", &json!({"plugin_id": "chaos"}))
            .await;
        assert_eq!(loaded.status, 200, "{}", loaded.text());
        let abort = json!({"plugin_id": "chaos", "method": "fault", "input": {"fault": "abort"}});
        let crashed = c.post("/api/plugins/execute", &abort).await;
        assert_error(&crashed, 502, "worker_crashed");
        assert_eq!(crashed.json()["error"]["crash"]["cause"], "abort");
        let ok = json!({"plugin_id": "chaos", "method": "fault", "args": [], "kwargs": {}});
        let mut answer = c.post("/api/plugins/execute", &ok).await;
        for _ in 0..100 {
            if answer.status == 200 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            answer = c.post("/api/plugins/execute", &ok).await;
        }
        assert_eq!(answer.status, 200, "{}", answer.text());
        assert_eq!(answer.json()["output"]["ok"], true, "{}", answer.text());
        api.finish().await;
    })
}

fn plugvisor(args: &[&str], base: &std::path::Path) -> std::process::Output {
    Command::new(bin("plugvisor"))
        .args(args)
        .env("PLUGVISOR_RUNTIME_DIR", base.join("run"))
        .output()
        .unwrap()
}

#[test]
fn the_cli_calls_a_method_by_name() {
    serially(async {
        let base = tempfile::tempdir().unwrap();
        let out = plugvisor(&["call", "echo.shout", r#""hi""#], base.path());
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(stdout.trim(), r#""HI!""#);
        let out = plugvisor(&["call", "echo.whisper", r#""hi""#], base.path());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            stderr.contains("execute, shout, reverse, events"),
            "{stderr}"
        );
        let out = plugvisor(&["stream", "echo.shout", r#""hi""#], base.path());
        assert!(!out.status.success());
        // A manifest plugin with no `<name>-worker` binary of its name: NAME.METHOD still
        // finds the manifest (it used to look for `talker-worker`).
        let manifests = base.path().join("manifests");
        std::fs::create_dir_all(&manifests).unwrap();
        let manifest = format!(
            "name = \"talker\"\nversion = \"0.1.0\"\ncommand = \"{}\"\n",
            bin("echo-worker").display()
        );
        std::fs::write(manifests.join("talker.toml"), manifest).unwrap();
        let dir = manifests.to_str().unwrap();
        let out = plugvisor(
            &["call", "--plugins", dir, "talker.shout", r#""hi""#],
            base.path(),
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stdout} {stderr}");
        assert_eq!(stdout.trim(), r#""HI!""#);
        let run = base.path().join("run");
        let clean = eventually(Duration::from_secs(5), || files_under(&run).is_empty()).await;
        assert!(clean, "files left: {:?}", files_under(&run));
    })
}
