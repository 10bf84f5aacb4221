//! P25: a big file sent to a remote worker that shares no filesystem with the host (hashed,
//! streamed over TLS, checked and stored by the worker) against raw TCP loopback throughput
//! in the same run, with both sides' peak memory, and one bare SHA-256 pass over the file (the
//! ceiling of a transfer checked on arrival).

use crate::procs::binary;
use crate::report::{Check, Outcome};
use crate::scenario::files::make_file;
use crate::scenario::remote::{port_of, start, Owned};
use crate::scenario::Ctx;
use crate::stats::median;
use anyhow::{bail, Context, Result};
use plugvisor_host::{Attach, Plugin, RemotePlugin, TlsClient, WorkerSpec};
use plugvisor_proto::{json, FileRef};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// Bytes moved per read and write by the raw TCP baseline.
const RAW_CHUNK: usize = 256 * 1024;

/// The scratch file, removed when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// P25: the big file (1 GiB; 128 MiB with `--quick`) to a remote files-worker over TLS and
/// over plain TCP, fresh content each trial, vs raw TCP loopback, trials alternating.
///
/// # Errors
/// When the file, the certificates, a worker or a call fail.
pub async fn file(ctx: &Ctx) -> Result<Outcome> {
    let size = ctx.plan.big_bytes;
    let file = Scratch(ctx.dir().join("p25-big"));
    make_file(&file.0, size)?;
    let certs = ctx.dir().join("p25-certs");
    let made = Command::new(binary("plugvisor")?)
        .args(["tls-certs", "--out"])
        .arg(&certs)
        .stdout(Stdio::null())
        .output()?;
    anyhow::ensure!(made.status.success(), "plugvisor tls-certs failed");
    let files = binary("files-worker")?;
    let mut tls_worker = Owned(start(&files, &certs, true)?);
    let tls_port = port_of(&mut tls_worker.0)?;
    let mut tcp_worker = Owned(start(&files, &certs, false)?);
    let tcp_port = port_of(&mut tcp_worker.0)?;
    let token = std::fs::read_to_string(certs.join("token"))?;
    let tls = TlsClient::from_pem_files(&certs.join("ca.crt"), None, "localhost")?;
    let over_tls = Attach::parse(&format!("https://localhost:{tls_port}"), token.trim())?;
    let over_tcp = Attach::parse(&format!("tcp://127.0.0.1:{tcp_port}"), token.trim())?;
    let over_tls = ctx
        .host
        .spawn(WorkerSpec::attach(over_tls.with_tls(tls)))
        .await?;
    let over_tcp = ctx.host.spawn(WorkerSpec::attach(over_tcp)).await?;

    // A warm-up of each path with a small file, then peaks measured from here.
    send(&over_tls, &file.0, size, 0).await?;
    let worker_pid = tls_worker.0.id().to_string();
    let host_base = reset_peak("self")?;
    let worker_base = reset_peak(&worker_pid)?;
    let (mut tls, mut tcp, mut raw, mut sha) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for trial in 1..=3 {
        tls.push(size as f64 / send(&over_tls, &file.0, size, trial * 2).await?);
        tcp.push(size as f64 / send(&over_tcp, &file.0, size, trial * 2 + 1).await?);
        raw.push(size as f64 / raw_tcp(&file.0)?);
        sha.push(size as f64 / sha_pass(&file.0)?);
    }
    let host_growth = status_kib("self", "VmHWM:")? - host_base;
    let worker_growth = status_kib(&worker_pid, "VmHWM:")? - worker_base;
    over_tls.shutdown().await;
    over_tcp.shutdown().await;
    let rates = Rates {
        tls: median(&tls),
        tcp: median(&tcp),
        raw: median(&raw),
        sha: median(&sha),
    };
    Ok(outcome(size, &rates, host_growth, worker_growth))
}

/// Seconds for one `stat` of `path` on `remote`, after stamping `mark` into its first bytes
/// (new content, so the worker does not hold it yet and it must travel).
async fn send(remote: &RemotePlugin, path: &Path, size: u64, mark: u64) -> Result<f64> {
    let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
    f.seek(SeekFrom::Start(0))?;
    f.write_all(format!("{mark:016}").as_bytes())?;
    drop(f);
    let input = json!({"op": "stat", "file": FileRef::new(path, size).to_value()});
    let started = Instant::now();
    let out = remote.execute(input).await?;
    let took = started.elapsed().as_secs_f64();
    if out["size"] != size {
        bail!("the remote worker answered {out}, expected size {size}");
    }
    Ok(took)
}

