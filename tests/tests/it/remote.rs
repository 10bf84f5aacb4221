//! Remote workers (issue 13): workers started elsewhere (`--listen tcp://…` with TLS, no host
//! pipe) that the host attaches to. A call goes over TLS with the token; a lost worker fails
//! its call as `worker_crashed` with what the host can know (no local exit status), later calls
//! fail fast while it is away, and it is re-admitted when it is back; the host never stops a
//! worker it did not start. TLS refuses a worker signed by another CA and, under mutual TLS, a
//! host without a client certificate (each with the positive control beside it).

use crate::api::{info_until, load_plugins, manifest, Api};
use crate::pools::ready_pids;
use plugvisor_host::{
    Attach, BackoffConfig, HealthConfig, Plugin, PluginError, SupervisorConfig, TlsClient,
    WorkerSpec, WorkerState,
};
use plugvisor_manager::api::ApiOptions;
use plugvisor_proto::{CrashCause, ExitReason};
use plugvisor_tests::remote::{pattern_file, private_dirs_of, Certs, RemoteWorker};
use plugvisor_tests::{serially, World};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Duration;

/// How the manager supervises a remote replica, with shorter waits for the test.
fn remote_config() -> SupervisorConfig {
    SupervisorConfig {
        backoff: BackoffConfig {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(200),
            ..BackoffConfig::default()
        },
        max_restarts: u32::MAX,
        health: Some(HealthConfig {
            interval: Duration::from_millis(200),
            timeout: Duration::from_millis(500),
            failures: 2,
        }),
        wait_while_down: false,
        ..SupervisorConfig::default()
    }
}

fn attach(worker: &RemoteWorker, certs: &Certs, client: bool) -> WorkerSpec {
    let pair = (certs.file("client.crt"), certs.file("client.key"));
    let client = client.then_some((pair.0.as_path(), pair.1.as_path()));
    let tls = TlsClient::from_pem_files(&certs.file("ca.crt"), client, "localhost").unwrap();
    let attach = Attach::parse(&worker.url(), certs.token())
        .unwrap()
        .with_tls(tls);
    WorkerSpec::attach(attach).name("remote-chaos")
}

fn sleep(ms: u64) -> Value {
    json!({"fault": "sleep", "ms": ms})
}

#[test]
fn a_lost_remote_worker_fails_fast_and_is_readmitted_and_never_stopped_by_the_host() {
    serially(async {
        let dir = tempfile::tempdir().unwrap();
        let certs = Certs::make(dir.path(), &[]);
        let mut worker = RemoteWorker::start("chaos", &certs, "127.0.0.1:0", &[]);
        let mut world = World::new().await;
        let sup = world
            .supervise_spec(attach(&worker, &certs, false), remote_config())
            .await;
        assert_eq!(sup.state(), WorkerState::Ready);
        let answer = sup.execute(sleep(1)).await.unwrap();
        assert_eq!(
            answer["pid"], worker.pid,
            "the call ran in the remote worker"
        );

        // Lost mid-call: the call fails as a crash whose report says what the host knows.
        let call = sup.execute(sleep(2_000));
        let kill = async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            worker.kill();
        };
        let (failed, ()) = tokio::join!(call, kill);
        let Err(PluginError::WorkerCrashed(report)) = failed else {
            panic!("expected a crash, got {failed:?}");
        };
        assert_eq!(report.cause, CrashCause::ConnectionLost, "{report}");
        let ExitReason::Disconnected(what) = &report.exit else {
            panic!("no local exit status for a remote worker: {report}");
        };
        assert!(what.contains("remote worker at https://"), "{what}");
        assert!(report.stderr_tail.is_empty(), "{report:?}");

        // While it is away, calls fail at once (they do not wait out the 30 s queue timeout).
        let away = tokio::time::timeout(Duration::from_secs(5), sup.execute(sleep(1)))
            .await
            .expect("no waiting while the worker is away");
        assert!(matches!(away, Err(PluginError::Unavailable(_))), "{away:?}");

        // Back on the same port: re-admitted, and calls reach the new process.
        let port = worker.port;
        let mut back = RemoteWorker::start("chaos", &certs, &format!("127.0.0.1:{port}"), &[]);
        assert!(sup.wait_ready(Duration::from_secs(10)).await == WorkerState::Ready);
        let answer = sup.execute(sleep(1)).await.unwrap();
        assert_eq!(answer["pid"], back.pid, "{answer}");

        // The host shuts down; the worker it did not start keeps running.
        world.host.stop_all().await;
        assert!(back.is_running(), "the host must not stop a remote worker");
        back.kill();
        drop(sup);
        world.finish().await;
        assert!(private_dirs_of(back.pid).is_empty() && private_dirs_of(worker.pid).is_empty());
    });
}

