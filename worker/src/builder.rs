//! [`Worker`]: a plugin together with the extensions it serves (HTTP routes, middleware hooks,
//! named methods, its own health check, host events),
//! run as a worker binary or served in-process.

use crate::events::{DynEvents, Events};
use crate::health_check::{DynHealthCheck, HealthCheck};
use crate::methods::{DynMethods, Methods};
use crate::middleware::{DynMiddleware, Middleware};
use crate::routes::{DynRoutes, Routes};
use plugvisor_proto::Plugin;
use std::sync::Arc;

/// The extensions a worker serves beside the seed [`Plugin`] calls.
#[derive(Clone, Default)]
pub(crate) struct Extensions {
    /// Plugin routes (`/v1/route/…`).
    pub routes: Option<Arc<dyn DynRoutes>>,
    /// Middleware hooks (`/v1/hooks/…`).
    pub middleware: Option<Arc<dyn DynMiddleware>>,
    /// Named methods (`/v1/methods/…`).
    pub methods: Option<Arc<dyn DynMethods>>,
    /// The plugin's own health check (`/v1/plugin_health`).
    pub health_check: Option<Arc<dyn DynHealthCheck>>,
    /// Host events it hears (`/v1/events`).
    pub events: Option<Arc<dyn DynEvents>>,
}

/// A plugin and the extensions it serves; the seed [`Plugin`] trait stays as it is, and each
/// extension is a second trait the plugin also implements.
///
/// ```no_run
/// # use plugvisor_proto::{Plugin, PluginError, Value};
/// # use plugvisor_proto::wire::{Hook, RouteSpec};
/// # use plugvisor_worker::{Middleware, RouteRequest, RouteResponse, Routes};
/// # #[derive(Default)] struct Guard;
/// # impl Plugin for Guard {
/// #     fn name(&self) -> &str { "guard" }
/// #     fn version(&self) -> &str { "0.1.0" }
/// #     async fn execute(&self, input: Value) -> Result<Value, PluginError> { Ok(input) }
/// # }
/// # impl Routes for Guard {
/// #     fn routes(&self) -> Vec<RouteSpec> { vec![] }
/// #     async fn handle(&self, _: RouteRequest) -> Result<RouteResponse, PluginError> { unreachable!() }
/// # }
/// # impl Middleware for Guard { fn hooks(&self) -> Vec<Hook> { vec![Hook::BeforeRequest] } }
/// fn main() {
///     plugvisor_worker::Worker::new(Guard::default())
///         .routes()
///         .middleware()
///         .run()
/// }
/// ```
pub struct Worker<P> {
    plugin: Arc<P>,
    extensions: Extensions,
}

impl<P: Plugin> Worker<P> {
    /// A worker serving `plugin`'s calls only.
    pub fn new(plugin: P) -> Self {
        Self::shared(Arc::new(plugin))
    }

    /// A worker serving a plugin the caller keeps a handle to (tests, benchmarks).
    pub fn shared(plugin: Arc<P>) -> Self {
        Self {
            plugin,
            extensions: Extensions::default(),
        }
    }

    /// Also serves the plugin's HTTP routes ([`Routes`]), mounted by the host under
    /// `/plugins/<plugin>/…`.
    #[must_use]
    pub fn routes(mut self) -> Self
    where
        P: Routes,
    {
        let routes: Arc<dyn DynRoutes> = self.plugin.clone();
        self.extensions.routes = Some(routes);
        self
    }

    /// Also serves the plugin's middleware hooks ([`Middleware`]).
    #[must_use]
    pub fn middleware(mut self) -> Self
    where
        P: Middleware,
    {
        let hooks: Arc<dyn DynMiddleware> = self.plugin.clone();
        self.extensions.middleware = Some(hooks);
        self
    }

    /// Also serves the plugin's named methods ([`Methods`]) beside `execute`.
    #[must_use]
    pub fn methods(mut self) -> Self
    where
        P: Methods,
    {
        let methods: Arc<dyn DynMethods> = self.plugin.clone();
        self.extensions.methods = Some(methods);
        self
    }

    /// Also serves the plugin's own health check ([`HealthCheck`]).
    #[must_use]
    pub fn health_check(mut self) -> Self
    where
        P: HealthCheck,
    {
        let check: Arc<dyn DynHealthCheck> = self.plugin.clone();
        self.extensions.health_check = Some(check);
        self
    }

    /// Also hears the host events its manifest subscribes it to ([`Events`]).
    #[must_use]
    pub fn events(mut self) -> Self
    where
        P: Events,
    {
        let events: Arc<dyn DynEvents> = self.plugin.clone();
        self.extensions.events = Some(events);
        self
    }

    /// The plugin and its extensions (`Worker::run` is in `run.rs`, `Worker::serve` in
    /// `server.rs`).
    pub(crate) fn into_parts(self) -> (Arc<P>, Extensions) {
        (self.plugin, self.extensions)
    }
}
