//! The `plugvisor` command: call and stream plugins in crash-isolated workers, run the demo.

mod call;
mod demo;
mod resolve;

use clap::{Parser, Subcommand};
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
    /// Call a plugin once and print its result as JSON.
    Call(call::CallArgs),
    /// Call a plugin's stream and print one JSON line per item as it arrives.
    Stream(call::CallArgs),
    /// Start the bundled plugins, call, stream and hash a file through them, and report.
    Demo(demo::DemoArgs),
}

fn main() -> ExitCode {
    init_logging();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&anyhow::anyhow!("cannot start the async runtime: {e}")),
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Call(args) => call::call(args).await,
            Command::Stream(args) => call::stream(args).await,
            Command::Demo(args) => demo::run(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
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
