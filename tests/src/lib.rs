//! Support for the integration tests: finding the real binaries, a private host per test, and
//! the leak audit every process test ends with.

use plugvisor_host::{Host, HostConfig, RemotePlugin, WorkerSpec};
use std::path::{Path, PathBuf};
use std::sync::{Once, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, MutexGuard};

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

/// Process tests run one at a time: on two cores that keeps timings honest, and it makes the
/// process-wide fd count a meaningful baseline.
pub async fn serial() -> MutexGuard<'static, ()> {
    static LOCK: OnceLock<Mutex<()>> = OnceLock::new();
    LOCK.get_or_init(|| Mutex::new(())).lock().await
}

/// One test's world: a host in a private base directory, and what to audit at the end.
pub struct World {
    /// The host under test.
    pub host: Host,
    /// The base directory the host lives in (must end up empty).
    pub base: tempfile::TempDir,
    pids: Vec<u32>,
    fds_before: usize,
    _turn: MutexGuard<'static, ()>,
}

impl World {
    /// Waits for its turn, then makes a host in a fresh base directory.
    pub async fn new() -> Self {
        let turn = serial().await;
        let base = tempfile::tempdir().expect("tempdir");
        let fds_before = open_fds();
        let host = Host::with_config(HostConfig {
            base_dir: Some(base.path().to_path_buf()),
        })
        .expect("host");
        Self {
            host,
            base,
            pids: Vec::new(),
            fds_before,
            _turn: turn,
        }
    }

    /// Spawns the bundled plugin `name` and remembers its pid for the audit.
    pub async fn spawn(&mut self, name: &str) -> RemotePlugin {
        let plugin = self.host.spawn(spec(name)).await.expect("spawn worker");
        self.pids.push(plugin.pid());
        plugin
    }

    /// Remembers a pid spawned some other way.
    pub fn track(&mut self, pid: u32) {
        self.pids.push(pid);
    }

    /// Shuts the host down and checks nothing is left: no worker process or process-group
    /// member, no zombie, no file under the base directory, the fd count back to baseline.
    pub async fn finish(self) {
        let World {
            host,
            base,
            pids,
            fds_before,
            _turn,
        } = self;
        host.shutdown().await;
        audit(&pids, base.path(), fds_before).await;
    }
}

/// The leak audit (see [`World::finish`]); polls for up to 3 s, as exits are asynchronous.
pub async fn audit(pids: &[u32], base: &Path, fds_before: usize) {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let problems = leaks(pids, base, fds_before);
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
    let fds = open_fds();
    if fds > fds_before {
        problems.push(format!("open fds grew from {fds_before} to {fds}"));
    }
    problems
}

/// The state letter of `pid` from `/proc` (`Z` for a zombie), or `None` if it is gone.
pub fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = stat.rsplit_once(')')?.1;
    after_name.trim_start().chars().next()
}

/// True while any process is in process group `pgid`.
pub fn group_alive(pgid: u32) -> bool {
    let pgid = nix::unistd::Pid::from_raw(pgid as i32);
    nix::sys::signal::killpg(pgid, None).is_ok()
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
