//! House rules checked on the source tree: every `.rs` file starts with a `//!` line, the
//! crates depend only downwards (proto ← worker; proto ← engine ← manager ← cli), the engine
//! stays free of the manager's and the command's dependencies, and the engine's modules form
//! no import loop.

use plugvisor_tests::serially;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Crates the engine must not depend on: the manager's and the command's.
const NOT_IN_ENGINE: [&str; 7] = [
    "clap",
    "clap_complete",
    "anyhow",
    "tracing-subscriber",
    "jsonschema",
    "toml",
    "sha2",
];

/// Each project crate, with the project crates it may depend on (in any dependency table).
/// `plugvisor-tests` and `plugvisor-bench` sit on top and may use everything.
const ALLOWED: [(&str, &[&str]); 6] = [
    ("plugvisor-proto", &[]),
    ("plugvisor-worker", &["plugvisor-proto"]),
    ("plugvisor-host", &["plugvisor-proto"]),
    ("plugvisor-manager", &["plugvisor-proto", "plugvisor-host"]),
    (
        "plugvisor-cli",
        &["plugvisor-proto", "plugvisor-host", "plugvisor-manager"],
    ),
    (
        "plugvisor-plugins",
        &["plugvisor-proto", "plugvisor-worker"],
    ),
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Every file under `dir` whose name ends with `suffix`, skipping build output and VCS data.
fn files(dir: &Path, suffix: &str, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_dir() {
            if !(name.starts_with('.') || name == "target" || name == "node_modules") {
                files(&path, suffix, out);
            }
        } else if name.ends_with(suffix) {
            out.push(path);
        }
    }
}

fn manifest(path: &Path) -> toml::Table {
    let text = std::fs::read_to_string(path).expect("read Cargo.toml");
    toml::from_str(&text).expect("parse Cargo.toml")
}

/// The names of the dependencies in `table` (renamed packages by their package name).
fn dependency_names(table: Option<&toml::Value>) -> BTreeSet<String> {
    let Some(deps) = table.and_then(toml::Value::as_table) else {
        return BTreeSet::new();
    };
    deps.iter()
        .map(|(key, spec)| {
            spec.get("package")
                .and_then(toml::Value::as_str)
                .unwrap_or(key)
                .to_owned()
        })
        .collect()
}

/// The workspace's crates: package name → parsed manifest.
fn crates() -> BTreeMap<String, toml::Table> {
    let mut manifests = Vec::new();
    files(&root(), "Cargo.toml", &mut manifests);
    manifests
        .iter()
        .map(|path| manifest(path))
        .filter_map(|m| {
            let name = m.get("package")?.get("name")?.as_str()?.to_owned();
            Some((name, m))
        })
        .collect()
}

#[test]
fn every_rust_file_starts_with_a_module_doc_line() {
    serially(async {
        let mut sources = Vec::new();
        files(&root(), ".rs", &mut sources);
        assert!(sources.len() > 50, "found only {} files", sources.len());
        let missing: Vec<_> = sources
            .iter()
            .filter(|path| {
                let text = std::fs::read_to_string(path).unwrap_or_default();
                !text.starts_with("//!")
            })
            .collect();
        assert!(
            missing.is_empty(),
            "files without a //! first line: {missing:?}"
        );
    })
}

#[test]
fn crates_depend_only_downwards_and_the_engine_stays_lean() {
    serially(async {
        let crates = crates();
        for (name, allowed) in ALLOWED {
            let m = crates
                .get(name)
                .unwrap_or_else(|| panic!("no crate {name}"));
            for table in ["dependencies", "dev-dependencies", "build-dependencies"] {
                let ours = dependency_names(m.get(table))
                    .into_iter()
                    .filter(|d| d.starts_with("plugvisor-"));
                for dep in ours {
                    assert!(
                        allowed.contains(&dep.as_str()),
                        "{name} [{table}] depends on {dep}, which is not below it"
                    );
                }
            }
        }
        let engine = dependency_names(crates["plugvisor-host"].get("dependencies"));
        assert!(
            engine.contains("hyper"),
            "the engine's dependencies were not read"
        );
        for banned in NOT_IN_ENGINE {
            assert!(
                !engine.contains(banned),
                "the engine (plugvisor-host) depends on {banned}"
            );
        }
    })
}

/// The top-level module of `crate::a::b` paths in `text` (code before its tests; comments
/// and doc links do not count).
fn imports(text: &str) -> BTreeSet<String> {
    let before_tests = text.split("#[cfg(test)]").next().unwrap_or(text);
    let code: String = before_tests
        .lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut found = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        let module: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        // `crate::{a, b}` imports several modules at once.
        if rest.starts_with('{') {
            let group = &rest[1..rest.find('}').unwrap_or(rest.len())];
            for item in group.split(',') {
                let first = item.trim().split("::").next().unwrap_or("").trim();
                if first.chars().next().is_some_and(|c| c.is_ascii_lowercase()) {
                    found.insert(first.to_owned());
                }
            }
        } else if module
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase())
        {
            found.insert(module);
        }
    }
    found
}

/// Module → the modules it imports, for the crate whose sources are in `src`. A folder
/// module (`supervisor/`) counts as one node.
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut sources = Vec::new();
    files(src, ".rs", &mut sources);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for path in sources {
        let rel = path.strip_prefix(src).expect("beneath src");
        let first = rel.components().next().expect("a component");
        let module = first
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        if module == "lib" || module == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read source");
        let uses = imports(&text).into_iter().filter(|m| *m != module);
        graph.entry(module.clone()).or_default().extend(uses);
    }
    graph
}

/// A cycle in `graph`, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

#[test]
fn the_loop_finder_finds_loops() {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    graph.entry("a".into()).or_default().insert("b".into());
    graph.entry("b".into()).or_default().insert("c".into());
    assert_eq!(find_cycle(&graph), None);
    graph.entry("c".into()).or_default().insert("a".into());
    assert_eq!(find_cycle(&graph).map(|c| c.len()), Some(4));
    let text = "use crate::{x::Y, z, Top};\nuse crate::w::V;\n/// [`crate::d`]\n#[cfg(test)]\nuse crate::t;";
    let found: Vec<String> = imports(text).into_iter().collect();
    assert_eq!(found, ["w", "x", "z"]);
}

#[test]
fn the_engine_and_the_manager_have_no_module_loops() {
    serially(async {
        for src in ["host/engine/src", "host/manager/src", "worker/src"] {
            let graph = module_graph(&root().join(src));
            assert!(graph.len() > 5, "{src}: only {} modules found", graph.len());
            assert_eq!(find_cycle(&graph), None, "an import loop in {src}");
        }
    })
}
