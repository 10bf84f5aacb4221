//! Wire types of the worker protocol: routes, handshake, request and response bodies, frames.
//!
//! `docs/PROTOCOL.md` is the normative description; these types are its Rust form.

use crate::error::WireError;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;

pub mod events;
pub mod health;
pub mod hooks;
pub mod services;
pub mod trace;
pub use events::{
    canonical_event, handles_event, valid_event_name, EventDelivery, ANY_EVENT, EVENT_PREFIX,
};
pub use health::{HealthReport, HealthStatus};
pub use hooks::{AfterResponse, BeforeAction, Hook, HookRequest, HookResponse};
pub use services::{ServiceCall, ServiceInfo};
pub use trace::TraceParent;

/// The protocol version this crate speaks; the first word after `plugvisor` in the handshake.
pub const PROTOCOL_VERSION: u32 = 1;

/// Environment variable carrying the bearer token from the host to the worker.
pub const TOKEN_ENV: &str = "PLUGVISOR_TOKEN";
/// Environment variable naming the only directory a worker may open file references in.
pub const TRANSFER_DIR_ENV: &str = "PLUGVISOR_TRANSFER_DIR";
/// Environment variable naming the directory, beneath the transfer directory, where a
/// sandboxed worker creates its output files (the rest of its transfer area is read-only).
pub const OUTPUT_DIR_ENV: &str = "PLUGVISOR_OUTPUT_DIR";
/// Name of that directory inside the transfer directory.
pub const OUTPUT_SUBDIR: &str = "out";
/// Environment variable that, set to `1`, makes the worker exit when its stdin reaches EOF.
pub const WATCH_STDIN_ENV: &str = "PLUGVISOR_WATCH_STDIN";
/// Environment variable with the host's pid, set when the host started the worker without a
/// pre-exec step (`posix_spawn`): the worker then sets its own parent-death signal (SIGKILL)
/// first thing and exits at once if its parent is no longer that pid.
pub const HOST_PID_ENV: &str = "PLUGVISOR_HOST_PID";
/// Environment variable with the largest request body a worker accepts, in bytes.
pub const MAX_BODY_ENV: &str = "PLUGVISOR_MAX_BODY";
/// Default largest request body: 64 MiB. Large data should travel as a `FileRef`.
pub const DEFAULT_MAX_BODY: u64 = 64 * 1024 * 1024;
/// Media type of streamed responses: one JSON frame per line.
pub const NDJSON: &str = "application/x-ndjson";

/// The routes a worker serves. All except `HEALTH` and `INFO` are `POST` or `GET` as noted.
pub mod routes {
    /// `GET`: liveness and load, answered even while plugin code is busy.
    pub const HEALTH: &str = "/v1/health";
    /// `GET`, **without a token**: 200 `{"status":"pass"}` while the worker serves, 503
    /// `{"status":"fail"}` once its shutdown began. For orchestrators' readiness and liveness
    /// probes (Kubernetes), which cannot hold the token; it says nothing else.
    pub const PROBE: &str = "/v1/probe";
    /// `GET`: name, version, protocol, schema, capabilities.
    pub const INFO: &str = "/v1/info";
    /// `POST`: initialize or re-configure.
    pub const INITIALIZE: &str = "/v1/initialize";
    /// `POST`: one call, one result.
    pub const EXECUTE: &str = "/v1/execute";
    /// `POST`: one call, a stream of NDJSON frames.
    pub const EXECUTE_STREAM: &str = "/v1/execute_stream";
    /// `GET`: the configuration in force.
    pub const CONFIG: &str = "/v1/config";
    /// `GET`: the JSON Schema of the configuration.
    pub const CONFIG_SCHEMA: &str = "/v1/config_schema";
    /// `POST`: run the plugin's cleanup.
    pub const CLEANUP: &str = "/v1/cleanup";
    /// `POST`: clean up and exit.
    pub const SHUTDOWN: &str = "/v1/shutdown";
    /// Any method: the prefix of a plugin route. `/v1/route/hello?x=1` is the plugin's route
    /// `/hello` with query `x=1`.
    pub const ROUTE_PREFIX: &str = "/v1/route";
    /// `POST`: the prefix of a named method. `/v1/methods/shout` calls the plugin's method
    /// `shout` (body and answer as for [`EXECUTE`]).
    pub const METHOD_PREFIX: &str = "/v1/methods/";
    /// `POST`: the plugin's own health check ([`super::health`]). A `POST`, not a `GET`,
    /// because it runs plugin code: every `GET` is on the control lane, which never does.
    pub const PLUGIN_HEALTH: &str = "/v1/plugin_health";
    /// `POST`: a middleware's `before_request` hook ([`super::hooks`]).
    pub const BEFORE_REQUEST: &str = "/v1/hooks/before_request";
    /// `POST`: a middleware's `after_response` hook ([`super::hooks`]).
    pub const AFTER_RESPONSE: &str = "/v1/hooks/after_response";
    /// `GET /v1/files/<sha256>`: where the worker holds content with that SHA-256 (404 when
    /// it has none); `PUT /v1/files/<sha256>`: stream that content to it (checked on
    /// arrival). How a host sends file references to a worker it shares no filesystem with.
    pub const FILES_PREFIX: &str = "/v1/files/";
    /// `PUT /v1/files`: stream content whose digest the host has not computed yet; the worker
    /// stores it under the SHA-256 it computes on arrival and answers with it (capability
    /// `streamed_upload`), so the host hashes while sending instead of before.
    pub const FILES: &str = "/v1/files";
    /// `GET /v1/file?path=P`: the bytes of the file `P` in the worker's transfer directory (an
    /// output file of a remote worker); `DELETE` removes it once the host has its copy.
    pub const FILE: &str = "/v1/file";
    /// `POST`: one host event delivered to a plugin that subscribed to it
    /// ([`super::events`]). A `POST` like every route that runs plugin code, so it is on the
    /// call lane.
    pub const EVENTS: &str = "/v1/events";

