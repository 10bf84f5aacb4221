//! `plugvisor call` and `stream` of a plugin a manifest describes: a one-shot
//! `PluginManager`, so the manifest's `[config]`, the host file and `PLUGVISOR__…` variables
//! apply as under `serve`, with `--config` as the API layer on top.

use crate::resolve::manifest_dirs;
use anyhow::{anyhow, Context};
use plugvisor_host::{CallOptions, CallOutput, OutputStream};
use plugvisor_manager::{ManagerConfig, ManagerError, PluginManager};
use plugvisor_proto::Value;
use std::path::PathBuf;

/// Where the manifests and configuration of a manifest-described plugin come from.
pub(crate) struct Sources<'a> {
    /// `--plugins` (repeatable; default as for `serve`).
    pub(crate) plugins: &'a [PathBuf],
    /// `--host-config FILE`.
    pub(crate) host_config: Option<PathBuf>,
    /// `--worker-dir DIR`.
    pub(crate) worker_dir: Option<PathBuf>,
}

/// A loaded plugin in its own manager; stop it with [`Embedded::shutdown`].
pub(crate) struct Embedded {
    manager: PluginManager,
    name: String,
}

impl Embedded {
    /// Loads `name` from the manifests with `config` as its API layer; `None` when `name` is a
    /// path or no manifest describes it (the caller then runs `<name>-worker` bare).
    pub(crate) async fn load(
        name: &str,
        config: Option<Value>,
        sources: Sources<'_>,
    ) -> anyhow::Result<Option<Self>> {
        if name.contains('/') {
            return Ok(None);
        }
        let Ok(dirs) = manifest_dirs(sources.plugins) else {
            return Ok(None);
        };
        let manager = PluginManager::new(ManagerConfig {
            manifest_dirs: dirs,
            worker_dir: sources.worker_dir,
            host_config_file: sources.host_config,
            ..ManagerConfig::default()
        })?;
        if let Err(ManagerError::Unknown(_)) = manager.info(name) {
            manager.shutdown().await;
            return Ok(None);
        }
        if let Err(e) = manager.load(name, config).await {
            manager.shutdown().await;
            return Err(anyhow!(e).context(format!("{name} could not be loaded")));
        }
        let name = name.to_owned();
        Ok(Some(Self { manager, name }))
    }

    /// One call of `method` (`None`: `execute`).
    pub(crate) async fn call(
        &self,
        method: Option<&str>,
        input: Value,
    ) -> anyhow::Result<CallOutput> {
        let options = CallOptions::default();
        let output = match method {
            Some(m) => {
                self.manager
                    .call_method(&self.name, m, input, options)
                    .await
            }
            None => self.manager.call(&self.name, input, options).await,
        };
        output.with_context(|| format!("{} failed", self.name))
    }

    /// One stream.
    pub(crate) async fn stream(&self, input: Value) -> anyhow::Result<OutputStream> {
        let stream = self.manager.stream(&self.name, input).await;
        stream.with_context(|| format!("{} failed", self.name))
    }

    /// Stops the plugin (and every plugin it required) and the host.
    pub(crate) async fn shutdown(self) {
        self.manager.shutdown().await;
    }
}
