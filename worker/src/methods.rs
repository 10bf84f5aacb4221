//! Named methods: the optional [`Methods`] extension a plugin implements to serve calls by
//! name beside `execute` (`POST /v1/methods/<name>`), and its object-safe form the server
//! holds.
//!
//! `execute` stays the default method: the seed [`Plugin`](plugvisor_proto::Plugin) trait is
//! untouched, and a host asking for method `execute` calls `/v1/execute`.

use plugvisor_proto::wire::{valid_method_name, MethodSpec, DEFAULT_METHOD};
use plugvisor_proto::{PluginError, Value};
use std::future::Future;
use std::pin::Pin;

/// A plugin with named methods.
///
/// ```no_run
/// use plugvisor_proto::wire::MethodSpec;
/// use plugvisor_worker::{Methods, Worker};
/// # use plugvisor_proto::{Plugin, PluginError, Value};
/// # #[derive(Default)] struct Text;
/// # impl Plugin for Text {
/// #     fn name(&self) -> &str { "text" }
/// #     fn version(&self) -> &str { "0.1.0" }
/// #     async fn execute(&self, input: Value) -> Result<Value, PluginError> { Ok(input) }
/// # }
///
/// impl Methods for Text {
///     fn methods(&self) -> Vec<MethodSpec> {
///         vec![MethodSpec::new("upper").summary("Upper-cases a string")]
///     }
///
///     async fn call_method(&self, name: &str, input: Value) -> Result<Value, PluginError> {
///         match (name, input.as_str()) {
///             ("upper", Some(s)) => Ok(Value::from(s.to_uppercase())),
///             ("upper", None) => Err(PluginError::InvalidInput("expected a string".into())),
///             _ => unreachable!("only declared methods are called"),
///         }
///     }
/// }
///
/// fn main() {
///     Worker::new(Text::default()).methods().run()
/// }
/// ```
pub trait Methods: Send + Sync + 'static {
    /// The methods, reported once in `/v1/info`. Names are 1–64 of `a-z`, `0-9`, `_`, `-`,
    /// starting with a letter; `execute` is reserved (it is always the seed call).
    fn methods(&self) -> Vec<MethodSpec>;

    /// Runs method `name` (always one of [`Methods::methods`]) on `input`. Errors and panics
    /// are answered as for `execute`.
    fn call_method(
        &self,
        name: &str,
        input: Value,
    ) -> impl Future<Output = Result<Value, PluginError>> + Send;
}

/// A boxed method future.
pub(crate) type MethodFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Value, PluginError>> + Send + 'a>>;

/// The object-safe form of [`Methods`] the server holds.
pub(crate) trait DynMethods: Send + Sync + 'static {
    fn declared(&self) -> Result<Vec<MethodSpec>, String>;
    fn call<'a>(&'a self, name: &'a str, input: Value) -> MethodFuture<'a>;
}

impl<M: Methods> DynMethods for M {
    fn declared(&self) -> Result<Vec<MethodSpec>, String> {
        let specs = self.methods();
        check_names(&specs)?;
        Ok(specs)
    }

    fn call<'a>(&'a self, name: &'a str, input: Value) -> MethodFuture<'a> {
        Box::pin(self.call_method(name, input))
    }
}

/// Every name valid, none reserved, none twice.
fn check_names(specs: &[MethodSpec]) -> Result<(), String> {
    let mut seen = std::collections::BTreeSet::new();
    for spec in specs {
        let name = spec.name.as_str();
        if !valid_method_name(name) {
            return Err(format!(
                "method name {name:?}: use 1-64 of a-z, 0-9, _ and -, starting with a letter"
            ));
        }
        if name == DEFAULT_METHOD {
            return Err(format!(
                "method name {name:?} is reserved for the seed call"
            ));
        }
        if !seen.insert(name) {
            return Err(format!("method {name:?} is declared twice"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_reserved_and_repeated_names_are_refused() {
        let ok = [MethodSpec::new("shout"), MethodSpec::new("re-verse_2")];
        assert!(check_names(&ok).is_ok());
        for bad in [
            vec![MethodSpec::new("Shout")],
            vec![MethodSpec::new("a/b")],
            vec![MethodSpec::new("execute")],
            vec![MethodSpec::new("x"), MethodSpec::new("x")],
        ] {
            assert!(check_names(&bad).is_err(), "{bad:?}");
        }
    }
}
