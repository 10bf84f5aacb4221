//! Plugins installed as Python packages (issue 12): a tiny package declaring entry points of
//! the group `plugvisor.plugins` is built and installed with pip into a fresh virtual
//! environment, found by `plugvisor serve --python`, served over the REST API, overridden by a
//! manifest of the same name, a broken or ambiguous one shown `failed` with its reason; and
//! interpreters that cannot list are reported while the others serve. Nothing is left behind.

use crate::cli_serve::Served;
use plugvisor_tests::http::Client;
use plugvisor_tests::{bin, eventually, files_under, proc_entries, serially};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// Builds a pure-Python wheel from a `pyproject.toml` with the standard library (the venv's
/// setuptools 65 cannot build one offline: it lacks `bdist_wheel` without `wheel`).
const BUILD_WHEEL: &str = include_str!("entry_points/build_wheel.py");

/// The tiny plugin package: a class, a factory, an entry point that cannot load, one a
/// manifest overrides, and one another distribution declares too.
const TINY_PYPROJECT: &str = r#"[project]
name = "tiny-plug"
version = "1.2.3"
dependencies = ["plugvisor"]

[project.entry-points."plugvisor.plugins"]
tiny = "tinyplug:Tiny"
made = "tinyplug:make"
broken = "tinyplug.nope:Missing"
shadowed = "tinyplug:Plain"
twice = "tinyplug:Plain"
"#;

const TINY_MODULE: &str = r#""""A tiny plugvisor plugin package."""
import plugvisor

print("tinyplug imported")  # must reach stderr, never the handshake on stdout


class Tiny(plugvisor.Plugin):
    name = "tiny"
    version = "1.2.3"
    manifest = {"description": "a tiny plugin", "provides": ["tiny.greet"], "tags": ["tiny"]}

    def execute(self, input):
        return {"tiny": input}


class Made(plugvisor.Plugin):
    name = "made"
    version = "1.2.3"

    def execute(self, input):
        return {"made": input}


def make():
    return Made()


class Plain(plugvisor.Plugin):
    name = "plain"
    version = "1.2.3"

    def execute(self, input):
        return "plain"
"#;

const OTHER_PYPROJECT: &str = r#"[project]
name = "other-plug"
version = "0.9.0"

[project.entry-points."plugvisor.plugins"]
twice = "otherplug:Other"
"#;

const OTHER_MODULE: &str = r#""""Another package declaring `twice`."""
import plugvisor


class Other(plugvisor.Plugin):
    name = "twice"
    version = "0.9.0"

    def execute(self, input):
        return "other"
"#;

/// A virtual environment in a temporary directory (removed on drop).
struct Venv {
    dir: tempfile::TempDir,
}

impl Venv {
    /// `python3 -m venv --without-pip`: pip is run from the base interpreter
    /// (`python3 -m pip --python VENV`), which saves the ten seconds of ensurepip.
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        run(Command::new("python3")
            .args(["-m", "venv", "--without-pip"])
            .arg(dir.path().join("venv")));
        Self { dir }
    }

    fn python(&self) -> PathBuf {
        self.dir.path().join("venv/bin/python")
    }

    /// Installs the projects with pip, offline, from wheels built of them.
    fn install(&self, projects: &[&Path]) {
        let wheels = self.dir.path().join("wheels");
        std::fs::create_dir_all(&wheels).unwrap();
        let builder = self.dir.path().join("build_wheel.py");
        std::fs::write(&builder, BUILD_WHEEL).unwrap();
        let mut pip = Command::new("python3");
        pip.args(["-m", "pip", "--python"])
            .arg(self.python())
            .args(["install", "--no-index", "--no-deps", "--quiet"])
            .arg("--disable-pip-version-check");
        for project in projects {
            let out = run(Command::new("python3")
                .arg(&builder)
                .arg(project)
                .arg(&wheels));
            pip.arg(String::from_utf8(out.stdout).unwrap().trim());
        }
        run(&mut pip);
    }
}

/// Runs `command`, which must succeed.
fn run(command: &mut Command) -> Output {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A project directory with `pyproject.toml` and one module package `src/<package>`.
fn project(root: &Path, name: &str, pyproject: &str, package: &str, module: &str) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(dir.join("src").join(package)).unwrap();
    std::fs::write(dir.join("pyproject.toml"), pyproject).unwrap();
    std::fs::write(dir.join("src").join(package).join("__init__.py"), module).unwrap();
    dir
}

fn sdk() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk/python")
}

fn plugvisor(args: &[&str], run_dir: &Path) -> Output {
    Command::new(bin("plugvisor"))
        .args(args)
        .env("PLUGVISOR_RUNTIME_DIR", run_dir)
        .env_remove("PLUGVISOR_PYTHON")
        .output()
        .unwrap()
}

