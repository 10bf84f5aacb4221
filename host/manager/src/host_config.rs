//! The host configuration file (`plugvisor.toml`): `[plugins.<name>.config]` tables become
//! each plugin's file layer; and where bare worker command names resolve.

use crate::error::ManagerError;
use plugvisor_proto::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Reads `plugvisor.toml`: each `[plugins.<name>.config]` table, as JSON, by plugin name.
pub(crate) fn read(path: &Path) -> Result<BTreeMap<String, Value>, ManagerError> {
    let err = |reason: String| ManagerError::HostConfig {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| err(e.message().to_owned()))?;
    let mut layers = BTreeMap::new();
    let plugins = table.get("plugins").and_then(toml::Value::as_table);
    for (name, section) in plugins.into_iter().flatten() {
        if let Some(config) = section.get("config") {
            let json = serde_json::to_value(config).map_err(|e| err(e.to_string()))?;
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
        let layers = read(&path).unwrap();
        assert_eq!(layers["echo"], serde_json::json!({"mode": "upper"}));
        assert!(!layers.contains_key("x"));
        std::fs::write(&path, "[plugins.echo.config\n").unwrap();
        let err = read(&path).unwrap_err();
        assert!(err
            .to_string()
            .starts_with(&format!("host config {}", path.display())));
    }
}
