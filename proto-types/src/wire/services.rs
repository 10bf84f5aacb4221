//! Services between plugins: how a worker calls the host back (`/v1/services/…` on the host's
//! endpoint), the environment that tells it where and with which token, and the call-context
//! header that lets the host follow a chain of nested calls.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Environment variable with the path of the host's Unix socket for service calls. Set only
/// for plugins whose manifest lists `requires` or `optional_requires`.
pub const HOST_ADDR_ENV: &str = "PLUGVISOR_HOST_ADDR";
/// Environment variable with the bearer token a worker presents to the host's endpoint. It
/// names the plugin to the host: one token per loaded plugin, revoked when it is unloaded.
pub const HOST_TOKEN_ENV: &str = "PLUGVISOR_HOST_TOKEN";
/// Header the host sets on a call it makes on behalf of another plugin (a service call). A
/// worker passes it back unchanged on the service calls it makes while serving that call, so
/// the host can refuse a cycle (A → B → A) and bound the chain's depth and deadline.
pub const CALL_CONTEXT_HEADER: &str = "x-plugvisor-call";
/// The host endpoint's routes: `GET <prefix><service>` (may I, is it there),
/// `POST <prefix><service>` (a call), `POST <prefix><service>/stream` (a stream).
pub const SERVICES_PREFIX: &str = "/v1/services/";
/// Suffix of a service's stream route.
pub const STREAM_SUFFIX: &str = "/stream";

/// Body of `POST /v1/services/<service>` and `…/stream`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ServiceCall {
    /// The input, as for `execute`.
    #[serde(default)]
    pub input: Value,
    /// A named method of the provider instead of `execute` (calls only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Deadline of the call in milliseconds (calls only); never later than the deadline of
    /// the call it is nested in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

impl ServiceCall {
    /// A call of `execute` with `input`.
    pub fn new(input: Value) -> Self {
        Self {
            input,
            method: None,
            timeout_ms: None,
        }
    }
}

/// Answer of `GET /v1/services/<service>`: the service may be called and is there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ServiceInfo {
    /// The service.
    pub service: String,
    /// The loaded plugin that provides it.
    pub provider: String,
    /// Whether the caller lists it in `requires` (true) or `optional_requires` (false).
    pub required: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_call_body_needs_only_its_input_and_refuses_strangers() {
        let call: ServiceCall = serde_json::from_value(json!({"input": {"sku": "a"}})).unwrap();
        assert_eq!(call, ServiceCall::new(json!({"sku": "a"})));
        assert!(serde_json::from_value::<ServiceCall>(json!({"inptu": 1})).is_err());
        let full = json!({"input": 1, "method": "quote", "timeout_ms": 50});
        let call: ServiceCall = serde_json::from_value(full.clone()).unwrap();
        assert_eq!(serde_json::to_value(call).unwrap(), full);
    }
}
