//! Plugin-defined health: the optional [`HealthCheck`] extension a plugin implements to judge
//! itself (`POST /v1/plugin_health`), and its object-safe form the server holds.
//!
//! This is not the liveness probe: `GET /v1/health` still never runs plugin code. The host
//! asks for this check every `[health] interval_ms`, with a timeout; a hung check is a `fail`.

use plugvisor_proto::wire::HealthReport;
use std::future::Future;
use std::pin::Pin;

/// A plugin that reports its own health.
///
/// ```no_run
/// use plugvisor_proto::wire::HealthReport;
/// use plugvisor_worker::{HealthCheck, Worker};
/// # use plugvisor_proto::{Plugin, PluginError, Value};
/// # #[derive(Default)] struct Cache;
/// # impl Plugin for Cache {
/// #     fn name(&self) -> &str { "cache" }
/// #     fn version(&self) -> &str { "0.1.0" }
/// #     async fn execute(&self, input: Value) -> Result<Value, PluginError> { Ok(input) }
/// # }
///
/// impl HealthCheck for Cache {
///     async fn health_check(&self) -> HealthReport {
///         HealthReport::pass()
///     }
/// }
///
/// fn main() {
///     Worker::new(Cache::default()).health_check().run()
/// }
/// ```
pub trait HealthCheck: Send + Sync + 'static {
    /// The plugin's verdict on itself. A panic is answered as an error, which the host counts
    /// as `fail`.
    fn health_check(&self) -> impl Future<Output = HealthReport> + Send;
}

/// The object-safe form of [`HealthCheck`] the server holds.
pub(crate) trait DynHealthCheck: Send + Sync + 'static {
    fn check(&self) -> Pin<Box<dyn Future<Output = HealthReport> + Send + '_>>;
}

impl<H: HealthCheck> DynHealthCheck for H {
    fn check(&self) -> Pin<Box<dyn Future<Output = HealthReport> + Send + '_>> {
        Box::pin(self.health_check())
    }
}
