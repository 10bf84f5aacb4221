//! The `Plugin` trait plugin authors implement, and `DynPlugin`, its object-safe twin.
//!
//! The host's proxy (`RemotePlugin`) implements the same trait, so code written against
//! [`Plugin`] does not care whether the plugin runs in-process or in a worker process.

use crate::error::PluginError;
use futures_core::Stream;
use futures_util::future::BoxFuture;
use serde_json::Value;
use std::future::Future;
use std::pin::Pin;

/// The stream of results of [`Plugin::execute_stream`]. Dropping it cancels the work.
pub type PluginStream = Pin<Box<dyn Stream<Item = Result<Value, PluginError>> + Send + 'static>>;

/// A plugin: an identity, a lifecycle, and calls that take and return JSON.
///
/// Authors write plain `async fn` for the async methods. Only [`name`](Plugin::name),
/// [`version`](Plugin::version) and [`execute`](Plugin::execute) are required.
///
/// ```
/// use plugvisor_proto::{Plugin, PluginError, Value};
///
/// struct Hello;
///
/// impl Plugin for Hello {
///     fn name(&self) -> &str { "hello" }
///     fn version(&self) -> &str { "1.0.0" }
///     async fn execute(&self, input: Value) -> Result<Value, PluginError> {
///         Ok(serde_json::json!({ "hello": input }))
///     }
/// }
/// ```
///
/// # Cancel safety
/// A call is cancelled by dropping its future (or, for a stream, the stream). In a worker that
/// happens when the host drops the call; implementations must tolerate being dropped at any
/// `.await`.
pub trait Plugin: Send + Sync + 'static {
    /// Unique identifier, e.g. `"echo"`.
    fn name(&self) -> &str;

    /// Version, semver, e.g. `"1.2.0"`.
    fn version(&self) -> &str;

    /// Initializes or re-configures the plugin. `None` means "use the defaults".
    ///
    /// May be called again while the plugin serves calls. Keys missing from `config` take their
    /// default values.
    ///
    /// # Errors
    /// [`PluginError::InvalidConfig`] naming the field and the rule when `config` is rejected;
    /// the previous configuration then stays in force.
    fn initialize(
        &self,
        config: Option<Value>,
    ) -> impl Future<Output = Result<(), PluginError>> + Send {
        let _ = config;
        async { Ok(()) }
    }

    /// Runs the plugin on `input` and returns its output.
    ///
    /// # Errors
    /// [`PluginError::InvalidInput`] for input the plugin cannot accept,
    /// [`PluginError::Failed`] when the work itself fails.
    fn execute(&self, input: Value) -> impl Future<Output = Result<Value, PluginError>> + Send;

    /// Runs the plugin on `input` and streams its results.
    ///
    /// The default yields one item, the result of [`execute`](Plugin::execute).
    ///
    /// # Errors
    /// An error before the first item (bad input) is returned here; an error while streaming is
    /// yielded as the stream's last item.
    fn execute_stream(
        &self,
        input: Value,
    ) -> impl Future<Output = Result<PluginStream, PluginError>> + Send {
        async move {
            let value = self.execute(input).await?;
            let stream: PluginStream = Box::pin(futures_util::stream::iter([Ok(value)]));
            Ok(stream)
        }
    }

    /// JSON Schema of the configuration. The default accepts any object.
    fn config_schema(&self) -> Value {
        serde_json::json!({ "type": "object" })
    }

    /// The configuration in force, with defaults filled in. The default is `{}`.
    fn current_config(&self) -> Value {
        serde_json::json!({})
    }

    /// Releases what the plugin holds; called once before the worker exits.
    ///
    /// # Errors
    /// [`PluginError::Failed`] when cleanup fails; the worker exits anyway.
    fn cleanup(&self) -> impl Future<Output = Result<(), PluginError>> + Send {
        async { Ok(()) }
    }
}

/// The object-safe twin of [`Plugin`], for `Arc<dyn DynPlugin>` registries that mix plugins.
///
/// Every [`Plugin`] is a `DynPlugin` through a blanket impl; authors never implement it.
pub trait DynPlugin: Send + Sync + 'static {
    /// See [`Plugin::name`].
    fn name(&self) -> &str;
    /// See [`Plugin::version`].
    fn version(&self) -> &str;
    /// See [`Plugin::initialize`].
    fn initialize(&self, config: Option<Value>) -> BoxFuture<'_, Result<(), PluginError>>;
    /// See [`Plugin::execute`].
    fn execute(&self, input: Value) -> BoxFuture<'_, Result<Value, PluginError>>;
    /// See [`Plugin::execute_stream`].
    fn execute_stream(&self, input: Value) -> BoxFuture<'_, Result<PluginStream, PluginError>>;
    /// See [`Plugin::config_schema`].
    fn config_schema(&self) -> Value;
    /// See [`Plugin::current_config`].
    fn current_config(&self) -> Value;
    /// See [`Plugin::cleanup`].
    fn cleanup(&self) -> BoxFuture<'_, Result<(), PluginError>>;
}

impl<P: Plugin> DynPlugin for P {
    fn name(&self) -> &str {
        Plugin::name(self)
    }
    fn version(&self) -> &str {
        Plugin::version(self)
    }
    fn initialize(&self, config: Option<Value>) -> BoxFuture<'_, Result<(), PluginError>> {
        Box::pin(Plugin::initialize(self, config))
    }
    fn execute(&self, input: Value) -> BoxFuture<'_, Result<Value, PluginError>> {
        Box::pin(Plugin::execute(self, input))
    }
    fn execute_stream(&self, input: Value) -> BoxFuture<'_, Result<PluginStream, PluginError>> {
        Box::pin(Plugin::execute_stream(self, input))
    }
    fn config_schema(&self) -> Value {
        Plugin::config_schema(self)
    }
    fn current_config(&self) -> Value {
        Plugin::current_config(self)
    }
    fn cleanup(&self) -> BoxFuture<'_, Result<(), PluginError>> {
        Box::pin(Plugin::cleanup(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use std::sync::Arc;

    struct Double;

    impl Plugin for Double {
        fn name(&self) -> &str {
            "double"
        }
        fn version(&self) -> &str {
            "0.1.0"
        }
        async fn execute(&self, input: Value) -> Result<Value, PluginError> {
            let n = input
                .as_i64()
                .ok_or_else(|| PluginError::invalid_input("expected an integer"))?;
            Ok(Value::from(n * 2))
        }
    }

    #[test]
    fn default_stream_yields_the_execute_result_once() {
        let plugin: Arc<dyn DynPlugin> = Arc::new(Double);
        let items: Vec<_> = futures_executor::block_on(async {
            let stream = plugin.execute_stream(Value::from(21)).await.unwrap();
            stream.collect().await
        });
        assert_eq!(items, vec![Ok(Value::from(42))]);
    }

    #[test]
    fn errors_before_the_stream_are_returned_not_streamed() {
        let result = futures_executor::block_on(Plugin::execute_stream(&Double, Value::from("x")));
        assert!(matches!(result, Err(PluginError::InvalidInput(_))));
    }
}
