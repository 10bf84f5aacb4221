//! Services between plugins end to end, with real workers calling the host back: a required
//! service is called (and a stream), a service the manifest does not list is `forbidden` while
//! a listed one works, a missing optional one is `unavailable`, the endpoint refuses a wrong
//! token and accepts the worker's own, a callee's crash reaches the caller as
//! `worker_crashed` (the caller lives on, the callee restarts), a cycle A → B → A ends with
//! `call_cycle` while the same call outside the chain works, and a nested call's deadline.

use crate::api::{load_plugins, manifest, Api};
use plugvisor_manager::api::ApiOptions;
use plugvisor_tests::http::Client;
use plugvisor_tests::serially;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Executes `plugin` through the API and returns its output (the call must succeed).
async fn execute(c: &Client, plugin: &str, input: Value) -> Value {
    let body = json!({"plugin_id": plugin, "input": input});
    let answer = c.post("/api/plugins/execute", &body).await;
    assert_eq!(answer.status, 200, "{plugin}: {}", answer.text());
    answer.json()["output"].clone()
}

/// Chaos's input that calls `service` with `input` through the host.
fn call(service: &str, input: Value) -> Value {
    json!({"fault": "call_service", "service": service, "input": input})
}

/// One raw request to the host's service endpoint (which runs on this test's runtime, so
/// the request is async); returns the status line's code.
async fn endpoint_status(socket: &std::path::Path, token: &str) -> String {
    let mut stream = tokio::net::UnixStream::connect(socket).await.unwrap();
    let request = format!(
        "GET /v1/services/pricing HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {token}\r\n\
         Connection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    answer.split(' ').nth(1).unwrap_or_default().to_owned()
}

/// The value of `name` in the environment of process `pid`.
fn env_of(pid: u64, name: &str) -> Option<String> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    environ.split(|b| *b == 0).find_map(|entry| {
        let entry = std::str::from_utf8(entry).ok()?;
        entry.strip_prefix(&format!("{name}=")).map(str::to_owned)
    })
}

