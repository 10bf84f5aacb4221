//! plugvisor-worker: the runtime of worker binaries, serving one `Plugin` over the worker
//! protocol (HTTP/1.1 on a Unix socket or TCP; `docs/PROTOCOL.md` is normative).
//!
//! A plugin author's whole `main` is one call:
//!
//! ```no_run
//! # use plugvisor_proto::{Plugin, PluginError, Value};
//! # #[derive(Default)] struct MyPlugin;
//! # impl Plugin for MyPlugin {
//! #     fn name(&self) -> &str { "my" }
//! #     fn version(&self) -> &str { "0.1.0" }
//! #     async fn execute(&self, input: Value) -> Result<Value, PluginError> { Ok(input) }
//! # }
//! fn main() {
//!     plugvisor_worker::run(MyPlugin::default())
//! }
//! ```
//!
//! Map of the crate:
//! - [`run`] (`run.rs`): arguments (`cli.rs`), logging, runtime, handshake, shutdown
//!   triggers (`watch.rs`: signals, stdin EOF, watchdog).
//! - [`serve`] (`server.rs`): accept loop, hyper connections, graceful shutdown; usable
//!   in-process with a [`Listener`] and [`ServeOptions`].
//! - `lanes.rs`: each connection goes to the plugin runtime (calls) or stays on the server
//!   thread (control) by its first request line; `offload.rs`: plugin work asked for on the
//!   server thread runs on the plugin runtime.
//! - `router.rs` / `handlers.rs`: auth, routes, plugin calls with panics contained
//!   (`unwind.rs`); `request.rs` / `reply.rs`: bodies in and out; `ndjson.rs`: the batched
//!   stream body.
//! - [`files`] / `transfer.rs`: file references, opened only beneath the transfer directory.
//! - [`Routes`] (`routes.rs`): a plugin's own HTTP routes, mounted by the host under
//!   `/plugins/<plugin>/…` and forwarded to `/v1/route/…`; [`run_routed`] serves them.
//! - [`Middleware`] (`middleware.rs`): hooks around host requests (`/v1/hooks/…`).
//! - [`Methods`] (`methods.rs`): named methods beside `execute` (`/v1/methods/<name>`).
//! - [`HealthCheck`] (`health_check.rs`): the plugin's own health (`/v1/plugin_health`).
//! - [`host()`] (`host.rs`): the client for calling the host back: services other plugins
//!   provide, with the call context of nested calls and the W3C trace ([`trace()`]) each
//!   call came with (its id on the plugin's log lines, a child of it on nested calls).
//! - [`Events`] (`events.rs`): host lifecycle and task events the manifest subscribes the
//!   plugin to (`/v1/events`).
//! - [`Settings`] / [`typed_config!`] (`config.rs`): typed configuration, a serde + schemars
//!   type giving the plugin its schema, validation naming the field, and `current_config`.
//! - [`Worker`] (`builder.rs`): a plugin plus the extensions it serves
//!   (`Worker::new(p).routes().middleware().events().run()`).
//! - `pow.rs`: the C `pow` defined in the binary, so a worker does not load libm.

mod builder;
mod cli;
mod config;
mod error;
mod events;
pub mod files;
#[doc(hidden)]
pub mod fuzzing;
mod guardian;
mod handlers;
mod health_check;
mod host;
mod lanes;
mod listener;
mod logging;
mod methods;
mod middleware;
mod ndjson;
mod offload;
mod options;
mod pow;
mod reply;
mod request;
mod rewake;
mod router;
mod routes;
mod run;
mod server;
mod state;
mod tls;
mod transfer;
mod unwind;
mod uploads;
mod watch;

pub use builder::Worker;
pub use cli::{LOG_ENV, WORKER_THREADS_ENV};
pub use config::{parse as parse_config, schema_of, Config, Settings};
pub use error::WorkerError;
pub use events::Events;
pub use health_check::HealthCheck;
pub use host::{host, trace, HostClient};
pub use listener::{ListenAddr, Listener};
pub use methods::Methods;
pub use middleware::Middleware;
pub use options::{ServeOptions, DEFAULT_CLEANUP_TIMEOUT, DEFAULT_GRACE};
pub use routes::{RouteBody, RouteRequest, RouteResponse, Routes};
pub use run::{run, run_routed};
pub use server::{serve, serve_routed};
pub use tls::TlsServer;
pub use tokio_util::sync::CancellationToken;

/// The schemars crate [`Settings`] uses, for `#[derive(JsonSchema)]` without a dependency of
/// your own (`#[schemars(crate = "plugvisor_worker::schemars")]`).
pub use schemars;

/// What [`typed_config!`] expands to refers to; not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use plugvisor_proto::{PluginError, Value};
}
