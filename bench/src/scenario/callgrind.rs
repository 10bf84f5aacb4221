//! P24: instructions per small call (valgrind's callgrind), host side and worker side, for
//! plugvisor and bare hyper: each side runs N and 2N calls after a warm-up under callgrind,
//! and the difference of the two totals divided by N is one steady-state call's cost. The
//! same for one item of P3's stream (the ticker's 16-byte items), N × [`ITEMS_PER_CALL`]
//! items against twice as many.

use super::{small_input, Ctx};
use crate::baseline::bare_hyper::BareHyper;
use crate::baseline::client::HttpConn;
use crate::procs::{first_line, worker_binary};
use crate::report::Outcome;
use anyhow::{bail, Context as _, Result};
use bytes::Bytes;
use futures_util::StreamExt as _;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use plugvisor_host::{Host, Plugin as _, RemotePlugin, WorkerSpec};
use plugvisor_proto::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Calls before counting starts (connections made, caches and allocator warm).
const WARM: usize = 200;
/// N: the counted calls of the shorter run (the longer one makes 2N).
const N: usize = 500;

/// Streamed items per counted call of [`Target::Stream`]: N calls' worth is 50,000 items.
const ITEMS_PER_CALL: usize = 100;

/// Bytes of each streamed item (P3's).
const ITEM_BYTES: usize = 16;

/// Who is measured: plugvisor (`RemotePlugin` and the identity worker), bare hyper, or
/// plugvisor streaming P3's items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// `RemotePlugin` → the identity worker (it answers its input, as bare hyper does).
    Plugvisor,
    /// The bench's hyper client → bare-hyper server.
    Bare,
    /// `RemotePlugin::execute_stream` → the ticker worker, counted per item.
    Stream,
    /// `RemotePlugin` → the identity worker with P23's 1 MiB string input.
    Mib,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Self::Plugvisor => "plugvisor",
            Self::Bare => "bare_hyper",
            Self::Stream => "plugvisor_stream",
            Self::Mib => "plugvisor_mib",
        }
    }

    /// Units counted per counted call: items for a stream, else the call itself.
    fn units_per_call(self) -> usize {
        if self == Self::Stream {
            ITEMS_PER_CALL
        } else {
            1
        }
    }

    /// The input of one call: P1's small input, or P23's 1 MiB string.
    fn input(self) -> Value {
        if self == Self::Mib {
            json!("y".repeat(crate::plan::MIB as usize))
        } else {
            small_input()
        }
    }

    /// Parses the hidden subcommand's argument.
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "plugvisor" => Ok(Self::Plugvisor),
            "bare_hyper" => Ok(Self::Bare),
            "plugvisor_stream" => Ok(Self::Stream),
            "plugvisor_mib" => Ok(Self::Mib),
            other => bail!("unknown callgrind target {other}"),
        }
    }
}

