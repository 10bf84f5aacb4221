//! Hooks delivered to plugins end to end (`hooks = [...]` in a manifest, `POST /v1/events` on
//! the worker): a subscriber hears other plugins' loads and unloads; a slow subscriber never
//! holds up the host, other plugins or calls, and its overflow is counted as dropped (a fast
//! one drops nothing); a failing, panicking or crashing subscriber is counted and logged, the
//! crashing one restarts, and nothing else notices; a manifest naming an unknown event, or
//! subscribing a worker that serves no events, is refused with the reason.

use crate::api::{assert_error, info_until, load_plugins, manifest, Api};
use plugvisor_manager::api::ApiOptions;
use plugvisor_tests::http::Client;
use plugvisor_tests::{bin, serially};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// What echo plugin `name` heard, from its `events` method.
async fn heard(c: &Client, name: &str) -> Value {
    let call = json!({"plugin_id": name, "method": "events", "input": null});
    let answer = c.post("/api/plugins/execute", &call).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    answer.json()["output"].clone()
}

async fn unload(c: &Client, name: &str) {
    let unloaded = c
        .post(&format!("/api/plugins/{name}/unload"), &json!({}))
        .await;
    assert_eq!(unloaded.status, 200, "{name}: {}", unloaded.text());
}

/// The sum of a `PluginInfo.hooks`' outcome counts.
fn counted(hooks: &Value) -> u64 {
    ["delivered", "failed", "dropped", "skipped"]
        .iter()
        .map(|k| hooks[*k].as_u64().unwrap())
        .sum()
}

#[test]
fn a_subscriber_hears_other_plugins_load_and_unload() {
    serially(async {
        let plugins = [
            manifest(
                "listener",
                "echo",
                "hooks = [\"plugin_loaded\", \"plugin_unloaded\"]",
            ),
            manifest("other", "echo", ""),
            manifest("sleeper", "echo", "start = \"lazy\"\nhooks = [\"loaded\"]"),
        ];
        let api = Api::start(&plugins, ApiOptions::default()).await;
        let c = &api.client;
        load_plugins(c, &["listener"]).await;
        load_plugins(c, &["sleeper"]).await;
        load_plugins(c, &["other"]).await;
        // Not subscribed: never delivered.
        let changed = c
            .put(
                "/api/plugins/other/config",
                &json!({"config": {"mode": "upper"}}),
            )
            .await;
        assert_eq!(changed.status, 200, "{}", changed.text());
        unload(c, "other").await;

        // listener hears itself, sleeper and other loaded, then other unloaded.
        let info = info_until(c, "listener", |i| i["hooks"]["delivered"] == 4).await;
        assert_eq!(
            info["hooks"],
            json!({"subscribed": ["loaded", "unloaded"], "delivered": 4, "failed": 0,
                   "dropped": 0, "skipped": 0})
        );
        let got = heard(c, "listener").await;
        assert_eq!(got["counts"], json!({"loaded": 3, "unloaded": 1}), "{got}");
        let events = got["events"].as_array().unwrap();
        let seen: Vec<(&str, &str)> = events
            .iter()
            .map(|e| (e["event"].as_str().unwrap(), e["plugin"].as_str().unwrap()))
            .collect();
        let order = [
            ("unloaded", "other"),
            ("loaded", "other"),
            ("loaded", "sleeper"),
            ("loaded", "listener"),
        ];
        assert_eq!(seen, order, "newest first, in the order they happened");
        assert_eq!(events[1]["details"], json!({"version": "0.1.0"}));
        assert!(events[1]["at_ms"].as_u64() > Some(1_700_000_000_000));

        // A lazy plugin between calls is not started for an event: its own `loaded` and
        // other's are skipped.
        let sleeper = info_until(c, "sleeper", |i| i["hooks"]["skipped"] == 2).await;
        assert_eq!(
            (&sleeper["state"], &sleeper["pid"]),
            (&json!("idle"), &Value::Null)
        );
        assert_eq!(sleeper["hooks"]["delivered"], 0, "{sleeper}");

        // After a reload only the new worker hears events, once each.
        let reloaded = c.send("POST", "/api/plugins/listener/reload", None).await;
        assert_eq!(reloaded.status, 200, "{}", reloaded.text());
        load_plugins(c, &["other"]).await;
        unload(c, "other").await;
        let info = info_until(c, "listener", |i| i["hooks"]["delivered"] == 6).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let info_after = c.get("/api/plugins/listener").await.json();
        assert_eq!(info_after["hooks"], info["hooks"], "nothing more arrived");
        assert_eq!(counted(&info["hooks"]), 6, "{info}");
        let got = heard(c, "listener").await;
        assert_eq!(got["counts"], json!({"loaded": 1, "unloaded": 1}), "{got}");

        let metrics = c.get("/metrics").await.text();
        let line = "plugvisor_hook_deliveries_total{plugin=\"listener\",outcome=\"delivered\"} 6";
        assert!(metrics.contains(line), "{metrics}");
        api.finish().await;
    })
}

