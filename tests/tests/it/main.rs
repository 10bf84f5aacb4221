//! The integration tests, one binary (linked once): real worker processes, the engine, the
//! manager, the REST API and the `plugvisor` command, each test ending with a leak audit.
//!
//! Process tests run inside [`plugvisor_tests::serially`], one at a time, while pure tests run
//! in parallel.

// Helpers outside #[test] functions unwrap too: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod api;
mod api_answers;
mod api_edges;
mod api_ops;
mod api_routes;
mod api_trust;
mod api_ui;
mod browser;
mod calls;
mod cli;
mod cli_manage;
mod cli_serve;
mod conformance;
mod entry_points;
mod faults;
mod hooks;
mod manager;
mod methods;
mod middleware;
mod plugin_health;
mod pools;
mod protocol;
mod remote;
mod remote_netns;
mod remote_python;
mod sandbox;
mod schemas;
mod services;
mod supervision;
mod tasks;
mod tidy;