#[test]
fn tls_refuses_another_ca_and_mutual_tls_refuses_a_host_without_a_certificate() {
    serially(async {
        let (one, other) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let certs = Certs::make(one.path(), &[]);
        let stranger = Certs::make(other.path(), &[]);
        let client_ca = certs.file("ca.crt");
        let ca_arg = client_ca.to_str().unwrap();
        let worker =
            RemoteWorker::start("chaos", &certs, "127.0.0.1:0", &["--tls-client-ca", ca_arg]);
        let world = World::new().await;

        // The positive control: the right CA and a client certificate: served.
        let good = world.host.spawn(attach(&worker, &certs, true)).await;
        let good = good.expect("attach with the right CA and a client certificate");
        assert_eq!(good.execute(sleep(1)).await.unwrap()["pid"], worker.pid);
        // Its process is on another machine as far as the host knows: no memory figure.
        assert_eq!(good.resident_bytes(), None);

        // No client certificate: the worker refuses the handshake.
        let anonymous = world.host.spawn(attach(&worker, &certs, false)).await;
        let err = anonymous.expect_err("mutual TLS needs a client certificate");
        let chain = plugvisor_host::error_chain(&err).to_lowercase();
        assert!(chain.contains("certificate"), "{chain}");

        // A CA that did not sign the worker's certificate: the host refuses the worker.
        let tls = TlsClient::from_pem_files(
            &stranger.file("ca.crt"),
            Some((&certs.file("client.crt"), &certs.file("client.key"))),
            "localhost",
        )
        .unwrap();
        let spec = WorkerSpec::attach(
            Attach::parse(&worker.url(), certs.token())
                .unwrap()
                .with_tls(tls),
        );
        let err = world.host.spawn(spec).await.expect_err("another CA");
        let chain = plugvisor_host::error_chain(&err);
        assert!(chain.contains("certificate"), "{chain}");

        // The right TLS but a wrong token: 401, so no attach.
        let tls = TlsClient::from_pem_files(
            &certs.file("ca.crt"),
            Some((&certs.file("client.crt"), &certs.file("client.key"))),
            "localhost",
        )
        .unwrap();
        let wrong = Attach::parse(&worker.url(), "not-the-token")
            .unwrap()
            .with_tls(tls);
        let err = world
            .host
            .spawn(WorkerSpec::attach(wrong))
            .await
            .expect_err("a wrong token");
        assert!(
            plugvisor_host::error_chain(&err).contains("unauthorized"),
            "{err:?}"
        );

        drop(good);
        world.finish().await;
        let pid = worker.pid;
        drop(worker);
        assert!(private_dirs_of(pid).is_empty(), "left behind");
    });
}

