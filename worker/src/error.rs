//! `WorkerError`: what can stop a worker from starting or serving.

use std::io;
use std::path::PathBuf;

/// Why a worker could not start or serve.
///
/// Errors of single requests never appear here: they become HTTP error answers. A
/// `WorkerError` means the worker as a whole cannot run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// The listen address could not be parsed.
    #[error("bad listen address {address:?}: {reason}")]
    BadAddress {
        /// The address as given.
        address: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No token was given, or the token is empty.
    #[error("no token: {0}")]
    MissingToken(String),
    /// Binding the listening socket failed.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The address that could not be bound.
        address: String,
        /// The underlying error.
        source: io::Error,
    },
    /// Something else already listens on the Unix socket path.
    #[error("another process is already listening on {0}")]
    AddressInUse(PathBuf),
    /// The transfer directory cannot be opened.
    #[error("cannot open transfer directory {path}: {source}")]
    TransferDir {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Any other I/O failure (stdout, runtime, accept).
    #[error("{context}: {source}")]
    Io {
        /// What the worker was doing.
        context: &'static str,
        /// The underlying error.
        source: io::Error,
    },
}

impl WorkerError {
    /// Wraps an I/O error with what the worker was doing.
    pub(crate) fn io(context: &'static str, source: io::Error) -> Self {
        Self::Io { context, source }
    }

    /// The process exit code `run` uses for this error: 2 for usage mistakes, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::BadAddress { .. } | Self::MissingToken(_) => 2,
            _ => 1,
        }
    }
}
