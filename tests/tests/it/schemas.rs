//! The published JSON Schemas (`docs/schemas/`) are exactly what the wire types derive: a
//! change to a type without regenerating them fails here.
//!
//! Regenerate with `PLUGVISOR_WRITE_SCHEMAS=1 cargo test -p plugvisor-tests --test it schemas::`.

use plugvisor_proto::schema;
use std::collections::BTreeSet;
use std::path::PathBuf;

fn schema_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/schemas")
}

#[test]
fn published_schemas_match_the_types() {
    let dir = schema_dir();
    let all = schema::all();
    if std::env::var_os("PLUGVISOR_WRITE_SCHEMAS").is_some() {
        std::fs::create_dir_all(&dir).unwrap();
        for old in std::fs::read_dir(&dir).unwrap() {
            let old = old.unwrap().path();
            if old.to_string_lossy().ends_with(".schema.json") {
                std::fs::remove_file(old).unwrap();
            }
        }
        for s in &all {
            std::fs::write(dir.join(s.file_name()), s.text()).unwrap();
        }
    }
    let mut problems = Vec::new();
    for s in &all {
        let path = dir.join(s.file_name());
        match std::fs::read_to_string(&path) {
            Ok(text) if text == s.text() => {}
            Ok(_) => problems.push(format!("{} differs from the type", path.display())),
            Err(e) => problems.push(format!("{}: {e}", path.display())),
        }
    }
    let expected: BTreeSet<String> = all.iter().map(|s| s.file_name()).collect();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".schema.json") && !expected.contains(&name) {
            problems.push(format!("{name} is published but no type derives it"));
        }
    }
    assert!(
        problems.is_empty(),
        "docs/schemas/ is stale; regenerate it with PLUGVISOR_WRITE_SCHEMAS=1 cargo test -p \
         plugvisor-tests --test it schemas::\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn every_schema_is_referenced_from_the_protocol() {
    let protocol = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/PROTOCOL.md"),
    )
    .unwrap();
    for s in schema::all() {
        let link = format!("schemas/{}", s.file_name());
        assert!(
            protocol.contains(&link),
            "docs/PROTOCOL.md does not link {link}"
        );
    }
}
