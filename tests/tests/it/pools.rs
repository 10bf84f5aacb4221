//! Pools (issue 13): `replicas = N` runs N supervised workers of one plugin; calls go to the
//! least-loaded ready replica, a crash fails only the calls on its own replica (the control:
//! with one worker the same crash fails the call beside it), the replica restarts, and the
//! API shows each replica. A configuration change rolls one replica at a time under load with
//! no failed call (and a reload swaps every replica, again with none); a configuration that a
//! replica refuses is rolled back with the pool serving throughout.

use crate::api::{info_until, load_plugins, manifest, Api};
use plugvisor_manager::api::ApiOptions;
use plugvisor_tests::http::{Answer, Client};
use plugvisor_tests::{eventually, process_state, serially};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

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
pub(crate) fn ready_pids(info: &Value) -> Option<BTreeSet<u64>> {
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
fn replica_counts_out_of_range_are_refused_naming_the_key() {
    serially(async {
        let plugins = [
            manifest("many", "echo", "replicas = 65"),
            manifest("none", "echo", "replicas = 0"),
            manifest("upside", "echo", "min_replicas = 3\nmax_replicas = 2"),
            manifest("halfway", "echo", "min_replicas = 2"),
            manifest(
                "still",
                "echo",
                "max_replicas = 2\nscale_down_idle_secs = 0",
            ),
        ];
        let api = Api::start(&plugins, ApiOptions::default()).await;
        let keys = [
            ("many", "replicas"),
            ("none", "replicas"),
            ("upside", "max_replicas"),
            ("halfway", "min_replicas needs max_replicas"),
            ("still", "scale_down_idle_secs"),
        ];
        for (id, key) in keys {
            let refused = api
                .client
                .post("/api/plugins/load", &json!({"plugin_id": id}))
                .await;
            assert_ne!(refused.status, 200, "{}", refused.text());
            assert!(refused.text().contains(key), "{id}: {}", refused.text());
        }
        api.finish().await;
    })
}

/// `callers` loops of short calls on `plugin` until `stop` is set: the answers that were not
/// 200 (with their text) and how many were.
async fn load_until(
    c: &Client,
    plugin: &str,
    callers: usize,
    stop: &AtomicBool,
) -> (usize, Vec<String>) {
    let loops = (0..callers).map(|_| async {
        let (mut ok, mut failed) = (0, Vec::new());
        while !stop.load(Ordering::Acquire) {
            let answer = execute(c, plugin, sleep(15)).await;
            match answer.status {
                200 => ok += 1,
                status => failed.push(format!("{status}: {}", answer.text())),
            }
        }
        (ok, failed)
    });
    let all = futures_util::future::join_all(loops).await;
    all.into_iter()
        .fold((0, Vec::new()), |(ok, mut failed), (o, f)| {
            failed.extend(f);
            (ok + o, failed)
        })
}

/// The configuration each replica of `plugin` holds, by pid (asked until `replicas` pids
/// answered; sequential calls on an idle pool rotate over its replicas).
async fn configs_by_pid(c: &Client, plugin: &str, replicas: usize) -> BTreeMap<u64, Value> {
    let mut seen = BTreeMap::new();
    for _ in 0..60 {
        let answer = execute(c, plugin, json!({"fault": "config"})).await;
        let output = &answer.json()["output"];
        let pid = output["pid"].as_u64().expect("a pid");
        seen.insert(pid, output["config"].clone());
        if seen.len() == replicas {
            break;
        }
    }
    assert_eq!(seen.len(), replicas, "{seen:?}");
    seen
}

/// The pid sets `plugin`'s replicas showed, asked every 10 ms until `done`.
async fn pid_sets_until(c: &Client, plugin: &str, done: &AtomicBool) -> Vec<BTreeSet<u64>> {
    let mut seen = Vec::new();
    while !done.load(Ordering::Acquire) {
        let info = c.get(&format!("/api/plugins/{plugin}")).await.json();
        let pids = info["workers"].as_array().map(|w| {
            let pids = w.iter().filter_map(|w| w["pid"].as_u64());
            pids.collect::<BTreeSet<_>>()
        });
        seen.extend(pids.filter(|p| !p.is_empty()));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    seen
}

/// True when three replicas are ready.
fn three_ready(info: &Value) -> bool {
    ready_pids(info).is_some_and(|p| p.len() == 3)
}

/// The API serving `pool`, chaos with `replicas = 3`, loaded, and its three ready pids.
async fn pool_of_three() -> (Api, BTreeSet<u64>) {
    let plugins = [manifest("pool", "chaos", "replicas = 3")];
    let api = Api::start(&plugins, ApiOptions::default()).await;
    load_plugins(&api.client, &["pool"]).await;
    let info = info_until(&api.client, "pool", three_ready).await;
    let before = ready_pids(&info).unwrap_or_default();
    (api, before)
}

#[test]
fn a_config_change_and_a_reload_roll_under_load_with_no_failed_call() {
    serially(async {
        let (api, before) = pool_of_three().await;
        let c = &api.client;

        let stop = AtomicBool::new(false);
        let changes = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            // Each replica takes 150 ms to apply it: one at a time, the change takes at
            // least three of those (all at once would take one).
            let began = Instant::now();
            let set = c
                .put(
                    "/api/plugins/pool/config",
                    &json!({"config": {"initialize_delay_ms": 150}}),
                )
                .await;
            let took = began.elapsed();
            assert_eq!(set.status, 200, "{}", set.text());
            assert!(took >= Duration::from_millis(450), "not rolled: {took:?}");
            eprintln!("rolling configuration change over 3 replicas took {took:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
            // The reload rolls too: each new worker is configured (150 ms) before it takes an
            // old one's place, so three of them take three of those, one after another.
            let began = Instant::now();
            let reload_done = AtomicBool::new(false);
            let reload = async {
                let reloaded = c.send("POST", "/api/plugins/pool/reload", None).await;
                reload_done.store(true, Ordering::Release);
                reloaded
            };
            let (reloaded, seen) = tokio::join!(reload, pid_sets_until(c, "pool", &reload_done));
            let took = began.elapsed();
            assert_eq!(reloaded.status, 200, "{}", reloaded.text());
            assert!(took >= Duration::from_millis(450), "not rolled: {took:?}");
            eprintln!("rolling reload of 3 replicas took {took:?}");
            tokio::time::sleep(Duration::from_millis(300)).await;
            stop.store(true, Ordering::Release);
            seen
        };
        let ((ok, failed), seen) = tokio::join!(load_until(c, "pool", 4, &stop), changes);
        assert!(
            failed.is_empty(),
            "{} calls failed: {failed:?}",
            failed.len()
        );
        assert!(ok > 20, "only {ok} calls ran");
        eprintln!("{ok} calls from 4 callers during the change and the reload, none failed");

        // Every replica is new (the reload) and holds the new configuration.
        let after = ready_pids(&info_until(c, "pool", three_ready).await).unwrap_or_default();
        assert!(after.is_disjoint(&before), "{before:?} -> {after:?}");
        // One replica at a time: at some moment the pool served old and new workers side by
        // side (a whole-pool swap goes from all old to all new).
        let mixed = seen
            .iter()
            .any(|pids| !pids.is_disjoint(&before) && !pids.is_disjoint(&after));
        assert!(
            mixed,
            "never old and new together: {before:?} {seen:?} {after:?}"
        );
        assert!(seen.iter().all(|pids| pids.len() <= 3), "{seen:?}");
        let configs = configs_by_pid(c, "pool", 3).await;
        assert_eq!(configs.keys().copied().collect::<BTreeSet<_>>(), after);
        for (pid, config) in &configs {
            assert_eq!(
                config["initialize_delay_ms"], 150,
                "replica {pid}: {config}"
            );
        }
        api.finish().await;
    })
}

#[test]
fn a_refused_config_is_rolled_back_while_the_pool_serves() {
    serially(async {
        let (api, before) = pool_of_three().await;
        let c = &api.client;
        let dir = tempfile::tempdir().expect("a temp dir");
        let marker = dir.path().join("taken");

        // The first replica takes it (and leaves the marker); the second refuses it.
        let stop = AtomicBool::new(false);
        let change = async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let refused = c
                .put(
                    "/api/plugins/pool/config",
                    &json!({"config": {"accept_once_file": marker}}),
                )
                .await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            stop.store(true, Ordering::Release);
            refused
        };
        let ((ok, failed), refused) = tokio::join!(load_until(c, "pool", 3, &stop), change);
        assert_eq!(refused.error_kind(), "invalid_config", "{}", refused.text());
        let message = refused.error_message();
        assert!(message.contains("replica 1 of 3"), "{message}");
        assert!(message.contains("put back"), "{message}");
        assert!(marker.exists(), "no replica took the configuration first");
        assert!(
            failed.is_empty(),
            "{} calls failed: {failed:?}",
            failed.len()
        );
        assert!(ok > 10, "only {ok} calls ran");

        // The same workers, every one back on the previous configuration.
        let config = c.get("/api/plugins/pool/config").await.json();
        assert!(config["config"].is_object(), "{config}");
        assert!(
            config["config"].get("accept_once_file").is_none(),
            "{config}"
        );
        let configs = configs_by_pid(c, "pool", 3).await;
        assert_eq!(configs.keys().copied().collect::<BTreeSet<_>>(), before);
        for (pid, config) in &configs {
            assert!(
                config.get("accept_once_file").is_none(),
                "replica {pid}: {config}"
            );
        }
        api.finish().await;
    })
}

/// The replicas of `info` that are ready, by count.
fn ready_count(info: &Value) -> Option<usize> {
    ready_pids(info).map(|p| p.len())
}

#[test]
fn a_scaling_pool_grows_under_load_and_shrinks_when_idle() {
    serially(async {
        let scaling = "max_replicas = 3\nscale_down_idle_secs = 1";
        let plugins = [manifest("elastic", "chaos", scaling)];
        let api = Api::start(&plugins, ApiOptions::default()).await;
        load_plugins(&api.client, &["elastic"]).await;
        let c = &api.client;
        let first = info_until(c, "elastic", |i| ready_count(i) == Some(1)).await;
        let first = ready_pids(&first).unwrap_or_default();

        // Six callers keep about six calls in flight: above one per replica, so the pool
        // grows one worker at a time, to its most.
        let stop = AtomicBool::new(false);
        let grow = async {
            let began = Instant::now();
            let full = info_until(c, "elastic", |i| ready_count(i) == Some(3)).await;
            eprintln!("grew from 1 to 3 replicas in {:?}", began.elapsed());
            stop.store(true, Ordering::Release);
            ready_pids(&full).unwrap_or_default()
        };
        let ((ok, failed), full) = tokio::join!(load_until(c, "elastic", 6, &stop), grow);
        assert!(
            failed.is_empty(),
            "{} calls failed: {failed:?}",
            failed.len()
        );
        assert!(ok > 20, "only {ok} calls ran");
        assert!(first.is_subset(&full), "{first:?} -> {full:?}");

        // Idle: one replica fewer sufficed for a second, twice; the pool is back to its
        // fewest and the workers that left are gone.
        let began = Instant::now();
        let back = info_until(c, "elastic", |i| ready_count(i) == Some(1)).await;
        eprintln!("shrank from 3 to 1 replica in {:?}", began.elapsed());
        let back = ready_pids(&back).unwrap_or_default();
        for pid in full.difference(&back) {
            let gone = eventually(Duration::from_secs(10), || {
                process_state(*pid as u32).is_none()
            })
            .await;
            assert!(gone, "worker {pid} left the pool but still runs");
        }
        let answer = execute(c, "elastic", sleep(1)).await;
        assert_eq!(answer.status, 200, "{}", answer.text());
        api.finish().await;
    })
}
