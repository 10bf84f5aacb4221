//! `ApiError`: every error answer of the API, `{"error": {"kind": ..., "message": ...}}` with
//! the status of its kind, and the mapping of manager and plugin errors onto it.
//!
//! A client's mistake is always a 4xx: unknown plugin 404, not loaded / already loaded /
//! required by others 409, invalid configuration or manifest 422, unmet requirements 424. Plugin call
//! errors keep the status of their [`ErrorKind`] (`worker_crashed` 502 with its crash report).

use crate::ManagerError;
use http::header::{HeaderName, HeaderValue, ALLOW, CONNECTION, WWW_AUTHENTICATE};
use http::StatusCode;
use plugvisor_host::error_chain;
use plugvisor_proto::{ErrorKind, PluginError};
use serde::Serialize;
use serde_json::{json, Map, Value};

/// The machine-readable kind of an error answer: a worker protocol kind, or one the API
/// adds for the manager's refusals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ApiKind {
    /// A kind of the worker protocol, with its status (`invalid_input` 400, `not_found` 404,
    /// `worker_crashed` 502, …).
    Wire(ErrorKind),
    /// 403: the `Host` header names the server by a name it does not answer to (DNS
    /// rebinding).
    ForbiddenHost,
    /// 403: the request comes from a web page of another origin.
    ForbiddenOrigin,
    /// 403: an API client named a path of the server's machine outside every `--file-root`.
    FilePathRefused,
    /// 408: the client took too long to send its body.
    RequestTimeout,
    /// 409: the plugin is already loaded.
    AlreadyLoaded,
    /// 409: the plugin is known but not loaded.
    NotLoaded,
    /// 409: loaded plugins require a service only this one provides.
    RequiredByOthers,
    /// 409: the plugin's route prefix overlaps a loaded plugin's.
    RouteConflict,
    /// 409: a run of the task is in progress (`overlap = "skip"`).
    TaskBusy,
    /// 422: the plugin's manifest is broken.
    InvalidManifest,
    /// 424: requirements cannot be met, or form a cycle.
    DependencyUnmet,
    /// 429: the client holds as many uploads as its quota allows.
    QuotaExceeded,
    /// 502: the worker could not be started.
    StartFailed,
    /// 502: a middleware with `on_error = "fail_closed"` failed (error, crash, timeout, or an
    /// answer the host could not use).
    MiddlewareFailed,
    /// 500: a fault of the server itself.
    Internal,
}

impl ApiKind {
    /// The wire name, snake_case.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Wire(kind) => kind.as_str(),
            Self::ForbiddenHost => "forbidden_host",
            Self::ForbiddenOrigin => "forbidden_origin",
            Self::FilePathRefused => "file_path_refused",
            Self::RequestTimeout => "request_timeout",
            Self::QuotaExceeded => "quota_exceeded",
            Self::AlreadyLoaded => "already_loaded",
            Self::NotLoaded => "not_loaded",
            Self::RequiredByOthers => "required_by_others",
            Self::RouteConflict => "route_conflict",
            Self::TaskBusy => "task_busy",
            Self::InvalidManifest => "invalid_manifest",
            Self::DependencyUnmet => "dependency_unmet",
            Self::StartFailed => "start_failed",
            Self::MiddlewareFailed => "middleware_failed",
            Self::Internal => "internal",
        }
    }

    /// The HTTP status of an answer of this kind.
    pub(crate) fn status(self) -> StatusCode {
        let code = match self {
            Self::Wire(kind) => kind.http_status(),
            Self::ForbiddenHost | Self::ForbiddenOrigin | Self::FilePathRefused => 403,
            Self::RequestTimeout => 408,
            Self::QuotaExceeded => 429,
            Self::AlreadyLoaded
            | Self::NotLoaded
            | Self::RequiredByOthers
            | Self::RouteConflict
            | Self::TaskBusy => 409,
            Self::InvalidManifest => 422,
            Self::DependencyUnmet => 424,
            Self::StartFailed | Self::MiddlewareFailed => 502,
            Self::Internal => 500,
        };
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

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
    /// Machine-readable.
    pub(crate) kind: ApiKind,
    /// For people.
    pub(crate) message: String,
    /// More fields of the `error` object (`crash`, `problems`, `dependents`).
    pub(crate) extra: Map<String, Value>,
    /// Headers of the answer (`Allow`, `WWW-Authenticate`, `Connection`).
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
}

