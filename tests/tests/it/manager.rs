//! The plugin manager with real workers: discovery, layered and validated configuration,
//! secrets, dependencies, hot reload under load, lazy start and idle stop.

use plugvisor_host::{CallOptions, EventKind, HostConfig};
use plugvisor_manager::manifest::Manifest;
use plugvisor_manager::{ManagerConfig, ManagerError, PluginManager};
use plugvisor_proto::{json, PluginError, Value};
use plugvisor_tests::{bin, eventually, files_under, process_state, serially};
use std::path::Path;
use std::time::Duration;

/// A manifest for a bundled worker, by absolute path.
fn manifest(name: &str, worker: &str, extra: &str) -> String {
    let command = bin(&format!("{worker}-worker"));
    format!(
        "name = \"{name}\"\nversion = \"0.1.0\"\ncommand = \"{}\"\n{extra}\n",
        command.display()
    )
}

struct Setup {
    manager: PluginManager,
    base: tempfile::TempDir,
    _manifests: tempfile::TempDir,
}

fn setup(files: &[(&str, String)], host_config: Option<&str>) -> Setup {
    let manifests = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(manifests.path().join(format!("{name}.toml")), text).unwrap();
    }
    let host_config_file = host_config.map(|text| {
        let path = manifests.path().join("plugvisor.conf");
        std::fs::write(&path, text).unwrap();
        path
    });
    let base = tempfile::tempdir().unwrap();
    let manager = PluginManager::new(ManagerConfig {
        manifest_dirs: vec![manifests.path().to_path_buf()],
        host_config_file,
        host: HostConfig {
            base_dir: Some(base.path().to_path_buf()),
        },
        ..ManagerConfig::default()
    })
    .unwrap();
    Setup {
        manager,
        base,
        _manifests: manifests,
    }
}

/// Shuts down and checks no worker or file is left.
async fn finish(setup: Setup, pids: &[u32]) {
    let Setup { manager, base, .. } = setup;
    manager.shutdown().await;
    let gone = eventually(Duration::from_secs(3), || {
        pids.iter().all(|p| process_state(*p).is_none())
    })
    .await;
    assert!(gone, "workers left: {pids:?}");
    assert!(
        files_under(base.path()).is_empty(),
        "{:?}",
        files_under(base.path())
    );
}

fn pid_of(manager: &PluginManager, name: &str) -> u32 {
    manager.info(name).unwrap().pid.expect("a running worker")
}

#[test]
fn a_broken_manifest_is_reported_and_the_others_load() {
    serially(async {
        let s = setup(
            &[
                ("echo", manifest("echo", "echo", "")),
                (
                    "broken",
                    "name = \"broken\"\nversion = 1\ncommand = \"x\"\n".to_owned(),
                ),
            ],
            None,
        );
        let problems = s.manager.manifest_errors();
        assert_eq!(problems.len(), 1);
        let text = problems[0].to_string();
        assert!(text.contains("broken.toml:2:"), "{text}");
        assert_eq!(s.manager.available().len(), 1);
        assert_eq!(s.manager.load_all().await.unwrap(), ["echo"]);
        let pid = pid_of(&s.manager, "echo");
        let out = s
            .manager
            .call("echo", json!("hi"), CallOptions::default())
            .await
            .unwrap();
        assert_eq!(out.value, json!("hi"));
        finish(s, &[pid]).await;
    })
}

