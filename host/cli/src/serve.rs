//! `plugvisor serve`: load a manifest directory and serve the management REST API.

use crate::resolve::{existing_manifest_dirs, pythons, show_dirs};
use anyhow::{bail, Context};
use clap::Args;
use plugvisor_manager::api::{
    check_bind, serve_api, ApiOptions, BrowserPolicy, FileOptions, DEFAULT_MAX_BODY, DEFAULT_PORT,
    DEFAULT_READ_TIMEOUT,
};
use plugvisor_manager::{ManagerConfig, PluginManager};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Arguments of `plugvisor serve`.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Manifest directory, repeatable; a later directory's manifest replaces an earlier one's
    /// of the same name (default: $PLUGVISOR_PLUGINS, colon-separated directories, else
    /// ./plugins/manifests, else the bundled manifests of this build).
    #[arg(long, value_name = "DIR")]
    plugins: Vec<PathBuf>,
    /// A Python interpreter (e.g. a virtual environment's bin/python), repeatable: the entry
    /// points of the group `plugvisor.plugins` its installed packages declare are plugins too
    /// (it needs the plugvisor SDK); a manifest of the same name wins (default:
    /// $PLUGVISOR_PYTHON, colon-separated; the --config file's [discovery] python adds more).
    #[arg(long, value_name = "PATH")]
    python: Vec<PathBuf>,
    /// Address to listen on. Anything but loopback needs an API token.
    #[arg(long, default_value_t = SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)))]
    listen: SocketAddr,
    /// Host configuration file with `[plugins.<name>.config]` tables.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// File holding the API bearer token (or set PLUGVISOR_API_TOKEN).
    #[arg(long, value_name = "FILE")]
    api_token_file: Option<PathBuf>,
    /// Where bare worker names resolve (default: beside plugvisor).
    #[arg(long, value_name = "DIR")]
    worker_dir: Option<PathBuf>,
    #[command(flatten)]
    limits: ApiArgs,
}

/// What API clients may do: limits, files, browsers.
#[derive(Debug, Args)]
struct ApiArgs {
    /// A directory whose files API clients may name by path in `{"$file": …}` inputs
    /// (repeatable). None by default: clients upload files (POST /api/files).
    #[arg(long = "file-root", value_name = "DIR")]
    file_roots: Vec<PathBuf>,
    /// Largest JSON request body, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_BODY)]
    max_body: usize,
    /// Seconds a client may take to send a request (or pause within an upload).
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_READ_TIMEOUT.as_secs())]
    read_timeout_secs: u64,
    /// Largest upload, in MiB.
    #[arg(long, value_name = "MIB", default_value_t = FileOptions::default().max_upload >> 20)]
    max_upload_mib: u64,
    /// Seconds an unused upload or an unfetched download is kept.
    #[arg(long, value_name = "SECS", default_value_t = FileOptions::default().ttl.as_secs())]
    file_ttl_secs: u64,
    /// MiB of live uploads one client (IP address) may hold.
    #[arg(long, value_name = "MIB", default_value_t = FileOptions::default().quota_bytes >> 20)]
    upload_quota_mib: u64,
    /// A host name browsers may address the server by, besides IP addresses and localhost
    /// (repeatable).
    #[arg(long = "allow-host", value_name = "NAME")]
    allowed_hosts: Vec<String>,
    /// An origin whose web pages may call the API, e.g. http://localhost:3000 (repeatable).
    #[arg(long = "allow-origin", value_name = "ORIGIN")]
    allowed_origins: Vec<String>,
}

impl ApiArgs {
    /// The API options these arguments describe, with `token`.
    fn options(self, token: Option<String>) -> anyhow::Result<ApiOptions> {
        let mib = |n: u64| n.checked_mul(1 << 20).context("a size in MiB is too large");
        Ok(ApiOptions {
            token,
            max_body: self.max_body,
            read_timeout: Duration::from_secs(self.read_timeout_secs.max(1)),
            browser: BrowserPolicy {
                allowed_hosts: self.allowed_hosts,
                allowed_origins: self.allowed_origins,
            },
            files: FileOptions {
                roots: self.file_roots,
                max_upload: mib(self.max_upload_mib)?,
                ttl: Duration::from_secs(self.file_ttl_secs.max(1)),
                quota_bytes: mib(self.upload_quota_mib)?,
                ..FileOptions::default()
            },
        })
    }
}

