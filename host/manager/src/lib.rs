//! plugvisor-manager: plugins described by manifests, loaded in dependency order with layered
//! and validated configuration, hot-reloaded, and managed over a REST API. Built only on the
//! public API of the engine (`plugvisor-host`).
//!
//! # Modules
//! - `manager`: [`PluginManager`] and [`ManagerConfig`]: discovery, load, unload, reload,
//!   configuration changes, calls and streams, status.
//! - `managed`: one loaded plugin: lazy start, idle stop, hot swap.
//! - [`manifest`]: the manifest format, line-numbered errors, discovery.
//! - [`entry_points`]: plugins installed as Python packages (entry points of the group
//!   `plugvisor.plugins`, listed by `python -m plugvisor.entry list`); a manifest of the same
//!   name wins. [`source`]: where a plugin was described ([`source::EntryPoint`]).
//! - [`command`]: where a manifest's `command` and `args` point (manifest dir, beside
//!   `plugvisor`, `PATH`).
//! - [`config`]: configuration layers, JSON Schema validation, secret masking.
//! - `host_config`: the host configuration file (`plugvisor.toml`).
//! - [`deps`]: start order, missing services, cycles, the dependency closure.
//! - [`middleware`]: the `[middleware]` table, the paths a middleware may cover, chain links.
//! - [`tasks`]: the `[[tasks]]` table and what is reported of each task; `scheduler`: the
//!   task per scheduled task that runs it through the supervisor.
//! - `services`: services between plugins: tokens, who may call what, chains of nested calls
//!   (cycles, depth, deadlines); `services/endpoint.rs`: the host's endpoint workers call.
//! - `idle`: the idle stopper of plugins with `idle_stop_secs`.
//! - [`hook_delivery`]: the host events a plugin subscribes to (`hooks`), queued per
//!   subscriber (bounded, drops counted) and sent to its worker (`POST /v1/events`).
//! - [`metrics`]: call counters, latency histogram, task runs, hook deliveries, restarts and
//!   workers in Prometheus text.
//! - `error`: [`ManagerError`].
//! - `status`: what the manager reports: [`PluginInfo`] (and its [`HookInfo`]),
//!   [`ManagerStatus`], [`PluginConfig`], [`PluginHealth`].
//! - [`ui`]: UI plugins: the manifest's `ui` table, mount points, the `ui` kind's contract.
//! - [`api`]: the management REST API over a [`PluginManager`] (`docs/API.md`).

pub mod api;
pub mod attach;
mod autoscale;
pub mod command;
pub mod config;
pub mod deps;
pub mod entry_points;
mod error;
pub mod hook_delivery;
mod host_config;
mod idle;
mod managed;
mod manager;
pub mod manifest;
pub mod metrics;
pub mod middleware;
pub mod plugin_health;
mod resolver;
mod rollout;
mod scheduler;
mod services;
pub mod source;
mod status;
pub mod tasks;
pub mod ui;

pub use error::ManagerError;
pub use host_config::default_worker_dir;
pub use manager::{ManagerConfig, PluginManager, StartReport};
pub use services::MAX_CHAIN;
pub use status::{HookInfo, ManagerStatus, PluginConfig, PluginHealth, PluginInfo, PluginRoute};
