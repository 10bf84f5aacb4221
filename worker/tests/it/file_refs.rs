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
    uploads_are_checked(&server, &outside).await;
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

/// §14: content arrives only under its own SHA-256 (a wrong body is refused and leaves nothing;
/// the right one is stored and found), and `GET`/`DELETE /v1/file` take only what a file
/// reference could name.
async fn uploads_are_checked(server: &TestServer, outside: &Path) {
    let t = &server.transfer;
    let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    let at = format!("/v1/files/{abc}");
    let (status, value) = server.call("PUT", &at, "abd").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{value}");
    let message = value["error"]["message"].as_str().unwrap();
    assert!(message.contains("checksum mismatch"), "{message}");
    let kept: Vec<_> = std::fs::read_dir(t.join("cas")).unwrap().collect();
    assert!(kept.is_empty(), "a refused upload leaves nothing: {kept:?}");
    assert_eq!(server.call("GET", &at, "").await.0, StatusCode::NOT_FOUND);

    // The positive control: the right bytes are stored, and found again.
    let (status, value) = server.call("PUT", &at, "abc").await;
    assert_eq!(status, StatusCode::OK, "{value}");
    assert_eq!(std::fs::read(t.join("cas").join(abc)).unwrap(), b"abc");
    let (status, found) = server.call("GET", &at, "").await;
    assert_eq!(
        (status, &found["size"]),
        (StatusCode::OK, &json!(3)),
        "{found}"
    );

    // Without a digest (`PUT /v1/files`) the worker names it; content it holds stays put.
    use std::os::unix::fs::MetadataExt;
    let inode = std::fs::metadata(t.join("cas").join(abc)).unwrap().ino();
    let (status, named) = server.call("PUT", "/v1/files", "abc").await;
    assert_eq!(status, StatusCode::OK, "{named}");
    assert_eq!(named, found, "the same content, the same answer");
    assert_eq!(named["sha256"], abc);
    let held = std::fs::metadata(t.join("cas").join(abc)).unwrap();
    assert_eq!(held.ino(), inode, "the copy held is kept, not replaced");
    let def = "cb8379ac2098aa165029e3938a51da0bcecfc008fd6795f401178647f96c5b34";
    let (status, new) = server.call("PUT", "/v1/files", "def").await;
    assert_eq!(
        (status, &new["sha256"]),
        (StatusCode::OK, &json!(def)),
        "{new}"
    );
    assert_eq!(std::fs::read(t.join("cas").join(def)).unwrap(), b"def");
    let (status, _) = server.call("GET", "/v1/files", "").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);

    let bad_digest = server.call("PUT", "/v1/files/not-a-digest", "x").await;
    assert_eq!(bad_digest.0, StatusCode::BAD_REQUEST, "{}", bad_digest.1);
    for (method, path) in [
        ("GET", outside.to_path_buf()),
        ("DELETE", t.join("link.txt")),
    ] {
        let (status, value) = server
            .call(method, &format!("/v1/file?path={}", path.display()), "")
            .await;
        assert_eq!(
            status,
            StatusCode::FORBIDDEN,
            "{method} {}: {value}",
            path.display()
        );
    }
    let stored = t.join("cas").join(abc);
    let (status, _) = server
        .call("DELETE", &format!("/v1/file?path={}", stored.display()), "")
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(!stored.exists());
}