#[test]
fn each_config_layer_overrides_the_one_below() {
    serially(async {
        let layered = manifest(
            "layers",
            "echo",
            "[config]\nprefix = \"manifest:\"\nmode = \"lower\"\n",
        );
        let host_file = "[plugins.layers.config]\nprefix = \"file:\"\n";
        let s = setup(&[("layers", layered)], Some(host_file));
        // The environment is read when the plugin loads (tests run one at a time).
        std::env::set_var("PLUGVISOR__LAYERS__MODE", "upper");
        let loaded = s.manager.load("layers", None).await;
        std::env::remove_var("PLUGVISOR__LAYERS__MODE");
        loaded.unwrap();
        let pid = pid_of(&s.manager, "layers");
        // schema default mode=identity < manifest lower < (file: prefix) < env upper.
        let config = s.manager.config("layers").unwrap().config;
        assert_eq!(config, json!({"mode": "upper", "prefix": "file:"}));
        let out = s
            .manager
            .call("layers", json!("Hi"), CallOptions::default())
            .await
            .unwrap();
        assert_eq!(out.value, json!("FILE:HI"));
        // The API layer is on top.
        let shown = s
            .manager
            .set_config("layers", json!({"mode": "identity"}))
            .await
            .unwrap();
        assert_eq!(shown, json!({"mode": "identity", "prefix": "file:"}));
        let out = s
            .manager
            .call("layers", json!("Hi"), CallOptions::default())
            .await
            .unwrap();
        assert_eq!(out.value, json!("file:Hi"));
        assert_eq!(
            pid_of(&s.manager, "layers"),
            pid,
            "re-configured without a restart"
        );
        finish(s, &[pid]).await;
    })
}

#[test]
fn a_schema_violation_names_the_field_and_leaves_the_plugin_untouched() {
    serially(async {
        let s = setup(&[("echo", manifest("echo", "echo", ""))], None);
        s.manager
            .load("echo", Some(json!({"mode": "upper"})))
            .await
            .unwrap();
        let pid = pid_of(&s.manager, "echo");
        // Without a host file or env layer: schema defaults under the API layer.
        let config = s.manager.config("echo").unwrap().config;
        assert_eq!(config, json!({"mode": "upper", "prefix": ""}));
        let err = s
            .manager
            .set_config("echo", json!({"mode": "shout", "volume": 11}))
            .await
            .unwrap_err();
        let ManagerError::InvalidConfig { problems, .. } = &err else {
            panic!("{err}")
        };
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("mode: ") && p.contains("(rule: enum)")),
            "{problems:?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.contains("volume") && p.contains("additionalProperties")),
            "{problems:?}"
        );
        let out = s
            .manager
            .call("echo", json!("hi"), CallOptions::default())
            .await
            .unwrap();
        assert_eq!(out.value, json!("HI"), "the old config is still in force");
        let err = s.manager.load("echo", None).await.unwrap_err();
        assert!(matches!(err, ManagerError::AlreadyLoaded(_)));
        finish(s, &[pid]).await;
    })
}

#[test]
fn a_bad_config_at_load_leaves_nothing_running() {
    serially(async {
        let s = setup(
            &[(
                "echo",
                manifest("echo", "echo", "[config]\nmode = \"shout\"\n"),
            )],
            None,
        );
        let mut events = s.manager.host().events();
        let err = s.manager.load("echo", None).await.unwrap_err();
        assert!(err.to_string().contains("mode: "), "{err}");
        let started: Vec<u32> = std::iter::from_fn(|| events.try_recv().ok())
            .filter_map(|e| match e.kind {
                EventKind::Started { pid } => Some(pid),
                _ => None,
            })
            .collect();
        assert_eq!(started.len(), 1);
        assert!(s.manager.loaded().is_empty());
        finish(s, &started).await;
    })
}

/// Collects everything logged while it lives (on this thread: the test's runtime).
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn secrets_are_masked_everywhere_and_never_logged() {
    serially(async {
        let logs = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = std::sync::Arc::clone(&logs);
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || Captured(std::sync::Arc::clone(&sink)))
            .finish();
        let _logging = tracing::subscriber::set_default(subscriber);
        let s = setup(&[("chaos", manifest("chaos", "chaos", ""))], None);
        let mut events = s.manager.host().events();
        s.manager.load("chaos", None).await.unwrap();
        let pid = pid_of(&s.manager, "chaos");
        let secret = "hunter2-s3cr3t";
        let shown = s
            .manager
            .set_config("chaos", json!({"api_key": secret}))
            .await
            .unwrap();
        assert_eq!(shown["api_key"], json!("***"));
        assert_eq!(
            s.manager.config("chaos").unwrap().config["api_key"],
            json!("***")
        );
        let bad = s
            .manager
            .set_config(
                "chaos",
                json!({"api_key": secret, "crash_on_initialize": secret}),
            )
            .await;
        assert!(!bad.unwrap_err().to_string().contains(secret));
        let changed: Vec<Value> = std::iter::from_fn(|| events.try_recv().ok())
            .filter_map(|e| match e.kind {
                EventKind::ConfigChanged { config } => Some(config),
                _ => None,
            })
            .collect();
        assert_eq!(
            changed,
            [json!({"api_key": "***", "crash_on_initialize": false})]
        );
        let status = serde_json::to_string(&s.manager.status()).unwrap();
        assert!(!status.contains(secret));
        finish(s, &[pid]).await;
        let logged = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
        assert!(
            logged.contains("config_changed"),
            "the capture works: {logged}"
        );
        assert!(!logged.contains(secret), "the secret was logged");
    })
}

