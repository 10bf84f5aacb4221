//! `plugvisor routes`: the HTTP routes the plugins of a running server mount, read from its
//! OpenAPI document (each plugin route is tagged with its plugin).

use crate::client::ApiClient;
use clap::Args;
use http::Method;
use serde_json::Value;
use std::path::PathBuf;

/// Arguments of `plugvisor routes`.
#[derive(Debug, Args)]
pub(crate) struct RoutesArgs {
    /// The server to ask.
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:8620")]
    server: String,
    /// File holding the server's API token, for --server (default: $PLUGVISOR_API_TOKEN).
    #[arg(long, value_name = "FILE")]
    api_token_file: Option<PathBuf>,
    /// Print JSON (`[{"method", "path", "plugin", "summary"}]`) instead of a table.
    #[arg(long)]
    json: bool,
}

/// `plugvisor routes`.
pub(crate) async fn routes(args: RoutesArgs) -> anyhow::Result<()> {
    let doc = ApiClient::new(&args.server, args.api_token_file.as_deref())?
        .json(Method::GET, "/api/openapi.json", None)
        .await?;
    let rows = plugin_routes(&doc);
    if args.json {
        let json: Vec<Value> = rows
            .iter()
            .map(|[method, path, plugin, summary]| {
                serde_json::json!({"method": method, "path": path, "plugin": plugin, "summary": summary})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&json)?);
        return Ok(());
    }
    let header = ["METHOD", "PATH", "PLUGIN", "SUMMARY"];
    print!("{}", crate::manage::text_table(&header, &rows));
    Ok(())
}

/// Method, path, plugin and summary of every plugin route in `doc`, sorted by path.
fn plugin_routes(doc: &Value) -> Vec<[String; 4]> {
    let mut rows = Vec::new();
    let paths = doc["paths"].as_object().into_iter().flatten();
    for (path, item) in paths.filter(|(p, _)| !p.starts_with("/api/") && *p != "/metrics") {
        for (method, op) in item.as_object().into_iter().flatten() {
            let text = |v: &Value| v.as_str().unwrap_or("").to_owned();
            rows.push([
                method.to_uppercase(),
                path.clone(),
                text(&op["tags"][0]),
                text(&op["summary"]),
            ]);
        }
    }
    rows.sort_by(|a, b| (&a[1], &a[0]).cmp(&(&b[1], &b[0])));
    rows
}
