//! The demo's remote-worker line: an echo worker started on its own (as Kubernetes or
//! systemd would) serving TLS on loopback, attached by the host with a private CA and a token,
//! a small call timed against the same worker over its Unix socket, and the worker stopped by
//! its owner (the host never stops a worker it did not start).

use crate::resolve::worker_binary;
use anyhow::{bail, Context, Result};
use plugvisor_host::{Attach, Host, Plugin, RemotePlugin, TlsClient, WorkerSpec};
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Calls timed on each transport.
const CALLS: usize = 300;

/// Runs the remote line of the tour; `say` prints it.
pub(crate) async fn remote_echo(
    host: &Host,
    dir: Option<&Path>,
    scratch: &Path,
    say: fn(&str),
) -> Result<()> {
    let certs = crate::certs::write_all(&scratch.join("remote-certs"), &["localhost".into()])?;
    let program = worker_binary("echo", dir)?;
    let mut worker = start_tls_worker(&program, &certs)?;
    let result = attach_and_time(host, &program, &certs, &mut worker).await;
    let stopped = stop(&mut worker.0);
    let line = result?;
    say(&format!(
        "{line}; it exited {} on SIGTERM from its owner",
        stopped?
    ));
    Ok(())
}

/// The worker process and its port.
type Started = (Child, u16);

fn start_tls_worker(program: &Path, certs: &crate::certs::CertFiles) -> Result<Started> {
    let mut child = Command::new(program)
        .arg("--listen")
        .arg("tcp://127.0.0.1:0")
        .arg("--tls-cert")
        .arg(&certs.server.0)
        .arg("--tls-key")
        .arg(&certs.server.1)
        .arg("--token-file")
        .arg(&certs.token)
        .env_remove("PLUGVISOR_WATCH_STDIN")
        .env("PLUGVISOR_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        BufReader::new(out).read_line(&mut line)?;
    }
    let port = line.trim().rsplit(':').next().and_then(|p| p.parse().ok());
    match port {
        Some(port) => Ok((child, port)),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the TLS worker printed no handshake: {line:?}")
        }
    }
}

async fn attach_and_time(
    host: &Host,
    program: &Path,
    certs: &crate::certs::CertFiles,
    worker: &mut Started,
) -> Result<String> {
    let token = std::fs::read_to_string(&certs.token)?;
    let tls = TlsClient::from_pem_files(&certs.ca, None, "localhost")?;
    let url = format!("https://localhost:{}", worker.1);
    let attach = Attach::parse(&url, token.trim())?.with_tls(tls);
    let remote = host.spawn(WorkerSpec::attach(attach)).await?;
    let local = host.spawn(WorkerSpec::new(program)).await?;
    let (over_tls, over_uds) = (p50(&remote).await?, p50(&local).await?);
    let pid = remote.pid();
    local.shutdown().await;
    remote.shutdown().await;
    if worker.0.try_wait()?.is_some() {
        bail!("the host stopped a remote worker it did not start");
    }
    Ok(format!(
        "remote: attached echo-worker pid {pid} at {url} (TLS, private CA, token); a small call \
         p50 {:.0} µs over TLS vs {:.0} µs over a Unix socket ({:.2}x); the host left it running",
        over_tls.as_secs_f64() * 1e6,
        over_uds.as_secs_f64() * 1e6,
        over_tls.as_secs_f64() / over_uds.as_secs_f64()
    ))
}

/// The median of [`CALLS`] small calls.
async fn p50(plugin: &RemotePlugin) -> Result<Duration> {
    let mut took = Vec::with_capacity(CALLS);
    for i in 0..CALLS {
        let started = Instant::now();
        plugin.execute(json!({"n": i})).await?;
        took.push(started.elapsed());
    }
    took.sort();
    Ok(took[CALLS / 2])
}

/// SIGTERM, then the exit (SIGKILL after 5 s): how it ended.
fn stop(child: &mut Child) -> Result<String> {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            return Ok(match status.code() {
                Some(code) => format!("with status {code}"),
                None => status.to_string(),
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill()?;
    Ok(format!(
        "{} (after SIGKILL: it ignored SIGTERM)",
        child.wait()?
    ))
}
