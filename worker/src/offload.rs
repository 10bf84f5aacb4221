//! Running plugin code away from the server thread, so a plugin that blocks its threads cannot
//! stop the worker from answering health probes, without a thread hand-off per call.
//!
//! A worker started by `run` has two runtimes: the server's (one thread: accept, and the
//! *control* connections: health, info, config, shutdown) and the plugin's
//! (`PLUGVISOR_WORKER_THREADS` threads). Each new connection is routed by its first request
//! line ([`read_head`], [`is_call`]):
//!
//! - a **call connection** (first request `initialize`, `execute`, `execute_stream` or
//!   `cleanup`) is moved to the plugin runtime ([`Rehome`]) and served there entirely, plugin
//!   code inline: a call costs no hand-off between threads;
//! - any other connection stays on the server thread; plugin work asked for on it is spawned
//!   onto the plugin runtime ([`offload`], [`PumpedBody`]).
//!
//! So plugin code never runs on the server thread, and `/v1/health` on a control connection
//! (the host probes on one) answers even while plugin code blocks every plugin thread.
//! Without a plugin runtime (in-process [`crate::serve`] by default), everything runs inline.

use crate::ndjson::NdjsonBody;
use bytes::{Buf, Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame};
use plugvisor_proto::PluginError;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Streamed chunks buffered between the plugin runtime and the connection (each ≤ 64 KiB).
const PUMP_DEPTH: usize = 4;

/// Bytes of the first request read before routing its connection: enough for the longest
/// request line prefix routing looks at (`POST /v1/initialize`).
const HEAD_MIN: usize = 20;

/// Requests whose connection is served on the plugin runtime (they run plugin code).
const CALL_PREFIXES: [&[u8]; 3] = [
    b"POST /v1/execute",
    b"POST /v1/initialize",
    b"POST /v1/cleanup",
];

/// Aborts the task when dropped: a dropped request cancels the plugin's work.
pub(crate) struct AbortOnDrop<T>(pub(crate) JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// True when the current thread is one of `exec`'s (a call connection's task).
pub(crate) fn on_runtime(exec: &Handle) -> bool {
    Handle::try_current().is_ok_and(|current| current.id() == exec.id())
}

/// Runs `work` on `exec` and returns its output; inline without a plugin runtime or when
/// already on it.
///
/// # Cancel safety
/// Dropping the returned future aborts (or drops) the plugin's work.
pub(crate) async fn offload<T, F>(exec: Option<&Handle>, work: F) -> Result<T, PluginError>
where
    T: Send + 'static,
    F: Future<Output = T> + Send + 'static,
{
    let Some(exec) = exec.filter(|exec| !on_runtime(exec)) else {
        return Ok(work.await);
    };
    let mut task = AbortOnDrop(exec.spawn(work));
    (&mut task.0)
        .await
        .map_err(|e| PluginError::Failed(format!("the plugin task ended abnormally: {e}")))
}

/// A streamed answer whose frames are produced on the plugin runtime.
pub(crate) struct PumpedBody {
    chunks: mpsc::Receiver<Bytes>,
    _pump: AbortOnDrop<()>,
}

impl PumpedBody {
    /// Drives `body` (the plugin stream and its NDJSON encoding) on `exec`.
    pub(crate) fn new(mut body: NdjsonBody, exec: &Handle) -> Self {
        let (tx, chunks) = mpsc::channel(PUMP_DEPTH);
        let pump = exec.spawn(async move {
            while let Some(Ok(frame)) = body.frame().await {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                if tx.send(data).await.is_err() {
                    break;
                }
            }
        });
        Self {
            chunks,
            _pump: AbortOnDrop(pump),
        }
    }
}

impl Body for PumpedBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.get_mut()
            .chunks
            .poll_recv(cx)
            .map(|chunk| chunk.map(|data| Ok(Frame::data(data))))
    }
}

