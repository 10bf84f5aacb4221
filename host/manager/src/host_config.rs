//! The host configuration file (`plugvisor.toml`): `[plugins.<name>.config]` tables become
//! each plugin's file layer, `[discovery] python = [...]` names interpreters whose entry
//! points are plugins; and where bare worker command names resolve.

use crate::error::ManagerError;
use plugvisor_proto::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What the host configuration file says.
#[derive(Debug, Default)]
pub(crate) struct HostFile {
    /// Each `[plugins.<name>.config]` table, as JSON, by plugin name.
    pub(crate) layers: BTreeMap<String, Value>,
    /// `[discovery] python`: interpreters whose `plugvisor.plugins` entry points are plugins
    /// (a relative path is relative to the file's directory; a bare name is looked up on
    /// `PATH`).
    pub(crate) python: Vec<PathBuf>,
}

/// Reads `plugvisor.toml`.
pub(crate) fn read(path: &Path) -> Result<HostFile, ManagerError> {
    let err = |reason: String| ManagerError::HostConfig {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| err(e.message().to_owned()))?;
    Ok(HostFile {
        layers: layers(&table).map_err(err)?,
        python: discovery(&table, path).map_err(err)?,
    })
}

/// `[discovery] python = ["…"]`, each path relative to the directory of `file`.
fn discovery(table: &toml::Table, file: &Path) -> Result<Vec<PathBuf>, String> {
    let Some(section) = table.get("discovery") else {
        return Ok(Vec::new());
    };
    let section = section
        .as_table()
        .ok_or("[discovery] must be a table".to_owned())?;
    if let Some(key) = section.keys().find(|k| *k != "python") {
        return Err(format!("[discovery] has no key {key:?} (it has: python)"));
    }
    let Some(list) = section.get("python") else {
        return Ok(Vec::new());
    };
    let bad = || "[discovery] python must be an array of interpreter paths".to_owned();
    let dir = file.parent().unwrap_or(Path::new("."));
    list.as_array()
        .ok_or_else(bad)?
        .iter()
        .map(|v| {
            let text = v.as_str().ok_or_else(bad)?;
            Ok(if text.contains('/') {
                dir.join(text)
            } else {
                PathBuf::from(text)
            })
        })
        .collect()
}

/// Each `[plugins.<name>.config]` table, as JSON, by plugin name.
fn layers(table: &toml::Table) -> Result<BTreeMap<String, Value>, String> {
    let mut layers = BTreeMap::new();
    let plugins = table.get("plugins").and_then(toml::Value::as_table);
    for (name, section) in plugins.into_iter().flatten() {
        if let Some(config) = section.get("config") {
            let json = serde_json::to_value(config).map_err(|e| e.to_string())?;
            layers.insert(name.clone(), json);
        }
    }
    Ok(layers)
}

/// The directory of the running executable (worker binaries sit beside `plugvisor`).
pub fn default_worker_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_tables_become_layers_and_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plugvisor.toml");
        std::fs::write(
            &path,
            "[plugins.echo.config]\nmode = \"upper\"\n[plugins.x]\n",
        )
        .unwrap();
        let layers = read(&path).unwrap().layers;
        assert_eq!(layers["echo"], serde_json::json!({"mode": "upper"}));
        assert!(!layers.contains_key("x"));
        std::fs::write(&path, "[plugins.echo.config\n").unwrap();
        let err = read(&path).unwrap_err();
        assert!(err
            .to_string()
            .starts_with(&format!("host config {}", path.display())));
    }

    #[test]
    fn discovery_names_interpreters_relative_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plugvisor.toml");
        let text = "[discovery]\npython = [\"venv/bin/python\", \"/opt/py\", \"python3\"]\n";
        std::fs::write(&path, text).unwrap();
        let python = read(&path).unwrap().python;
        let expected = [
            dir.path().join("venv/bin/python"),
            "/opt/py".into(),
            "python3".into(),
        ];
        assert_eq!(python, expected);
        std::fs::write(&path, "[discovery]\npyhton = []\n").unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(err.contains("no key \"pyhton\""), "{err}");
        std::fs::write(&path, "[plugins.echo.config]\nmode = \"upper\"\n").unwrap();
        assert!(read(&path).unwrap().python.is_empty());
    }
}
