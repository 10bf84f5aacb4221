//! Connection lanes: a connection is routed to the plugin runtime or the server thread by its
//! first request line.
//!
//! A worker started by `run` has two runtimes: the server's (one thread: accept, and the
//! *control* connections) and the plugin's (`PLUGVISOR_WORKER_THREADS` threads). Each new
//! connection's first request line is read ([`read_head`]) and its method and path give its
//! lane by the protocol's one rule, [`Lane::of`] ([`lane`]):
//!
//! - a **call connection** (`initialize`, `execute`, `execute_stream`, `cleanup`) is moved to
//!   the plugin runtime ([`Rehome`]) and served there entirely, plugin code inline: a call
//!   costs no hand-off between threads;
//! - a **control connection** (every `GET`, `shutdown`, and anything that is not a readable
//!   request line) stays on the server thread; plugin work asked for on it is offloaded
//!   (`offload.rs`).
//!
//! The bytes read to decide are put back in front of the stream ([`Prefixed`]), so HTTP sees
//! the connection untouched.

use bytes::{Buf, Bytes, BytesMut};
use plugvisor_proto::wire::routes::Lane;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// Most bytes of the first request read before routing its connection (and the size of the
/// buffer they are read into): a request line whose path does not end within them is routed
/// as control.
const HEAD_MAX: usize = 8 * 1024;

/// How far the start of a connection is readable as `METHOD SP PATH`.
#[derive(Debug, PartialEq, Eq)]
enum RequestLine<'a> {
    /// Method and path are complete (the path is followed by SP, `?`, `#`, CR or LF).
    Complete {
        /// The method is `GET`.
        is_get: bool,
        /// The path, without its query or fragment.
        path: &'a str,
    },
    /// A valid start of a request line, cut before the end of its path: more bytes can tell.
    Partial,
    /// Not a request line: no more bytes can make it one.
    Invalid,
}

/// Parses the start of `head` as `METHOD SP PATH` (the method a token, the path in origin
/// form, its query cut off at `?` and a fragment at `#`, as the router sees it). Scans only the
/// bytes it needs; no allocation.
fn request_line(head: &[u8]) -> RequestLine<'_> {
    let Some(space) = head.iter().position(|&b| !is_tchar(b)) else {
        return RequestLine::Partial;
    };
    if space == 0 || head[space] != b' ' {
        return RequestLine::Invalid;
    }
    let target = &head[space + 1..];
    match target.first() {
        None => return RequestLine::Partial,
        Some(b'/') => {}
        Some(_) => return RequestLine::Invalid,
    }
    let Some(end) = target
        .iter()
        .position(|&b| matches!(b, b' ' | b'?' | b'#' | b'\r' | b'\n') || b.is_ascii_control())
    else {
        return RequestLine::Partial;
    };
    if !matches!(target[end], b' ' | b'?' | b'#' | b'\r' | b'\n') {
        return RequestLine::Invalid;
    }
    match std::str::from_utf8(&target[..end]) {
        Ok(path) => RequestLine::Complete {
            is_get: &head[..space] == b"GET",
            path,
        },
        Err(_) => RequestLine::Invalid,
    }
}

/// A `tchar` of RFC 9110: the characters of an HTTP method.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The lane of the connection whose first bytes are `head`: [`Lane::of`] its first request's
/// method and path, or [`Lane::Control`] when they cannot be read (empty, cut short, not HTTP).
pub(crate) fn lane(head: &[u8]) -> Lane {
    match request_line(head) {
        RequestLine::Complete { is_get, path } => Lane::of(is_get, path),
        RequestLine::Partial | RequestLine::Invalid => Lane::Control,
    }
}