/// Reads the start of a connection's first request: until [`HEAD_MIN`] bytes, a newline, or
/// end of input. Empty when the client left without a byte.
///
/// # Errors
/// The read error.
///
/// # Cancel safety
/// Not cancel-safe: bytes read are lost with the future (the connection is dropped then).
pub(crate) async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<Bytes> {
    let mut head = BytesMut::with_capacity(8 * 1024);
    while head.len() < HEAD_MIN && !head.contains(&b'\n') {
        if stream.read_buf(&mut head).await? == 0 {
            break;
        }
    }
    Ok(head.freeze())
}

/// True when `head` starts a request that runs plugin code (see [`CALL_PREFIXES`]).
pub(crate) fn is_call(head: &[u8]) -> bool {
    CALL_PREFIXES.iter().any(|p| head.starts_with(p))
}

/// A socket that can leave one runtime's reactor and join another's.
pub(crate) trait Rehome: Sized {
    /// The blocking-API form, registered with no reactor.
    type Std: Send + 'static;
    /// Deregisters from the current runtime.
    ///
    /// # Errors
    /// As tokio's `into_std`.
    fn into_std(self) -> io::Result<Self::Std>;
    /// Registers with the current runtime (call it on the runtime that will serve it).
    ///
    /// # Errors
    /// As tokio's `from_std`.
    fn from_std(std: Self::Std) -> io::Result<Self>;
}

impl Rehome for tokio::net::UnixStream {
    type Std = std::os::unix::net::UnixStream;
    fn into_std(self) -> io::Result<Self::Std> {
        tokio::net::UnixStream::into_std(self)
    }
    fn from_std(std: Self::Std) -> io::Result<Self> {
        tokio::net::UnixStream::from_std(std)
    }
}

impl Rehome for tokio::net::TcpStream {
    type Std = std::net::TcpStream;
    fn into_std(self) -> io::Result<Self::Std> {
        tokio::net::TcpStream::into_std(self)
    }
    fn from_std(std: Self::Std) -> io::Result<Self> {
        tokio::net::TcpStream::from_std(std)
    }
}

/// A stream whose first bytes were already read (by routing): they are read again first.
pub(crate) struct Prefixed<S> {
    head: Bytes,
    inner: S,
}

impl<S> Prefixed<S> {
    /// `inner`, with `head` put back in front of what it still has to read.
    pub(crate) fn new(head: Bytes, inner: S) -> Self {
        Self { head, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.head.has_remaining() {
            let n = this.head.len().min(buf.remaining());
            buf.put_slice(&this.head[..n]);
            this.head.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn calls_are_told_from_control_requests() {
        assert!(is_call(b"POST /v1/execute HTTP/1.1\r\n"));
        assert!(is_call(b"POST /v1/execute_stream HTTP/1.1\r\n"));
        assert!(is_call(b"POST /v1/initialize HTTP/1.1\r\n"));
        assert!(is_call(b"POST /v1/cleanup HTTP/1.1\r\n"));
        assert!(!is_call(b"GET /v1/health HTTP/1.1\r\n"));
        assert!(!is_call(b"POST /v1/shutdown HTTP/1.1\r\n"));
        assert!(!is_call(b"GET /v1/execute HTTP/1.1\r\n"));
        assert!(!is_call(b"POST /v1/exec"));
        assert!(!is_call(b""));
    }

    #[tokio::test]
    async fn the_head_is_read_again_first() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b"POST /v1/").await.unwrap();
        let read = tokio::spawn(async move {
            let mut server = server;
            let head = read_head(&mut server).await.unwrap();
            (head, server)
        });
        client.write_all(b"execute HTTP/1.1\r\nrest").await.unwrap();
        drop(client);
        let (head, server) = read.await.unwrap();
        assert!(head.len() >= HEAD_MIN, "{head:?}");
        assert!(is_call(&head));
        let mut all = Vec::new();
        Prefixed::new(head, server)
            .read_to_end(&mut all)
            .await
            .unwrap();
        assert_eq!(all, b"POST /v1/execute HTTP/1.1\r\nrest");
    }

    #[tokio::test]
    async fn an_empty_connection_has_an_empty_head() {
        let (client, mut server) = tokio::io::duplex(64);
        drop(client);
        assert!(read_head(&mut server).await.unwrap().is_empty());
    }
}
