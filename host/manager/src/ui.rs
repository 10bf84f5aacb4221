//! UI plugins: the manifest's `ui` table (an assets directory and a mount point on the status
//! page), the `ui` kind's contract, and what `PluginInfo` shows of a plugin's panel.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The page every UI plugin must ship, at the top of its assets directory.
pub const INDEX: &str = "index.html";

/// Where the URL path of a plugin's assets starts: `/ui/plugins/<plugin>/`.
pub const ASSETS_PREFIX: &str = "/ui/plugins/";

/// The manifest's `ui` table: static assets the status page shows at a mount point.
///
/// ```toml
/// kind = "ui"
/// ui = { dir = "echo-panel", mount_point = "sidebar" }
/// ```
///
/// A plugin of kind `ui` must have it; a plugin of another kind may have it too (a tool with
/// a panel of its own). Either way `dir` must be a directory holding `index.html`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UiManifest {
    /// The assets directory, relative to the manifest's directory (or absolute).
    pub dir: PathBuf,
    /// Where the status page shows the panel (default `main`).
    #[serde(default)]
    pub mount_point: MountPoint,
}

/// Where on the status page a UI plugin's panel is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum MountPoint {
    /// The column beside the plugin table (narrow, tall).
    Sidebar,
    /// The strip above the plugin table (wide, short).
    Toolbar,
    /// Below the plugin table, full width.
    #[default]
    Main,
}

impl MountPoint {
    /// The manifest's (and the page's) name of the mount point.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sidebar => "sidebar",
            Self::Toolbar => "toolbar",
            Self::Main => "main",
        }
    }
}

impl UiManifest {
    /// The assets directory of a manifest read from `file`.
    pub fn dir_of(&self, file: &Path) -> PathBuf {
        file.parent().unwrap_or(Path::new(".")).join(&self.dir)
    }

    /// Checks that the assets directory exists and holds `index.html`.
    ///
    /// # Errors
    /// A message naming the key, the directory and what is missing.
    pub fn check_assets(&self, file: &Path) -> Result<(), String> {
        if self.dir.as_os_str().is_empty() {
            return Err("ui.dir: must name the directory of the plugin's assets".to_owned());
        }
        let dir = self.dir_of(file);
        if !dir.is_dir() {
            return Err(format!(
                "ui.dir = {:?}: directory {} does not exist",
                self.dir,
                dir.display()
            ));
        }
        if !dir.join(INDEX).is_file() {
            return Err(format!(
                "ui.dir = {:?}: {} holds no {INDEX} (a UI plugin must ship one)",
                self.dir,
                dir.display()
            ));
        }
        Ok(())
    }
}

/// Why a manifest of kind `ui` without a `ui` table is refused (the `ui` kind's contract).
pub const MISSING_UI: &str = "kind = \"ui\" needs its assets: add ui = { dir = \"<dir with \
     index.html>\", mount_point = \"sidebar\" | \"toolbar\" | \"main\" }";

/// What `PluginInfo` shows of a plugin's panel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UiInfo {
    /// Where the status page shows it.
    pub mount_point: MountPoint,
    /// Where its `index.html` is served: `/ui/plugins/<plugin>/`.
    pub url: String,
}

impl UiInfo {
    /// The panel of plugin `name` as its manifest's `ui` describes it.
    pub fn of(name: &str, ui: &UiManifest) -> Self {
        Self {
            mount_point: ui.mount_point,
            url: format!("{ASSETS_PREFIX}{name}/"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_assets_directory_must_hold_an_index() {
        let root = tempfile::tempdir().unwrap();
        let file = root.path().join("panel.toml");
        let ui = UiManifest {
            dir: "panel".into(),
            mount_point: MountPoint::default(),
        };
        let missing = ui.check_assets(&file).unwrap_err();
        assert!(missing.contains("does not exist"), "{missing}");
        std::fs::create_dir(root.path().join("panel")).unwrap();
        let empty = ui.check_assets(&file).unwrap_err();
        assert!(empty.contains("holds no index.html"), "{empty}");
        std::fs::write(root.path().join("panel/index.html"), "<p>hi</p>").unwrap();
        assert_eq!(ui.check_assets(&file), Ok(()));
        assert_eq!(UiInfo::of("p", &ui).url, "/ui/plugins/p/");
        assert_eq!(ui.mount_point.as_str(), "main");
    }
}
