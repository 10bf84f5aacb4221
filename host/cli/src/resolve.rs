//! Finding a plugin's worker binary from its name.

use anyhow::{bail, Context};
use std::path::{Path, PathBuf};

/// Resolves `plugin` to a worker binary: a path if it contains `/`, else `<name>-worker` in
/// `worker_dir` (default: the directory of the `plugvisor` binary itself).
pub(crate) fn worker_binary(plugin: &str, worker_dir: Option<&Path>) -> anyhow::Result<PathBuf> {
    if plugin.contains('/') {
        let path = PathBuf::from(plugin);
        if !path.is_file() {
            bail!("worker binary {} does not exist", path.display());
        }
        return Ok(path);
    }
    let dir = match worker_dir {
        Some(d) => d.to_path_buf(),
        None => own_dir()?,
    };
    let candidate = dir.join(format!("{plugin}-worker"));
    if candidate.is_file() {
        return Ok(candidate);
    }
    bail!(
        "unknown plugin {plugin:?}: no {} (available: {})",
        candidate.display(),
        available(&dir).join(", ")
    )
}

fn own_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the plugvisor binary's own path")?;
    Ok(exe.parent().map(Path::to_path_buf).unwrap_or_default())
}

/// Plugin names with a `<name>-worker` binary in `dir`, sorted.
pub(crate) fn available(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_suffix("-worker").map(str::to_owned)
        })
        .collect();
    names.sort();
    names
}

/// The manifest directories: `explicit` (each `--plugins DIR`), else the colon-separated
/// directories of `$PLUGVISOR_PLUGINS`, else `./plugins/manifests`, else the bundled manifests
/// of the source tree this binary was built from. A later directory's manifest replaces an
/// earlier one's of the same name.
pub(crate) fn manifest_dirs(explicit: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    if !explicit.is_empty() {
        return Ok(explicit.to_vec());
    }
    if let Some(value) = std::env::var_os("PLUGVISOR_PLUGINS") {
        let dirs: Vec<PathBuf> = std::env::split_paths(&value)
            .filter(|d| !d.as_os_str().is_empty())
            .collect();
        if !dirs.is_empty() {
            return Ok(dirs);
        }
    }
    let candidates = [
        PathBuf::from("plugins/manifests"),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../plugins/manifests"),
    ];
    let found = candidates.into_iter().find(|d| d.is_dir()).ok_or_else(|| {
        anyhow::anyhow!("no manifest directory: pass --plugins DIR or set PLUGVISOR_PLUGINS")
    })?;
    Ok(vec![found])
}

/// The Python interpreters whose entry points (group `plugvisor.plugins`) are plugins:
/// `explicit` (each `--python PATH`), else the colon-separated paths of `$PLUGVISOR_PYTHON`,
/// else none. (A host configuration file's `[discovery] python` adds to these.)
pub(crate) fn pythons(explicit: &[PathBuf]) -> Vec<PathBuf> {
    if !explicit.is_empty() {
        return explicit.to_vec();
    }
    std::env::var_os("PLUGVISOR_PYTHON")
        .map(|value| {
            std::env::split_paths(&value)
                .filter(|p| !p.as_os_str().is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// [`manifest_dirs`], each checked to be a readable directory.
pub(crate) fn existing_manifest_dirs(explicit: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let dirs = manifest_dirs(explicit)?;
    for dir in &dirs {
        std::fs::read_dir(dir)
            .with_context(|| format!("cannot read the manifest directory {}", dir.display()))?;
    }
    Ok(dirs)
}

/// The directories as one line for people: `a, b`.
pub(crate) fn show_dirs(dirs: &[PathBuf]) -> String {
    let shown: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    shown.join(", ")
}
