//! The baselines measured in the same run as plugvisor: the floors it is compared with.
//!
//! - [`raw_uds`]: two processes exchanging 16-byte messages over a Unix socket.
//! - [`bare_hyper`]: a minimal hyper HTTP/1.1 JSON server in its own process.
//! - [`client`]: a plain hyper client on one kept-alive connection (for bare-hyper, and for
//!   calling a worker directly over a Unix socket or TCP).
//! - [`bare_spawn`]: spawning a minimal binary that binds a Unix socket and prints one line.
//! - [`hyper_spawn`]: spawning a minimal tokio + hyper server and having one call answered.
//! - [`json_echo`]: the JSON echo both hyper baselines answer with.
//! - [`bare_kill`]: SIGKILL → reaped by a plain `waitpid`, for that binary and for a worker.
//! - [`cjm`]: cjm-plugin-system's own proxy and worker (PyPI), driven by a Python harness.
//! - [`goplugin`]: HashiCorp go-plugin 1.0.1 (Debian), an echo plugin and a Go host harness.
//! - in-process: the plugins called through the trait, in the scenarios themselves.

pub mod bare_hyper;
pub mod bare_kill;
pub mod bare_spawn;
pub mod cjm;
pub mod client;
pub mod goplugin;
pub mod hyper_spawn;
pub mod json_echo;
pub mod raw_uds;
