//! The worker's HTTP surface over a real Unix socket: auth, routes, bodies, errors, panics.

use crate::common::{error_kind, raw, request, send, TestServer, TOKEN};
use http::StatusCode;
use plugvisor_proto::json;
use std::sync::atomic::Ordering;

#[tokio::test]
async fn requests_without_the_right_token_get_401() {
    let server = TestServer::start().await;
    for token in [None, Some("wrong"), Some("")] {
        let resp = send(&server.socket, request("GET", "/v1/health", token, "")).await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{token:?}");
        assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    }
    let no_scheme = format!(
        "GET /v1/info HTTP/1.1\r\nhost: w\r\nauthorization: {TOKEN}\r\nconnection: close\r\n\r\n"
    );
    let answer = raw(&server.socket, no_scheme.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(answer.contains("\"unauthorized\""), "{answer}");
    server.stop().await;
}

#[tokio::test]
async fn unknown_routes_and_wrong_methods() {
    let server = TestServer::start().await;
    let (status, body) = server.call("GET", "/v1/nope", "").await;
    assert_eq!(
        (status, error_kind(&body)),
        (StatusCode::NOT_FOUND, "not_found")
    );
    let resp = send(
        &server.socket,
        request("GET", "/v1/execute", Some(TOKEN), ""),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(resp.headers()["allow"], "POST");
    let (status, body) = server.call("POST", "/v1/health", "").await;
    assert_eq!(
        (status, error_kind(&body)),
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
    );
    server.stop().await;
}

#[tokio::test]
async fn info_health_config_and_schema() {
    let server = TestServer::start().await;
    let (status, info) = server.call("GET", "/v1/info", "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(info["name"], "scripted");
    assert_eq!(info["protocol"], 1);
    assert_eq!(info["capabilities"], json!(["execute", "stream", "files"]));
    assert_eq!(info["pid"], std::process::id());
    let health = server.health().await;
    assert_eq!(
        (health.status.as_str(), health.in_flight, health.calls_total),
        ("ok", 0, 0)
    );
    let (status, config) = server.call("GET", "/v1/config", "").await;
    assert_eq!((status, config), (StatusCode::OK, json!({"config": {}})));
    let (status, schema) = server.call("GET", "/v1/config_schema", "").await;
    assert_eq!(
        (status, schema),
        (StatusCode::OK, json!({"schema": {"type": "object"}}))
    );
    server.stop().await;
}

#[tokio::test]
async fn execute_round_trip_and_keep_alive() {
    let server = TestServer::start().await;
    let (status, body) = server
        .call("POST", "/v1/execute", r#"{"input": [1, "a"]}"#)
        .await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"output": {"echo": [1, "a"]}}))
    );
    let two = format!(
        "POST /v1/execute HTTP/1.1\r\nhost: w\r\nauthorization: Bearer {TOKEN}\r\ncontent-length: 11\r\n\r\n{{\"input\":1}}\
         GET /v1/health HTTP/1.1\r\nhost: w\r\nauthorization: Bearer {TOKEN}\r\nconnection: close\r\n\r\n"
    );
    let answer = raw(&server.socket, two.as_bytes()).await;
    assert_eq!(answer.matches("HTTP/1.1 200 OK").count(), 2, "{answer}");
    assert_eq!(server.health().await.calls_total, 2);
    server.stop().await;
}

