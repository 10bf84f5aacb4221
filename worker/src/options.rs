//! `ServeOptions`: the knobs of one worker server (token, transfer directory, limits, grace).

use plugvisor_proto::wire::DEFAULT_MAX_BODY;
use std::path::PathBuf;
use std::time::Duration;

/// Default time in-flight calls get to finish once shutdown begins.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(2);

/// Default time `Plugin::cleanup` gets during shutdown.
pub const DEFAULT_CLEANUP_TIMEOUT: Duration = Duration::from_millis(500);

/// How [`serve`](crate::serve) behaves.
///
/// ```
/// use plugvisor_worker::ServeOptions;
/// let options = ServeOptions::new("s3cret").with_max_body(1 << 20);
/// assert_eq!(options.max_body, 1 << 20);
/// ```
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The bearer token every request must carry. Must not be empty.
    pub token: String,
    /// The only directory file references may point into; `None` refuses every file reference.
    pub transfer_dir: Option<PathBuf>,
    /// Largest request body accepted, in bytes.
    pub max_body: u64,
    /// How long in-flight calls may run on after shutdown begins before they are dropped.
    pub grace: Duration,
    /// How long `Plugin::cleanup` may take during shutdown.
    pub cleanup_timeout: Duration,
    /// The runtime plugin code runs on. `None` (the default for [`crate::serve`]) runs it on
    /// the serving runtime; [`crate::run`] gives it a runtime of its own so that a plugin that
    /// blocks its threads cannot stall `/v1/health`.
    pub plugin_runtime: Option<tokio::runtime::Handle>,
    /// Serve TLS on a TCP listener (remote workers); `None` serves plain HTTP. A Unix
    /// listener with TLS is refused.
    pub tls: Option<crate::TlsServer>,
    /// Remove `transfer_dir` when serving ends: a remote worker's private one, made at start.
    pub owns_transfer_dir: bool,
}

impl ServeOptions {
    /// Options with `token` and every other knob at its default.
    pub fn new(token: impl Into<String>) -> Self {
        Self {
            token: token.into(),
            transfer_dir: None,
            max_body: DEFAULT_MAX_BODY,
            grace: DEFAULT_GRACE,
            cleanup_timeout: DEFAULT_CLEANUP_TIMEOUT,
            plugin_runtime: None,
            tls: None,
            owns_transfer_dir: false,
        }
    }

    /// The same options with plugin code running on `runtime`.
    pub fn with_plugin_runtime(mut self, runtime: tokio::runtime::Handle) -> Self {
        self.plugin_runtime = Some(runtime);
        self
    }

    /// The same options serving TLS (see [`crate::TlsServer`]).
    pub fn with_tls(mut self, tls: crate::TlsServer) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The same options with a transfer directory.
    pub fn with_transfer_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.transfer_dir = Some(dir.into());
        self
    }

    /// The same options with a body limit.
    pub fn with_max_body(mut self, max_body: u64) -> Self {
        self.max_body = max_body;
        self
    }

    /// The same options with a shutdown grace period.
    pub fn with_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// How long after shutdown begins a stuck worker is killed by `run`'s watchdog.
    pub fn hard_deadline(&self) -> Duration {
        self.grace + self.cleanup_timeout + Duration::from_millis(500)
    }
}
