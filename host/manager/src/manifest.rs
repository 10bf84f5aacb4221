//! Plugin manifests (`plugins/manifests/*.toml`): their format, parsing with line numbers,
//! and discovery of a directory.

use crate::source::EntryPoint;
use plugvisor_host::{
    EventKind, FsPolicy, HealthConfig, NetPolicy, RestartPolicy, Sandbox, SupervisorConfig,
    SyscallPolicy,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What a plugin is for (the seed systems' plugin types).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PluginKind {
    /// Provides a service to other plugins or the application (e.g. a model provider).
    Provider,
    /// A tool the application calls.
    #[default]
    Tool,
    /// Sits in a request path and transforms it.
    Middleware,
    /// Exports data somewhere.
    Export,
    /// Ships a user interface (static assets at a mount point).
    Ui,
    /// Authenticates users or requests for the application.
    AuthProvider,
    /// Part of the platform itself.
    System,
}

impl PluginKind {
    /// Every kind, in the order the docs list them.
    pub const ALL: [Self; 7] = [
        Self::Provider,
        Self::Tool,
        Self::Middleware,
        Self::Export,
        Self::Ui,
        Self::AuthProvider,
        Self::System,
    ];

    /// The manifest's (and the API's) name of the kind.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Provider => "provider",
            Self::Tool => "tool",
            Self::Middleware => "middleware",
            Self::Export => "export",
            Self::Ui => "ui",
            Self::AuthProvider => "auth_provider",
            Self::System => "system",
        }
    }

    /// The kind named `name`.
    ///
    /// # Errors
    /// A message naming the kinds there are.
    pub fn parse(name: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == name)
            .ok_or_else(|| {
                let all: Vec<&str> = Self::ALL.iter().map(|k| k.as_str()).collect();
                format!("unknown kind {name:?}; kinds are {}", all.join(", "))
            })
    }
}

/// When the worker starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum StartMode {
    /// When the plugin is loaded.
    #[default]
    Eager,
    /// On its first call.
    Lazy,
}

/// How a plugin's local replicas scale (`max_replicas` and the keys beside it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scaling {
    /// The fewest local workers.
    pub min: usize,
    /// The most local workers.
    pub max: usize,
    /// Calls in flight or waiting per replica the pool aims at.
    pub target_in_flight: u32,
    /// How long one replica fewer must have been enough before one is stopped.
    pub idle: Duration,
}

/// The most workers one plugin may run (`replicas`).
pub const MAX_REPLICAS: usize = 64;

fn one() -> usize {
    1
}

/// One plugin manifest.
///
/// ```toml
/// name = "echo"
/// version = "0.1.0"
/// description = "Returns its input transformed"
/// kind = "tool"
/// tags = ["example"]
/// command = "echo-worker"          # a path, or a binary name beside plugvisor
/// start = "eager"                   # or "lazy"
/// provides = ["text.transform"]
/// requires = []                     # services it needs: loaded first, callable by it
/// optional_requires = []            # services it may call when present (no load order need)
/// hooks = ["plugin_loaded", "task_failed"]   # host events delivered to it (Events)
///
/// [config]
/// mode = "identity"
///
/// [supervision]
/// max_restarts = 5
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Unique plugin id.
    pub name: String,
    /// Version (semver).
    pub version: String,
    /// One line for people.
    #[serde(default)]
    pub description: String,
    /// What it is for.
    #[serde(default)]
    pub kind: PluginKind,
    /// Free-form tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// The worker binary: a path (relative to the manifest's directory) or a bare name
    /// resolved in the worker directory (beside `plugvisor`). May be left out when `attach`
    /// names remote workers.
    #[serde(default)]
    pub command: String,
    /// Extra arguments for the worker.
    #[serde(default)]
    pub args: Vec<String>,
    /// Extra environment for the worker.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Configuration defaults (above the schema's defaults).
    #[serde(default)]
    pub config: Option<toml::Table>,
    /// Service names this plugin provides.
    #[serde(default)]
    pub provides: Vec<String>,
    /// Service names that must be provided (by other loaded plugins) before this one starts.
    /// The plugin may call them through the host (`plugvisor_worker::host()`).
    #[serde(default)]
    pub requires: Vec<String>,
    /// Service names the plugin may call when some loaded plugin provides them. They never
    /// block loading; when present they start first; a call of a missing one is
    /// `unavailable`.
    #[serde(default)]
    pub optional_requires: Vec<String>,
    /// Eager or lazy start.
    #[serde(default)]
    pub start: StartMode,
    /// Stop the worker after this many seconds without calls (it restarts on the next call).
    #[serde(default)]
    pub idle_stop_secs: Option<u64>,
    /// Workers serving the plugin (1 to [`MAX_REPLICAS`]), each supervised on its own; calls
    /// go to the least-loaded ready one. With `attach` and no `command`, only the remote ones.
    #[serde(default = "one")]
    pub replicas: usize,
    /// Autoscaling: the most local workers the pool grows to under load. With it, the pool
    /// starts with `replicas` (kept within `min_replicas..=max_replicas`), adds a worker when
    /// the calls in flight or waiting per replica stay above `target_in_flight` for a second,
    /// and stops one when `scale_down_idle_secs` passed in which one fewer would have done.
    #[serde(default)]
    pub max_replicas: Option<usize>,
    /// Autoscaling: the fewest local workers (default 1); needs `max_replicas`.
    #[serde(default)]
    pub min_replicas: Option<usize>,
    /// Autoscaling: calls in flight or waiting per replica the pool aims at (default 1, right
    /// for a CPU-bound plugin; raise it for one that serves many calls at once).
    #[serde(default)]
    pub target_in_flight: Option<u32>,
    /// Autoscaling: seconds in which one replica fewer would have carried the load before one
    /// is stopped (default 30).
    #[serde(default)]
    pub scale_down_idle_secs: Option<u64>,
    /// Remote workers to attach to (`https://HOST:PORT`, or `tcp://` on loopback): one URL or
    /// a list; each address a URL's host resolves to is one more replica of the pool.
    #[serde(default)]
    pub attach: Option<AttachList>,
    /// A file holding the remote workers' token (relative to the manifest's directory).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// An environment variable of the host holding the remote workers' token.
    #[serde(default)]
    pub token_env: Option<String>,
    /// The CA certificate (PEM) remote workers' certificates must chain to.
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
    /// A client certificate (PEM) presented to remote workers (mutual TLS), with `tls_key`.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of `tls_cert`.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// The name checked in remote workers' certificates. Default: each URL's host.
    #[serde(default)]
    pub tls_server_name: Option<String>,
    /// How often the names `attach` uses are resolved again (a headless Service's pods come
    /// and go), e.g. `"10s"`; default 10 s; `"0s"` resolves only when the pool starts.
    #[serde(default)]
    pub resolve_every: Option<String>,
    /// Allow plain `tcp://` attach to addresses other than loopback (calls and the token then
    /// cross the network unencrypted). Default false.
    #[serde(default)]
    pub insecure: bool,
    /// Host events delivered to the plugin (`POST /v1/events`): lifecycle and task event
    /// names (`loaded`, `unloaded`, `crashed`, `task_failed`, …; a `plugin_` prefix is
    /// optional). Its worker must handle each (`plugvisor_worker::Events`).
    #[serde(default)]
    pub hooks: Vec<String>,
    /// Supervision knobs.
    #[serde(default)]
    pub supervision: SupervisionManifest,
    /// Confinement of the worker; present means on (`[sandbox]`, every field optional).
    #[serde(default)]
    pub sandbox: Option<SandboxManifest>,
    /// How `plugvisor serve` mounts the plugin's HTTP routes (`[http]`).
    #[serde(default)]
    pub http: HttpManifest,
    /// Where and in what order a plugin of kind `middleware` wraps host requests
    /// (`[middleware]`; required for that kind, refused for the others).
    #[serde(default)]
    pub middleware: Option<crate::middleware::MiddlewareManifest>,
    /// The plugin's own health check: how often, how long, what a `fail` does (`[health]`).
    #[serde(default)]
    pub health: crate::plugin_health::HealthManifest,
    /// Calls the manager makes on a schedule (`[[tasks]]`).
    #[serde(default)]
    pub tasks: Vec<crate::tasks::TaskManifest>,
    /// Static assets shown on the status page (`ui = { dir, mount_point }`); required for
    /// kind `ui` (see [`crate::ui::UiManifest`]).
    #[serde(default)]
    pub ui: Option<crate::ui::UiManifest>,
}

