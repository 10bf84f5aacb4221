//! Middleware hooks: the bodies of `POST /v1/hooks/before_request` and
//! `POST /v1/hooks/after_response`, which a middleware plugin answers for every host request
//! its manifest's paths match.
//!
//! Headers travel as one JSON object of lower-case names to values (repeated headers joined
//! with `", "`). A body is shown only when it is JSON and complete (the `execute` routes, a
//! plugin route's JSON request, a JSON answer with a known length); otherwise it is absent and
//! the host streams it past the middleware untouched.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// Header names to values, lower-case names.
pub type Headers = BTreeMap<String, String>;

/// A hook a middleware serves; `/v1/info` lists them in `hooks`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Hook {
    /// Runs before the request reaches its route; may change it or answer it.
    BeforeRequest,
    /// Runs after the answer, in reverse order; may change its status, headers and JSON body.
    AfterResponse,
}

impl Hook {
    /// Its name on the wire and in `/v1/info`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BeforeRequest => "before_request",
            Self::AfterResponse => "after_response",
        }
    }

    /// The worker route that runs it.
    pub fn route(self) -> &'static str {
        match self {
            Self::BeforeRequest => super::routes::BEFORE_REQUEST,
            Self::AfterResponse => super::routes::AFTER_RESPONSE,
        }
    }
}

/// A host request as a middleware sees it (the body of `before_request`, and the `request` of
/// `after_response`, there without its body). The host's own `Authorization` header is never
/// shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct HookRequest {
    /// `GET`, `POST`, …
    pub method: String,
    /// The normalised host path, e.g. `/plugins/echo/hello` or `/api/plugins/execute`.
    pub path: String,
    /// The query string without `?`, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// The request's headers.
    #[serde(default)]
    pub headers: Headers,
    /// The JSON body, when the request has a complete JSON body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
}

impl HookRequest {
    /// The value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        header_of(&self.headers, name)
    }
}

/// An answer as a middleware sees it, or gives it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct HookResponse {
    /// The HTTP status.
    pub status: u16,
    /// The answer's headers.
    #[serde(default)]
    pub headers: Headers,
    /// The JSON body, when the answer has a complete JSON body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    /// True when the answer streams (NDJSON, SSE, a large or unknown-length body): only its
    /// head is shown, and a `body` given back is ignored.
    #[serde(default)]
    pub streamed: bool,
}

impl HookResponse {
    /// A JSON answer with `status`.
    pub fn json(status: u16, body: Value) -> Self {
        let mut headers = Headers::new();
        headers.insert("content-type".into(), "application/json".into());
        Self {
            status,
            headers,
            body: Some(body),
            streamed: false,
        }
    }

    /// The value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        header_of(&self.headers, name)
    }

    /// Sets header `name` (stored lower-case) to `value`.
    pub fn set_header(&mut self, name: &str, value: impl Into<String>) {
        self.headers.insert(name.to_ascii_lowercase(), value.into());
    }
}

/// The answer of `before_request`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum BeforeAction {
    /// Go on down the chain; `headers` (when given) replace the request's headers, `body`
    /// (when given) its JSON body. A body may only be given for a request that showed one.
    Continue {
        /// The request's new headers.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        headers: Option<Headers>,
        /// The request's new JSON body.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        body: Option<Value>,
    },
    /// Answer now (401, 429, …): the route is not called; the `after_response` hooks of the
    /// middlewares that ran before this one still see the answer.
    Respond(HookResponse),
}

impl BeforeAction {
    /// Go on unchanged.
    pub fn proceed() -> Self {
        Self::Continue {
            headers: None,
            body: None,
        }
    }

    /// Go on with `request`'s headers and body (method, path and query cannot be changed).
    pub fn proceed_with(request: HookRequest) -> Self {
        Self::Continue {
            headers: Some(request.headers),
            body: request.body,
        }
    }

    /// Answer now with `status` and a JSON body.
    pub fn respond(status: u16, body: Value) -> Self {
        Self::Respond(HookResponse::json(status, body))
    }
}

/// The body of `after_response`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct AfterResponse {
    /// The request as it reached the route (after every `before_request`), without its body.
    pub request: HookRequest,
    /// The answer so far; the hook answers it, changed or not.
    pub response: HookResponse,
}

fn header_of<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn before_actions_are_tagged() {
        let text = serde_json::to_value(BeforeAction::proceed()).unwrap();
        assert_eq!(text, json!({"action": "continue"}));
        let respond = BeforeAction::respond(401, json!({"error": "no key"}));
        let text = serde_json::to_value(&respond).unwrap();
        assert_eq!(text["action"], "respond");
        assert_eq!(text["status"], 401);
        assert_eq!(text["headers"]["content-type"], "application/json");
        let back: BeforeAction = serde_json::from_value(text).unwrap();
        assert_eq!(back, respond);
        let bad = serde_json::from_value::<BeforeAction>(json!({"action": "maybe"}));
        assert!(bad.is_err());
    }

    #[test]
    fn headers_are_found_in_any_case() {
        let mut r = HookResponse::json(200, json!({}));
        r.set_header("X-Stamp", "a");
        assert_eq!(r.header("x-STAMP"), Some("a"));
        assert_eq!(Hook::AfterResponse.as_str(), "after_response");
        assert_eq!(Hook::BeforeRequest.route(), "/v1/hooks/before_request");
    }
}
