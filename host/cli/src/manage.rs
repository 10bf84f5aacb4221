//! `plugvisor list`, `inspect` and `validate`.

use crate::client::ApiClient;
use crate::resolve::{manifest_dirs, pythons};
use anyhow::Context;
use clap::Args;
use http::Method;
use plugvisor_manager::entry_points;
use plugvisor_manager::manifest::PluginKind;
use plugvisor_manager::manifest::{self, Discovered, ManifestError};
use plugvisor_manager::{ManagerConfig, PluginManager};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Arguments of `plugvisor list`.
#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    /// Ask a running server (`http://127.0.0.1:8620`) instead of reading manifests.
    #[arg(long, value_name = "URL")]
    server: Option<String>,
    /// File holding the server's API token, for --server (default: $PLUGVISOR_API_TOKEN).
    #[arg(long, value_name = "FILE")]
    api_token_file: Option<PathBuf>,
    /// Manifest directory, repeatable (when not asking a server; default as for `serve`).
    #[arg(long, value_name = "DIR")]
    plugins: Vec<PathBuf>,
    /// A Python interpreter whose packages' `plugvisor.plugins` entry points are plugins,
    /// repeatable (when not asking a server; default as for `serve`: $PLUGVISOR_PYTHON).
    #[arg(long, value_name = "PATH")]
    python: Vec<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Only plugins of this kind (provider, tool, middleware, export, ui, auth_provider,
    /// system).
    #[arg(long, value_name = "KIND")]
    kind: Option<String>,
}

/// `plugvisor list`.
pub(crate) async fn list(args: ListArgs) -> anyhow::Result<()> {
    let plugins = match &args.server {
        Some(url) => {
            let path = match &args.kind {
                Some(kind) => format!("/api/plugins/available?kind={kind}"),
                None => "/api/plugins/available".to_owned(),
            };
            let answer = ApiClient::new(url, args.api_token_file.as_deref())?
                .json(Method::GET, &path, None)
                .await?;
            answer.get("plugins").cloned().unwrap_or(answer)
        }
        None => {
            let kind = args.kind.as_deref().map(PluginKind::parse).transpose();
            let kind = kind.map_err(|e| anyhow::anyhow!("--kind: {e}"))?;
            let mut found = std::collections::BTreeMap::new();
            for dir in manifest_dirs(&args.plugins)? {
                let (in_dir, errors) = manifest::discover(&dir);
                for e in errors {
                    eprintln!("plugvisor: skipped manifest: {e}");
                }
                found.extend(in_dir.into_iter().map(|d| (d.manifest.name.clone(), d)));
            }
            let eps = entry_points::discover(&pythons(&args.python));
            for e in &eps.problems {
                eprintln!("plugvisor: skipped: {e}");
            }
            for note in entry_points::merge(&mut found, &eps).values() {
                eprintln!("plugvisor: note: {note}");
            }
            let rows = found
                .values()
                .filter(|d| kind.is_none_or(|k| d.manifest.kind == k))
                .map(available_row);
            Value::from(rows.collect::<Vec<_>>())
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&plugins)?);
    } else {
        print!("{}", table(&plugins));
    }
    Ok(())
}

fn available_row(d: &Discovered) -> Value {
    let m = &d.manifest;
    let broken = d.entry_point.as_ref().and_then(|ep| ep.error.as_ref());
    let state = if broken.is_some() {
        "failed"
    } else {
        "available"
    };
    json!({"name": m.name, "version": m.version, "kind": m.kind, "state": state,
           "description": m.description, "sandbox": m.sandbox, "source": d.source(),
           "entry_point": d.entry_point, "last_error": broken,
           "replicas": m.replicas})
}

/// A plain-text table of name, version, kind, state, workers, source and sandbox.
fn table(plugins: &Value) -> String {
    let rows: Vec<[String; 7]> = plugins
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let s = |k: &str| p[k].as_str().unwrap_or("-").to_owned();
            [
                s("name"),
                s("version"),
                s("kind"),
                s("state"),
                workers_cell(p),
                s("source"),
                sandbox_cell(p),
            ]
        })
        .collect();
    let header = [
        "NAME", "VERSION", "KIND", "STATE", "WORKERS", "SOURCE", "SANDBOX",
    ];
    text_table(&header, &rows)
}

