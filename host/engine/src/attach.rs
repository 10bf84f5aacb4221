//! Remote workers: [`Attach`] (where a worker started elsewhere listens, its token, its TLS
//! settings), and `attach`, which reaches the worker and reads `/v1/info` to make a worker with
//! no local process.

use crate::client::WorkerClient;
use crate::dirs::HostDir;
use crate::error::AttachError;
use crate::error::HostError;
use crate::exchange::{self, Failure};
use crate::launch::Launched;
use crate::process::{ProcessParts, WorkerProcess};
use crate::spawner::ExitWatch;
use crate::spec::WorkerSpec;
use crate::stderr::StderrTail;
use crate::tls::TlsClient;
use bytes::Bytes;
use http::Method;
use plugvisor_proto::wire::{self, InfoResponse, Transport};
use plugvisor_proto::PluginError;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// How the host reaches a worker that was started elsewhere (by Kubernetes, systemd or by
/// hand) with `--listen tcp://…` (and `--tls-cert`/`--tls-key` for `https://`).
///
/// ```
/// use plugvisor_host::Attach;
/// let attach = Attach::parse("tcp://127.0.0.1:7000", "s3cret").unwrap();
/// assert!(attach.is_loopback() && !attach.is_tls());
/// assert!(Attach::parse("ftp://x:1", "t").is_err());
/// ```
#[derive(Clone)]
pub struct Attach {
    url: String,
    host: String,
    port: u16,
    connect_to: Option<SocketAddr>,
    token: String,
    tls: Option<TlsClient>,
    https: bool,
}

impl std::fmt::Debug for Attach {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token is deliberately left out.
        f.debug_struct("Attach")
            .field("url", &self.url)
            .field("connect_to", &self.connect_to)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl Attach {
    /// The worker at `url` (`https://HOST:PORT`, or plain `tcp://HOST:PORT`), authenticated
    /// with `token`. An `https` address needs [`Attach::with_tls`] before it can be used.
    ///
    /// # Errors
    /// [`AttachError::BadUrl`] for another scheme, a missing or bad port, or a path.
    pub fn parse(url: &str, token: impl Into<String>) -> Result<Self, AttachError> {
        let bad = |reason: &str| AttachError::BadUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let (https, rest) = match url.split_once("://") {
            Some(("https", rest)) => (true, rest),
            Some(("tcp", rest)) => (false, rest),
            _ => return Err(bad("expected https://HOST:PORT or tcp://HOST:PORT")),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('/') {
            return Err(bad("a worker address has no path"));
        }
        let (host, port) = rest.rsplit_once(':').ok_or_else(|| bad("no port"))?;
        let port: u16 = port.parse().map_err(|_| bad("the port is not a number"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || port == 0 {
            return Err(bad("no host, or port 0"));
        }
        Ok(Self {
            url: url.to_owned(),
            host: host.to_owned(),
            port,
            connect_to: None,
            token: token.into(),
            tls: None,
            https,
        })
    }

    /// The same address, reached over TLS checked by `tls`.
    pub fn with_tls(mut self, tls: TlsClient) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The same worker, reached at `addr` (one of the addresses its name resolves to);
    /// TLS still checks the certificate against the name.
    pub fn connect_to(mut self, addr: SocketAddr) -> Self {
        self.connect_to = Some(addr);
        self
    }

    /// The address as given.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The host part of the address (a DNS name or an IP address).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// True for an `https://` address.
    pub fn is_tls(&self) -> bool {
        self.https
    }

    /// True when the host part is `localhost` or a loopback IP address.
    pub fn is_loopback(&self) -> bool {
        self.host == "localhost" || self.host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }

    /// Where connections go: the chosen address, else `host:port` (resolved on each dial).
    pub(crate) fn target(&self) -> String {
        match self.connect_to {
            Some(addr) => addr.to_string(),
            None => format!("{}:{}", self.host, self.port),
        }
    }

    /// Where this replica is: `https://ADDR` for the address it connects to (the URL as
    /// given when no address was chosen).
    pub fn address(&self) -> String {
        match (self.connect_to, self.https) {
            (Some(addr), true) => format!("https://{addr}"),
            (Some(addr), false) => format!("tcp://{addr}"),
            (None, _) => self.url.clone(),
        }
    }
}

/// Reaches the remote worker of `spec` (its `/v1/info` within the start timeout) as worker
/// number `n`; its calls' files are staged in a transfer directory of the host's.
pub(crate) async fn attach(
    spec: &WorkerSpec,
    attach: &Attach,
    n: u64,
    host_dir: &Arc<HostDir>,
) -> Result<Launched, HostError> {
    let err = |source: PluginError| HostError::Info {
        program: spec.program.clone(),
        source,
    };
    if attach.https && attach.tls.is_none() {
        let reason = format!("{} is https but no TLS settings were given", attach.url);
        return Err(HostError::Incompatible {
            program: spec.program.clone(),
            reason,
        });
    }
    let client = WorkerClient::new(Transport::Tcp(attach.target()), &attach.token)
        .map(|c| c.with_tls(attach.tls.clone()))
        .map_err(|e| HostError::Spawn {
            program: spec.program.clone(),
            source: std::io::Error::other(e),
        })?;
    let client = Arc::new(client);
    let info = match tokio::time::timeout(spec.start_timeout, fetch_info(&client)).await {
        Err(_) => {
            let late = format!("no answer within {:?}", spec.start_timeout);
            return Err(err(PluginError::TimedOut(late)));
        }
        Ok(info) => info.map_err(err)?,
    };
    if info.protocol != wire::PROTOCOL_VERSION {
        return Err(HostError::Incompatible {
            program: spec.program.clone(),
            reason: format!("/v1/info reports protocol {}", info.protocol),
        });
    }
    let transfer_dir = host_dir
        .transfer_dir(n)
        .map_err(|source| HostError::Spawn {
            program: spec.program.clone(),
            source,
        })?;
    let process = WorkerProcess::remote(
        ProcessParts {
            label: spec.label(),
            pid: info.pid,
            stdin: None,
            exit: ExitWatch::detached(),
            stderr: StderrTail::none(),
            grace: spec.stop_grace,
            socket: std::path::PathBuf::new(),
            transfer_dir,
            host_dir: Arc::clone(host_dir),
        },
        attach.address(),
    );
    tracing::info!(plugin = %info.name, version = %info.version, at = %attach.address(), pid = info.pid, "remote worker attached");
    Ok(Launched {
        process,
        client,
        identity: info.into(),
        sandbox: None,
    })
}

async fn fetch_info(client: &Arc<WorkerClient>) -> Result<InfoResponse, PluginError> {
    match exchange::json::<InfoResponse>(client, Method::GET, wire::routes::INFO, Bytes::new())
        .await
    {
        Ok(info) => Ok(info),
        Err(Failure::Answer(e)) => Err(e),
        Err(Failure::Transport(e)) => Err(PluginError::Unavailable(crate::error::chain(&e))),
    }
}