    /// Which lane a request belongs to: a connection carries requests of one lane only.
    ///
    /// *Call* requests run plugin code (`initialize`, `execute`, `execute_stream`,
    /// `cleanup`, named methods, plugin health, middleware hooks, events); a worker serves their connections where plugin code runs. *Control*
    /// requests (every `GET`, and `shutdown`) never wait for plugin code, so a worker serves
    /// them on a thread plugin code cannot block, and health probes answer while a plugin is
    /// stuck. Host and worker both route by this one rule.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub enum Lane {
        /// Requests that run plugin code.
        Call,
        /// Health, info, config, shutdown.
        Control,
    }

    impl Lane {
        /// The lane of a request by its method and path (`is_get`: the method is `GET`).
        ///
        /// ```
        /// use plugvisor_proto::wire::routes::{self, Lane};
        /// assert_eq!(Lane::of(false, routes::EXECUTE), Lane::Call);
        /// assert_eq!(Lane::of(true, routes::HEALTH), Lane::Control);
        /// assert_eq!(Lane::of(false, routes::SHUTDOWN), Lane::Control);
        /// assert_eq!(Lane::of(true, "/v1/route/hello"), Lane::Call);
        /// assert_eq!(Lane::of(false, routes::EVENTS), Lane::Call);
        /// ```
        pub fn of(is_get: bool, path: &str) -> Self {
            let route = path
                .strip_prefix(ROUTE_PREFIX)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['/', '?']));
            if route {
                Self::Call
            } else if is_get || path == SHUTDOWN {
                Self::Control
            } else {
                Self::Call
            }
        }
    }
}

/// Longest handshake line, newline included, a host reads; a worker whose info would make it
/// longer leaves the info off (the host then asks `GET /v1/info`).
pub const MAX_HANDSHAKE_LEN: usize = 64 * 1024;

/// Where a worker listens, as announced in its handshake line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// A Unix domain socket at this path.
    Unix(std::path::PathBuf),
    /// A TCP address, `host:port`.
    Tcp(String),
}

/// The one line a worker prints on stdout once it listens: `plugvisor <version> <transport> <address>`,
/// optionally followed by a tab and its [`InfoResponse`] as compact JSON, which spares the host
/// the `GET /v1/info` round trip.
///
/// ```
/// use plugvisor_proto::wire::{Handshake, Transport};
/// let h = Handshake::parse("plugvisor 1 unix /run/x/echo.sock").unwrap();
/// assert_eq!(h.transport, Transport::Unix("/run/x/echo.sock".into()));
/// assert_eq!(h.info, None);
/// assert_eq!(h.to_string(), "plugvisor 1 unix /run/x/echo.sock");
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Handshake {
    /// The protocol version the worker speaks.
    pub protocol: u32,
    /// Where it listens.
    pub transport: Transport,
    /// What `GET /v1/info` would answer, when the worker put it on the line (absent from
    /// older workers and other SDKs: the host then asks `/v1/info`).
    pub info: Option<Box<InfoResponse>>,
}

