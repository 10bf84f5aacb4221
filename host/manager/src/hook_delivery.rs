//! Hook delivery: the host events a loaded plugin subscribes to (`hooks = [...]` in its
//! manifest) carried to its worker (`POST /v1/events`), best effort and bounded.
//!
//! Per subscriber, one hook on the host's event bus and one bounded queue: the hook only
//! filters and `try_send`s, so neither the bus nor whoever caused the event ever waits for a
//! plugin; a full queue drops the event and counts it. One task per subscriber sends the
//! queued events in order through the plugin's supervisor, without a call slot and with a
//! deadline ([`DELIVERY_TIMEOUT`]); a failure (an error, a crash, a timeout) is logged and
//! counted, never raised. A lazy plugin whose worker is not running is not started for an
//! event: the event is counted as skipped. The task ends when the plugin is retired (unload,
//! reload) or dropped, and removes its hook then; an event it was delivering and those still
//! queued are counted as dropped, so every event offered to a subscriber is counted once.
//!
//! It knows the plugin and the manager only through `Subscriber` and `HookSink` (as
//! `scheduler.rs` knows its plugin), so neither depends on this module's users.

use crate::manifest::Manifest;
use plugvisor_host::{HookHandle, Host, LifecycleEvent, PluginError, PluginIdentity};
use plugvisor_proto::wire::EventDelivery;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Weak;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Events waiting for one subscriber; one more is dropped (and counted).
pub const QUEUE_CAPACITY: usize = 64;

/// How long one delivery may take, waiting for a ready worker included.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(5);

/// How one event ended for one subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Outcome {
    /// The plugin handled it.
    Delivered,
    /// The plugin answered an error, crashed, was not ready in time, or took too long.
    Failed,
    /// Its queue was full (the plugin is behind), or it was still queued or being delivered
    /// when the plugin was unloaded or reloaded.
    Dropped,
    /// No worker was running (a lazy plugin between calls): it was not started for an event.
    Skipped,
}

impl Outcome {
    /// Every outcome, in the order they are reported.
    pub const ALL: [Self; 4] = [Self::Delivered, Self::Failed, Self::Dropped, Self::Skipped];

    /// `delivered`, `failed`, `dropped` or `skipped` (the metric's `outcome` label).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Failed => "failed",
            Self::Dropped => "dropped",
            Self::Skipped => "skipped",
        }
    }
}

/// A plugin events are delivered to.
pub(crate) trait Subscriber: Send + Sync + 'static {
    /// Its id, for the log and the counts.
    fn name(&self) -> &str;
    /// Delivers one event to its running worker within `timeout`; `None` when no worker is
    /// running (nothing is started for an event).
    fn deliver(
        &self,
        event: &EventDelivery,
        timeout: Duration,
    ) -> impl Future<Output = Option<Result<(), PluginError>>> + Send;
}

/// Where outcomes are counted (the manager's metrics).
pub(crate) trait HookSink: Send + Sync + 'static {
    /// Counts `n` events of subscriber `plugin` that ended with `outcome`.
    fn record_hook(&self, plugin: &str, outcome: Outcome, n: u64);
}

/// What `hooks` needs of the running worker: it serves `/v1/events` and handles every
/// subscribed event. Checked when the plugin loads, so a subscription the plugin would
/// ignore is a start error instead of silent drops.
pub(crate) fn contract(manifest: &Manifest, identity: &PluginIdentity) -> Result<(), String> {
    let events = manifest.hook_events();
    if events.is_empty() {
        return Ok(());
    }
    if identity.events.is_empty() {
        return Err(format!(
            "hooks = {:?} but the worker serves no events (implement plugvisor_worker::Events \
             and run it with Worker::new(plugin).events())",
            manifest.hooks
        ));
    }
    let ignored: Vec<&str> = events
        .into_iter()
        .filter(|e| !identity.handles_event(e))
        .collect();
    if ignored.is_empty() {
        return Ok(());
    }
    Err(format!(
        "hooks subscribes to {} but the worker handles only {}",
        ignored.join(", "),
        identity.events.join(", ")
    ))
}

