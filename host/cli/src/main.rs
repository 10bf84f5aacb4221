//! The `plugvisor` command: serve plugins over HTTP, call and stream them (embedded or through
//! a server), list, inspect and validate them, and run the demo.

mod call;
mod certs;
mod checks;
mod client;
mod conformance;
mod demo;
mod demo_api;
mod demo_pools;
mod demo_python;
mod demo_remote;
mod embedded;
mod manage;
mod resolve;
mod routes;
mod serve;

use clap::{CommandFactory, Parser, Subcommand};
use std::process::ExitCode;

/// Run plugins crash-isolated, each in its own worker process.
#[derive(Debug, Parser)]
#[command(name = "plugvisor", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Load the plugins of a manifest directory and manage them over a REST API. A plugin
    /// that cannot start is reported `failed` (GET /api/plugins/status) and the others serve.
    Serve(serve::ServeArgs),
    /// Call a plugin once and print its result as JSON.
    Call(call::CallArgs),
    /// Call a plugin's stream and print one JSON line per item as it arrives.
    Stream(call::CallArgs),
    /// List plugins: name, version, kind, state.
    List(manage::ListArgs),
    /// List the HTTP routes the plugins of a running server mount.
    Routes(routes::RoutesArgs),
    /// Show a plugin's metadata, config schema and current config (secrets masked).
    Inspect(manage::InspectArgs),
    /// Check manifests; print every problem and exit non-zero if there is one.
    Validate(manage::ValidateArgs),
    /// Start the bundled plugins, call, stream, hash a file, crash one, and report.
    Demo(demo::DemoArgs),
    /// Check a worker (any language) against docs/PROTOCOL.md, rule by rule; non-zero exit if
    /// a check fails.
    Conformance(conformance::ConformanceArgs),
    /// Write a private CA, a worker certificate, a client certificate and a token (PEM) for
    /// remote workers over TLS.
    TlsCerts(certs::CertsArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

fn main() -> ExitCode {
    init_logging();
    let cli = Cli::parse();
    if let Command::Completions { shell } = cli.command {
        clap_complete::generate(
            shell,
            &mut Cli::command(),
            "plugvisor",
            &mut std::io::stdout(),
        );
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&anyhow::anyhow!("cannot start the async runtime: {e}")),
    };
    match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(e) => fail(&e),
    }
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve(args) => serve::serve(args).await.map(|()| ExitCode::SUCCESS),
        Command::Call(args) => call::call(args).await.map(|()| ExitCode::SUCCESS),
        Command::Stream(args) => call::stream(args).await.map(|()| ExitCode::SUCCESS),
        Command::List(args) => manage::list(args).await.map(|()| ExitCode::SUCCESS),
        Command::Inspect(args) => manage::inspect(args).await.map(|()| ExitCode::SUCCESS),
        Command::Routes(args) => routes::routes(args).await.map(|()| ExitCode::SUCCESS),
        Command::Validate(args) => manage::validate(args),
        Command::Demo(args) => demo::run(args).await.map(|()| ExitCode::SUCCESS),
        Command::Conformance(args) => conformance::run(args).await,
        Command::TlsCerts(args) => certs::run(&args).map(|()| ExitCode::SUCCESS),
        Command::Completions { .. } => Ok(ExitCode::SUCCESS),
    }
}

fn fail(err: &anyhow::Error) -> ExitCode {
    eprintln!("plugvisor: error: {err:#}");
    ExitCode::FAILURE
}

/// Logs go to stderr; `PLUGVISOR_LOG` sets the filter (default `warn`; `info` shows worker
/// stderr lines and lifecycle).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PLUGVISOR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let colors = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colors)
        .init();
}
