//! cjm-plugin-system as a baseline (P20): a Python ≥ 3.12 found on the machine, a virtual
//! environment of the benchmark's own with cjm-plugin-system from PyPI, and the harness
//! (`bench/python/cjm_harness.py`) that drives cjm's own proxy and worker, one JSON command
//! at a time.

use anyhow::{bail, Context as _, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// The cjm-plugin-system release compared with (it needs Python ≥ 3.12).
pub const CJM_VERSION: &str = "0.0.46";

/// The repository root (the benchmark's Python files live in `bench/python`).
pub fn repo() -> PathBuf {
    let bench = Path::new(env!("CARGO_MANIFEST_DIR"));
    bench.parent().unwrap_or(bench).to_path_buf()
}

/// `bench/python`: the plugin logic, the two plugins and the cjm harness.
pub fn scripts() -> PathBuf {
    repo().join("bench/python")
}

/// A Python ≥ 3.12: `PLUGVISOR_CJM_PYTHON`, else pyenv's (lowest 3.12+ first), else
/// `python3.12` … `python3.19` on `PATH`.
pub fn find_python312() -> Option<PathBuf> {
    if let Some(explicit) = std::env::var_os("PLUGVISOR_CJM_PYTHON") {
        let path = PathBuf::from(explicit);
        return at_least_312(&path).then_some(path);
    }
    pyenv_candidates()
        .into_iter()
        .chain((12..20).filter_map(|minor| which(&format!("python3.{minor}"))))
        .find(|p| at_least_312(p))
}

/// `$PYENV_ROOT/versions/3.1x*/bin/python3.1x` for x ≥ 2, in version order.
fn pyenv_candidates() -> Vec<PathBuf> {
    let root = std::env::var_os("PYENV_ROOT")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".pyenv")));
    let Some(Ok(entries)) = root.map(|r| std::fs::read_dir(r.join("versions"))) else {
        return Vec::new();
    };
    let mut found: Vec<(Vec<u32>, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let parts: Vec<u32> = name.split('.').map_while(|p| p.parse().ok()).collect();
            let minor = *parts.get(1)?;
            (parts.first() == Some(&3) && minor >= 12)
                .then(|| (parts, e.path().join(format!("bin/python3.{minor}"))))
        })
        .filter(|(_, p)| p.is_file())
        .collect();
    found.sort();
    found.into_iter().map(|(_, p)| p).collect()
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn at_least_312(python: &Path) -> bool {
    std::process::Command::new(python)
        .args([
            "-c",
            "import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The interpreter of the benchmark's virtual environment at `venv`, with cjm-plugin-system
/// [`CJM_VERSION`] installed from PyPI (made on first use, reused while the version matches).
///
/// # Errors
/// With the reason when there is no Python ≥ 3.12 or pip cannot install (no network).
pub fn venv(venv: &Path) -> Result<PathBuf> {
    let python = venv.join("bin/python");
    if python.is_file() && installed(&python).as_deref() == Some(CJM_VERSION) {
        return Ok(python);
    }
    let base = find_python312().context(
        "no Python >= 3.12 (PLUGVISOR_CJM_PYTHON, pyenv's versions, python3.12..3.19 on PATH)",
    )?;
    eprint!("(making {} from {}) ", venv.display(), base.display());
    run(&base, &["-m", "venv", "--clear", &venv.to_string_lossy()])?;
    let spec = format!("cjm-plugin-system=={CJM_VERSION}");
    let pip = [
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
    ];
    run(&python, &[&pip[..], &[spec.as_str()]].concat())?;
    match installed(&python) {
        Some(v) if v == CJM_VERSION => Ok(python),
        other => bail!("pip installed cjm-plugin-system {other:?}, not {CJM_VERSION}"),
    }
}

fn installed(python: &Path) -> Option<String> {
    let out = std::process::Command::new(python)
        .args([
            "-c",
            "import importlib.metadata as m; print(m.version('cjm-plugin-system'))",
        ])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn run(program: &Path, args: &[&str]) -> Result<()> {
    let out = std::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", program.display()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: String = err.lines().rev().take(5).collect::<Vec<_>>().join(" | ");
        bail!("{} {} failed: {tail}", program.display(), args.join(" "));
    }
    Ok(())
}

/// `PYTHONPYCACHEPREFIX` for both sides' workers: compiled bytecode kept under
/// `target/bench/pycache` and reused from one spawn to the next, as an installed package's
/// is (`PYTHONDONTWRITEBYTECODE`, set on some machines, would make every spawn compile the
/// SDK's and the bench's sources again).
pub fn bytecode_cache() -> (&'static str, PathBuf) {
    let dir = crate::procs::bench_dir()
        .map(|b| b.join("pycache"))
        .unwrap_or_else(|_| std::env::temp_dir().join("plugvisor-bench-pycache"));
    ("PYTHONPYCACHEPREFIX", dir)
}

/// The running harness: one command line in, one answer line out.
pub struct Harness {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Harness {
    /// Starts `cjm_harness.py` with `python`, cjm's data in `data_dir`.
    ///
    /// # Errors
    /// When it cannot be started.
    pub fn start(python: &Path, data_dir: &Path) -> Result<Self> {
        let mut child = Command::new(python)
            .arg(scripts().join("cjm_harness.py"))
            .env("CJM_DATA_DIR", data_dir)
            .env("PYTHONDONTWRITEBYTECODE", "")
            .env(bytecode_cache().0, bytecode_cache().1)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting cjm_harness.py")?;
        let stdin = child.stdin.take().context("no stdin")?;
        let stdout = child.stdout.take().context("no stdout")?;
        Ok(Self {
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
        })
    }

    /// Sends `command` and returns its answer (an answer with `"error"` is an error).
    ///
    /// # Errors
    /// When the harness fails the command or exits.
    pub async fn ask(&mut self, command: Value) -> Result<Value> {
        let line = serde_json::to_string(&command)? + "\n";
        self.stdin.write_all(line.as_bytes()).await?;
        self.stdin.flush().await?;
        let answer = self
            .lines
            .next_line()
            .await?
            .with_context(|| format!("the cjm harness exited during {command}"))?;
        let answer: Value = serde_json::from_str(&answer)?;
        if let Some(e) = answer.get("error") {
            bail!("cjm harness, {command}: {e}");
        }
        Ok(answer)
    }

    /// Asks the harness to clean up (its proxy stops cjm's workers) and waits for it; kills it
    /// after 10 s.
    pub async fn quit(mut self) {
        let _ = self.stdin.write_all(b"{\"op\": \"quit\"}\n").await;
        let _ = self.stdin.flush().await;
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// The `us` array of a harness answer, as microseconds.
pub fn samples_us(answer: &Value) -> Vec<f64> {
    answer["us"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default()
}
