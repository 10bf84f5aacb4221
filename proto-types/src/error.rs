//! `PluginError`, the error every plugin call returns, and its wire form `WireError`.
//!
//! A caller must be able to tell "your input was wrong, don't retry" from "the worker died, the
//! call may or may not have run". Each variant maps to one [`ErrorKind`], and each kind to one
//! HTTP status, so the distinction survives the process boundary.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The error of a plugin call, the same whether the plugin runs in-process or in a worker.
///
/// Matching on it tells a caller what to do next:
/// - [`InvalidInput`](Self::InvalidInput), [`InvalidConfig`](Self::InvalidConfig),
///   [`FileAccess`](Self::FileAccess): the request is wrong; retrying it unchanged fails again.
/// - [`Failed`](Self::Failed): the plugin ran and reported a failure.
/// - [`WorkerCrashed`](Self::WorkerCrashed): the worker process died; the call may or may not
///   have taken effect.
/// - [`Unavailable`](Self::Unavailable), [`TimedOut`](Self::TimedOut): the call did not get an
///   answer in time or could not be sent.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum PluginError {
    /// The input was malformed or did not match what the plugin accepts.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The configuration was rejected; the message names the field and the rule.
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    /// The plugin needs `initialize` before it can serve calls.
    #[error("not initialized: {0}")]
    NotInitialized(String),
    /// The plugin ran and failed.
    #[error("plugin failed: {0}")]
    Failed(String),
    /// A `FileRef` pointed outside the transfer directory, at a symlink, or at nothing.
    #[error("file access denied: {0}")]
    FileAccess(String),
    /// The call was cancelled before it finished.
    #[error("cancelled: {0}")]
    Cancelled(String),
    /// The call did not finish within its deadline.
    #[error("timed out: {0}")]
    TimedOut(String),
    /// The worker process died while the call was in flight.
    #[error("worker crashed: {0}")]
    WorkerCrashed(CrashReport),
    /// The worker cannot take calls right now (stopped, starting, failed).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The two sides do not understand each other (bad frame, wrong version, auth, route).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The caller may not do this: a service it does not list in its manifest's `requires`
    /// or `optional_requires`.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// A call between plugins would come back to a plugin already waiting in its chain
    /// (A → B → A), or the chain is deeper than the host allows.
    #[error("call cycle: {0}")]
    CallCycle(String),
}

impl PluginError {
    /// The machine-readable kind this error travels as.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::InvalidInput(_) => ErrorKind::InvalidInput,
            Self::InvalidConfig(_) => ErrorKind::InvalidConfig,
            Self::NotInitialized(_) => ErrorKind::NotInitialized,
            Self::Failed(_) => ErrorKind::PluginFailed,
            Self::FileAccess(_) => ErrorKind::FileAccessDenied,
            Self::Cancelled(_) => ErrorKind::Cancelled,
            Self::TimedOut(_) => ErrorKind::TimedOut,
            Self::WorkerCrashed(_) => ErrorKind::WorkerCrashed,
            Self::Unavailable(_) => ErrorKind::Unavailable,
            Self::Protocol(_) => ErrorKind::Protocol,
            Self::Forbidden(_) => ErrorKind::Forbidden,
            Self::CallCycle(_) => ErrorKind::CallCycle,
        }
    }

    /// True when retrying the same request cannot succeed (the caller's mistake).
    pub fn is_caller_error(&self) -> bool {
        matches!(
            self,
            Self::InvalidInput(_)
                | Self::InvalidConfig(_)
                | Self::FileAccess(_)
                | Self::Forbidden(_)
                | Self::CallCycle(_)
        )
    }

    /// Shorthand for [`PluginError::Failed`].
    pub fn failed(msg: impl fmt::Display) -> Self {
        Self::Failed(msg.to_string())
    }

    /// Shorthand for [`PluginError::InvalidInput`].
    pub fn invalid_input(msg: impl fmt::Display) -> Self {
        Self::InvalidInput(msg.to_string())
    }

    /// Shorthand for [`PluginError::InvalidConfig`].
    pub fn invalid_config(msg: impl fmt::Display) -> Self {
        Self::InvalidConfig(msg.to_string())
    }
}