/// `attach` as written: one URL or a list of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AttachList {
    /// `attach = "https://host:port"`.
    One(String),
    /// `attach = ["https://a:7443", "https://b:7443"]`.
    Many(Vec<String>),
}

impl AttachList {
    /// The URLs, in order.
    pub fn urls(&self) -> &[String] {
        match self {
            Self::One(url) => std::slice::from_ref(url),
            Self::Many(urls) => urls,
        }
    }
}

impl Manifest {
    /// How often to re-resolve the names of `attach` (`None`: no name to resolve, or
    /// `resolve_every = "0s"`).
    pub fn resolve_interval(&self) -> Option<Duration> {
        let by_name = self.attach.as_ref()?.urls().iter().any(|url| {
            plugvisor_host::Attach::parse(url, "-")
                .is_ok_and(|a| a.host().parse::<std::net::IpAddr>().is_err())
        });
        let every = match &self.resolve_every {
            Some(text) => humantime::parse_duration(text).ok()?,
            None => Duration::from_secs(10),
        };
        (by_name && !every.is_zero()).then_some(every)
    }
}

/// The rules of the remote-worker keys: a token, TLS for `https://`, plain `tcp://` only for
/// loopback unless `insecure = true`; the error names its key.
fn check_attach(m: &Manifest) -> Result<(), (Option<&'static str>, String)> {
    let Some(list) = &m.attach else {
        return no_stray_attach_keys(m);
    };
    if list.urls().is_empty() {
        return Err((Some("attach"), "attach: the list is empty".to_owned()));
    }
    if let Some(every) = &m.resolve_every {
        humantime::parse_duration(every).map_err(|e| {
            (
                Some("resolve_every"),
                format!("resolve_every: {every:?}: {e}"),
            )
        })?;
    }
    for url in list.urls() {
        let attach =
            plugvisor_host::Attach::parse(url, "-").map_err(|e| (Some("attach"), e.to_string()))?;
        if attach.is_tls() && m.tls_ca.is_none() {
            let why = format!("attach: {url} is https, so tls_ca (the CA file that signed the worker's certificate) is required");
            return Err((Some("tls_ca"), why));
        }
        if !attach.is_tls() && !attach.is_loopback() && !m.insecure {
            let why = format!("attach: {url} is plain TCP to another machine: use https:// (with tls_ca), or set insecure = true to send calls and the token unencrypted");
            return Err((Some("attach"), why));
        }
    }
    match (&m.token_file, &m.token_env) {
        (None, None) => Err((
            Some("attach"),
            "attach needs the worker's token: token_file = \"…\" or token_env = \"NAME\"".into(),
        )),
        (Some(_), Some(_)) => Err((
            Some("token_env"),
            "give token_file or token_env, not both".into(),
        )),
        _ if m.tls_cert.is_some() != m.tls_key.is_some() => Err((
            Some("tls_cert"),
            "tls_cert and tls_key (the client certificate for mutual TLS) go together".into(),
        )),
        _ => Ok(()),
    }
}

