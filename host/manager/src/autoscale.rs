//! Autoscaling: a plugin with `max_replicas` grows its pool of local workers under load and
//! shrinks it when one fewer would do.
//!
//! Every 200 ms the pool's load is sampled: calls and streams running or waiting on all its
//! replicas ([`plugvisor_host::Pool::load`]). When the average of the last second is above
//! `target_in_flight` per replica, one worker is started (ready and configured before it
//! takes calls) and added, up to `max_replicas`. When, over the last `scale_down_idle_secs`,
//! the load never went above what one replica fewer carries at `target_in_flight`, the last
//! local replica leaves dispatch, finishes its calls and stops, down to `min_replicas`.
//! After each change the samples start over, so one burst adds one worker at a time.

use crate::managed::Managed;
use crate::manifest::Scaling;
use std::collections::VecDeque;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How often the load is sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(200);
/// How long the load must stay high before a worker is added.
const UP_WINDOW: Duration = Duration::from_secs(1);
/// The longest a leaving replica's running calls may take before it is stopped anyway.
const DRAIN_MAX: Duration = Duration::from_secs(30);

/// What the sampled load says to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    Grow,
    Shrink,
    Stay,
}

/// The pool's recent load samples.
#[derive(Debug, Default)]
pub(crate) struct Samples {
    taken: VecDeque<(Instant, usize)>,
}

impl Samples {
    /// Records `load` seen at `at`, forgetting samples older than `keep`.
    pub(crate) fn push(&mut self, at: Instant, load: usize, keep: Duration) {
        self.taken.push_back((at, load));
        while self.taken.front().is_some_and(|(t, _)| at - *t > keep) {
            self.taken.pop_front();
        }
    }

    /// Forgets every sample (after a change, or while the plugin is not running).
    pub(crate) fn clear(&mut self) {
        self.taken.clear();
    }

    /// The samples taken in the `last` span before `now`, and whether they cover all of it.
    fn within(&self, now: Instant, last: Duration) -> (impl Iterator<Item = usize> + '_, bool) {
        let covered = self
            .taken
            .front()
            .is_some_and(|(t, _)| now - *t + SAMPLE_EVERY >= last);
        let recent = self
            .taken
            .iter()
            .filter(move |(t, _)| now - *t < last)
            .map(|(_, l)| *l);
        (recent, covered)
    }

    /// What to do with `local` local replicas of `total`, per `scaling`.
    pub(crate) fn decide(
        &self,
        now: Instant,
        local: usize,
        total: usize,
        scaling: &Scaling,
    ) -> Decision {
        let target = scaling.target_in_flight as usize;
        let (recent, covered) = self.within(now, UP_WINDOW);
        let recent: Vec<usize> = recent.collect();
        if covered && local < scaling.max && !recent.is_empty() {
            let average = recent.iter().sum::<usize>() as f64 / recent.len() as f64;
            if average > (target * total) as f64 {
                return Decision::Grow;
            }
        }
        let (quiet, covered) = self.within(now, scaling.idle);
        let peak = quiet.max().unwrap_or(usize::MAX);
        if covered && local > scaling.min && peak <= target * (total - 1) {
            return Decision::Shrink;
        }
        Decision::Stay
    }
}

/// Starts scaling `managed`'s pool, when its manifest sets `max_replicas`.
pub(crate) fn start(managed: &Arc<Managed>) {
    if let Some(scaling) = managed.found.manifest.scaling() {
        spawn(Arc::downgrade(managed), scaling, managed.ending());
    }
}

/// Samples and scales until `end` (or until the plugin is dropped).
fn spawn(managed: Weak<Managed>, scaling: Scaling, end: CancellationToken) {
    tokio::spawn(async move {
        let mut samples = Samples::default();
        let keep = scaling.idle.max(UP_WINDOW);
        loop {
            tokio::select! {
                () = end.cancelled() => return,
                () = tokio::time::sleep(SAMPLE_EVERY) => {}
            }
            let Some(managed) = managed.upgrade() else {
                return;
            };
            let Some(pool) = managed.current() else {
                samples.clear(); // A lazy plugin between calls.
                continue;
            };
            let now = Instant::now();
            samples.push(now, pool.load(), keep);
            let local = local_replicas(&pool).len();
            match samples.decide(now, local, pool.len(), &scaling) {
                Decision::Stay => continue,
                Decision::Grow => grow(&managed, local).await,
                Decision::Shrink => shrink(&managed, &pool, local),
            }
            samples.clear();
        }
    });
}

