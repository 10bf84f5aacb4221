//! Support for the integration tests: finding the real binaries, a private host per test, and
//! the leak audit every process test ends with.

// Test support: a failed unwrap is a failed test, with its backtrace.
#![allow(clippy::unwrap_used)]

use plugvisor_host::{
    EventKind, Host, HostConfig, RemotePlugin, Supervisor, SupervisorConfig, WorkerSpec,
};
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::{Duration, Instant};

/// The directory holding the workspace's binaries (`target/<profile>`), next to the test
/// executable's own `deps/` directory.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let deps = exe.parent().expect("deps dir");
    deps.parent().expect("profile dir").to_path_buf()
}

/// Path of the workspace binary `name`, building the workspace's binaries once if it is
/// missing (e.g. when only this package's tests were asked for).
pub fn bin(name: &str) -> PathBuf {
    static BUILD: Once = Once::new();
    let path = bin_dir().join(name);
    if !path.is_file() {
        BUILD.call_once(build_binaries);
    }
    assert!(
        path.is_file(),
        "{} not found; run `cargo build --workspace --bins`",
        path.display()
    );
    path
}

fn build_binaries() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let status = std::process::Command::new(cargo)
        .args(["build", "--workspace", "--bins", "--quiet"])
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .status()
        .expect("run cargo build");
    assert!(status.success(), "cargo build --workspace --bins failed");
}

/// A worker spec for the bundled plugin `name` with short test timings.
pub fn spec(name: &str) -> WorkerSpec {
    WorkerSpec::new(bin(&format!("{name}-worker")))
        .start_timeout(Duration::from_secs(10))
        .stop_grace(Duration::from_secs(2))
}

/// Runs one process test: waits for its turn (process tests run one at a time), then runs
/// `test` on a fresh current-thread runtime.
///
/// One at a time keeps timings honest on two cores and makes the process-wide fd count a
/// meaningful baseline for the leak audit. The turn is taken *before* the runtime exists: a
/// waiting test must not hold open the fds of a runtime of its own (epoll, eventfd, the
/// signal socket) while another test audits the process. Pure tests do not call this and run
/// in parallel.
pub fn serially(test: impl std::future::Future<Output = ()>) {
    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    // A failed test poisons the lock; the next one may still run.
    let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("test runtime")
        .block_on(test);
}

/// One test's world: a host in a private base directory, and what to audit at the end.
pub struct World {
    /// The host under test.
    pub host: Host,
    /// The base directory the host lives in (must end up empty).
    pub base: tempfile::TempDir,
    pids: std::sync::Arc<std::sync::Mutex<Vec<u32>>>,
    fds_before: usize,
}

impl World {
    /// Makes a host in a fresh base directory (inside [`serially`]).
    pub async fn new() -> Self {
        let base = tempfile::tempdir().expect("tempdir");
        let fds_before = open_fds();
        let host = Host::with_config(HostConfig {
            base_dir: Some(base.path().to_path_buf()),
        })
        .expect("host");
        let pids = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        // Every worker the host starts is audited, restarts included.
        let seen = std::sync::Arc::clone(&pids);
        host.register_hook("started", move |event| {
            if let EventKind::Started { pid } = event.kind {
                seen.lock().unwrap().push(pid);
            }
        });
        Self {
            host,
            base,
            pids,
            fds_before,
        }
    }

    /// Spawns the bundled plugin `name`, unsupervised.
    pub async fn spawn(&mut self, name: &str) -> RemotePlugin {
        self.host.spawn(spec(name)).await.expect("spawn worker")
    }

    /// Supervises the bundled plugin `name` with `config` and waits until it is ready.
    pub async fn supervise(&mut self, name: &str, config: SupervisorConfig) -> Supervisor {
        self.supervise_spec(spec(name), config).await
    }

    /// Supervises `spec` with `config` and waits (up to 10 s) until it is ready or failed.
    pub async fn supervise_spec(
        &mut self,
        spec: WorkerSpec,
        config: SupervisorConfig,
    ) -> Supervisor {
        let sup = self.host.supervise(spec, config);
        sup.wait_ready(Duration::from_secs(10)).await;
        sup
    }

    /// Remembers a pid spawned some other way (e.g. a grandchild) for the audit.
    pub fn track(&mut self, pid: u32) {
        self.pids.lock().unwrap().push(pid);
    }

