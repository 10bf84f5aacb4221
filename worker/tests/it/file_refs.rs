//! File references through a real server: only regular files inside the transfer directory
//! reach the plugin. One test function, the only one in this binary that serves with a
//! transfer directory: `files::open` and `files::create_output` use a process-global one, and
//! the first server that has one installs it for the whole process.

use crate::common::{error_kind, TestServer};
use http::StatusCode;
use plugvisor_proto::{json, FileRef, Value};
use std::path::Path;
use std::sync::atomic::Ordering;

async fn read_through(server: &TestServer, path: &Path) -> (StatusCode, Value) {
    let input = json!({"input": {"read": FileRef::new(path, 0).to_value()}});
    server.call("POST", "/v1/execute", &input.to_string()).await
}

async fn assert_refused(server: &TestServer, path: &Path, why: &str) {
    let (status, value) = read_through(server, path).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{}: {value}", path.display());
    assert_eq!(error_kind(&value), "file_access_denied");
    let message = value["error"]["message"].as_str().unwrap();
    assert!(message.contains(&*path.to_string_lossy()), "{message}");
    assert!(message.contains(why), "{message} should say {why:?}");
}

#[tokio::test]
async fn file_references_are_checked_before_the_plugin_runs() {
    let server = TestServer::start_with_transfer_dir().await;
    let t = &server.transfer;
    std::fs::write(t.join("in.txt"), "hello file").unwrap();
    let (status, value) = read_through(&server, &t.join("in.txt")).await;
    assert_eq!(
        (status, value),
        (StatusCode::OK, json!({"output": {"text": "hello file"}}))
    );
    assert_eq!(server.plugin.calls.load(Ordering::SeqCst), 1);

    let outside = server.dir.path().join("outside.txt");
    std::fs::write(&outside, "secret").unwrap();
    std::os::unix::fs::symlink(&outside, t.join("link.txt")).unwrap();
    std::fs::create_dir(t.join("sub")).unwrap();
    nix::unistd::mkfifo(
        &t.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    assert_refused(&server, &outside, "outside the transfer directory").await;
    assert_refused(&server, &t.join("../outside.txt"), "'..'").await;
    assert_refused(&server, &t.join("./in.txt"), "'.'").await;
    assert_refused(&server, &t.join("link.txt"), "symbolic link").await;
    assert_refused(&server, &t.join("sub"), "not a regular file").await;
    assert_refused(&server, &t.join("fifo"), "not a regular file").await;
    assert_refused(&server, &t.join("missing"), "no such file").await;
    assert_refused(&server, Path::new("relative/in.txt"), "not absolute").await;
    assert_eq!(
        server.plugin.calls.load(Ordering::SeqCst),
        1,
        "a refused call reached the plugin"
    );

    let nested = json!({"input": {"deep": [1, {"$file": {"size": 1}}]}});
    let (status, value) = server
        .call("POST", "/v1/execute", &nested.to_string())
        .await;
    assert_eq!(
        (status, error_kind(&value)),
        (StatusCode::BAD_REQUEST, "bad_request")
    );
    let stream = json!({"input": {"f": FileRef::new(&outside, 6).to_value()}});
    let (status, _) = server
        .call("POST", "/v1/execute_stream", &stream.to_string())
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(server.plugin.calls.load(Ordering::SeqCst), 1);

    let (file, path) = plugvisor_worker::files::create_output("result.bin").unwrap();
    drop(file);
    assert_eq!(
        path.parent().unwrap(),
        plugvisor_worker::files::transfer_dir().unwrap()
    );
    std::fs::remove_file(path).unwrap();
    server.stop().await;

    let no_dir = TestServer::start().await;
    std::fs::write(no_dir.transfer.join("in.txt"), "x").unwrap();
    assert_refused(
        &no_dir,
        &no_dir.transfer.join("in.txt"),
        "no transfer directory",
    )
    .await;
    no_dir.stop().await;
}
