//! `WorkerError`: what can stop a worker from starting or serving.

use std::io;
use std::path::PathBuf;

/// Why a worker could not start or serve.
///
/// Errors of single requests never appear here: they become HTTP error answers. A
/// `WorkerError` means the worker as a whole cannot run.
///
/// `Display` says what the worker was doing, one level only; the error that caused it is
/// [`std::error::Error::source`]; print the whole chain to show it to a person
/// ([`plugvisor_proto::ErrorChain`], or `{:#}` of `anyhow`).
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
    /// The TLS certificate, key or client CA could not be loaded or do not fit together.
    #[error("TLS setup: {0}")]
    Tls(String),
    /// A setting in the environment has a value the worker cannot use.
    #[error("bad setting: {0}")]
    Setting(String),
    /// No token was given, or the token is empty.
    #[error("no token: {0}")]
    MissingToken(String),
    /// Binding the listening socket failed.
    #[error("cannot listen on {address}")]
    Bind {
        /// The address that could not be bound.
        address: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Something else already listens on the Unix socket path.
    #[error("another process is already listening on {0}")]
    AddressInUse(PathBuf),
    /// The transfer directory cannot be opened.
    #[error("cannot open transfer directory {path}")]
    TransferDir {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The plugin's [`crate::Routes::routes`] panicked.
    #[error("the plugin's routes() panicked")]
    Routes,
    /// The plugin's [`crate::Middleware::hooks`] panicked.
    #[error("the plugin's hooks() panicked")]
    Hooks,
    /// The plugin's [`crate::Methods::methods`] panicked or declared a bad name.
    #[error("the plugin's methods(): {0}")]
    Methods(String),
    /// The plugin's [`crate::Events::events`] panicked or declared a bad name.
    #[error("the plugin's events(): {0}")]
    Events(String),
    /// Any other I/O failure (stdout, runtime, accept).
    #[error("{context}")]
    Io {
        /// What the worker was doing.
        context: &'static str,
        /// The underlying error.
        #[source]
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

#[cfg(test)]
mod tests {
    use super::*;
    use plugvisor_proto::ErrorChain;
    use std::error::Error;

    #[test]
    fn display_is_one_level_and_the_chain_has_every_level() {
        let not_found = || io::Error::new(io::ErrorKind::NotFound, "no such file");
        let err = WorkerError::Bind {
            address: "unix:/x/w.sock".into(),
            source: not_found(),
        };
        assert_eq!(err.to_string(), "cannot listen on unix:/x/w.sock");
        assert_eq!(
            err.source().map(ToString::to_string).as_deref(),
            Some("no such file")
        );
        assert_eq!(
            ErrorChain(&err).to_string(),
            "cannot listen on unix:/x/w.sock: no such file"
        );
        let err = WorkerError::TransferDir {
            path: "/t".into(),
            source: not_found(),
        };
        assert_eq!(
            ErrorChain(&err).to_string(),
            "cannot open transfer directory /t: no such file"
        );
        let err = WorkerError::io("printing the handshake", not_found());
        assert_eq!(err.to_string(), "printing the handshake");
        assert_eq!(
            ErrorChain(&err).to_string(),
            "printing the handshake: no such file"
        );
        let err = WorkerError::MissingToken("set PLUGVISOR_TOKEN".into());
        assert_eq!(ErrorChain(&err).to_string(), err.to_string());
    }
}