/// Without `attach`, the keys that only mean something with it are mistakes.
fn no_stray_attach_keys(m: &Manifest) -> Result<(), (Option<&'static str>, String)> {
    let stray = [
        ("token_file", m.token_file.is_some()),
        ("token_env", m.token_env.is_some()),
        ("tls_ca", m.tls_ca.is_some()),
        ("tls_cert", m.tls_cert.is_some()),
        ("tls_key", m.tls_key.is_some()),
        ("tls_server_name", m.tls_server_name.is_some()),
        ("resolve_every", m.resolve_every.is_some()),
    ];
    match stray.iter().find(|(_, set)| *set) {
        Some((key, _)) => Err((Some(key), format!("{key} is only used with attach"))),
        None => Ok(()),
    }
}

/// The `[http]` table: where and how the plugin's routes are mounted.
///
/// ```toml
/// [http]
/// prefix = "/plugins/echo"   # the default: /plugins/<name>; never /api/… or /ui/…
/// max_body_mib = 16          # larger request bodies get 413
/// timeout_secs = 30          # the answer's head must come within this
/// public = false             # true: no API token needed for these routes
///
/// [[http.routes]]            # per-route limits, first match wins
/// path = "/upload"           # a route pattern: literals, {name}, a last {*rest}
/// method = "POST"            # optional
/// max_body_mib = 1024
/// timeout_secs = 600
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpManifest {
    /// Where the routes are mounted (default `/plugins/<name>`).
    #[serde(default)]
    pub prefix: Option<String>,
    /// Largest request body, MiB (default 16).
    #[serde(default)]
    pub max_body_mib: Option<u64>,
    /// Seconds the answer's head may take (default 30).
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    /// Routes open without the API token (default false: they need it when one is set).
    #[serde(default)]
    pub public: bool,
    /// Limits of particular routes (`[[http.routes]]`), over the plugin's own.
    #[serde(default)]
    pub routes: Vec<RouteLimits>,
}

/// `[[http.routes]]`: the limits of the routes whose pattern (and method) match.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteLimits {
    /// A route pattern below the prefix, as the plugin declares it (`/items/{id}`).
    pub path: String,
    /// Only this method (any when absent).
    #[serde(default)]
    pub method: Option<String>,
    /// Largest request body, MiB.
    #[serde(default)]
    pub max_body_mib: Option<u64>,
    /// Seconds the answer's head may take.
    #[serde(default)]
    pub timeout_secs: Option<u64>,
}

/// Default `max_body_mib` of plugin routes.
pub const DEFAULT_ROUTE_BODY_MIB: u64 = 16;
/// Default `timeout_secs` of plugin routes.
pub const DEFAULT_ROUTE_TIMEOUT_SECS: u64 = 30;
/// Prefixes that belong to the host.
const RESERVED_PREFIXES: [&str; 4] = ["/api", "/ui", "/metrics", "/healthz"];

impl HttpManifest {
    /// The mount point of plugin `name`'s routes.
    pub fn prefix_of(&self, name: &str) -> String {
        self.prefix
            .clone()
            .unwrap_or_else(|| format!("/plugins/{name}"))
    }

    /// The largest request body of a `method` request to `path` (below the prefix), in bytes.
    pub fn max_body(&self, method: &str, path: &str) -> u64 {
        let route = self.limits_of(method, path).and_then(|r| r.max_body_mib);
        route
            .or(self.max_body_mib)
            .unwrap_or(DEFAULT_ROUTE_BODY_MIB)
            .saturating_mul(1 << 20)
    }

    /// How long the answer's head of a `method` request to `path` may take.
    pub fn timeout(&self, method: &str, path: &str) -> Duration {
        let route = self.limits_of(method, path).and_then(|r| r.timeout_secs);
        let secs = route.or(self.timeout_secs);
        Duration::from_secs(secs.unwrap_or(DEFAULT_ROUTE_TIMEOUT_SECS))
    }

    /// The first `[[http.routes]]` entry for `method` and `path`.
    fn limits_of(&self, method: &str, path: &str) -> Option<&RouteLimits> {
        self.routes.iter().find(|r| {
            let method_ok = r
                .method
                .as_deref()
                .is_none_or(|m| m.eq_ignore_ascii_case(method));
            method_ok && plugvisor_proto::wire::route_params(&r.path, path).is_some()
        })
    }

    fn check(&self) -> Result<(), (Option<&'static str>, String)> {
        if let Some(bad) = self.routes.iter().find(|r| !r.path.starts_with('/')) {
            let why = format!("[[http.routes]] path = {:?}: must start with '/'", bad.path);
            return Err((Some("path"), why));
        }
        let Some(prefix) = &self.prefix else {
            return Ok(());
        };
        let segments_ok = prefix.len() > 1
            && prefix.starts_with('/')
            && !prefix.ends_with('/')
            && prefix[1..].split('/').all(|s| {
                !s.is_empty()
                    && s != "."
                    && s != ".."
                    && s.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.~".contains(c))
            });
        if !segments_ok {
            let why = format!(
                "prefix = {prefix:?}: must be /segment[/segment…] of letters, digits, '-', '_', '.', '~'"
            );
            return Err((Some("prefix"), why));
        }
        if let Some(reserved) = RESERVED_PREFIXES
            .iter()
            .find(|r| under(prefix, r) || under(r, prefix))
        {
            let why = format!("prefix = {prefix:?}: {reserved} belongs to the host");
            return Err((Some("prefix"), why));
        }
        Ok(())
    }
}

