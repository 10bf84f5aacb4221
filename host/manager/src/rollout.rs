//! Rolling reload: a plugin with several local replicas is replaced one replica at a time.
//!
//! The reload starts one worker of the new version and validates it (identity, kind,
//! configuration) before anything changes. Its pool then takes over the old plugin's other
//! local replicas, and [`replace`] swaps each of them in turn for a new worker: the new one
//! is started, ready and configured first, takes the old one's place in dispatch, and the old
//! one is drained and stopped. The pool never has fewer serving replicas than before, and
//! never more than one extra worker.

use crate::managed::Managed;
use plugvisor_host::{Pool, Supervisor};
use std::time::Duration;

/// The longest a replaced replica's running calls may take before it is stopped anyway.
const DRAIN_MAX: Duration = Duration::from_secs(30);

/// What a rolling reload takes over from the plugin it replaces.
#[derive(Debug, Default)]
pub(crate) struct Carried {
    /// The old local replicas now in the new plugin's pool, to be replaced one by one.
    pub(crate) replicas: Vec<Supervisor>,
    /// New local workers still to add after them (the manifest asks for more than before).
    pub(crate) more: usize,
}

/// How many local replicas a reload of `old` should bring over when the new manifest asks
/// for `wanted` local replicas: all but the one the new version starts with, or none when
/// there is nothing to roll (one replica, a lazy plugin between calls, remote-only plugins).
pub(crate) fn carried_count(old_local: usize, wanted: usize) -> usize {
    match (old_local, wanted) {
        (0 | 1, _) | (_, 0 | 1) => 0,
        (old, wanted) => old.min(wanted) - 1,
    }
}

/// Moves `count` of `old`'s local replicas (after its first) into `new`, out of `old`'s
/// dispatch; `wanted` is the new manifest's local replica count.
pub(crate) fn carry_over(old: &Pool, new: &Pool, count: usize, wanted: usize) -> Carried {
    let local: Vec<Supervisor> = old
        .replicas()
        .into_iter()
        .filter(|s| s.remote_address().is_none())
        .collect();
    let mut replicas = Vec::with_capacity(count);
    for sup in local.into_iter().skip(1).take(count) {
        if old.remove(&sup) {
            new.add(sup.clone());
            replicas.push(sup);
        }
    }
    let more = wanted.saturating_sub(1 + replicas.len());
    Carried { replicas, more }
}

/// Replaces each carried replica by a new worker, one at a time, then adds the new workers
/// the manifest asks for beyond them.
///
/// # Errors
/// The first new worker that did not start or refused the configuration: the roll stops
/// there and says how far it got; the replicas not yet replaced keep serving on the
/// previous version.
pub(crate) async fn replace(managed: &Managed, carried: Carried) -> Result<(), String> {
    let total = 1 + carried.replicas.len();
    for (done, old) in carried.replicas.into_iter().enumerate() {
        let outcome = replace_one(managed, &old).await;
        if let Err(why) = outcome {
            return Err(format!(
                "replica {} of {total} could not be replaced: {why} ({} run the new version, \
                 {} still the previous one)",
                done + 1,
                done + 1,
                total - done - 1
            ));
        }
    }
    for _ in 0..carried.more {
        if !managed.add_replica().await? {
            return Ok(()); // Stopped meanwhile.
        }
    }
    Ok(())
}

/// Starts a new worker, puts it in `old`'s place, and drains and stops `old`.
async fn replace_one(managed: &Managed, old: &Supervisor) -> Result<(), String> {
    {
        let _changing = managed.changing().await;
        let Some(pool) = managed.current() else {
            return Ok(()); // Stopped meanwhile, and the carried replicas with it.
        };
        let new = managed.start_replica().await?;
        if !pool.swap(old, new.clone()) {
            // Not in the pool any more: nothing to replace.
            new.shutdown().await;
            return Ok(());
        }
    }
    let _ = tokio::time::timeout(DRAIN_MAX, old.drained()).await;
    old.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::carried_count;

    #[test]
    fn only_pools_of_several_local_replicas_roll() {
        assert_eq!(carried_count(0, 3), 0);
        assert_eq!(carried_count(1, 3), 0);
        assert_eq!(carried_count(3, 1), 0);
        assert_eq!(carried_count(3, 3), 2);
        assert_eq!(carried_count(3, 2), 1);
        assert_eq!(carried_count(2, 4), 1);
    }
}