    /// Shuts the host down and checks nothing is left: no worker process or process-group
    /// member, no zombie, no file under the base directory, the fd count back to baseline.
    pub async fn finish(self) {
        let World {
            host,
            base,
            pids,
            fds_before,
        } = self;
        host.shutdown().await;
        audit(&pids, base.path(), fds_before).await;
    }
}

/// The leak audit (see [`World::finish`]); polls for up to 3 s, as exits are asynchronous.
pub async fn audit(pids: &std::sync::Mutex<Vec<u32>>, base: &Path, fds_before: usize) {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let known = pids.lock().unwrap().clone();
        let problems = leaks(&known, base, fds_before);
        if std::env::var_os("PLUGVISOR_AUDIT_DEBUG").is_some() {
            eprintln!("audit: {problems:?}");
        }
        if problems.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            panic!("leak audit failed:\n  {}", problems.join("\n  "));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn leaks(pids: &[u32], base: &Path, fds_before: usize) -> Vec<String> {
    let mut problems = Vec::new();
    for &pid in pids {
        if let Some(state) = process_state(pid) {
            problems.push(format!("worker pid {pid} still exists (state {state})"));
        }
        if group_alive(pid) {
            problems.push(format!("process group {pid} still has members"));
        }
    }
    let left = files_under(base);
    if !left.is_empty() {
        problems.push(format!("files left under {}: {left:?}", base.display()));
    }
    let groups = worker_cgroups();
    if !groups.is_empty() {
        problems.push(format!("worker cgroups left: {groups:?}"));
    }
    let fds = open_fds();
    if fds > fds_before {
        problems.push(format!(
            "open fds grew from {fds_before} to {fds}: {:?}",
            fd_targets()
        ));
    }
    problems
}

/// The worker cgroups this process's hosts have now (`plugvisor-<our pid>-*/w*` in every
/// hierarchy under `/sys/fs/cgroup`, up to a few levels down).
pub fn worker_cgroups() -> Vec<PathBuf> {
    let prefix = format!("plugvisor-{}-", std::process::id());
    let mut found = Vec::new();
    let mut queue = vec![(PathBuf::from("/sys/fs/cgroup"), 0)];
    while let Some((dir, depth)) = queue.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                let leaves = std::fs::read_dir(&path).into_iter().flatten().flatten();
                found.extend(leaves.filter(|l| l.path().is_dir()).map(|l| l.path()));
            } else if depth < 4 {
                queue.push((path, depth + 1));
            }
        }
    }
    found
}

/// The state letter of `pid` from `/proc` (`Z` for a zombie), or `None` if it is gone.
pub fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = stat.rsplit_once(')')?.1;
    after_name.trim_start().chars().next()
}

/// True while process group `pgid` has a live member, or a zombie member that is ours to
/// reap. (A zombie that was reparented to init is init's to reap, not a leak of ours.)
pub fn group_alive(pgid: u32) -> bool {
    let me = std::process::id();
    proc_entries()
        .into_iter()
        .any(|p| p.pgid == pgid && (p.state != 'Z' || p.ppid == me))
}

/// One process as `/proc/<pid>/stat` describes it.
#[derive(Debug, Clone, Copy)]
pub struct ProcEntry {
    /// Its pid.
    pub pid: u32,
    /// Its state letter (`R`, `S`, `Z`, ...).
    pub state: char,
    /// Its parent's pid.
    pub ppid: u32,
    /// Its process group.
    pub pgid: u32,
}

/// Every process on the machine.
pub fn proc_entries() -> Vec<ProcEntry> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let num = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<u32>().ok())
                .unwrap_or(0)
        };
        let state = fields.first().and_then(|s| s.chars().next()).unwrap_or('?');
        found.push(ProcEntry {
            pid,
            state,
            ppid: num(1),
            pgid: num(2),
        });
    }
    found
}

/// Every file or directory under `dir` (not `dir` itself).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path.clone());
            }
            found.push(path);
        }
    }
    found
}

/// Number of open file descriptors of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// What this process's fds point at (for leak messages).
pub fn fd_targets() -> Vec<String> {
    std::fs::read_dir("/proc/self/fd")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|p| p.display().to_string())
        .collect()
}

/// Polls `check` every 10 ms until it is true or `timeout` passes; returns whether it held.
pub async fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    check()
}
pub mod http;
pub mod remote;
pub mod webdriver;
