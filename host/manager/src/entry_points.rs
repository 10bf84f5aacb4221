//! Plugins installed as Python packages: the entry points of the group `plugvisor.plugins` an
//! interpreter sees (`python -m plugvisor.entry list`), made into manifests whose worker is
//! `python -m plugvisor.entry run NAME --from DIST`; and the rule that a manifest file of the
//! same name wins.

use crate::command::on_path;
use crate::manifest::{Discovered, Manifest, ManifestError};
use crate::source::EntryPoint;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The entry point group plugins are declared in.
pub const GROUP: &str = "plugvisor.plugins";
/// The version of the listing document this host reads.
const FORMAT: u64 = 1;
/// How long one interpreter's listing (which imports every plugin module) may take.
pub const LIST_TIMEOUT: Duration = Duration::from_secs(60);
/// Manifest keys an entry point may not declare: the host sets them (`ui` needs a directory
/// beside a manifest file).
const HOST_KEYS: [&str; 4] = ["name", "command", "args", "ui"];

/// What the entry points of some interpreters describe.
#[derive(Debug, Clone, Default)]
pub struct EntryPoints {
    /// One plugin per name; a broken one carries its reason in `entry_point.error`.
    pub found: Vec<Discovered>,
    /// What could not become a plugin at all: an interpreter that cannot list, a name the
    /// API cannot address. `file` is the interpreter (or the distribution's metadata).
    pub problems: Vec<ManifestError>,
}

/// One entry point as the listing reports it.
#[derive(Debug, Deserialize)]
struct Listed {
    name: String,
    value: String,
    dist: String,
    dist_version: String,
    path: Option<PathBuf>,
    version: Option<String>,
    manifest: Option<serde_json::Map<String, serde_json::Value>>,
    error: Option<String>,
}

/// The listing document.
#[derive(Debug, Deserialize)]
struct Listing {
    format: u64,
    entry_points: Vec<Listed>,
}

/// The entry points every interpreter of `pythons` sees, in order. A name two distributions
/// declare (in one environment or across them) is one plugin that cannot start, naming both:
/// a manifest of that name chooses.
pub fn discover(pythons: &[PathBuf]) -> EntryPoints {
    let mut out = EntryPoints::default();
    let mut by_name: BTreeMap<String, usize> = BTreeMap::new();
    for python in pythons {
        let listed = interpreter(python).and_then(|path| Ok((list(&path)?, path)));
        let (entries, path) = match listed {
            Ok(found) => found,
            Err(reason) => {
                out.problems.push(problem(python, reason));
                continue;
            }
        };
        for entry in entries {
            match plugin_of(entry, &path) {
                Ok(found) => add(&mut out.found, &mut by_name, found),
                Err(p) => out.problems.push(p),
            }
        }
    }
    out
}

/// Adds `found`, or marks the plugin of its name ambiguous.
fn add(all: &mut Vec<Discovered>, by_name: &mut BTreeMap<String, usize>, found: Discovered) {
    let name = found.manifest.name.clone();
    let Some(&i) = by_name.get(&name) else {
        by_name.insert(name, all.len());
        all.push(found);
        return;
    };
    let dist = |d: &Discovered| d.entry_point.as_ref().map(|ep| ep.dist.clone());
    if all[i].file == found.file && dist(&all[i]) == dist(&found) {
        // The same installed distribution, seen through a second path to one environment.
        return;
    }
    let (Some(first), Some(second)) = (all[i].entry_point.as_mut(), found.entry_point) else {
        return;
    };
    let why = format!(
        "ambiguous: {} and {} both declare it; uninstall one, or write a manifest named \
         {name:?} to choose",
        first.describe(),
        second.describe()
    );
    first.error = Some(match first.error.take() {
        Some(earlier) if earlier.starts_with("ambiguous") => format!("{earlier}; and {why}"),
        _ => why,
    });
}

/// Adds the entry points of `eps` to `available` (the manifests), except those a manifest
/// of the same name overrides; returns one note per overridden entry point, by plugin name.
pub fn merge(
    available: &mut BTreeMap<String, Discovered>,
    eps: &EntryPoints,
) -> BTreeMap<String, String> {
    let mut notes = BTreeMap::new();
    for found in &eps.found {
        let name = &found.manifest.name;
        match available.get(name) {
            Some(manifest) => {
                let note = format!(
                    "the manifest {} overrides the {}",
                    manifest.file.display(),
                    found.source()
                );
                notes.insert(name.clone(), note);
            }
            None => {
                available.insert(name.clone(), found.clone());
            }
        }
    }
    notes
}

fn problem(file: &Path, reason: String) -> ManifestError {
    ManifestError {
        file: file.to_path_buf(),
        line: None,
        reason,
    }
}

