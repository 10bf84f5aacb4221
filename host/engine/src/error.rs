//! `HostError`: why a worker could not be started; and [`chain`], an error with its sources
//! as one line.

use plugvisor_proto::{ExitReason, PluginError};
use std::path::PathBuf;
use std::time::Duration;

/// Why [`crate::Host::spawn`] failed. Whatever it says, nothing was left running.
///
/// `Display` shows one level; the cause, if any, is [`std::error::Error::source`] (print the
/// whole chain with [`chain`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HostError {
    /// The host directory, a pipe or the process could not be created.
    #[error("cannot start worker {program}")]
    Spawn {
        /// The worker program.
        program: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The worker printed no handshake line within the start timeout.
    #[error("worker {program} did not complete its handshake within {timeout:?}; it was killed")]
    StartTimeout {
        /// The worker program.
        program: PathBuf,
        /// The start timeout that ran out.
        timeout: Duration,
    },
    /// The worker exited before its handshake.
    #[error("worker {program} {exit} before its handshake{}", last_line(.stderr_tail))]
    ExitedEarly {
        /// The worker program.
        program: PathBuf,
        /// How it ended.
        exit: ExitReason,
        /// Its last stderr lines.
        stderr_tail: Vec<String>,
    },
    /// The worker's first stdout line was not a valid handshake, or named another protocol
    /// version. This is not a transient fault: restarting will not help.
    #[error("worker {program} is incompatible: {reason}")]
    Incompatible {
        /// The worker program.
        program: PathBuf,
        /// What was wrong with the handshake.
        reason: String,
    },
    /// The worker answered its handshake but not `GET /v1/info`.
    #[error("worker {program} did not answer /v1/info")]
    Info {
        /// The worker program.
        program: PathBuf,
        /// What went wrong.
        #[source]
        source: PluginError,
    },
    /// A restarted worker refused the configuration the supervisor re-applies to every new
    /// worker; it was stopped.
    #[error("the restarted worker {program} rejected its configuration")]
    ConfigRejected {
        /// The worker program.
        program: PathBuf,
        /// The worker's answer to `initialize`.
        #[source]
        source: PluginError,
    },
    /// The sandbox the spec asks for cannot be set up (a kernel feature is missing, or a rule
    /// path cannot be used). Nothing was started.
    #[error("cannot sandbox worker {program}")]
    Sandbox {
        /// The worker program.
        program: PathBuf,
        /// What is missing or wrong.
        #[source]
        source: crate::sandbox::SandboxError,
    },
    /// The host is shutting down.
    #[error("the host is shutting down")]
    ShuttingDown,
}

fn last_line(tail: &[String]) -> String {
    tail.iter()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| format!("; last stderr line: {l}"))
        .unwrap_or_default()
}

/// `err` and each of its sources, joined with `": "`: the whole story on one line, for logs
/// and error answers.
///
/// ```
/// let io = std::io::Error::other("disk full");
/// let err = plugvisor_host::HostError::Spawn { program: "w".into(), source: io };
/// assert_eq!(plugvisor_host::error_chain(&err), "cannot start worker w: disk full");
/// ```
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    plugvisor_proto::ErrorChain(err).to_string()
}

/// Why an [`crate::Attach`] or a [`crate::TlsClient`] could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttachError {
    /// The address is not `https://HOST:PORT` or `tcp://HOST:PORT`.
    #[error("bad worker address {url:?}: {reason}")]
    BadUrl {
        /// The address as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A CA, certificate or key file cannot be read or used.
    #[error("TLS: {0}")]
    Tls(String),
}
