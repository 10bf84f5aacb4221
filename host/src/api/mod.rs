//! The management REST API over a PluginManager (see docs/API.md).
