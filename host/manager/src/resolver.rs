//! Re-resolving the names a plugin attaches to (a headless Service's pods): every
//! `resolve_every`, each URL's host is looked up again; addresses that appeared become new
//! remote replicas (configured like the rest), replicas whose address is gone leave the pool
//! (their in-flight calls finish first), and the others are kept as they are.

use crate::managed::Managed;
use plugvisor_host::Supervisor;
use std::collections::BTreeSet;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Longest wait for a removed replica's in-flight calls before it is detached anyway.
const DRAIN_MAX: Duration = Duration::from_secs(60);

/// What a re-resolution changes: addresses to attach to, addresses to let go.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Change {
    pub(crate) added: Vec<String>,
    pub(crate) removed: Vec<String>,
}

/// The change from the replicas at `current` to the addresses `resolved`.
pub(crate) fn change(current: &[String], resolved: &[String]) -> Change {
    let (now, next): (BTreeSet<_>, BTreeSet<_>) =
        (current.iter().collect(), resolved.iter().collect());
    Change {
        added: next.difference(&now).map(|s| (*s).clone()).collect(),
        removed: now.difference(&next).map(|s| (*s).clone()).collect(),
    }
}

/// Starts re-resolving the names `managed` attaches to, when it attaches by name.
pub(crate) fn start(managed: &Arc<Managed>) {
    if let Some(every) = managed.found.manifest.resolve_interval() {
        spawn(Arc::downgrade(managed), every, managed.ending());
    }
}

/// Re-resolves `managed`'s names every `every` until `end` (or until it is dropped).
fn spawn(managed: Weak<Managed>, every: Duration, end: CancellationToken) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = end.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
            let Some(managed) = managed.upgrade() else {
                return;
            };
            if let Err(why) = refresh(&managed).await {
                tracing::warn!(plugin = %managed.name(), %why, "re-resolving its workers failed; keeping the replicas it has");
            }
        }
    });
}

/// One re-resolution of `managed`'s remote replicas.
async fn refresh(managed: &Arc<Managed>) -> Result<(), String> {
    let Some(pool) = managed.current() else {
        return Ok(()); // A lazy plugin between calls: resolved when it starts.
    };
    let specs = crate::attach::remote_specs(&managed.found).await?;
    let resolved: Vec<String> = specs
        .iter()
        .filter_map(|s| s.remote.as_ref().map(plugvisor_host::Attach::address))
        .collect();
    let current: Vec<String> = pool
        .replicas()
        .iter()
        .filter_map(Supervisor::remote_address)
        .collect();
    let Change { added, removed } = change(&current, &resolved);
    if added.is_empty() && removed.is_empty() {
        return Ok(());
    }
    tracing::info!(plugin = %managed.name(), ?added, ?removed, "the workers' addresses changed");
    let config = crate::attach::remote_config(managed.supervision());
    for spec in specs {
        let new = spec.remote.as_ref().map(plugvisor_host::Attach::address);
        if new.is_some_and(|a| added.contains(&a)) {
            let sup = managed.host().supervise(spec, config.clone());
            configure(&sup, managed.config());
            pool.add(sup);
        }
    }
    let gone = pool
        .replicas()
        .into_iter()
        .filter(|s| s.remote_address().is_some_and(|a| removed.contains(&a)));
    for sup in gone {
        if !pool.remove(&sup) {
            return Err("every address is gone; keeping the last one until one comes back".into());
        }
        tokio::spawn(async move {
            let _ = tokio::time::timeout(DRAIN_MAX, sup.drained()).await;
            sup.shutdown().await;
        });
    }
    Ok(())
}

/// Gives a new replica the configuration in force, once it is reached.
fn configure(sup: &Supervisor, config: plugvisor_proto::Value) {
    let sup = sup.clone();
    tokio::spawn(async move {
        if let Err(e) = plugvisor_proto::Plugin::initialize(&sup, Some(config)).await {
            tracing::warn!(error = %e, "a new replica rejected the configuration in force");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_names_what_appeared_and_what_went() {
        let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
        let c = change(&s(&["a", "b"]), &s(&["b", "c"]));
        assert_eq!(
            c,
            Change {
                added: s(&["c"]),
                removed: s(&["a"])
            }
        );
        assert_eq!(change(&s(&["a"]), &s(&["a"])), Change::default());
    }
}
