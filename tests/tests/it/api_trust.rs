//! The management API as a trust boundary: clients name no host files (uploads and
//! downloads instead), web pages of other origins and rebinding host names are refused, and
//! bad bodies get readable 4xx answers. Every refusal has a positive control: the same
//! attempt succeeds where the rule allows it.

use crate::api::{assert_error, echo, files, ticker, Api};
use plugvisor_manager::api::{ApiOptions, FileOptions};
use plugvisor_tests::http::{Answer, Client};
use plugvisor_tests::{files_under, serially};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::Path;
use std::time::Duration;

fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

async fn load(c: &Client, id: &str) {
    let loaded = c.post("/api/plugins/load", &json!({"plugin_id": id})).await;
    assert_eq!(loaded.status, 200, "{}", loaded.text());
}

async fn execute(c: &Client, plugin: &str, input: Value) -> Answer {
    c.post(
        "/api/plugins/execute",
        &json!({"plugin_id": plugin, "input": input}),
    )
    .await
}

/// Uploads `bytes`; returns the upload's JSON answer.
async fn upload(c: &Client, bytes: &[u8]) -> Value {
    let answer = c.send("POST", "/api/files", Some(bytes)).await;
    assert_eq!(answer.status, 201, "{}", answer.text());
    answer.json()
}

fn with_roots(roots: &[&Path]) -> ApiOptions {
    ApiOptions {
        files: FileOptions {
            roots: roots.iter().map(|r| r.to_path_buf()).collect(),
            ..FileOptions::default()
        },
        ..ApiOptions::default()
    }
}

#[test]
fn api_clients_cannot_name_files_of_the_server() {
    serially(async {
        let secret_dir = tempfile::tempdir().unwrap();
        let secret = secret_dir.path().join("secret.txt");
        std::fs::write(&secret, b"the operator's secret").unwrap();
        let want = sha256_hex(b"the operator's secret");
        let refs = [
            json!({"$file": {"path": "/etc/shadow", "size": 0}}),
            json!({"$file": {"path": secret, "size": 21}}),
        ];

        // Positive control: where the operator allows the directory, the plugin reads it.
        let api = Api::start(&[echo(), files()], with_roots(&[secret_dir.path()])).await;
        load(&api.client, "files").await;
        let read = execute(
            &api.client,
            "files",
            json!({"op": "sha256", "file": refs[1]}),
        )
        .await;
        assert_eq!(read.status, 200, "{}", read.text());
        assert_eq!(read.json()["output"]["sha256"], want);
        // /etc/shadow is still outside every root.
        let shadow = execute(
            &api.client,
            "files",
            json!({"op": "sha256", "file": refs[0]}),
        )
        .await;
        assert_error(&shadow, 403, "file_path_refused");
        api.finish().await;

        // The default: no roots, no paths; nothing is staged for the worker.
        let api = Api::start(&[echo(), files()], ApiOptions::default()).await;
        let c = &api.client;
        load(c, "files").await;
        for file in &refs {
            for input in [
                json!({"op": "sha256", "file": file}),
                json!({"op": "sha256", "deep": [{"x": file}]}),
            ] {
                let answer = execute(c, "files", input).await;
                assert_error(&answer, 403, "file_path_refused");
                assert!(
                    answer.error_message().contains("--file-root"),
                    "{}",
                    answer.text()
                );
            }
            let echoed = execute(c, "echo", json!({"f": file})).await;
            assert_error(&echoed, 403, "file_path_refused");
        }
        let staged: Vec<_> = files_under(api.manager.host().dir())
            .into_iter()
            .filter(|p| p.is_file() && !p.to_string_lossy().ends_with(".lock"))
            .collect();
        assert!(staged.is_empty(), "files were staged: {staged:?}");
        api.finish().await;
    })
}

#[test]
fn uploads_are_used_once_and_outputs_are_downloaded_once() {
    serially(async {
        let api = Api::start(&[echo(), files()], ApiOptions::default()).await;
        let c = &api.client;
        load(c, "files").await;
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let up = upload(c, &data).await;
        assert_eq!(up["size"], data.len());
        assert_eq!(up["sha256"], sha256_hex(&data));
        // The upload's `ref` goes anywhere in the input, here two levels down.
        let input = json!({"op": "sha256", "file": up["ref"]});
        let hashed = execute(c, "files", input.clone()).await;
        assert_eq!(hashed.status, 200, "{}", hashed.text());
        assert_eq!(hashed.json()["output"]["sha256"], sha256_hex(&data));
        // Used once: the second call finds nothing.
        let again = execute(c, "files", input).await;
        assert_error(&again, 404, "not_found");

        let up = upload(c, &data).await;
        let zipped = execute(c, "files", json!({"op": "gzip", "file": up["ref"]})).await;
        assert_eq!(zipped.status, 200, "{}", zipped.text());
        let download = zipped.json()["output"]["file"]["$download"].clone();
        let url = download["url"].as_str().expect("a download url").to_owned();
        let fetched = c.get(&url).await;
        assert_eq!(fetched.status, 200, "{}", fetched.text());
        assert_eq!(
            fetched.body.len() as u64,
            download["size"].as_u64().unwrap()
        );
        let mut unzipped = Vec::new();
        flate2::read::GzDecoder::new(&fetched.body[..])
            .read_to_end(&mut unzipped)
            .unwrap();
        assert_eq!(unzipped, data);
        assert_error(&c.get(&url).await, 404, "not_found");
        let store = api.manager.host().dir().join("api-files");
        assert!(files_under(&store).is_empty(), "{:?}", files_under(&store));

        // Streams too (DEFECTS.md #2): each item's output file becomes a download, and none
        // stays behind in the worker's transfer area.
        for _ in 0..3 {
            let up = upload(c, &data).await;
            let body = json!({"plugin_id": "files", "input": {"op": "gzip", "file": up["ref"]}});
            let streamed = c.post("/api/plugins/execute_stream", &body).await;
            assert_eq!(streamed.status, 200, "{}", streamed.text());
            let text = streamed.text();
            let item: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
            let url = item["item"]["file"]["$download"]["url"].as_str();
            let url = url
                .unwrap_or_else(|| panic!("no download in {text}"))
                .to_owned();
            let fetched = c.get(&url).await;
            assert_eq!(fetched.status, 200, "{}", fetched.text());
            assert!(text.lines().last().unwrap().contains("\"end\""), "{text}");
        }
        let zipped_left: Vec<_> = files_under(api.manager.host().dir())
            .into_iter()
            .filter(|p| p.to_string_lossy().ends_with(".gz"))
            .collect();
        assert!(zipped_left.is_empty(), "{zipped_left:?}");
        api.finish().await;
    })
}

