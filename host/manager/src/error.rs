//! `ManagerError`: why a manager operation failed, naming the plugin(s) involved.

use crate::deps::DepError;
use crate::manifest::ManifestError;
use plugvisor_proto::PluginError;
use std::path::PathBuf;

/// Why a manager operation failed. Each names the plugin(s) involved.
///
/// `Display` shows one level; the cause, if any, is [`std::error::Error::source`] (print the
/// whole chain with [`plugvisor_host::error_chain`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManagerError {
    /// No manifest with that name was discovered.
    #[error("unknown plugin {0:?}")]
    Unknown(String),
    /// A manifest describes the plugin, but it is not loaded.
    #[error("plugin {0:?} is not loaded")]
    NotLoaded(String),
    /// The plugin is already loaded.
    #[error("plugin {0:?} is already loaded")]
    AlreadyLoaded(String),
    /// Requirements cannot be met, or form a cycle.
    #[error(transparent)]
    Dependencies(#[from] DepError),
    /// Loaded plugins require a service only this plugin provides.
    #[error("plugin {plugin} is required by {}; unload them first or force it", dependents.join(", "))]
    Required {
        /// The plugin to unload.
        plugin: String,
        /// The loaded plugins that need it.
        dependents: Vec<String>,
    },
    /// The configuration does not match the plugin's schema; the plugin was not touched.
    #[error("invalid config for {plugin}: {}", problems.join("; "))]
    InvalidConfig {
        /// The plugin.
        plugin: String,
        /// Each problem, naming the field and the rule.
        problems: Vec<String>,
    },
    /// The plugin's route prefix overlaps a loaded plugin's.
    #[error("plugin {plugin}'s routes at {prefix} overlap those of loaded plugin {other}")]
    RouteConflict {
        /// The plugin being loaded.
        plugin: String,
        /// The loaded plugin it conflicts with.
        other: String,
        /// The prefix.
        prefix: String,
    },
    /// The worker could not be started.
    #[error("plugin {plugin} could not start: {reason}")]
    Start {
        /// The plugin.
        plugin: String,
        /// Why, as the supervisor tells it.
        reason: String,
    },
    /// The plugin answered with an error: its own refusal (a config check), a crash, a
    /// timeout, or any other error of a call.
    #[error("plugin {plugin}")]
    Plugin {
        /// The plugin.
        plugin: String,
        /// Its error.
        #[source]
        source: PluginError,
    },
    /// The plugin has no method of that name.
    #[error("plugin {plugin} has no method {method:?} (its methods: {})", known.join(", "))]
    UnknownMethod {
        /// The plugin.
        plugin: String,
        /// The method asked for.
        method: String,
        /// Its methods, `execute` first.
        known: Vec<String>,
    },
    /// The plugin has no task of that name.
    #[error("plugin {plugin} has no task {task:?} (its tasks: {})", known.join(", "))]
    UnknownTask {
        /// The plugin.
        plugin: String,
        /// The task asked for.
        task: String,
        /// Its tasks.
        known: Vec<String>,
    },
    /// A run of the task is in progress and the task's `overlap` is `skip`.
    #[error("task {task} of {plugin} is already running (overlap = \"skip\")")]
    TaskBusy {
        /// The plugin.
        plugin: String,
        /// The task.
        task: String,
    },
    /// The plugin is failed, so its tasks are paused until it is reset or reloaded.
    #[error("task {task} of {plugin} is paused: the plugin is failed; reload it")]
    TaskPaused {
        /// The plugin.
        plugin: String,
        /// The task.
        task: String,
    },
    /// A manifest file is broken.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The host configuration file is broken.
    #[error("host config {}: {reason}", path.display())]
    HostConfig {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The host's runtime directory could not be made.
    #[error("cannot start the host")]
    Io(#[from] std::io::Error),
}

impl ManagerError {
    /// The plugin's error, for errors that came from the plugin.
    pub fn plugin_error(&self) -> Option<&PluginError> {
        match self {
            Self::Plugin { source, .. } => Some(source),
            _ => None,
        }
    }
}
