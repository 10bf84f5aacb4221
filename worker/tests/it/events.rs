//! `POST /v1/events` over a real Unix socket: a plugin with [`Events`] declares its events in
//! `/v1/info` and handles the ones it declared (`204`); an undeclared event, a malformed body
//! and a plugin without events get typed errors; an error or a panic in the handler is a
//! `plugin_failed` answer and the worker keeps serving.

use crate::common::{error_kind, request, send, TestServer, TOKEN};
use http::StatusCode;
use http_body_util::BodyExt;
use plugvisor_proto::wire::EventDelivery;
use plugvisor_proto::{json, Plugin, PluginError, Value};
use plugvisor_worker::{Events, ListenAddr, Listener, ServeOptions, Worker};
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

/// Remembers the events it handles; `task_failed` of plugin `boom` fails, of `bang` panics.
#[derive(Default)]
struct Listening {
    got: Mutex<Vec<EventDelivery>>,
}

impl Plugin for Listening {
    fn name(&self) -> &str {
        "listening"
    }
    fn version(&self) -> &str {
        "0.0.1"
    }
    async fn execute(&self, input: Value) -> Result<Value, PluginError> {
        Ok(input)
    }
}

impl Events for Listening {
    fn events(&self) -> Vec<String> {
        vec!["plugin_loaded".into(), "task_failed".into()]
    }

    async fn on_event(&self, event: EventDelivery) -> Result<(), PluginError> {
        match event.plugin.as_str() {
            "boom" => Err(PluginError::failed("boom")),
            "bang" => panic!("bang"),
            _ => {
                self.got.lock().unwrap().push(event);
                Ok(())
            }
        }
    }
}

/// POSTs `body` to `/v1/events`: the status and the body (`Null` when empty).
async fn deliver(socket: &std::path::Path, body: &Value) -> (StatusCode, Value) {
    let req = request("POST", "/v1/events", Some(TOKEN), &body.to_string());
    let resp = send(socket, req).await;
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, value)
}

#[tokio::test]
async fn declared_events_are_handled_and_everything_else_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("w.sock");
    let listener = Listener::bind(&ListenAddr::Unix(socket.clone()))
        .await
        .unwrap();
    let plugin = Arc::new(Listening::default());
    let shutdown = CancellationToken::new();
    let worker = Worker::shared(Arc::clone(&plugin)).events();
    let task = tokio::spawn(worker.serve(listener, ServeOptions::new(TOKEN), shutdown.clone()));

    let info = send(&socket, request("GET", "/v1/info", Some(TOKEN), "")).await;
    let info: Value =
        serde_json::from_slice(&info.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(info["events"], json!(["plugin_loaded", "task_failed"]));
    assert!(info["capabilities"]
        .as_array()
        .unwrap()
        .contains(&json!("events")));

    let loaded =
        json!({"event": "loaded", "plugin": "files", "at_ms": 7, "details": {"version": "1"}});
    assert_eq!(
        deliver(&socket, &loaded).await,
        (StatusCode::NO_CONTENT, Value::Null)
    );
    let got = plugin.got.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].event.as_str(), got[0].at_ms), ("loaded", 7));
    assert_eq!(got[0].details, json!({"version": "1"}));

    let undeclared = json!({"event": "crashed", "plugin": "files", "at_ms": 1});
    let (status, body) = deliver(&socket, &undeclared).await;
    assert_eq!(
        (status, error_kind(&body)),
        (StatusCode::NOT_FOUND, "not_found")
    );
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("\"crashed\"") && message.contains("task_failed"),
        "{message}"
    );
    let (status, body) = deliver(&socket, &json!({"event": "loaded"})).await;
    assert_eq!(
        (status, error_kind(&body)),
        (StatusCode::BAD_REQUEST, "bad_request")
    );

    for plugin_name in ["boom", "bang"] {
        let failed = json!({"event": "task_failed", "plugin": plugin_name, "at_ms": 1});
        let (status, body) = deliver(&socket, &failed).await;
        assert_eq!(
            (status, error_kind(&body)),
            (StatusCode::INTERNAL_SERVER_ERROR, "plugin_failed"),
            "{plugin_name}"
        );
    }
    // Still serving, and events are no calls.
    assert_eq!(deliver(&socket, &loaded).await.0, StatusCode::NO_CONTENT);
    let health = send(&socket, request("GET", "/v1/health", Some(TOKEN), "")).await;
    let health: Value =
        serde_json::from_slice(&health.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(health["calls_total"], 0, "{health}");

    shutdown.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_plugin_without_events_answers_404() {
    let server = TestServer::start().await;
    let (status, info) = server.call("GET", "/v1/info", "").await;
    assert_eq!(status, StatusCode::OK);
    assert!(info.get("events").is_none(), "{info}");
    let body = r#"{"event": "loaded", "plugin": "x", "at_ms": 1}"#;
    let (status, answer) = server.call("POST", "/v1/events", body).await;
    assert_eq!(
        (status, error_kind(&answer)),
        (StatusCode::NOT_FOUND, "not_found")
    );
    server.stop().await;
}
