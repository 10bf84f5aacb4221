//! What echo heard: the host events its manifest subscribes it to (`hooks`), counted by name
//! and the last [`HEARD_KEPT`] kept, for its `events` method.

use plugvisor_proto::wire::EventDelivery;
use plugvisor_proto::{json, PluginError, Value};
use plugvisor_worker::Events;
use std::collections::{BTreeMap, VecDeque};
use std::sync::PoisonError;

/// How many events the `events` method shows.
pub const HEARD_KEPT: usize = 16;

/// The events heard so far.
#[derive(Debug, Default)]
pub(crate) struct Heard {
    last: VecDeque<EventDelivery>,
    counts: BTreeMap<String, u64>,
    total: u64,
}

impl Heard {
    fn record(&mut self, event: EventDelivery) {
        self.total += 1;
        *self.counts.entry(event.event.clone()).or_default() += 1;
        self.last.push_back(event);
        while self.last.len() > HEARD_KEPT {
            self.last.pop_front();
        }
    }

    /// `{"total": N, "counts": {"loaded": 3, …}, "events": [EventDelivery, …]}`, newest
    /// first.
    pub(crate) fn to_value(&self) -> Value {
        let events: Vec<&EventDelivery> = self.last.iter().rev().collect();
        json!({ "total": self.total, "counts": self.counts, "events": events })
    }
}

/// Echo hears every event its manifest subscribes it to (the bundled manifest: loads, unloads
/// and failed task runs) and only remembers it.
impl Events for super::Echo {
    fn events(&self) -> Vec<String> {
        vec![plugvisor_proto::wire::ANY_EVENT.to_owned()]
    }

    async fn on_event(&self, event: EventDelivery) -> Result<(), PluginError> {
        let mut heard = self.heard.lock().unwrap_or_else(PoisonError::into_inner);
        heard.record(event);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(name: &str, plugin: &str) -> EventDelivery {
        EventDelivery {
            event: name.to_owned(),
            plugin: plugin.to_owned(),
            at_ms: 1,
            details: json!({}),
        }
    }

    #[test]
    fn counts_every_event_and_keeps_the_last_newest_first() {
        let mut heard = Heard::default();
        for i in 0..HEARD_KEPT + 2 {
            heard.record(event("loaded", &format!("p{i}")));
        }
        heard.record(event("unloaded", "p0"));
        let shown = heard.to_value();
        assert_eq!(shown["total"], HEARD_KEPT + 3);
        assert_eq!(
            shown["counts"],
            json!({"loaded": HEARD_KEPT + 2, "unloaded": 1})
        );
        let events = shown["events"].as_array().unwrap();
        assert_eq!(events.len(), HEARD_KEPT);
        assert_eq!(events[0]["event"], "unloaded");
        assert_eq!(events[1]["plugin"], format!("p{}", HEARD_KEPT + 1));
    }
}
