//! `plugvisor call` and `plugvisor stream`: run one plugin call embedded and print the result.

use crate::client::{check, ApiClient};
use crate::embedded::{Embedded, Sources};
use crate::resolve::worker_binary;
use anyhow::{anyhow, bail, Context};
use clap::Args;
use futures_util::StreamExt;
use http::Method;
use http_body_util::BodyExt;
use plugvisor_host::{Host, OutputFile, Plugin, RemotePlugin, WorkerSpec};
use plugvisor_proto::file_ref::rewrite_file_refs;
use plugvisor_proto::wire::StreamFrame;
use plugvisor_proto::{json, FileRef, PluginError, Value};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Arguments shared by `call` and `stream`.
#[derive(Debug, Args)]
pub(crate) struct CallArgs {
    /// Plugin name (its manifest, from --plugins; else `<name>-worker` beside plugvisor) or a
    /// worker binary path; `call` also takes `NAME.METHOD` for a named method (`echo.shout`).
    plugin: String,
    /// The input, as JSON. Default `{}`.
    #[arg(default_value = "{}")]
    input: String,
    /// Put a file reference to PATH at top-level key KEY of the input (repeatable).
    #[arg(long = "file", value_name = "KEY=PATH")]
    files: Vec<String>,
    /// Initialize the plugin with this JSON config first (for a plugin with a manifest: the
    /// API layer, above the manifest's [config], --host-config and PLUGVISOR__<PLUGIN>__<FIELD>).
    #[arg(long)]
    config: Option<String>,
    /// Manifest directory, repeatable (default: $PLUGVISOR_PLUGINS, colon-separated, else the
    /// bundled manifests).
    #[arg(long, value_name = "DIR")]
    plugins: Vec<PathBuf>,
    /// Host configuration file with `[plugins.<name>.config]` tables (as `serve --config`).
    #[arg(long, value_name = "FILE")]
    host_config: Option<PathBuf>,
    /// Where to look for `<name>-worker` binaries (default: beside plugvisor).
    #[arg(long, value_name = "DIR")]
    worker_dir: Option<PathBuf>,
    /// Where to keep files the plugin returns (default: the current directory).
    #[arg(long, value_name = "DIR", default_value = ".")]
    out_dir: PathBuf,
    /// Pretty-print the result.
    #[arg(long)]
    pretty: bool,
    /// Call through a running server (`http://127.0.0.1:8620`) instead of starting the worker
    /// here. `--config` then replaces the server's API config layer for the plugin.
    #[arg(long, value_name = "URL")]
    server: Option<String>,
    /// File holding the server's API token, for --server (default: $PLUGVISOR_API_TOKEN).
    #[arg(long, value_name = "FILE")]
    api_token_file: Option<PathBuf>,
}

impl CallArgs {
    /// The plugin and the method of `NAME.METHOD` (a path, with a `/`, is never split).
    fn target(&self) -> (&str, Option<&str>) {
        match self.plugin.rsplit_once('.') {
            Some((name, method))
                if !name.contains('/') && plugvisor_proto::wire::valid_method_name(method) =>
            {
                (name, Some(method))
            }
            _ => (&self.plugin, None),
        }
    }
}

/// `plugvisor call`.
pub(crate) async fn call(args: CallArgs) -> anyhow::Result<()> {
    if let Some(url) = &args.server {
        return call_server(url, &args).await;
    }
    if let Some(plugin) = embedded(&args).await? {
        let input = build_input(&args.input, &args.files)?;
        let printed = match plugin.call(args.target().1, input).await {
            Ok(output) => keep_outputs(output.value, output.files, &args.out_dir)
                .and_then(|value| print_json(&value, args.pretty)),
            Err(e) => Err(e),
        };
        plugin.shutdown().await;
        return printed;
    }
    let (host, plugin, input) = start(&args).await?;
    let result = match args.target().1 {
        Some(method) => plugin.call_method(method, input).await,
        None => plugin.call(input).await,
    };
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
    if let (name, Some(method)) = args.target() {
        bail!("stream calls execute_stream only; {name}.{method} names a method (use call)");
    }
    if let Some(url) = &args.server {
        return stream_server(url, &args).await;
    }
    if let Some(plugin) = embedded(&args).await? {
        let result = async {
            let mut items = plugin
                .stream(build_input(&args.input, &args.files)?)
                .await?;
            while let Some(item) = items.next().await {
                print_json(&item?.value, args.pretty)?;
            }
            anyhow::Ok(())
        }
        .await;
        plugin.shutdown().await;
        return result.with_context(|| format!("{} failed", args.plugin));
    }
    let (host, plugin, input) = start(&args).await?;
    let result = print_stream(&plugin, input, args.pretty).await;
    plugin.shutdown().await;
    host.shutdown().await;
    result.with_context(|| format!("{} failed", args.plugin))
}