#[test]
fn dependencies_give_the_start_order_and_bad_ones_are_named() {
    serially(async {
        let s = setup(
            &[
                (
                    "a",
                    manifest("app", "echo", "requires = [\"store\"]\nprovides = [\"ui\"]"),
                ),
                ("b", manifest("db", "echo", "provides = [\"store\"]")),
            ],
            None,
        );
        assert_eq!(s.manager.load_all().await.unwrap(), ["db", "app"]);
        let status = s.manager.status();
        assert_eq!(status.initialization_order, ["db", "app"]);
        assert_eq!(status.services["store"], "db");
        let err = s.manager.unload("db", false).await.unwrap_err();
        assert!(err.to_string().contains("required by app"), "{err}");
        let pids = [pid_of(&s.manager, "db"), pid_of(&s.manager, "app")];
        s.manager.unload("db", true).await.unwrap();
        assert!(eventually(Duration::from_secs(3), || process_state(pids[0]).is_none()).await);
        finish(s, &pids).await;

        let missing = setup(
            &[("a", manifest("app", "echo", "requires = [\"store\"]"))],
            None,
        );
        let err = missing.manager.load_all().await.unwrap_err().to_string();
        assert_eq!(
            err,
            "plugin app requires service \"store\", which no plugin provides"
        );
        finish(missing, &[]).await;

        let cycle = setup(
            &[
                (
                    "a",
                    manifest("a", "echo", "requires = [\"x\"]\nprovides = [\"y\"]"),
                ),
                (
                    "b",
                    manifest("b", "echo", "requires = [\"y\"]\nprovides = [\"x\"]"),
                ),
            ],
            None,
        );
        let err = cycle.manager.load("a", None).await.unwrap_err().to_string();
        assert_eq!(err, "dependency cycle: a -> b -> a");
        assert!(cycle.manager.loaded().is_empty(), "nothing started");
        finish(cycle, &[]).await;
    })
}

#[test]
fn reload_under_continuous_calls_fails_no_call() {
    serially(async {
        let s = setup(&[("echo", manifest("echo", "echo", ""))], None);
        let reloads = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let counter = std::sync::Arc::clone(&reloads);
        s.manager.register_hook("plugin_reloaded", move |_| {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        });
        s.manager
            .load("echo", Some(json!({"prefix": "x:"})))
            .await
            .unwrap();
        let first = pid_of(&s.manager, "echo");
        let caller = s.manager.clone();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = std::sync::Arc::clone(&stop);
        let load = tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stopping.load(std::sync::atomic::Ordering::Relaxed) {
                match caller
                    .call("echo", json!("a"), CallOptions::default())
                    .await
                {
                    Ok(out) if out.value == json!("x:a") => ok += 1,
                    other => failed.push(format!("{other:?}")),
                }
            }
            (ok, failed)
        });
        let mut pids = vec![first];
        for _ in 0..3 {
            s.manager.reload("echo").await.unwrap();
            pids.push(pid_of(&s.manager, "echo"));
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (ok, failed) = load.await.unwrap();
        assert!(
            failed.is_empty(),
            "{} calls failed: {failed:?}",
            failed.len()
        );
        assert!(ok > 10, "only {ok} calls ran during the reloads");
        pids.dedup();
        assert_eq!(pids.len(), 4, "each reload swapped the worker: {pids:?}");
        let hooked = eventually(Duration::from_secs(2), || {
            reloads.load(std::sync::atomic::Ordering::SeqCst) == 3
        });
        assert!(hooked.await, "the plugin_reloaded hook ran for each reload");
        for old in &pids[..3] {
            assert!(eventually(Duration::from_secs(3), || process_state(*old).is_none()).await);
        }
        finish(s, &pids).await;
    })
}

