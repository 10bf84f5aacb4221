//! Calls through `RemotePlugin` to real worker processes: unary, re-configure, streams, files.

use futures_util::StreamExt;
use plugvisor_host::{Plugin, PluginError};
use plugvisor_proto::{json, FileRef, Value};
use plugvisor_tests::{serially, World};
use sha2::{Digest, Sha256};
use std::io::Write;

#[test]
fn unary_call_is_answered_by_the_worker_process() {
    serially(async {
        let mut world = World::new().await;
        let echo = world.spawn("echo").await;
        assert_eq!(echo.name(), "echo");
        assert!(!echo.version().is_empty());
        assert_ne!(echo.pid(), std::process::id());
        let out = echo.execute(json!({"a": ["hi", 1]})).await.unwrap();
        assert_eq!(out, json!({"a": ["hi", 1]}));
        // Its memory is the worker process's (the idle worker's does not move by a MiB).
        let rss = echo.resident_bytes().expect("a local worker's RSS");
        let statm = std::fs::read_to_string(format!("/proc/{}/statm", echo.pid())).unwrap();
        let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
        assert!(
            rss > 1 << 20 && rss.abs_diff(pages * 4096) < 1 << 20,
            "{rss} {statm}"
        );
        drop(echo);
        world.finish().await;
    })
}

#[test]
fn reinitialize_changes_behaviour_and_bad_config_keeps_the_old_one() {
    serially(async {
        let mut world = World::new().await;
        let echo = world.spawn("echo").await;
        echo.initialize(Some(json!({"mode": "upper", "prefix": "> "})))
            .await
            .unwrap();
        assert_eq!(echo.execute(json!("hi")).await.unwrap(), json!("> HI"));
        // Missing keys take their defaults: the prefix goes back to "".
        echo.initialize(Some(json!({"mode": "lower"})))
            .await
            .unwrap();
        assert_eq!(echo.execute(json!("Hi")).await.unwrap(), json!("hi"));
        let err = echo
            .initialize(Some(json!({"mode": "shout"})))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, PluginError::InvalidConfig(m) if m.contains("mode")),
            "{err:?}"
        );
        assert_eq!(
            echo.execute(json!("Hi")).await.unwrap(),
            json!("hi"),
            "old config kept"
        );
        assert_eq!(echo.fetch_config().await.unwrap()["mode"], json!("lower"));
        assert_eq!(
            echo.config_schema()["properties"]["mode"]["default"],
            json!("identity")
        );
        drop(echo);
        world.finish().await;
    })
}

#[test]
fn stream_of_10000_chunks_arrives_complete_and_in_order() {
    serially(async {
        let mut world = World::new().await;
        let echo = world.spawn("echo").await;
        let words: Vec<String> = (0..10_000).map(|i| format!("w{i}")).collect();
        let stream = echo.execute_stream(json!(words.join(" "))).await.unwrap();
        let got: Vec<Value> = stream.map(|item| item.unwrap()).collect().await;
        let expected: Vec<Value> = words.into_iter().map(Value::from).collect();
        assert_eq!(got, expected);

        let ticker = world.spawn("ticker").await;
        let mut stream = ticker
            .execute_stream(json!({"n": 10_000, "bytes": 16}))
            .await
            .unwrap();
        let mut count = 0;
        while let Some(item) = stream.next().await {
            assert_eq!(item.unwrap().as_str().map(str::len), Some(16));
            count += 1;
        }
        assert_eq!(count, 10_000);
        drop((echo, ticker, stream));
        world.finish().await;
    })
}

#[test]
fn nested_file_refs_travel_in_and_out() {
    serially(async {
        let mut world = World::new().await;
        let echo = world.spawn("echo").await;
        let files = world.spawn("files").await;
        let scratch = tempfile::tempdir().unwrap();
        let src = scratch.path().join("input.txt");
        std::fs::write(&src, b"hello hello hello hello").unwrap();

        // In: a ref three levels deep is staged into the worker's transfer dir and read there.
        let input = json!({"a": [{"b": {"c": FileRef::new(&src, 0)}}]});
        let out = echo.execute(input).await.unwrap();
        let back = FileRef::from_value(&out["a"][0]["b"]["c"])
            .unwrap()
            .unwrap();
        assert!(back.path.starts_with(echo.transfer_dir()), "{back:?}");
        assert_eq!(back.size, 23);
        assert!(
            !back.path.exists(),
            "the staged input is removed when the call ends"
        );

        // Out: gzip returns a FileRef the caller owns.
        let out = files
            .call(json!({"op": "gzip", "file": FileRef::new(&src, 0)}))
            .await
            .unwrap();
        let gz = FileRef::from_value(&out.value["file"]).unwrap().unwrap();
        assert!(gz.path.starts_with(files.transfer_dir()));
        assert_eq!(out.files.len(), 1);
        let kept = out
            .files
            .into_iter()
            .next()
            .unwrap()
            .persist(scratch.path().join("x.gz"))
            .unwrap();
        let mut plain = String::new();
        std::io::Read::read_to_string(&mut flate_reader(&kept), &mut plain).unwrap();
        assert_eq!(plain, "hello hello hello hello");
        assert!(
            !gz.path.exists(),
            "persist moved it out of the transfer dir"
        );
        assert!(src.exists(), "the caller's own file is untouched");
        drop((echo, files));
        world.finish().await;
    })
}

