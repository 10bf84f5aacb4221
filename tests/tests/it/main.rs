//! The integration tests, one binary (linked once): real worker processes, the engine, the
//! manager, the REST API and the `plugvisor` command, each test ending with a leak audit.
//!
//! Process tests take the [`plugvisor_tests::serial`] lock, so they run one at a time while
//! pure tests run in parallel.

mod api;
mod calls;
mod cli;
mod cli_manage;
mod faults;
mod manager;
mod protocol;
mod supervision;
mod tidy;