/// Seconds to read `path` and write it through a TCP loopback connection to a thread that
/// reads and discards it (user-space reads and writes, as an upload does).
fn raw_tcp(path: &Path) -> Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let at = listener.local_addr()?;
    let sink = std::thread::spawn(move || -> std::io::Result<u64> {
        let (mut conn, _) = listener.accept()?;
        let mut buf = vec![0u8; RAW_CHUNK];
        let mut total = 0;
        loop {
            match conn.read(&mut buf)? {
                0 => return Ok(total),
                n => total += n as u64,
            }
        }
    });
    let started = Instant::now();
    let mut conn = TcpStream::connect(at)?;
    let mut file = std::fs::File::open(path)?;
    let mut buf = vec![0u8; RAW_CHUNK];
    loop {
        match file.read(&mut buf)? {
            0 => break,
            n => conn.write_all(&buf[..n])?,
        }
    }
    drop(conn);
    let received = sink
        .join()
        .map_err(|_| anyhow::anyhow!("the sink panicked"))??;
    let took = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        received == std::fs::metadata(path)?.len(),
        "raw TCP lost bytes"
    );
    Ok(took)
}

/// Seconds for one SHA-256 pass over `path` (read 256 KiB at a time, as an upload reads):
/// the ceiling of any transfer that must check every byte's digest on arrival.
fn sha_pass(path: &Path) -> Result<f64> {
    let started = Instant::now();
    let mut file = std::fs::File::open(path)?;
    let mut hasher = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; RAW_CHUNK];
    loop {
        match file.read(&mut buf)? {
            0 => break,
            n => hasher.update(&buf[..n]),
        }
    }
    std::hint::black_box(hasher.finish());
    Ok(started.elapsed().as_secs_f64())
}

/// Median throughputs of a run, bytes per second.
#[derive(Clone, Copy)]
struct Rates {
    tls: f64,
    tcp: f64,
    raw: f64,
    sha: f64,
}

/// Resets the peak RSS (`VmHWM`) of `/proc/<pid>` (ours, or a child of ours) to its current
/// RSS, and returns that, in KiB.
fn reset_peak(pid: &str) -> Result<f64> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
        .with_context(|| format!("resetting the peak RSS of {pid}"))?;
    status_kib(pid, "VmRSS:")
}

/// A KiB figure (`VmHWM:`, `VmRSS:`) of `/proc/<pid>/status`.
fn status_kib(pid: &str, key: &str) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with(key))
        .with_context(|| format!("no {key} for {pid}"))?;
    let kib = line.split_whitespace().nth(1).context("no value")?;
    Ok(kib.parse()?)
}

fn outcome(size: u64, rates: &Rates, host: f64, worker: f64) -> Outcome {
    let Rates { tls, tcp, raw, sha } = *rates;
    let ratio = tls / raw;
    let mut o = Outcome::new(
        "P25",
        "the big file as a FileRef to a remote files-worker (stat) with no shared filesystem: \
         hashed while streamed over TLS on loopback, checked and stored by the worker; fresh \
         content each trial; vs raw TCP loopback (read + write 256 KiB at a time, a thread discarding), \
         trials alternating",
        "over TLS >= 0.7 x raw TCP loopback; peak RSS flat on both sides (grows < 32 MiB)",
    );
    let gb = |bps: f64| bps / 1e9;
    o.measure("bytes", size);
    o.measure("tls_gb_per_s", gb(tls));
    o.measure("plain_tcp_gb_per_s", gb(tcp));
    o.measure("ratio_tls_to_raw", ratio);
    o.measure("host_peak_rss_growth_mib", host / 1024.0);
    o.measure("worker_peak_rss_growth_mib", worker / 1024.0);
    o.base("raw_tcp_gb_per_s", gb(raw));
    o.base("sha256_pass_gb_per_s", gb(sha));
    o.checks
        .push(Check::at_least("TLS upload / raw TCP", ratio, 0.7));
    o.checks.push(Check::at_most(
        "host peak RSS growth, MiB",
        host / 1024.0,
        32.0,
    ));
    o.checks.push(Check::at_most(
        "worker peak RSS growth, MiB",
        worker / 1024.0,
        32.0,
    ));
    o.measured_text = format!(
        "TLS {:.2} GB/s ({ratio:.2}x), plain TCP {:.2} GB/s; peak RSS grew {:.1} MiB (host), {:.1} MiB (worker)",
        gb(tls),
        gb(tcp),
        host / 1024.0,
        worker / 1024.0
    );
    o.baseline_text = format!(
        "raw TCP loopback {:.2} GB/s; one SHA-256 pass {:.2} GB/s ({:.2}x raw)",
        gb(raw),
        gb(sha),
        sha / raw
    );
    o
}
