//! Supervision under fire: every fault the chaos plugin can throw, survived by the host.

use futures_util::StreamExt;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use plugvisor_host::{
    BackoffConfig, CallOptions, EventKind, HealthConfig, Plugin, PluginError, SupervisorConfig,
    WorkerState,
};
use plugvisor_proto::{json, CrashCause, Value};
use plugvisor_tests::{eventually, process_state, serially, spec, World};
use std::time::{Duration, Instant};

/// Short timings so faults play out in milliseconds.
fn fast() -> SupervisorConfig {
    SupervisorConfig {
        backoff: BackoffConfig {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(500),
            factor: 2.0,
            jitter: 0.0,
        },
        stable_after: Duration::from_secs(5),
        max_restarts: 5,
        restart_window: Duration::from_secs(10),
        health: Some(HealthConfig {
            interval: Duration::from_millis(100),
            timeout: Duration::from_millis(300),
            failures: 2,
        }),
        queue_timeout: Duration::from_secs(10),
        ..SupervisorConfig::default()
    }
}

fn fault(name: &str) -> Value {
    json!({ "fault": name })
}

async fn ok_call(sup: &plugvisor_host::Supervisor) {
    let out = sup.execute(fault("none")).await.expect("a healthy call");
    assert_eq!(out["ok"], json!(true));
}

#[test]
fn each_crash_gives_worker_crashed_with_its_cause_and_the_next_call_succeeds() {
    serially(async {
        let mut world = World::new().await;
        let sup = world.supervise("chaos", fast()).await;
        assert_eq!(sup.state(), WorkerState::Ready);
        for (name, cause) in [
            ("panic", CrashCause::Panic),
            ("abort", CrashCause::Abort),
            ("segfault", CrashCause::Segfault),
        ] {
            let started = Instant::now();
            let err = sup.execute(fault(name)).await.unwrap_err();
            let PluginError::WorkerCrashed(report) = err else {
                panic!("{name}: {err:?}")
            };
            assert_eq!(report.cause, cause, "{name}: {report:?}");
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "{name} took {:?}",
                started.elapsed()
            );
            ok_call(&sup).await;
        }
        let pid = sup.pid().unwrap();
        let hung = sup.execute(fault("hang"));
        let killer = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
            Instant::now()
        };
        let (result, killed_at) = tokio::join!(hung, killer);
        let Err(PluginError::WorkerCrashed(report)) = result else {
            panic!("{result:?}")
        };
        assert_eq!(report.cause, CrashCause::Killed);
        assert!(killed_at.elapsed() < Duration::from_secs(1));
        ok_call(&sup).await;
        assert_eq!(sup.restarts(), 4);
        drop(sup);
        world.finish().await;
    })
}

#[test]
fn a_panic_inside_a_call_is_contained_by_the_worker() {
    serially(async {
        let mut world = World::new().await;
        let sup = world.supervise("chaos", fast()).await;
        let pid = sup.pid();
        let err = sup.execute(fault("panic_in_call")).await.unwrap_err();
        assert!(
            matches!(&err, PluginError::Failed(m) if m.contains("panic")),
            "{err:?}"
        );
        ok_call(&sup).await;
        assert_eq!(sup.pid(), pid, "same worker, no restart");
        drop(sup);
        world.finish().await;
    })
}

#[test]
fn a_crash_mid_stream_ends_the_stream_with_an_error() {
    serially(async {
        let mut world = World::new().await;
        let sup = world.supervise("chaos", fast()).await;
        let mut stream = sup
            .execute_stream(json!({"fault": "stream_crash", "chunks": 5}))
            .await
            .unwrap();
        let mut items = Vec::new();
        while let Some(item) = stream.next().await {
            items.push(item);
        }
        // Chunks produced just before the crash may die in the worker's send buffer; what arrives
        // is an in-order prefix, and the stream ends with the crash, never cleanly.
        let (last, chunks) = items.split_last().unwrap();
        assert!(
            matches!(last, Err(PluginError::WorkerCrashed(_))),
            "{last:?}"
        );
        assert!(chunks.len() <= 5, "{items:?}");
        for (i, chunk) in chunks.iter().enumerate() {
            assert_eq!(chunk.as_ref().unwrap(), &json!({ "chunk": i }));
        }
        drop(stream);
        ok_call(&sup).await;
        drop(sup);
        world.finish().await;
    })
}

