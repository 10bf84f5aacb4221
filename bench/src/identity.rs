//! The bench's identity plugin: answers its input and does nothing else, the same work as the
//! bare hyper server and go-plugin's echo, so call figures compare isolation, not plugins.
//!
//! The bundled `echo` plugin also applies its configuration and keeps a history of its last
//! answers for its UI panel (a clone, a serialisation and a lock per call); P1 reports it
//! beside the identity plugin.

use plugvisor_proto::{Plugin, PluginError, Value};

/// Name of the plugin (its worker binary is `bench-identity-worker`).
pub const NAME: &str = "bench-identity";

/// Answers its input.
#[derive(Debug, Default, Clone, Copy)]
pub struct Identity;

impl Plugin for Identity {
    fn name(&self) -> &str {
        NAME
    }

    fn version(&self) -> &str {
        env!("CARGO_PKG_VERSION")
    }

    async fn execute(&self, input: Value) -> Result<Value, PluginError> {
        Ok(input)
    }
}