fn flate_reader(path: &std::path::Path) -> impl std::io::Read {
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap())
}

#[test]
fn sha256_of_a_64_mib_file_matches_sha256sum() {
    serially(async {
        let mut world = World::new().await;
        let files = world.spawn("files").await;
        let scratch = tempfile::tempdir().unwrap();
        let path = scratch.path().join("big.bin");
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        let block: Vec<u8> = (0..1u32 << 20)
            .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
            .collect();
        for _ in 0..64 {
            f.write_all(&block).unwrap();
        }
        f.flush().unwrap();
        drop(f);
        let out = files
            .execute(json!({"op": "sha256", "file": FileRef::new(&path, 0)}))
            .await
            .unwrap();
        let sha256sum = std::process::Command::new("sha256sum")
            .arg(&path)
            .output()
            .unwrap();
        let expected = String::from_utf8(sha256sum.stdout).unwrap();
        let expected = expected.split_whitespace().next().unwrap();
        assert_eq!(out["sha256"], json!(expected));
        assert_eq!(out["size"], json!(64u64 << 20));
        let in_process = format!("{:x}", Sha256::digest(std::fs::read(&path).unwrap()));
        assert_eq!(in_process, expected);
        drop(files);
        world.finish().await;
    })
}

#[test]
fn a_missing_input_file_is_invalid_input_and_nothing_is_called() {
    serially(async {
        let mut world = World::new().await;
        let files = world.spawn("files").await;
        let err = files
            .execute(json!({"op": "sha256", "file": FileRef::new("/nonexistent/file.bin", 1)}))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, PluginError::InvalidInput(m) if m.contains("/nonexistent/file.bin")),
            "{err:?}"
        );
        let health = files.health().await.unwrap();
        assert_eq!(health.calls_total, 0, "the worker never saw the call");
        drop(files);
        world.finish().await;
    })
}

#[test]
fn plugin_errors_keep_their_kind() {
    serially(async {
        let mut world = World::new().await;
        let files = world.spawn("files").await;
        let err = files.execute(json!({"op": "nope"})).await.unwrap_err();
        assert!(matches!(err, PluginError::InvalidInput(_)), "{err:?}");
        assert!(err.is_caller_error());
        drop(files);
        world.finish().await;
    })
}

#[test]
fn a_streams_output_files_belong_to_its_items() {
    serially(async {
        let mut world = World::new().await;
        let files = world.spawn("files").await;
        let input = world.base.path().join("streamed.txt");
        std::fs::write(&input, vec![b'z'; 50_000]).unwrap();
        let file = FileRef::new(&input, 50_000);
        let mut items = files
            .stream(json!({"op": "gzip", "file": file}))
            .await
            .unwrap();
        let item = items.next().await.unwrap().unwrap();
        assert!(items.next().await.is_none(), "one item");
        assert_eq!(item.files.len(), 1, "{:?}", item.value);
        let path = item.files[0].path().unwrap().to_path_buf();
        assert!(path.exists());
        // Dropped with its item, as a call's output is.
        drop(item);
        assert!(!path.exists(), "{path:?} outlived its item");
        std::fs::remove_file(&input).unwrap();
        drop((items, files));
        world.finish().await;
    })
}

#[test]
fn a_route_the_caller_gives_up_on_is_cancelled_in_the_worker() {
    serially(async {
        let mut world = World::new().await;
        let chaos = world.spawn("chaos").await;
        let request = || {
            http::Request::get("/fault/hang")
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap()
        };
        // While the route hangs, the worker counts it.
        let mut hung = Box::pin(chaos.route(request()));
        let during = tokio::select! {
            answer = &mut hung => panic!("the hung route answered: {:?}", answer.map(|a| a.status())),
            in_flight = async {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                chaos.health().await.unwrap().in_flight
            } => in_flight,
        };
        assert_eq!(during, 1, "the route is running in the worker");
        drop(hung);
        // Given up on (the future dropped), it is dropped in the worker too.
        let mut in_flight = u64::MAX;
        for _ in 0..100 {
            in_flight = chaos.health().await.unwrap().in_flight;
            if in_flight == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(in_flight, 0, "the hung route still runs in the worker");
        // And the worker serves the next route.
        let ok = http::Request::get("/fault/none")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        assert_eq!(chaos.route(ok).await.unwrap().status(), 200);
        drop(chaos);
        world.finish().await;
    })
}