/// True when `path` is `prefix` or lies beneath it (segment-wise).
pub fn under(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The largest `pids` (the kernel's own `pid_max` limit).
const MAX_PIDS: u64 = 1 << 22;

/// The `[sandbox]` table.
///
/// ```toml
/// [sandbox]                  # present = on
/// filesystem = "strict"      # "strict" (default) | "off"
/// read = ["/opt/models"]     # extra read-only paths
/// write = ["/var/lib/myplugin"]
/// network = "none"           # "none" (default) | "loopback" | "host"
/// syscalls = "default"       # "default" | "off"
/// memory_mib = 256           # cgroup memory limit; past it: crash cause memory_limit
/// pids = 64                  # cgroup pids.max: a fork bomb stays inside
/// user = "nobody"            # only when the host runs as root
/// cpu_seconds = 600
/// allow_degraded = false     # run even if the kernel lacks a requested protection
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxManifest {
    /// `strict` (default) or `off`.
    #[serde(default)]
    pub filesystem: Option<SandboxFilesystem>,
    /// Extra paths the worker may read.
    #[serde(default)]
    pub read: Vec<PathBuf>,
    /// Extra paths the worker may write.
    #[serde(default)]
    pub write: Vec<PathBuf>,
    /// `none` (default), `loopback` or `host`.
    #[serde(default)]
    pub network: Option<SandboxNetwork>,
    /// `default` or `off`.
    #[serde(default)]
    pub syscalls: Option<SandboxSyscalls>,
    /// Memory limit in MiB (a cgroup's).
    #[serde(default)]
    pub memory_mib: Option<u64>,
    /// Most processes and threads (a cgroup's `pids.max`).
    #[serde(default)]
    pub pids: Option<u64>,
    /// The user to run as (name or number); needs a host running as root.
    #[serde(default)]
    pub user: Option<String>,
    /// CPU seconds before the worker is killed (`cpu_limit`).
    #[serde(default)]
    pub cpu_seconds: Option<u64>,
    /// Run even when the kernel cannot give a requested protection.
    #[serde(default)]
    pub allow_degraded: bool,
}

/// `filesystem` of `[sandbox]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SandboxFilesystem {
    /// Landlock confinement.
    Strict,
    /// None.
    Off,
}

/// `network` of `[sandbox]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SandboxNetwork {
    /// An empty network namespace.
    None,
    /// A network namespace of its own with only its loopback up.
    Loopback,
    /// The host's network.
    Host,
}

/// `syscalls` of `[sandbox]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SandboxSyscalls {
    /// The default deny-list.
    Default,
    /// No filter.
    Off,
}

impl SandboxManifest {
    /// Refuses limits that cannot work, naming the key.
    fn check(&self) -> Result<(), (Option<&'static str>, String)> {
        if let Some(m) = self
            .memory_mib
            .filter(|m| *m == 0 || m.checked_mul(1 << 20).is_none())
        {
            let why = format!("memory_mib = {m}: must be at least 1 and count in bytes");
            return Err((Some("memory_mib"), why));
        }
        if let Some(p) = self.pids.filter(|p| *p == 0 || *p > MAX_PIDS) {
            let why = format!("pids = {p}: must be between 1 and {MAX_PIDS} (threads count too)");
            return Err((Some("pids"), why));
        }
        if self.user.as_deref().is_some_and(|u| u.trim().is_empty()) {
            return Err((Some("user"), "user: must name a user".to_owned()));
        }
        Ok(())
    }

    /// The engine's sandbox this table describes.
    pub fn to_sandbox(&self) -> Sandbox {
        Sandbox {
            filesystem: match self.filesystem {
                Some(SandboxFilesystem::Off) => FsPolicy::Off,
                _ => FsPolicy::Strict,
            },
            read: self.read.clone(),
            write: self.write.clone(),
            network: match self.network {
                Some(SandboxNetwork::Host) => NetPolicy::Host,
                Some(SandboxNetwork::Loopback) => NetPolicy::Loopback,
                _ => NetPolicy::None,
            },
            syscalls: match self.syscalls {
                Some(SandboxSyscalls::Off) => SyscallPolicy::Off,
                _ => SyscallPolicy::Default,
            },
            memory_mib: self.memory_mib,
            pids: self.pids,
            user: self.user.clone(),
            allow_degraded: self.allow_degraded,
        }
    }
}

/// The `[supervision]` table: every knob optional, defaults as in [`SupervisorConfig`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupervisionManifest {
    /// `always`, `on_failure` or `never`.
    pub restart: Option<RestartPolicy>,
    /// Restarts allowed within the window.
    pub max_restarts: Option<u32>,
    /// The restart window, seconds.
    pub restart_window_secs: Option<u64>,
    /// First backoff delay, milliseconds.
    pub backoff_initial_ms: Option<u64>,
    /// Largest backoff delay, milliseconds.
    pub backoff_max_ms: Option<u64>,
    /// Start (handshake) timeout, seconds.
    pub start_timeout_secs: Option<u64>,
    /// Stop grace period, milliseconds.
    pub stop_grace_ms: Option<u64>,
    /// Health probe interval, milliseconds (0 turns probing off).
    pub health_interval_ms: Option<u64>,
    /// Default call timeout, milliseconds.
    pub call_timeout_ms: Option<u64>,
    /// Calls running at once.
    pub max_concurrent: Option<usize>,
    /// Retry calls after a crash (the plugin must be idempotent).
    pub idempotent: Option<bool>,
    /// Recycle after this many calls.
    pub recycle_after_calls: Option<u64>,
    /// Recycle above this resident memory, MiB.
    pub rss_limit_mib: Option<u64>,
}