#[test]
fn plugins_call_the_services_they_list_and_nothing_else() {
    serially(async {
        let plugins = [
            manifest("pricing", "pricing", "provides = [\"pricing\"]"),
            manifest("checkout", "checkout", "requires = [\"pricing\"]"),
            manifest("echo", "echo", "provides = [\"text.transform\"]"),
            manifest("ticker", "ticker", "provides = [\"ticks\"]"),
            manifest(
                "caller",
                "chaos",
                "requires = [\"pricing\", \"ticks\"]\noptional_requires = [\"ghost\"]",
            ),
            manifest("allowed", "chaos", "requires = [\"text.transform\"]"),
            manifest("plain", "chaos", ""),
        ];
        let api = Api::start(&plugins, ApiOptions::default()).await;
        let c = &api.client;
        load_plugins(
            c,
            &[
                "pricing", "checkout", "echo", "ticker", "caller", "allowed", "plain",
            ],
        )
        .await;

        // The bundled pair: checkout prices an order through pricing.
        let order = json!({"items": [{"sku": "apple", "qty": 3}, {"sku": "tea"}]});
        let priced = execute(c, "checkout", order).await;
        assert_eq!(priced["total_cents"], 510, "{priced}");

        // A required service, called and streamed.
        let got = execute(c, "caller", call("pricing", json!({"sku": "bread"}))).await;
        assert_eq!(got["output"]["unit_cents"], 250, "{got}");
        let mut stream = call("ticks", json!({"n": 3, "bytes": 4}));
        stream["stream"] = json!(true);
        let got = execute(c, "caller", stream).await;
        assert_eq!(got["output"].as_array().map(Vec::len), Some(3), "{got}");

        // Not listed: forbidden, though echo provides it; listed: served (the control).
        let refused = execute(c, "caller", call("text.transform", json!("hi"))).await;
        assert_eq!(refused["inner_error"]["kind"], "forbidden", "{refused}");
        let served = execute(c, "allowed", call("text.transform", json!("hi"))).await;
        assert_eq!(served["output"], "hi", "{served}");

        // A missing optional service is unavailable; a plugin that lists none has no endpoint.
        let missing = execute(c, "caller", call("ghost", json!({}))).await;
        assert_eq!(missing["inner_error"]["kind"], "unavailable", "{missing}");
        let none = execute(c, "plain", call("pricing", json!({"sku": "tea"}))).await;
        assert_eq!(none["inner_error"]["kind"], "unavailable", "{none}");
        let message = none["inner_error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("requires"), "{message}");

        // The endpoint takes the worker's own token (read from its environment) and nothing
        // else.
        let pid = c.get("/api/plugins/checkout").await.json()["pid"]
            .as_u64()
            .unwrap();
        let socket = env_of(pid, "PLUGVISOR_HOST_ADDR").expect("checkout got the endpoint");
        let token = env_of(pid, "PLUGVISOR_HOST_TOKEN").expect("checkout got a token");
        let socket = std::path::PathBuf::from(socket);
        assert_eq!(endpoint_status(&socket, &token).await, "200");
        assert_eq!(endpoint_status(&socket, "not-the-token").await, "401");
        let plain = c.get("/api/plugins/plain").await.json()["pid"]
            .as_u64()
            .unwrap();
        assert_eq!(env_of(plain, "PLUGVISOR_HOST_TOKEN"), None);
        api.finish().await;
        assert!(!socket.exists(), "the endpoint's socket is removed");
    })
}

#[test]
fn a_sandboxed_plugin_calls_the_services_it_lists() {
    serially(async {
        let sandbox = "[sandbox]\nfilesystem = \"strict\"\nnetwork = \"none\"";
        let plugins = [
            manifest("pricing", "pricing", "provides = [\"pricing\"]"),
            manifest(
                "boxed",
                "chaos",
                &format!("requires = [\"pricing\"]\n{sandbox}"),
            ),
        ];
        let api = Api::start(&plugins, ApiOptions::default()).await;
        let c = &api.client;
        load_plugins(c, &["pricing", "boxed"]).await;
        let info = c.get("/api/plugins/boxed").await.json();
        assert_eq!(info["enforced"]["filesystem"], "landlock", "{info}");
        assert_eq!(info["enforced"]["network"], "none", "{info}");
        // Confined (Landlock, seccomp, no network), it still reaches the host's endpoint.
        let got = execute(c, "boxed", call("pricing", json!({"sku": "cheese"}))).await;
        assert_eq!(got["output"]["unit_cents"], 620, "{got}");
        api.finish().await;
    })
}

#[test]
fn a_crash_of_the_callee_reaches_the_caller_which_lives_on() {
    serially(async {
        let backoff = "[supervision]\nbackoff_initial_ms = 20";
        let plugins = [
            manifest(
                "victim",
                "chaos",
                &format!("provides = [\"victim\"]\n{backoff}"),
            ),
            manifest("caller", "chaos", "requires = [\"victim\"]"),
        ];
        let api = Api::start(&plugins, ApiOptions::default()).await;
        let c = &api.client;
        load_plugins(c, &["victim", "caller"]).await;
        let pid = |name: &'static str| async move {
            c.get(&format!("/api/plugins/{name}")).await.json()["pid"].clone()
        };
        let (caller_pid, victim_pid) = (pid("caller").await, pid("victim").await);

        let crashed = execute(c, "caller", call("victim", json!({"fault": "abort"}))).await;
        let inner = &crashed["inner_error"];
        assert_eq!(inner["kind"], "worker_crashed", "{crashed}");
        assert_eq!(inner["crash"]["pid"], victim_pid, "{crashed}");
        assert_eq!(pid("caller").await, caller_pid, "the caller did not crash");

        // The callee restarts; the next call through the host is served.
        let again = execute(c, "caller", call("victim", json!({"fault": "none"}))).await;
        assert_eq!(again["output"]["ok"], true, "{again}");
        assert_ne!(again["output"]["pid"], victim_pid, "a new victim worker");

        // A nested call's own deadline.
        let mut slow = call("victim", json!({"fault": "sleep", "ms": 5000}));
        slow["timeout_ms"] = json!(100);
        let late = execute(c, "caller", slow).await;
        assert_eq!(late["inner_error"]["kind"], "timed_out", "{late}");
        api.finish().await;
    })
}

#[test]
fn a_cycle_between_plugins_ends_with_call_cycle() {
    serially(async {
        let plugins = [
            manifest(
                "a",
                "chaos",
                "provides = [\"sa\"]\noptional_requires = [\"sb\"]",
            ),
            manifest(
                "b",
                "chaos",
                "provides = [\"sb\"]\noptional_requires = [\"sa\"]",
            ),
        ];
        let api = Api::start(&plugins, ApiOptions::default()).await;
        let c = &api.client;
        load_plugins(c, &["a", "b"]).await;

        // a → b → a: b's call back into a is refused, and b reports it to a.
        let back = call("sa", json!({"fault": "none"}));
        let got = execute(c, "a", call("sb", back.clone())).await;
        let inner = &got["output"]["inner_error"];
        assert_eq!(inner["kind"], "call_cycle", "{got}");
        let message = inner["message"].as_str().unwrap_or_default();
        assert!(message.contains("a -> b -> a"), "{message}");

        // The control: the same call of a from b, outside a's chain, is served.
        let direct = execute(c, "b", back).await;
        assert_eq!(direct["output"]["ok"], true, "{direct}");
        api.finish().await;
    })
}
