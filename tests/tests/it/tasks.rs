//! Scheduled tasks through the API server: runs on `every` schedules through the supervisor
//! (a crash is a failed run, the plugin restarts, the schedule goes on), state, events and
//! metrics, runs on demand with `overlap`, pause while the plugin is failed, and an end with
//! the plugin.

use crate::api::{assert_error, manifest, Api};
use plugvisor_host::EventKind;
use plugvisor_manager::api::ApiOptions;
use plugvisor_tests::{eventually, serially};
use serde_json::{json, Value};
use std::time::Duration;

fn task_of(api: &Api, plugin: &str, task: &str) -> Value {
    let tasks = api.manager.tasks(plugin).expect("tasks");
    let found = tasks
        .into_iter()
        .find(|t| t.name == task)
        .expect("the task");
    serde_json::to_value(found).expect("json")
}

async fn load(api: &Api, ids: &[&str]) {
    for id in ids {
        let loaded = api
            .client
            .post("/api/plugins/load", &json!({"plugin_id": id}))
            .await;
        assert_eq!(loaded.status, 200, "{id}: {}", loaded.text());
    }
}

#[test]
fn tasks_run_on_schedule_and_a_crash_is_one_failed_run() {
    serially(async {
        let marker = tempfile::tempdir().unwrap();
        let marker_path = marker.path().join("crashed-once");
        let chaos = format!(
            "[supervision]\nbackoff_initial_ms = 20\n\
             [[tasks]]\nname = \"flaky\"\nevery = \"150ms\"\n\
             input = {{ fault = \"crash_once\", marker = \"{}\" }}\n",
            marker_path.display()
        );
        let manifests = [
            manifest(
                "echo",
                "echo",
                "[[tasks]]\nname = \"tick\"\nevery = \"50ms\"\ninput = \"tick\"",
            ),
            manifest("chaos", "chaos", &chaos),
        ];
        let api = Api::start(&manifests, ApiOptions::default()).await;
        let mut events = api.manager.host().events();
        load(&api, &["echo", "chaos"]).await;
        let c = &api.client;

        let ran = eventually(Duration::from_secs(10), || {
            task_of(&api, "echo", "tick")["runs"].as_u64() >= Some(5)
        })
        .await;
        assert!(
            ran,
            "tick did not run 5 times: {}",
            task_of(&api, "echo", "tick")
        );
        let tick = c.get("/api/plugins/echo/tasks").await;
        assert_eq!(tick.status, 200, "{}", tick.text());
        let first = &tick.json()["tasks"][0];
        assert_eq!(first["name"], json!("tick"));
        assert_eq!(first["schedule"], json!("every 50ms"));
        assert_eq!(first["last_outcome"], json!("ok"), "{first}");
        assert!(
            first["next_run_ms"].as_u64() > first["last_started_ms"].as_u64(),
            "{first}"
        );
        // The task's calls reached the plugin: echo's own route lists its recent outputs.
        let recent = c.get("/plugins/echo/recent").await.json();
        assert_eq!(recent["outputs"][0]["output"], json!("tick"), "{recent}");

        // chaos crashes on its first run: one failed run, a restart, then runs that succeed.
        let recovered = eventually(Duration::from_secs(10), || {
            let t = task_of(&api, "chaos", "flaky");
            t["failures"] == json!(1) && t["last_outcome"] == json!("ok")
        })
        .await;
        assert!(recovered, "{}", task_of(&api, "chaos", "flaky"));
        let info = c.get("/api/plugins/chaos").await.json();
        assert_eq!(info["restarts"], json!(1), "{info}");
        assert_eq!(info["tasks"][0]["name"], json!("flaky"), "{info}");

        // Events and metrics.
        let mut seen = Vec::new();
        while let Ok(event) = events.try_recv() {
            seen.push((event.plugin.clone(), event.kind.name()));
            if let EventKind::TaskFailed { error, .. } = &event.kind {
                assert!(
                    error.contains("crash") || error.contains("abort"),
                    "{error}"
                );
            }
        }
        for (plugin, name) in [
            ("echo", "task_started"),
            ("echo", "task_finished"),
            ("chaos", "task_failed"),
        ] {
            assert!(
                seen.iter().any(|(p, n)| p == plugin && *n == name),
                "no {name} of {plugin} in {seen:?}"
            );
        }
        let metrics = c.get("/metrics").await.text();
        assert!(
            metrics.contains(
                "plugvisor_task_runs_total{plugin=\"chaos\",task=\"flaky\",outcome=\"failed\"} 1"
            ),
            "{metrics}"
        );
        assert!(metrics
            .contains("plugvisor_task_duration_seconds_count{plugin=\"echo\",task=\"tick\"}"));

        // After an unload no run starts.
        let unloaded = c.post("/api/plugins/echo/unload", &json!({})).await;
        assert_eq!(unloaded.status, 200, "{}", unloaded.text());
        let mut events = api.manager.host().events();
        tokio::time::sleep(Duration::from_millis(300)).await;
        while let Ok(event) = events.try_recv() {
            assert!(
                !(event.plugin == "echo" && event.kind.name() == "task_started"),
                "a task of unloaded echo ran"
            );
        }
        api.finish().await;
    })
}