/// The most calls a worker may run at once (far above any real need; the supervisor's
/// semaphore cannot hold more than 2^61 permits).
pub const MAX_CONCURRENT: usize = 1 << 20;

impl SupervisionManifest {
    /// Values that parse but cannot work.
    fn check(&self) -> Result<(), (Option<&'static str>, String)> {
        if let Some(n) = self
            .max_concurrent
            .filter(|n| *n == 0 || *n > MAX_CONCURRENT)
        {
            let why = format!("max_concurrent = {n}: must be between 1 and {MAX_CONCURRENT}");
            return Err((Some("max_concurrent"), why));
        }
        if let Some(m) = self
            .rss_limit_mib
            .filter(|m| m.checked_mul(1 << 20).is_none())
        {
            let why = format!("rss_limit_mib = {m}: too large to count in bytes");
            return Err((Some("rss_limit_mib"), why));
        }
        Ok(())
    }

    /// The supervisor configuration these knobs describe.
    pub fn to_config(&self) -> SupervisorConfig {
        let mut c = SupervisorConfig::default();
        let ms = Duration::from_millis;
        if let Some(v) = self.restart {
            c.restart = v;
        }
        if let Some(v) = self.max_restarts {
            c.max_restarts = v;
        }
        if let Some(v) = self.restart_window_secs {
            c.restart_window = Duration::from_secs(v);
        }
        if let Some(v) = self.backoff_initial_ms {
            c.backoff.initial = ms(v);
        }
        if let Some(v) = self.backoff_max_ms {
            c.backoff.max = ms(v);
        }
        match self.health_interval_ms {
            Some(0) => c.health = None,
            Some(v) => {
                c.health = Some(HealthConfig {
                    interval: ms(v),
                    ..HealthConfig::default()
                })
            }
            None => {}
        }
        c.call_timeout = self.call_timeout_ms.map(ms).or(c.call_timeout);
        c.max_concurrent = self.max_concurrent.unwrap_or(c.max_concurrent);
        c.idempotent = self.idempotent.unwrap_or(c.idempotent);
        c.recycle_after_calls = self.recycle_after_calls;
        // `check` refused values whose bytes overflow.
        c.rss_limit = self.rss_limit_mib.and_then(|m| m.checked_mul(1 << 20));
        c
    }
}

/// A manifest that could not be used: which file, where, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{}{}: {reason}", file.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct ManifestError {
    /// The manifest file.
    pub file: PathBuf,
    /// The line the problem is on, when known.
    pub line: Option<usize>,
    /// What is wrong.
    pub reason: String,
}

/// A parsed manifest and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Discovered {
    /// The manifest.
    pub manifest: Manifest,
    /// Its file; for an entry point, its distribution's metadata directory (or the
    /// interpreter, when the distribution has none on disk).
    pub file: PathBuf,
    /// The installed Python package's entry point that describes the plugin, when no manifest
    /// file does (`serve --python`, [`crate::entry_points`]).
    pub entry_point: Option<EntryPoint>,
}

impl Discovered {
    /// A plugin described by manifest `file`.
    pub fn from_file(manifest: Manifest, file: PathBuf) -> Self {
        Self {
            manifest,
            file,
            entry_point: None,
        }
    }

    /// The manifest's directory: what relative paths in it are relative to.
    pub fn dir(&self) -> &Path {
        self.file.parent().unwrap_or(Path::new("."))
    }

    /// Where it was described, for people: the manifest file, or
    /// `entry point NAME (DIST==VERSION in PYTHON)`.
    pub fn source(&self) -> String {
        match &self.entry_point {
            Some(ep) => ep.describe(),
            None => self.file.display().to_string(),
        }
    }
}

impl Manifest {
    /// Parses manifest text; `file` is only used in errors.
    ///
    /// # Errors
    /// [`ManifestError`] with the line of the problem: bad TOML, an unknown key, a missing
    /// field, a wrong type, or an invalid name.
    pub fn parse(text: &str, file: &Path) -> Result<Self, ManifestError> {
        let manifest: Manifest = toml::from_str(text).map_err(|e| ManifestError {
            file: file.to_path_buf(),
            line: e.span().map(|span| line_of(text, span.start)),
            reason: e.message().trim().to_owned(),
        })?;
        manifest.check().map_err(|(key, reason)| ManifestError {
            file: file.to_path_buf(),
            line: key.and_then(|k| line_of_key(text, k)),
            reason,
        })?;
        Ok(manifest)
    }

    /// Parses the text of manifest `file` (as [`Manifest::parse`]) and checks what it names
    /// on disk: a `ui` table's assets directory must exist and hold `index.html`.
    ///
    /// # Errors
    /// As [`Manifest::parse`], and a missing assets directory or `index.html`.
    pub fn parse_file(text: &str, file: &Path) -> Result<Self, ManifestError> {
        let manifest = Self::parse(text, file)?;
        if let Some(ui) = &manifest.ui {
            ui.check_assets(file).map_err(|reason| ManifestError {
                file: file.to_path_buf(),
                line: line_of_key(text, "ui"),
                reason,
            })?;
        }
        Ok(manifest)
    }

    /// `self` if it keeps the rules serde cannot express, else why not (for manifests that
    /// come from elsewhere than a file: [`crate::entry_points`]).
    pub(crate) fn checked(self) -> Result<Self, String> {
        match self.check() {
            Ok(()) => Ok(self),
            Err((_, reason)) => Err(reason),
        }
    }