#[test]
fn a_slow_subscriber_blocks_nothing_and_its_overflow_is_counted() {
    serially(async {
        let burst: u64 = 100;
        let plugins = [
            manifest(
                "slow",
                "chaos",
                "env = { CHAOS_EVENTS = \"slow:1000\" }\nhooks = [\"config_changed\"]",
            ),
            manifest("fast", "echo", "hooks = [\"config_changed\"]"),
            manifest("target", "echo", ""),
            manifest("bystander", "echo", ""),
            manifest("extra", "echo", ""),
        ];
        let api = Api::start(&plugins, ApiOptions::default()).await;
        let c = &api.client;
        for name in ["slow", "fast", "target", "bystander"] {
            load_plugins(c, &[name]).await;
        }

        // A burst of events, each from a configuration change of `target`.
        let started = Instant::now();
        let mut slowest = Duration::ZERO;
        for i in 0..burst {
            let mode = if i % 2 == 0 { "upper" } else { "lower" };
            let one = Instant::now();
            api.manager
                .set_config("target", json!({"mode": mode}))
                .await
                .unwrap();
            slowest = slowest.max(one.elapsed());
        }
        let took = started.elapsed();
        // The slow subscriber takes 1 s per event; waiting for it even once would show.
        assert!(
            slowest < Duration::from_millis(500),
            "a change took {slowest:?}"
        );
        assert!(took < Duration::from_secs(5), "the burst took {took:?}");

        // Meanwhile calls, loads and unloads of other plugins stay fast.
        let call = Instant::now();
        let answer = c
            .post(
                "/api/plugins/execute",
                &json!({"plugin_id": "bystander", "input": "hi"}),
            )
            .await;
        assert_eq!(answer.status, 200, "{}", answer.text());
        assert!(
            call.elapsed() < Duration::from_millis(500),
            "{:?}",
            call.elapsed()
        );
        let cycle = Instant::now();
        load_plugins(c, &["extra"]).await;
        unload(c, "extra").await;
        assert!(
            cycle.elapsed() < Duration::from_secs(3),
            "{:?}",
            cycle.elapsed()
        );

        // The slow one is behind: one event being handled, 64 waiting, the rest dropped.
        let slow = c.get("/api/plugins/slow").await.json();
        let dropped = slow["hooks"]["dropped"].as_u64().unwrap();
        assert!(dropped >= 30, "{slow}");
        assert!(slow["hooks"]["delivered"].as_u64() <= Some(10), "{slow}");
        let metrics = c.get("/metrics").await.text();
        assert!(
            metrics
                .contains("plugvisor_hook_deliveries_total{plugin=\"slow\",outcome=\"dropped\"}"),
            "{metrics}"
        );

        // Positive control: the same burst, a fast subscriber: every event delivered.
        let fast = info_until(c, "fast", |i| i["hooks"]["delivered"] == burst).await;
        assert_eq!(fast["hooks"]["dropped"], 0, "{fast}");
        assert_eq!(counted(&fast["hooks"]), burst, "{fast}");
        let got = heard(c, "fast").await;
        assert_eq!(got["counts"]["config_changed"], burst, "{got}");

        // Unloading the slow one does not wait for its queue; what it never handled is
        // counted as dropped, so every event is counted once.
        let gone = Instant::now();
        unload(c, "slow").await;
        assert!(
            gone.elapsed() < Duration::from_secs(3),
            "{:?}",
            gone.elapsed()
        );
        let slow = c.get("/api/plugins/slow").await.json();
        assert_eq!(counted(&slow["hooks"]), burst, "{slow}");
        assert_eq!(slow["hooks"]["failed"], 0, "{slow}");
        api.finish().await;
    })
}

