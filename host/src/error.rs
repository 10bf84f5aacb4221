//! `HostError`: why a worker could not be started.

use plugvisor_proto::ExitReason;
use std::path::PathBuf;
use std::time::Duration;

/// Why [`crate::Host::spawn`] failed. Whatever it says, nothing was left running.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HostError {
    /// The host directory, a pipe or the process could not be created.
    #[error("cannot start worker {program}: {source}")]
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
    #[error("worker {program} did not answer /v1/info: {reason}")]
    Info {
        /// The worker program.
        program: PathBuf,
        /// What went wrong.
        reason: String,
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
