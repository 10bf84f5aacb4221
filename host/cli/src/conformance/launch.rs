//! Starting the worker under test exactly as the host does (the engine's
//! [`plugvisor_host::worker_command`]: `--socket`, the token, transfer directory, body limit
//! and `PLUGVISOR_WATCH_STDIN=1` in the environment, pipes on stdin, stdout and stderr, a
//! process group of its own; and `PLUGVISOR_OUTPUT_DIR`, as for a sandboxed worker), reading its handshake, watching its stdout afterwards, and
//! stopping it: every worker is killed with its group and reaped, its directory removed.

use super::http::Wire;
use anyhow::{anyhow, Context};
use plugvisor_host::WorkerSpec;
use plugvisor_proto::wire::{OUTPUT_DIR_ENV, OUTPUT_SUBDIR, TOKEN_ENV};
use std::collections::VecDeque;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::task::JoinHandle;

/// Lines of stderr kept for error messages.
const TAIL_LINES: usize = 20;

/// What to start and how long to wait for it.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// The program and its arguments (the kit adds `--socket PATH`, as the host does).
    pub(crate) spec: WorkerSpec,
    /// Where the kit makes its private directories.
    pub(crate) base: PathBuf,
    /// How long one request may take.
    pub(crate) timeout: Duration,
}

/// Why a worker did not get as far as a handshake line.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StartError {
    /// The kit could not run it at all (its directories, or the program itself): bad input.
    #[error(transparent)]
    Setup(#[from] anyhow::Error),
    /// It ran but printed no handshake line: exited, closed stdout, or too slow (with its
    /// stderr tail). A failed check, not bad input.
    #[error("{0}")]
    NoHandshake(String),
}

/// A worker the kit started and has read the handshake line of.
pub(crate) struct Worker {
    /// A client for its socket.
    pub(crate) wire: Wire,
    /// Its process id (the leader of its process group).
    pub(crate) pid: u32,
    /// Its transfer directory.
    pub(crate) transfer_dir: PathBuf,
    /// The socket path it was given.
    pub(crate) socket: PathBuf,
    /// The first line it printed on stdout, without the newline.
    pub(crate) handshake: String,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout_after: Arc<Mutex<Vec<u8>>>,
    stdout_task: JoinHandle<()>,
    stderr: Arc<Mutex<VecDeque<String>>>,
    _dir: tempfile::TempDir,
}

/// A private 0700 directory for one worker: `w.sock` and `transfer/`.
fn private_dir(base: &std::path::Path) -> anyhow::Result<tempfile::TempDir> {
    std::fs::create_dir_all(base).with_context(|| format!("creating {}", base.display()))?;
    tempfile::Builder::new()
        .prefix("conformance-")
        .tempdir_in(base)
        .with_context(|| format!("creating a directory in {}", base.display()))
}

/// 256 random bits, hex, as the host makes them.
fn new_token() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

impl Worker {
    /// Starts the target and reads its first stdout line, within the spec's start timeout.
    ///
    /// # Errors
    /// [`StartError::Setup`]: the program cannot be run (naming it).
    /// [`StartError::NoHandshake`]: it exits or closes stdout first, or prints no line in
    /// time; with the last lines of its stderr. The process is gone by then.
    pub(crate) async fn start(target: &Target) -> Result<Self, StartError> {
        let dir = private_dir(&target.base)?;
        let socket = dir.path().join("w.sock");
        let transfer_dir = dir.path().join("transfer");
        std::fs::create_dir(&transfer_dir).context("creating the transfer directory")?;
        let token = new_token();
        let out_dir = transfer_dir.join(OUTPUT_SUBDIR);
        std::fs::create_dir(&out_dir).context("creating the output directory")?;
        let mut std_command =
            plugvisor_host::worker_command(&target.spec, &socket, &transfer_dir, &token);
        // As the host does for a sandboxed worker: outputs go to `out/` (docs/PROTOCOL.md §10).
        std_command.env(OUTPUT_DIR_ENV, &out_dir);
        let mut command = tokio::process::Command::from(std_command);
        command.process_group(0).kill_on_drop(true);
        let program = target.spec.program.display().to_string();
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {program:?}"))?;
        let pid = child
            .id()
            .ok_or_else(|| anyhow!("{program} exited at once"))?;
        let stderr = tail_stderr(child.stderr.take());
        let stdout = child.stdout.take().context("stdout was not piped")?;
        let stdin = child.stdin.take();
        let mut reader = BufReader::new(stdout);
        let first = first_line(&mut reader, &mut child, target.spec.start_timeout).await;
        let handshake = match first {
            Ok(line) => line,
            Err(why) => {
                kill_group(pid);
                let _ = child.wait().await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                return Err(StartError::NoHandshake(format!(
                    "{program}: {why}{}",
                    tail_text(&stderr)
                )));
            }
        };
        let stdout_after = Arc::new(Mutex::new(Vec::new()));
        let stdout_task = tokio::spawn(drain(reader, Arc::clone(&stdout_after)));
        Ok(Self {
            wire: Wire::new(&socket, &token, target.timeout),
            pid,
            transfer_dir,
            socket,
            handshake,
            child,
            stdin,
            stdout_after,
            stdout_task,
            stderr,
            _dir: dir,
        })
    }