/// Subscribes `plugin` (named `name`) to `events` on `host`'s bus and starts its delivery
/// task. The task ends when `end` is cancelled (the plugin was retired or dropped) or the
/// plugin is gone; an event being delivered then is cancelled, it and the queued ones are
/// counted as dropped, and the hook is removed.
pub(crate) fn spawn<S: Subscriber>(
    host: &Host,
    plugin: Weak<S>,
    name: String,
    events: Vec<&'static str>,
    sink: Weak<dyn HookSink>,
    end: CancellationToken,
) -> JoinHandle<()> {
    let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
    let filter = Filter {
        events,
        tx,
        name: name.clone(),
        sink: sink.clone(),
        warned: AtomicBool::new(false),
    };
    let hook = host.register_hook("*", move |event| filter.offer(event));
    tokio::spawn(deliver_all(Queue { rx, hook }, plugin, name, sink, end))
}

/// The bus side of one subscription: picks the subscribed events and queues them without
/// waiting.
struct Filter {
    events: Vec<&'static str>,
    tx: mpsc::Sender<EventDelivery>,
    name: String,
    sink: Weak<dyn HookSink>,
    /// Set after the first drop is logged at warn level (later ones at debug).
    warned: AtomicBool,
}

impl Filter {
    /// Queues `event` if subscribed; a full queue drops it and counts the drop.
    fn offer(&self, event: &LifecycleEvent) {
        let name = event.kind.name();
        if !self.events.contains(&name) {
            return;
        }
        match self.tx.try_send(event.to_delivery()) {
            Ok(()) => {}
            // The delivery task ended: the plugin is going away.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
            Err(mpsc::error::TrySendError::Full(_)) => self.dropped(name, &event.plugin),
        }
    }

    fn dropped(&self, event: &str, about: &str) {
        if !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                plugin = %self.name, event, about,
                capacity = QUEUE_CAPACITY,
                "hook queue full: the plugin is behind; events are dropped (and counted)"
            );
        } else {
            tracing::debug!(plugin = %self.name, event, about, "hook event dropped");
        }
        if let Some(sink) = self.sink.upgrade() {
            sink.record_hook(&self.name, Outcome::Dropped, 1);
        }
    }
}

/// The delivery side of one subscription: its queue and its hook on the bus.
struct Queue {
    rx: mpsc::Receiver<EventDelivery>,
    hook: HookHandle,
}

/// Sends queued events one at a time, in order, until `end`.
async fn deliver_all<S: Subscriber>(
    mut queue: Queue,
    plugin: Weak<S>,
    name: String,
    sink: Weak<dyn HookSink>,
    end: CancellationToken,
) {
    loop {
        let next = tokio::select! {
            biased;
            () = end.cancelled() => None,
            event = queue.rx.recv() => event,
        };
        let Some(event) = next else { break };
        let Some(target) = plugin.upgrade() else {
            break;
        };
        let outcome = tokio::select! {
            biased;
            () = end.cancelled() => None,
            outcome = deliver_one(&*target, &event) => Some(outcome),
        };
        drop(target);
        let Some(outcome) = outcome else {
            // Cancelled mid-delivery: not handled, as far as anyone knows.
            finish(queue, &name, &sink, 1);
            return;
        };
        if let Some(sink) = sink.upgrade() {
            sink.record_hook(&name, outcome, 1);
        }
    }
    finish(queue, &name, &sink, 0);
}

/// Removes the hook and counts what was still queued (and `cut`, a delivery cancelled
/// midway) as dropped, so every event offered is counted once.
fn finish(queue: Queue, name: &str, sink: &Weak<dyn HookSink>, cut: u64) {
    let Queue { mut rx, hook } = queue;
    hook.remove();
    rx.close();
    let mut left = cut;
    while rx.try_recv().is_ok() {
        left += 1;
    }
    if left > 0 {
        tracing::debug!(plugin = name, left, "hook events left undelivered");
        if let Some(sink) = sink.upgrade() {
            sink.record_hook(name, Outcome::Dropped, left);
        }
    }
}