#[test]
fn a_lazy_plugin_starts_on_its_first_call_and_stops_when_idle() {
    serially(async {
        let s = setup(
            &[(
                "t",
                manifest("ticker", "ticker", "start = \"lazy\"\nidle_stop_secs = 1"),
            )],
            None,
        );
        s.manager.load("ticker", None).await.unwrap();
        let info = s.manager.info("ticker").unwrap();
        assert_eq!((info.state.as_str(), info.pid), ("idle", None));
        let out = s
            .manager
            .call("ticker", json!({"n": 3}), CallOptions::default())
            .await
            .unwrap();
        assert_eq!(out.value["n"], json!(3));
        let pid = pid_of(&s.manager, "ticker");
        let stopped = eventually(Duration::from_secs(5), || {
            s.manager.info("ticker").unwrap().pid.is_none()
        })
        .await;
        assert!(stopped, "not stopped after the idle period");
        assert!(eventually(Duration::from_secs(3), || process_state(pid).is_none()).await);
        // And it comes back.
        let out = s
            .manager
            .call("ticker", json!({"n": 1}), CallOptions::default())
            .await
            .unwrap();
        assert_eq!(out.value["n"], json!(1));
        let again = pid_of(&s.manager, "ticker");
        assert_ne!(again, pid);
        finish(s, &[pid, again]).await;
    })
}

#[test]
fn a_sandbox_table_confines_the_plugin_and_unknown_options_are_refused() {
    serially(async {
        let s = setup(
            &[
                (
                    "e",
                    manifest("echo", "echo", "[sandbox]\nnetwork = \"none\""),
                ),
                (
                    "t",
                    manifest("ticker", "ticker", "[sandbox]\nmemory_mb = 64"),
                ),
            ],
            None,
        );
        let problems: Vec<String> = s
            .manager
            .manifest_errors()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert!(
            problems.iter().any(|p| p.contains("memory_mb")),
            "{problems:?}"
        );
        s.manager.load("echo", None).await.unwrap();
        let out = s
            .manager
            .call("echo", json!("boxed"), CallOptions::default())
            .await
            .unwrap();
        assert_eq!(out.value, json!("boxed"));
        let pid = pid_of(&s.manager, "echo");
        let shown = serde_json::to_value(s.manager.info("echo").unwrap()).unwrap();
        assert_eq!(shown["sandbox"]["network"], json!("none"), "{shown}");
        assert_eq!(shown["enforced"]["network"], json!("none"), "{shown}");
        assert_eq!(
            shown["enforced"]["filesystem"],
            json!("landlock"),
            "{shown}"
        );
        assert_eq!(shown["enforced"]["tree"], json!("cgroup"), "{shown}");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        assert!(status.contains("Seccomp:\t2"), "{status}");
        finish(s, &[pid]).await;
    })
}

/// DEFECTS.md #6: a reload used to drop the idle stopper, so the new worker never stopped.
#[test]
fn idle_stop_still_applies_after_a_reload() {
    serially(async {
        let s = setup(
            &[("e", manifest("echo", "echo", "idle_stop_secs = 1"))],
            None,
        );
        s.manager.load("echo", None).await.unwrap();
        let first = pid_of(&s.manager, "echo");
        s.manager.reload("echo").await.unwrap();
        let reloaded = pid_of(&s.manager, "echo");
        assert_ne!(reloaded, first);
        s.manager
            .call("echo", json!("hi"), CallOptions::default())
            .await
            .unwrap();
        let stopped = eventually(Duration::from_secs(5), || {
            s.manager.info("echo").unwrap().pid.is_none()
        })
        .await;
        assert!(
            stopped,
            "the reloaded worker was not stopped after its idle period"
        );
        assert_eq!(s.manager.info("echo").unwrap().state, "idle");
        finish(s, &[first, reloaded]).await;
    })
}

