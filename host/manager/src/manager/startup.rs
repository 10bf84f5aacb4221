//! `PluginManager::start_all`: load every discovered plugin and go on past the ones that cannot
//! start, so one bad plugin never keeps the others from serving.

use super::{node, read, write, PluginManager};
use crate::deps;
use crate::error::ManagerError;
use crate::status::PluginInfo;
use std::collections::BTreeMap;

/// What [`PluginManager::start_all`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StartReport {
    /// The plugins loaded, in start order.
    pub loaded: Vec<String>,
    /// The plugins that could not be loaded, with why (their `PluginInfo.last_error` too).
    pub failed: BTreeMap<String, String>,
}

/// The services each plugin requires and which plugin provides each service.
struct Wiring {
    requires: BTreeMap<String, Vec<String>>,
    providers: BTreeMap<String, String>,
}

impl PluginManager {
    /// Loads every discovered plugin in dependency order. Unlike
    /// [`PluginManager::load_all`] it never stops at a plugin that cannot start (missing
    /// binary, crash loop, bad configuration, a missing service, a cycle): that plugin is
    /// reported `failed` with its reason (in [`PluginInfo::last_error`] and
    /// `ManagerStatus::failed`), logged once, and the plugins that require it are not started
    /// and say so; the others load.
    pub async fn start_all(&self) -> StartReport {
        let (plan, wiring) = self.plan_all();
        let mut report = StartReport::default();
        for problem in &plan.problems {
            let reason = problem.to_string();
            for name in involved(problem) {
                report
                    .failed
                    .entry(name)
                    .and_modify(|r| *r = format!("{r}; {reason}"))
                    .or_insert_with(|| reason.clone());
            }
        }
        for (name, reason) in &report.failed {
            self.failed_to_start(name, reason);
        }
        for name in plan.order {
            if self.managed(&name).is_some() {
                report.loaded.push(name);
                continue;
            }
            if let Some(reason) = blocked_by(&name, &wiring, &report.failed) {
                self.failed_to_start(&name, &reason);
                report.failed.insert(name, reason);
                continue;
            }
            match self.load(&name, None).await {
                Ok(_) => report.loaded.push(name),
                Err(e) => {
                    let reason = load_error(&e);
                    self.failed_to_start(&name, &reason);
                    report.failed.insert(name, reason);
                }
            }
        }
        report
    }

    /// The dependency plan of every available plugin, and how they are wired.
    fn plan_all(&self) -> (deps::DepPlan, Wiring) {
        let available = read(&self.inner.available);
        let nodes: Vec<_> = available.values().map(|d| node(&d.manifest)).collect();
        let wiring = Wiring {
            requires: available
                .values()
                .map(|d| (d.manifest.name.clone(), d.manifest.requires.clone()))
                .collect(),
            providers: deps::services(&nodes),
        };
        (deps::plan(&nodes), wiring)
    }

    /// Records and logs (once) why `name` was not started.
    fn failed_to_start(&self, name: &str, reason: &str) {
        tracing::error!(plugin = name, reason, "plugin not started");
        write(&self.inner.load_failures).insert(name.to_owned(), reason.to_owned());
    }

    /// The plugins that are not loaded because their last load failed.
    pub(super) fn failed_infos(&self) -> Vec<PluginInfo> {
        let names: Vec<String> = read(&self.inner.load_failures).keys().cloned().collect();
        names
            .iter()
            .filter(|name| self.managed(name).is_none())
            .filter_map(|name| self.info(name).ok())
            .collect()
    }
}

/// The plugins a dependency problem keeps from starting.
fn involved(problem: &deps::DepError) -> Vec<String> {
    match problem {
        deps::DepError::Missing { plugin, .. } => vec![plugin.clone()],
        deps::DepError::Cycle(members) => {
            let mut names = members.clone();
            names.dedup();
            names.sort();
            names.dedup();
            names
        }
    }
}

/// Why `name` cannot start because a plugin providing what it requires did not.
fn blocked_by(name: &str, wiring: &Wiring, failed: &BTreeMap<String, String>) -> Option<String> {
    let requires = wiring.requires.get(name)?;
    requires.iter().find_map(|service| {
        let provider = wiring.providers.get(service)?;
        failed.contains_key(provider).then(|| {
            format!(
                "not started: it requires service {service:?} from {provider}, which did not start"
            )
        })
    })
}

/// A load error as one line: a start failure's real cause, else the whole error chain.
fn load_error(e: &ManagerError) -> String {
    match e {
        ManagerError::Start { reason, .. } => reason.clone(),
        other => plugvisor_host::error_chain(other),
    }
}