/// True when `valgrind` runs.
pub fn available() -> bool {
    Command::new("valgrind")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// valgrind's arguments for a callgrind run writing `out`.
pub(crate) fn valgrind_args(out: &Path) -> Vec<String> {
    vec![
        "--tool=callgrind".to_owned(),
        format!("--callgrind-out-file={}", out.display()),
    ]
}

/// The total instruction count (`summary:` or `totals:`) of a callgrind output file.
fn total_ir(out: &Path) -> Result<u64> {
    let text =
        std::fs::read_to_string(out).with_context(|| format!("reading {}", out.display()))?;
    text.lines()
        .filter_map(|l| {
            l.strip_prefix("summary:")
                .or_else(|| l.strip_prefix("totals:"))
        })
        .find_map(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no totals in {}", out.display()))
}

/// Makes `WARM` then `n` small calls through `call`.
async fn calls<F, Fut>(n: usize, mut call: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    for _ in 0..WARM + n {
        call().await?;
    }
    Ok(())
}

/// One warm-up stream, then one of `n` × [`ITEMS_PER_CALL`] items from the ticker `plugin`,
/// each checked as P3 checks them.
async fn stream_items(plugin: &RemotePlugin, n: usize) -> Result<()> {
    for items in [WARM * ITEMS_PER_CALL, n * ITEMS_PER_CALL] {
        let mut stream = plugin
            .execute_stream(json!({"n": items, "bytes": ITEM_BYTES}))
            .await?;
        let mut got = 0;
        while let Some(item) = stream.next().await {
            if item?.as_str().map(str::len) != Some(ITEM_BYTES) {
                bail!("the ticker sent an item that is not {ITEM_BYTES} bytes");
            }
            got += 1;
        }
        if got != items {
            bail!("the ticker sent {got} items, not {items}");
        }
    }
    Ok(())
}

async fn bare_call(conn: &mut HttpConn) -> Result<()> {
    let body = serde_json::to_vec(&json!({ "input": small_input() }))?;
    let answer: Value =
        serde_json::from_slice(&conn.post("/v1/execute", Bytes::from(body)).await?)?;
    if answer["output"] != small_input() {
        bail!("bare hyper answered {answer}");
    }
    Ok(())
}

/// The hidden subcommand `callgrind-client TARGET N`: the host side, run under callgrind by
/// [`host_side`]; its server runs natively.
///
/// # Errors
/// When the server cannot be started or a call fails.
pub async fn client(target: Target, n: usize, scratch: &Path) -> Result<()> {
    match target {
        Target::Plugvisor | Target::Mib => {
            let host = Host::new()?;
            let identity = host
                .spawn(WorkerSpec::new(worker_binary(crate::identity::NAME)?))
                .await?;
            let input = target.input();
            let result = calls(n, || async {
                identity.execute(input.clone()).await?;
                Ok(())
            })
            .await;
            identity.shutdown().await;
            host.shutdown().await;
            result
        }
        Target::Stream => {
            let host = Host::new()?;
            let ticker = host
                .spawn(WorkerSpec::new(worker_binary("ticker")?))
                .await?;
            let result = stream_items(&ticker, n).await;
            ticker.shutdown().await;
            host.shutdown().await;
            result
        }
        Target::Bare => {
            let server = BareHyper::unix(scratch, 1)?;
            let mut conn = server.connect().await?;
            for _ in 0..WARM + n {
                bare_call(&mut conn).await?;
            }
            Ok(())
        }
    }
}

/// Total instructions of the client process making `n` counted calls.
fn host_side(target: Target, n: usize, out: &Path) -> Result<u64> {
    let status = Command::new("valgrind")
        .args(valgrind_args(out))
        .arg(std::env::current_exe()?)
        .args(["callgrind-client", target.name(), &n.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running valgrind")?;
    if !status.success() {
        bail!("callgrind-client {} exited with {status}", target.name());
    }
    total_ir(out)
}

/// Total instructions of the server process answering `n` counted calls.
async fn worker_side(ctx: &Ctx, target: Target, n: usize, out: &Path) -> Result<u64> {
    match target {
        Target::Plugvisor | Target::Mib => {
            let identity = ctx
                .host
                .spawn(under_callgrind(crate::identity::NAME, out)?)
                .await?;
            let input = target.input();
            let result = calls(n, || async {
                identity.execute(input.clone()).await?;
                Ok(())
            })
            .await;
            identity.shutdown().await;
            result?;
        }
        Target::Stream => {
            let ticker = ctx.host.spawn(under_callgrind("ticker", out)?).await?;
            let result = stream_items(&ticker, n).await;
            ticker.shutdown().await;
            result?;
        }
        Target::Bare => bare_server_side(ctx, n, out).await?,
    }
    total_ir(out)
}

/// The bundled worker `name` started by the host under callgrind, writing `out`.
fn under_callgrind(name: &str, out: &Path) -> Result<WorkerSpec> {
    let mut spec = WorkerSpec::new("valgrind");
    for a in valgrind_args(out) {
        spec = spec.arg(a);
    }
    Ok(spec
        .arg(worker_binary(name)?)
        .start_timeout(Duration::from_secs(60))
        .stop_grace(Duration::from_secs(30)))
}

/// bare-hyper under callgrind; SIGTERM (callgrind writes its counts) and reaped after.
async fn bare_server_side(ctx: &Ctx, n: usize, out: &Path) -> Result<()> {
    let socket = ctx.scratch.path().join("callgrind-bare.sock");
    let mut child = Command::new("valgrind")
        .args(valgrind_args(out))
        .arg(std::env::current_exe()?)
        .arg("serve-bare-hyper")
        .arg(&socket)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let result = async {
        first_line(child.stdout.take())?;
        let mut conn = HttpConn::unix(&socket, None).await?;
        for _ in 0..WARM + n {
            bare_call(&mut conn).await?;
        }
        anyhow::Ok(())
    }
    .await;
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
    let _ = child.wait();
    result
}

/// Instructions per call on one side: (total with 2N calls − total with N) / N.
async fn per_call(ctx: &Ctx, target: Target, host: bool) -> Result<f64> {
    let mut totals = [0u64; 2];
    for (i, n) in [N, 2 * N].into_iter().enumerate() {
        let out = out_file(ctx, target, host, n);
        totals[i] = if host {
            let out2 = out.clone();
            tokio::task::spawn_blocking(move || host_side(target, n, &out2)).await??
        } else {
            worker_side(ctx, target, n, &out).await?
        };
    }
    let units = (N * target.units_per_call()) as f64;
    Ok((totals[1] as f64 - totals[0] as f64) / units)
}

fn out_file(ctx: &Ctx, target: Target, host: bool, n: usize) -> PathBuf {
    let side = if host { "host" } else { "worker" };
    ctx.scratch
        .path()
        .join(format!("callgrind.{}.{side}.{n}", target.name()))
}

/// P24: instructions per small call, both sides, plugvisor and bare hyper.
///
/// # Errors
/// When valgrind is missing or a run fails.
pub async fn counts(ctx: &Ctx) -> Result<Outcome> {
    if !available() {
        bail!("valgrind is not installed (scripts/bench --callgrind installs it): not measured");
    }
    let mut o = Outcome::new(
        "P24",
        "instructions per small call (callgrind), host side and worker side, plugvisor vs bare hyper",
        "report only",
    );
    let mut got = std::collections::BTreeMap::new();
    for target in [Target::Plugvisor, Target::Bare] {
        for host in [true, false] {
            let side = if host { "host" } else { "worker" };
            let ir = per_call(ctx, target, host).await?;
            o.measure(&format!("{}_{side}_ir_per_call", target.name()), ir.round());
            got.insert((target.name(), side), ir);
        }
    }
    let total = |t: &str| got[&(t, "host")] + got[&(t, "worker")];
    let ratio = total("plugvisor") / total("bare_hyper");
    o.measure("plugvisor_over_bare_hyper_total", ratio);
    o.measured_text = format!(
        "host {:.0} + worker {:.0} Ir/call",
        got[&("plugvisor", "host")],
        got[&("plugvisor", "worker")]
    );
    o.baseline_text = format!(
        "bare-hyper host {:.0} + server {:.0} ({ratio:.2}x)",
        got[&("bare_hyper", "host")],
        got[&("bare_hyper", "worker")]
    );
    for host in [true, false] {
        let side = if host { "host" } else { "worker" };
        let ir = per_call(ctx, Target::Stream, host).await?;
        o.measure(&format!("stream_{side}_ir_per_item"), ir.round());
        got.insert(("plugvisor_stream", side), ir);
    }
    o.measured_text.push_str(&format!(
        "; stream host {:.0} + worker {:.0} Ir/item",
        got[&("plugvisor_stream", "host")],
        got[&("plugvisor_stream", "worker")]
    ));
    o.notes.push(format!(
        "{WARM} warm-up calls, then N={N} and 2N counted; (Ir(2N) - Ir(N)) / N per call; \
         streams: P3's {ITEM_BYTES}-byte ticker items, N x {ITEMS_PER_CALL} and twice as many \
         after a warm-up stream, per item"
    ));
    Ok(o)
}
