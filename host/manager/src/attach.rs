//! Remote replicas from a manifest's `attach` (its keys are checked with the manifest): the
//! token (`token_file` or `token_env`), TLS (`tls_ca`, an optional client certificate,
//! `tls_server_name`); each address a name resolves to becomes one replica, supervised for
//! reconnection rather than restart.

use crate::manifest::{Discovered, Manifest};
use plugvisor_host::{
    Attach, BackoffConfig, HealthConfig, SupervisorConfig, TlsClient, WorkerSpec,
};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The specs of the remote replicas `found` attaches to: one per address each URL's host
/// resolves to (a headless Service's pods, say), named after the plugin.
///
/// # Errors
/// A token or TLS file that cannot be read or used, or a name that does not resolve.
pub(crate) async fn remote_specs(found: &Discovered) -> Result<Vec<WorkerSpec>, String> {
    let m = &found.manifest;
    let Some(list) = &m.attach else {
        return Ok(Vec::new());
    };
    let dir = found.dir();
    let token = read_token(m, dir)?;
    let mut specs = Vec::new();
    for url in list.urls() {
        let attach = Attach::parse(url, token.clone()).map_err(|e| e.to_string())?;
        let attach = match attach.is_tls() {
            true => attach.clone().with_tls(tls_client(m, dir, attach.host())?),
            false => attach,
        };
        for addr in resolve(&attach).await? {
            // `WorkerSpec::attach` gives the reattach timeout (5 s).
            specs.push(WorkerSpec::attach(attach.clone().connect_to(addr)).name(m.name.clone()));
        }
    }
    Ok(specs)
}

/// Every address `attach`'s host resolves to (itself, for an IP address).
async fn resolve(attach: &Attach) -> Result<Vec<std::net::SocketAddr>, String> {
    let target = (attach.host(), attach.port());
    let mut addrs: Vec<_> = tokio::net::lookup_host(target)
        .await
        .map_err(|e| format!("cannot resolve {}: {e}", attach.host()))?
        .collect();
    addrs.sort();
    addrs.dedup();
    if addrs.is_empty() {
        return Err(format!("{} resolves to no address", attach.host()));
    }
    Ok(addrs)
}

/// The token from `token_file` (relative to the manifest) or the variable `token_env`.
fn read_token(m: &Manifest, dir: &Path) -> Result<String, String> {
    let token = match (&m.token_file, &m.token_env) {
        (Some(file), _) => {
            let path = dir.join(file);
            std::fs::read_to_string(&path)
                .map_err(|e| format!("cannot read token_file {}: {e}", path.display()))?
        }
        (None, Some(name)) => {
            std::env::var(name).map_err(|_| format!("token_env: the environment has no {name}"))?
        }
        (None, None) => return Err("attach needs token_file or token_env".into()),
    };
    let token = token.trim();
    if token.is_empty() {
        return Err("the worker's token is empty".into());
    }
    Ok(token.to_owned())
}

/// The TLS settings of `m`, checking `tls_server_name` (default: the URL's `host`).
fn tls_client(m: &Manifest, dir: &Path, host: &str) -> Result<TlsClient, String> {
    let path = |p: &PathBuf| dir.join(p);
    let ca = m.tls_ca.as_ref().map(path).ok_or("https needs tls_ca")?;
    let client = match (m.tls_cert.as_ref().map(path), m.tls_key.as_ref().map(path)) {
        (Some(cert), Some(key)) => Some((cert, key)),
        _ => None,
    };
    let client = client.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
    let name = m.tls_server_name.as_deref().unwrap_or(host);
    TlsClient::from_pem_files(&ca, client, name).map_err(|e| e.to_string())
}

/// How a remote replica is supervised: reconnect forever with a short backoff, probe health
/// every second (two misses and it is ejected), and fail calls at once while it is
/// unreachable so the pool's other replicas take them. `base` keeps its call knobs.
pub(crate) fn remote_config(base: &SupervisorConfig) -> SupervisorConfig {
    SupervisorConfig {
        backoff: BackoffConfig {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(5),
            ..BackoffConfig::default()
        },
        max_restarts: u32::MAX,
        health: Some(HealthConfig {
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            failures: 2,
        }),
        rss_limit: None,
        wait_while_down: false,
        ..base.clone()
    }
}

#[cfg(test)]
mod tests {
    use crate::manifest::Manifest;
    use std::path::Path;

    fn parse(extra: &str) -> Result<Manifest, String> {
        let text = format!("name = \"r\"\nversion = \"0.1.0\"\n{extra}\n");
        Manifest::parse(&text, Path::new("r.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn an_attach_manifest_needs_a_token_and_tls_or_loopback() {
        let ok = parse("attach = \"https://w:7443\"\ntoken_env = \"T\"\ntls_ca = \"ca.crt\"");
        assert!(ok.is_ok(), "{ok:?}");
        let ok =
            parse("attach = [\"tcp://127.0.0.1:7000\", \"tcp://[::1]:7000\"]\ntoken_file = \"t\"");
        assert!(ok.is_ok(), "{ok:?}");
        let cases = [
            ("attach = \"https://w:7443\"\ntoken_env = \"T\"", "tls_ca"),
            (
                "attach = \"tcp://10.0.0.5:7000\"\ntoken_env = \"T\"",
                "insecure = true",
            ),
            ("attach = \"https://w:7443\"\ntls_ca = \"c\"", "token_file"),
            (
                "attach = \"http://w:80\"\ntoken_env = \"T\"",
                "expected https://",
            ),
            ("attach = []\ntoken_env = \"T\"", "empty"),
            (
                "attach = \"https://w:7443\"\ntoken_env = \"T\"\ntls_ca = \"c\"\ntls_cert = \"c\"",
                "go together",
            ),
            ("command = \"x\"\ntls_ca = \"c\"", "only used with attach"),
            ("", "command must not be empty"),
        ];
        for (extra, says) in cases {
            let err = parse(extra).expect_err(extra);
            assert!(err.contains(says), "{extra}: {err}");
        }
        let insecure =
            parse("attach = \"tcp://10.0.0.5:7000\"\ntoken_env = \"T\"\ninsecure = true");
        assert!(
            insecure.is_ok(),
            "the explicit opt-in is the control: {insecure:?}"
        );
    }
}
