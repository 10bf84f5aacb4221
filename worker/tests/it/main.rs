//! The worker's in-process integration tests, one test binary: a [`serve`] on a Unix socket in
//! a tempdir per test, driven over real connections. Tests run side by side on threads.
//!
//! One process holds one transfer directory for `plugvisor_worker::files` (the first server
//! started with one installs it for good), so only `file_refs` serves with one (see
//! `common::TestServer::start_with_transfer_dir`); no other test uses process-global state.
//!
//! [`serve`]: plugvisor_worker::serve

// Helpers outside #[test] functions unwrap too: a failed unwrap is a failed test. (Clippy's
// `allow-unwrap-in-tests` covers only #[test] functions; an inner attribute must sit here, at
// the crate root, to cover every module of the binary.)
#![allow(clippy::unwrap_used)]

// Shared with the `process` test binary, hence outside this directory.
#[path = "../common/mod.rs"]
mod common;

mod events;
mod file_refs;
mod http_api;
mod shutdown;
mod streaming;
