//! The idle stopper: a task per plugin with `idle_stop_secs` that stops its worker once no
//! call has come for that long (the next call starts it again).

use std::future::Future;
use std::sync::Weak;
use std::time::Duration;
use tokio::task::JoinHandle;

/// A plugin the idle stopper can watch.
pub(crate) trait IdleStop: Send + Sync + 'static {
    /// Its id, for the log.
    fn name(&self) -> &str;
    /// True once it was replaced or unloaded: the stopper ends.
    fn retired(&self) -> bool;
    /// Stops the worker if no call came for `idle` and none runs; true if it stopped one.
    fn stop_if_idle(&self, idle: Duration) -> impl Future<Output = bool> + Send;
}

/// Starts the stopper of `plugin`: it looks every quarter of `idle` (at least every 50 ms)
/// and ends with the plugin (dropped or retired). Abort the handle to end it sooner.
pub(crate) fn spawn<P: IdleStop>(plugin: Weak<P>, idle: Duration) -> JoinHandle<()> {
    let tick = (idle / 4).max(Duration::from_millis(50));
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(tick).await;
            let Some(p) = plugin.upgrade() else { return };
            if p.retired() {
                return;
            }
            if p.stop_if_idle(idle).await {
                tracing::info!(plugin = p.name(), "stopped after an idle period");
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use tokio::time::Instant;

    struct Fake {
        last_call: Mutex<Instant>,
        stops: Mutex<Vec<Instant>>,
        retired: AtomicBool,
    }

    impl IdleStop for Fake {
        fn name(&self) -> &str {
            "fake"
        }
        fn retired(&self) -> bool {
            self.retired.load(Ordering::Acquire)
        }
        async fn stop_if_idle(&self, idle: Duration) -> bool {
            let last = *self.last_call.lock().unwrap();
            let running = self.stops.lock().unwrap().last().is_none_or(|s| *s < last);
            let quiet = last.elapsed() >= idle;
            if running && quiet {
                self.stops.lock().unwrap().push(Instant::now());
            }
            running && quiet
        }
    }

    #[tokio::test(start_paused = true)]
    async fn stops_after_the_idle_period_and_not_before() {
        let t0 = Instant::now();
        let fake = Arc::new(Fake {
            last_call: Mutex::new(t0),
            stops: Mutex::new(Vec::new()),
            retired: AtomicBool::new(false),
        });
        let idle = Duration::from_secs(4);
        let stopper = spawn(Arc::downgrade(&fake), idle);
        // A call at 3 s keeps it running until 7 s.
        tokio::time::sleep(Duration::from_secs(3)).await;
        *fake.last_call.lock().unwrap() = Instant::now();
        tokio::time::sleep(Duration::from_secs(20)).await;
        let stops = fake.stops.lock().unwrap().clone();
        assert_eq!(stops.len(), 1, "{stops:?}");
        let at = stops[0] - t0;
        // It looks every second (a quarter of the idle period).
        assert!(
            at >= Duration::from_secs(7) && at <= Duration::from_secs(8),
            "{at:?}"
        );
        // Retiring the plugin ends the stopper.
        fake.retired.store(true, Ordering::Release);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(stopper.is_finished());
    }

    #[tokio::test(start_paused = true)]
    async fn ends_when_the_plugin_is_dropped() {
        let fake = Arc::new(Fake {
            last_call: Mutex::new(Instant::now()),
            stops: Mutex::new(Vec::new()),
            retired: AtomicBool::new(false),
        });
        let stopper = spawn(Arc::downgrade(&fake), Duration::from_secs(1));
        drop(fake);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(stopper.is_finished());
    }
}
