//! Pools (issue 13): `replicas = N` runs N supervised workers of one plugin; calls go to the
//! least-loaded ready replica, a crash fails only the calls on its own replica (the control:
//! with one worker the same crash fails the call beside it), the replica restarts, and the
//! API shows each replica.

use crate::api::{info_until, load_plugins, manifest, Api};
use plugvisor_manager::api::ApiOptions;
use plugvisor_tests::http::{Answer, Client};
use plugvisor_tests::serially;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Duration;

async fn execute(c: &Client, plugin: &str, input: Value) -> Answer {
    c.post(
        "/api/plugins/execute",
        &json!({"plugin_id": plugin, "input": input}),
    )
    .await
}

fn sleep(ms: u64) -> Value {
    json!({"fault": "sleep", "ms": ms})
}

/// The pids the replicas of `info` run, when all are ready.
fn ready_pids(info: &Value) -> Option<BTreeSet<u64>> {
    let workers = info["workers"].as_array()?;
    let ready = workers.iter().all(|w| w["state"] == "ready");
    ready.then(|| workers.iter().filter_map(|w| w["pid"].as_u64()).collect())
}

#[test]
fn calls_spread_over_replicas_and_a_crash_stays_on_its_own() {
    serially(async {
        let plugins = [
            manifest("pool", "chaos", "replicas = 3"),
            manifest("single", "chaos", ""),
        ];
        let api = Api::start(&plugins, ApiOptions::default()).await;
        let c = &api.client;
        load_plugins(c, &["pool", "single"]).await;
        let info = c.get("/api/plugins/pool").await.json();
        assert_eq!(info["replicas"], 3, "{info}");
        let pids = ready_pids(&info).expect("three ready replicas");
        assert_eq!(pids.len(), 3, "{info}");

        // Three calls at once: each on a replica of its own (the least loaded), so together
        // they name every replica.
        let answers =
            futures_util::future::join_all((0..3).map(|_| execute(c, "pool", sleep(400)))).await;
        let served: BTreeSet<u64> = answers
            .iter()
            .map(|a| a.json()["output"]["pid"].as_u64().expect("a pid"))
            .collect();
        assert_eq!(served, pids, "{answers:?}");

        // A crash beside two running calls: only the crashing call fails.
        let slow = (0..2).map(|_| execute(c, "pool", sleep(600)));
        let crash = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            execute(c, "pool", json!({"fault": "abort"})).await
        };
        let (slow, crashed) = tokio::join!(futures_util::future::join_all(slow), crash);
        assert_eq!(crashed.error_kind(), "worker_crashed", "{}", crashed.text());
        for answer in &slow {
            assert_eq!(answer.status, 200, "{}", answer.text());
        }
        // The control: one worker, the same crash beside a running call fails that call too.
        let beside = execute(c, "single", sleep(600));
        let crash = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            execute(c, "single", json!({"fault": "abort"})).await
        };
        let (beside, _) = tokio::join!(beside, crash);
        assert_eq!(beside.error_kind(), "worker_crashed", "{}", beside.text());

        // The crashed replica restarts; the pool serves on with three replicas.
        let info = info_until(c, "pool", |i| {
            i["restarts"] == 1 && ready_pids(i).is_some_and(|p| p.len() == 3)
        })
        .await;
        let now = ready_pids(&info).unwrap_or_default();
        assert_eq!(now.intersection(&pids).count(), 2, "{info}");
        let again = execute(c, "pool", sleep(1)).await;
        assert_eq!(again.status, 200, "{}", again.text());
        api.finish().await;
    })
}

#[test]
fn replicas_out_of_range_are_refused_naming_the_key() {
    serially(async {
        let plugins = [
            manifest("many", "echo", "replicas = 65"),
            manifest("none", "echo", "replicas = 0"),
        ];
        let api = Api::start(&plugins, ApiOptions::default()).await;
        for id in ["many", "none"] {
            let refused = api
                .client
                .post("/api/plugins/load", &json!({"plugin_id": id}))
                .await;
            assert_ne!(refused.status, 200, "{}", refused.text());
            assert!(refused.text().contains("replicas"), "{}", refused.text());
        }
        api.finish().await;
    })
}
