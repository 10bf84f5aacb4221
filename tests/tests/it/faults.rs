//! Crashes, cancellation and cleanup: what happens when workers die or callers walk away.

use futures_util::StreamExt;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use plugvisor_host::{Plugin, PluginError};
use plugvisor_proto::{json, ExitReason};
use plugvisor_tests::{eventually, process_state, serially, World};
use std::time::{Duration, Instant};

fn sigkill(pid: u32) {
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
}

/// Polls the worker's in-flight count until it is 0 or `limit` passes; returns the last count.
async fn in_flight_after(plugin: &plugvisor_host::RemotePlugin, limit: Duration) -> u64 {
    let deadline = Instant::now() + limit;
    loop {
        let in_flight = plugin.health().await.unwrap().in_flight;
        if in_flight == 0 || Instant::now() > deadline {
            return in_flight;
        }
    }
}

#[test]
fn dropping_a_stream_after_one_chunk_stops_the_producer() {
    serially(async {
        let mut world = World::new().await;
        let ticker = world.spawn("ticker").await;
        let mut stream = ticker
            .execute_stream(json!({"n": 1_000_000_000u64, "bytes": 16, "interval_ms": 5}))
            .await
            .unwrap();
        stream.next().await.unwrap().unwrap();
        assert_eq!(ticker.health().await.unwrap().in_flight, 1);
        drop(stream);
        let in_flight = in_flight_after(&ticker, Duration::from_secs(2)).await;
        assert_eq!(
            in_flight, 0,
            "the worker is still producing after the stream was dropped"
        );
        drop(ticker);
        world.finish().await;
    })
}

#[test]
fn dropping_a_call_future_cancels_it_in_the_worker() {
    serially(async {
        let mut world = World::new().await;
        let ticker = world.spawn("ticker").await;
        let slow = ticker.execute(json!({"n": 1000, "interval_ms": 10}));
        let timed_out = tokio::time::timeout(Duration::from_millis(100), slow).await;
        assert!(timed_out.is_err(), "the slow call should still be running");
        let in_flight = in_flight_after(&ticker, Duration::from_secs(2)).await;
        assert_eq!(
            in_flight, 0,
            "the call kept running after its future was dropped"
        );
        drop(ticker);
        world.finish().await;
    })
}

#[test]
fn sigkill_mid_call_gives_worker_crashed_within_a_second() {
    serially(async {
        let mut world = World::new().await;
        let ticker = world.spawn("ticker").await;
        let pid = ticker.pid();
        let call = ticker.execute(json!({"n": 1000, "interval_ms": 10}));
        let killer = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            sigkill(pid);
            Instant::now()
        };
        let (result, killed_at) = tokio::join!(call, killer);
        let elapsed = killed_at.elapsed();
        let Err(PluginError::WorkerCrashed(report)) = result else {
            panic!("expected WorkerCrashed, got {result:?}");
        };
        assert!(elapsed < Duration::from_secs(1), "took {elapsed:?}");
        assert_eq!(report.pid, pid);
        assert!(
            matches!(&report.exit, ExitReason::Signal { number: 9, name, .. } if name == "SIGKILL"),
            "{report:?}"
        );
        // The host is fine and says so: later calls get the same typed error, never a hang.
        let again = ticker.execute(json!({"n": 1})).await;
        assert!(
            matches!(again, Err(PluginError::WorkerCrashed(_))),
            "{again:?}"
        );
        drop(ticker);
        world.finish().await;
    })
}

#[test]
fn sigkill_mid_stream_is_an_error_not_a_clean_end() {
    serially(async {
        let mut world = World::new().await;
        let ticker = world.spawn("ticker").await;
        let mut stream = ticker
            .execute_stream(json!({"n": 1_000_000_000u64, "bytes": 16, "interval_ms": 1}))
            .await
            .unwrap();
        stream.next().await.unwrap().unwrap();
        sigkill(ticker.pid());
        let mut last = None;
        while let Some(item) = stream.next().await {
            last = Some(item);
        }
        let Some(Err(PluginError::WorkerCrashed(report))) = last else {
            panic!("the stream must end with WorkerCrashed, ended with {last:?}");
        };
        assert!(matches!(report.exit, ExitReason::Signal { number: 9, .. }));
        drop((stream, ticker));
        world.finish().await;
    })
}