/// `ready/replicas` while workers run (`2/3`: one replica is restarting), else `replicas`.
fn workers_cell(p: &Value) -> String {
    let replicas = p["replicas"].as_u64().unwrap_or(1);
    match p["workers"].as_array() {
        Some(workers) => {
            let ready = workers.iter().filter(|w| w["state"] == "ready").count();
            format!("{ready}/{replicas}")
        }
        None => replicas.to_string(),
    }
}

/// A plain-text table: `header` and `rows` in columns two spaces apart, each line without
/// trailing spaces.
pub(crate) fn text_table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) -> String {
    let header = header.map(str::to_owned);
    let widths: Vec<usize> = (0..N)
        .map(|i| {
            rows.iter()
                .chain([&header])
                .map(|r| r[i].len())
                .max()
                .unwrap_or(0)
        })
        .collect();
    std::iter::once(&header)
        .chain(rows.iter())
        .map(|r| {
            let cells: Vec<String> = r
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            format!("{}\n", cells.join("  ").trim_end())
        })
        .collect()
}

/// What a plugin's sandbox enforces, in a few words (`-` when unsandboxed; `requested` when
/// its manifest has one but no worker is up to say what it got).
fn sandbox_cell(plugin: &Value) -> String {
    let e = &plugin["enforced"];
    if !e.is_object() {
        let requested = plugin["sandbox"].is_object();
        return if requested { "requested" } else { "-" }.to_owned();
    }
    let text = |k: &str| e[k].as_str().unwrap_or("?").to_owned();
    let mut parts = vec![text("filesystem"), format!("net={}", text("network"))];
    parts.push(text("syscalls"));
    if let Some(mib) = e["memory_mib"].as_u64() {
        parts.push(format!("mem={mib}MiB"));
    }
    if let Some(pids) = e["pids"].as_u64() {
        parts.push(format!("pids={pids}"));
    }
    parts.push(format!("tree={}", text("tree")));
    if let Some(uid) = e["uid"].as_u64() {
        parts.push(format!("uid={uid}"));
    }
    let missing = e["missing"].as_array().map_or(0, Vec::len);
    if missing > 0 {
        parts.push(format!("MISSING {missing}"));
    }
    parts.join(",")
}

/// Arguments of `plugvisor inspect`.
#[derive(Debug, Args)]
pub(crate) struct InspectArgs {
    /// The plugin.
    plugin: String,
    /// Ask a running server instead of starting the plugin here.
    #[arg(long, value_name = "URL")]
    server: Option<String>,
    /// File holding the server's API token, for --server (default: $PLUGVISOR_API_TOKEN).
    #[arg(long, value_name = "FILE")]
    api_token_file: Option<PathBuf>,
    /// Manifest directory, repeatable (when not asking a server; default as for `serve`).
    #[arg(long, value_name = "DIR")]
    plugins: Vec<PathBuf>,
}

/// `plugvisor inspect`: metadata, schema and current config (secrets masked).
pub(crate) async fn inspect(args: InspectArgs) -> anyhow::Result<()> {
    let shown = match &args.server {
        Some(url) => {
            let path = format!("/api/plugins/{}", args.plugin);
            ApiClient::new(url, args.api_token_file.as_deref())?
                .json(Method::GET, &path, None)
                .await?
        }
        None => inspect_embedded(&args).await?,
    };
    println!("{}", serde_json::to_string_pretty(&shown)?);
    Ok(())
}

async fn inspect_embedded(args: &InspectArgs) -> anyhow::Result<Value> {
    let manager = PluginManager::new(ManagerConfig {
        manifest_dirs: manifest_dirs(&args.plugins)?,
        ..ManagerConfig::default()
    })?;
    let shown = async {
        let info = manager.load(&args.plugin, None).await?;
        let config = manager.config(&args.plugin)?;
        let mut shown = serde_json::to_value(info)?;
        shown["config_schema"] = config.schema;
        shown["config"] = config.config;
        anyhow::Ok(shown)
    }
    .await;
    manager.shutdown().await;
    shown
}

