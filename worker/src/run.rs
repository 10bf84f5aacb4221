//! `run`: the whole `main` of a worker binary (arguments, logging, runtime, handshake, serve).

use crate::builder::{Extensions, Worker};
use crate::cli::{Args, WorkerConfig};
use crate::error::WorkerError;
use crate::files;
use crate::listener::Listener;
use crate::routes::Routes;
use crate::server::serve_announced;
use crate::watch;
use plugvisor_proto::wire::{Handshake, InfoResponse, Transport, MAX_HANDSHAKE_LEN};
use plugvisor_proto::ErrorChain;
use plugvisor_proto::Plugin;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Runs `plugin` as a worker process and exits; a worker binary's `main` is this one call.
///
/// ```no_run
/// # use plugvisor_proto::{Plugin, PluginError, Value};
/// # #[derive(Default)] struct MyPlugin;
/// # impl Plugin for MyPlugin {
/// #     fn name(&self) -> &str { "my" }
/// #     fn version(&self) -> &str { "0.1.0" }
/// #     async fn execute(&self, input: Value) -> Result<Value, PluginError> { Ok(input) }
/// # }
/// fn main() {
///     plugvisor_worker::run(MyPlugin::default())
/// }
/// ```
///
/// It parses the arguments (`--listen`, `--socket`, `--token-file`, `--transfer-dir`,
/// `--max-body`), logs to stderr (filter from `PLUGVISOR_LOG`, default `info`), binds,
/// prints the handshake line on stdout and then points stdout at stderr, serves until
/// shutdown and exits. Exit codes: 0 after a clean shutdown, 1 when the worker could not
/// start or had to be stopped forcibly, 2 for usage errors (no listen address, no token).
pub fn run<P: Plugin>(plugin: P) -> ! {
    Worker::new(plugin).run()
}

/// [`run`] for a plugin that also serves HTTP routes: the host mounts them under
/// `/plugins/<plugin>/…` (see [`Routes`]). Short for `Worker::new(plugin).routes().run()`;
/// [`Worker`] adds other extensions (middleware).
pub fn run_routed<P: Plugin + Routes>(plugin: P) -> ! {
    Worker::new(plugin).routes().run()
}

impl<P: Plugin> Worker<P> {
    /// Runs as a worker process and exits, as [`run`] does.
    pub fn run(self) -> ! {
        let (plugin, extensions) = self.into_parts();
        run_with(plugin, extensions)
    }
}

fn run_with<P: Plugin>(plugin: Arc<P>, extensions: Extensions) -> ! {
    watch::arm_parent_death();
    let args = Args::from_process();
    crate::logging::init();
    let program = program_name(&*plugin);
    let config = match args.resolve() {
        Ok(Some(config)) => config,
        Ok(None) => {
            eprintln!("{}", usage_line(&program, plugin.name()));
            std::process::exit(2)
        }
        Err(e) => exit_with(&program, &e),
    };
    if config.watch_stdin {
        // SAFETY: the process is still single-threaded here. `run` is documented as the
        // whole `main` of a worker binary, and so far it has only parsed arguments, set up
        // logging (which starts no thread) and read the environment; the runtimes, and with
        // them the first other threads, are built below.
        if let Err(e) = unsafe { crate::guardian::spawn() } {
            tracing::warn!(error = %e, "no group guardian; grandchildren may outlive a dead host");
        }
    }
    let (server, plugins) = match build_runtimes(config.worker_threads) {
        Ok(runtimes) => runtimes,
        Err(e) => exit_with(&program, &WorkerError::io("starting the runtimes", e)),
    };
    let mut config = config;
    config.options.plugin_runtime = Some(plugins.handle().clone());
    let result = server.block_on(start(plugin, extensions, config));
    plugins.shutdown_timeout(Duration::from_millis(250));
    server.shutdown_timeout(Duration::from_millis(250));
    crate::guardian::dismiss();
    match result {
        Ok(()) => std::process::exit(0),
        Err(e) => exit_with(&program, &e),
    }
}

