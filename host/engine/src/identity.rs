//! `PluginIdentity`: who a worker said it is in `/v1/info` (name, version, config schema,
//! HTTP routes).

use plugvisor_proto::wire::{InfoResponse, RouteSpec};
use plugvisor_proto::Value;

/// What a worker reports about its plugin: its id, version and the JSON Schema of its
/// configuration. Held once per worker; a supervisor keeps the first one it saw.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginIdentity {
    /// The plugin's id, e.g. `"echo"`.
    pub name: String,
    /// Its version.
    pub version: String,
    /// The JSON Schema of its configuration.
    pub config_schema: Value,
    /// Its HTTP routes (empty when it serves none).
    pub routes: Vec<RouteSpec>,
    /// The middleware hooks it serves (empty when it is no middleware).
    pub hooks: Vec<plugvisor_proto::wire::Hook>,
    /// Its named methods beside `execute` (empty when it has none).
    pub methods: Vec<plugvisor_proto::wire::MethodSpec>,
    /// True when it serves its own health check (`health_check` capability).
    pub health_check: bool,
    /// The host events it handles on `POST /v1/events` (`loaded`, `plugin_unloaded`, `*`;
    /// empty when it hears none).
    pub events: Vec<String>,
    /// It accepts files streamed to it (`file_transfer`: docs/PROTOCOL.md §14).
    pub file_transfer: bool,
    /// It names the digest of content sent without one (`streamed_upload`: `PUT /v1/files`),
    /// so the host hashes a new file while sending it instead of before.
    pub streamed_upload: bool,
}

impl PluginIdentity {
    /// The names of every method it serves, `execute` first.
    pub fn method_names(&self) -> Vec<String> {
        let named = self.methods.iter().map(|m| m.name.clone());
        std::iter::once(plugvisor_proto::wire::DEFAULT_METHOD.to_owned())
            .chain(named)
            .collect()
    }

    /// True when it handles host event `name` (with or without the `plugin_` prefix).
    pub fn handles_event(&self, name: &str) -> bool {
        plugvisor_proto::wire::handles_event(&self.events, name)
    }

    /// True when it serves method `name` (`execute` always).
    pub fn has_method(&self, name: &str) -> bool {
        name == plugvisor_proto::wire::DEFAULT_METHOD || self.methods.iter().any(|m| m.name == name)
    }
}

impl From<InfoResponse> for PluginIdentity {
    fn from(info: InfoResponse) -> Self {
        Self {
            name: info.name,
            version: info.version,
            config_schema: info.config_schema,
            routes: info.routes,
            hooks: info.hooks,
            methods: info.methods,
            health_check: info.capabilities.iter().any(|c| c == "health_check"),
            file_transfer: info.capabilities.iter().any(|c| c == "file_transfer"),
            streamed_upload: info.capabilities.iter().any(|c| c == "streamed_upload"),
            events: info.events,
        }
    }
}
