//! P14, the escape table: every hostile attempt of the `intruder` test plugin, made by an
//! unsandboxed worker (the positive control: it must succeed) and by one in a sandbox with
//! cgroup limits (it must fail), counted.

use crate::report::{Check, Outcome};
use crate::scenario::Ctx;
use anyhow::{Context, Result};
use plugvisor_host::{Plugin, PluginError, RemotePlugin, Sandbox};
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

/// How an answer says the attempt worked.
#[derive(Clone, Copy)]
enum Worked {
    /// `"ok": true`.
    Ok,
    /// The syscall was not refused with EPERM (a probe's other errors mean it was allowed).
    NotDenied,
    /// `process_vm_readv` at address 0: EFAULT means it was permitted.
    Fault,
}

impl Worked {
    fn judge(self, answer: &Value) -> bool {
        let errno = answer["errno"].as_i64();
        match self {
            Self::Ok => answer["ok"] == json!(true),
            Self::NotDenied => errno != Some(i64::from(nix::libc::EPERM)),
            Self::Fault => errno == Some(i64::from(nix::libc::EFAULT)),
        }
    }
}

/// What the attempts reach for, set up by the bench.
struct Targets {
    sibling: RemotePlugin,
    tcp: std::net::TcpListener,
    udp: std::net::UdpSocket,
    v6: std::net::TcpListener,
    sibling_file: std::path::PathBuf,
}

impl Targets {
    async fn new(ctx: &Ctx) -> Result<Self> {
        let sibling = ctx.host.spawn(ctx.spec("echo")?).await?;
        let sibling_file = sibling.transfer_dir().join("sibling-secret");
        std::fs::write(&sibling_file, "not yours")?;
        Ok(Self {
            sibling,
            tcp: std::net::TcpListener::bind("127.0.0.1:0")?,
            udp: std::net::UdpSocket::bind("127.0.0.1:0")?,
            v6: std::net::TcpListener::bind("[::1]:0")?,
            sibling_file,
        })
    }

    /// Every attempt that answers in place: (what, input, how success shows).
    fn attempts(&self, outside: &Path) -> Result<Vec<(String, Value, Worked)>> {
        let host = std::process::id();
        let sibling = self.sibling.pid();
        let mut list = vec![
            (
                "read /etc/shadow",
                json!({"op": "read", "path": "/etc/shadow"}),
            ),
            (
                "read a sibling's file",
                json!({"op": "read", "path": self.sibling_file}),
            ),
            ("write outside", json!({"op": "write", "path": outside})),
            (
                "write into /etc",
                json!({"op": "write", "path": "/etc/plugvisor-p14-probe"}),
            ),
            (
                "read a kernel knob",
                json!({"op": "read", "path": "/proc/sys/kernel/core_pattern"}),
            ),
            (
                "read the host's environ",
                json!({"op": "environ", "pid": host}),
            ),
            (
                "read a sibling's environ",
                json!({"op": "environ", "pid": sibling}),
            ),
            ("ptrace a sibling", json!({"op": "ptrace", "pid": sibling})),
            (
                "signal the host",
                json!({"op": "signal", "pid": host, "sig": 0}),
            ),
            (
                "signal a sibling",
                json!({"op": "signal", "pid": sibling, "sig": 0}),
            ),
            (
                "TCP to the host",
                json!({"op": "connect", "addr": self.tcp.local_addr()?}),
            ),
            (
                "UDP to the host",
                json!({"op": "udp", "addr": self.udp.local_addr()?}),
            ),
            (
                "TCP over IPv6",
                json!({"op": "connect", "addr": self.v6.local_addr()?}),
            ),
            ("fork 200 children", json!({"op": "fork_bomb", "max": 200})),
        ]
        .into_iter()
        .map(|(what, input)| (what.to_owned(), input, Worked::Ok))
        .collect::<Vec<_>>();
        list.push((
            "read a sibling's memory".to_owned(),
            json!({"op": "process_vm_readv", "pid": sibling}),
            Worked::Fault,
        ));
        for name in [
            "ptrace_traceme",
            "bpf",
            "perf_event_open",
            "keyctl",
            "userfaultfd",
            "unshare_user",
            "mount",
            "io_uring_setup",
            "chroot",
            "setns",
        ] {
            let input = json!({"op": "syscall", "name": name});
            list.push((format!("syscall {name}"), input, Worked::NotDenied));
        }
        Ok(list)
    }
}

/// Tallies of the table.
#[derive(Default)]
struct Table {
    tried: u64,
    free: u64,
    boxed: u64,
    escaped: Vec<String>,
    controls_failed: Vec<String>,
}