#[test]
fn failing_and_crashing_subscribers_are_counted_and_nothing_else_notices() {
    serially(async {
        let chaos = |name: &str, how: &str| {
            let extra = format!(
                "env = {{ CHAOS_EVENTS = \"{how}\" }}\nhooks = [\"loaded\"]\n\
                 [supervision]\nbackoff_initial_ms = 50"
            );
            manifest(name, "chaos", &extra)
        };
        let plugins = [
            manifest("bystander", "echo", ""),
            chaos("failer", "fail"),
            chaos("panicker", "panic"),
            chaos("crasher", "crash"),
            manifest("target", "echo", ""),
        ];
        let api = Api::start(&plugins, ApiOptions::default()).await;
        let c = &api.client;
        for name in ["bystander", "failer", "panicker", "crasher", "target"] {
            load_plugins(c, &[name]).await;
        }
        // crasher hears its own `loaded` and target's: it dies on each, and restarts.
        let crasher = info_until(c, "crasher", |i| {
            i["hooks"]["failed"] == 2 && i["restarts"] == 2 && i["state"] == "ready"
        })
        .await;
        assert_eq!(crasher["hooks"]["delivered"], 0, "{crasher}");
        // An error answer or a contained panic is a failed delivery, no restart.
        for (name, heard_loads) in [("failer", 4), ("panicker", 3)] {
            let info = info_until(c, name, |i| i["hooks"]["failed"] == heard_loads).await;
            assert_eq!(info["restarts"], 0, "{info}");
            assert_eq!(info["state"], "ready", "{info}");
        }

        // The host and the other plugins go on as if nothing happened.
        let answer = c
            .post(
                "/api/plugins/execute",
                &json!({"plugin_id": "bystander", "input": "still here"}),
            )
            .await;
        assert_eq!(answer.status, 200, "{}", answer.text());
        for name in ["bystander", "target"] {
            let info = c.get(&format!("/api/plugins/{name}")).await.json();
            assert_eq!(
                (&info["state"], &info["restarts"]),
                (&json!("ready"), &json!(0))
            );
        }
        let call = json!({"plugin_id": "crasher", "input": {"fault": "none"}});
        let answer = c.post("/api/plugins/execute", &call).await;
        assert_eq!(
            answer.status,
            200,
            "the restarted crasher serves calls: {}",
            answer.text()
        );
        let metrics = c.get("/metrics").await.text();
        let line = "plugvisor_hook_deliveries_total{plugin=\"crasher\",outcome=\"failed\"} 2";
        assert!(metrics.contains(line), "{metrics}");
        api.finish().await;
    })
}

#[test]
fn bad_hooks_are_refused_with_the_reason() {
    serially(async {
        let typo = manifest("typo", "echo", "hooks = [\"plugin_lodaed\"]");
        let line = typo.1.lines().position(|l| l.starts_with("hooks")).unwrap() + 1;
        let plugins = [typo, manifest("deaf", "files", "hooks = [\"loaded\"]")];
        let api = Api::start(&plugins, ApiOptions::default()).await;
        let c = &api.client;

        // An unknown event is a manifest error naming it, with its line.
        let available = c.get("/api/plugins/available").await.json();
        let problems = available["manifest_errors"].to_string();
        let want = format!("\"line\":{line}");
        assert!(
            problems.contains("hooks: unknown event \\\"plugin_lodaed\\\"")
                && problems.contains(&want),
            "{problems}"
        );
        let refused = c
            .post("/api/plugins/load", &json!({"plugin_id": "typo"}))
            .await;
        assert_error(&refused, 422, "invalid_manifest");
        assert_eq!(refused.json()["error"]["line"], line);
        let run = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(bin("plugvisor"))
            .args(["validate", api.manifest_dir().to_str().unwrap()])
            .env("PLUGVISOR_RUNTIME_DIR", run.path())
            .output()
            .unwrap();
        let report = String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{report}");
        assert!(
            report.contains(&format!(
                "typo.toml:{line}: hooks: unknown event \"plugin_lodaed\""
            )),
            "{report}"
        );

        // A worker that serves no events cannot be subscribed: the load fails, nothing runs.
        let refused = c
            .post("/api/plugins/load", &json!({"plugin_id": "deaf"}))
            .await;
        assert_error(&refused, 502, "start_failed");
        let reason = refused.json()["error"]["start_error"].clone();
        assert!(
            reason
                .as_str()
                .unwrap()
                .contains("the worker serves no events"),
            "{reason}"
        );
        let deaf = c.get("/api/plugins/deaf").await.json();
        assert_eq!(
            (&deaf["loaded"], &deaf["state"]),
            (&json!(false), &json!("failed"))
        );
        assert_eq!(deaf["last_error"], reason, "{deaf}");
        api.finish().await;
    })
}