impl ApiError {
    /// An error of `kind`, answered with the kind's status.
    pub(crate) fn new(kind: ApiKind, message: impl Into<String>) -> Self {
        Self {
            status: kind.status(),
            kind,
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
        Self::new(ApiKind::Wire(ErrorKind::BadRequest), message)
    }

    /// 401 with `WWW-Authenticate: Bearer`.
    pub(crate) fn unauthorized(message: &str) -> Self {
        Self::new(ApiKind::Wire(ErrorKind::Unauthorized), message)
            .header(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))
    }

    /// 404 for a path no route has.
    pub(crate) fn no_route(path: &str) -> Self {
        let message = format!("no route {path}; see GET /api/openapi.json");
        Self::new(ApiKind::Wire(ErrorKind::NotFound), message)
    }

    /// 404 for a plugin no manifest describes.
    pub(crate) fn unknown_plugin(name: &str) -> Self {
        let message = format!("unknown plugin {name:?}");
        Self::new(ApiKind::Wire(ErrorKind::NotFound), message)
    }

    /// 405 with the `Allow` header.
    pub(crate) fn method_not_allowed(method: &str, path: &str, allow: &[&str]) -> Self {
        let allowed = allow.join(", ");
        let error = Self::new(
            ApiKind::Wire(ErrorKind::MethodNotAllowed),
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
            ApiKind::Wire(ErrorKind::PayloadTooLarge),
            format!("the request body exceeds the limit of {limit} bytes"),
        )
        .header(CONNECTION, HeaderValue::from_static("close"))
    }

    /// 408: the client took too long to send its body.
    pub(crate) fn read_timeout() -> Self {
        Self::new(
            ApiKind::RequestTimeout,
            "the request body did not arrive in time",
        )
        .header(CONNECTION, HeaderValue::from_static("close"))
    }

    /// 500 for a bug of ours.
    pub(crate) fn internal(message: impl Into<String>) -> Self {
        Self::new(ApiKind::Internal, message)
    }

    /// The body, `{"error": {"kind", "message", ...}}`, `kind` and `message` first.
    pub(crate) fn body_bytes(&self) -> Vec<u8> {
        let body = ErrorBody {
            error: ErrorObject {
                kind: self.kind.as_str(),
                message: &self.message,
                extra: &self.extra,
            },
        };
        serde_json::to_vec(&body).unwrap_or_default()
    }

    /// The error of a plugin call, with the status of its kind.
    pub(crate) fn from_plugin(err: &PluginError) -> Self {
        let wire = plugvisor_proto::WireError::from(err);
        let error = Self::new(ApiKind::Wire(wire.kind), wire.message);
        match wire.crash {
            Some(report) => error.with("crash", json!(report)),
            None => error,
        }
    }

    /// The error of a call or stream: the plugin's own error as it is, else the manager's.
    pub(crate) fn from_call(err: ManagerError) -> Self {
        match err {
            ManagerError::Plugin { source, .. } => Self::from_plugin(&source),
            other => Self::from_manager(other),
        }
    }