/// Runs the server until SIGINT or SIGTERM, then stops every plugin.
pub(crate) async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let token = api_token(args.api_token_file.as_deref())?;
    check_bind(&args.listen, token.as_deref())?;
    for root in &args.limits.file_roots {
        if !root.is_dir() {
            bail!("--file-root {}: not a directory", root.display());
        }
    }
    let options = args.limits.options(token)?;
    // Bound before any worker starts: a port in use fails at once, with nothing to stop.
    let listener = listen(args.listen).await?;
    let dirs = existing_manifest_dirs(&args.plugins)?;
    let python = pythons(&args.python);
    let manager = PluginManager::new(ManagerConfig {
        manifest_dirs: dirs.clone(),
        worker_dir: args.worker_dir,
        host_config_file: args.config,
        python: python.clone(),
        ..ManagerConfig::default()
    })?;
    for problem in manager.manifest_errors() {
        let manifest = problem.file.extension().is_some_and(|x| x == "toml");
        let what = if manifest {
            "manifest"
        } else {
            "plugin source"
        };
        eprintln!("plugvisor: skipped {what}: {problem}");
    }
    for note in manager.overridden_entry_points() {
        eprintln!("plugvisor: note: {note}");
    }
    // Handlers in place before the banner: whoever reads it may send SIGTERM at once.
    let signals = Signals::install()?;
    let started = manager.start_all().await;
    let addr = listener.local_addr()?;
    eprintln!(
        "plugvisor: serving {} plugins from {}{} on http://{addr} (order: {}){}",
        started.loaded.len(),
        show_dirs(&dirs),
        entry_points_of(&python),
        started.loaded.join(", "),
        not_started(&started.failed)
    );
    let shutdown = CancellationToken::new();
    tokio::spawn(signals.stop_on_signal(shutdown.clone()));
    let served = serve_api(listener, manager.clone(), options, shutdown).await;
    manager.shutdown().await;
    served.context("the API server failed")
}

/// The API's listening socket on `addr`, or an error saying which address and why.
async fn listen(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => Ok(listener),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => bail!(
            "cannot listen on {addr}: the address is already in use (another server?); \
             choose another with --listen; no plugin was started"
        ),
        Err(e) => Err(e).with_context(|| format!("cannot listen on {addr}")),
    }
}

/// ` and the entry points of PYTHON, …` for the start-up line (empty without `--python`).
fn entry_points_of(python: &[PathBuf]) -> String {
    if python.is_empty() {
        return String::new();
    }
    format!(" and the entry points of {}", show_dirs(python))
}

/// The plugins that did not start, for the start-up line (each was logged with its reason).
fn not_started(failed: &std::collections::BTreeMap<String, String>) -> String {
    if failed.is_empty() {
        return String::new();
    }
    let names: Vec<&str> = failed.keys().map(String::as_str).collect();
    format!(
        "; not started: {} (see GET /api/plugins/status)",
        names.join(", ")
    )
}

fn api_token(file: Option<&std::path::Path>) -> anyhow::Result<Option<String>> {
    let token = match file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read --api-token-file {}", path.display()))?,
        ),
        None => std::env::var("PLUGVISOR_API_TOKEN").ok(),
    };
    match token.map(|t| t.trim().to_owned()) {
        Some(t) if t.is_empty() => bail!("the API token is empty"),
        other => Ok(other),
    }
}

/// SIGTERM and SIGINT, caught from the moment they are installed.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        })
    }

    async fn stop_on_signal(mut self, shutdown: CancellationToken) {
        use std::io::Write;
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
        // Cancel first, and never panic on a closed stderr (eprintln! would, and the server
        // would then never stop): a supervisor that closed our stderr still gets a clean stop.
        shutdown.cancel();
        let _ = writeln!(std::io::stderr(), "plugvisor: stopping");
    }
}
