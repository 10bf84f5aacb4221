//! `plugvisor call` and `plugvisor stream`: run one plugin call embedded and print the result.

use crate::resolve::worker_binary;
use anyhow::{anyhow, bail, Context};
use clap::Args;
use futures_util::StreamExt;
use plugvisor_host::{Host, OutputFile, Plugin, RemotePlugin, WorkerSpec};
use plugvisor_proto::file_ref::rewrite_file_refs;
use plugvisor_proto::{FileRef, Value};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Arguments shared by `call` and `stream`.
#[derive(Debug, Args)]
pub(crate) struct CallArgs {
    /// Plugin name (resolved to `<name>-worker` beside plugvisor) or a worker binary path.
    plugin: String,
    /// The input, as JSON. Default `{}`.
    #[arg(default_value = "{}")]
    input: String,
    /// Put a file reference to PATH at top-level key KEY of the input (repeatable).
    #[arg(long = "file", value_name = "KEY=PATH")]
    files: Vec<String>,
    /// Initialize the plugin with this JSON config first.
    #[arg(long)]
    config: Option<String>,
    /// Where to look for `<name>-worker` binaries (default: beside plugvisor).
    #[arg(long, value_name = "DIR")]
    worker_dir: Option<PathBuf>,
    /// Where to keep files the plugin returns (default: the current directory).
    #[arg(long, value_name = "DIR", default_value = ".")]
    out_dir: PathBuf,
    /// Pretty-print the result.
    #[arg(long)]
    pretty: bool,
}

/// `plugvisor call`.
pub(crate) async fn call(args: CallArgs) -> anyhow::Result<()> {
    let (host, plugin, input) = start(&args).await?;
    let result = plugin.call(input).await;
    let printed = match result {
        Ok(output) => {
            let value = keep_outputs(output.value, output.files, &args.out_dir)?;
            print_json(&value, args.pretty)
        }
        Err(e) => Err(anyhow!(e).context(format!("{} failed", args.plugin))),
    };
    plugin.shutdown().await;
    host.shutdown().await;
    printed
}

/// `plugvisor stream`.
pub(crate) async fn stream(args: CallArgs) -> anyhow::Result<()> {
    let (host, plugin, input) = start(&args).await?;
    let result = print_stream(&plugin, input, args.pretty).await;
    plugin.shutdown().await;
    host.shutdown().await;
    result.with_context(|| format!("{} failed", args.plugin))
}

async fn print_stream(plugin: &RemotePlugin, input: Value, pretty: bool) -> anyhow::Result<()> {
    let mut stream = plugin.execute_stream(input).await?;
    while let Some(item) = stream.next().await {
        print_json(&item?, pretty)?;
    }
    Ok(())
}

async fn start(args: &CallArgs) -> anyhow::Result<(Host, RemotePlugin, Value)> {
    let input = build_input(&args.input, &args.files)?;
    let config = match &args.config {
        Some(c) => Some(serde_json::from_str::<Value>(c).context("--config is not valid JSON")?),
        None => None,
    };
    let program = worker_binary(&args.plugin, args.worker_dir.as_deref())?;
    let host = Host::new().context("cannot create the host's runtime directory")?;
    let plugin = host.spawn(WorkerSpec::new(program)).await?;
    if let Some(config) = config {
        if let Err(e) = plugin.initialize(Some(config)).await {
            plugin.shutdown().await;
            host.shutdown().await;
            return Err(anyhow!(e).context(format!("{} rejected --config", args.plugin)));
        }
    }
    Ok((host, plugin, input))
}

/// Parses the input JSON and adds a `FileRef` for each `--file KEY=PATH`.
fn build_input(input: &str, files: &[String]) -> anyhow::Result<Value> {
    let mut value: Value =
        serde_json::from_str(input).with_context(|| format!("input is not valid JSON: {input}"))?;
    if files.is_empty() {
        return Ok(value);
    }
    let Value::Object(map) = &mut value else {
        bail!("--file needs the input to be a JSON object, got {input}");
    };
    for spec in files {
        let (key, path) = spec
            .split_once('=')
            .ok_or_else(|| anyhow!("--file takes KEY=PATH, got {spec:?}"))?;
        let path = std::fs::canonicalize(path).with_context(|| format!("--file {spec}"))?;
        let size = std::fs::metadata(&path)?.len();
        map.insert(key.to_owned(), FileRef::new(path, size).to_value());
    }
    Ok(value)
}

/// Moves returned files into `out_dir` and points the printed references at them.
fn keep_outputs(mut value: Value, files: Vec<OutputFile>, out_dir: &Path) -> anyhow::Result<Value> {
    let mut moved = Vec::new();
    for file in files {
        let Some(name) = file.path().and_then(Path::file_name).map(ToOwned::to_owned) else {
            continue;
        };
        let from = file.path().map(Path::to_path_buf).unwrap_or_default();
        let to = file.persist(out_dir.join(name))?;
        moved.push((from, std::fs::canonicalize(&to).unwrap_or(to)));
    }
    rewrite_file_refs::<String>(&mut value, &mut |mut f| {
        if let Some((_, to)) = moved.iter().find(|(from, _)| *from == f.path) {
            f.path = to.clone();
        }
        Ok(f)
    })
    .map_err(|e| anyhow!(e))?;
    Ok(value)
}

fn print_json(value: &Value, pretty: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if pretty {
        serde_json::to_writer_pretty(&mut out, value)?;
    } else {
        serde_json::to_writer(&mut out, value)?;
    }
    writeln!(out)?;
    out.flush()?;
    Ok(())
}