/// Processes of entry-point workers run by the interpreters under `venv` (their command
/// lines name it and `plugvisor.entry`; `serve`'s own names only the first): each worker and
/// the SDK's guardian it forks, as `(pid, ppid)`.
fn workers_of(venv: &Path) -> Vec<(u32, u32)> {
    let venv = venv.to_string_lossy();
    proc_entries()
        .into_iter()
        .filter(|p| p.state != 'Z')
        .filter(|p| {
            std::fs::read(format!("/proc/{}/cmdline", p.pid)).is_ok_and(|c| {
                let line = String::from_utf8_lossy(&c);
                line.contains(venv.as_ref()) && line.contains("plugvisor.entry")
            })
        })
        .map(|p| (p.pid, p.ppid))
        .collect()
}

/// `POST /api/plugins/execute` of `plugin` with input `"hi"`: its output.
async fn execute(c: &Client, plugin: &str) -> Value {
    let body = json!({"plugin_id": plugin, "input": "hi"});
    let answer = c.post("/api/plugins/execute", &body).await;
    assert_eq!(answer.status, 200, "{plugin}: {}", answer.text());
    answer.json()["output"].clone()
}

fn in_list<'a>(list: &'a Value, name: &str) -> &'a Value {
    let found = list.as_array().unwrap().iter().find(|p| p["name"] == name);
    found.unwrap_or_else(|| panic!("{name} not in {list}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn an_installed_package_is_served_and_a_manifest_of_its_name_wins() {
    serially(async {
        let (venv, src, manifests, run_dir) = (Venv::new(), tmp(), tmp(), tmp());
        let tiny = project(src.path(), "tiny", TINY_PYPROJECT, "tinyplug", TINY_MODULE);
        let other = project(
            src.path(),
            "other",
            OTHER_PYPROJECT,
            "otherplug",
            OTHER_MODULE,
        );
        venv.install(&[&sdk(), &tiny, &other]);
        let python = venv.python();
        let py = python.to_str().unwrap();
        let shadow = format!(
            "name = \"shadowed\"\nversion = \"0.1.0\"\ncommand = \"{}\"\n",
            bin("echo-worker").display()
        );
        std::fs::write(manifests.path().join("shadowed.toml"), &shadow).unwrap();
        let m = manifests.path().to_str().unwrap();
        let tiny_source = format!("entry point tiny (tiny-plug==1.2.3 in {py})");

        // Control: without --python the package's plugins are not there.
        let out = plugvisor(&["list", "--plugins", m], run_dir.path());
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(!text(&out.stdout).contains("tiny"), "{}", text(&out.stdout));
        let out = plugvisor(&["list", "--plugins", m, "--python", py], run_dir.path());
        let table = text(&out.stdout);
        assert!(
            table.starts_with("NAME") && table.contains("SOURCE"),
            "{table}"
        );
        let row = table.lines().find(|l| l.starts_with("tiny "));
        assert!(row.is_some_and(|r| r.contains(&tiny_source)), "{table}");

        // validate: the override is a note, the broken and the ambiguous ones are problems.
        let out = plugvisor(&["validate", m, "--python", py], run_dir.path());
        let said = text(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{said}");
        assert!(
            said.contains("note: the manifest ")
                && said
                    .contains("shadowed.toml overrides the entry point shadowed (tiny-plug==1.2.3"),
            "{said}"
        );
        assert!(said.contains("No module named 'tinyplug.nope'"), "{said}");
        assert!(
            said.contains("ambiguous") && said.contains("other-plug==0.9.0"),
            "{said}"
        );
        assert!(!said.contains("entry point tiny "), "tiny is fine: {said}");

        let served = Served::start(&["--plugins", m, "--python", py], &[], run_dir.path());
        assert!(
            served.banner.contains("serving 3 plugins")
                && served.banner.contains(&format!("entry points of {py}"))
                && served.banner.contains("not started: broken, twice"),
            "{}",
            served.banner
        );
        let c = served.client();
        // tinyplug prints when imported: tiny serving at all shows the print did not reach
        // the handshake line on stdout (before plugvisor.entry diverted it, tiny failed with
        // `bad handshake line "tinyplug imported"`).
        assert_eq!(execute(&c, "tiny").await, json!({"tiny": "hi"}));
        assert_eq!(
            execute(&c, "made").await,
            json!({"made": "hi"}),
            "a factory"
        );
        assert_eq!(
            execute(&c, "shadowed").await,
            json!("hi"),
            "the manifest's echo"
        );

        let info = c.get("/api/plugins/tiny").await.json();
        assert_eq!(info["source"], json!(tiny_source), "{info}");
        let ep = &info["entry_point"];
        assert_eq!(
            (
                &ep["dist"],
                &ep["dist_version"],
                &ep["value"],
                &ep["python"]
            ),
            (
                &json!("tiny-plug"),
                &json!("1.2.3"),
                &json!("tinyplug:Tiny"),
                &json!(py)
            ),
            "{info}"
        );
        assert_eq!(info["provides"], json!(["tiny.greet"]), "declared: {info}");
        assert_eq!(info["description"], "a tiny plugin");
        assert!(info["manifest"]
            .as_str()
            .unwrap()
            .ends_with("tiny_plug-1.2.3.dist-info"));
        assert_eq!(info["warnings"], json!([]), "{info}");
        let shadowed = c.get("/api/plugins/shadowed").await.json();
        assert_eq!(shadowed["entry_point"], Value::Null, "{shadowed}");
        let warning = shadowed["warnings"][0].as_str().unwrap_or_default();
        assert!(
            warning.contains("overrides the entry point shadowed (tiny-plug==1.2.3"),
            "{shadowed}"
        );

        let status = c.get("/api/plugins/status").await.json();
        let reason = |name: &str| {
            let p = in_list(&status["failed"], name);
            assert_eq!(
                (&p["state"], &p["loaded"]),
                (&json!("failed"), &json!(false))
            );
            p["last_error"].as_str().unwrap().to_owned()
        };
        let broken = reason("broken");
        assert!(
            broken.starts_with("entry point broken (tiny-plug==1.2.3")
                && broken.contains("cannot load tinyplug.nope:Missing")
                && broken.contains("No module named 'tinyplug.nope'"),
            "{broken}"
        );
        let twice = reason("twice");
        assert!(
            twice.contains("ambiguous")
                && twice.contains("tiny-plug")
                && twice.contains("other-plug"),
            "{twice}"
        );
        let processes = workers_of(venv.dir.path());
        let workers: Vec<u32> = processes
            .iter()
            .filter(|(_, ppid)| processes.iter().all(|(pid, _)| pid != ppid))
            .map(|(pid, _)| *pid)
            .collect();
        assert_eq!(workers.len(), 2, "tiny's and made's workers: {processes:?}");

        // A reload asks the interpreter again and swaps in a new worker.
        let reloaded = c.post("/api/plugins/tiny/reload", &json!({})).await;
        assert_eq!(reloaded.status, 200, "{}", reloaded.text());
        assert_eq!(execute(&c, "tiny").await, json!({"tiny": "hi"}));

        let log = served.stop().await;
        assert!(
            log.contains("plugvisor: note: the manifest")
                && log.contains("overrides the entry point shadowed"),
            "{log}"
        );
        let gone = eventually(Duration::from_secs(3), || {
            workers_of(venv.dir.path()).is_empty()
        })
        .await;
        assert!(gone, "a Python worker outlived serve");
        assert!(
            files_under(run_dir.path())
                .iter()
                .all(|p| !p.to_string_lossy().contains("/h-")),
            "{:?}",
            files_under(run_dir.path())
        );
        let venv_dir = venv.dir.path().to_path_buf();
        drop(venv);
        assert!(!venv_dir.exists());
    })
}

#[test]
fn interpreters_that_cannot_list_are_reported_and_the_others_serve() {
    serially(async {
        let (bare, manifests, run_dir) = (Venv::new(), tmp(), tmp());
        let echo = format!(
            "name = \"echo\"\nversion = \"0.1.0\"\ncommand = \"{}\"\n",
            bin("echo-worker").display()
        );
        std::fs::write(manifests.path().join("echo.toml"), echo).unwrap();
        let m = manifests.path().to_str().unwrap();
        let python = bare.python();
        let missing = bare.dir.path().join("nowhere/bin/python");
        let (py, gone) = (python.to_str().unwrap(), missing.to_str().unwrap());
        // PLUGVISOR_PYTHON names them both, as --python would.
        let both = format!("{py}:{gone}");
        let served = Served::start(
            &["--plugins", m],
            &[("PLUGVISOR_PYTHON", both.as_str())],
            run_dir.path(),
        );
        assert!(
            served.banner.contains("serving 1 plugins"),
            "{}",
            served.banner
        );
        let c = served.client();
        assert_eq!(execute(&c, "echo").await, json!("hi"));
        let problems = c.get("/api/plugins/status").await.json()["manifest_errors"].clone();
        let problems = problems.to_string();
        assert!(
            problems.contains(&format!(
                "the plugvisor Python SDK (with plugvisor.entry) is not installed for {py}"
            )),
            "{problems}"
        );
        assert!(
            problems.contains(&format!("{gone}: no such file")),
            "{problems}"
        );
        let log = served.stop().await;
        assert!(log.contains("plugvisor: skipped plugin source"), "{log}");
    })
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}
