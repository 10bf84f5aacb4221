//! The bodies `POST /api/plugins/execute` accepts, told apart by their fields, and the one
//! call each describes.
//!
//! - `{plugin_id, input, method?, timeout_ms?}`: the plugin's own shape; `method` defaults to
//!   `execute`.
//! - `{plugin_id, method, args?, kwargs?, timeout_ms?}` (AI Chat Studio): the method's input is
//!   exactly `{"args": args, "kwargs": kwargs}`, `args` defaulting to `[]` and `kwargs` to `{}`.
//! - `{plugin, data}` (CodexContinue): `data` is the input of `execute`.

use super::errors::ApiError;
use super::request::parse;
use plugvisor_proto::wire::DEFAULT_METHOD;
use plugvisor_proto::Value;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Map};
use std::time::Duration;

/// The accepted bodies, for error messages.
const SHAPES: &str = "the accepted bodies are {plugin_id, input, method?, timeout_ms?}, \
    {plugin_id, method, args?, kwargs?, timeout_ms?} and {plugin, data}";

/// One call asked for by any of the accepted bodies.
#[derive(Debug, PartialEq)]
pub(crate) struct ExecuteCall {
    /// The plugin.
    pub plugin: String,
    /// The method (`execute` by default).
    pub method: String,
    /// Its input.
    pub input: Value,
    /// The call's deadline, when the body set one.
    pub timeout: Option<Duration>,
}

/// `{plugin_id, input, method?, timeout_ms?}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InputBody {
    plugin_id: String,
    input: Value,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    timeout_ms: Option<u64>,
}

/// `{plugin_id, method, args?, kwargs?, timeout_ms?}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ArgsBody {
    plugin_id: String,
    method: String,
    #[serde(default)]
    args: Vec<Value>,
    #[serde(default)]
    kwargs: Map<String, Value>,
    #[serde(default)]
    timeout_ms: Option<u64>,
}

/// `{plugin, data}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DataBody {
    plugin: String,
    data: Value,
}

impl ExecuteCall {
    /// Reads one of the accepted bodies.
    ///
    /// # Errors
    /// 400 naming the problem and the accepted bodies: not a JSON object, fields of two
    /// shapes, a missing or unknown field, a field of the wrong type, `timeout_ms` 0.
    pub(crate) fn parse(bytes: &[u8]) -> Result<Self, ApiError> {
        let fields: Map<String, Value> = parse(bytes)?;
        let has = |k: &str| fields.contains_key(k);
        if has("plugin") || has("data") {
            let body: DataBody = shape(fields, "{plugin, data}")?;
            return Ok(Self::new(body.plugin, None, body.data, None));
        }
        if has("args") || has("kwargs") || (has("method") && !has("input")) {
            let body: ArgsBody = shape(fields, "{plugin_id, method, args?, kwargs?}")?;
            let input = json!({"args": body.args, "kwargs": body.kwargs});
            let timeout = timeout(body.timeout_ms)?;
            return Ok(Self::new(body.plugin_id, Some(body.method), input, timeout));
        }
        let body: InputBody = shape(fields, "{plugin_id, input}")?;
        let timeout = timeout(body.timeout_ms)?;
        Ok(Self::new(body.plugin_id, body.method, body.input, timeout))
    }

    fn new(
        plugin: String,
        method: Option<String>,
        input: Value,
        timeout: Option<Duration>,
    ) -> Self {
        Self {
            plugin,
            method: method.unwrap_or_else(|| DEFAULT_METHOD.to_owned()),
            input,
            timeout,
        }
    }
}

/// `fields` read as the body shape `name`.
fn shape<T: DeserializeOwned>(fields: Map<String, Value>, name: &str) -> Result<T, ApiError> {
    serde_json::from_value(Value::Object(fields))
        .map_err(|e| ApiError::bad_request(format!("a {name} body: {e}; {SHAPES}")))
}

fn timeout(ms: Option<u64>) -> Result<Option<Duration>, ApiError> {
    match ms {
        Some(0) => Err(ApiError::bad_request("timeout_ms must be at least 1")),
        other => Ok(other.map(Duration::from_millis)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(body: Value) -> Result<ExecuteCall, String> {
        ExecuteCall::parse(body.to_string().as_bytes()).map_err(|e| e.message)
    }

    #[test]
    fn each_shape_becomes_its_call() {
        let plain = call(json!({"plugin_id": "echo", "input": 1, "timeout_ms": 5})).unwrap();
        assert_eq!(
            (plain.method.as_str(), plain.input.clone()),
            ("execute", json!(1))
        );
        assert_eq!(plain.timeout, Some(Duration::from_millis(5)));
        let named = call(json!({"plugin_id": "echo", "method": "shout", "input": "x"})).unwrap();
        assert_eq!((named.method.as_str(), named.input), ("shout", json!("x")));
        let args = call(json!({"plugin_id": "echo", "method": "shout", "args": ["a"]})).unwrap();
        assert_eq!(args.input, json!({"args": ["a"], "kwargs": {}}));
        let bare = call(json!({"plugin_id": "echo", "method": "shout"})).unwrap();
        assert_eq!(bare.input, json!({"args": [], "kwargs": {}}));
        let data = call(json!({"plugin": "echo", "data": {"a": 1}})).unwrap();
        assert_eq!(
            (data.plugin.as_str(), data.method.as_str()),
            ("echo", "execute")
        );
        assert_eq!(data.input, json!({"a": 1}));
    }

    #[test]
    fn mixed_and_wrong_bodies_name_the_accepted_shapes() {
        for body in [
            json!({"plugin_id": "echo", "data": 1}),
            json!({"plugin": "echo", "data": 1, "input": 2}),
            json!({"plugin_id": "echo", "input": 1, "args": []}),
            json!({"plugin_id": "echo", "method": "m", "kwargs": []}),
            json!({"plugin_id": "echo", "method": "m", "args": null}),
            json!({"plugin_id": "echo"}),
            json!({"plugin_id": "echo", "input": 1, "extra": 2}),
        ] {
            let err = call(body.clone()).unwrap_err();
            assert!(err.contains("{plugin, data}"), "{body}: {err}");
        }
        let err = call(json!({"plugin_id": "echo", "input": 1, "timeout_ms": 0})).unwrap_err();
        assert!(err.contains("timeout_ms"), "{err}");
    }
}
