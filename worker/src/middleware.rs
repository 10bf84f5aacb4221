//! Middleware: the optional [`Middleware`] extension a plugin implements to wrap host requests
//! (`before_request`, `after_response`), and its object-safe form the server holds.
//!
//! The host calls a middleware only for the requests its manifest's `[middleware] paths`
//! match, in `priority` order, and only the hooks the plugin declares in [`Middleware::hooks`].

use plugvisor_proto::wire::{AfterResponse, BeforeAction, Hook, HookRequest, HookResponse};
use plugvisor_proto::PluginError;
use std::future::Future;
use std::pin::Pin;

/// A plugin that wraps host requests.
///
/// ```no_run
/// use plugvisor_proto::wire::{BeforeAction, Hook, HookRequest};
/// use plugvisor_worker::{Middleware, Worker};
/// # use plugvisor_proto::{Plugin, PluginError, Value};
/// # #[derive(Default)] struct KeyCheck;
/// # impl Plugin for KeyCheck {
/// #     fn name(&self) -> &str { "key-check" }
/// #     fn version(&self) -> &str { "0.1.0" }
/// #     async fn execute(&self, input: Value) -> Result<Value, PluginError> { Ok(input) }
/// # }
///
/// impl Middleware for KeyCheck {
///     fn hooks(&self) -> Vec<Hook> {
///         vec![Hook::BeforeRequest]
///     }
///
///     async fn before_request(&self, request: HookRequest) -> Result<BeforeAction, PluginError> {
///         if request.header("x-api-key") == Some("s3cret") {
///             Ok(BeforeAction::proceed())
///         } else {
///             Ok(BeforeAction::respond(401, serde_json::json!({"error": "no key"})))
///         }
///     }
/// }
///
/// fn main() {
///     Worker::new(KeyCheck::default()).middleware().run()
/// }
/// ```
pub trait Middleware: Send + Sync + 'static {
    /// The hooks this plugin serves, reported once in `/v1/info`; the host calls no other
    /// (each hook is one round trip per request, so declare only what you use).
    fn hooks(&self) -> Vec<Hook>;

    /// Sees a request before its route: go on (changed or not) or answer it. An error (or a
    /// panic) is a failed hook: the host answers 502 naming the middleware, or skips it when
    /// its manifest says `on_error = "skip"`. The default goes on unchanged.
    fn before_request(
        &self,
        request: HookRequest,
    ) -> impl Future<Output = Result<BeforeAction, PluginError>> + Send {
        let _ = request;
        async { Ok(BeforeAction::proceed()) }
    }

    /// Sees the answer (after the route, or after a later middleware answered) and gives it
    /// back, changed or not. The default gives it back unchanged.
    fn after_response(
        &self,
        exchange: AfterResponse,
    ) -> impl Future<Output = Result<HookResponse, PluginError>> + Send {
        async { Ok(exchange.response) }
    }
}

/// A boxed hook future.
pub(crate) type HookFuture<'a, T> =
    Pin<Box<dyn Future<Output = Result<T, PluginError>> + Send + 'a>>;

/// The object-safe form of [`Middleware`] the server holds.
pub(crate) trait DynMiddleware: Send + Sync + 'static {
    fn declared(&self) -> Vec<Hook>;
    fn before(&self, request: HookRequest) -> HookFuture<'_, BeforeAction>;
    fn after(&self, exchange: AfterResponse) -> HookFuture<'_, HookResponse>;
}

impl<M: Middleware> DynMiddleware for M {
    fn declared(&self) -> Vec<Hook> {
        let mut hooks = self.hooks();
        hooks.sort_unstable();
        hooks.dedup();
        hooks
    }

    fn before(&self, request: HookRequest) -> HookFuture<'_, BeforeAction> {
        Box::pin(self.before_request(request))
    }

    fn after(&self, exchange: AfterResponse) -> HookFuture<'_, HookResponse> {
        Box::pin(self.after_response(exchange))
    }
}
