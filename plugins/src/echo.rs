//! `echo`: returns its input with every string in it transformed (prefix, upper/lower case).
//!
//! Config: `{"mode": "identity" | "upper" | "lower", "prefix": string}`, both optional
//! (defaults `"identity"` and `""`). `execute` transforms every string at any depth (object
//! keys stay as they are); `execute_stream` yields one item per whitespace-separated word of
//! a string input (or of `{"text": "..."}`), otherwise one item. It keeps its last
//! [`RECENT_KEPT`] outputs for its `GET /recent` route (the `echo-panel` UI plugin shows them).
//!
//! Named methods beside `execute`: `shout` (upper case and `!`) and `reverse` (characters in
//! reverse order) take a text as a string, `{"text": …}` or `{"args": [text], "kwargs": {}}`
//! and answer a string; `events` answers the host events echo heard (`heard.rs`: it hears
//! whatever its manifest's `hooks` subscribe it to, and keeps the last few).

use futures_util::{stream, StreamExt};
use plugvisor_proto::wire::{MethodSpec, RouteSpec};
use plugvisor_proto::{json, Plugin, PluginError, PluginStream, Value};
use plugvisor_worker::{typed_config, Methods, RouteRequest, RouteResponse, Routes, Settings};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Map;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

mod heard;
pub use heard::HEARD_KEPT;

/// How strings are transformed after the prefix is added.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Unchanged.
    #[default]
    Identity,
    /// Upper case.
    Upper,
    /// Lower case.
    Lower,
}

/// The echo plugin's configuration (typed: its schema, validation and `current_config` come
/// from this type through [`Settings`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
#[schemars(
    title = "echo configuration",
    description = "How echo transforms every string it answers."
)]
pub struct EchoConfig {
    /// Case transformation applied after the prefix.
    pub mode: Mode,
    /// Text put in front of every string.
    pub prefix: String,
}

impl EchoConfig {
    /// Applies prefix and mode to one string.
    pub fn apply(&self, text: &str) -> String {
        let joined = format!("{}{text}", self.prefix);
        match self.mode {
            Mode::Identity => joined,
            Mode::Upper => joined.to_uppercase(),
            Mode::Lower => joined.to_lowercase(),
        }
    }

    /// Applies [`apply`](Self::apply) to every string in `value`, at any depth.
    pub fn transform(&self, value: Value) -> Value {
        match value {
            Value::String(s) => Value::String(self.apply(&s)),
            Value::Array(items) => items.into_iter().map(|v| self.transform(v)).collect(),
            Value::Object(map) => Value::Object(
                map.into_iter()
                    .map(|(k, v)| (k, self.transform(v)))
                    .collect::<Map<_, _>>(),
            ),
            other => other,
        }
    }
}

/// How many outputs `GET /recent` shows.
pub const RECENT_KEPT: usize = 10;

/// Outputs larger than this (as JSON text) are kept as a note of their size instead.
const RECENT_MAX_BYTES: usize = 2048;

/// The echo plugin. Re-configurable while it serves calls.
#[derive(Debug, Default)]
pub struct Echo {
    settings: Settings<EchoConfig>,
    recent: Mutex<Recent>,
    heard: Mutex<heard::Heard>,
}

/// The last outputs, newest last, and how many there were in all.
#[derive(Debug, Default)]
struct Recent {
    outputs: VecDeque<Value>,
    total: u64,
}

impl Echo {
    /// The configuration in force (a snapshot).
    pub fn config(&self) -> Arc<EchoConfig> {
        self.settings.get()
    }

    /// Remembers `output` for `GET /recent` (the last [`RECENT_KEPT`]).
    fn remember(&self, output: &Value) {
        // The same bytes as `output.to_string()`, large strings copied whole.
        let mut text = Vec::new();
        let _ = plugvisor_proto::fast_json::write_value(&mut text, output);
        let kept = if text.len() <= RECENT_MAX_BYTES {
            output.clone()
        } else {
            json!({ "omitted_bytes": text.len() })
        };
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        recent.total += 1;
        let n = recent.total;
        recent
            .outputs
            .push_back(json!({ "n": n, "at_ms": at_ms, "output": kept }));
        while recent.outputs.len() > RECENT_KEPT {
            recent.outputs.pop_front();
        }
    }

    /// `{"total": N, "outputs": [{"n", "at_ms", "output"}, …]}`, newest first.
    pub fn recent(&self) -> Value {
        let recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        let outputs: Vec<&Value> = recent.outputs.iter().rev().collect();
        json!({ "total": recent.total, "outputs": outputs })
    }
}

/// Largest JSON body `POST /transform` reads.
const TRANSFORM_LIMIT: usize = 1 << 20;