impl Table {
    fn record(&mut self, what: &str, free: bool, boxed: bool) {
        self.tried += 1;
        self.free += u64::from(free);
        self.boxed += u64::from(boxed);
        if boxed {
            self.escaped.push(what.to_owned());
        }
        if !free {
            self.controls_failed.push(what.to_owned());
        }
    }
}

/// P14: the escape table.
///
/// # Errors
/// When a worker cannot be started or an attempt gets no answer where one is due.
pub async fn table(ctx: &Ctx) -> Result<Outcome> {
    let targets = Targets::new(ctx).await?;
    let locks = tempfile::tempdir_in(ctx.dir())?;
    let free = ctx.host.spawn(ctx.spec("intruder")?).await?;
    let sandbox = Sandbox {
        memory_mib: Some(64),
        pids: Some(64),
        write: vec![locks.path().to_path_buf()],
        ..Sandbox::default()
    };
    let boxed = ctx
        .host
        .spawn(ctx.spec("intruder")?.sandbox(sandbox))
        .await?;
    let mut table = Table::default();
    let outside = ctx.dir().join("p14-outside");
    for (what, input, worked) in targets.attempts(&outside)? {
        let a = free.execute(input.clone()).await.context(what.clone())?;
        let b = boxed.execute(input).await.context(what.clone())?;
        table.record(&what, worked.judge(&a), worked.judge(&b));
    }
    let escapees = escape(&free, &boxed, locks.path()).await?;
    let memory = json!({"op": "alloc", "mib": 256});
    let free_alloc = free.execute(memory.clone()).await?["ok"] == json!(true);
    let boxed_alloc = !matches!(
        boxed.execute(memory).await,
        Err(PluginError::WorkerCrashed(_))
    );
    table.record("allocate 256 MiB (64 MiB limit)", free_alloc, boxed_alloc);
    free.shutdown().await;
    boxed.shutdown().await;
    let (free_escaped, boxed_escaped) = escapees.after_stop().await?;
    table.record(
        "outlive the stop (setsid + double fork)",
        free_escaped,
        boxed_escaped,
    );
    targets.sibling.shutdown().await;
    Ok(outcome(&table))
}

/// The two escapees and their locks.
struct Escapees {
    free: (std::path::PathBuf, i32),
    boxed: (std::path::PathBuf, i32),
}

async fn escape(free: &RemotePlugin, boxed: &RemotePlugin, dir: &Path) -> Result<Escapees> {
    Ok(Escapees {
        free: escape_one(free, &dir.join("free.lock")).await?,
        boxed: escape_one(boxed, &dir.join("boxed.lock")).await?,
    })
}

/// Asks `plugin` for an escapee holding `lock`; its lock path and pid.
async fn escape_one(plugin: &RemotePlugin, lock: &Path) -> Result<(std::path::PathBuf, i32)> {
    let answer = plugin
        .execute(json!({"op": "escape", "lock": lock}))
        .await?;
    let pid = answer["pid"].as_i64().context("escapee pid")?;
    Ok((lock.to_path_buf(), i32::try_from(pid)?))
}

impl Escapees {
    /// Whether each escapee still holds its lock a moment after its worker stopped; every
    /// survivor is then killed.
    async fn after_stop(self) -> Result<(bool, bool)> {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut alive = [false; 2];
        for (i, (lock, pid)) in [self.free, self.boxed].into_iter().enumerate() {
            let held = std::fs::File::open(&lock)?.try_lock().is_err();
            if held {
                let pid = nix::unistd::Pid::from_raw(pid);
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            }
            alive[i] = held;
        }
        Ok((alive[0], alive[1]))
    }
}

fn outcome(table: &Table) -> Outcome {
    let mut o = Outcome::new(
        "P14",
        "escape table: hostile attempts of the intruder plugin, unsandboxed vs sandboxed \
         (default sandbox, memory_mib 64, pids 64)",
        "0 succeed sandboxed; every one succeeds unsandboxed",
    );
    o.measure("tried", table.tried);
    o.measure("succeeded_sandboxed", table.boxed);
    o.base("succeeded_unsandboxed", table.free);
    o.checks.push(Check::at_most(
        "attempts that succeed sandboxed",
        table.boxed as f64,
        0.0,
    ));
    o.checks.push(Check::at_least(
        "attempts that succeed unsandboxed (positive controls)",
        table.free as f64,
        table.tried as f64,
    ));
    o.measured_text = format!("{} of {} succeed sandboxed", table.boxed, table.tried);
    o.baseline_text = format!("{} of {} unsandboxed", table.free, table.tried);
    for what in &table.escaped {
        o.notes.push(format!("succeeded sandboxed: {what}"));
    }
    for what in &table.controls_failed {
        o.notes
            .push(format!("positive control failed (unsandboxed): {what}"));
    }
    o
}
