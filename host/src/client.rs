//! The HTTP/1.1 client that talks to one worker: a small pool of kept-alive connections.
//!
//! Every call leases a connection (reusing an idle one, else dialling a new one) and gives it
//! back only once the response body has been read to its end. A lease dropped before that (the
//! caller dropped the call future or the result stream) aborts the connection's task, which
//! closes the socket: that is how a cancelled call reaches the worker.

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use http::{HeaderValue, Method, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use plugvisor_proto::wire::Transport;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};
use tokio::task::JoinHandle;

/// Idle connections kept per worker; more concurrent calls dial extra connections.
const MAX_IDLE: usize = 64;

/// Why a request did not get a response.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClientError {
    /// The worker's address could not be reached.
    #[error("cannot connect to the worker: {0}")]
    Connect(#[source] std::io::Error),
    /// The connection failed mid-request (typically: the worker died).
    #[error("connection to the worker failed: {0}")]
    Http(#[from] hyper::Error),
    /// The request could not be built (a bug, reported rather than panicking).
    #[error("bad request: {0}")]
    Build(#[from] http::Error),
}

struct Conn {
    sender: SendRequest<Full<Bytes>>,
    task: JoinHandle<()>,
}

/// A pool of connections to one worker, with its bearer token.
pub(crate) struct WorkerClient {
    transport: Transport,
    auth: HeaderValue,
    idle: Mutex<Vec<Conn>>,
}

impl std::fmt::Debug for WorkerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token is deliberately left out.
        f.debug_struct("WorkerClient")
            .field("transport", &self.transport)
            .finish_non_exhaustive()
    }
}

impl WorkerClient {
    /// A client for the worker at `transport`, authenticating with `token`.
    pub(crate) fn new(transport: Transport, token: &str) -> Result<Self, http::Error> {
        let mut auth = HeaderValue::try_from(format!("Bearer {token}"))?;
        auth.set_sensitive(true);
        Ok(Self {
            transport,
            auth,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// Sends one request and returns the response head plus the lease on its connection.
    ///
    /// # Cancel safety
    /// Dropping the future closes the connection it was using, which cancels the work in the
    /// worker; no other call is affected.
    pub(crate) async fn send(
        self: &Arc<Self>,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<(Response<Incoming>, Lease), ClientError> {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, "plugvisor")
            .header(AUTHORIZATION, self.auth.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(body))?;
        let mut lease = Lease {
            conn: Some(self.checkout().await?),
            client: Arc::clone(self),
            finished: false,
        };
        let conn = lease
            .conn
            .as_mut()
            .ok_or_else(|| ClientError::Connect(gone()))?;
        let response = conn.sender.send_request(request).await?;
        Ok((response, lease))
    }

    async fn checkout(&self) -> Result<Conn, ClientError> {
        while let Some(mut conn) = self.pop_idle() {
            if conn.sender.ready().await.is_ok() {
                return Ok(conn);
            }
            conn.task.abort();
        }
        self.dial().await
    }

    fn pop_idle(&self) -> Option<Conn> {
        self.idle.lock().ok()?.pop()
    }

    fn checkin(&self, conn: Conn) {
        if conn.sender.is_closed() {
            conn.task.abort();
            return;
        }
        match self.idle.lock() {
            Ok(mut idle) if idle.len() < MAX_IDLE => idle.push(conn),
            _ => conn.task.abort(),
        }
    }

    async fn dial(&self) -> Result<Conn, ClientError> {
        match &self.transport {
            Transport::Unix(path) => {
                let stream = UnixStream::connect(path)
                    .await
                    .map_err(ClientError::Connect)?;
                handshake(stream).await
            }
            Transport::Tcp(addr) => {
                let stream = TcpStream::connect(addr)
                    .await
                    .map_err(ClientError::Connect)?;
                stream.set_nodelay(true).map_err(ClientError::Connect)?;
                handshake(stream).await
            }
        }
    }

    /// Closes every idle connection.
    pub(crate) fn close_idle(&self) {
        if let Ok(mut idle) = self.idle.lock() {
            for conn in idle.drain(..) {
                conn.task.abort();
            }
        }
    }
}

impl Drop for WorkerClient {
    fn drop(&mut self) {
        self.close_idle();
    }
}

async fn handshake<S>(stream: S) -> Result<Conn, ClientError>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
    let task = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "worker connection ended");
        }
    });
    Ok(Conn { sender, task })
}

fn gone() -> std::io::Error {
    std::io::Error::other("connection lease already released")
}

/// A connection on loan to one request. Give it back with [`Lease::finish`] once the response
/// body has been read to its end; dropping it unfinished closes the connection.
pub(crate) struct Lease {
    conn: Option<Conn>,
    client: Arc<WorkerClient>,
    finished: bool,
}

impl Lease {
    /// Marks the exchange complete, so the connection returns to the pool when dropped.
    pub(crate) fn finish(&mut self) {
        self.finished = true;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        if self.finished {
            self.client.checkin(conn);
        } else {
            conn.task.abort();
        }
    }
}
