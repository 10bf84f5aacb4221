//! The demo's remote-worker lines: an echo worker started on its own (as Kubernetes or
//! systemd would) serving TLS on loopback, attached by the host with a private CA and a token,
//! a small call timed against the same worker over its Unix socket; a files worker started the
//! same way, sent a file although it shares no filesystem with the host; each worker stopped
//! by its owner (the host never stops a worker it did not start).

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
/// MiB of the file sent to the remote files worker.
const FILE_MIB: usize = 64;

/// Which remote line of the tour.
#[derive(Clone, Copy)]
pub(crate) enum Line {
    /// An echo worker, a small call timed over TLS against a Unix socket.
    Echo,
    /// A files worker, sent a file it shares no filesystem with.
    File,
}

/// Runs one remote line of the tour with a worker started on its own; `say` prints it.
pub(crate) async fn remote(
    line: Line,
    host: &Host,
    dir: Option<&Path>,
    scratch: &Path,
    say: fn(&str),
) -> Result<()> {
    let certs = crate::certs::write_all(&scratch.join("remote-certs"), &["localhost".into()])?;
    let kind = match line {
        Line::Echo => "echo",
        Line::File => "files",
    };
    let program = worker_binary(kind, dir)?;
    let mut worker = start_tls_worker(&program, &certs)?;
    let result = match line {
        Line::Echo => attach_and_time(host, &program, &certs, &mut worker).await,
        Line::File => send_file(host, &certs, &worker, scratch).await,
    };
    let stopped = stop(&mut worker.0);
    let said = result?;
    say(&format!(
        "{said}; it exited {} on SIGTERM from its owner",
        stopped?
    ));
    Ok(())
}

/// Sends a new file of [`FILE_MIB`] to the remote files worker for hashing: the line to say.
async fn send_file(
    host: &Host,
    certs: &crate::certs::CertFiles,
    worker: &Started,
    scratch: &Path,
) -> Result<String> {
    let path = scratch.join("remote-input.bin");
    let sha = write_pattern(&path, FILE_MIB)?;
    let size = (FILE_MIB << 20) as u64;
    let remote = attach(host, certs, worker.1).await?;
    let file = plugvisor_proto::FileRef::new(&path, size).to_value();
    let started = Instant::now();
    let out = remote.execute(json!({"op": "sha256", "file": file})).await;
    let took = started.elapsed().as_secs_f64();
    let pid = remote.pid();
    remote.shutdown().await;
    std::fs::remove_file(&path)?;
    let out = out?;
    anyhow::ensure!(
        out["sha256"] == sha.as_str(),
        "the remote worker hashed {out}, the host {sha}"
    );
    Ok(format!(
        "remote files: {FILE_MIB} MiB to files-worker pid {pid} (TLS, no shared filesystem) in \
         {:.0} ms ({:.2} GB/s): streamed into its own store, hashed on both ends while it \
         travelled; its SHA-256 of its copy matches the host's",
        took * 1e3,
        size as f64 / took / 1e9
    ))
}

/// Writes `mib` MiB of a pattern to `path`: its hex SHA-256.
fn write_pattern(path: &Path, mib: usize) -> Result<String> {
    use sha2::{Digest, Sha256};
    use std::io::Write;
    let block: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    let mut hasher = Sha256::new();
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    for _ in 0..mib {
        file.write_all(&block)?;
        hasher.update(&block);
    }
    file.flush()?;
    Ok(format!("{:x}", hasher.finalize()))
}

/// The host attached to the TLS worker on loopback `port`, with the demo's CA and token.
async fn attach(host: &Host, certs: &crate::certs::CertFiles, port: u16) -> Result<RemotePlugin> {
    let token = std::fs::read_to_string(&certs.token)?;
    let tls = TlsClient::from_pem_files(&certs.ca, None, "localhost")?;
    let url = format!("https://localhost:{port}");
    let attach = Attach::parse(&url, token.trim())?.with_tls(tls);
    Ok(host.spawn(WorkerSpec::attach(attach)).await?)
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
    let url = format!("https://localhost:{}", worker.1);
    let remote = attach(host, certs, worker.1).await?;
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