    /// The error of a manager operation. Every variant is mapped here: a new one fails to
    /// compile until it is given its kind (a client's mistake is a 4xx, never a 500).
    pub(crate) fn from_manager(err: ManagerError) -> Self {
        let message = error_chain(&err);
        match err {
            ManagerError::Unknown(name) => Self::unknown_plugin(&name),
            ManagerError::NotLoaded(name) => Self::new(
                ApiKind::NotLoaded,
                format!("plugin {name:?} is not loaded; POST /api/plugins/load first"),
            ),
            ManagerError::AlreadyLoaded(_) => Self::new(ApiKind::AlreadyLoaded, message),
            ManagerError::Required { dependents, .. } => {
                Self::new(ApiKind::RequiredByOthers, message).with("dependents", json!(dependents))
            }
            ManagerError::Dependencies(_) => Self::new(ApiKind::DependencyUnmet, message),
            ManagerError::RouteConflict { other, .. } => {
                Self::new(ApiKind::RouteConflict, message).with("conflicts_with", json!(other))
            }
            ManagerError::InvalidConfig { problems, .. } => {
                Self::new(ApiKind::Wire(ErrorKind::InvalidConfig), message)
                    .with("problems", json!(problems))
            }
            ManagerError::Start { reason, .. } => {
                Self::new(ApiKind::StartFailed, message).with("start_error", json!(reason))
            }
            ManagerError::Plugin { source, .. } => {
                let mut error = Self::from_plugin(&source);
                error.message = message;
                error
            }
            ManagerError::Manifest(problem) => Self::new(ApiKind::InvalidManifest, message)
                .with("file", json!(problem.file))
                .with("line", json!(problem.line))
                .with("reason", json!(problem.reason)),
            ManagerError::UnknownTask { known, .. } => {
                Self::new(ApiKind::Wire(ErrorKind::NotFound), message).with("tasks", json!(known))
            }
            ManagerError::UnknownMethod { known, .. } => {
                Self::new(ApiKind::Wire(ErrorKind::NotFound), message).with("methods", json!(known))
            }
            ManagerError::TaskBusy { .. } => Self::new(ApiKind::TaskBusy, message),
            ManagerError::TaskPaused { .. } => {
                Self::new(ApiKind::Wire(ErrorKind::Unavailable), message)
            }
            // Faults of the server's own setup, not of the request.
            ManagerError::HostConfig { .. } | ManagerError::Io(_) => Self::internal(message),
        }
    }
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
        assert_eq!(e.kind, ApiKind::Wire(ErrorKind::WorkerCrashed));
        assert_eq!(e.body()["error"]["kind"], "worker_crashed");
        assert_eq!(e.body()["error"]["crash"]["pid"], 7);
        let bad = ApiError::from_plugin(&PluginError::invalid_input("x"));
        assert_eq!(bad.status, StatusCode::BAD_REQUEST);
        assert_eq!(bad.body()["error"]["kind"], "invalid_input");
    }

    #[test]
    fn manager_errors_are_client_errors_where_the_client_erred() {
        let cases = [
            (ManagerError::Unknown("x".into()), 404, "not_found"),
            (ManagerError::NotLoaded("x".into()), 409, "not_loaded"),
            (
                ManagerError::AlreadyLoaded("x".into()),
                409,
                "already_loaded",
            ),
            (
                ManagerError::InvalidConfig {
                    plugin: "x".into(),
                    problems: vec!["mode: rule".into()],
                },
                422,
                "invalid_config",
            ),
            (
                ManagerError::Plugin {
                    plugin: "x".into(),
                    source: PluginError::invalid_input("bad"),
                },
                400,
                "invalid_input",
            ),
        ];
        for (err, status, kind) in cases {
            let e = ApiError::from_manager(err);
            assert_eq!((e.status.as_u16(), e.kind.as_str()), (status, kind));
        }
        let refused = ApiError::from_manager(ManagerError::Plugin {
            plugin: "x".into(),
            source: PluginError::invalid_input("bad"),
        });
        assert_eq!(refused.message, "plugin x: invalid input: bad");
        let call = ApiError::from_call(ManagerError::Plugin {
            plugin: "x".into(),
            source: PluginError::invalid_input("bad"),
        });
        assert_eq!(call.message, "bad");
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