/// The interpreter `python` names, as an absolute path: a path (relative to the working
/// directory), or a bare name on `PATH`.
fn interpreter(python: &Path) -> Result<PathBuf, String> {
    let text = python.to_string_lossy();
    if !text.contains('/') {
        return on_path(&text, std::env::var_os("PATH"))
            .ok_or_else(|| format!("Python interpreter {text:?}: not found on PATH"));
    }
    let path = std::path::absolute(python)
        .map_err(|e| format!("Python interpreter {}: {e}", python.display()))?;
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "Python interpreter {}: no such file (a virtual environment's bin/python?)",
            path.display()
        ))
    }
}

/// Runs the listing program with `python` and reads its document.
fn list(python: &Path) -> Result<Vec<Listed>, String> {
    let (status, stdout, stderr) = run_listing(python)?;
    if !status.success() {
        return Err(listing_failed(python, status, &stderr));
    }
    let listing: Listing = serde_json::from_slice(&stdout).map_err(|e| {
        format!(
            "`{} -m plugvisor.entry list` printed no listing plugvisor reads ({e})",
            python.display()
        )
    })?;
    if listing.format != FORMAT {
        return Err(format!(
            "its plugvisor SDK lists entry points in format {}, this plugvisor reads format \
             {FORMAT}: install matching versions",
            listing.format
        ));
    }
    Ok(listing.entry_points)
}

/// Why the listing failed, naming a missing SDK as such.
fn listing_failed(python: &Path, status: std::process::ExitStatus, stderr: &str) -> String {
    if stderr.contains("No module named plugvisor") || stderr.contains("No module named 'plugvisor")
    {
        return format!(
            "the plugvisor Python SDK (with plugvisor.entry) is not installed for {}: install it \
             into that environment (pip install plugvisor)",
            python.display()
        );
    }
    let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    format!(
        "`{} -m plugvisor.entry list` failed ({status}): {}",
        python.display(),
        tail.join(" | ")
    )
}

/// Runs `python -m plugvisor.entry list`, at most [`LIST_TIMEOUT`]; its status and output.
fn run_listing(python: &Path) -> Result<(std::process::ExitStatus, Vec<u8>, String), String> {
    let mut child = Command::new(python)
        .args(["-m", "plugvisor.entry", "list"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    let out = reader(child.stdout.take());
    let err = reader(child.stderr.take());
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() < LIST_TIMEOUT => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(None) | Err(_) => {
                // Our own child, by its handle.
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "`{} -m plugvisor.entry list` did not finish within {} s (a plugin module \
                     that hangs when imported?); it was killed",
                    python.display(),
                    LIST_TIMEOUT.as_secs()
                ));
            }
        }
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = String::from_utf8_lossy(&err.join().unwrap_or_default()).into_owned();
    Ok((status, stdout, stderr))
}

/// Reads all of `pipe` on a thread of its own (so neither pipe can fill up and stall the
/// child).
fn reader<R: Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes);
        }
        bytes
    })
}

/// The plugin entry point `entry` describes, run by `python`; a broken one (it failed to load
/// or declares bad manifest fields) is still a plugin, with the reason in its entry point.
///
/// # Errors
/// A name the API cannot address.
fn plugin_of(entry: Listed, python: &Path) -> Result<Discovered, ManifestError> {
    let file = entry.path.clone().unwrap_or_else(|| python.to_path_buf());
    let mut ep = EntryPoint {
        name: entry.name.clone(),
        value: entry.value.clone(),
        dist: entry.dist.clone(),
        dist_version: entry.dist_version.clone(),
        python: python.to_path_buf(),
        error: entry.error.clone(),
    };
    let bare = manifest_of(&entry, python, serde_json::Map::new())
        .map_err(|reason| problem(&file, format!("{}: {reason}", ep.describe())))?;
    let manifest = match (&entry.manifest, &ep.error) {
        (Some(declared), None) => match manifest_of(&entry, python, declared.clone()) {
            Ok(m) => m,
            Err(reason) => {
                ep.error = Some(format!("its declared manifest: {reason}"));
                bare
            }
        },
        _ => bare,
    };
    Ok(Discovered {
        manifest,
        file,
        entry_point: Some(ep),
    })
}

