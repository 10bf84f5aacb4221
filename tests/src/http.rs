//! A small HTTP/1.1 client for the API tests: raw requests over TCP (so a test can send
//! anything, malformed or slow), whole answers, and chunked NDJSON streams read line by line.

use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// No single exchange of a test may take longer than this.
const DEADLINE: Duration = Duration::from_secs(60);

/// A complete answer.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body (de-chunked).
    pub body: Vec<u8>,
}

impl Answer {
    /// The first header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (panics with the body if it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("answer {} is not JSON ({e}): {}", self.status, self.text()))
    }

    /// `error.kind` of an error answer.
    pub fn error_kind(&self) -> String {
        self.json()["error"]["kind"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// `error.message` of an error answer.
    pub fn error_message(&self) -> String {
        self.json()["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    let name = name.to_ascii_lowercase();
    headers
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.as_str())
}

/// A client of one server, with an optional bearer token.
#[derive(Debug, Clone)]
pub struct Client {
    /// The server.
    pub addr: SocketAddr,
    /// Sent as `Authorization: Bearer <token>` when set.
    pub token: Option<String>,
    /// More headers sent with every request; a `Host` here replaces the default one.
    pub headers: Vec<(String, String)>,
}

impl Client {
    /// A client of `addr` without a token.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            token: None,
            headers: Vec::new(),
        }
    }

    /// The same client sending the header `name: value` too (a browser's `Origin`, a
    /// rebinding page's `Host`).
    pub fn with_header(&self, name: &str, value: &str) -> Self {
        let mut client = self.clone();
        client.headers.push((name.to_owned(), value.to_owned()));
        client
    }

    /// The same client sending `token`.
    pub fn with_token(&self, token: &str) -> Self {
        Self {
            token: Some(token.to_owned()),
            ..self.clone()
        }
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Answer {
        self.send("GET", path, None).await
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, body: &Value) -> Answer {
        self.send("POST", path, Some(body.to_string().as_bytes()))
            .await
    }

    /// `PUT path` with a JSON body.
    pub async fn put(&self, path: &str, body: &Value) -> Answer {
        self.send("PUT", path, Some(body.to_string().as_bytes()))
            .await
    }

    /// Any request with raw body bytes; the whole answer.
    pub async fn send(&self, method: &str, path: &str, body: Option<&[u8]>) -> Answer {
        let exchange = async {
            let stream = self.open(method, path, body).await;
            stream.finish().await
        };
        tokio::time::timeout(DEADLINE, exchange)
            .await
            .unwrap_or_else(|_| panic!("{method} {path}: no answer within {DEADLINE:?}"))
    }

    /// Sends a request and reads the answer's head; the body is read from the [`Stream`].
    pub async fn open(&self, method: &str, path: &str, body: Option<&[u8]>) -> Stream {
        let mut tcp = TcpStream::connect(self.addr).await.expect("connect");
        let head = self.head(method, path, body.map(<[u8]>::len));
        tcp.write_all(head.as_bytes()).await.expect("send the head");
        if let Some(body) = body {
            // The server may answer (413) and close before reading it all.
            let _ = tcp.write_all(body).await;
        }
        Stream::read_head(tcp).await
    }

    fn head(&self, method: &str, path: &str, length: Option<usize>) -> String {
        let mut head = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
        if !self
            .headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("host"))
        {
            head.push_str(&format!("Host: {}\r\n", self.addr));
        }
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if let Some(token) = &self.token {
            head.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        if let Some(n) = length {
            if !self
                .headers
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case("content-type"))
            {
                head.push_str("Content-Type: application/json\r\n");
            }
            head.push_str(&format!("Content-Length: {n}\r\n"));
        }
        head.push_str("\r\n");
        head
    }
}