/// Echo's named methods: `shout`, `reverse` and `events`.
impl Methods for Echo {
    fn methods(&self) -> Vec<MethodSpec> {
        let text = json!({"oneOf": [
            {"type": "string"},
            {"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}},
            {"type": "object", "required": ["args"], "properties": {"args": {"type": "array", "minItems": 1}}}
        ]});
        vec![
            MethodSpec::new("shout")
                .summary("The text in upper case with an exclamation mark")
                .input_schema(text.clone()),
            MethodSpec::new("reverse")
                .summary("The text's characters in reverse order")
                .input_schema(text),
            MethodSpec::new("events")
                .summary("The host events it heard (its manifest's hooks), newest first"),
        ]
    }

    async fn call_method(&self, name: &str, input: Value) -> Result<Value, PluginError> {
        if name == "events" {
            let heard = self.heard.lock().unwrap_or_else(PoisonError::into_inner);
            return Ok(heard.to_value());
        }
        let text = text_of(&input)?;
        let output = match name {
            "shout" => format!("{}!", text.to_uppercase()),
            _ => text.chars().rev().collect(),
        };
        Ok(Value::String(output))
    }
}

/// The text of a method's input: a string, `{"text": …}` or `{"args": [text, …]}`.
fn text_of(input: &Value) -> Result<&str, PluginError> {
    let text = input
        .as_str()
        .or_else(|| input.get("text").and_then(Value::as_str))
        .or_else(|| input.get("args")?.get(0)?.as_str());
    text.ok_or_else(|| {
        PluginError::InvalidInput(
            "expected a string, {\"text\": string} or {\"args\": [string]}".to_owned(),
        )
    })
}

/// Echo's HTTP routes (mounted by the host under `/plugins/echo`):
/// - `GET /hello` → `{"message": "Hello from echo"}`, the message through the config;
/// - `POST /transform` → its JSON body (≤ 1 MiB) transformed as `execute` would;
/// - `POST /count` → `{"bytes": N}`: reads a body of any size as a stream, in O(1) memory;
/// - `GET /headers` → `{"names": [...], "x-forwarded-for": …}`: the request headers it got
///   (names, and the values of the forwarding headers and of `x-chain`, which middlewares
///   stamp), to show what reaches a plugin;
/// - `GET /recent` → `{"total": N, "outputs": [{"n", "at_ms", "output"}, …]}`: its last
///   [`RECENT_KEPT`] outputs of `execute` and stream items, newest first.
impl Routes for Echo {
    fn routes(&self) -> Vec<RouteSpec> {
        vec![
            RouteSpec::new("GET", "/hello").summary("A greeting, through the config's mode"),
            RouteSpec::new("POST", "/transform")
                .summary("Its JSON body, transformed as execute would")
                .request_schema(json!({})),
            RouteSpec::new("POST", "/count").summary("Counts the bytes of a body of any size"),
            RouteSpec::new("GET", "/headers").summary("The request headers that reached it"),
            RouteSpec::new("GET", "/recent").summary("Its last outputs, newest first"),
        ]
    }

    async fn handle(&self, request: RouteRequest) -> Result<RouteResponse, PluginError> {
        match request.path.as_str() {
            "/hello" => {
                let message = self.config().apply("Hello from echo");
                Ok(RouteResponse::json(200, &json!({ "message": message })))
            }
            "/transform" => {
                let body = request.body.json(TRANSFORM_LIMIT).await?;
                Ok(RouteResponse::json(200, &self.config().transform(body)))
            }
            "/headers" => Ok(RouteResponse::json(200, &seen_headers(&request.headers))),
            "/recent" => Ok(RouteResponse::json(200, &self.recent())),
            _ => {
                let mut chunks = std::pin::pin!(request.body.into_stream());
                let mut bytes = 0u64;
                while let Some(chunk) = chunks.next().await {
                    bytes += chunk?.len() as u64;
                }
                Ok(RouteResponse::json(200, &json!({ "bytes": bytes })))
            }
        }
    }
}

/// The header names of a request, and the values of the forwarding headers.
fn seen_headers(headers: &http::HeaderMap) -> Value {
    let mut names: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
    names.sort_unstable();
    let mut seen = json!({ "names": names });
    for name in [
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-request-id",
        "x-chain",
    ] {
        let value = headers.get(name).and_then(|v| v.to_str().ok());
        seen[name] = json!(value);
    }
    seen
}

impl Plugin for Echo {
    fn name(&self) -> &str {
        "echo"
    }

    fn version(&self) -> &str {
        env!("CARGO_PKG_VERSION")
    }

    typed_config!(settings);

    async fn execute(&self, input: Value) -> Result<Value, PluginError> {
        let output = self.config().transform(input);
        self.remember(&output);
        Ok(output)
    }