#[tokio::test]
async fn malformed_or_misshapen_bodies_get_400() {
    let server = TestServer::start().await;
    for body in ["{", "[1]", r#"{"input": 1, "extra": 2}"#, "", "null"] {
        let (status, value) = server.call("POST", "/v1/execute", body).await;
        assert_eq!(
            (status, error_kind(&value)),
            (StatusCode::BAD_REQUEST, "bad_request"),
            "{body:?}"
        );
    }
    let (_, value) = server
        .call("POST", "/v1/execute", r#"{"input": 1, "extra": 2}"#)
        .await;
    assert!(
        value["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unknown field"),
        "{value}"
    );
    let (status, value) = server
        .call("POST", "/v1/initialize", r#"{"cnofig": {}}"#)
        .await;
    assert_eq!(
        (status, error_kind(&value)),
        (StatusCode::BAD_REQUEST, "bad_request")
    );
    assert_eq!(server.plugin.calls.load(Ordering::SeqCst), 0);
    server.stop().await;
}

#[tokio::test]
async fn bodies_over_the_limit_get_413() {
    let server = TestServer::start_with(|o| o.with_max_body(1024)).await;
    let declared = format!(
        "POST /v1/execute HTTP/1.1\r\nhost: w\r\nauthorization: Bearer {TOKEN}\r\ncontent-length: 100000\r\n\r\n"
    );
    let answer = raw(&server.socket, declared.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("payload_too_large"), "{answer}");

    let chunk = format!("3e8\r\n{}\r\n", "x".repeat(1000));
    let chunked = format!(
        "POST /v1/execute HTTP/1.1\r\nhost: w\r\nauthorization: Bearer {TOKEN}\r\ntransfer-encoding: chunked\r\n\r\n{chunk}{chunk}0\r\n\r\n"
    );
    let answer = raw(&server.socket, chunked.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    let small = format!(r#"{{"input": "{}"}}"#, "y".repeat(900));
    let (status, _) = server.call("POST", "/v1/execute", &small).await;
    assert_eq!(status, StatusCode::OK);
    server.stop().await;
}

#[tokio::test]
async fn plugin_errors_map_to_their_status() {
    let server = TestServer::start().await;
    let cases = [
        (
            "/v1/initialize",
            r#"{"config": {"bad": true}}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_config",
        ),
        (
            "/v1/execute",
            r#"{"input": {"fail": "boom"}}"#,
            StatusCode::INTERNAL_SERVER_ERROR,
            "plugin_failed",
        ),
        (
            "/v1/execute",
            r#"{"input": {"invalid": "no"}}"#,
            StatusCode::BAD_REQUEST,
            "invalid_input",
        ),
    ];
    for (path, body, want_status, want_kind) in cases {
        let (status, value) = server.call("POST", path, body).await;
        assert_eq!(
            (status, error_kind(&value)),
            (want_status, want_kind),
            "{body}"
        );
    }
    let (status, value) = server
        .call("POST", "/v1/initialize", r#"{"config": {"fine": 1}}"#)
        .await;
    assert_eq!((status, value), (StatusCode::OK, json!({"config": {}})));
    let (status, _) = server.call("POST", "/v1/initialize", "").await;
    assert_eq!(status, StatusCode::OK);
    server.stop().await;
}

#[tokio::test]
async fn a_panicking_plugin_is_a_500_and_the_worker_lives_on() {
    let server = TestServer::start().await;
    let (status, value) = server
        .call("POST", "/v1/execute", r#"{"input": {"panic": "kaboom"}}"#)
        .await;
    assert_eq!(
        (status, error_kind(&value)),
        (StatusCode::INTERNAL_SERVER_ERROR, "plugin_failed")
    );
    assert!(
        value["error"]["message"]
            .as_str()
            .unwrap()
            .contains("kaboom"),
        "{value}"
    );
    let (status, value) = server
        .call(
            "POST",
            "/v1/execute_stream",
            r#"{"input": {"panic_early": 1}}"#,
        )
        .await;
    assert_eq!(
        (status, error_kind(&value)),
        (StatusCode::INTERNAL_SERVER_ERROR, "plugin_failed")
    );
    let health = server.health().await;
    assert_eq!((health.in_flight, health.calls_total), (0, 2));
    let (status, _) = server.call("POST", "/v1/execute", r#"{"input": 1}"#).await;
    assert_eq!(status, StatusCode::OK);
    server.stop().await;
}

#[tokio::test]
async fn shutdown_route_answers_202_then_stops_and_cleans_up() {
    let server = TestServer::start().await;
    let (status, value) = server.call("POST", "/v1/shutdown", "").await;
    assert_eq!(
        (status, value),
        (StatusCode::ACCEPTED, json!({"status": "stopping"}))
    );
    let plugin = server.plugin.clone();
    let socket = server.socket.clone();
    server.task.await.unwrap().unwrap();
    assert!(!socket.exists());
    assert_eq!(plugin.cleanups.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn explicit_cleanup_is_not_repeated_at_shutdown() {
    let server = TestServer::start().await;
    let (status, value) = server.call("POST", "/v1/cleanup", "").await;
    assert_eq!(
        (status, value),
        (StatusCode::OK, json!({"status": "cleaned"}))
    );
    let plugin = server.plugin.clone();
    server.stop().await;
    assert_eq!(plugin.cleanups.load(Ordering::SeqCst), 1);
}
