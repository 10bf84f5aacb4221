//! `Shared`: what every request handler of one server sees (plugin, options, counters).

use crate::events::DynEvents;
use crate::health_check::DynHealthCheck;
use crate::methods::DynMethods;
use crate::middleware::DynMiddleware;
use crate::routes::DynRoutes;
use crate::transfer::TransferDir;
use plugvisor_proto::wire::{Hook, MethodSpec, RouteSpec};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// State shared by all connections of one server.
pub(crate) struct Shared<P> {
    /// The plugin being served.
    pub plugin: Arc<P>,
    /// The exact `Authorization` header value a request must carry: `Bearer <token>`.
    pub expected_auth: Vec<u8>,
    /// Where file references may point; `None` refuses them all.
    pub transfer: Option<TransferDir>,
    /// Largest request body, in bytes.
    pub max_body: u64,
    /// Cancelled when shutdown begins.
    pub shutdown: CancellationToken,
    /// Call counters, shared with in-flight guards.
    pub counters: Arc<Counters>,
    /// True once `cleanup` ran and no `initialize` followed.
    pub cleaned: AtomicBool,
    /// TLS on a TCP listener; `None`: plain HTTP.
    pub tls: Option<crate::TlsServer>,
    /// Where plugin code runs; `None`: inline on the serving runtime.
    pub exec: Option<tokio::runtime::Handle>,
    /// The plugin's routes, when it serves any (`run_routed`).
    pub routes: Option<Arc<dyn DynRoutes>>,
    /// What the routes declared, read once at start.
    pub route_specs: Vec<RouteSpec>,
    /// The plugin's middleware hooks, when it is a middleware.
    pub middleware: Option<Arc<dyn DynMiddleware>>,
    /// The hooks it declared, read once at start.
    pub hooks: Vec<Hook>,
    /// The plugin's named methods, when it serves any.
    pub methods: Option<Arc<dyn DynMethods>>,
    /// What it declared, read once at start.
    pub method_specs: Vec<MethodSpec>,
    /// The plugin's own health check, when it has one.
    pub health_check: Option<Arc<dyn DynHealthCheck>>,
    /// The host events it hears, when it serves any.
    pub events: Option<Arc<dyn DynEvents>>,
    /// The event names it declared, read once at start.
    pub event_names: Vec<String>,
}

/// Calls running now and calls started so far.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    in_flight: AtomicU64,
    calls_total: AtomicU64,
}

impl Counters {
    /// Counts a call as started and running until the returned guard drops.
    pub(crate) fn start(self: &Arc<Self>) -> InFlight {
        self.calls_total.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(Arc::clone(self))
    }

    /// Calls (and streams) running now.
    pub(crate) fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Calls (and streams) started since the server began.
    pub(crate) fn calls_total(&self) -> u64 {
        self.calls_total.load(Ordering::Relaxed)
    }
}

/// Marks one running call; dropping it (call finished, stream ended or dropped) uncounts it.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<Counters>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}