/// The manifest of `entry`: the fields it declares, with the name, version, command and
/// arguments the host gives it.
fn manifest_of(
    entry: &Listed,
    python: &Path,
    mut fields: serde_json::Map<String, serde_json::Value>,
) -> Result<Manifest, String> {
    if let Some(key) = HOST_KEYS.iter().find(|k| fields.contains_key(**k)) {
        return Err(format!(
            "{key:?} cannot be declared by an entry point (the host sets name, command and \
             args; ui needs a manifest file)"
        ));
    }
    let version = entry
        .version
        .clone()
        .unwrap_or_else(|| entry.dist_version.clone());
    fields.entry("version").or_insert(version.into());
    fields.insert("name".into(), entry.name.clone().into());
    fields.insert(
        "command".into(),
        python.to_string_lossy().into_owned().into(),
    );
    let args = [
        "-m",
        "plugvisor.entry",
        "run",
        &entry.name,
        "--from",
        &entry.dist,
    ];
    fields.insert("args".into(), args.to_vec().into());
    let manifest: Manifest =
        serde_json::from_value(serde_json::Value::Object(fields)).map_err(|e| e.to_string())?;
    manifest.checked()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(name: &str, dist: &str, manifest: serde_json::Value) -> Listed {
        Listed {
            name: name.into(),
            value: "pkg:Plugin".into(),
            dist: dist.into(),
            dist_version: "1.2.3".into(),
            path: None,
            version: None,
            manifest: manifest.as_object().cloned(),
            error: None,
        }
    }

    #[test]
    fn an_entry_point_becomes_a_manifest_run_by_its_interpreter() {
        let py = Path::new("/venv/bin/python");
        let entry = listed(
            "tiny",
            "tiny-plugin",
            serde_json::json!({"provides": ["x"]}),
        );
        let found = plugin_of(entry, py).unwrap();
        let m = &found.manifest;
        assert_eq!(
            (m.name.as_str(), m.version.as_str()),
            ("tiny", "1.2.3"),
            "the distribution's version when the plugin declares none"
        );
        assert_eq!(m.command, "/venv/bin/python");
        assert_eq!(
            m.args,
            [
                "-m",
                "plugvisor.entry",
                "run",
                "tiny",
                "--from",
                "tiny-plugin"
            ]
        );
        assert_eq!(m.provides, ["x"]);
        assert_eq!(found.entry_point.as_ref().unwrap().error, None);
        assert_eq!(
            found.source(),
            "entry point tiny (tiny-plugin==1.2.3 in /venv/bin/python)"
        );
    }

    #[test]
    fn bad_declarations_make_a_failed_plugin_and_bad_names_a_problem() {
        let py = Path::new("/p");
        let typo = listed("t", "d", serde_json::json!({"provide": ["x"]}));
        let err = plugin_of(typo, py).unwrap().entry_point.unwrap().error;
        assert!(err.unwrap().contains("unknown field `provide`"));
        let command = listed("t", "d", serde_json::json!({"command": "/bin/sh"}));
        let err = plugin_of(command, py).unwrap().entry_point.unwrap().error;
        assert!(err.unwrap().contains("\"command\" cannot be declared"));
        let bad = plugin_of(listed("my.plugin", "d", serde_json::json!({})), py).unwrap_err();
        assert!(bad
            .reason
            .contains("entry point my.plugin (d==1.2.3 in /p)"));
        assert!(bad.reason.contains("letters, digits"), "{bad}");
    }

    #[test]
    fn a_name_two_distributions_declare_is_ambiguous_and_a_manifest_overrides() {
        let py = Path::new("/p");
        let (mut all, mut by_name) = (Vec::new(), BTreeMap::new());
        for dist in ["a", "b"] {
            let found = plugin_of(listed("twice", dist, serde_json::json!({})), py).unwrap();
            add(&mut all, &mut by_name, found);
        }
        assert_eq!(all.len(), 1);
        let err = all[0].entry_point.as_ref().unwrap().error.clone().unwrap();
        assert!(
            err.contains("a==1.2.3") && err.contains("b==1.2.3"),
            "{err}"
        );
        let eps = EntryPoints {
            found: all,
            problems: vec![],
        };
        let mut available = BTreeMap::new();
        assert!(merge(&mut available, &eps).is_empty());
        assert!(available["twice"].entry_point.is_some());
        let file = PathBuf::from("/m/twice.toml");
        let manifest = Manifest::parse(
            "name = \"twice\"\nversion = \"1.0.0\"\ncommand = \"x\"",
            &file,
        );
        available.insert(
            "twice".into(),
            Discovered::from_file(manifest.unwrap(), file),
        );
        let notes = merge(&mut available, &eps);
        assert!(
            available["twice"].entry_point.is_none(),
            "the manifest is kept"
        );
        assert!(notes["twice"]
            .starts_with("the manifest /m/twice.toml overrides the entry point twice"));
    }

    #[test]
    fn a_missing_interpreter_is_named() {
        let err = interpreter(Path::new("/no/such/venv/bin/python")).unwrap_err();
        assert!(
            err.contains("/no/such/venv/bin/python: no such file"),
            "{err}"
        );
        let err = interpreter(Path::new("no-such-python-here")).unwrap_err();
        assert!(err.contains("not found on PATH"), "{err}");
    }
}