#[test]
fn a_crash_loop_backs_off_then_fails_fast_until_reset() {
    serially(async {
        let mut world = World::new().await;
        let flag = world.base.path().join("crash-flag");
        std::fs::write(&flag, b"").unwrap();
        let mut events = world.host.events();
        let config = SupervisorConfig {
            max_restarts: 3,
            ..fast()
        };
        let chaos = spec("chaos").env("CHAOS_STARTUP", format!("crash_while:{}", flag.display()));
        let sup = world.supervise_spec(chaos, config).await;
        assert_eq!(sup.state(), WorkerState::Failed, "{:?}", sup.reason());

        let mut delays = Vec::new();
        while let Ok(event) = events.try_recv() {
            if let EventKind::Restarting { delay_ms, .. } = event.kind {
                delays.push(delay_ms);
            }
        }
        assert_eq!(delays, [20, 40, 80], "delays grow by the factor");

        let started = Instant::now();
        let err = sup.execute(fault("none")).await.unwrap_err();
        assert!(
            started.elapsed() < Duration::from_millis(10),
            "{:?}",
            started.elapsed()
        );
        assert!(
            matches!(&err, PluginError::Unavailable(m) if m.contains("failed")),
            "{err:?}"
        );

        std::fs::remove_file(&flag).unwrap();
        sup.reset();
        assert_eq!(
            sup.wait_ready(Duration::from_secs(5)).await,
            WorkerState::Ready
        );
        ok_call(&sup).await;
        drop(sup);
        world.finish().await;
    })
}

#[test]
fn crashes_spaced_wider_than_the_window_never_fail_and_stability_resets_backoff() {
    serially(async {
        let mut world = World::new().await;
        let mut events = world.host.events();
        let config = SupervisorConfig {
            max_restarts: 1,
            restart_window: Duration::from_millis(300),
            stable_after: Duration::from_millis(400),
            ..fast()
        };
        let sup = world.supervise("chaos", config).await;
        // Two quick crashes inside one window would fail; these are 450 ms apart.
        for _ in 0..3 {
            let _ = sup.execute(fault("abort")).await;
            ok_call(&sup).await;
            tokio::time::sleep(Duration::from_millis(450)).await;
        }
        assert_eq!(sup.state(), WorkerState::Ready);
        let mut delays = Vec::new();
        while let Ok(event) = events.try_recv() {
            if let EventKind::Restarting { delay_ms, .. } = event.kind {
                delays.push(delay_ms);
            }
        }
        // Each worker ran longer than stable_after, so the backoff never grew.
        assert_eq!(delays, [20, 20, 20]);
        drop(sup);
        world.finish().await;
    })
}

#[test]
fn backoff_grows_when_crashes_come_quickly() {
    serially(async {
        let mut world = World::new().await;
        let mut events = world.host.events();
        let sup = world.supervise("chaos", fast()).await;
        for _ in 0..3 {
            let _ = sup.execute(fault("abort")).await;
        }
        ok_call(&sup).await;
        let mut delays = Vec::new();
        while let Ok(event) = events.try_recv() {
            if let EventKind::Restarting { delay_ms, .. } = event.kind {
                delays.push(delay_ms);
            }
        }
        assert_eq!(delays, [20, 40, 80]);
        drop(sup);
        world.finish().await;
    })
}

#[test]
fn a_missing_handshake_times_out_and_the_group_is_killed() {
    serially(async {
        let world = World::new().await;
        let chaos = spec("chaos")
            .env("CHAOS_STARTUP", "no_handshake")
            .start_timeout(Duration::from_millis(300));
        let started = Instant::now();
        let err = world.host.spawn(chaos).await.unwrap_err();
        assert!(
            matches!(err, plugvisor_host::HostError::StartTimeout { .. }),
            "{err}"
        );
        assert!(started.elapsed() < Duration::from_secs(2));
        world.finish().await;
    })
}

