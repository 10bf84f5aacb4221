//! Graceful shutdown: in-flight calls finish within the grace period, or are dropped after it.

use crate::common::{request, send, try_send, TestServer, TOKEN};
use http::StatusCode;
use http_body_util::BodyExt;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

#[tokio::test]
async fn an_in_flight_call_finishes_during_the_grace_period() {
    let server = TestServer::start().await;
    let req = request(
        "POST",
        "/v1/execute",
        Some(TOKEN),
        r#"{"input": {"wait": 1}}"#,
    );
    let socket = server.socket.clone();
    let call = tokio::spawn(async move { send(&socket, req).await });
    server.wait_in_flight(1).await;
    server.shutdown.cancel();
    wait_until_gone(&server.socket).await;
    server.plugin.gate.notify_one();
    let resp = call.await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], br#"{"output":{"echo":{"wait":1}}}"#);
    let plugin = server.plugin.clone();
    server.stop().await;
    assert_eq!(plugin.cleanups.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn calls_still_running_after_the_grace_period_are_dropped() {
    let server = TestServer::start_with(|o| o.with_grace(Duration::from_millis(200))).await;
    let req = request(
        "POST",
        "/v1/execute",
        Some(TOKEN),
        r#"{"input": {"wait": 1}}"#,
    );
    let socket = server.socket.clone();
    let call = tokio::spawn(async move { try_send(&socket, req).await });
    server.wait_in_flight(1).await;
    let started = Instant::now();
    let plugin = server.plugin.clone();
    server.shutdown.cancel();
    server.task.await.unwrap().unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        plugin.dropped.load(Ordering::SeqCst),
        1,
        "the call future was not dropped"
    );
    assert_eq!(plugin.cleanups.load(Ordering::SeqCst), 1);
    let outcome = call.await.unwrap();
    assert!(
        outcome.is_err(),
        "the client should see the connection close: {outcome:?}"
    );
}

/// Shutdown stops the accept loop at once and removes the socket file with it.
async fn wait_until_gone(socket: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while socket.exists() {
        assert!(
            Instant::now() < deadline,
            "socket file not removed after shutdown began"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