#[test]
fn a_pool_mixes_a_local_replica_and_a_remote_one_from_a_manifest() {
    serially(async {
        let dir = tempfile::tempdir().unwrap();
        let certs = Certs::make(dir.path(), &[]);
        let worker = RemoteWorker::start("chaos", &certs, "127.0.0.1:0", &[]);
        let extra = format!(
            "attach = \"{}\"\ntoken_file = \"{}\"\ntls_ca = \"{}\"\n",
            worker.url(),
            certs.file("token").display(),
            certs.file("ca.crt").display()
        );
        let api = Api::start(&[manifest("mixed", "chaos", &extra)], ApiOptions::default()).await;
        let c = &api.client;
        load_plugins(c, &["mixed"]).await;
        let info = info_until(c, "mixed", |i| ready_pids(i).is_some_and(|p| p.len() == 2)).await;
        let pids = ready_pids(&info).unwrap();
        assert!(pids.contains(&u64::from(worker.pid)), "{info}");
        // The remote replica says where it is; the local one has no address.
        let addresses: Vec<&Value> = info["workers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| &w["address"])
            .collect();
        let remote = format!("https://127.0.0.1:{}", worker.port);
        assert_eq!(addresses, [&Value::Null, &json!(remote)], "{info}");

        // Two calls at once take one replica each: the local one and the remote one.
        let body = json!({"plugin_id": "mixed", "input": sleep(300)});
        let calls = (0..2).map(|_| c.post("/api/plugins/execute", &body));
        let answers = futures_util::future::join_all(calls).await;
        let served: BTreeSet<u64> = answers
            .iter()
            .map(|a| a.json()["output"]["pid"].as_u64().expect("a pid"))
            .collect();
        assert_eq!(served, pids, "{answers:?}");
        api.finish().await;
        let pid = worker.pid;
        drop(worker);
        assert!(private_dirs_of(pid).is_empty(), "left behind");
    });
}

#[test]
fn files_travel_to_and_from_a_remote_worker_that_shares_no_filesystem() {
    serially(async {
        let dir = tempfile::tempdir().unwrap();
        let certs = Certs::make(dir.path(), &[]);
        let worker = RemoteWorker::start("files", &certs, "127.0.0.1:0", &[]);
        let mut world = World::new().await;
        let sup = world
            .supervise_spec(attach(&worker, &certs, false), remote_config())
            .await;
        let input = dir.path().join("input.bin");
        let sha = pattern_file(&input, 8);
        let size = std::fs::metadata(&input).unwrap().len();
        let file = json!({"$file": {"path": input, "size": size}});

        // In: streamed to the worker, hashed there to the same digest.
        let hashed = sup
            .execute(json!({"op": "sha256", "file": file}))
            .await
            .unwrap();
        assert_eq!(hashed["sha256"], sha, "{hashed}");
        assert_eq!(hashed["size"], size);
        // The worker's copy is its own, content-addressed, outside anything the host has.
        let its_dir = std::fs::read_dir(std::env::temp_dir())
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| {
                p.to_string_lossy()
                    .contains(&format!("plugvisor-worker-{}-", worker.pid))
            })
            .expect("the remote worker's private transfer directory");
        let cas = its_dir.join("cas").join(&sha);
        assert_eq!(std::fs::metadata(&cas).unwrap().len(), size);
        // Sent again (streamed again: the file changed too recently for the host to remember
        // its digest), the worker keeps the copy it holds: the same inode, marked used now.
        use std::os::unix::fs::MetadataExt;
        let before = std::fs::metadata(&cas).unwrap();
        sup.execute(json!({"op": "sha256", "file": file}))
            .await
            .unwrap();
        let after = std::fs::metadata(&cas).unwrap();
        assert_eq!(after.ino(), before.ino());
        assert!(after.modified().unwrap() >= before.modified().unwrap());

        // Out: the gzip the worker writes comes back as a file of the host's, and is removed
        // on the worker.
        let out = sup
            .call_with(json!({"op": "gzip", "file": file}), Default::default())
            .await
            .unwrap();
        let local = out
            .files
            .first()
            .and_then(|f| f.path())
            .expect("an output file")
            .to_path_buf();
        assert!(local.starts_with(world.host.dir()), "{}", local.display());
        let mut unzipped = Vec::new();
        let gz = std::fs::File::open(&local).unwrap();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(gz), &mut unzipped).unwrap();
        assert_eq!(unzipped.len() as u64, size);
        let remote_out = out.value["file"]["$file"]["path"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(
            remote_out.starts_with(&*world.host.dir().to_string_lossy()),
            "{remote_out}"
        );
        let left: Vec<_> = std::fs::read_dir(&its_dir)
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with("out-"))
            .collect();
        assert!(
            left.is_empty(),
            "the worker's output copy is removed: {left:?}"
        );
        drop(out);

        // The same inside a stream: each item's output file travels back before the item is
        // handed on, and the worker's copy is removed.
        let mut items = sup
            .stream_outputs_ref(&json!({"op": "gzip", "file": file}))
            .await
            .unwrap();
        let item = futures_util::StreamExt::next(&mut items)
            .await
            .expect("one item")
            .unwrap();
        let streamed = item.files.first().and_then(|f| f.path()).expect("a file");
        assert!(
            streamed.starts_with(world.host.dir()),
            "{}",
            streamed.display()
        );
        let gz = std::fs::File::open(streamed).unwrap();
        let mut unzipped = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(gz), &mut unzipped).unwrap();
        assert_eq!(unzipped.len() as u64, size);
        let left = std::fs::read_dir(&its_dir)
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with("out-"))
            .count();
        assert_eq!(left, 0, "the worker's streamed output copy is removed");
        drop(item);
        drop(items);

        drop(sup);
        world.finish().await;
        let mut worker = worker;
        assert!(worker.terminate().success(), "it exits 0 on SIGTERM");
        assert!(
            !its_dir.exists(),
            "the worker removes its private directory when it stops"
        );
    });
}