#[test]
fn a_bad_or_wrong_version_handshake_is_incompatible_without_a_restart_loop() {
    serially(async {
        let mut world = World::new().await;
        for startup in ["bad_handshake", "wrong_version"] {
            let mut events = world.host.events();
            let sup = world
                .supervise_spec(spec("chaos").env("CHAOS_STARTUP", startup), fast())
                .await;
            assert_eq!(sup.state(), WorkerState::Failed);
            let reason = sup.reason().unwrap_or_default();
            assert!(reason.contains("incompatible"), "{startup}: {reason}");
            tokio::time::sleep(Duration::from_millis(100)).await;
            let mut starts = 0;
            while let Ok(event) = events.try_recv() {
                starts += matches!(event.kind, EventKind::Started { .. }) as u32;
            }
            assert_eq!(starts, 1, "{startup}: no restart loop");
            drop(sup);
        }
        world.finish().await;
    })
}

#[test]
fn a_hung_call_times_out_is_cancelled_and_others_keep_working() {
    serially(async {
        let mut world = World::new().await;
        let sup = world.supervise("chaos", fast()).await;
        let pid = sup.pid();
        let hung = sup.execute_with(
            fault("hang"),
            CallOptions {
                timeout: Some(Duration::from_millis(200)),
            },
        );
        let other = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            sup.execute(fault("none")).await
        };
        let (hung, other) = tokio::join!(hung, other);
        assert!(matches!(hung, Err(PluginError::TimedOut(_))), "{hung:?}");
        assert!(other.is_ok());
        let cancelled = async {
            loop {
                if sup.health().await.map(|h| h.in_flight) == Ok(0) {
                    return;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(2), cancelled)
            .await
            .expect("the hung call was cancelled in the worker");
        assert_eq!(
            sup.pid(),
            pid,
            "a timeout alone does not kill a healthy worker"
        );
        drop(sup);
        world.finish().await;
    })
}

#[test]
fn a_deadlocked_worker_is_found_by_the_probe_killed_and_restarted() {
    serially(async {
        let mut world = World::new().await;
        let sup = world.supervise("chaos", fast()).await;
        let pid = sup.pid();
        let err = sup.execute(fault("deadlock")).await.unwrap_err();
        let PluginError::WorkerCrashed(report) = err else {
            panic!("{err:?}")
        };
        assert_eq!(report.cause, CrashCause::Unresponsive, "{report:?}");
        ok_call(&sup).await;
        assert_ne!(sup.pid(), pid);
        drop(sup);
        world.finish().await;
    })
}

#[test]
fn a_worker_ignoring_sigterm_is_killed_at_the_grace_deadline() {
    serially(async {
        let world = World::new().await;
        let chaos = world
            .host
            .spawn(spec("chaos").stop_grace(Duration::from_millis(300)))
            .await
            .unwrap();
        chaos.execute(fault("ignore_sigterm")).await.unwrap();
        let pid = chaos.pid();
        let started = Instant::now();
        chaos.shutdown().await;
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        assert!(process_state(pid).is_none());
        world.finish().await;
    })
}

#[test]
fn a_grandchild_is_killed_with_its_group_and_stop_does_not_hang() {
    serially(async {
        let mut world = World::new().await;
        let chaos = world.spawn("chaos").await;
        let out = chaos.execute(fault("fork")).await.unwrap();
        let grandchild = out["grandchild"].as_u64().unwrap() as u32;
        world.track(grandchild);
        assert!(process_state(grandchild).is_some());
        let started = Instant::now();
        chaos.shutdown().await;
        assert!(started.elapsed() < Duration::from_secs(3));
        assert!(
            eventually(Duration::from_secs(2), || process_state(grandchild)
                .is_none())
            .await
        );
        world.finish().await;
    })
}

#[test]
fn dropping_the_supervisor_without_shutdown_stops_the_worker() {
    serially(async {
        let mut world = World::new().await;
        let sup = world.supervise("chaos", fast()).await;
        let pid = sup.pid().unwrap();
        let clone = sup.clone();
        drop(sup);
        ok_call(&clone).await;
        drop(clone);
        assert!(eventually(Duration::from_secs(5), || process_state(pid).is_none()).await);
        world.finish().await;
    })
}

#[test]
fn calls_made_during_a_restart_wait_and_are_served_by_the_new_worker() {
    serially(async {
        let mut world = World::new().await;
        let config = SupervisorConfig {
            backoff: BackoffConfig {
                initial: Duration::from_millis(200),
                ..fast().backoff
            },
            ..fast()
        };
        let sup = world.supervise("chaos", config).await;
        let old = sup.pid().unwrap();
        kill(Pid::from_raw(old as i32), Signal::SIGKILL).unwrap();
        assert!(eventually(Duration::from_secs(2), || sup.state() != WorkerState::Ready).await);
        let calls = (0..8).map(|_| sup.execute(fault("none")));
        let results = futures_util::future::join_all(calls).await;
        for result in results {
            let out = result.expect("queued call served");
            assert_ne!(out["pid"], json!(old));
        }
        drop(sup);
        world.finish().await;
    })
}

#[test]
fn memory_above_the_rss_limit_recycles_between_calls_without_a_failed_call() {
    serially(async {
        let mut world = World::new().await;
        let mut events = world.host.events();
        let config = SupervisorConfig {
            rss_limit: Some(48 << 20),
            rss_interval: Duration::from_millis(20),
            ..fast()
        };
        let sup = world.supervise("chaos", config).await;
        let first = sup.pid();
        for _ in 0..12 {
            sup.execute(json!({"fault": "alloc", "mib": 8}))
                .await
                .expect("no call fails");
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        assert_ne!(sup.pid(), first, "the leaking worker was replaced");
        let mut recycled = 0;
        while let Ok(event) = events.try_recv() {
            recycled += matches!(event.kind, EventKind::Recycled { .. }) as u32;
            assert!(
                !matches!(event.kind, EventKind::Crashed { .. }),
                "{event:?}"
            );
        }
        assert!(recycled >= 1);
        drop(sup);
        world.finish().await;
    })
}

#[test]
fn recycle_after_n_calls_replaces_the_worker_without_failing_a_call() {
    serially(async {
        let mut world = World::new().await;
        let config = SupervisorConfig {
            recycle_after_calls: Some(5),
            ..fast()
        };
        let sup = world.supervise("chaos", config).await;
        let mut pids = Vec::new();
        for _ in 0..12 {
            let out = sup.execute(fault("none")).await.expect("no call fails");
            pids.push(out["pid"].as_u64().unwrap());
        }
        // Five calls per worker: 12 calls, three workers.
        assert_eq!(
            pids[0..5]
                .iter()
                .collect::<std::collections::BTreeSet<_>>()
                .len(),
            1,
            "{pids:?}"
        );
        assert_ne!(pids[4], pids[5], "{pids:?}");
        assert_ne!(pids[9], pids[10], "{pids:?}");
        assert_eq!(
            pids[5..10]
                .iter()
                .collect::<std::collections::BTreeSet<_>>()
                .len(),
            1,
            "{pids:?}"
        );
        drop(sup);
        world.finish().await;
    })
}

#[test]
fn a_hundred_workers_start_and_stop_concurrently_ten_times() {
    serially(async {
        let world = World::new().await;
        for round in 0..10 {
            let spawns = (0..100).map(|_| world.host.spawn(spec("echo")));
            let workers: Vec<_> = futures_util::future::join_all(spawns)
                .await
                .into_iter()
                .collect::<Result<_, _>>()
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
            let pids: Vec<u32> = workers.iter().map(|w| w.pid()).collect();
            futures_util::future::join_all(workers.into_iter().map(|w| w.shutdown())).await;
            for pid in pids {
                assert!(
                    process_state(pid).is_none(),
                    "round {round}: worker {pid} left behind"
                );
            }
        }
        world.finish().await;
    })
}

#[test]
fn restart_policy_never_leaves_a_crashed_worker_down() {
    serially(async {
        let mut world = World::new().await;
        let config = SupervisorConfig {
            restart: plugvisor_host::RestartPolicy::Never,
            ..fast()
        };
        let sup = world.supervise("chaos", config).await;
        let _ = sup.execute(fault("abort")).await;
        assert!(
            eventually(Duration::from_secs(2), || sup.state()
                == WorkerState::Stopped)
            .await
        );
        let err = sup.execute(fault("none")).await.unwrap_err();
        assert!(matches!(err, PluginError::Unavailable(_)));
        drop(sup);
        world.finish().await;
    })
}

#[test]
fn an_idempotent_plugin_is_retried_once_after_a_crash_others_are_not() {
    serially(async {
        let mut world = World::new().await;
        let scratch = tempfile::tempdir().unwrap();
        let marker = |name: &str| scratch.path().join(name).display().to_string();
        let (first, second) = (marker("a"), marker("b"));
        let at_most_once = world.supervise("chaos", fast()).await;
        let err = at_most_once
            .execute(json!({"fault": "crash_once", "marker": first}))
            .await
            .unwrap_err();
        assert!(
            matches!(err, PluginError::WorkerCrashed(_)),
            "not retried: {err:?}"
        );
        drop(at_most_once);

        let config = SupervisorConfig {
            idempotent: true,
            ..fast()
        };
        let idempotent = world.supervise("chaos", config).await;
        let out = idempotent
            .execute(json!({"fault": "crash_once", "marker": second}))
            .await
            .expect("retried on the restarted worker");
        assert_eq!(out["ok"], json!(true));
        assert_eq!(idempotent.restarts(), 1);
        drop(idempotent);
        world.finish().await;
    })
}

#[test]
fn hooks_and_the_event_stream_see_the_lifecycle() {
    serially(async {
        let mut world = World::new().await;
        let crashes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = std::sync::Arc::clone(&crashes);
        world.host.register_hook("plugin_crashed", move |event| {
            seen.lock().unwrap().push(event.clone());
        });
        let mut events = world.host.events();
        let sup = world.supervise("chaos", fast()).await;
        let _ = sup.execute(fault("abort")).await;
        ok_call(&sup).await;
        sup.shutdown().await;
        let names: Vec<&str> = std::iter::from_fn(|| events.try_recv().ok())
            .map(|e| e.kind.name())
            .collect();
        assert_eq!(
            names,
            [
                "started",
                "ready",
                "crashed",
                "restarting",
                "started",
                "ready",
                "stopped"
            ]
        );
        assert!(
            eventually(Duration::from_secs(2), || crashes.lock().unwrap().len()
                == 1)
            .await
        );
        let crash = crashes.lock().unwrap()[0].clone();
        let json = serde_json::to_value(&crash).unwrap();
        assert_eq!(json["event"], json!("crashed"));
        assert_eq!(json["plugin"], json!("chaos"));
        assert_eq!(json["report"]["cause"], json!("abort"));
        drop(sup);
        world.finish().await;
    })
}

#[test]
fn resource_limits_are_applied_before_exec() {
    serially(async {
        let mut world = World::new().await;
        let limits = plugvisor_host::ResourceLimits {
            open_files: Some(64),
            cpu_seconds: Some(1),
        };
        let sup = world
            .supervise_spec(spec("chaos").limits(limits), fast())
            .await;
        let pid = sup.pid().unwrap();
        let table = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
        let line = table
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .unwrap();
        assert_eq!(
            line.split_whitespace().collect::<Vec<_>>()[3..5],
            ["64", "64"]
        );
        let err = sup
            .execute(json!({"fault": "open_files", "n": 100}))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, PluginError::Failed(m) if m.contains("open")),
            "{err:?}"
        );
        let err = sup.execute(fault("spin")).await.unwrap_err();
        let PluginError::WorkerCrashed(report) = err else {
            panic!("{err:?}")
        };
        assert_eq!(report.cause, CrashCause::CpuLimit, "{report:?}");
        drop(sup);
        world.finish().await;
    })
}