    /// Rules serde cannot express; an error names the key it is about, when there is one.
    fn check(&self) -> Result<(), (Option<&'static str>, String)> {
        self.check_identity().map_err(|reason| (None, reason))?;
        self.check_services()?;
        if self.kind == PluginKind::Ui && self.ui.is_none() {
            return Err((Some("kind"), crate::ui::MISSING_UI.to_owned()));
        }
        if let Some(sandbox) = &self.sandbox {
            sandbox.check()?;
        }
        self.http.check()?;
        self.check_kind()?;
        crate::tasks::check_all(&self.tasks)?;
        self.check_hooks()?;
        self.check_replicas()?;
        check_attach(self)?;
        self.supervision.check()
    }

    /// `replicas` is 1 to [`MAX_REPLICAS`]; the autoscaling keys make sense together.
    fn check_replicas(&self) -> Result<(), (Option<&'static str>, String)> {
        if !(1..=MAX_REPLICAS).contains(&self.replicas) {
            return Err((
                Some("replicas"),
                format!(
                    "replicas: {} is out of range; a plugin runs 1 to {MAX_REPLICAS} workers",
                    self.replicas
                ),
            ));
        }
        self.check_scaling().map_err(|(key, why)| (Some(key), why))
    }

    fn check_scaling(&self) -> Result<(), (&'static str, String)> {
        let Some(max) = self.max_replicas else {
            let stray = [
                ("min_replicas", self.min_replicas.is_some()),
                ("target_in_flight", self.target_in_flight.is_some()),
                ("scale_down_idle_secs", self.scale_down_idle_secs.is_some()),
            ];
            return match stray.iter().find(|(_, set)| *set) {
                Some((key, _)) => Err((key, format!("{key} needs max_replicas (autoscaling)"))),
                None => Ok(()),
            };
        };
        let min = self.min_replicas.unwrap_or(1);
        if !(1..=MAX_REPLICAS).contains(&max) || !(1..=max).contains(&min) {
            return Err((
                "max_replicas",
                format!(
                    "min_replicas {min} and max_replicas {max}: need 1 <= min_replicas <= \
                     max_replicas <= {MAX_REPLICAS}"
                ),
            ));
        }
        if self.command.trim().is_empty() {
            return Err((
                "max_replicas",
                "max_replicas scales local workers, and this plugin has no command".to_owned(),
            ));
        }
        match (self.target_in_flight, self.scale_down_idle_secs) {
            (Some(0), _) => Err((
                "target_in_flight",
                "target_in_flight must be at least 1".into(),
            )),
            (_, Some(0)) => Err((
                "scale_down_idle_secs",
                "scale_down_idle_secs must be at least 1".into(),
            )),
            _ => Ok(()),
        }
    }

    /// The local workers the plugin starts with: `replicas`, within `min_replicas` and
    /// `max_replicas` when it scales.
    pub fn start_replicas(&self) -> usize {
        match self.scaling() {
            Some(s) => self.replicas.clamp(s.min, s.max),
            None => self.replicas,
        }
    }

    /// Its autoscaling, when `max_replicas` is set.
    pub fn scaling(&self) -> Option<Scaling> {
        let max = self.max_replicas?;
        Some(Scaling {
            min: self.min_replicas.unwrap_or(1),
            max,
            target_in_flight: self.target_in_flight.unwrap_or(1).max(1),
            idle: Duration::from_secs(self.scale_down_idle_secs.unwrap_or(30).max(1)),
        })
    }

    /// Every `hooks` entry names an event the host emits.
    fn check_hooks(&self) -> Result<(), (Option<&'static str>, String)> {
        match self.hooks.iter().find(|h| EventKind::known(h).is_none()) {
            None => Ok(()),
            Some(unknown) => Err((
                Some("hooks"),
                format!(
                    "hooks: unknown event {unknown:?}; events are {} (a plugin_ prefix is \
                     optional)",
                    EventKind::NAMES.join(", ")
                ),
            )),
        }
    }

    /// The events `hooks` subscribes to, by the names the host gives them (`plugin_loaded`
    /// is `loaded`), each once, in the manifest's order.
    pub fn hook_events(&self) -> Vec<&'static str> {
        let mut events: Vec<&'static str> = Vec::new();
        for name in self.hooks.iter().filter_map(|h| EventKind::known(h)) {
            if !events.contains(&name) {
                events.push(name);
            }
        }
        events
    }

    /// A kind's contract, as far as the manifest can show it: a `middleware` has a
    /// `[middleware]` table (and nothing else has one). That the worker serves hooks is checked
    /// when it starts.
    fn check_kind(&self) -> Result<(), (Option<&'static str>, String)> {
        match (&self.middleware, self.kind) {
            (Some(m), PluginKind::Middleware) => m.check(),
            (None, PluginKind::Middleware) => Err((
                Some("kind"),
                format!(
                    "kind = \"middleware\" needs a [middleware] table with paths (globs over {})",
                    crate::middleware::COVERABLE
                ),
            )),
            (Some(_), kind) => Err((
                Some("middleware"),
                format!(
                    "[middleware] is only for kind = \"middleware\", not {:?}",
                    kind.as_str()
                ),
            )),
            (None, _) => Ok(()),
        }
    }

    fn check_identity(&self) -> Result<(), String> {
        let valid = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        };
        if !valid(&self.name) {
            return Err(format!(
                "name {:?} must be non-empty letters, digits, '-' or '_'",
                self.name
            ));
        }
        if self.command.trim().is_empty() && self.attach.is_none() {
            return Err("command must not be empty (or attach to remote workers)".to_owned());
        }
        if self.requires.iter().any(|r| self.provides.contains(r)) {
            return Err(format!(
                "{} requires a service it provides itself",
                self.name
            ));
        }
        Ok(())
    }

    fn check_services(&self) -> Result<(), (Option<&'static str>, String)> {
        if let Some(s) = self
            .optional_requires
            .iter()
            .find(|s| self.provides.contains(s))
        {
            return Err((
                Some("optional_requires"),
                format!(
                    "{} optionally requires service {s:?}, which it provides itself",
                    self.name
                ),
            ));
        }
        if let Some(s) = self
            .optional_requires
            .iter()
            .find(|s| self.requires.contains(s))
        {
            return Err((
                Some("optional_requires"),
                format!("service {s:?} is in both requires and optional_requires"),
            ));
        }
        Ok(())
    }

    /// Its services, for dependency order ([`crate::deps`]).
    pub fn node(&self) -> crate::deps::Node<'_> {
        crate::deps::Node {
            name: &self.name,
            provides: &self.provides,
            requires: &self.requires,
            optional: &self.optional_requires,
        }
    }

    /// Whether the plugin calls services (its worker gets the host's service endpoint).
    pub fn calls_services(&self) -> bool {
        !self.requires.is_empty() || !self.optional_requires.is_empty()
    }

    /// Whether the plugin may call `service`, and if so whether it is required.
    pub fn may_call(&self, service: &str) -> Option<bool> {
        if self.requires.iter().any(|s| s == service) {
            Some(true)
        } else if self.optional_requires.iter().any(|s| s == service) {
            Some(false)
        } else {
            None
        }
    }

    /// The manifest's `[config]` as JSON.
    pub fn config_json(&self) -> serde_json::Value {
        match &self.config {
            Some(table) => serde_json::to_value(table).unwrap_or_default(),
            None => serde_json::json!({}),
        }
    }
}

