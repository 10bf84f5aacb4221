//! Answers that say what is wrong: a reload of a broken manifest, a worker that cannot start,
//! two manifests with one name, odd request paths, and secrets sent back masked.

use crate::api::{assert_error, echo, manifest, Api};
use plugvisor_manager::api::ApiOptions;
use plugvisor_tests::http::raw_exchange;
use plugvisor_tests::serially;
use serde_json::json;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

/// Writes an executable shell script `name` into `dir`.
fn script(dir: &Path, name: &str, body: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// A manifest for plugin `name` whose worker is `program`.
fn manifest_of(name: &str, program: &Path, extra: &str) -> (String, String) {
    let text = format!(
        "name = \"{name}\"\nversion = \"0.1.0\"\ncommand = \"{}\"\n{extra}\n",
        program.display()
    );
    (name.to_owned(), text)
}

/// DEFECTS #7: reloading a loaded plugin whose manifest file (named otherwise than the
/// plugin) is now broken answered `404 unknown plugin`.
#[test]
fn reloading_a_broken_manifest_names_the_file_line_and_reason() {
    serially(async {
        let (_, text) = echo();
        let api = Api::start(
            &[("my-echo".to_owned(), text.clone())],
            ApiOptions::default(),
        )
        .await;
        let c = &api.client;
        let loaded = c
            .post("/api/plugins/load", &json!({"plugin_id": "echo"}))
            .await;
        assert_eq!(loaded.status, 200, "{}", loaded.text());

        let file = api.manifest_dir().join("my-echo.toml");
        let broken = text.replace("command = ", "comand = ");
        std::fs::write(&file, &broken).unwrap();
        let line = broken
            .lines()
            .position(|l| l.starts_with("comand"))
            .unwrap()
            + 1;
        let answer = c.send("POST", "/api/plugins/echo/reload", None).await;
        assert_error(&answer, 422, "invalid_manifest");
        let error = &answer.json()["error"];
        let message = answer.error_message();
        assert!(
            message.contains(&format!("my-echo.toml:{line}")) && message.contains("comand"),
            "{message}"
        );
        assert_eq!(error["file"], file.display().to_string(), "{error}");
        assert_eq!(error["line"], line, "{error}");

        let still = c.get("/api/plugins/echo").await.json();
        assert_eq!(
            (&still["loaded"], &still["state"]),
            (&json!(true), &json!("ready"))
        );
        api.finish().await;
    })
}

/// DEFECTS #8: a load that cannot start its worker said only a state name or a restart
/// count; the real cause was in the server log alone.
#[test]
fn a_failed_load_says_why_the_worker_could_not_start() {
    serially(async {
        let dir = tempfile::tempdir().unwrap();
        // A valid handshake, then gone before /v1/info.
        let exit0 = script(dir.path(), "exit0", "echo \"plugvisor 1 unix $2\"\nexit 0");
        let crashing = manifest(
            "crashing",
            "chaos",
            "[env]\nCHAOS_STARTUP = \"crash\"\n[supervision]\nmax_restarts = 1\nbackoff_initial_ms = 50",
        );
        let api = Api::start(
            &[
                manifest_of("exit0", &exit0, "[supervision]\nstart_timeout_secs = 2"),
                crashing,
            ],
            ApiOptions::default(),
        )
        .await;
        let c = &api.client;

        let answer = c
            .post("/api/plugins/load", &json!({"plugin_id": "exit0"}))
            .await;
        assert_error(&answer, 502, "start_failed");
        let cause = answer.json()["error"]["start_error"].clone();
        assert!(
            cause.as_str().is_some_and(|c| c.contains("/v1/info")),
            "{}",
            answer.text()
        );
        assert!(
            answer.error_message().contains("/v1/info"),
            "{}",
            answer.text()
        );
        let info = c.get("/api/plugins/exit0").await.json();
        assert_eq!(info["loaded"], false);
        assert!(
            info["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("/v1/info")),
            "{info}"
        );

        let answer = c
            .post("/api/plugins/load", &json!({"plugin_id": "crashing"}))
            .await;
        assert_error(&answer, 502, "start_failed");
        let message = answer.error_message();
        assert!(
            message.contains("code 3") && message.contains("chaos: crashing at start-up"),
            "{message}"
        );
        api.finish().await;
    })
}

/// DEFECTS #9: of two manifests with one name, the later one silently won.
#[test]
fn two_manifests_with_one_name_are_a_manifest_error() {
    serially(async {
        let (_, first) = manifest("dup", "echo", "");
        let (_, second) = manifest("dup", "ticker", "");
        let api = Api::start(
            &[("a".to_owned(), first), ("b".to_owned(), second)],
            ApiOptions::default(),
        )
        .await;
        let available = api.client.get("/api/plugins/available").await.json();
        let problems = available["manifest_errors"].as_array().unwrap();
        let named_both = problems.iter().any(|p| {
            let reason = p["reason"].as_str().unwrap_or_default();
            p["file"].as_str().is_some_and(|f| f.ends_with("b.toml"))
                && reason.contains("a.toml")
                && reason.contains("\"dup\"")
        });
        assert!(named_both, "{available:#}");
        api.finish().await;
    })
}

/// DEFECTS #12: ids in paths were not percent-decoded.
#[test]
fn plugin_ids_in_paths_are_percent_decoded() {
    serially(async {
        let api = Api::start(&[echo()], ApiOptions::default()).await;
        let c = &api.client;
        let found = c.get("/api/plugins/ech%6F").await;
        assert_eq!(found.status, 200, "{}", found.text());
        assert_eq!(found.json()["name"], "echo");
        for bad in [
            "/api/plugins/a%2Fb",
            "/api/plugins/ec%00ho",
            "/api/plugins/%FF",
        ] {
            let answer = c.get(bad).await;
            assert_error(&answer, 400, "bad_request");
        }
        // Past hyper's limit on the request target, hyper answers alone, as API.md says.
        let long = format!(
            "GET /api/plugins/{} HTTP/1.1\r\nHost: {}\r\n\r\n",
            "a".repeat(70_000),
            c.addr
        );
        let answer = raw_exchange(c.addr, long.as_bytes(), Duration::from_secs(10))
            .await
            .expect("the connection is closed after the answer");
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 414 "), "{answer}");
        let still = c.get("/api/plugins/echo").await;
        assert_eq!(still.status, 200, "{}", still.text());
        api.finish().await;
    })
}

/// Issue 11: a configuration read back (secrets masked) and sent again with another field
/// changed used to give the plugin the literal mask as its secret.
#[test]
fn a_masked_secret_sent_back_keeps_its_value() {
    serially(async {
        let chaos = manifest("chaos", "chaos", "");
        let api = Api::start(&[chaos], ApiOptions::default()).await;
        let c = &api.client;
        let secret = "the-real-secret";
        let loaded = c
            .post(
                "/api/plugins/load",
                &json!({"plugin_id": "chaos", "config": {"api_key": secret}}),
            )
            .await;
        assert_eq!(loaded.status, 200, "{}", loaded.text());
        let mut config = c.get("/api/plugins/chaos").await.json()["config"].clone();
        assert_eq!(config["api_key"], "***");
        config["initialize_delay_ms"] = json!(1);
        let put = c
            .put("/api/plugins/chaos/config", &json!({ "config": config }))
            .await;
        assert_eq!(put.status, 200, "{}", put.text());
        assert_eq!(put.json()["config"]["api_key"], "***");
        let held = c
            .post(
                "/api/plugins/execute",
                &json!({"plugin_id": "chaos", "input": {"fault": "config"}}),
            )
            .await;
        let worker = &held.json()["output"]["config"];
        assert_eq!(worker["api_key"], secret, "{}", held.text());
        assert_eq!(worker["initialize_delay_ms"], 1, "{}", held.text());
        api.finish().await;
    })
}
