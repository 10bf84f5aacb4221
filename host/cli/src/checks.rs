//! `plugvisor validate`'s checks across a set of manifests: services provided twice,
//! versions that are not semver, names the API cannot address, every dependency problem.

use plugvisor_manager::deps::{self, Node};
use plugvisor_manager::manifest::Discovered;
use std::collections::BTreeMap;

/// Names the literal routes under `/api/plugins/` take: `GET /api/plugins/{id}` cannot reach
/// a plugin called so.
pub(crate) const RESERVED_NAMES: [&str; 7] = [
    "available",
    "health",
    "status",
    "events",
    "load",
    "execute",
    "execute_stream",
];

/// Every problem of `found` as a set, one line each, prefixed with the manifest file.
pub(crate) fn problems(found: &[Discovered]) -> Vec<String> {
    let mut out = Vec::new();
    for d in found {
        let (file, m) = (d.source(), &d.manifest);
        if let Err(e) = semver::Version::parse(&m.version) {
            out.push(format!(
                "{file}: version {:?} is not a semantic version (MAJOR.MINOR.PATCH): {e}",
                m.version
            ));
        }
        if RESERVED_NAMES.contains(&m.name.as_str()) {
            out.push(format!(
                "{file}: name {:?} is reserved: GET /api/plugins/{} is an API route, not this \
                 plugin; choose another name",
                m.name, m.name
            ));
        }
    }
    out.extend(shared_services(found));
    let nodes: Vec<Node<'_>> = found.iter().map(|d| node(d)).collect();
    let files: BTreeMap<&str, String> = found
        .iter()
        .map(|d| (d.manifest.name.as_str(), d.source()))
        .collect();
    for problem in deps::plan(&nodes).problems {
        let file = match &problem {
            deps::DepError::Missing { plugin, .. } => files.get(plugin.as_str()).cloned(),
            deps::DepError::Cycle(members) => {
                members.first().and_then(|p| files.get(p.as_str()).cloned())
            }
        };
        out.push(format!("{}: {problem}", file.unwrap_or_default()));
    }
    out
}

/// Services that more than one plugin provides (only one of them would be used).
fn shared_services(found: &[Discovered]) -> Vec<String> {
    let mut providers: BTreeMap<&str, Vec<&Discovered>> = BTreeMap::new();
    for d in found {
        for service in &d.manifest.provides {
            providers.entry(service).or_default().push(d);
        }
    }
    providers
        .into_iter()
        .filter(|(_, by)| by.len() > 1)
        .map(|(service, by)| {
            let names: Vec<String> = by
                .iter()
                .map(|d| format!("{} ({})", d.manifest.name, d.source()))
                .collect();
            format!(
                "{}: service {service:?} is provided by {} plugins: {}",
                by[0].source(),
                by.len(),
                names.join(", ")
            )
        })
        .collect()
}

fn node(d: &Discovered) -> Node<'_> {
    d.manifest.node()
}