/// An answer whose body is read as it arrives.
#[derive(Debug)]
pub struct Stream {
    reader: BufReader<TcpStream>,
    /// The status code.
    pub status: u16,
    /// The headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    chunked: bool,
    /// Bytes of a fixed-length body still to read.
    remaining: Option<usize>,
    /// Decoded body bytes not yet returned as lines.
    pending: Vec<u8>,
    done: bool,
}

impl Stream {
    async fn read_head(tcp: TcpStream) -> Self {
        let mut reader = BufReader::new(tcp);
        let status_line = read_line(&mut reader).await.expect("a status line");
        let status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let mut headers = Vec::new();
        while let Some(line) = read_line(&mut reader).await {
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
            }
        }
        let chunked = find_header(&headers, "transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
        let remaining = find_header(&headers, "content-length").and_then(|v| v.parse().ok());
        Self {
            reader,
            status,
            headers,
            chunked,
            remaining,
            pending: Vec::new(),
            done: false,
        }
    }

    /// The first header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// The next line of the body (without its newline), or `None` at its end.
    pub async fn next_line(&mut self) -> Option<String> {
        loop {
            if let Some(at) = self.pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=at).collect();
                return Some(String::from_utf8_lossy(&line[..at]).into_owned());
            }
            if !self.read_more().await {
                if self.pending.is_empty() {
                    return None;
                }
                let rest = std::mem::take(&mut self.pending);
                return Some(String::from_utf8_lossy(&rest).into_owned());
            }
        }
    }

    /// The next line, or `None` if none arrives within `timeout` or the body ended.
    pub async fn next_line_within(&mut self, timeout: Duration) -> Option<String> {
        tokio::time::timeout(timeout, self.next_line())
            .await
            .ok()
            .flatten()
    }

    /// Reads the rest of the body and returns the whole answer.
    pub async fn finish(mut self) -> Answer {
        while self.read_more().await {}
        Answer {
            status: self.status,
            headers: self.headers,
            body: self.pending,
        }
    }

    /// Appends the next piece of the body to `pending`; false at its end.
    async fn read_more(&mut self) -> bool {
        if self.done {
            return false;
        }
        let got = if self.chunked {
            self.read_chunk().await
        } else {
            self.read_plain().await
        };
        if !got {
            self.done = true;
        }
        got
    }

    async fn read_chunk(&mut self) -> bool {
        let Some(size_line) = read_line(&mut self.reader).await else {
            return false;
        };
        let hex = size_line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(hex, 16).unwrap_or(0);
        if size == 0 {
            while read_line(&mut self.reader)
                .await
                .is_some_and(|l| !l.is_empty())
            {}
            return false;
        }
        let mut chunk = vec![0; size + 2];
        if self.reader.read_exact(&mut chunk).await.is_err() {
            return false;
        }
        self.pending.extend_from_slice(&chunk[..size]);
        true
    }

    async fn read_plain(&mut self) -> bool {
        let want = self.remaining.unwrap_or(64 * 1024).min(64 * 1024);
        if want == 0 {
            return false;
        }
        let mut buf = vec![0; want];
        match self.reader.read(&mut buf).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.pending.extend_from_slice(&buf[..n]);
                if let Some(left) = self.remaining.as_mut() {
                    *left -= n;
                }
                true
            }
        }
    }
}

/// One CRLF-terminated line (without it), or `None` at EOF.
async fn read_line(reader: &mut BufReader<TcpStream>) -> Option<String> {
    let mut line = String::new();
    match reader.read_line(&mut line).await {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(line.trim_end_matches(['\r', '\n']).to_owned()),
    }
}

/// Sends `bytes` as they are and returns everything the server answers until it closes the
/// connection (or `timeout` passes: then `None`).
pub async fn raw_exchange(addr: SocketAddr, bytes: &[u8], timeout: Duration) -> Option<Vec<u8>> {
    let exchange = async {
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        tcp.write_all(bytes).await.expect("send");
        let mut answer = Vec::new();
        let _ = tcp.read_to_end(&mut answer).await;
        answer
    };
    tokio::time::timeout(timeout, exchange).await.ok()
}
