//! `WorkerSpec`: how to start one worker process.

use crate::sandbox::Sandbox;
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

/// Resource limits applied to a worker (with `setrlimit`, in the child, before `exec`).
///
/// Memory is deliberately absent: `RLIMIT_AS` breaks allocators that reserve address space
/// up front; use [`crate::SupervisorConfig::rss_limit`] to recycle a worker that grows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResourceLimits {
    /// Most open file descriptors (`RLIMIT_NOFILE`).
    pub open_files: Option<u64>,
    /// CPU seconds before SIGXCPU (`RLIMIT_CPU`; SIGKILL one second later).
    pub cpu_seconds: Option<u64>,
}

/// How to start a worker: the program, its arguments and environment, and its timeouts.
///
/// ```
/// use plugvisor_host::WorkerSpec;
/// use std::time::Duration;
///
/// let spec = WorkerSpec::new("/usr/local/lib/plugvisor/echo-worker")
///     .arg("--verbose")
///     .env("RUST_BACKTRACE", "1")
///     .start_timeout(Duration::from_secs(5));
/// assert_eq!(spec.start_timeout, Duration::from_secs(5));
/// ```
#[derive(Debug, Clone)]
pub struct WorkerSpec {
    /// Path of the worker binary.
    pub program: PathBuf,
    /// Extra arguments, placed before the `--socket PATH` the host adds.
    pub args: Vec<OsString>,
    /// Extra environment variables, on top of the host's own environment.
    pub env: Vec<(OsString, OsString)>,
    /// How long the worker may take to print its handshake line. Default 30 s.
    pub start_timeout: Duration,
    /// How long a stopping worker gets after the shutdown request, and again after SIGTERM,
    /// before the next step. Default 5 s.
    pub stop_grace: Duration,
    /// Largest request body the worker accepts (`PLUGVISOR_MAX_BODY`). Default 64 MiB.
    pub max_body: u64,
    /// Resource limits. Default none.
    pub limits: ResourceLimits,
    /// The name used in logs, events and crash reports. Default: the program's file name
    /// without a `-worker` suffix (the manager sets the manifest's name).
    pub name: Option<String>,
    /// Confinement of the worker (filesystem, network, syscalls, environment). Default none:
    /// the worker runs with the host's rights and environment.
    pub sandbox: Option<Sandbox>,
    /// Attach to this worker started elsewhere instead of starting `program` (see
    /// [`WorkerSpec::attach`]). Default none.
    pub remote: Option<crate::Attach>,
    /// Spawn with `posix_spawn` when there are no limits and no sandbox, leaving the
    /// parent-death signal to the worker (it gets the host's pid in `PLUGVISOR_HOST_PID`; the
    /// Rust runtime arms it first thing). Faster (no copy of the host's page tables), but a
    /// worker that does not arm it, or a wrapper script around one, is not killed by the
    /// kernel if the host dies (it still exits when its stdin closes, if it watches it).
    /// Default false: the host arms it for every worker.
    pub self_armed: bool,
}

impl WorkerSpec {
    /// A spec for `program` with the default timeouts.
    pub fn new(program: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            start_timeout: Duration::from_secs(30),
            stop_grace: Duration::from_secs(5),
            max_body: plugvisor_proto::wire::DEFAULT_MAX_BODY,
            limits: ResourceLimits::default(),
            name: None,
            sandbox: None,
            remote: None,
            self_armed: false,
        }
    }

    /// The same spec spawned with `posix_spawn` when it can be (see
    /// [`WorkerSpec::self_armed`]): for workers built on the Rust runtime, started directly.
    pub fn self_armed(mut self, yes: bool) -> Self {
        self.self_armed = yes;
        self
    }

    /// A spec that attaches to the worker `attach` describes instead of starting one; its
    /// `program` is the worker's address (for logs and errors). A supervisor "restarts" it by
    /// reconnecting, and never stops it: other hosts may be using it.
    ///
    /// ```
    /// use plugvisor_host::{Attach, WorkerSpec};
    /// let attach = Attach::parse("tcp://127.0.0.1:7000", "s3cret").unwrap();
    /// let spec = WorkerSpec::attach(attach).name("echo");
    /// assert!(spec.remote.is_some());
    /// ```
    pub fn attach(attach: crate::Attach) -> Self {
        let mut spec = Self::new(attach.url());
        spec.start_timeout = Duration::from_secs(5);
        spec.remote = Some(attach);
        spec
    }

    /// Runs the worker in `sandbox`.
    pub fn sandbox(mut self, sandbox: Sandbox) -> Self {
        self.sandbox = Some(sandbox);
        self
    }

    /// Sets the name used in logs, events and crash reports.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Sets the resource limits.
    pub fn limits(mut self, limits: ResourceLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Adds one argument.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Adds one environment variable.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Sets the start timeout.
    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
        self
    }

    /// Sets the stop grace period.
    pub fn stop_grace(mut self, grace: Duration) -> Self {
        self.stop_grace = grace;
        self
    }

    /// Sets the largest request body.
    pub fn max_body(mut self, bytes: u64) -> Self {
        self.max_body = bytes;
        self
    }

    /// The label for logs and events: [`WorkerSpec::name`], else the program's file name
    /// without a `-worker` suffix.
    pub(crate) fn label(&self) -> String {
        if let Some(name) = &self.name {
            return name.clone();
        }
        let name = self
            .program
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "worker".to_owned());
        name.strip_suffix("-worker").unwrap_or(&name).to_owned()
    }
}