/// The machine-readable kind of an error on the wire (`"kind"` in an error body).
///
/// Each kind has exactly one HTTP status ([`ErrorKind::http_status`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorKind {
    /// The request body was not valid JSON or not the expected shape (400).
    BadRequest,
    /// The plugin rejected the input (400).
    InvalidInput,
    /// No or wrong bearer token (401).
    Unauthorized,
    /// A `FileRef` was refused (403).
    FileAccessDenied,
    /// Unknown route (404).
    NotFound,
    /// Known route, wrong method (405).
    MethodNotAllowed,
    /// The plugin needs `initialize` first (409).
    NotInitialized,
    /// The request body exceeds the worker's limit (413).
    PayloadTooLarge,
    /// The configuration was rejected (422).
    InvalidConfig,
    /// The plugin failed (500).
    PluginFailed,
    /// The plugin cancelled the call (499).
    Cancelled,
    /// The worker crashed; only the host reports this (502).
    WorkerCrashed,
    /// The other side spoke something unexpected (502).
    Protocol,
    /// The worker is shutting down or cannot serve (503).
    Unavailable,
    /// The call exceeded its deadline (504).
    TimedOut,
    /// The caller may not call this service (403).
    Forbidden,
    /// A call between plugins would loop or is nested too deep (508).
    CallCycle,
    /// A kind this version does not know (500); kept so newer peers stay readable.
    #[serde(other)]
    Unknown,
}

impl ErrorKind {
    /// Every kind, in declaration order.
    pub const ALL: [ErrorKind; 18] = [
        Self::BadRequest,
        Self::InvalidInput,
        Self::Unauthorized,
        Self::FileAccessDenied,
        Self::NotFound,
        Self::MethodNotAllowed,
        Self::NotInitialized,
        Self::PayloadTooLarge,
        Self::InvalidConfig,
        Self::PluginFailed,
        Self::Cancelled,
        Self::WorkerCrashed,
        Self::Protocol,
        Self::Unavailable,
        Self::TimedOut,
        Self::Forbidden,
        Self::CallCycle,
        Self::Unknown,
    ];

    /// The wire name of the kind, exactly as it is serialized (`"worker_crashed"`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::InvalidInput => "invalid_input",
            Self::Unauthorized => "unauthorized",
            Self::FileAccessDenied => "file_access_denied",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::NotInitialized => "not_initialized",
            Self::PayloadTooLarge => "payload_too_large",
            Self::InvalidConfig => "invalid_config",
            Self::PluginFailed => "plugin_failed",
            Self::Cancelled => "cancelled",
            Self::WorkerCrashed => "worker_crashed",
            Self::Protocol => "protocol",
            Self::Unavailable => "unavailable",
            Self::TimedOut => "timed_out",
            Self::Forbidden => "forbidden",
            Self::CallCycle => "call_cycle",
            Self::Unknown => "unknown",
        }
    }

    /// The HTTP status a worker answers with for this kind.
    pub fn http_status(self) -> u16 {
        match self {
            Self::BadRequest | Self::InvalidInput => 400,
            Self::Unauthorized => 401,
            Self::FileAccessDenied | Self::Forbidden => 403,
            Self::NotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::NotInitialized => 409,
            Self::PayloadTooLarge => 413,
            Self::InvalidConfig => 422,
            Self::Cancelled => 499,
            Self::PluginFailed | Self::Unknown => 500,
            Self::WorkerCrashed | Self::Protocol => 502,
            Self::Unavailable => 503,
            Self::TimedOut => 504,
            Self::CallCycle => 508,
        }
    }
}

/// An error as it travels in a JSON body: `{"kind": "...", "message": "..."}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct WireError {
    /// What went wrong, machine-readable.
    pub kind: ErrorKind,
    /// What went wrong, for a person.
    pub message: String,
    /// Present only for `worker_crashed`, which the host (not a worker) reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crash: Option<CrashReport>,
}

impl WireError {
    /// A wire error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            crash: None,
        }
    }
}

impl From<&PluginError> for WireError {
    fn from(err: &PluginError) -> Self {
        let crash = match err {
            PluginError::WorkerCrashed(report) => Some(report.clone()),
            _ => None,
        };
        let message = match err {
            PluginError::InvalidInput(m)
            | PluginError::InvalidConfig(m)
            | PluginError::NotInitialized(m)
            | PluginError::Failed(m)
            | PluginError::FileAccess(m)
            | PluginError::Cancelled(m)
            | PluginError::TimedOut(m)
            | PluginError::Unavailable(m)
            | PluginError::Protocol(m)
            | PluginError::Forbidden(m)
            | PluginError::CallCycle(m) => m.clone(),
            PluginError::WorkerCrashed(report) => report.to_string(),
        };
        Self {
            kind: err.kind(),
            message,
            crash,
        }
    }
}

impl From<PluginError> for WireError {
    fn from(err: PluginError) -> Self {
        Self::from(&err)
    }
}