/// Reads the start of a connection's first request: until its method and path are complete,
/// it cannot be a request line any more, [`HEAD_MAX`] bytes, or end of input. Empty when the
/// client left without a byte. It never waits for more than the request line's start, which
/// any HTTP client sends before it waits for an answer.
///
/// # Errors
/// The read error.
///
/// # Cancel safety
/// Not cancel-safe: bytes read are lost with the future (the connection is dropped then).
pub(crate) async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<Bytes> {
    let mut head = BytesMut::with_capacity(HEAD_MAX);
    while head.len() < HEAD_MAX && request_line(&head) == RequestLine::Partial {
        if stream.read_buf(&mut head).await? == 0 {
            break;
        }
    }
    Ok(head.freeze())
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
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;

    /// The head a real client sends: request line, then headers.
    fn head(method: &str, target: &str) -> Vec<u8> {
        format!(
            "{method} {target} HTTP/1.1\r\nhost: w\r\nauthorization: Bearer t\r\n\
             content-length: 2\r\n\r\n{{}}"
        )
        .into_bytes()
    }

    #[test]
    fn calls_are_told_from_control_requests() {
        for path in [
            "/v1/execute",
            "/v1/execute_stream",
            "/v1/initialize",
            "/v1/cleanup",
        ] {
            assert_eq!(lane(&head("POST", path)), Lane::Call, "POST {path}");
        }
        for path in [
            "/v1/health",
            "/v1/info",
            "/v1/config",
            "/v1/config_schema",
            "/v1/execute",
        ] {
            assert_eq!(lane(&head("GET", path)), Lane::Control, "GET {path}");
        }
        assert_eq!(lane(&head("POST", "/v1/shutdown")), Lane::Control);
        // The query is not part of the path.
        assert_eq!(lane(&head("POST", "/v1/shutdown?now=1")), Lane::Control);
        assert_eq!(lane(&head("POST", "/v1/execute?x=1")), Lane::Call);
        // Any other POST is a call by the shared rule; the router answers it 404 or 405.
        assert_eq!(lane(&head("POST", "/v1/nope")), Lane::Call);
        // Short, cut or garbage heads are control.
        for garbage in [
            &b""[..],
            b"POST",
            b"POST /v1/exec",
            b"POST /v1/execute",
            b" POST /v1/execute HTTP/1.1\r\n",
            b"\r\nPOST /v1/execute HTTP/1.1\r\n",
            b"POST v1/execute HTTP/1.1\r\n",
            b"POST http://w/v1/execute HTTP/1.1\r\n",
            b"POST /v1/exe\x01cute HTTP/1.1\r\n",
            b"POST /v1/\xffexecute HTTP/1.1\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        ] {
            assert_eq!(lane(garbage), Lane::Control, "{garbage:?}");
        }
    }

    #[test]
    fn the_request_line_is_parsed_only_as_far_as_needed() {
        assert_eq!(request_line(b""), RequestLine::Partial);
        assert_eq!(request_line(b"POS"), RequestLine::Partial);
        assert_eq!(request_line(b"POST "), RequestLine::Partial);
        assert_eq!(request_line(b"POST /v1/execute_str"), RequestLine::Partial);
        assert_eq!(request_line(b"POST\r\n"), RequestLine::Invalid);
        assert_eq!(request_line(b"POST *"), RequestLine::Invalid);
        assert_eq!(
            request_line(b"GET /v1/health?verbose HTTP/1.1"),
            RequestLine::Complete {
                is_get: true,
                path: "/v1/health"
            }
        );
        assert_eq!(
            request_line(b"POST /v1/execute\r\n"),
            RequestLine::Complete {
                is_get: false,
                path: "/v1/execute"
            }
        );
    }

    #[test]
    fn a_fragment_is_not_part_of_the_path() {
        // Found by the `worker_lanes` fuzz target: hyper hands the router `/v1/shutdown` for
        // this request line, so its connection is control, not call.
        assert_eq!(lane(b"POST /v1/shutdown#x HTTP/1.1\r\n\r\n"), Lane::Control);
        assert_eq!(
            request_line(b"GET /v1/health#top"),
            RequestLine::Complete {
                is_get: true,
                path: "/v1/health"
            }
        );
        assert_eq!(lane(b"POST /v1/execute#x HTTP/1.1\r\n"), Lane::Call);
    }

    #[tokio::test]
    async fn the_head_is_read_again_first() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b"POST /v1/execute_str").await.unwrap();
        let read = tokio::spawn(async move {
            let mut server = server;
            let head = read_head(&mut server).await.unwrap();
            (head, server)
        });
        client
            .write_all(b"eam HTTP/1.1\r\nrest of the request")
            .await
            .unwrap();
        drop(client);
        let (head, server) = read.await.unwrap();
        assert!(head.starts_with(b"POST /v1/execute_stream "), "{head:?}");
        assert_eq!(lane(&head), Lane::Call);
        let mut all = Vec::new();
        Prefixed::new(head, server)
            .read_to_end(&mut all)
            .await
            .unwrap();
        assert_eq!(
            all,
            b"POST /v1/execute_stream HTTP/1.1\r\nrest of the request"
        );
    }

    #[tokio::test]
    async fn reading_stops_once_the_lane_is_known_without_waiting_for_more() {
        let within = Duration::from_secs(5);
        for sent in [
            &b"GET /v1/health HTTP/1.1\r\n"[..],
            b"POST /v1/shutdown ",
            b"POST /v1/initialize?",
            b"\x16\x03\x01\x02\x00\x01",
            b"POST http://w/",
        ] {
            // The client keeps its end open: only what it sent can end the read.
            let (mut client, mut server) = tokio::io::duplex(64);
            client.write_all(sent).await.unwrap();
            let head = tokio::time::timeout(within, read_head(&mut server))
                .await
                .expect("read_head waited for bytes it does not need")
                .unwrap();
            assert_eq!(&head[..], sent);
        }
    }

    #[tokio::test]
    async fn a_path_longer_than_the_head_limit_is_control() {
        let (mut client, mut server) = tokio::io::duplex(HEAD_MAX * 2);
        let long = format!("POST /{} HTTP/1.1\r\n\r\n", "x".repeat(HEAD_MAX));
        client.write_all(long.as_bytes()).await.unwrap();
        let head = read_head(&mut server).await.unwrap();
        assert!(head.len() >= HEAD_MAX, "{}", head.len());
        assert_eq!(lane(&head), Lane::Control);
    }

    #[tokio::test]
    async fn an_empty_connection_has_an_empty_head() {
        let (client, mut server) = tokio::io::duplex(64);
        drop(client);
        assert!(read_head(&mut server).await.unwrap().is_empty());
    }
}