/// chaos with one hour-long-period task that sleeps 400 ms per run, and `overlap`.
fn sleeper(name: &str, overlap: &str) -> (String, String) {
    let extra = format!(
        "[supervision]\nmax_restarts = 0\n\
         [[tasks]]\nname = \"nap\"\nevery = \"1h\"\noverlap = \"{overlap}\"\n\
         input = {{ fault = \"sleep\", ms = 400 }}\n"
    );
    manifest(name, "chaos", &extra)
}

#[test]
fn runs_on_demand_honour_overlap_and_pause_while_the_plugin_is_failed() {
    serially(async {
        let manifests = [sleeper("skipper", "skip"), sleeper("queuer", "queue")];
        let api = Api::start(&manifests, ApiOptions::default()).await;
        load(&api, &["skipper", "queuer"]).await;
        let c = &api.client;
        let run = |plugin: &str| format!("/api/plugins/{plugin}/tasks/nap/run");
        let empty = json!({});
        let (skip_path, queue_path) = (run("skipper"), run("queuer"));

        // skip: a second run while one runs is refused.
        let (first, second) = tokio::join!(c.post(&skip_path, &empty), async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            c.post(&skip_path, &empty).await
        });
        assert_eq!(first.status, 200, "{}", first.text());
        assert_eq!(first.json()["last_outcome"], json!("ok"));
        assert_error(&second, 409, "task_busy");
        assert_eq!(task_of(&api, "skipper", "nap")["skipped"], json!(1));
        // queue: it waits and runs.
        let (first, second) = tokio::join!(c.post(&queue_path, &empty), async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            c.post(&queue_path, &empty).await
        });
        assert_eq!(
            (first.status, second.status),
            (200, 200),
            "{}",
            second.text()
        );
        assert_eq!(second.json()["runs"], json!(2), "{}", second.text());

        // Unknown tasks and plugins name what exists.
        let unknown = c
            .post("/api/plugins/queuer/tasks/nope/run", &json!({}))
            .await;
        assert_error(&unknown, 404, "not_found");
        assert_eq!(unknown.json()["error"]["tasks"], json!(["nap"]));
        assert_error(&c.get("/api/plugins/ghost/tasks").await, 404, "not_found");

        // A failed plugin's tasks pause (max_restarts = 0: one crash and it is failed).
        let crash = json!({"plugin_id": "skipper", "input": {"fault": "abort"}});
        assert_eq!(c.post("/api/plugins/execute", &crash).await.status, 502);
        let failed = eventually(Duration::from_secs(10), || {
            api.manager
                .loaded()
                .iter()
                .any(|p| p.name == "skipper" && p.state == "failed")
        })
        .await;
        assert!(failed, "skipper did not fail");
        let paused = c.post(&run("skipper"), &json!({})).await;
        assert_error(&paused, 503, "unavailable");
        assert_eq!(
            task_of(&api, "skipper", "nap")["last_outcome"],
            json!("paused")
        );
        // A reload brings it back, with its tasks.
        let reloaded = c.post("/api/plugins/skipper/reload", &json!({})).await;
        assert_eq!(reloaded.status, 200, "{}", reloaded.text());
        assert_eq!(c.post(&run("skipper"), &json!({})).await.status, 200);
        api.finish().await;
    })
}

#[test]
fn broken_tasks_are_manifest_errors() {
    serially(async {
        let manifests = [
            manifest(
                "a",
                "echo",
                "[[tasks]]\nname = \"t\"\ncron = \"61 * * * *\"",
            ),
            manifest("b", "echo", "[[tasks]]\nname = \"t\""),
            manifest(
                "c",
                "echo",
                "[[tasks]]\nname = \"t\"\nevery = \"1s\"\n[[tasks]]\nname = \"t\"\nevery = \"2s\"",
            ),
        ];
        let api = Api::start(&manifests, ApiOptions::default()).await;
        let errors =
            api.client.get("/api/plugins/available").await.json()["manifest_errors"].to_string();
        assert!(
            errors.contains("a.toml") && errors.contains("cron"),
            "{errors}"
        );
        assert!(
            errors.contains("b.toml") && errors.contains("exactly one"),
            "{errors}"
        );
        assert!(
            errors.contains("c.toml") && errors.contains("two [[tasks]]"),
            "{errors}"
        );
        api.finish().await;
    })
}

#[test]
fn a_run_in_progress_finishes_when_its_plugin_is_unloaded() {
    serially(async {
        let extra = "[[tasks]]\nname = \"nap\"\nevery = \"1h\"\nrun_at_start = true\n\
                     input = { fault = \"sleep\", ms = 500 }\n";
        let api = Api::start(&[manifest("chaos", "chaos", extra)], ApiOptions::default()).await;
        let mut events = api.manager.host().events();
        load(&api, &["chaos"]).await;
        let started = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let event = events.recv().await.expect("events");
                if event.kind.name() == "task_started" {
                    return;
                }
            }
        })
        .await;
        assert!(started.is_ok(), "the task did not start");
        let unloaded = api
            .client
            .post("/api/plugins/chaos/unload", &json!({}))
            .await;
        assert_eq!(unloaded.status, 200, "{}", unloaded.text());
        // The run was not cut short: it finished (the unload drained it).
        let mut names = Vec::new();
        while let Ok(event) = events.try_recv() {
            names.push(event.kind.name());
        }
        assert!(names.contains(&"task_finished"), "{names:?}");
        api.finish().await;
    })
}
