//! plugvisor-host, the engine: spawn plugins in crash-isolated worker processes, supervise
//! them, and call them through [`RemotePlugin`] or [`Supervisor`], which implement the same
//! [`Plugin`] trait as the plugin itself.
//!
//! ```no_run
//! use plugvisor_host::{Host, WorkerSpec};
//! use plugvisor_proto::{json, Plugin};
//!
//! # async fn demo() -> anyhow::Result<()> {
//! let host = Host::new()?;
//! let echo = host.spawn(WorkerSpec::new("target/debug/echo-worker")).await?;
//! echo.initialize(Some(json!({"mode": "upper"}))).await?;
//! assert_eq!(echo.execute(json!("hi")).await?, json!("HI"));
//! host.shutdown().await; // or just drop it: workers are stopped either way
//! # Ok(()) }
//! ```
//!
//! The engine knows nothing of manifests, HTTP servers or command lines; the manager
//! (`plugvisor-manager`) and the command (`plugvisor-cli`) are built on its public API.
//!
//! # Modules
//! What an embedder holds:
//! - `host`: [`Host`], [`HostConfig`]: start workers ([`Host::spawn`], [`Host::supervise`]),
//!   own them, publish their events.
//! - `spec`: [`WorkerSpec`], [`ResourceLimits`]: what to start and how.
//! - `sandbox`: [`Sandbox`]: confinement of a worker (Landlock, seccomp, a network namespace,
//!   an allow-listed environment), prepared by the host, applied in the child before exec.
//! - `remote`: [`RemotePlugin`], the proxy for one unsupervised worker.
//! - `supervisor/`: [`Supervisor`], one worker kept alive: `mod.rs` (the handle, states),
//!   `calls.rs` (bounded queue, deadlines, idempotent retry, recycling budget), `actor.rs`
//!   (start, watch, probe, restart, Failed, recycle), `config.rs` (the knobs), `backoff.rs`
//!   (restart arithmetic: backoff, intensity window, stable runs).
//! - `pool`: [`Pool`], several supervised replicas of one plugin ([`Host::pool`]); each call
//!   goes to the least-loaded ready one.
//! - `events`: [`LifecycleEvent`], [`EventBus`], hooks.
//! - `transfer`: file-backed data: staging inputs ([`StagedFile`]), adopting outputs
//!   ([`OutputFile`]).
//! - `identity`: [`PluginIdentity`], what a worker says about itself.
//! - `error`: [`HostError`] (why a worker did not start) and [`error_chain`].
//!
//! Inside, one worker:
//! - `worker`: `WorkerCore`, one live worker and every operation on it; crash attribution (a
//!   failed connection is a crash if the process exited).
//! - `registry`: the host's live workers, directory and event bus, shared with supervisors.
//! - `launch`: spawn → handshake (with timeout, racing the exit) → `/v1/info`; the command it
//!   runs is public as [`worker_command`], which the conformance kit starts workers with.
//! - `spawner`: the long-lived spawner thread (process group, parent-death signal, rlimits)
//!   and the per-worker waiter thread that reaps exactly its child.
//! - `process`: `WorkerProcess`: signals to the group, stop escalation, crash reports.
//! - `stderr`: worker stderr into `tracing`, and the tail kept for crash reports.
//! - `dirs`: the private runtime directory, its lock, the sweep of dead hosts' leftovers.
//! - `rss`: resident memory of a worker, from `/proc`.
//!
//! Talking to a worker:
//! - `client`: the pooled HTTP/1.1 client, one pool per lane (calls, control); cancellation
//!   by closing a connection. Every request carries the task's call context
//!   (`call_context`) and a child of its trace (`trace`: [`with_trace`], W3C `traceparent`).
//! - `exchange`: one JSON request and its answer, or the worker's typed error.
//! - `stream`: the NDJSON frame decoder behind every result stream.
//! - `side_thread`: async work for synchronous trait methods (`current_config`).

mod attach;
mod call_context;
mod cgroup;
mod client;
mod digests;
mod dirs;
mod error;
mod events;
mod exchange;
mod fork_thread;
#[doc(hidden)]
pub mod fuzzing;
mod host;
mod identity;
mod keeper;
mod launch;
mod pool;
mod process;
mod registry;
mod remote;
mod remote_files;
mod route;
mod rss;
mod sandbox;
mod side_thread;
mod spawner;
mod spec;
mod stderr;
mod stream;
mod supervisor;
mod tls;
mod trace;
mod transfer;
mod worker;

pub use attach::Attach;
pub use call_context::{with_call_context, CallContext};
pub use dirs::RUNTIME_DIR_ENV;
pub use error::AttachError;
pub use error::{chain as error_chain, HostError};
pub use events::{EventBus, EventKind, HookHandle, LifecycleEvent};
pub use host::{Host, HostConfig};
pub use identity::PluginIdentity;
pub use launch::build_command as worker_command;
pub use plugvisor_proto::{self as proto, DynPlugin, FileRef, Plugin, PluginError};
pub use pool::{Pool, ReplicaInfo};
pub use remote::RemotePlugin;
pub use route::{RouteBody, RouteRequestBody};
pub use sandbox::{Enforced, FsPolicy, NetPolicy, Sandbox, SandboxError, SyscallPolicy};
pub use spec::{ResourceLimits, WorkerSpec};
pub use supervisor::{
    BackoffConfig, CallOptions, HealthConfig, RestartPolicy, Supervisor, SupervisorConfig,
    WorkerState,
};
pub use tls::TlsClient;
pub use trace::{child_span, current_trace, new_trace, traceparent_of, with_trace};
pub use transfer::{OutputFile, StagedFile};
pub use worker::{CallOutput, OutputStream};
