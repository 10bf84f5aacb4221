//! Management operations racing each other and calls: a configuration change during a lazy
//! start, and an unload that drains while other plugins are managed.

use crate::api::{echo, manifest, Api};
use plugvisor_manager::api::ApiOptions;
use plugvisor_tests::{eventually, serially};
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// DEFECTS #1: a `PUT …/config` that lands while a lazy plugin's first worker is being
/// configured used to be recorded but never sent to that worker.
#[test]
fn a_config_change_during_a_lazy_start_reaches_the_worker() {
    serially(async {
        // Every initialize takes 1.5 s: the start is still configuring its worker when the
        // change arrives.
        let lazy = manifest(
            "chaos",
            "chaos",
            "start = \"lazy\"\n[config]\ninitialize_delay_ms = 1500",
        );
        let api = Api::start(&[lazy], ApiOptions::default()).await;
        let c = &api.client;
        let ready = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&ready);
        let _hook = api.manager.host().register_hook("ready", move |_| {
            seen.fetch_add(1, Ordering::SeqCst);
        });
        let loaded = c
            .post("/api/plugins/load", &json!({"plugin_id": "chaos"}))
            .await;
        assert_eq!(loaded.status, 200, "{}", loaded.text());
        // The probe at load (hooks run on a task of their own, so wait for it).
        let probed = eventually(Duration::from_secs(5), || ready.load(Ordering::SeqCst) == 1).await;
        assert!(
            probed,
            "one worker was started at load to check the configuration"
        );
        let probes = 1;

        let input = json!({"plugin_id": "chaos", "input": {"fault": "none"}});
        let call = c.post("/api/plugins/execute", &input);
        let change = async {
            // The lazy start's worker is ready: the manager is configuring it now.
            let started = eventually(Duration::from_secs(10), || {
                ready.load(Ordering::SeqCst) > probes
            })
            .await;
            assert!(started, "the call never started a worker");
            tokio::time::sleep(Duration::from_millis(100)).await;
            let set = json!({"config": {"api_key": "changed-mid-start"}});
            c.put("/api/plugins/chaos/config", &set).await
        };
        let (called, changed) = tokio::join!(call, change);
        assert_eq!(called.status, 200, "{}", called.text());
        assert_eq!(changed.status, 200, "{}", changed.text());

        let held = c
            .post(
                "/api/plugins/execute",
                &json!({"plugin_id": "chaos", "input": {"fault": "config"}}),
            )
            .await;
        assert_eq!(
            held.json()["output"]["config"]["api_key"],
            "changed-mid-start",
            "the worker holds the configuration the API reported applied: {}",
            held.text()
        );
        api.finish().await;
    })
}

/// DEFECTS #4: an unload waiting for a plugin's open stream held the manager-wide lock for
/// up to 30 s, so a configuration change of an unrelated plugin waited as long.
#[test]
fn a_draining_unload_does_not_hold_up_other_plugins() {
    serially(async {
        let ticker = manifest("ticker", "ticker", "");
        let api = Api::start(&[echo(), ticker], ApiOptions::default()).await;
        let client = api.client.clone();
        let c = &client;
        for name in ["echo", "ticker"] {
            let loaded = c
                .post("/api/plugins/load", &json!({"plugin_id": name}))
                .await;
            assert_eq!(loaded.status, 200, "{}", loaded.text());
        }
        let body =
            json!({"plugin_id": "ticker", "input": {"n": 1000, "bytes": 4, "interval_ms": 200}});
        let mut stream = c
            .open(
                "POST",
                "/api/plugins/execute_stream",
                Some(body.to_string().as_bytes()),
            )
            .await;
        let first = stream.next_line_within(Duration::from_secs(10)).await;
        assert!(first.is_some(), "the stream started");

        let unload = c.send("POST", "/api/plugins/ticker/unload", None);
        tokio::pin!(unload);
        let removed = async {
            while c.get("/api/plugins/ticker").await.json()["loaded"] != false {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::select! {
            answer = &mut unload => panic!("the unload did not wait for the stream: {}", answer.text()),
            () = removed => {}
        }

        // The unload now drains ticker's stream (up to 30 s); echo is managed meanwhile.
        let started = Instant::now();
        let set = json!({"config": {"mode": "upper"}});
        let changed = tokio::select! {
            answer = c.put("/api/plugins/echo/config", &set) => answer,
            answer = &mut unload => panic!("the unload ended first: {}", answer.text()),
        };
        assert_eq!(changed.status, 200, "{}", changed.text());
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "echo's config change waited {:?} for ticker's drain",
            started.elapsed()
        );
        let reloaded = tokio::select! {
            answer = c.send("POST", "/api/plugins/echo/reload", None) => answer,
            answer = &mut unload => panic!("the unload ended first: {}", answer.text()),
        };
        assert_eq!(reloaded.status, 200, "{}", reloaded.text());

        // Closing the stream ends the drain, and with it the unload.
        drop(stream);
        let unloaded = tokio::time::timeout(Duration::from_secs(10), unload)
            .await
            .expect("the unload ends once the stream is gone");
        assert_eq!(unloaded.status, 200, "{}", unloaded.text());
        api.finish().await;
    })
}