impl Handshake {
    /// The handshake of a worker speaking this crate's protocol version.
    pub fn new(transport: Transport) -> Self {
        Self {
            protocol: PROTOCOL_VERSION,
            transport,
            info: None,
        }
    }

    /// This handshake with `info` on the line.
    pub fn with_info(self, info: InfoResponse) -> Self {
        Self {
            info: Some(Box::new(info)),
            ..self
        }
    }

    /// Parses a handshake line (a trailing newline is ignored).
    ///
    /// # Errors
    /// [`BadHandshake`], quoting the line, when it is not
    /// `plugvisor <u32> unix|tcp <address>`, optionally followed by a tab and an
    /// [`InfoResponse`] in JSON. The version is not checked here; compare it with
    /// [`PROTOCOL_VERSION`].
    pub fn parse(line: &str) -> Result<Self, BadHandshake> {
        let line = line.trim_end_matches(['\n', '\r']);
        let bad = || BadHandshake {
            line: line.to_owned(),
        };
        let (line, info) = match line.split_once('\t') {
            Some((head, json)) => {
                let info = serde_json::from_str::<InfoResponse>(json).map_err(|_| bad())?;
                (head, Some(Box::new(info)))
            }
            None => (line, None),
        };
        let mut parts = line.splitn(4, ' ');
        if parts.next() != Some("plugvisor") {
            return Err(bad());
        }
        let protocol = parts.next().and_then(|v| v.parse().ok()).ok_or_else(bad)?;
        let kind = parts.next().ok_or_else(bad)?;
        let address = parts.next().filter(|a| !a.is_empty()).ok_or_else(bad)?;
        let transport = match kind {
            "unix" => Transport::Unix(address.into()),
            "tcp" => Transport::Tcp(address.to_owned()),
            _ => return Err(bad()),
        };
        Ok(Self {
            protocol,
            transport,
            info,
        })
    }
}

/// A line that is not a handshake (see [`Handshake::parse`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad handshake line {line:?}: expected \"plugvisor <version> unix|tcp <address>\"")]
pub struct BadHandshake {
    /// The line as read, without its newline.
    pub line: String,
}

impl fmt::Display for Handshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.transport {
            Transport::Unix(path) => {
                write!(f, "plugvisor {} unix {}", self.protocol, path.display())?
            }
            Transport::Tcp(addr) => write!(f, "plugvisor {} tcp {addr}", self.protocol)?,
        }
        match &self.info {
            // Compact JSON escapes every control character, so it holds no tab or newline.
            Some(info) => match serde_json::to_string(info) {
                Ok(json) => write!(f, "\t{json}"),
                Err(_) => Ok(()),
            },
            None => Ok(()),
        }
    }
}

/// Body of `POST /v1/initialize`. A missing or `null` config means "defaults".
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct InitializeRequest {
    /// The configuration; keys left out take their defaults.
    #[serde(default)]
    pub config: Option<Value>,
}

/// Body of `POST /v1/execute` and `POST /v1/execute_stream`.
///
/// Generic so the host can serialize a borrowed input without cloning it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ExecuteRequest<T = Value> {
    /// The plugin's input.
    pub input: T,
}

/// Answer of `POST /v1/execute`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ExecuteResponse {
    /// The plugin's output.
    pub output: Value,
}

/// Answer of `GET /v1/config` and `POST /v1/initialize`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ConfigResponse {
    /// The configuration in force.
    pub config: Value,
}

/// Answer of `GET /v1/config_schema`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ConfigSchemaResponse {
    /// JSON Schema of the configuration.
    pub schema: Value,
}

/// Answer of `POST /v1/cleanup`: `{"status": "cleaned"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct CleanupResponse {
    /// Always [`Cleaned::Cleaned`].
    pub status: Cleaned,
}

/// The one status of a [`CleanupResponse`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Cleaned {
    /// `"cleaned"`: the plugin's cleanup ran.
    Cleaned,
}

/// Answer of `POST /v1/shutdown` (status 202): `{"status": "stopping"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ShutdownResponse {
    /// Always [`Stopping::Stopping`].
    pub status: Stopping,
}