/// The line of the first `key =` in `text`.
fn line_of_key(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            let l = l.trim_start();
            l.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map(|i| i + 1)
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Reads every `*.toml` in `dir`, in name order. Good manifests and the problems of bad ones
/// are both returned: one broken manifest never hides the others. Of two manifests with one
/// `name`, the first (in file name order) is used and the second is a problem naming both.
pub fn discover(dir: &Path) -> (Vec<Discovered>, Vec<ManifestError>) {
    let mut found = Vec::new();
    let mut errors = Vec::new();
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect(),
        Err(e) => {
            errors.push(ManifestError {
                file: dir.to_path_buf(),
                line: None,
                reason: format!("cannot read the directory: {e}"),
            });
            return (found, errors);
        }
    };
    files.sort();
    for file in files {
        let parsed = std::fs::read_to_string(&file)
            .map_err(|e| ManifestError {
                file: file.clone(),
                line: None,
                reason: format!("cannot read: {e}"),
            })
            .and_then(|text| {
                let manifest = Manifest::parse_file(&text, &file)?;
                Ok((manifest, line_of_key(&text, "name")))
            });
        match parsed {
            Ok((manifest, name_line)) => {
                let first = found.iter().find(|d| d.manifest.name == manifest.name);
                match first {
                    Some(first) => {
                        errors.push(duplicate(&manifest.name, &first.file, file, name_line))
                    }
                    None => found.push(Discovered::from_file(manifest, file)),
                }
            }
            Err(e) => errors.push(e),
        }
    }
    (found, errors)
}