#[test]
fn calls_tell_unknown_from_unloaded_plugins_and_bundled_manifests_parse() {
    serially(async {
        let s = setup(&[("echo", manifest("echo", "echo", ""))], None);
        let err = s
            .manager
            .call("nope", json!(1), CallOptions::default())
            .await
            .unwrap_err();
        assert!(matches!(err, ManagerError::Unknown(_)), "{err:?}");
        let err = s
            .manager
            .stream("echo", json!(1))
            .await
            .err()
            .expect("a stream from an unloaded plugin");
        assert!(matches!(err, ManagerError::NotLoaded(_)), "{err:?}");
        assert!(matches!(
            s.manager.load("nope", None).await,
            Err(ManagerError::Unknown(_))
        ));
        finish(s, &[]).await;
        let bundled = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/manifests");
        for entry in std::fs::read_dir(&bundled).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|x| x != "toml") {
                continue; // a UI plugin's assets directory
            }
            let text = std::fs::read_to_string(&path).unwrap();
            Manifest::parse_file(&text, &path).unwrap_or_else(|e| panic!("{e}"));
        }
    })
}

#[test]
fn a_manifest_config_that_fails_the_schema_is_refused_at_load() {
    serially(async {
        let s = setup(
            &[(
                "echo",
                manifest("echo", "echo", "[config]\nmode = \"shout\"\n"),
            )],
            None,
        );
        assert_eq!(s.manager.available().len(), 1);
        let err = s.manager.load("echo", None).await.unwrap_err();
        let ManagerError::InvalidConfig { problems, .. } = &err else {
            panic!("{err:?}");
        };
        assert!(problems.iter().any(|p| p.contains("mode")), "{problems:?}");
        assert!(matches!(
            s.manager.config("echo"),
            Err(ManagerError::NotLoaded(_))
        ));
        finish(s, &[]).await;
    })
}

#[test]
fn events_carry_the_manifest_name_and_a_broken_requirement_blocks_only_its_plugin() {
    serially(async {
        let s = setup(
            &[
                (
                    "f",
                    manifest("fragile", "chaos", "[supervision]\nbackoff_initial_ms = 10"),
                ),
                (
                    "x",
                    manifest("needy", "echo", "requires = [\"nothing-provides-this\"]"),
                ),
            ],
            None,
        );
        let mut events = s.manager.host().events();
        s.manager.load("fragile", None).await.unwrap();
        let err = s.manager.load("needy", None).await.unwrap_err();
        assert!(err.to_string().contains("needy requires service"), "{err}");
        let crashed = s
            .manager
            .call("fragile", json!({"fault": "abort"}), CallOptions::default())
            .await;
        let Some(PluginError::WorkerCrashed(report)) =
            crashed.as_ref().err().and_then(ManagerError::plugin_error)
        else {
            panic!("{crashed:?}")
        };
        assert_eq!(report.plugin, "fragile");
        // The supervisor reports the crash on its own task, possibly after the caller saw it.
        let mut all = Vec::new();
        let until_crashed = async {
            while let Ok(event) = events.recv().await {
                let crashed = event.kind.name() == "crashed";
                all.push(event);
                if crashed {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(3), until_crashed).await;
        all.extend(std::iter::from_fn(|| events.try_recv().ok()));
        assert!(all.iter().all(|e| e.plugin == "fragile"), "{all:?}");
        assert!(all.iter().any(|e| e.kind.name() == "crashed"), "{all:?}");
        let pids: Vec<u32> = all
            .iter()
            .filter_map(|e| match e.kind {
                EventKind::Started { pid } => Some(pid),
                _ => None,
            })
            .collect();
        finish(s, &pids).await;
    })
}