/// The one status of a [`ShutdownResponse`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Stopping {
    /// `"stopping"`: shutdown has begun (docs/PROTOCOL.md, section 11).
    Stopping,
}

/// Answer of `GET /v1/health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct HealthResponse {
    /// `"ok"`, or `"stopping"` once shutdown has begun.
    pub status: String,
    /// Calls and streams running now.
    pub in_flight: u64,
    /// Calls and streams started since the worker began.
    pub calls_total: u64,
    /// The worker's process id.
    pub pid: u32,
}

/// Answer of `GET /v1/info`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct InfoResponse {
    /// [`crate::Plugin::name`].
    pub name: String,
    /// [`crate::Plugin::version`].
    pub version: String,
    /// [`PROTOCOL_VERSION`] of the worker.
    pub protocol: u32,
    /// [`crate::Plugin::config_schema`].
    pub config_schema: Value,
    /// Features the worker supports: `execute`, `stream`, `files`, and `routes`,
    /// `middleware`, `methods`, `health_check`, `events` when it serves those extensions.
    pub capabilities: Vec<String>,
    /// The worker's process id.
    pub pid: u32,
    /// The plugin's HTTP routes (empty when it has none; absent from older workers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteSpec>,
    /// The middleware hooks it serves (empty when it is no middleware; absent from older
    /// workers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<Hook>,
    /// The named methods it serves beside `execute` (empty when it has none; absent from
    /// older workers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<MethodSpec>,
    /// The host events it handles on `POST /v1/events` (`loaded`, `plugin_unloaded`, or `*`
    /// for any; empty when it serves no events; absent from older workers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<String>,
}

/// The method every plugin serves: [`crate::Plugin::execute`].
pub const DEFAULT_METHOD: &str = "execute";

/// One named method of a plugin, as `/v1/info` reports it: called with
/// `POST /v1/methods/<name>` and `{"input": …}`, answered like `execute`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct MethodSpec {
    /// The name: 1–64 of `a-z`, `0-9`, `_`, `-`, starting with a letter (see
    /// [`valid_method_name`]).
    pub name: String,
    /// One line for method lists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// JSON Schema of the method's input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_schema: Option<Value>,
}

impl MethodSpec {
    /// A method called `name`.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            summary: None,
            input_schema: None,
        }
    }

    /// Sets the summary.
    pub fn summary(mut self, summary: &str) -> Self {
        self.summary = Some(summary.to_owned());
        self
    }

    /// Sets the input's schema.
    pub fn input_schema(mut self, schema: Value) -> Self {
        self.input_schema = Some(schema);
        self
    }
}

/// True for a method name a worker may declare: 1–64 characters of `a-z`, `0-9`, `_` and
/// `-`, the first a letter (so it is a path segment as is, and a CLI `plugin.method`).
///
/// ```
/// use plugvisor_proto::wire::valid_method_name;
/// assert!(valid_method_name("shout"));
/// assert!(!valid_method_name("Shout") && !valid_method_name("a/b") && !valid_method_name(""));
/// ```
pub fn valid_method_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 64
        && chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// One HTTP route of a plugin, as `/v1/info` reports it: the host mounts it under the
/// plugin's prefix (`/plugins/<plugin>` by default) and forwards matching requests to
/// [`routes::ROUTE_PREFIX`] + `path`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RouteSpec {
    /// `GET`, `POST`, …
    pub method: String,
    /// The path below the mount point: `/hello`, `/items/{id}`, `/files/{*rest}`.
    pub path: String,
    /// One line for the route list and the OpenAPI document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// JSON Schema of a JSON request body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_schema: Option<Value>,
    /// JSON Schema of a JSON answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_schema: Option<Value>,
}

