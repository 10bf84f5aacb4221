//! The plugvisor contract: the [`Plugin`] trait, [`PluginError`], [`FileRef`] and the wire types.
//!
//! This crate is what a plugin, a worker and a host agree on. It holds no runtime, no HTTP and no
//! I/O, so the whole contract reads in one sitting:
//!
//! - [`plugin`]: the [`Plugin`] trait plugin authors implement, and its object-safe twin
//!   [`DynPlugin`] for registries that mix plugins.
//! - [`error`]: [`PluginError`], whose kinds survive the trip over the wire.
//! - [`file_ref`]: [`FileRef`], a typed reference to a file passed by path instead of by value,
//!   and [`FileBacked`], for values that can write themselves to such a file.
//! - [`fast_json`]: fast paths for writing and reading call bodies with large strings.
//! - [`wire`]: request, response, stream-frame and handshake types of the worker protocol
//!   (`docs/PROTOCOL.md` is the normative description).
//! - [`schema`] (feature `schema`): the JSON Schema of every body, as published in
//!   `docs/schemas/`.

pub mod error;
pub mod fast_json;
pub mod file_ref;
pub mod plugin;
#[cfg(feature = "schema")]
pub mod schema;
pub mod wire;

pub use error::{
    CrashCause, CrashReport, ErrorChain, ErrorKind, ExitReason, PluginError, WireError,
};
pub use file_ref::{FileBacked, FileRef};
pub use plugin::{DynPlugin, Plugin, PluginStream};
pub use serde_json::{json, Value};
pub use wire::PROTOCOL_VERSION;
