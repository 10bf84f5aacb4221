//! Starting a worker: spawn, read the handshake, ask for `/v1/info`.

use crate::cgroup::WorkerGroup;
use crate::client::WorkerClient;
use crate::dirs::HostDir;
use crate::error::HostError;
use crate::events::{EventBus, EventKind};
use crate::exchange::{self, Failure};
use crate::identity::PluginIdentity;
use crate::process::{ProcessParts, WorkerProcess};
use crate::sandbox::{Enforced, Places, Prepared};
use crate::spawner::{self, ExitWatch};
use crate::spec::WorkerSpec;
use crate::stderr::StderrTail;
use bytes::Bytes;
use http::Method;
use plugvisor_proto::wire::{self, Handshake, InfoResponse, Transport};
use plugvisor_proto::PluginError;
use std::os::fd::OwnedFd;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader, Take};
use tokio::net::unix::pipe;

/// A sandboxed worker's socket, inside its transfer directory.
const SANDBOXED_SOCKET: &str = "w.sock";

/// Longest handshake line accepted.
const MAX_HANDSHAKE: u64 = wire::MAX_HANDSHAKE_LEN as u64;

/// How long output a worker wrote before it exited may take to arrive.
const GRACE_AFTER_EXIT: Duration = Duration::from_millis(250);

/// A started worker: its process, a client for it, and what it said about itself.
#[derive(Debug)]
pub(crate) struct Launched {
    pub(crate) process: WorkerProcess,
    pub(crate) client: Arc<WorkerClient>,
    pub(crate) identity: PluginIdentity,
    /// What its sandbox enforces, when it has one.
    pub(crate) sandbox: Option<Enforced>,
}

/// Spawns the worker of `spec` as worker number `n` of `host_dir`.
///
/// On any error the process group is killed and reaped and its files removed before returning
/// (dropping the half-built [`WorkerProcess`] does that).
pub(crate) async fn launch(
    spec: &WorkerSpec,
    n: u64,
    host_dir: &Arc<HostDir>,
    events: &EventBus,
) -> Result<Launched, HostError> {
    let io_err = |source| HostError::Spawn {
        program: spec.program.clone(),
        source,
    };
    let transfer_dir = host_dir.transfer_dir(n).map_err(io_err)?;
    // A sandboxed worker makes its socket in its own directory, never beside its siblings'.
    let socket = match spec.sandbox {
        Some(_) => transfer_dir.join(SANDBOXED_SOCKET),
        None => host_dir.socket_path(n),
    };
    let token = new_token();
    let mut command = build_command(spec, &socket, &transfer_dir, &token);
    let (sandbox, group) = match sandbox_for(spec, &mut command, host_dir, &transfer_dir) {
        Ok(Some((prepared, group))) => (Some(prepared), group),
        Ok(None) => (None, None),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&transfer_dir);
            return Err(e);
        }
    };
    let enforced = sandbox.as_ref().map(|p| p.enforced.clone());
    if let Some(e) = &enforced {
        tracing::info!(
            plugin = %spec.label(),
            filesystem = %e.filesystem,
            network = %e.network,
            syscalls = %e.syscalls,
            memory_mib = ?e.memory_mib,
            pids = ?e.pids,
            tree = %e.tree,
            uid = ?e.uid,
            missing = ?e.missing,
            "starting a sandboxed worker"
        );
    }
    let spawned = spawner::spawn(command, spec.limits, sandbox, spec.self_armed).await;
    let mut child = spawned
        .inspect_err(|_| {
            let _ = std::fs::remove_dir_all(&transfer_dir);
        })
        .map_err(io_err)?;
    let (stdin, stdout, stderr) = (child.stdin.take(), child.stdout.take(), child.stderr.take());
    let pid = child.id();
    let exit = start_waiter(child, group).map_err(io_err)?;
    events.emit(&spec.label(), EventKind::Started { pid });
    let stderr = match stderr {
        Some(s) => StderrTail::start(s, spec.label(), pid),
        None => Err(std::io::Error::other("stderr was not piped")),
    };
    let process = WorkerProcess::new(ProcessParts {
        label: spec.label(),
        pid,
        stdin,
        exit,
        stderr: stderr.map_err(io_err)?,
        grace: spec.stop_grace,
        socket,
        transfer_dir,
        host_dir: Arc::clone(host_dir),
    });
    match connect(spec, &process, stdout, &token).await {
        Ok((client, info)) => {
            tracing::info!(plugin = %info.name, version = %info.version, pid, "worker ready");
            Ok(Launched {
                process,
                client,
                identity: info.into(),
                sandbox: enforced,
            })
        }
        Err(e) => {
            process.kill().await;
            Err(e)
        }
    }
}