/// The values of `pattern`'s parameters when `path` matches it: literal segments match
/// themselves, `{name}` one non-empty segment, a last `{*name}` the rest of the path.
///
/// ```
/// use plugvisor_proto::wire::route_params;
/// assert_eq!(route_params("/items/{id}", "/items/42").unwrap()["id"], "42");
/// assert_eq!(route_params("/files/{*rest}", "/files/a/b").unwrap()["rest"], "a/b");
/// assert!(route_params("/hello", "/hello/x").is_none());
/// ```
pub fn route_params(
    pattern: &str,
    path: &str,
) -> Option<std::collections::BTreeMap<String, String>> {
    let mut params = std::collections::BTreeMap::new();
    let mut got = path.trim_start_matches('/').split('/');
    let wanted: Vec<&str> = pattern.trim_start_matches('/').split('/').collect();
    for (i, want) in wanted.iter().enumerate() {
        if let Some(name) = want.strip_prefix("{*").and_then(|w| w.strip_suffix('}')) {
            let rest: Vec<&str> = got.by_ref().collect();
            params.insert(name.to_owned(), rest.join("/"));
            return (i == wanted.len() - 1).then_some(params);
        }
        let segment = got.next()?;
        match want.strip_prefix('{').and_then(|w| w.strip_suffix('}')) {
            Some(name) if !segment.is_empty() => {
                params.insert(name.to_owned(), segment.to_owned());
            }
            Some(_) => return None,
            None if *want == segment => {}
            None => return None,
        }
    }
    got.next().is_none().then_some(params)
}

impl RouteSpec {
    /// A route for `method` and `path`.
    pub fn new(method: &str, path: &str) -> Self {
        Self {
            method: method.to_ascii_uppercase(),
            path: path.to_owned(),
            summary: None,
            request_schema: None,
            response_schema: None,
        }
    }

    /// Sets the summary.
    pub fn summary(mut self, summary: &str) -> Self {
        self.summary = Some(summary.to_owned());
        self
    }

    /// Sets the request body's schema.
    pub fn request_schema(mut self, schema: Value) -> Self {
        self.request_schema = Some(schema);
        self
    }

    /// Sets the answer's schema.
    pub fn response_schema(mut self, schema: Value) -> Self {
        self.response_schema = Some(schema);
        self
    }
}

/// The body of every error answer: `{"error": {"kind": ..., "message": ...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ErrorBody {
    /// What went wrong.
    pub error: WireError,
}

/// One line of an `execute_stream` answer. The last line is always `end` or `error`; a stream
/// that stops without one was cut short.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum StreamFrame {
    /// `{"item": <value>}`: one result.
    Item(Value),
    /// `{"end": {"count": N}}`: the stream finished cleanly after `count` items.
    End {
        /// How many items were sent.
        count: u64,
    },
    /// `{"error": {...}}`: the stream failed; nothing follows.
    Error(WireError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use serde_json::json;

    #[test]
    fn frames_have_the_documented_shape() {
        let item = serde_json::to_value(StreamFrame::Item(json!("a"))).unwrap();
        assert_eq!(item, json!({"item": "a"}));
        let end = serde_json::to_value(StreamFrame::End { count: 2 }).unwrap();
        assert_eq!(end, json!({"end": {"count": 2}}));
        let err = StreamFrame::Error(WireError::new(ErrorKind::PluginFailed, "x"));
        assert_eq!(
            serde_json::to_value(err).unwrap(),
            json!({"error": {"kind": "plugin_failed", "message": "x"}})
        );
    }

    #[test]
    fn handshake_parses_tcp_and_rejects_garbage() {
        let h = Handshake::parse("plugvisor 1 tcp 127.0.0.1:9000\n").unwrap();
        assert_eq!(h.transport, Transport::Tcp("127.0.0.1:9000".into()));
        for bad in [
            "",
            "hello",
            "plugvisor x unix /a",
            "plugvisor 1 pipe /a",
            "plugvisor 1 unix",
        ] {
            assert!(Handshake::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn handshake_carries_info_after_a_tab() {
        let info = InfoResponse {
            name: "echo".into(),
            version: "1.0.0".into(),
            protocol: PROTOCOL_VERSION,
            config_schema: json!({"type": "object", "description": "a\ttab"}),
            capabilities: vec!["execute".into()],
            pid: 7,
            routes: Vec::new(),
            hooks: Vec::new(),
            methods: Vec::new(),
            events: Vec::new(),
        };
        let h = Handshake::new(Transport::Unix("/run/x/a b.sock".into())).with_info(info);
        let line = h.to_string();
        assert!(!line.contains('\n'), "{line}");
        assert_eq!(Handshake::parse(&line).unwrap(), h);
        assert!(Handshake::parse("plugvisor 1 unix /a\tnot json").is_err());
    }

    #[test]
    fn execute_request_rejects_unknown_fields() {
        let r: Result<ExecuteRequest, _> = serde_json::from_str(r#"{"input":1,"inptu":2}"#);
        assert!(r.is_err());
    }
}