#[test]
fn uploads_are_bounded_by_size_quota_and_time() {
    serially(async {
        let options = ApiOptions {
            files: FileOptions {
                max_upload: 1 << 20,
                quota_files: 2,
                ttl: Duration::from_millis(400),
                ..FileOptions::default()
            },
            ..ApiOptions::default()
        };
        let api = Api::start(&[echo()], options).await;
        let c = &api.client;
        let big = vec![7u8; 3 << 20];
        let refused = c.send("POST", "/api/files", Some(&big)).await;
        assert_error(&refused, 413, "payload_too_large");
        assert!(
            refused.error_message().contains("--max-upload"),
            "{}",
            refused.text()
        );
        // Positive control: within the limit it is taken; the quota allows two.
        let first = upload(c, &big[..1000]).await;
        upload(c, &big[..1000]).await;
        let third = c.send("POST", "/api/files", Some(&big[..1000])).await;
        assert_error(&third, 429, "quota_exceeded");
        // Unused uploads expire, and their files go with them.
        let store = api.manager.host().dir().join("api-files");
        let expired =
            plugvisor_tests::eventually(Duration::from_secs(5), || files_under(&store).is_empty())
                .await;
        assert!(expired, "{:?}", files_under(&store));
        load(c, "echo").await;
        let late = execute(c, "echo", json!({"f": first["ref"]})).await;
        assert_error(&late, 404, "not_found");
        upload(c, &big[..10]).await;
        api.finish().await;
    })
}

#[test]
fn web_pages_of_other_origins_and_rebinding_hosts_are_refused() {
    serially(async {
        let api = Api::start(&[echo(), ticker()], ApiOptions::default()).await;
        let c = &api.client;
        load(c, "echo").await;
        load(c, "ticker").await;
        let call = json!({"plugin_id": "echo", "input": "hi"}).to_string();
        let evil = c
            .with_header("Origin", "http://evil.example")
            .with_header("Content-Type", "text/plain");
        // What a page can send without a preflight: a text/plain POST.
        let refused = evil
            .send("POST", "/api/plugins/execute", Some(call.as_bytes()))
            .await;
        assert_error(&refused, 403, "forbidden_origin");
        let unload = evil.send("POST", "/api/plugins/ticker/unload", None).await;
        assert_error(&unload, 403, "forbidden_origin");
        assert!(
            api.manager.info("ticker").unwrap().loaded,
            "ticker was unloaded"
        );
        assert!(refused.header("access-control-allow-origin").is_none());
        // DNS rebinding: the page's own name in Host.
        let rebound = c.with_header("Host", "attacker.example:8620");
        assert_error(&rebound.get("/api/plugins").await, 403, "forbidden_host");
        // Positive controls: curl (no Origin) and the server's own pages are served.
        let plain = c
            .send("POST", "/api/plugins/execute", Some(call.as_bytes()))
            .await;
        assert_eq!(plain.status, 200, "{}", plain.text());
        let own = c.with_header("Origin", &format!("http://{}", c.addr));
        let same = own
            .send("POST", "/api/plugins/execute", Some(call.as_bytes()))
            .await;
        assert_eq!(same.status, 200, "{}", same.text());
        let unloaded = c.send("POST", "/api/plugins/ticker/unload", None).await;
        assert_eq!(unloaded.status, 200, "{}", unloaded.text());
        api.finish().await;
    })
}

#[test]
fn bodies_of_the_wrong_shape_or_size_get_readable_4xx() {
    serially(async {
        let api = Api::start(&[echo()], ApiOptions::default()).await;
        let c = &api.client;
        load(c, "echo").await;
        for body in [r#"["echo", {}]"#, r#""echo""#, "7", "null", "true"] {
            let answer = c
                .send("POST", "/api/plugins/execute", Some(body.as_bytes()))
                .await;
            assert_error(&answer, 400, "bad_request");
            assert!(
                answer.error_message().contains("JSON object"),
                "{}",
                answer.text()
            );
        }
        let object = c
            .post(
                "/api/plugins/execute",
                &json!({"plugin_id": "echo", "input": {}}),
            )
            .await;
        assert_eq!(object.status, 200, "{}", object.text());
        // A bad query is refused even when the body alone would decide (found by schemathesis).
        let force = json!({"force": true}).to_string();
        let query = c
            .send(
                "POST",
                "/api/plugins/echo/unload?force=maybe",
                Some(force.as_bytes()),
            )
            .await;
        assert_error(&query, 400, "bad_request");
        assert!(api.manager.info("echo").unwrap().loaded);
        // Eight times the limit, sent whole: the client still reads its 413.
        let huge = vec![b' '; 8 << 20];
        let too_big = c.send("POST", "/api/plugins/execute", Some(&huge)).await;
        assert_error(&too_big, 413, "payload_too_large");
        api.finish().await;
    })
}