impl From<WireError> for PluginError {
    fn from(wire: WireError) -> Self {
        let m = wire.message;
        match wire.kind {
            ErrorKind::InvalidInput => Self::InvalidInput(m),
            ErrorKind::BadRequest => Self::InvalidInput(format!("bad request: {m}")),
            ErrorKind::PayloadTooLarge => Self::InvalidInput(format!("payload too large: {m}")),
            ErrorKind::InvalidConfig => Self::InvalidConfig(m),
            ErrorKind::NotInitialized => Self::NotInitialized(m),
            ErrorKind::PluginFailed => Self::Failed(m),
            ErrorKind::FileAccessDenied => Self::FileAccess(m),
            ErrorKind::Cancelled => Self::Cancelled(m),
            ErrorKind::TimedOut => Self::TimedOut(m),
            ErrorKind::Unavailable => Self::Unavailable(m),
            ErrorKind::Forbidden => Self::Forbidden(m),
            ErrorKind::CallCycle => Self::CallCycle(m),
            ErrorKind::WorkerCrashed => match wire.crash {
                Some(report) => Self::WorkerCrashed(report),
                None => Self::Protocol(format!("worker_crashed without a report: {m}")),
            },
            ErrorKind::Unauthorized => Self::Protocol(format!("unauthorized: {m}")),
            ErrorKind::NotFound => Self::Protocol(format!("not found: {m}")),
            ErrorKind::MethodNotAllowed => Self::Protocol(format!("method not allowed: {m}")),
            ErrorKind::Protocol | ErrorKind::Unknown => Self::Protocol(m),
        }
    }
}

/// How a worker process ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum ExitReason {
    /// It exited with this status code (a Rust panic in `main` exits with 101).
    Code(i32),
    /// It was killed by a signal.
    Signal {
        /// Signal number, e.g. 9.
        number: i32,
        /// Signal name, e.g. `SIGKILL`.
        name: String,
        /// Whether the kernel wrote a core dump.
        core_dumped: bool,
    },
    /// The exit could not be observed (it was reaped elsewhere or is still pending).
    Unknown,
    /// A remote worker: the host lost its connection and cannot see how (or whether) it
    /// ended; what it can know instead (the address, the connection error, when the worker
    /// last answered).
    Disconnected(String),
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Code(code) => write!(f, "exited with code {code}"),
            Self::Signal {
                number,
                name,
                core_dumped,
            } => {
                write!(f, "killed by signal {number} ({name})")?;
                if *core_dumped {
                    write!(f, ", core dumped")?;
                }
                Ok(())
            }
            Self::Unknown => write!(f, "exit status unknown"),
            Self::Disconnected(what) => write!(f, "connection lost ({what})"),
        }
    }
}

/// Why a worker died, as far as the operating system tells causes apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum CrashCause {
    /// A Rust panic ended the process (exit code 101 with a `panicked at` line on stderr).
    Panic,
    /// `abort()` (SIGABRT), including a panic under `panic = "abort"`.
    Abort,
    /// An invalid memory access (SIGSEGV or SIGBUS).
    Segfault,
    /// SIGKILL from outside: the kernel's OOM killer or a person; Linux does not say which.
    Killed,
    /// The kernel killed it for its sandbox's `memory_mib` (its cgroup counted an OOM kill).
    MemoryLimit,
    /// The host killed it because it stopped answering health probes.
    Unresponsive,
    /// It used up its CPU-time limit (SIGXCPU).
    CpuLimit,
    /// Another signal.
    Signal,
    /// It exited on its own with a status code.
    Exit,
    /// A remote worker's connection was lost or it stopped answering: how it ended (if it
    /// did) is not known to the host; [`ExitReason::Disconnected`] says what is.
    ConnectionLost,
    /// Not known.
    #[default]
    Unknown,
}

impl CrashCause {
    /// Classifies an exit from its status and the last stderr lines.
    pub fn classify(exit: &ExitReason, stderr_tail: &[String]) -> Self {
        match exit {
            ExitReason::Code(101) if stderr_tail.iter().any(|l| l.contains("panicked at")) => {
                Self::Panic
            }
            ExitReason::Code(_) => Self::Exit,
            ExitReason::Signal { number, .. } => match number {
                6 => Self::Abort,
                7 | 11 => Self::Segfault,
                9 => Self::Killed,
                24 => Self::CpuLimit,
                _ => Self::Signal,
            },
            ExitReason::Unknown => Self::Unknown,
            ExitReason::Disconnected(_) => Self::ConnectionLost,
        }
    }
}

