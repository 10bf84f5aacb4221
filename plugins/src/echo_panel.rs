//! `echo-panel`: a UI plugin. Its worker does almost nothing; what matters is its assets
//! (`plugins/manifests/echo-panel/`), a panel the status page shows in its sidebar that polls
//! the `echo` plugin's `GET /plugins/echo/recent` route through the page's fetch bridge.
//!
//! `execute` answers where the panel is and what it shows, so the plugin can be called like
//! any other (and its worker is supervised like any other).

use plugvisor_proto::{json, Plugin, PluginError, Value};

/// The route the panel polls.
pub const SHOWS: &str = "/plugins/echo/recent";

/// The echo-panel plugin.
#[derive(Debug, Default, Clone, Copy)]
pub struct EchoPanel;

impl Plugin for EchoPanel {
    fn name(&self) -> &str {
        "echo-panel"
    }

    fn version(&self) -> &str {
        env!("CARGO_PKG_VERSION")
    }

    async fn execute(&self, _input: Value) -> Result<Value, PluginError> {
        Ok(json!({"panel": "/ui/plugins/echo-panel/", "shows": SHOWS}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn says_what_the_panel_shows() {
        let out = EchoPanel.execute(json!({})).await.unwrap();
        assert_eq!(out["shows"], SHOWS);
    }
}