/// The pool's local replicas, in order.
fn local_replicas(pool: &plugvisor_host::Pool) -> Vec<plugvisor_host::Supervisor> {
    let replicas = pool.replicas().into_iter();
    replicas.filter(|s| s.remote_address().is_none()).collect()
}

/// Starts one more worker and adds it to the pool.
async fn grow(managed: &Managed, local: usize) {
    match managed.add_replica().await {
        Ok(false) => {} // Stopped meanwhile.
        Ok(true) => {
            let load = managed.current().map_or(0, |p| p.load());
            tracing::info!(plugin = %managed.name(), replicas = local + 1, load, "scaled up");
        }
        Err(why) => {
            tracing::warn!(plugin = %managed.name(), %why, "scaling up failed; trying again on the next high load");
        }
    }
}

/// Takes the last local replica out of dispatch, then drains and stops it.
fn shrink(managed: &Managed, pool: &plugvisor_host::Pool, local: usize) {
    let Some(last) = local_replicas(pool).pop() else {
        return;
    };
    if !pool.remove(&last) {
        return;
    }
    tracing::info!(plugin = %managed.name(), replicas = local - 1, "scaled down");
    tokio::spawn(async move {
        let _ = tokio::time::timeout(DRAIN_MAX, last.drained()).await;
        last.shutdown().await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scaling() -> Scaling {
        Scaling {
            min: 1,
            max: 3,
            target_in_flight: 1,
            idle: Duration::from_secs(2),
        }
    }

    /// Samples of `load` every 200 ms for `span`, ending at the returned instant.
    fn steady(load: usize, span: Duration) -> (Samples, Instant) {
        let mut s = Samples::default();
        let start = Instant::now();
        let mut t = start;
        while t - start <= span {
            s.push(t, load, Duration::from_secs(2));
            t += SAMPLE_EVERY;
        }
        (s, t - SAMPLE_EVERY)
    }

    #[test]
    fn a_second_above_target_grows_and_less_does_not() {
        let (s, now) = steady(3, Duration::from_secs(1));
        assert_eq!(s.decide(now, 1, 1, &scaling()), Decision::Grow);
        // Not yet a whole second of samples.
        let (s, now) = steady(3, Duration::from_millis(400));
        assert_eq!(s.decide(now, 1, 1, &scaling()), Decision::Stay);
        // At the target: enough replicas.
        let (s, now) = steady(2, Duration::from_secs(1));
        assert_eq!(s.decide(now, 2, 2, &scaling()), Decision::Stay);
        // At the most already.
        let (s, now) = steady(9, Duration::from_secs(1));
        assert_eq!(s.decide(now, 3, 3, &scaling()), Decision::Stay);
    }

    #[test]
    fn shrinks_only_after_the_idle_span_in_which_one_fewer_sufficed() {
        let (s, now) = steady(1, Duration::from_secs(2));
        assert_eq!(s.decide(now, 2, 2, &scaling()), Decision::Shrink);
        // One fewer would not have carried it.
        let (s, now) = steady(2, Duration::from_secs(2));
        assert_eq!(s.decide(now, 2, 2, &scaling()), Decision::Stay);
        // Not idle long enough yet.
        let (s, now) = steady(0, Duration::from_secs(1));
        assert_eq!(s.decide(now, 2, 2, &scaling()), Decision::Stay);
        // At the fewest already.
        let (s, now) = steady(0, Duration::from_secs(2));
        assert_eq!(s.decide(now, 1, 1, &scaling()), Decision::Stay);
    }
}