/// What the host knows about a worker that died: how it ended and what it said last.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct CrashReport {
    /// The plugin (worker) name.
    pub plugin: String,
    /// The worker's process id.
    pub pid: u32,
    /// How the process ended.
    pub exit: ExitReason,
    /// Why, as far as it can be told.
    #[serde(default)]
    pub cause: CrashCause,
    /// The last lines the worker wrote to stderr, oldest first (none for a remote worker).
    pub stderr_tail: Vec<String>,
}

impl fmt::Display for CrashReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "worker {} (pid {}) {}", self.plugin, self.pid, self.exit)?;
        if !matches!(self.cause, CrashCause::Exit | CrashCause::Unknown) {
            write!(f, " [{:?}]", self.cause)?;
        }
        if let Some(last) = self.stderr_tail.iter().rev().find(|l| !l.trim().is_empty()) {
            write!(f, "; last stderr line: {last}")?;
        }
        Ok(())
    }
}

/// Displays an error and every [`std::error::Error::source`] below it, joined by `": "`, e.g.
/// `cannot listen on unix:/x/w.sock: No such file or directory (os error 2)`: the whole story
/// on one line, for logs, error answers and messages to people.
///
/// ```
/// use plugvisor_proto::ErrorChain;
/// let err = std::io::Error::other("disk full");
/// assert_eq!(ErrorChain(&err).to_string(), "disk full");
/// ```
#[derive(Debug, Clone, Copy)]
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_names_are_the_serialized_names() {
        for kind in ErrorKind::ALL {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
        }
    }

    #[test]
    fn every_plugin_error_survives_the_wire() {
        let crash = CrashReport {
            plugin: "echo".into(),
            pid: 7,
            exit: ExitReason::Signal {
                number: 9,
                name: "SIGKILL".into(),
                core_dumped: false,
            },
            cause: CrashCause::Killed,
            stderr_tail: vec!["boom".into()],
        };
        let errors = [
            PluginError::InvalidInput("a".into()),
            PluginError::InvalidConfig("b".into()),
            PluginError::NotInitialized("c".into()),
            PluginError::Failed("d".into()),
            PluginError::FileAccess("e".into()),
            PluginError::Cancelled("f".into()),
            PluginError::TimedOut("g".into()),
            PluginError::WorkerCrashed(crash),
            PluginError::Unavailable("h".into()),
            PluginError::Protocol("i".into()),
            PluginError::Forbidden("j".into()),
            PluginError::CallCycle("k".into()),
        ];
        for err in errors {
            let json = serde_json::to_string(&WireError::from(&err)).unwrap();
            let back: WireError = serde_json::from_str(&json).unwrap();
            assert_eq!(PluginError::from(back), err, "via {json}");
        }
    }

    #[test]
    fn crash_causes_are_told_apart() {
        let sig = |number| ExitReason::Signal {
            number,
            name: String::new(),
            core_dumped: false,
        };
        let panic_tail = vec!["thread 'main' panicked at src/x.rs:1:1:".to_owned()];
        assert_eq!(
            CrashCause::classify(&ExitReason::Code(101), &panic_tail),
            CrashCause::Panic
        );
        assert_eq!(
            CrashCause::classify(&ExitReason::Code(101), &[]),
            CrashCause::Exit
        );
        assert_eq!(CrashCause::classify(&sig(6), &[]), CrashCause::Abort);
        assert_eq!(CrashCause::classify(&sig(11), &[]), CrashCause::Segfault);
        assert_eq!(CrashCause::classify(&sig(9), &[]), CrashCause::Killed);
        assert_eq!(CrashCause::classify(&sig(15), &[]), CrashCause::Signal);
    }

    #[test]
    fn unknown_kind_from_a_newer_peer_is_readable() {
        let wire: WireError =
            serde_json::from_str(r#"{"kind":"quota_exceeded","message":"m"}"#).unwrap();
        assert_eq!(wire.kind, ErrorKind::Unknown);
        assert_eq!(wire.kind.http_status(), 500);
    }

    #[test]
    fn client_mistakes_are_never_500() {
        for kind in [
            ErrorKind::BadRequest,
            ErrorKind::InvalidInput,
            ErrorKind::Unauthorized,
            ErrorKind::FileAccessDenied,
            ErrorKind::NotFound,
            ErrorKind::PayloadTooLarge,
            ErrorKind::InvalidConfig,
        ] {
            assert!((400..500).contains(&kind.http_status()), "{kind:?}");
        }
    }
}
