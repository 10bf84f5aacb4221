//! P22: a small call to a remote worker over TLS on loopback (attached, as to a pod) against
//! the same worker binary started by the host on a Unix socket.

use crate::procs::binary;
use crate::report::{Check, Outcome};
use crate::scenario::{small_input, us, Ctx};
use crate::stats::{median, quantile};
use anyhow::{Context, Result};
use plugvisor_host::{Attach, Plugin, RemotePlugin, TlsClient, WorkerSpec};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

/// P22: p50 of small calls over TLS (TCP loopback) and over the Unix socket, batches
/// alternating.
///
/// # Errors
/// When the certificates, the remote worker or a call fail.
pub async fn tls(ctx: &Ctx) -> Result<Outcome> {
    let certs = ctx.dir().join("p22-certs");
    let made = Command::new(binary("plugvisor")?)
        .args(["tls-certs", "--out"])
        .arg(&certs)
        .output()?;
    anyhow::ensure!(made.status.success(), "plugvisor tls-certs failed");
    let mut worker = Owned(start(&binary("echo-worker")?, &certs, true)?);
    let port = port_of(&mut worker.0)?;
    let token = std::fs::read_to_string(certs.join("token"))?;
    let tls = TlsClient::from_pem_files(&certs.join("ca.crt"), None, "localhost")?;
    let url = format!("https://localhost:{port}");
    let remote = ctx
        .host
        .spawn(WorkerSpec::attach(
            Attach::parse(&url, token.trim())?.with_tls(tls),
        ))
        .await?;
    let local = ctx.host.spawn(ctx.spec("echo")?).await?;
    let (mut over_tls, mut over_uds) = (Vec::new(), Vec::new());
    for trial in 0..=ctx.plan.trials {
        let n = if trial == 0 { 300 } else { ctx.plan.calls };
        let a = batch(&remote, n).await?;
        let b = batch(&local, n).await?;
        if trial > 0 {
            over_tls.extend(a);
            over_uds.extend(b);
        }
    }
    local.shutdown().await;
    remote.shutdown().await;
    Ok(outcome(&over_tls, &over_uds))
}

/// A worker process of the benchmark's own, killed and reaped when dropped.
pub(crate) struct Owned(pub(crate) Child);

impl Drop for Owned {
    /// SIGTERM (it removes its private transfer directory), SIGKILL if it hangs.
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        for _ in 0..500 {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A standalone worker on a free loopback port with the token of `certs`, serving TLS with
/// its certificate when `tls` (plain TCP otherwise: loopback, so a host may attach without).
pub(crate) fn start(
    program: &std::path::Path,
    certs: &std::path::Path,
    tls: bool,
) -> Result<Child> {
    let mut command = Command::new(program);
    command.args(["--listen", "tcp://127.0.0.1:0"]);
    if tls {
        command
            .arg("--tls-cert")
            .arg(certs.join("tls.crt"))
            .arg("--tls-key")
            .arg(certs.join("tls.key"));
    }
    command
        .arg("--token-file")
        .arg(certs.join("token"))
        .env_remove("PLUGVISOR_WATCH_STDIN")
        .env("PLUGVISOR_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {} (tls: {tls})", program.display()))
}

pub(crate) fn port_of(child: &mut Child) -> Result<u16> {
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("no stdout")?).read_line(&mut line)?;
    line.trim()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("no port in the handshake {line:?}"))
}

async fn batch(plugin: &RemotePlugin, n: usize) -> Result<Vec<f64>> {
    let mut took = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        plugin.execute(small_input()).await?;
        took.push(started.elapsed().as_secs_f64() * 1e6);
    }
    Ok(took)
}

fn outcome(over_tls: &[f64], over_uds: &[f64]) -> Outcome {
    let (t50, u50) = (median(over_tls), median(over_uds));
    let ratio = t50 / u50;
    let mut o = Outcome::new(
        "P22",
        "a small call to a remote worker attached over TLS on loopback (RemotePlugin, \
         WorkerSpec::attach) vs the same echo-worker started by the host on a Unix socket, \
         batches alternating",
        "TLS on loopback p50 <= 2 x the Unix socket's (our own target; the issue asks for the figure)",
    );
    o.measure("tls_p50_us", t50);
    o.measure("tls_p99_us", quantile(over_tls, 0.99));
    o.measure("ratio_tls_to_uds", ratio);
    o.base("uds_p50_us", u50);
    o.base("uds_p99_us", quantile(over_uds, 0.99));
    o.checks
        .push(Check::at_most("TLS p50 / Unix socket p50", ratio, 2.0));
    o.measured_text = format!(
        "TLS p50 {} / p99 {} ({ratio:.2}x)",
        us(t50),
        us(quantile(over_tls, 0.99))
    );
    o.baseline_text = format!(
        "Unix socket p50 {} / p99 {}",
        us(u50),
        us(quantile(over_uds, 0.99))
    );
    o
}
