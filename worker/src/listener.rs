//! Where a worker listens: `ListenAddr` (parsed from `--listen`) and `Listener` (bound socket).

use crate::error::WorkerError;
use plugvisor_proto::wire::{Handshake, Transport};
use std::fmt;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use tokio::net::{TcpListener, UnixListener};

/// A listen address: `unix:PATH` or `tcp://HOST:PORT`.
///
/// ```
/// use plugvisor_worker::ListenAddr;
/// let addr: ListenAddr = "tcp://127.0.0.1:0".parse().unwrap();
/// assert_eq!(addr, ListenAddr::Tcp("127.0.0.1:0".into()));
/// let addr: ListenAddr = "unix:/run/echo.sock".parse().unwrap();
/// assert_eq!(addr, ListenAddr::Unix("/run/echo.sock".into()));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// A Unix domain socket at this path.
    Unix(PathBuf),
    /// A TCP `host:port`; port 0 picks a free port.
    Tcp(String),
}

impl FromStr for ListenAddr {
    type Err = WorkerError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason: &str| WorkerError::BadAddress {
            address: s.to_owned(),
            reason: reason.to_owned(),
        };
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(bad("empty socket path"));
            }
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        if let Some(hostport) = s.strip_prefix("tcp://") {
            if !hostport.contains(':') {
                return Err(bad("expected tcp://HOST:PORT"));
            }
            return Ok(Self::Tcp(hostport.trim_end_matches('/').to_owned()));
        }
        Err(bad("expected unix:PATH or tcp://HOST:PORT"))
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
            Self::Tcp(addr) => write!(f, "tcp://{addr}"),
        }
    }
}

/// A bound listening socket a worker serves on.
#[derive(Debug)]
pub enum Listener {
    /// A Unix domain socket (the default transport).
    Unix(UnixListener),
    /// A TCP socket (standalone or remote workers).
    Tcp(TcpListener),
}

impl From<UnixListener> for Listener {
    fn from(listener: UnixListener) -> Self {
        Self::Unix(listener)
    }
}

impl From<TcpListener> for Listener {
    fn from(listener: TcpListener) -> Self {
        Self::Tcp(listener)
    }
}

impl Listener {
    /// Binds `addr`. A Unix socket file left behind by a dead worker is removed first; the
    /// new socket file gets mode 0600. Must be called inside a tokio runtime.
    ///
    /// # Errors
    /// [`WorkerError::AddressInUse`] when a live process listens on the Unix path,
    /// [`WorkerError::Bind`] for any other failure (including a non-socket file at the path).
    pub async fn bind(addr: &ListenAddr) -> Result<Self, WorkerError> {
        let bind_err = |source| WorkerError::Bind {
            address: addr.to_string(),
            source,
        };
        match addr {
            ListenAddr::Unix(path) => {
                let path = std::path::absolute(path).map_err(bind_err)?;
                remove_stale_socket(&path)?;
                let listener = UnixListener::bind(&path).map_err(bind_err)?;
                let mode = std::fs::Permissions::from_mode(0o600);
                std::fs::set_permissions(&path, mode).map_err(bind_err)?;
                Ok(Self::Unix(listener))
            }
            ListenAddr::Tcp(hostport) => {
                let listener = TcpListener::bind(hostport.as_str())
                    .await
                    .map_err(bind_err)?;
                Ok(Self::Tcp(listener))
            }
        }
    }

    /// The handshake line announcing this listener (the actual port for `tcp://…:0`).
    ///
    /// # Errors
    /// [`WorkerError::Io`] when the socket's local address cannot be read.
    pub fn handshake(&self) -> Result<Handshake, WorkerError> {
        let transport = match self {
            Self::Unix(_) => {
                let path = self.socket_path().ok_or_else(|| {
                    let err = io::Error::other("the Unix socket has no path");
                    WorkerError::io("reading the socket address", err)
                })?;
                Transport::Unix(path)
            }
            Self::Tcp(listener) => {
                let addr = listener
                    .local_addr()
                    .map_err(|e| WorkerError::io("reading the socket address", e))?;
                Transport::Tcp(addr.to_string())
            }
        };
        Ok(Handshake::new(transport))
    }

    /// The absolute path of a Unix listener's socket file.
    pub fn socket_path(&self) -> Option<PathBuf> {
        let Self::Unix(listener) = self else {
            return None;
        };
        let addr = listener.local_addr().ok()?;
        let path = addr.as_pathname()?;
        std::path::absolute(path).ok()
    }
}

/// Removes a socket file at `path` when nothing listens on it any more.
fn remove_stale_socket(path: &Path) -> Result<(), WorkerError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(bind_error(path, source)),
    };
    if !meta.file_type().is_socket() {
        let err = io::Error::new(io::ErrorKind::AlreadyExists, "exists and is not a socket");
        return Err(bind_error(path, err));
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(WorkerError::AddressInUse(path.to_owned()));
    }
    tracing::info!(path = %path.display(), "removing stale socket file");
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(bind_error(path, e)),
        _ => Ok(()),
    }
}

fn bind_error(path: &Path, source: io::Error) -> WorkerError {
    WorkerError::Bind {
        address: format!("unix:{}", path.display()),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_addresses_without_a_scheme() {
        for bad in [
            "",
            "127.0.0.1:9000",
            "unix:",
            "tcp://localhost",
            "http://x:1",
        ] {
            assert!(bad.parse::<ListenAddr>().is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn replaces_a_stale_socket_but_not_a_live_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.sock");
        let addr = ListenAddr::Unix(path.clone());
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let live = Listener::bind(&addr).await.unwrap();
        let again = Listener::bind(&addr).await;
        assert!(
            matches!(again, Err(WorkerError::AddressInUse(_))),
            "{again:?}"
        );
        assert_eq!(live.socket_path().unwrap(), path);
    }

    #[tokio::test]
    async fn refuses_to_replace_a_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("not-a-socket");
        std::fs::write(&path, b"keep me").unwrap();
        let result = Listener::bind(&ListenAddr::Unix(path.clone())).await;
        assert!(
            matches!(result, Err(WorkerError::Bind { .. })),
            "{result:?}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"keep me");
    }

    #[tokio::test]
    async fn tcp_handshake_names_the_real_port() {
        let listener = Listener::bind(&"tcp://127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let line = listener.handshake().unwrap().to_string();
        assert!(line.starts_with("plugvisor 1 tcp 127.0.0.1:"), "{line}");
        assert!(!line.ends_with(":0"), "{line}");
    }
}
