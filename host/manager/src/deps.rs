//! Dependency order from `provides`/`requires`: providers start first; a missing service or a
//! cycle is an error naming the plugins involved; and the closure of what a plugin needs.

use std::collections::{BTreeMap, BTreeSet};

/// Why plugins cannot be ordered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DepError {
    /// A required service nobody provides.
    #[error("plugin {plugin} requires service {service:?}, which no plugin provides")]
    Missing {
        /// The plugin with the requirement.
        plugin: String,
        /// The service.
        service: String,
    },
    /// Plugins that require each other, in cycle order.
    #[error("dependency cycle: {}", .0.join(" -> "))]
    Cycle(Vec<String>),
}

/// One plugin's services.
#[derive(Debug, Clone)]
pub struct Node<'a> {
    /// Plugin name.
    pub name: &'a str,
    /// Services it provides.
    pub provides: &'a [String],
    /// Services it requires.
    pub requires: &'a [String],
    /// Services it may use when present: their providers start first unless that would make
    /// a cycle; a missing one is no problem.
    pub optional: &'a [String],
}

/// Which plugin provides each service (the first by name when several do).
pub fn services(nodes: &[Node<'_>]) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    let mut sorted: Vec<&Node<'_>> = nodes.iter().collect();
    sorted.sort_by_key(|n| n.name);
    for node in sorted {
        for service in node.provides {
            map.entry(service.clone())
                .or_insert_with(|| node.name.to_owned());
        }
    }
    map
}

/// A start order with every provider before the plugins that require it (ties by name).
///
/// # Errors
/// [`DepError::Missing`] or [`DepError::Cycle`].
pub fn start_order(nodes: &[Node<'_>]) -> Result<Vec<String>, DepError> {
    // The first of `plan`'s problems is the one this reports: the first missing service in
    // the nodes' order, else the first cycle met while peeling.
    let plan = plan(nodes);
    match plan.problems.into_iter().next() {
        Some(first) => Err(first),
        None => Ok(plan.order),
    }
}

/// What can start and what cannot, for every plugin at once (see [`plan`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DepPlan {
    /// The plugins free of dependency problems, providers first (ties by name). A plugin in
    /// it may still require one that cannot start: check its providers while starting.
    pub order: Vec<String>,
    /// Every problem: each missing service of each plugin, each cycle.
    pub problems: Vec<DepError>,
}

impl DepPlan {
    /// Why `name` cannot start on its own account (a missing service, a cycle), if it cannot.
    pub fn blocked(&self, name: &str) -> Option<&DepError> {
        self.problems.iter().find(|p| match p {
            DepError::Missing { plugin, .. } => plugin == name,
            DepError::Cycle(members) => members.iter().any(|m| m == name),
        })
    }
}

/// Orders what can be ordered and lists every dependency problem, unlike [`start_order`],
/// which stops at the first: a plugin with a missing service or in a cycle is left out of the
/// order; the plugins that require it stay in (they find their provider missing at start).
pub fn plan(nodes: &[Node<'_>]) -> DepPlan {
    let providers = services(nodes);
    let mut problems = Vec::new();
    let mut pending: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut soft: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for node in nodes {
        let optional = node
            .optional
            .iter()
            .filter_map(|s| providers.get(s).cloned());
        soft.insert(node.name.to_owned(), optional.collect());
        let mut mine = BTreeSet::new();
        let mut missing = false;
        for service in node.requires {
            match providers.get(service) {
                Some(provider) => {
                    mine.insert(provider.clone());
                }
                None => {
                    missing = true;
                    problems.push(DepError::Missing {
                        plugin: node.name.to_owned(),
                        service: service.clone(),
                    });
                }
            }
        }
        if !missing {
            pending.insert(node.name.to_owned(), mine);
        }
    }
    let mut order = Vec::with_capacity(pending.len());
    while !pending.is_empty() {
        let free = |name: &String, deps: &BTreeSet<String>| {
            let started = |d: &String| !pending.contains_key(d);
            deps.iter().all(started) && soft.get(name).is_none_or(|s| s.iter().all(started))
        };
        let mut ready: Vec<String> = pending
            .iter()
            .filter(|(name, deps)| free(name, deps))
            .map(|(name, _)| name.clone())
            .collect();
        if ready.is_empty() {
            // Only optional needs hold the rest back: start one plugin without them.
            ready.extend(
                pending
                    .iter()
                    .find(|(_, deps)| deps.iter().all(|d| !pending.contains_key(d)))
                    .map(|(name, _)| name.clone()),
            );
        }
        if ready.is_empty() {
            let cycle = find_cycle(&pending);
            for member in &cycle {
                pending.remove(member);
            }
            problems.push(DepError::Cycle(cycle));
            continue;
        }
        for name in ready {
            pending.remove(&name);
            order.push(name);
        }
    }
    DepPlan { order, problems }
}

/// `names` and every plugin they transitively require (each provider of each required
/// service), in the order they were found.
pub fn closure(nodes: &[Node<'_>], names: &[String]) -> Vec<String> {
    let mut needed: Vec<String> = names.to_vec();
    let mut i = 0;
    while i < needed.len() {
        if let Some(node) = nodes.iter().find(|n| n.name == needed[i]) {
            for service in node.requires {
                for provider in nodes.iter().filter(|p| p.provides.contains(service)) {
                    if !needed.iter().any(|n| n == provider.name) {
                        needed.push(provider.name.to_owned());
                    }
                }
            }
        }
        i += 1;
    }
    needed
}

/// Walks dependencies from the first pending plugin until one repeats.
fn find_cycle(pending: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let Some(start) = pending.keys().next() else {
        return Vec::new();
    };
    let mut path = vec![start.clone()];
    loop {
        let last = path.last().cloned().unwrap_or_default();
        let next = pending
            .get(&last)
            .and_then(|deps| deps.iter().find(|d| pending.contains_key(*d)))
            .cloned();
        let Some(next) = next else { return path };
        if let Some(at) = path.iter().position(|p| *p == next) {
            let mut cycle = path.split_off(at);
            cycle.push(next);
            return cycle;
        }
        path.push(next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| (*x).to_owned()).collect()
    }

    #[test]
    fn optional_needs_order_when_they_can_and_never_block() {
        let (none, sa, sb, ghost) = (s(&[]), s(&["sa"]), s(&["sb"]), s(&["ghost"]));
        let node = |name, provides, optional| Node {
            name,
            provides,
            requires: &none,
            optional,
        };
        // "a" optionally needs b's service: b starts first though "a" sorts first.
        let p = plan(&[node("a", &sa, &sb), node("b", &sb, &none)]);
        assert_eq!((p.order, p.problems), (s(&["b", "a"]), vec![]));
        // A missing optional service is no problem.
        let p = plan(&[node("a", &sa, &ghost)]);
        assert_eq!((p.order, p.problems), (s(&["a"]), vec![]));
        // Two plugins optionally needing each other both start: no cycle is reported.
        let p = plan(&[node("a", &sa, &sb), node("b", &sb, &sa)]);
        assert_eq!(p.problems, vec![]);
        assert_eq!(p.order.len(), 2);
    }

    #[test]
    fn the_closure_follows_requirements_transitively() {
        let (none, db, api) = (s(&[]), s(&["db"]), s(&["api"]));
        let nodes = [
            Node {
                name: "web",
                provides: &none,
                requires: &api,
                optional: &[],
            },
            Node {
                name: "api",
                provides: &api,
                requires: &db,
                optional: &[],
            },
            Node {
                name: "store",
                provides: &db,
                requires: &none,
                optional: &[],
            },
            Node {
                name: "other",
                provides: &none,
                requires: &none,
                optional: &[],
            },
        ];
        assert_eq!(closure(&nodes, &s(&["web"])), ["web", "api", "store"]);
        assert_eq!(closure(&nodes, &s(&["other"])), ["other"]);
        assert_eq!(closure(&nodes, &s(&["ghost"])), ["ghost"]);
    }

    #[test]
    fn providers_come_first() {
        let (p1, r1) = (s(&["db"]), s(&[]));
        let (p2, r2) = (s(&["api"]), s(&["db"]));
        let (p3, r3) = (s(&[]), s(&["api", "db"]));
        let nodes = [
            Node {
                name: "web",
                provides: &p3,
                requires: &r3,
                optional: &[],
            },
            Node {
                name: "api",
                provides: &p2,
                requires: &r2,
                optional: &[],
            },
            Node {
                name: "store",
                provides: &p1,
                requires: &r1,
                optional: &[],
            },
        ];
        assert_eq!(start_order(&nodes).unwrap(), ["store", "api", "web"]);
        assert_eq!(services(&nodes)["db"], "store");
    }

    #[test]
    fn the_plan_lists_every_problem_and_orders_the_rest() {
        let (none, x, y) = (s(&[]), s(&["x"]), s(&["y"]));
        let (sa, sb, sab) = (s(&["sa"]), s(&["sb"]), s(&["sa", "z"]));
        let nodes = [
            Node {
                name: "a",
                provides: &sa,
                requires: &sb,
                optional: &[],
            },
            Node {
                name: "b",
                provides: &sb,
                requires: &sa,
                optional: &[],
            },
            Node {
                name: "c",
                provides: &none,
                requires: &sab,
                optional: &[],
            },
            Node {
                name: "lonely",
                provides: &none,
                requires: &x,
                optional: &[],
            },
            Node {
                name: "needy",
                provides: &none,
                requires: &y,
                optional: &[],
            },
            Node {
                name: "ok",
                provides: &y,
                requires: &none,
                optional: &[],
            },
            Node {
                name: "uses-a",
                provides: &none,
                requires: &sa,
                optional: &[],
            },
        ];
        let plan = plan(&nodes);
        let shown: Vec<String> = plan.problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "plugin c requires service \"z\", which no plugin provides",
                "plugin lonely requires service \"x\", which no plugin provides",
                "dependency cycle: a -> b -> a",
            ]
        );
        assert_eq!(plan.order, ["ok", "needy", "uses-a"]);
        assert!(plan.blocked("b").is_some() && plan.blocked("c").is_some());
        assert!(plan.blocked("uses-a").is_none());
    }

    #[test]
    fn a_missing_service_and_a_cycle_name_the_plugins() {
        let (none, needs_x) = (s(&[]), s(&["x"]));
        let missing = [Node {
            name: "a",
            provides: &none,
            requires: &needs_x,
            optional: &[],
        }];
        assert_eq!(
            start_order(&missing).unwrap_err().to_string(),
            "plugin a requires service \"x\", which no plugin provides"
        );
        let (pa, ra) = (s(&["sa"]), s(&["sb"]));
        let (pb, rb) = (s(&["sb"]), s(&["sa"]));
        let cycle = [
            Node {
                name: "a",
                provides: &pa,
                requires: &ra,
                optional: &[],
            },
            Node {
                name: "b",
                provides: &pb,
                requires: &rb,
                optional: &[],
            },
        ];
        assert_eq!(
            start_order(&cycle).unwrap_err().to_string(),
            "dependency cycle: a -> b -> a"
        );
    }
}