#[test]
fn a_crash_report_carries_the_stderr_tail() {
    serially(async {
        let mut world = World::new().await;
        let echo = world.spawn("echo").await;
        sigkill(echo.pid());
        let err = echo.execute(json!("x")).await.unwrap_err();
        let PluginError::WorkerCrashed(report) = err else {
            panic!("{err:?}")
        };
        // The worker logs its start to stderr; the tail keeps it.
        assert!(!report.stderr_tail.is_empty(), "{report:?}");
        drop(echo);
        world.finish().await;
    })
}

#[test]
fn dropping_the_host_stops_its_workers() {
    serially(async {
        let mut world = World::new().await;
        let echo = world.spawn("echo").await;
        let ticker = world.spawn("ticker").await;
        let pids = [echo.pid(), ticker.pid()];
        // Drop the proxies and the host without any explicit shutdown.
        drop((echo, ticker));
        let stopped = eventually(Duration::from_secs(5), || {
            pids.iter().all(|&p| process_state(p).is_none())
        })
        .await;
        assert!(
            stopped,
            "workers still alive after their proxies were dropped"
        );
        world.finish().await;
    })
}

#[test]
fn dropping_the_host_with_proxies_alive_stops_workers_and_calls_fail_cleanly() {
    serially(async {
        let base = tempfile::tempdir().unwrap();
        let host = plugvisor_host::Host::with_config(plugvisor_host::HostConfig {
            base_dir: Some(base.path().to_path_buf()),
        })
        .unwrap();
        let echo = host.spawn(plugvisor_tests::spec("echo")).await.unwrap();
        let pid = echo.pid();
        drop(host);
        assert!(eventually(Duration::from_secs(5), || process_state(pid).is_none()).await);
        let err = echo.execute(json!("x")).await.unwrap_err();
        assert!(matches!(err, PluginError::Unavailable(_)), "{err:?}");
        drop(echo);
        let clean = eventually(Duration::from_secs(3), || {
            plugvisor_tests::files_under(base.path()).is_empty()
        })
        .await;
        assert!(
            clean,
            "left: {:?}",
            plugvisor_tests::files_under(base.path())
        );
    })
}

#[test]
fn a_worker_that_is_not_a_worker_fails_to_start_cleanly() {
    serially(async {
        let base = tempfile::tempdir().unwrap();
        let host = plugvisor_host::Host::with_config(plugvisor_host::HostConfig {
            base_dir: Some(base.path().to_path_buf()),
        })
        .unwrap();
        // `true` exits at once without a handshake.
        let err = host
            .spawn(plugvisor_host::WorkerSpec::new("/bin/true"))
            .await
            .unwrap_err();
        assert!(
            matches!(err, plugvisor_host::HostError::ExitedEarly { .. }),
            "{err}"
        );
        // `sleep` never prints a handshake: the start timeout kills it.
        let started = Instant::now();
        let err = host
            .spawn(
                plugvisor_host::WorkerSpec::new("/bin/sh")
                    .arg("-c")
                    .arg("sleep 30")
                    .start_timeout(Duration::from_millis(300)),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, plugvisor_host::HostError::StartTimeout { .. }),
            "{err}"
        );
        assert!(started.elapsed() < Duration::from_secs(3));
        // A program that prints something else is incompatible.
        let err = host
            .spawn(plugvisor_host::WorkerSpec::new("/bin/echo").arg("hello"))
            .await
            .unwrap_err();
        assert!(
            matches!(err, plugvisor_host::HostError::Incompatible { .. }),
            "{err}"
        );
        let missing = host
            .spawn(plugvisor_host::WorkerSpec::new("/nonexistent/worker"))
            .await;
        assert!(matches!(
            missing,
            Err(plugvisor_host::HostError::Spawn { .. })
        ));
        host.shutdown().await;
        assert!(plugvisor_tests::files_under(base.path()).is_empty());
    })
}
