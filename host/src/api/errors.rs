//! `ApiError`: every error answer of the API, `{"error": {"kind": ..., "message": ...}}` with
//! the status of its kind, and the mapping of manager and plugin errors onto it.
//!
//! A client's mistake is always a 4xx: unknown plugin 404, not loaded / already loaded /
//! required by others 409, invalid configuration 422, unmet requirements 424. Plugin call
//! errors keep the status of their [`ErrorKind`] (`worker_crashed` 502 with its crash report).

use crate::manager::{ManagerError, PluginManager};
use http::header::{HeaderName, HeaderValue, ALLOW, CONNECTION, WWW_AUTHENTICATE};
use http::StatusCode;
use plugvisor_proto::{ErrorKind, PluginError};
use serde::Serialize;
use serde_json::{json, Map, Value};

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorObject<'a>,
}

#[derive(Serialize)]
struct ErrorObject<'a> {
    kind: &'a str,
    message: &'a str,
    #[serde(flatten)]
    extra: &'a Map<String, Value>,
}

/// An error answer.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    /// Machine-readable, snake_case.
    pub(crate) kind: String,
    /// For people.
    pub(crate) message: String,
    /// More fields of the `error` object (`crash`, `problems`, `dependents`).
    pub(crate) extra: Map<String, Value>,
    /// Headers of the answer (`Allow`, `WWW-Authenticate`, `Connection`).
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
}

impl ApiError {
    /// An error of `kind` answered with `status`.
    pub(crate) fn new(status: StatusCode, kind: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind: kind.to_owned(),
            message: message.into(),
            extra: Map::new(),
            headers: Vec::new(),
        }
    }

    /// Adds a field to the `error` object.
    pub(crate) fn with(mut self, key: &str, value: Value) -> Self {
        self.extra.insert(key.to_owned(), value);
        self
    }

    /// Adds a header to the answer.
    pub(crate) fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// 400: the body is not JSON or not the expected shape.
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 401 with `WWW-Authenticate: Bearer`.
    pub(crate) fn unauthorized(message: &str) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
            .header(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))
    }

    /// 404 for a path no route has.
    pub(crate) fn no_route(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no route {path}; see GET /api/openapi.json"),
        )
    }

    /// 404 for a plugin no manifest describes.
    pub(crate) fn unknown_plugin(name: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("unknown plugin {name:?}"),
        )
    }

    /// 405 with the `Allow` header.
    pub(crate) fn method_not_allowed(method: &str, path: &str, allow: &[&str]) -> Self {
        let allowed = allow.join(", ");
        let error = Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{method} is not allowed on {path}; allowed: {allowed}"),
        );
        match HeaderValue::from_str(&allowed) {
            Ok(value) => error.header(ALLOW, value),
            Err(_) => error,
        }
    }

    /// 413; the connection is closed after the answer (the rest is not worth reading).
    pub(crate) fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the request body exceeds the limit of {limit} bytes"),
        )
        .header(CONNECTION, HeaderValue::from_static("close"))
    }

    /// 408: the client took too long to send its body.
    pub(crate) fn read_timeout() -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            "the request body did not arrive in time",
        )
        .header(CONNECTION, HeaderValue::from_static("close"))
    }

    /// 500 for a bug of ours.
    pub(crate) fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// The body, `{"error": {"kind", "message", ...}}`, `kind` and `message` first.
    pub(crate) fn body_bytes(&self) -> Vec<u8> {
        let body = ErrorBody {
            error: ErrorObject {
                kind: &self.kind,
                message: &self.message,
                extra: &self.extra,
            },
        };
        serde_json::to_vec(&body).unwrap_or_default()
    }

    /// The error of a plugin call, with the status of its kind.
    pub(crate) fn from_plugin(err: &PluginError) -> Self {
        let wire = plugvisor_proto::WireError::from(err);
        let status = StatusCode::from_u16(wire.kind.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let error = Self::new(status, &kind_name(wire.kind), wire.message);
        match wire.crash {
            Some(report) => error.with("crash", json!(report)),
            None => error,
        }
    }

    /// The error of a manager operation on `plugin`; `manager` tells an unknown plugin (404)
    /// from a known one that is not loaded (409).
    pub(crate) fn from_manager(err: ManagerError, manager: &PluginManager) -> Self {
        let message = err.to_string();
        match err {
            ManagerError::Unknown(name) => Self::unknown_plugin(&name),
            ManagerError::NotLoaded(name) => not_loaded(&name, manager),
            ManagerError::AlreadyLoaded(_) => conflict("already_loaded", message),
            ManagerError::Required { dependents, .. } => {
                conflict("required_by_others", message).with("dependents", json!(dependents))
            }
            ManagerError::Dependencies(_) => {
                Self::new(StatusCode::FAILED_DEPENDENCY, "dependency_unmet", message)
            }
            ManagerError::InvalidConfig { problems, .. } => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_config", message)
                    .with("problems", json!(problems))
            }
            ManagerError::Start(..) => Self::new(StatusCode::BAD_GATEWAY, "start_failed", message),
            ManagerError::Plugin(_, e) => {
                let mut error = Self::from_plugin(&e);
                error.message = message;
                error
            }
            _ => Self::internal(message),
        }
    }
}

/// 409 with `kind`.
fn conflict(kind: &str, message: String) -> ApiError {
    ApiError::new(StatusCode::CONFLICT, kind, message)
}

/// 404 when no manifest has `name`, else 409 `not_loaded`.
pub(crate) fn not_loaded(name: &str, manager: &PluginManager) -> ApiError {
    match manager.info(name) {
        Ok(_) => conflict(
            "not_loaded",
            format!("plugin {name:?} is not loaded; POST /api/plugins/load first"),
        ),
        Err(_) => ApiError::unknown_plugin(name),
    }
}

/// The wire name of `kind` (`"worker_crashed"`, ...).
fn kind_name(kind: ErrorKind) -> String {
    serde_json::to_value(kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use plugvisor_proto::{CrashCause, CrashReport, ExitReason};

    impl ApiError {
        fn body(&self) -> Value {
            serde_json::from_slice(&self.body_bytes()).unwrap()
        }
    }

    #[test]
    fn plugin_errors_keep_their_status_and_crash_report() {
        let crash = PluginError::WorkerCrashed(CrashReport {
            plugin: "chaos".into(),
            pid: 7,
            exit: ExitReason::Code(1),
            cause: CrashCause::Exit,
            stderr_tail: vec![],
        });
        let e = ApiError::from_plugin(&crash);
        assert_eq!(e.status, StatusCode::BAD_GATEWAY);
        assert_eq!(e.body()["error"]["kind"], "worker_crashed");
        assert_eq!(e.body()["error"]["crash"]["pid"], 7);
        let bad = ApiError::from_plugin(&PluginError::invalid_input("x"));
        assert_eq!(bad.status, StatusCode::BAD_REQUEST);
        assert_eq!(bad.body()["error"]["kind"], "invalid_input");
    }

    #[test]
    fn method_not_allowed_names_the_allowed_methods() {
        let e = ApiError::method_not_allowed("DELETE", "/api/plugins", &["GET"]);
        assert_eq!(e.status, StatusCode::METHOD_NOT_ALLOWED);
        assert!(e.headers.iter().any(|(n, v)| n == ALLOW && v == "GET"));
        let text = String::from_utf8(e.body_bytes()).unwrap();
        assert!(
            text.starts_with(r#"{"error":{"kind":"method_not_allowed","message":"#),
            "{text}"
        );
    }
}
