//! `plugvisor serve`: load a manifest directory and serve the management REST API.

use crate::resolve::manifest_dir;
use anyhow::{bail, Context};
use clap::Args;
use plugvisor_manager::api::{check_bind, serve_api, ApiOptions, DEFAULT_PORT};
use plugvisor_manager::{ManagerConfig, PluginManager};
use std::net::SocketAddr;
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

/// Arguments of `plugvisor serve`.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Manifest directory (default: $PLUGVISOR_PLUGINS, else ./plugins/manifests, else the
    /// bundled manifests of this build).
    #[arg(long, value_name = "DIR")]
    plugins: Option<PathBuf>,
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
}

/// Runs the server until SIGINT or SIGTERM, then stops every plugin.
pub(crate) async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let token = api_token(args.api_token_file.as_deref())?;
    check_bind(&args.listen, token.as_deref())?;
    let dir = manifest_dir(args.plugins.as_deref())?;
    let manager = PluginManager::new(ManagerConfig {
        manifest_dirs: vec![dir.clone()],
        worker_dir: args.worker_dir,
        host_config_file: args.config,
        ..ManagerConfig::default()
    })?;
    for problem in manager.manifest_errors() {
        eprintln!("plugvisor: skipped manifest: {problem}");
    }
    let order = match manager.load_all().await {
        Ok(order) => order,
        Err(e) => {
            manager.shutdown().await;
            return Err(e).context("loading plugins");
        }
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    eprintln!(
        "plugvisor: serving {} plugins from {} on http://{addr} (order: {})",
        order.len(),
        dir.display(),
        order.join(", ")
    );
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    let options = ApiOptions {
        token,
        ..ApiOptions::default()
    };
    let served = serve_api(listener, manager.clone(), options, shutdown).await;
    manager.shutdown().await;
    served.context("the API server failed")
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

async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    eprintln!("plugvisor: stopping");
    shutdown.cancel();
}