/// The problem of `file`, a second manifest named `name` after `first` (which keeps it).
fn duplicate(name: &str, first: &Path, file: PathBuf, line: Option<usize>) -> ManifestError {
    ManifestError {
        reason: format!(
            "plugin name {name:?} is already used by {}; this manifest is ignored (names must be \
             unique)",
            first.display()
        ),
        file,
        line,
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn kind_names_are_the_serialized_names() {
        for kind in PluginKind::ALL {
            let name = serde_json::to_value(kind).unwrap();
            assert_eq!(name, serde_json::json!(kind.as_str()));
            assert_eq!(PluginKind::parse(kind.as_str()), Ok(kind));
        }
        assert!(PluginKind::parse("gadget")
            .unwrap_err()
            .contains("auth_provider"));
    }
    use super::*;

    const GOOD: &str = r#"
name = "echo"
version = "0.1.0"
command = "echo-worker"
provides = ["text"]

[config]
mode = "upper"

[supervision]
max_restarts = 2
rss_limit_mib = 64
"#;

    #[test]
    fn parses_a_manifest_and_its_knobs() {
        let m = Manifest::parse(GOOD, Path::new("echo.toml")).unwrap();
        assert_eq!(m.name, "echo");
        assert_eq!(m.start, StartMode::Eager);
        assert_eq!(m.config_json(), serde_json::json!({"mode": "upper"}));
        let c = m.supervision.to_config();
        assert_eq!(c.max_restarts, 2);
        assert_eq!(c.rss_limit, Some(64 << 20));
    }

    #[test]
    fn errors_name_the_file_the_line_and_the_reason() {
        let bad = GOOD.replace("max_restarts = 2", "max_restarts = \"two\"");
        let err = Manifest::parse(&bad, Path::new("m/echo.toml")).unwrap_err();
        assert_eq!(err.line, Some(11));
        assert!(err.to_string().starts_with("m/echo.toml:11: "), "{err}");
        let unknown = GOOD.replace("command =", "comand =");
        let err = Manifest::parse(&unknown, Path::new("x.toml")).unwrap_err();
        assert!(err.reason.contains("comand"), "{err}");
        let bad_name = GOOD.replace("\"echo\"", "\"e cho\"");
        assert!(Manifest::parse(&bad_name, Path::new("x.toml")).is_err());
    }

    /// DEFECTS.md #3 and #10: values that parse but used to panic `serve` (a semaphore of
    /// 2^63 permits) or wrap around (`rss_limit_mib << 20`).
    #[test]
    fn limits_that_cannot_work_are_refused_with_their_line() {
        let huge = GOOD.replace("max_restarts = 2", "max_concurrent = 9223372036854775807");
        let err = Manifest::parse(&huge, Path::new("big.toml")).unwrap_err();
        assert_eq!(err.line, Some(11), "{err}");
        assert!(err.reason.contains("max_concurrent"), "{err}");
        let zero = GOOD.replace("max_restarts = 2", "max_concurrent = 0");
        assert!(Manifest::parse(&zero, Path::new("z.toml")).is_err());
        let wrap = GOOD.replace("rss_limit_mib = 64", "rss_limit_mib = 17592186044417");
        let err = Manifest::parse(&wrap, Path::new("w.toml")).unwrap_err();
        assert_eq!(err.line, Some(12), "{err}");
        assert!(err.reason.contains("rss_limit_mib"), "{err}");
        // Positive control: the largest allowed values parse and keep their meaning.
        let fine = GOOD
            .replace(
                "max_restarts = 2",
                &format!("max_concurrent = {MAX_CONCURRENT}"),
            )
            .replace("rss_limit_mib = 64", "rss_limit_mib = 1048576");
        let c = Manifest::parse(&fine, Path::new("f.toml"))
            .unwrap()
            .supervision
            .to_config();
        assert_eq!(c.max_concurrent, MAX_CONCURRENT);
        assert_eq!(c.rss_limit, Some(1 << 40));
    }

    #[test]
    fn hooks_name_known_events_and_an_unknown_one_is_an_error_with_its_line() {
        let hooked = GOOD.replace(
            "provides = [\"text\"]",
            "provides = [\"text\"]\nhooks = [\"plugin_loaded\", \"unloaded\", \"loaded\", \"task_failed\"]",
        );
        let m = Manifest::parse(&hooked, Path::new("h.toml")).unwrap();
        assert_eq!(m.hook_events(), ["loaded", "unloaded", "task_failed"]);
        let typo = hooked.replace("\"unloaded\"", "\"plugin_unlaoded\"");
        let err = Manifest::parse(&typo, Path::new("m/h.toml")).unwrap_err();
        assert_eq!(err.line, Some(6), "{err}");
        assert!(
            err.to_string()
                .starts_with("m/h.toml:6: hooks: unknown event \"plugin_unlaoded\""),
            "{err}"
        );
        assert!(
            err.reason.contains("task_failed"),
            "the known names are listed: {err}"
        );
        let star = hooked.replace("\"unloaded\"", "\"*\"");
        assert!(Manifest::parse(&star, Path::new("h.toml")).is_err());
        assert!(Manifest::parse(GOOD, Path::new("h.toml"))
            .unwrap()
            .hook_events()
            .is_empty());
    }

    #[test]
    fn a_ui_plugin_must_ship_its_assets() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("panel.toml");
        let bare = GOOD.replace("provides = [\"text\"]", "kind = \"ui\"");
        let err = Manifest::parse_file(&bare, &file).unwrap_err();
        assert_eq!(err.line, Some(5), "{err}");
        assert!(
            err.reason.contains("kind = \"ui\" needs its assets"),
            "{err}"
        );
        let with_ui = bare.replace(
            "kind = \"ui\"",
            "kind = \"ui\"\nui = { dir = \"panel\", mount_point = \"toolbar\" }",
        );
        let err = Manifest::parse_file(&with_ui, &file).unwrap_err();
        assert_eq!(err.line, Some(6), "{err}");
        assert!(err.to_string().contains("panel.toml:6: ui.dir"), "{err}");
        assert!(err.reason.contains("does not exist"), "{err}");
        std::fs::create_dir(dir.path().join("panel")).unwrap();
        std::fs::write(dir.path().join("panel/index.html"), "<p>hi</p>").unwrap();
        let m = Manifest::parse_file(&with_ui, &file).unwrap();
        let ui = m.ui.unwrap();
        assert_eq!(ui.mount_point, crate::ui::MountPoint::Toolbar);
        // Another kind may have a panel too.
        let tool = with_ui.replace("kind = \"ui\"", "kind = \"tool\"");
        assert!(Manifest::parse_file(&tool, &file).unwrap().ui.is_some());
        let odd = with_ui.replace("\"toolbar\"", "\"footer\"");
        assert!(Manifest::parse_file(&odd, &file).is_err());
    }

    #[test]
    fn discovery_keeps_good_manifests_beside_a_broken_one() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.toml"), GOOD).unwrap();
        std::fs::write(dir.path().join("b.toml"), "name = ").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        let (found, errors) = discover(dir.path());
        assert_eq!(found.len(), 1);
        assert_eq!(errors.len(), 1);
        assert!(errors[0].file.ends_with("b.toml"));
        assert_eq!(errors[0].line, Some(1));
    }

    #[test]
    fn two_manifests_with_one_name_are_a_problem_naming_both_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.toml"), GOOD).unwrap();
        std::fs::write(dir.path().join("b.toml"), GOOD.replace("0.1.0", "2.0.0")).unwrap();
        let (found, errors) = discover(dir.path());
        assert_eq!(found.len(), 1, "the first file keeps the name");
        assert!(found[0].file.ends_with("a.toml"));
        assert_eq!(errors.len(), 1, "{errors:?}");
        let e = &errors[0];
        assert!(e.file.ends_with("b.toml"), "{e}");
        assert_eq!(e.line, Some(2), "{e}");
        assert!(e.reason.contains("a.toml"), "{e}");
    }
}
