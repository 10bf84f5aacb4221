//! Example plugvisor plugins, one module each, each with a worker binary in `src/bin/`:
//!
//! - [`echo`]: transforms the strings in any JSON input (`echo-worker`).
//! - [`ticker`]: streams `n` fixed-size items as fast as possible or paced (`ticker-worker`).
//! - [`files`]: hashes, compresses or measures a file passed by reference (`files-worker`).
//! - [`chaos`]: misbehaves on demand, for the host's fault tests (`chaos-worker`); also in
//!   middleware hooks.
//! - [`guard`]: a middleware that refuses requests without the configured API key
//!   (`guard-worker`).
//! - [`shop`]: `pricing` provides a service, `checkout` calls it through the host
//!   (`pricing-worker`, `checkout-worker`).
//! - [`echo_panel`]: a UI plugin whose panel shows echo's last outputs (`echo-panel-worker`,
//!   assets in `manifests/echo-panel/`).
//! - [`intruder`]: attempts what a hostile plugin would (read host files, connect, ptrace,
//!   forbidden syscalls, escape the stop) and reports only whether it worked, for the sandbox
//!   tests (`intruder-worker`; deliberately without a bundled manifest).

pub mod chaos;
pub mod echo;
pub mod echo_panel;
pub mod files;
pub mod guard;
pub mod intruder;
pub mod shop;
pub mod ticker;

pub use echo::Echo;
pub use files::Files;
pub use ticker::Ticker;
