//! `guard`: a middleware plugin that refuses host requests without the configured API key and
//! stamps the answers it lets through.
//!
//! Configuration: `{"api_key": secret, "header": "X-Api-Key", "stamp": "guard"}`. Until an
//! `api_key` is configured it lets nothing through (a guard that is not set up fails closed).
//!
//! - `before_request`: a request whose `header` equals `api_key` goes on, with `stamp` appended
//!   to its `x-chain` header; any other gets `401`.
//! - `after_response`: sets `x-guarded-by: <stamp>` and appends `stamp` to the answer's
//!   `x-chain` header (so two guards show their order: requests `a, b`, answers `b, a`).
//! - Its own route, `GET /secret`, is what the bundled manifest guards.

use plugvisor_proto::wire::{
    AfterResponse, BeforeAction, Hook, HookRequest, HookResponse, RouteSpec,
};
use plugvisor_proto::{json, Plugin, PluginError, Value};
use plugvisor_worker::{typed_config, Middleware, RouteRequest, RouteResponse, Routes, Settings};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// The guard plugin.
#[derive(Debug, Default)]
pub struct Guard {
    settings: Settings<GuardConfig>,
}

/// `guard`'s configuration.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct GuardConfig {
    /// The key requests must carry; until set, nothing passes.
    #[schemars(extend("writeOnly" = true))]
    pub api_key: String,
    /// The request header that carries the key.
    #[schemars(length(min = 1))]
    pub header: String,
    /// Appended to `x-chain` both ways and sent as `x-guarded-by`.
    #[schemars(length(min = 1))]
    pub stamp: String,
}

impl Default for GuardConfig {
    fn default() -> Self {
        Self {
            api_key: String::new(),
            header: "X-Api-Key".to_owned(),
            stamp: "guard".to_owned(),
        }
    }
}

impl Guard {
    fn settings(&self) -> Arc<GuardConfig> {
        self.settings.get()
    }
}

impl Plugin for Guard {
    fn name(&self) -> &str {
        "guard"
    }

    fn version(&self) -> &str {
        env!("CARGO_PKG_VERSION")
    }

    typed_config!(settings);

    async fn execute(&self, _input: Value) -> Result<Value, PluginError> {
        let s = self.settings();
        Ok(json!({"configured": !s.api_key.is_empty(), "header": s.header, "stamp": s.stamp}))
    }
}

impl Middleware for Guard {
    fn hooks(&self) -> Vec<Hook> {
        vec![Hook::BeforeRequest, Hook::AfterResponse]
    }

    async fn before_request(&self, mut request: HookRequest) -> Result<BeforeAction, PluginError> {
        let s = self.settings();
        let given = request.header(&s.header).unwrap_or_default().as_bytes();
        let passes = !s.api_key.is_empty() && bool::from(given.ct_eq(s.api_key.as_bytes()));
        if !passes {
            let why = if s.api_key.is_empty() {
                "the guard has no api_key configured yet".to_owned()
            } else {
                format!("missing or wrong {} header", s.header)
            };
            let body =
                json!({"error": {"kind": "unauthorized", "message": format!("guard: {why}")}});
            let mut answer = HookResponse::json(401, body);
            answer.set_header("x-guarded-by", s.stamp.clone());
            return Ok(BeforeAction::Respond(answer));
        }
        let chain = appended(request.header("x-chain"), &s.stamp);
        request.headers.insert("x-chain".into(), chain);
        Ok(BeforeAction::proceed_with(request))
    }

    async fn after_response(&self, exchange: AfterResponse) -> Result<HookResponse, PluginError> {
        let s = self.settings();
        let mut response = exchange.response;
        let chain = appended(response.header("x-chain"), &s.stamp);
        response.set_header("x-chain", chain);
        response.set_header("x-guarded-by", s.stamp.clone());
        Ok(response)
    }
}

/// `list` with `item` appended (`"a"` + `"b"` = `"a, b"`).
pub(crate) fn appended(list: Option<&str>, item: &str) -> String {
    match list {
        Some(list) if !list.is_empty() => format!("{list}, {item}"),
        _ => item.to_owned(),
    }
}

impl Routes for Guard {
    fn routes(&self) -> Vec<RouteSpec> {
        vec![RouteSpec::new("GET", "/secret").summary("What only a request with the key sees")]
    }

    async fn handle(&self, _request: RouteRequest) -> Result<RouteResponse, PluginError> {
        Ok(RouteResponse::json(
            200,
            &json!({"message": "you passed the guard"}),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(headers: &[(&str, &str)]) -> HookRequest {
        HookRequest {
            method: "GET".into(),
            path: "/plugins/guard/secret".into(),
            query: None,
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
            body: None,
        }
    }

    #[tokio::test]
    async fn nothing_passes_until_a_key_is_set_then_only_the_key() {
        let guard = Guard::default();
        guard.initialize(None).await.unwrap();
        let refused = guard
            .before_request(request(&[("x-api-key", "")]))
            .await
            .unwrap();
        assert!(matches!(refused, BeforeAction::Respond(ref r) if r.status == 401));
        guard
            .initialize(Some(json!({"api_key": "k", "stamp": "a"})))
            .await
            .unwrap();
        let wrong = guard
            .before_request(request(&[("x-api-key", "x")]))
            .await
            .unwrap();
        assert!(matches!(wrong, BeforeAction::Respond(ref r) if r.status == 401));
        let right = guard
            .before_request(request(&[("x-api-key", "k"), ("x-chain", "z")]))
            .await
            .unwrap();
        let BeforeAction::Continue {
            headers: Some(h), ..
        } = right
        else {
            panic!("the key should pass: {right:?}")
        };
        assert_eq!(h["x-chain"], "z, a");
        assert!(guard.initialize(Some(json!({"stamp": 3}))).await.is_err());
    }
}