/// The plugin loaded from its manifest, when one describes it.
async fn embedded(args: &CallArgs) -> anyhow::Result<Option<Embedded>> {
    let config = match &args.config {
        Some(c) => Some(serde_json::from_str::<Value>(c).context("--config is not valid JSON")?),
        None => None,
    };
    let sources = Sources {
        plugins: &args.plugins,
        host_config: args.host_config.clone(),
        worker_dir: args.worker_dir.clone(),
    };
    // `NAME.METHOD` names the manifest NAME (manifest names have no dots).
    Embedded::load(args.target().0, config, sources).await
}

async fn print_stream(plugin: &RemotePlugin, input: Value, pretty: bool) -> anyhow::Result<()> {
    let mut stream = plugin.execute_stream(input).await?;
    while let Some(item) = stream.next().await {
        print_json(&item?, pretty)?;
    }
    Ok(())
}

/// Applies `--config` on the server, then returns the request body for the call.
async fn server_call_body(api: &ApiClient, args: &CallArgs) -> anyhow::Result<Value> {
    let (name, method) = args.target();
    if let Some(config) = &args.config {
        let config: Value = serde_json::from_str(config).context("--config is not valid JSON")?;
        let path = format!("/api/plugins/{name}/config");
        api.json(Method::PUT, &path, Some(&json!({ "config": config })))
            .await
            .with_context(|| format!("{} rejected --config", args.plugin))?;
    }
    let input = build_input(&args.input, &args.files)?;
    let mut body = json!({"plugin_id": name, "input": input});
    if let Some(method) = method {
        body["method"] = json!(method);
    }
    Ok(body)
}

async fn call_server(url: &str, args: &CallArgs) -> anyhow::Result<()> {
    let api = ApiClient::new(url, args.api_token_file.as_deref())?;
    let body = server_call_body(&api, args).await?;
    let answer = api
        .json(Method::POST, "/api/plugins/execute", Some(&body))
        .await
        .with_context(|| format!("{} failed", args.plugin))?;
    print_json(&answer["output"], args.pretty)
}

async fn stream_server(url: &str, args: &CallArgs) -> anyhow::Result<()> {
    let api = ApiClient::new(url, args.api_token_file.as_deref())?;
    let body = server_call_body(&api, args).await?;
    let response = api
        .send(Method::POST, "/api/plugins/execute_stream", Some(&body))
        .await?;
    let status = response.status();
    let mut body = response.into_body();
    if !status.is_success() {
        let bytes = body.collect().await?.to_bytes();
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        check(status, &value).with_context(|| format!("{} failed", args.plugin))?;
        bail!("{}: unexpected answer {status}", args.plugin);
    }
    let mut pending = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        pending.extend_from_slice(&data);
        while let Some(at) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=at).collect();
            if print_frame(&line, args.pretty)? {
                return Ok(());
            }
        }
    }
    bail!("{}: the stream ended without a terminal frame", args.plugin)
}

/// Prints an item frame; true at the `end` frame; an `error` frame becomes the error.
fn print_frame(line: &[u8], pretty: bool) -> anyhow::Result<bool> {
    match serde_json::from_slice::<StreamFrame>(line)? {
        StreamFrame::Item(value) => print_json(&value, pretty).map(|()| false),
        StreamFrame::End { .. } => Ok(true),
        StreamFrame::Error(e) => Err(anyhow!(PluginError::from(e))),
    }
}

async fn start(args: &CallArgs) -> anyhow::Result<(Host, RemotePlugin, Value)> {
    let input = build_input(&args.input, &args.files)?;
    let config = match &args.config {
        Some(c) => Some(serde_json::from_str::<Value>(c).context("--config is not valid JSON")?),
        None => None,
    };
    let program = worker_binary(args.target().0, args.worker_dir.as_deref())?;
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
