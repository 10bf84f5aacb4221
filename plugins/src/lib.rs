//! Example plugvisor plugins, one module each, each with a worker binary in `src/bin/`:
//!
//! - [`echo`]: transforms the strings in any JSON input (`echo-worker`).
//! - [`ticker`]: streams `n` fixed-size items as fast as possible or paced (`ticker-worker`).
//! - [`files`]: hashes, compresses or measures a file passed by reference (`files-worker`).
//! - [`chaos`]: misbehaves on demand, for the host's fault tests (`chaos-worker`).

pub mod chaos;
pub mod echo;
pub mod files;
pub mod ticker;

pub use echo::Echo;
pub use files::Files;
pub use ticker::Ticker;