async fn connect(
    spec: &WorkerSpec,
    process: &WorkerProcess,
    stdout: Option<std::process::ChildStdout>,
    token: &str,
) -> Result<(Arc<WorkerClient>, InfoResponse), HostError> {
    let stdout = stdout.ok_or_else(|| HostError::Spawn {
        program: spec.program.clone(),
        source: std::io::Error::other("stdout was not piped"),
    })?;
    let handshake = await_handshake(spec, process, stdout).await?;
    let client = WorkerClient::new(handshake.transport, token).map_err(|e| HostError::Spawn {
        program: spec.program.clone(),
        source: std::io::Error::other(e),
    })?;
    let client = Arc::new(client);
    // A worker that put its info on the handshake line spares the `/v1/info` round trip.
    let info = match handshake.info {
        Some(info) => check_info(spec, *info)?,
        None => fetch_info(spec, &client).await?,
    };
    Ok((client, info))
}

fn start_waiter(child: Child, group: Option<WorkerGroup>) -> std::io::Result<Arc<ExitWatch>> {
    let pid = child.id();
    ExitWatch::start(child, group).inspect_err(|_| {
        // No thread to reap it: kill it now; it stays a zombie until the host exits.
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    })
}

/// 256 random bits, hex.
fn new_token() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// Prepares the spec's sandbox, if any: the worker's `out/` area (named to it in the
/// environment), the rules, and its cgroup. `build_command` already gave it a sandbox's
/// environment.
fn sandbox_for(
    spec: &WorkerSpec,
    command: &mut Command,
    host_dir: &HostDir,
    transfer_dir: &std::path::Path,
) -> Result<Option<(Prepared, Option<WorkerGroup>)>, HostError> {
    let Some(sandbox) = &spec.sandbox else {
        return Ok(None);
    };
    let out_dir = transfer_dir.join(wire::OUTPUT_SUBDIR);
    std::fs::create_dir(&out_dir).map_err(|source| HostError::Spawn {
        program: spec.program.clone(),
        source,
    })?;
    let places = Places {
        program: &spec.program,
        transfer_dir,
        out_dir: &out_dir,
    };
    let prepared = sandbox
        .prepare(&places)
        .map_err(|source| HostError::Sandbox {
            program: spec.program.clone(),
            source,
        })?;
    if let Some((uid, gid)) = prepared.0.identity() {
        give_to(host_dir, &[transfer_dir, &out_dir], uid, gid).map_err(|source| {
            HostError::Spawn {
                program: spec.program.clone(),
                source,
            }
        })?;
    }
    command.env(wire::OUTPUT_DIR_ENV, &out_dir);
    Ok(Some(prepared))
}

/// Makes `dirs` the worker user's own, and the host's directories traversable (not listable)
/// so that it can reach them.
fn give_to(
    host_dir: &HostDir,
    dirs: &[&std::path::Path],
    uid: u32,
    gid: u32,
) -> std::io::Result<()> {
    host_dir.allow_traversal()?;
    for dir in dirs {
        std::os::unix::fs::chown(dir, Some(uid), Some(gid))?;
    }
    Ok(())
}