    async fn execute_stream(&self, input: Value) -> Result<PluginStream, PluginError> {
        let config = self.config();
        let text = match &input {
            Value::String(s) => Some(s.as_str()),
            Value::Object(map) if map.len() == 1 => map.get("text").and_then(Value::as_str),
            _ => None,
        };
        let items: Vec<Result<Value, PluginError>> = match text {
            Some(text) => text
                .split_whitespace()
                .map(|word| Ok(Value::String(config.apply(word))))
                .collect(),
            None => vec![Ok(config.transform(input))],
        };
        for item in items.iter().flatten() {
            self.remember(item);
        }
        Ok(Box::pin(stream::iter(items)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    #[tokio::test]
    async fn modes_and_prefix_apply_to_every_string() {
        let echo = Echo::default();
        let input = json!({"Key": ["Ab", 1, {"x": "cD"}], "n": null});
        assert_eq!(echo.execute(input.clone()).await.unwrap(), input);
        echo.initialize(Some(json!({"mode": "upper", "prefix": "p-"})))
            .await
            .unwrap();
        let out = echo.execute(input).await.unwrap();
        assert_eq!(out, json!({"Key": ["P-AB", 1, {"x": "P-CD"}], "n": null}));
        echo.initialize(Some(json!({"mode": "lower"})))
            .await
            .unwrap();
        assert_eq!(echo.execute(json!("MiXed")).await.unwrap(), json!("mixed"));
        assert_eq!(
            echo.current_config(),
            json!({"mode": "lower", "prefix": ""})
        );
    }

    #[tokio::test]
    async fn bad_config_is_named_and_the_old_one_stays() {
        let echo = Echo::default();
        echo.initialize(Some(json!({"prefix": ">"}))).await.unwrap();
        let cases = [
            (json!({"mode": "shout"}), "mode: unknown variant `shout`"),
            (json!({"prefix": 5}), "prefix: invalid type: integer `5`"),
            (json!({"volume": 11}), "unknown field `volume`"),
            (json!([1]), "config: must be an object"),
        ];
        for (config, want) in cases {
            let err = echo.initialize(Some(config)).await.unwrap_err();
            assert!(matches!(err, PluginError::InvalidConfig(_)), "{err:?}");
            assert!(
                err.to_string().contains(want),
                "{err} should contain {want}"
            );
        }
        assert_eq!(
            echo.current_config(),
            json!({"mode": "identity", "prefix": ">"})
        );
        echo.initialize(None).await.unwrap();
        assert_eq!(
            echo.current_config(),
            json!({"mode": "identity", "prefix": ""})
        );
    }

    #[tokio::test]
    async fn streams_one_item_per_word() {
        let echo = Echo::default();
        echo.initialize(Some(json!({"mode": "upper"})))
            .await
            .unwrap();
        let words: Vec<_> = echo
            .execute_stream(json!({"text": " a bb\tc\n"}))
            .await
            .unwrap()
            .collect()
            .await;
        assert_eq!(words, vec![Ok(json!("A")), Ok(json!("BB")), Ok(json!("C"))]);
        let one: Vec<_> = echo
            .execute_stream(json!([1, "x"]))
            .await
            .unwrap()
            .collect()
            .await;
        assert_eq!(one, vec![Ok(json!([1, "X"]))]);
    }

    #[tokio::test]
    async fn recent_keeps_the_last_outputs_newest_first() {
        let echo = Echo::default();
        assert_eq!(echo.recent(), json!({"total": 0, "outputs": []}));
        for i in 0..12 {
            echo.execute(json!({ "i": i })).await.unwrap();
        }
        let _ = echo.execute_stream(json!("a b")).await.unwrap();
        echo.execute(json!("x".repeat(RECENT_MAX_BYTES)))
            .await
            .unwrap();
        let recent = echo.recent();
        assert_eq!(recent["total"], 15);
        let outputs = recent["outputs"].as_array().unwrap();
        assert_eq!(outputs.len(), RECENT_KEPT);
        assert_eq!(outputs[0]["output"]["omitted_bytes"], RECENT_MAX_BYTES + 2);
        assert_eq!(outputs[1]["output"], "b");
        assert_eq!(outputs[2]["output"], "a");
        assert_eq!(outputs[3]["output"], json!({"i": 11}));
        assert_eq!(outputs[3]["n"], 12);
    }

    #[test]
    fn schema_describes_the_config() {
        let schema = Echo::default().config_schema();
        assert_eq!(schema["type"], "object");
        assert_eq!(schema["additionalProperties"], false);
        assert_eq!(
            schema["properties"]["mode"]["enum"],
            json!(["identity", "upper", "lower"])
        );
        assert_eq!(schema["properties"]["prefix"]["default"], "");
    }
}
