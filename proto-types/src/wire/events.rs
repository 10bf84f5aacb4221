//! Events delivered to plugins: the body of `POST /v1/events`, which a worker serving the
//! `events` capability answers for every host event its manifest subscribes to
//! (`hooks = ["plugin_loaded", "task_failed", …]`), and the rules for event names.
//!
//! Names are the host's lifecycle event names (`loaded`, `unloaded`, `crashed`,
//! `task_failed`, …, as `GET /api/plugins/events` shows them in `event`). A subscription may
//! spell them with a `plugin_` prefix (`plugin_loaded`), as CCProxy's hooks do; the prefix is
//! dropped before names are compared, and a delivery always carries the bare name.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The optional prefix of an event name in a subscription: `plugin_loaded` is `loaded`.
pub const EVENT_PREFIX: &str = "plugin_";

/// In a worker's declared event names: it handles every event its manifest subscribes to.
pub const ANY_EVENT: &str = "*";

/// Body of `POST /v1/events`: one event the host delivers to a subscribed plugin. Answered
/// `204 No Content` (a host accepts any `2xx`); an error answer is logged by the host and
/// never reaches whoever caused the event.
///
/// ```
/// use plugvisor_proto::wire::EventDelivery;
/// let body = r#"{"event":"loaded","plugin":"files","at_ms":1735646400000,"details":{"version":"0.1.0"}}"#;
/// let event: EventDelivery = serde_json::from_str(body).unwrap();
/// assert_eq!((event.event.as_str(), event.plugin.as_str()), ("loaded", "files"));
/// assert_eq!(event.details["version"], "0.1.0");
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct EventDelivery {
    /// The event's name without the `plugin_` prefix: `loaded`, `unloaded`, `task_failed`, …
    pub event: String,
    /// The plugin the event is about (not necessarily the one it is delivered to).
    pub plugin: String,
    /// When it happened, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The event's own fields (`{"version": …}` for `loaded`, `{"task", "duration_ms",
    /// "error"}` for `task_failed`, …; `{}` when it has none).
    #[serde(default = "empty_object")]
    pub details: Value,
}

fn empty_object() -> Value {
    Value::Object(serde_json::Map::new())
}

/// `name` without the optional [`EVENT_PREFIX`].
///
/// ```
/// use plugvisor_proto::wire::canonical_event;
/// assert_eq!(canonical_event("plugin_loaded"), "loaded");
/// assert_eq!(canonical_event("task_failed"), "task_failed");
/// ```
pub fn canonical_event(name: &str) -> &str {
    name.strip_prefix(EVENT_PREFIX).unwrap_or(name)
}

/// True for an event name a worker may declare: [`ANY_EVENT`], or 1–64 of `a-z`, `0-9` and
/// `_`, the first a letter (with or without the `plugin_` prefix). Whether the host ever emits
/// it is the host's business: a manifest naming an event the host does not know is refused.
///
/// ```
/// use plugvisor_proto::wire::valid_event_name;
/// assert!(valid_event_name("plugin_loaded") && valid_event_name("*"));
/// assert!(!valid_event_name("Loaded") && !valid_event_name("a-b") && !valid_event_name(""));
/// ```
pub fn valid_event_name(name: &str) -> bool {
    let mut chars = name.chars();
    name == ANY_EVENT
        || (name.len() <= 64
            && chars.next().is_some_and(|c| c.is_ascii_lowercase())
            && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
}

/// True when a worker that declared `declared` handles event `event` (names compared
/// without their `plugin_` prefix; [`ANY_EVENT`] handles all).
///
/// ```
/// use plugvisor_proto::wire::handles_event;
/// let declared = ["plugin_loaded".to_owned(), "task_failed".to_owned()];
/// assert!(handles_event(&declared, "loaded") && handles_event(&declared, "plugin_task_failed"));
/// assert!(!handles_event(&declared, "unloaded"));
/// assert!(handles_event(&["*".to_owned()], "crashed"));
/// ```
pub fn handles_event(declared: &[String], event: &str) -> bool {
    let event = canonical_event(event);
    declared
        .iter()
        .any(|d| d == ANY_EVENT || canonical_event(d) == event)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_delivery_without_details_reads_as_an_empty_object() {
        let body = json!({"event": "unloaded", "plugin": "echo", "at_ms": 1});
        let event: EventDelivery = serde_json::from_value(body).unwrap();
        assert_eq!(event.details, json!({}));
        let back = serde_json::to_value(&event).unwrap();
        assert_eq!(back["details"], json!({}));
    }
}