/// A remote worker whose TLS files are bad stops before it listens, naming them, and leaves
/// no private transfer directory behind (the control: with the right key it makes one).
#[test]
fn a_remote_worker_with_a_bad_key_exits_leaving_no_private_directory() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let certs = Certs::make(dir.path(), &["localhost"]);
    let run = |key: std::path::PathBuf| {
        std::process::Command::new(plugvisor_tests::bin("echo-worker"))
            .args(["--listen", "tcp://127.0.0.1:0", "--tls-cert"])
            .arg(certs.file("tls.crt"))
            .arg("--tls-key")
            .arg(key)
            .arg("--token-file")
            .arg(certs.file("token"))
            .env_remove("PLUGVISOR_WATCH_STDIN")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("the worker starts")
    };

    let bad = run(certs.file("ca.crt")); // a certificate, not a key
    let pid = bad.id();
    let out = bad.wait_with_output().expect("it exits");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("TLS"), "{stderr}");
    assert!(
        private_dirs_of(pid).is_empty(),
        "{:?}",
        private_dirs_of(pid)
    );

    let mut good = run(certs.file("tls.key"));
    let line = plugvisor_tests::remote::handshake(&mut good);
    assert!(line.contains("tcp"), "{line}");
    assert_eq!(private_dirs_of(good.id()).len(), 1, "the control makes one");
    let pid = nix::unistd::Pid::from_raw(good.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    assert!(good.wait().expect("it exits").success());
    assert!(private_dirs_of(good.id()).is_empty(), "removed on SIGTERM");
}

/// Two hosts attach to one remote worker at once, each with the token: their calls run side
/// by side, one host going away leaves the worker serving the other, and a host with a wrong
/// token is refused (the control: the same worker serves the right one).
#[test]
fn several_hosts_share_one_remote_worker() {
    serially(async {
        let dir = tempfile::tempdir().unwrap();
        let certs = Certs::make(dir.path(), &[]);
        let mut worker = RemoteWorker::start("chaos", &certs, "127.0.0.1:0", &[]);
        // The second host is the audited world, made first: its audit at the end (no
        // descriptor, process or file left) covers the first host too, which is gone by then.
        let mut second = World::new().await;
        let first_base = tempfile::tempdir().unwrap();
        let first = plugvisor_host::Host::with_config(plugvisor_host::HostConfig {
            base_dir: Some(first_base.path().to_path_buf()),
        })
        .unwrap();
        let a = first.supervise(attach(&worker, &certs, false), remote_config());
        assert_eq!(
            a.wait_ready(Duration::from_secs(10)).await,
            WorkerState::Ready
        );
        let b = second
            .supervise_spec(attach(&worker, &certs, false), remote_config())
            .await;
        let calls = |sup: &plugvisor_host::Supervisor| {
            let sup = sup.clone();
            async move {
                let mut pids = BTreeSet::new();
                for _ in 0..40 {
                    let answer = sup.execute(sleep(2)).await.expect("a call");
                    pids.insert(answer["pid"].as_u64().expect("a pid"));
                }
                pids
            }
        };
        let (from_a, from_b) = tokio::join!(calls(&a), calls(&b));
        let one = BTreeSet::from([u64::from(worker.pid)]);
        assert_eq!(
            (&from_a, &from_b),
            (&one, &one),
            "both reached the one worker"
        );

        // The first host goes; the worker serves the second as before.
        drop(a);
        first.shutdown().await;
        let left = plugvisor_tests::files_under(first_base.path());
        assert!(left.is_empty(), "the first host left {left:?}");
        assert!(
            worker.is_running(),
            "a host leaving does not stop a shared worker"
        );
        let answer = b
            .execute(sleep(1))
            .await
            .expect("the second host still calls");
        assert_eq!(answer["pid"], worker.pid);

        // A host with another token is turned away at the first request.
        let tls = TlsClient::from_pem_files(&certs.file("ca.crt"), None, "localhost").unwrap();
        let wrong = Attach::parse(&worker.url(), "not-the-token")
            .unwrap()
            .with_tls(tls);
        let refused = second
            .host
            .spawn(WorkerSpec::attach(wrong).name("intruder"))
            .await;
        assert!(refused.is_err(), "a wrong token must be refused");

        drop(b);
        second.finish().await;
        assert!(worker.terminate().success(), "it exits 0 on SIGTERM");
        assert!(private_dirs_of(worker.pid).is_empty());
    });
}
