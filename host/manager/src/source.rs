//! Where a discovered plugin was described: a manifest file, or an entry point of an installed
//! Python package ([`EntryPoint`]).

use serde::Serialize;
use std::path::PathBuf;

/// An entry point of the group `plugvisor.plugins` that describes a plugin, as the listing
/// program (`python -m plugvisor.entry list`) of an interpreter reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EntryPoint {
    /// The entry point's name: the plugin's name.
    pub name: String,
    /// What it names: `module:attribute`.
    pub value: String,
    /// The distribution (installed package) that declares it.
    pub dist: String,
    /// That distribution's version.
    pub dist_version: String,
    /// The interpreter it was found with, which runs its worker.
    pub python: PathBuf,
    /// Why it cannot be run (it failed to load, declares a bad manifest field, or another
    /// distribution declares the same name); `None` when it can.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl EntryPoint {
    /// `entry point tiny (tiny-plugin==1.2.3 in /venv/bin/python)`, for people.
    pub fn describe(&self) -> String {
        format!(
            "entry point {} ({}=={} in {})",
            self.name,
            self.dist,
            self.dist_version,
            self.python.display()
        )
    }
}
