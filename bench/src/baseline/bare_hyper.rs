//! bare-hyper: a minimal hyper HTTP/1.1 server in its own process that parses a small JSON
//! body `{"input": …}` and answers `{"output": …}`: the floor for a call over HTTP.
//!
//! Each connection is served inline in its task, on a current-thread runtime
//! (`#[tokio::main(flavor = "current_thread")]`) or a multi-thread one with `--threads N`; it
//! is the hidden subcommand `serve-bare-hyper ADDR [--threads N]` of the benchmark binary,
//! with `ADDR` a socket path or `tcp://127.0.0.1:0`.

use crate::baseline::client::HttpConn;
use crate::baseline::json_echo;
use crate::procs::{spawn_self, ChildGuard};
use anyhow::{Context as _, Result};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};

/// Where a bare-hyper server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Addr {
    /// A Unix socket path.
    Unix(PathBuf),
    /// A TCP `host:port`.
    Tcp(String),
}

/// Serves until killed (the hidden subcommand), on `threads` threads.
///
/// # Errors
/// When the runtime cannot start or the address cannot be bound.
pub fn serve(addr: &str, threads: usize) -> Result<()> {
    let runtime = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()?
    };
    runtime.block_on(async {
        if let Some(hostport) = addr.strip_prefix("tcp://") {
            let listener = TcpListener::bind(hostport).await?;
            println!("ready tcp://{}", listener.local_addr()?);
            loop {
                let (stream, _) = listener.accept().await?;
                stream.set_nodelay(true)?;
                tokio::spawn(connection(stream));
            }
        } else {
            let _ = std::fs::remove_file(addr);
            let listener = UnixListener::bind(addr).with_context(|| format!("binding {addr}"))?;
            println!("ready {addr}");
            loop {
                let (stream, _) = listener.accept().await?;
                tokio::spawn(connection(stream));
            }
        }
    })
}

async fn connection<S>(stream: S)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let _ = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service_fn(json_echo::answer))
        .await;
}

/// A running bare-hyper server process.
#[derive(Debug)]
pub struct BareHyper {
    /// Where it listens.
    pub addr: Addr,
    _server: ChildGuard,
}

impl BareHyper {
    /// Starts a server with `threads` threads on a Unix socket in `dir`.
    ///
    /// # Errors
    /// When the process does not start.
    pub fn unix(dir: &Path, threads: usize) -> Result<Self> {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let socket = dir.join(format!("bare-hyper-{n}.sock"));
        let path = socket.to_str().context("non-UTF-8 scratch path")?;
        let threads = threads.to_string();
        let (server, _) = spawn_self(&["serve-bare-hyper", path, "--threads", &threads])?;
        Ok(Self {
            addr: Addr::Unix(socket),
            _server: server,
        })
    }

    /// Starts a server with one thread on TCP loopback.
    ///
    /// # Errors
    /// When the process does not start or announces no address.
    pub fn tcp() -> Result<Self> {
        let (server, line) = spawn_self(&["serve-bare-hyper", "tcp://127.0.0.1:0"])?;
        let addr = line
            .strip_prefix("ready tcp://")
            .context("bare-hyper announced no TCP address")?
            .to_owned();
        Ok(Self {
            addr: Addr::Tcp(addr),
            _server: server,
        })
    }

    /// A new kept-alive connection to it.
    ///
    /// # Errors
    /// When connecting fails.
    pub async fn connect(&self) -> Result<HttpConn> {
        match &self.addr {
            Addr::Unix(path) => HttpConn::unix(path, None).await,
            Addr::Tcp(addr) => HttpConn::tcp(addr, None).await,
        }
    }
}
