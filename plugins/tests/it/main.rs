//! The example plugins' integration tests, one binary: the worker binaries end to end, and
//! the intruder's positive controls.

// Helpers outside #[test] functions unwrap too: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod intruder;
mod layout;
mod workers;
