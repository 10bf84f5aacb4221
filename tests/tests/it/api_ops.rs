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
        assert!(probed, "one worker was started at load to check the configuration");
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