/// DEFECTS #5: `initialize` waited for a call slot like a call, and after the queue timeout
/// failed with "no worker ready" although the worker was ready the whole time.
#[test]
fn control_operations_do_not_wait_for_call_slots() {
    serially(async {
        let mut world = World::new().await;
        let config = SupervisorConfig {
            max_concurrent: 1,
            queue_timeout: Duration::from_millis(500),
            ..fast()
        };
        let sup = world.supervise("chaos", config).await;
        let busy = sup.execute(json!({"fault": "sleep", "ms": 3000}));
        let others = async {
            // The sleeping call holds the only slot.
            let held = eventually(Duration::from_secs(5), || sup.in_flight() == 1).await;
            assert!(held, "the sleeping call is running");
            let started = Instant::now();
            let configured = sup.initialize(Some(json!({"api_key": "new"}))).await;
            assert!(configured.is_ok(), "{configured:?}");
            assert!(
                started.elapsed() < Duration::from_millis(500),
                "initialize waited {:?} for a call slot",
                started.elapsed()
            );
            let queued = sup.execute(fault("none")).await.unwrap_err();
            assert!(
                matches!(&queued, PluginError::Unavailable(m) if m.contains("call slot")),
                "{queued:?}"
            );
        };
        let (slept, ()) = tokio::join!(busy, others);
        assert!(slept.is_ok(), "{slept:?}");
        drop(sup);
        world.finish().await;
    })
}