/// Binds, announces, installs the shutdown triggers and serves.
async fn start<P: Plugin>(
    plugin: Arc<P>,
    extensions: Extensions,
    config: WorkerConfig,
) -> Result<(), WorkerError> {
    // Everything that can fail is checked before the handshake promises a working worker.
    if let Some(dir) = &config.options.transfer_dir {
        files::install(dir).map_err(|source| WorkerError::TransferDir {
            path: dir.clone(),
            source,
        })?;
    }
    let listener = Listener::bind(&config.listen).await?;
    let socket = listener.socket_path();
    let shutdown = CancellationToken::new();
    let deadline = config.options.hard_deadline();
    watch::on_signals(shutdown.clone(), socket.clone())
        .map_err(|e| WorkerError::io("installing signal handlers", e))?;
    let handshake = listener.handshake()?;
    let watch_stdin = config.watch_stdin;
    let triggers = shutdown.clone();
    // The plugin's info rides on the handshake line, sparing the host a `/v1/info` call.
    let ready = move |info: Option<InfoResponse>| {
        announce(&handshake_line(handshake, info))?;
        if watch_stdin {
            watch::on_stdin_eof(triggers.clone(), deadline, socket.clone());
        }
        watch::watchdog_on(triggers, deadline, socket);
        Ok(())
    };
    serve_announced(
        listener,
        plugin,
        extensions,
        config.options,
        shutdown,
        ready,
    )
    .await
}

/// The handshake line, with `info` on it when the worker listens on a Unix socket (a host
/// started it and reads the line; a TCP worker is attached with `/v1/info`), unless that would
/// make the line too long for the host.
fn handshake_line(handshake: Handshake, info: Option<InfoResponse>) -> String {
    let plain = handshake.to_string();
    let Some(info) = info.filter(|_| matches!(handshake.transport, Transport::Unix(_))) else {
        return plain;
    };
    let full = handshake.with_info(info).to_string();
    if full.len() < MAX_HANDSHAKE_LEN {
        full
    } else {
        plain
    }
}

/// Prints the handshake line on stdout, then makes fd 1 a copy of stderr, so nothing the
/// plugin prints later can reach the host's handshake pipe.
///
/// The line and its newline go out in one `write`: `writeln!` on a line longer than stdout's
/// buffer wrote them as two, and the host, reading up to the newline, woke twice.
fn announce(line: &str) -> Result<(), WorkerError> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(format!("{line}\n").as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|e| WorkerError::io("printing the handshake", e))?;
    nix::unistd::dup2_stdout(std::io::stderr())
        .map_err(|e| WorkerError::io("redirecting stdout to stderr", e.into()))?;
    let announced = line.split('\t').next().unwrap_or_default();
    tracing::info!(handshake = %announced, pid = std::process::id(), "listening");
    Ok(())
}

/// The server's runtime (this thread: accept, HTTP, health) and the plugin's
/// (`worker_threads` threads), so plugin code that blocks cannot stall the server.
fn build_runtimes(
    worker_threads: usize,
) -> std::io::Result<(tokio::runtime::Runtime, tokio::runtime::Runtime)> {
    let server = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let plugins = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(worker_threads)
        .thread_name("plugin")
        .enable_all()
        .build()?;
    Ok((server, plugins))
}

/// The binary's file name, or `<plugin>-worker`.
fn program_name<P: Plugin>(plugin: &P) -> String {
    std::env::args_os()
        .next()
        .and_then(|arg0| {
            let path = std::path::PathBuf::from(arg0);
            path.file_name().map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| format!("{}-worker", plugin.name()))
}

/// The one line printed when the binary is run without a listen address.
fn usage_line(program: &str, plugin: &str) -> String {
    format!(
        "{program}: a plugvisor worker; start it through plugvisor (plugvisor call {plugin} '{{}}') \
         or by hand: {program} --listen tcp://127.0.0.1:9000 --token-file TOKEN"
    )
}

/// Prints `err` with all its causes on stderr and exits with its exit code.
fn exit_with(program: &str, err: &WorkerError) -> ! {
    eprintln!("{program}: error: {}", ErrorChain(err));
    std::process::exit(err.exit_code())
}
