//! plugvisor-host: spawn plugins in crash-isolated worker processes and call them through
//! [`RemotePlugin`], which implements the same [`Plugin`] trait as the plugin itself.
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
//! Modules: [`Host`] owns the private runtime directory and the workers; `launch` starts one
//! worker (spawn, handshake, info); `process` and `spawner` own the OS process (process group,
//! parent-death signal, reaping, stopping); `client` is the pooled HTTP/1.1 client;
//! `remote` is the proxy; `transfer` handles file-backed data.

pub mod api;
mod client;
mod core;
mod dirs;
mod error;
mod events;
mod host;
mod launch;
pub mod manager;
mod process;
mod remote;
mod rss;
mod spawner;
mod spec;
mod stderr;
mod stream;
mod supervisor;
mod transfer;

pub use crate::core::CallOutput;
pub use dirs::RUNTIME_DIR_ENV;
pub use error::HostError;
pub use events::{EventBus, EventKind, HookHandle, LifecycleEvent};
pub use host::{Host, HostConfig};
pub use manager::{ManagerConfig, ManagerError, PluginManager};
pub use plugvisor_proto::{self as proto, DynPlugin, FileRef, Plugin, PluginError};
pub use remote::RemotePlugin;
pub use spec::{ResourceLimits, WorkerSpec};
pub use supervisor::{
    BackoffConfig, CallOptions, HealthConfig, RestartPolicy, Supervisor, SupervisorConfig,
    WorkerState,
};
pub use transfer::{OutputFile, StagedFile};