/// Arguments of `plugvisor validate`.
#[derive(Debug, Args)]
pub(crate) struct ValidateArgs {
    /// A manifest file or directory (default: the plugins directory).
    path: Option<PathBuf>,
    /// Where bare worker names resolve (default: beside plugvisor).
    #[arg(long, value_name = "DIR")]
    worker_dir: Option<PathBuf>,
    /// A Python interpreter whose packages' `plugvisor.plugins` entry points are checked with
    /// the manifests, repeatable (default: $PLUGVISOR_PYTHON).
    #[arg(long, value_name = "PATH")]
    python: Vec<PathBuf>,
}

/// `plugvisor validate`: every problem printed; non-zero exit if there is any.
pub(crate) fn validate(args: ValidateArgs) -> anyhow::Result<ExitCode> {
    let paths = match args.path {
        Some(p) => vec![p],
        None => manifest_dirs(&[])?,
    };
    let (mut found, mut problems) = (Vec::new(), Vec::new());
    for p in &paths {
        let (more, wrong) = read_manifests(p)?;
        found.extend(more);
        problems.extend(wrong);
    }
    let worker_dir = args
        .worker_dir
        .unwrap_or_else(plugvisor_manager::default_worker_dir);
    problems.extend(found.iter().filter_map(|d| missing_binary(d, &worker_dir)));
    let manifests = found.len();
    let (found, notes) = with_entry_points(found, &args.python, &mut problems);
    let mut messages: Vec<String> = problems.iter().map(ToString::to_string).collect();
    messages.extend(found.iter().filter_map(broken_entry_point));
    messages.extend(crate::checks::problems(&found));
    for note in &notes {
        println!("note: {note}");
    }
    for m in &messages {
        println!("{m}");
    }
    if messages.is_empty() {
        match found.len() - manifests {
            0 => println!("{manifests} manifest(s) OK"),
            eps => println!("{manifests} manifest(s) and {eps} entry point(s) OK"),
        }
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("plugvisor: {} problem(s)", messages.len());
    Ok(ExitCode::FAILURE)
}

fn read_manifests(path: &Path) -> anyhow::Result<(Vec<Discovered>, Vec<ManifestError>)> {
    if path.is_dir() {
        return Ok(manifest::discover(path));
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(match manifest::Manifest::parse_file(&text, path) {
        Ok(m) => (vec![Discovered::from_file(m, path.to_path_buf())], vec![]),
        Err(e) => (vec![], vec![e]),
    })
}

/// `found` (manifests) with the entry points of the interpreters `python` names (default:
/// `$PLUGVISOR_PYTHON`) that no manifest overrides; their problems go to `problems`; the notes
/// say which entry points manifests override.
fn with_entry_points(
    found: Vec<Discovered>,
    python: &[PathBuf],
    problems: &mut Vec<ManifestError>,
) -> (Vec<Discovered>, Vec<String>) {
    let eps = entry_points::discover(&pythons(python));
    problems.extend(eps.problems.iter().cloned());
    let mut by_name: std::collections::BTreeMap<String, Discovered> = found
        .into_iter()
        .map(|d| (d.manifest.name.clone(), d))
        .collect();
    let notes = entry_points::merge(&mut by_name, &eps);
    (
        by_name.into_values().collect(),
        notes.into_values().collect(),
    )
}

/// Why an entry point's plugin cannot run, naming it; `None` for a runnable one or a manifest.
fn broken_entry_point(d: &Discovered) -> Option<String> {
    let ep = d.entry_point.as_ref()?;
    Some(format!("{}: {}", ep.describe(), ep.error.as_ref()?))
}

fn missing_binary(d: &Discovered, worker_dir: &Path) -> Option<ManifestError> {
    if d.manifest.command.trim().is_empty() {
        return None; // It only attaches to remote workers.
    }
    let problem = plugvisor_manager::command::resolve_command(d, worker_dir).err()?;
    Some(ManifestError {
        file: d.file.clone(),
        line: None,
        reason: format!("command: {problem}"),
    })
}