/// The command the host runs for `spec`: its program and arguments, `--socket SOCKET`, the
/// token, transfer directory, body limit and `PLUGVISOR_WATCH_STDIN=1` in the environment,
/// and stdin, stdout and stderr piped (docs/PROTOCOL.md, section 2). The conformance kit
/// starts workers with it too, so it checks a worker started exactly as the host starts it.
pub fn build_command(
    spec: &WorkerSpec,
    socket: &std::path::Path,
    transfer_dir: &std::path::Path,
    token: &str,
) -> Command {
    let mut cmd = Command::new(&spec.program);
    if let Some(sandbox) = &spec.sandbox {
        // Nothing of the host's environment but what the sandbox passes on.
        cmd.env_clear().envs(sandbox.environment());
    }
    cmd.args(&spec.args)
        .arg("--socket")
        .arg(socket)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .env(wire::TOKEN_ENV, token)
        .env(wire::TRANSFER_DIR_ENV, transfer_dir)
        .env(wire::WATCH_STDIN_ENV, "1")
        .env(wire::MAX_BODY_ENV, spec.max_body.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Reads the handshake line, racing the start timeout and the process's exit.
async fn await_handshake(
    spec: &WorkerSpec,
    process: &WorkerProcess,
    stdout: std::process::ChildStdout,
) -> Result<Handshake, HostError> {
    let program = spec.program.clone();
    let receiver = pipe::Receiver::from_owned_fd(OwnedFd::from(stdout)).map_err(|source| {
        HostError::Spawn {
            program: program.clone(),
            source,
        }
    })?;
    let read = read_line(BufReader::new(receiver.take(MAX_HANDSHAKE)));
    tokio::pin!(read);
    let raced = tokio::select! {
        line = tokio::time::timeout(spec.start_timeout, &mut read) => Some(line),
        _ = process.exit.wait() => None,
    };
    let read = match raced {
        Some(read) => read.map_err(|_| HostError::StartTimeout {
            program: program.clone(),
            timeout: spec.start_timeout,
        })?,
        // It exited; a line it printed first still says more than the exit alone (the pipe
        // holds it, but the exit may have been seen before the line was read).
        None => tokio::time::timeout(GRACE_AFTER_EXIT, &mut read)
            .await
            .unwrap_or_else(|_| Ok((String::new(), None))),
    };
    let (line, rest) = read.map_err(|source| HostError::Spawn {
        program: program.clone(),
        source,
    })?;
    if let Some(mut stdout) = rest {
        // Whatever the worker writes after its handshake is logged, not left to fill the
        // pipe or to kill the worker with SIGPIPE (docs/PROTOCOL.md, section 3).
        stdout.get_mut().set_limit(u64::MAX);
        process
            .stderr
            .drain_stdout(stdout, spec.label(), process.pid);
    }
    if line.is_empty() {
        // stdout closed: usually because the process exited; say so if it did.
        if let Some(exit) = process.exit.wait_timeout(2 * GRACE_AFTER_EXIT).await {
            process.stderr.wait_closed(GRACE_AFTER_EXIT).await;
            let stderr_tail = process.stderr.lines();
            return Err(HostError::ExitedEarly {
                program,
                exit,
                stderr_tail,
            });
        }
    }
    check_handshake(&program, &line, process)
}

/// The handshake line, and the rest of stdout to drain once the line was read whole.
type Handshaken = (String, Option<BufReader<Take<pipe::Receiver>>>);

async fn read_line(mut reader: BufReader<Take<pipe::Receiver>>) -> std::io::Result<Handshaken> {
    let mut line = String::new();
    reader.read_line(&mut line).await?;
    let rest = line.ends_with('\n').then_some(reader);
    Ok((line, rest))
}

fn check_handshake(
    program: &std::path::Path,
    line: &str,
    process: &WorkerProcess,
) -> Result<Handshake, HostError> {
    let incompatible = |reason: String| HostError::Incompatible {
        program: program.to_path_buf(),
        reason,
    };
    if line.is_empty() {
        return Err(incompatible(
            "stdout closed without a handshake line".to_owned(),
        ));
    }
    let handshake = Handshake::parse(line).map_err(|e| incompatible(e.to_string()))?;
    if handshake.protocol != wire::PROTOCOL_VERSION {
        return Err(incompatible(format!(
            "it speaks protocol {}, this host speaks {}",
            handshake.protocol,
            wire::PROTOCOL_VERSION
        )));
    }
    if handshake.transport != Transport::Unix(process.socket.clone()) {
        return Err(incompatible(format!(
            "it listens on {line:?}, not on the socket it was given ({})",
            process.socket.display()
        )));
    }
    Ok(handshake)
}

async fn fetch_info(
    spec: &WorkerSpec,
    client: &Arc<WorkerClient>,
) -> Result<InfoResponse, HostError> {
    let err = |source: PluginError| HostError::Info {
        program: spec.program.clone(),
        source,
    };
    let fetch =
        exchange::json::<InfoResponse>(client, Method::GET, wire::routes::INFO, Bytes::new());
    let info = match tokio::time::timeout(spec.start_timeout, fetch).await {
        Err(_) => {
            let late = format!("no answer within {:?}", spec.start_timeout);
            return Err(err(PluginError::TimedOut(late)));
        }
        Ok(Err(Failure::Answer(e))) => return Err(err(e)),
        Ok(Err(Failure::Transport(e))) => {
            return Err(err(PluginError::Unavailable(crate::error::chain(&e))))
        }
        Ok(Ok(info)) => info,
    };
    check_info(spec, info)
}

/// Refuses info that reports another protocol version than this host's.
fn check_info(spec: &WorkerSpec, info: InfoResponse) -> Result<InfoResponse, HostError> {
    if info.protocol != wire::PROTOCOL_VERSION {
        return Err(HostError::Incompatible {
            program: spec.program.clone(),
            reason: format!("/v1/info reports protocol {}", info.protocol),
        });
    }
    Ok(info)
}