    /// Its exit status, if it has exited (for messages: a check that cannot connect says so).
    pub(crate) fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Closes its stdin (the host's end of the watch pipe).
    pub(crate) fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Its exit status if it exits within `within`.
    pub(crate) async fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        tokio::time::timeout(within, self.child.wait())
            .await
            .ok()
            .and_then(Result::ok)
    }

    /// What it printed on stdout after the handshake line, waiting up to `within` for
    /// stdout to close (it closes when the worker and every process holding it exit).
    pub(crate) async fn stdout_after(&mut self, within: Duration) -> Vec<u8> {
        let _ = tokio::time::timeout(within, &mut self.stdout_task).await;
        self.stdout_after
            .lock()
            .map(|b| b.clone())
            .unwrap_or_default()
    }

    /// The last lines of its stderr, for messages.
    pub(crate) fn stderr_tail(&self) -> String {
        tail_text(&self.stderr)
    }

    /// Kills its process group and reaps it; its directory goes with `self`.
    pub(crate) async fn stop(mut self) {
        kill_group(self.pid);
        let _ = self.child.wait().await;
        self.stdout_task.abort();
    }
}

/// SIGKILL to the process group `pid` leads (the guardian and anything the plugin started).
fn kill_group(pid: u32) {
    // Never 0: that would be the kit's own group.
    if let Ok(pid) = i32::try_from(pid).map(|p| p.max(1)) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// The first stdout line, racing the timeout and the process's exit.
async fn first_line(
    reader: &mut BufReader<ChildStdout>,
    child: &mut Child,
    timeout: Duration,
) -> Result<String, String> {
    let mut line = String::new();
    let read = tokio::time::timeout(timeout, reader.read_line(&mut line));
    tokio::select! {
        read = read => match read {
            Err(_) => Err(format!("no handshake line on stdout within {timeout:?}")),
            Ok(Err(e)) => Err(format!("reading stdout: {e}")),
            Ok(Ok(0)) => Err("stdout closed without a handshake line".to_owned()),
            Ok(Ok(_)) if !line.ends_with('\n') => {
                Err(format!("stdout closed inside the first line {line:?}"))
            }
            Ok(Ok(_)) => Ok(line.trim_end_matches(['\n', '\r']).to_owned()),
        },
        status = child.wait() => Err(match status {
            Ok(status) => format!("exited ({status}) before its handshake"),
            Err(e) => format!("waiting for it: {e}"),
        }),
    }
}

/// Keeps what comes on stdout after the handshake (up to 64 KiB) until it closes.
async fn drain(mut reader: BufReader<ChildStdout>, into: Arc<Mutex<Vec<u8>>>) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = reader.read(&mut buf).await {
        if n == 0 {
            break;
        }
        if let Ok(mut kept) = into.lock() {
            let room = (64 * 1024usize).saturating_sub(kept.len());
            kept.extend_from_slice(&buf[..n.min(room)]);
        }
    }
}

/// Keeps the last [`TAIL_LINES`] lines of stderr.
fn tail_stderr(stderr: Option<tokio::process::ChildStderr>) -> Arc<Mutex<VecDeque<String>>> {
    let tail = Arc::new(Mutex::new(VecDeque::new()));
    if let Some(stderr) = stderr {
        let keep = Arc::clone(&tail);
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(mut tail) = keep.lock() {
                    if tail.len() == TAIL_LINES {
                        tail.pop_front();
                    }
                    tail.push_back(line);
                }
            }
        });
    }
    tail
}

fn tail_text(tail: &Mutex<VecDeque<String>>) -> String {
    let lines: Vec<String> = tail
        .lock()
        .map(|t| t.iter().cloned().collect())
        .unwrap_or_default();
    if lines.is_empty() {
        "; its stderr was empty".to_owned()
    } else {
        format!(
            "; the last lines of its stderr:\n    {}",
            lines.join("\n    ")
        )
    }
}

/// Runs `program args` as a person trying it would: no listen address, no token, stdin an
/// open pipe. Answers its exit status (or `None` if it did not exit within `within`; it is
/// killed then) and its stderr.
pub(crate) async fn run_bare(
    spec: &WorkerSpec,
    within: Duration,
) -> anyhow::Result<(Option<ExitStatus>, String)> {
    let mut command = tokio::process::Command::new(&spec.program);
    command
        .args(&spec.args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .env_remove(TOKEN_ENV)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot start {:?}", spec.program.display().to_string()))?;
    let pid = child.id().unwrap_or_default();
    let _stdin = child.stdin.take();
    let mut stderr = child.stderr.take();
    let status = tokio::time::timeout(within, child.wait()).await.ok();
    kill_group(pid);
    let _ = child.wait().await;
    let mut text = String::new();
    if let Some(err) = stderr.as_mut() {
        let _ =
            tokio::time::timeout(Duration::from_millis(200), err.read_to_string(&mut text)).await;
    }
    Ok((status.and_then(Result::ok), text))
}

/// The program and arguments of `command` as a spec (start timeout and body limit set).
pub(crate) fn spec_of(command: &[OsString], start_timeout: Duration, max_body: u64) -> WorkerSpec {
    let mut spec = WorkerSpec::new(command.first().cloned().unwrap_or_default());
    spec.args = command.iter().skip(1).cloned().collect();
    spec.start_timeout(start_timeout).max_body(max_body)
}