/// DEFECTS #11: a worker that writes to stdout after its handshake (here a wrapper script
/// around echo-worker) was killed by SIGPIPE: the host closed the pipe after the handshake.
#[test]
fn a_worker_may_write_to_stdout_after_its_handshake() {
    serially(async {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("wrote-to-stdout");
        let wrapper = dir.path().join("chatty-worker");
        let echo = plugvisor_tests::bin("echo-worker");
        let body = format!(
            "#!/bin/bash\n\"{}\" \"$@\" <&0 &\nworker=$!\n\
             for i in 1 2 3 4 5; do sleep 0.2; echo \"garbage after the handshake $i\"; done\n\
             touch \"{}\"\nwait $worker\n",
            echo.display(),
            marker.display()
        );
        std::fs::write(&wrapper, body).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();

        let mut world = World::new().await;
        let spec = plugvisor_host::WorkerSpec::new(&wrapper)
            .start_timeout(Duration::from_secs(10))
            .stop_grace(Duration::from_secs(2));
        let sup = world.supervise_spec(spec, fast()).await;
        assert_eq!(sup.state(), WorkerState::Ready);
        let pid = sup.pid();
        let wrote = eventually(Duration::from_secs(5), || marker.exists()).await;
        assert!(wrote, "the wrapper died writing to its stdout");
        let out = sup.execute(json!("still here")).await.unwrap();
        assert_eq!(out, json!("still here"));
        assert_eq!((sup.pid(), sup.restarts()), (pid, 0));
        drop(sup);
        world.finish().await;
    })
}

/// A worker spawned with `posix_spawn` (`self_armed`: no step between fork and exec) gets the
/// host's pid, serves like any other, and its supervisor restarts it after a SIGKILL.
#[test]
fn a_self_armed_worker_is_spawned_without_a_pre_exec_step_and_serves() {
    serially(async {
        let mut world = World::new().await;
        let sup = world
            .supervise_spec(spec("chaos").self_armed(true), fast())
            .await;
        assert_eq!(sup.state(), WorkerState::Ready);
        let pid = sup.pid().expect("a pid");
        let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("its environment");
        let host = format!("PLUGVISOR_HOST_PID={}", std::process::id());
        assert!(
            environ.split(|b| *b == 0).any(|v| v == host.as_bytes()),
            "the worker was not told the host's pid"
        );
        let answer = sup.execute(json!({"fault": "none"})).await.expect("a call");
        assert_eq!(answer["pid"], pid);
        kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
        let back = eventually(Duration::from_secs(10), || {
            sup.pid().is_some_and(|p| p != pid) && sup.state() == WorkerState::Ready
        })
        .await;
        assert!(back, "restarted");
        drop(sup);
        world.finish().await;
    });
}
