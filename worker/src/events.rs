//! Host events delivered to plugins: the optional [`Events`] extension a plugin implements to
//! hear of lifecycle and task events (`POST /v1/events`), and its object-safe form the server
//! holds.
//!
//! The manifest decides what a plugin is sent (`hooks = ["plugin_loaded", …]`); the plugin
//! declares what it handles, so the host can refuse a manifest that subscribes it to an event
//! its code would ignore. Delivery is best effort: the host never waits for a plugin's answer
//! on behalf of whoever caused the event, and an error or a panic here is logged by the host,
//! never raised.

use plugvisor_proto::wire::{valid_event_name, EventDelivery};
use plugvisor_proto::PluginError;
use std::future::Future;
use std::pin::Pin;

/// A plugin that hears host events.
///
/// ```no_run
/// use plugvisor_proto::wire::EventDelivery;
/// use plugvisor_worker::{Events, Worker};
/// # use plugvisor_proto::{Plugin, PluginError, Value};
/// # #[derive(Default)] struct Audit;
/// # impl Plugin for Audit {
/// #     fn name(&self) -> &str { "audit" }
/// #     fn version(&self) -> &str { "0.1.0" }
/// #     async fn execute(&self, input: Value) -> Result<Value, PluginError> { Ok(input) }
/// # }
///
/// impl Events for Audit {
///     fn events(&self) -> Vec<String> {
///         vec!["plugin_loaded".into(), "task_failed".into()]
///     }
///
///     async fn on_event(&self, event: EventDelivery) -> Result<(), PluginError> {
///         eprintln!("{} of {} at {}", event.event, event.plugin, event.at_ms);
///         Ok(())
///     }
/// }
///
/// fn main() {
///     Worker::new(Audit::default()).events().run()
/// }
/// ```
pub trait Events: Send + Sync + 'static {
    /// The events it handles, reported once in `/v1/info`: host event names (`loaded`,
    /// `unloaded`, `task_failed`, …; a `plugin_` prefix is optional), or `*` for every event
    /// its manifest subscribes to. Names are 1–64 of `a-z`, `0-9`, `_`, starting with a letter.
    fn events(&self) -> Vec<String>;

    /// Handles one event (always one it declared; `event.event` is the name without the
    /// `plugin_` prefix). Events of one subscriber arrive one at a time, in order. An error or
    /// a panic is answered as for `execute` and only logged by the host; keep it short (the
    /// host gives up after a few seconds, and drops events while one is running too long).
    fn on_event(
        &self,
        event: EventDelivery,
    ) -> impl Future<Output = Result<(), PluginError>> + Send;
}

/// A boxed event future.
pub(crate) type EventFuture<'a> =
    Pin<Box<dyn Future<Output = Result<(), PluginError>> + Send + 'a>>;

/// The object-safe form of [`Events`] the server holds.
pub(crate) trait DynEvents: Send + Sync + 'static {
    fn declared(&self) -> Result<Vec<String>, String>;
    fn deliver(&self, event: EventDelivery) -> EventFuture<'_>;
}

impl<E: Events> DynEvents for E {
    fn declared(&self) -> Result<Vec<String>, String> {
        let names = self.events();
        check_names(&names)?;
        Ok(names)
    }

    fn deliver(&self, event: EventDelivery) -> EventFuture<'_> {
        Box::pin(self.on_event(event))
    }
}

/// Every name valid, none twice (`loaded` and `plugin_loaded` are one name).
fn check_names(names: &[String]) -> Result<(), String> {
    let mut seen = std::collections::BTreeSet::new();
    for name in names {
        if !valid_event_name(name) {
            return Err(format!(
                "event name {name:?}: use `*` or 1-64 of a-z, 0-9 and _, starting with a letter"
            ));
        }
        if !seen.insert(plugvisor_proto::wire::canonical_event(name)) {
            return Err(format!("event {name:?} is declared twice"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_and_repeated_names_are_refused() {
        let names = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert!(check_names(&names(&["loaded", "plugin_unloaded", "*"])).is_ok());
        for bad in [
            names(&["Loaded"]),
            names(&["task-failed"]),
            names(&[""]),
            names(&["loaded", "plugin_loaded"]),
        ] {
            assert!(check_names(&bad).is_err(), "{bad:?}");
        }
    }
}