/// One delivery; a failure is logged here and only counted by the caller.
async fn deliver_one<S: Subscriber>(target: &S, event: &EventDelivery) -> Outcome {
    match target.deliver(event, DELIVERY_TIMEOUT).await {
        None => Outcome::Skipped,
        Some(Ok(())) => Outcome::Delivered,
        Some(Err(error)) => {
            tracing::warn!(
                plugin = target.name(),
                event = %event.event,
                about = %event.plugin,
                error = %error,
                "hook delivery failed; going on"
            );
            Outcome::Failed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plugvisor_host::{EventKind, HostConfig};
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};

    type Counts = BTreeMap<Outcome, u64>;

    /// Outcomes counted by plugin.
    #[derive(Default)]
    struct Tally(Mutex<BTreeMap<String, Counts>>);

    impl HookSink for Tally {
        fn record_hook(&self, plugin: &str, outcome: Outcome, n: u64) {
            let mut all = self.0.lock().unwrap();
            *all.entry(plugin.to_owned())
                .or_default()
                .entry(outcome)
                .or_default() += n;
        }
    }

    /// A subscriber that records what it gets; `gate` (when set) holds each delivery until a
    /// permit is added; `running` false makes it skip like a lazy plugin between calls.
    struct Fake {
        /// Deliveries begun (before the gate).
        begun: std::sync::atomic::AtomicUsize,
        got: Mutex<Vec<String>>,
        gate: Option<tokio::sync::Semaphore>,
        running: bool,
        fail: bool,
    }

    impl Fake {
        fn new(gate: bool) -> Arc<Self> {
            Arc::new(Self {
                begun: Default::default(),
                got: Mutex::new(Vec::new()),
                gate: gate.then(|| tokio::sync::Semaphore::new(0)),
                running: true,
                fail: false,
            })
        }
    }

    impl Subscriber for Fake {
        fn name(&self) -> &str {
            "fake"
        }

        async fn deliver(
            &self,
            event: &EventDelivery,
            _timeout: Duration,
        ) -> Option<Result<(), PluginError>> {
            if !self.running {
                return None;
            }
            self.begun.fetch_add(1, Ordering::AcqRel);
            if let Some(gate) = &self.gate {
                gate.acquire().await.unwrap().forget();
            }
            self.got
                .lock()
                .unwrap()
                .push(format!("{} {}", event.event, event.plugin));
            if self.fail {
                return Some(Err(PluginError::Failed("no".into())));
            }
            Some(Ok(()))
        }
    }

    fn host() -> (Host, tempfile::TempDir) {
        let base = tempfile::tempdir().unwrap();
        let config = HostConfig {
            base_dir: Some(base.path().to_path_buf()),
        };
        (Host::with_config(config).unwrap(), base)
    }

    fn counts(tally: &Tally) -> Counts {
        tally
            .0
            .lock()
            .unwrap()
            .get("fake")
            .cloned()
            .unwrap_or_default()
    }

    async fn until(mut check: impl FnMut() -> bool) {
        for _ in 0..500 {
            if check() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        panic!("timed out");
    }

    fn start(host: &Host, fake: &Arc<Fake>, tally: &Arc<Tally>, end: &CancellationToken) {
        let sink: Arc<dyn HookSink> = tally.clone();
        let events = vec!["loaded", "unloaded"];
        let name = "fake".to_owned();
        spawn(
            host,
            Arc::downgrade(fake),
            name,
            events,
            Arc::downgrade(&sink),
            end.clone(),
        );
        // The sink is held by the test through `tally`.
        drop(sink);
    }

    #[test]
    fn the_worker_must_handle_every_subscribed_event() {
        let text = "name = \"a\"\nversion = \"1\"\ncommand = \"x\"\n";
        let plain = Manifest::parse(text, std::path::Path::new("a.toml")).unwrap();
        let hooks = format!("{text}hooks = [\"plugin_loaded\", \"task_failed\"]\n");
        let hooked = Manifest::parse(&hooks, std::path::Path::new("a.toml")).unwrap();
        let mut identity = PluginIdentity {
            name: "a".into(),
            version: "1".into(),
            config_schema: serde_json::json!({}),
            routes: Vec::new(),
            hooks: Vec::new(),
            methods: Vec::new(),
            health_check: false,
            events: Vec::new(),
            file_transfer: false,
            streamed_upload: false,
        };
        assert_eq!(contract(&plain, &identity), Ok(()));
        let none = contract(&hooked, &identity).unwrap_err();
        assert!(none.contains("serves no events"), "{none}");
        identity.events = vec!["loaded".into()];
        let some = contract(&hooked, &identity).unwrap_err();
        assert!(
            some.contains("subscribes to task_failed but the worker handles only loaded"),
            "{some}"
        );
        identity.events = vec!["plugin_loaded".into(), "task_failed".into()];
        assert_eq!(contract(&hooked, &identity), Ok(()));
        identity.events = vec!["*".into()];
        assert_eq!(contract(&hooked, &identity), Ok(()));
    }

    #[tokio::test]
    async fn subscribed_events_arrive_in_order_and_others_are_not_sent() {
        let (host, _base) = host();
        let (fake, tally, end) = (
            Fake::new(false),
            Arc::new(Tally::default()),
            CancellationToken::new(),
        );
        start(&host, &fake, &tally, &end);
        host.emit(
            "a",
            EventKind::Loaded {
                version: "1".into(),
            },
        );
        host.emit("a", EventKind::Reset);
        host.emit("b", EventKind::Unloaded);
        until(|| fake.got.lock().unwrap().len() == 2).await;
        assert_eq!(*fake.got.lock().unwrap(), ["loaded a", "unloaded b"]);
        until(|| counts(&tally).get(&Outcome::Delivered) == Some(&2)).await;
        end.cancel();
        host.shutdown().await;
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_and_the_bus_never_waits() {
        let (host, _base) = host();
        let (fake, tally, end) = (
            Fake::new(true),
            Arc::new(Tally::default()),
            CancellationToken::new(),
        );
        start(&host, &fake, &tally, &end);
        let burst = QUEUE_CAPACITY + 20;
        host.emit("p0", EventKind::Unloaded);
        until(|| fake.begun.load(Ordering::Acquire) == 1).await;
        // p0 is being delivered (held at the gate): 64 more wait, the rest are dropped, and
        // no `emit` waited for the plugin.
        for i in 1..burst {
            host.emit(&format!("p{i}"), EventKind::Unloaded);
        }
        until(|| counts(&tally).get(&Outcome::Dropped) == Some(&19)).await;
        let gate = fake.gate.as_ref().unwrap();
        gate.add_permits(burst);
        until(|| counts(&tally).get(&Outcome::Delivered) == Some(&(QUEUE_CAPACITY as u64 + 1)))
            .await;
        let got = fake.got.lock().unwrap().clone();
        assert_eq!(got.first().map(String::as_str), Some("unloaded p0"));
        assert_eq!(
            got.last().map(String::as_str),
            Some("unloaded p64"),
            "in order"
        );
        end.cancel();
        host.shutdown().await;
    }

    #[tokio::test]
    async fn failures_and_skips_are_counted_and_the_end_counts_what_was_left() {
        let (host, _base) = host();
        let tally = Arc::new(Tally::default());
        let failing = Arc::new(Fake {
            begun: Default::default(),
            got: Mutex::new(Vec::new()),
            gate: Some(tokio::sync::Semaphore::new(1)),
            running: true,
            fail: true,
        });
        let end = CancellationToken::new();
        start(&host, &failing, &tally, &end);
        for _ in 0..3 {
            host.emit("x", EventKind::Unloaded);
        }
        until(|| counts(&tally).get(&Outcome::Failed) == Some(&1)).await;
        // The second is held at the gate, the third queued: retiring cancels the second and
        // counts both as dropped.
        until(|| failing.begun.load(Ordering::Acquire) == 2).await;
        end.cancel();
        until(|| counts(&tally).get(&Outcome::Dropped) == Some(&2)).await;
        host.emit("x", EventKind::Unloaded);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(
            counts(&tally).get(&Outcome::Dropped),
            Some(&2),
            "the hook was removed"
        );

        let idle = Arc::new(Fake {
            begun: Default::default(),
            got: Mutex::new(Vec::new()),
            gate: None,
            running: false,
            fail: false,
        });
        let tally = Arc::new(Tally::default());
        let end = CancellationToken::new();
        start(&host, &idle, &tally, &end);
        host.emit(
            "x",
            EventKind::Loaded {
                version: "1".into(),
            },
        );
        until(|| counts(&tally).get(&Outcome::Skipped) == Some(&1)).await;
        end.cancel();
        host.shutdown().await;
    }
}
