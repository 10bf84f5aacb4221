//! A deliberately raw HTTP/1.1 client for the kit: it writes exactly the bytes a check wants
//! (no header, a wrong token, a lying `Content-Length`, a chunked body over the limit) and
//! parses the answer with `httparse`, one connection per request, so nothing is normalised
//! away before the check sees it.

use anyhow::{anyhow, bail, Context};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Largest answer head the kit reads.
const MAX_HEAD: usize = 64 * 1024;

/// One answer: status, headers (names lower-cased) and the body, de-chunked.
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
    /// The worker closed the connection after the answer.
    pub(crate) closed: bool,
}

impl Answer {
    /// The first header called `name` (lower case).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    pub(crate) fn json(&self) -> Result<Value, String> {
        serde_json::from_slice(&self.body).map_err(|e| {
            format!(
                "status {} with a body that is not JSON ({e}): {:?}",
                self.status,
                String::from_utf8_lossy(&self.body[..self.body.len().min(200)])
            )
        })
    }

    /// `status <n>: <body>` for messages.
    pub(crate) fn brief(&self) -> String {
        let body = String::from_utf8_lossy(&self.body[..self.body.len().min(300)]);
        format!("status {} {}", self.status, body.trim_end())
    }
}

/// How a request authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Auth<'a> {
    /// `Authorization: Bearer <the worker's token>`.
    Token,
    /// No `Authorization` header.
    Missing,
    /// This exact header value.
    Value(&'a str),
}

/// Talks to one worker's socket with its token.
#[derive(Debug, Clone)]
pub(crate) struct Wire {
    pub(crate) socket: PathBuf,
    token: String,
    timeout: Duration,
}

impl Wire {
    /// A client for the worker at `socket` whose token is `token`; every exchange gives up
    /// after `timeout`.
    pub(crate) fn new(socket: &Path, token: &str, timeout: Duration) -> Self {
        Self {
            socket: socket.to_path_buf(),
            token: token.to_owned(),
            timeout,
        }
    }

    /// Any request: `extra` headers are written as given, `body` with its length.
    pub(crate) async fn send(
        &self,
        method: &str,
        path: &str,
        auth: Auth<'_>,
        extra: &[(&str, String)],
        body: Option<&[u8]>,
    ) -> anyhow::Result<Answer> {
        let mut head = self.head(method, path, auth);
        for (name, value) in extra {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if let Some(body) = body {
            head.push_str(&format!("content-length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(body.unwrap_or_default());
        self.raw(bytes, Vec::new()).await
    }

    /// The request line, host and authorization header (no final blank line).
    pub(crate) fn head(&self, method: &str, path: &str, auth: Auth<'_>) -> String {
        let mut head = format!("{method} {path} HTTP/1.1\r\nhost: worker\r\n");
        match auth {
            Auth::Token => head.push_str(&format!("authorization: Bearer {}\r\n", self.token)),
            Auth::Missing => {}
            Auth::Value(v) => head.push_str(&format!("authorization: {v}\r\n")),
        }
        head
    }

    /// The worker's token (for checks that make near misses of it).
    pub(crate) fn token(&self) -> &str {
        &self.token
    }

    /// Writes `first`, then `rest` from a side task (a write error there is ignored: the
    /// worker may answer and close before reading it all), and reads one answer.
    pub(crate) async fn raw(&self, first: Vec<u8>, rest: Vec<u8>) -> anyhow::Result<Answer> {
        let stream = self.connect().await?;
        let (mut read, mut write) = stream.into_split();
        write
            .write_all(&first)
            .await
            .context("writing the request")?;
        let writer = tokio::spawn(async move {
            let _ = write.write_all(&rest).await;
            // Keep the write side open (no half-close, docs/PROTOCOL.md §1) until the answer
            // was read: the task is aborted then.
            std::future::pending::<()>().await;
        });
        let answer = tokio::time::timeout(self.timeout, read_answer(&mut read)).await;
        writer.abort();
        match answer {
            Ok(answer) => answer,
            Err(_) => bail!("no complete answer within {:?}", self.timeout),
        }
    }

    /// A connection to the worker.
    pub(crate) async fn connect(&self) -> anyhow::Result<UnixStream> {
        UnixStream::connect(&self.socket)
            .await
            .with_context(|| format!("connecting to {}", self.socket.display()))
    }
}

/// Reads one answer: head, then a body framed by `Content-Length`, chunks, or the close.
pub(crate) async fn read_answer(
    read: &mut (impl tokio::io::AsyncRead + Unpin),
) -> anyhow::Result<Answer> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let n = read.read(&mut chunk).await.context("reading the answer")?;
        buf.extend_from_slice(&chunk[..n]);
        if let Some(answer) = parse(&buf, n == 0)? {
            return Ok(answer);
        }
        if n == 0 {
            bail!(
                "the connection closed before a complete answer ({} bytes: {:?})",
                buf.len(),
                String::from_utf8_lossy(&buf[..buf.len().min(200)])
            );
        }
        if buf.len() > 256 * 1024 * 1024 {
            bail!("answer over 256 MiB");
        }
    }
}

/// The answer in `buf` if it is complete (`eof`: nothing more will come).
fn parse(buf: &[u8], eof: bool) -> anyhow::Result<Option<Answer>> {
    let mut headers = [httparse::EMPTY_HEADER; 100];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => bail!("answer head too long"),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => bail!(
            "not an HTTP/1.1 answer ({e}): {:?}",
            String::from_utf8_lossy(&buf[..buf.len().min(200)])
        ),
    };
    let status = response
        .code
        .ok_or_else(|| anyhow!("answer without a status"))?;
    let headers: Vec<(String, String)> = response
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    let find = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v);
    let rest = &buf[head_len..];
    let body = if find("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        match dechunk(rest)? {
            Some(body) => body,
            None if eof => bail!("chunked answer cut short (no last chunk)"),
            None => return Ok(None),
        }
    } else if let Some(len) = find("content-length") {
        let len: usize = len.trim().parse().context("bad content-length")?;
        if rest.len() < len {
            return Ok(None);
        }
        rest[..len].to_vec()
    } else if status == 204 || status == 304 {
        Vec::new()
    } else if eof {
        rest.to_vec()
    } else {
        return Ok(None);
    };
    let closed = eof || find("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
    Ok(Some(Answer {
        status,
        headers,
        body,
        closed,
    }))
}

/// The body of a chunked message if its last chunk arrived.
pub(crate) fn dechunk(mut data: &[u8]) -> anyhow::Result<Option<Vec<u8>>> {
    let mut body = Vec::new();
    loop {
        let (skip, size) = match httparse::parse_chunk_size(data) {
            Ok(httparse::Status::Complete(found)) => found,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => bail!("bad chunk size line"),
        };
        let size = usize::try_from(size).context("chunk too large")?;
        data = &data[skip..];
        if size == 0 {
            return Ok(Some(body));
        }
        if data.len() < size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_and_sized_answers_parse_only_when_complete() {
        let sized = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
        assert!(parse(&sized[..sized.len() - 1], false).unwrap().is_none());
        let a = parse(sized, false).unwrap().unwrap();
        assert_eq!((a.status, a.body.as_slice()), (200, &b"{}"[..]));
        let chunked =
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nab\n\r\n0\r\n\r\n";
        assert!(parse(&chunked[..chunked.len() - 5], false)
            .unwrap()
            .is_none());
        assert_eq!(parse(chunked, false).unwrap().unwrap().body, b"ab\n");
        assert!(parse(b"garbage\r\n\r\n", false).is_err());
    }
}
