//! `execute_stream` over a real socket (NDJSON shape, terminal frames) and cancellation when
//! the client closes its connection.

use crate::common::{error_kind, request, send, TestServer, TOKEN};
use http::StatusCode;
use http_body_util::BodyExt;
use plugvisor_proto::wire::StreamFrame;
use plugvisor_proto::{json, Value};
use std::sync::atomic::Ordering;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn stream_frames(server: &TestServer, input: Value) -> Vec<StreamFrame> {
    let body = json!({ "input": input }).to_string();
    let resp = send(
        &server.socket,
        request("POST", "/v1/execute_stream", Some(TOKEN), &body),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
    assert_eq!(resp.headers()["transfer-encoding"], "chunked");
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let text = std::str::from_utf8(&bytes).unwrap();
    assert!(text.ends_with('\n'), "every frame ends its line");
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test]
async fn a_stream_is_items_then_an_end_frame() {
    let server = TestServer::start().await;
    let frames = stream_frames(&server, json!({"n": 5000})).await;
    assert_eq!(frames.len(), 5001);
    assert_eq!(frames[42], StreamFrame::Item(json!(42)));
    assert_eq!(frames[5000], StreamFrame::End { count: 5000 });
    let frames = stream_frames(&server, json!({"n": 0})).await;
    assert_eq!(frames, vec![StreamFrame::End { count: 0 }]);
    assert_eq!(server.health().await.in_flight, 0);
    server.stop().await;
}

#[tokio::test]
async fn a_failure_midway_ends_with_an_error_frame() {
    let server = TestServer::start().await;
    let frames = stream_frames(&server, json!({"n": 10, "fail_at": 3})).await;
    assert_eq!(frames.len(), 4);
    let StreamFrame::Error(err) = &frames[3] else {
        panic!("{frames:?}")
    };
    assert_eq!(err.message, "failed at 3");
    let frames = stream_frames(&server, json!({"n": 10, "panic_at": 2, "interval_ms": 1})).await;
    assert_eq!(frames.len(), 3);
    let StreamFrame::Error(err) = &frames[2] else {
        panic!("{frames:?}")
    };
    assert!(err.message.contains("stream exploded at 2"), "{err:?}");
    assert_eq!(server.health().await.in_flight, 0);
    server.stop().await;
}

#[tokio::test]
async fn errors_before_the_stream_are_plain_error_answers() {
    let server = TestServer::start().await;
    let (status, value) = server
        .call("POST", "/v1/execute_stream", r#"{"inptu": 1}"#)
        .await;
    assert_eq!(
        (status, error_kind(&value)),
        (StatusCode::BAD_REQUEST, "bad_request")
    );
    server.stop().await;
}

/// Opens a raw connection and sends one request on it without reading the answer.
async fn start_raw_call(server: &TestServer, path: &str, body: &str) -> tokio::net::UnixStream {
    let mut conn = tokio::net::UnixStream::connect(&server.socket)
        .await
        .unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: w\r\nauthorization: Bearer {TOKEN}\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn
}

#[tokio::test]
async fn closing_the_connection_cancels_a_unary_call() {
    let server = TestServer::start().await;
    let conn = start_raw_call(&server, "/v1/execute", r#"{"input": {"sleep_ms": 600000}}"#).await;
    server.wait_in_flight(1).await;
    drop(conn);
    server.wait_in_flight(0).await;
    assert_eq!(server.plugin.dropped.load(Ordering::SeqCst), 1);
    server.stop().await;
}

#[tokio::test]
async fn closing_the_connection_stops_a_stream() {
    let server = TestServer::start().await;
    let body = r#"{"input": {"n": 1000000, "interval_ms": 20}}"#;
    let mut conn = start_raw_call(&server, "/v1/execute_stream", body).await;
    let mut first = vec![0u8; 4096];
    let n = conn.read(&mut first).await.unwrap();
    let head = String::from_utf8_lossy(&first[..n]);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    server.wait_in_flight(1).await;
    drop(conn);
    server.wait_in_flight(0).await;
    let calls_total = server.health().await.calls_total;
    assert_eq!(calls_total, 1);
    server.stop().await;
}

#[tokio::test]
async fn a_long_stream_reaches_the_client_in_order() {
    let server = TestServer::start().await;
    let frames = stream_frames(&server, json!({"n": 200000})).await;
    assert_eq!(frames.len(), 200_001);
    assert!(frames[..200_000]
        .iter()
        .enumerate()
        .all(|(i, f)| *f == StreamFrame::Item(json!(i))));
    server.stop().await;
}
