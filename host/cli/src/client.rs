//! A small HTTP/1.1 client for `--server URL`: talks to a running `plugvisor serve`.

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;

/// A running server at `http://HOST:PORT`, with an optional API token.
pub(crate) struct ApiClient {
    authority: String,
    token: Option<String>,
}

impl ApiClient {
    /// A client for `url` (`http://127.0.0.1:8620`); the token read from `token_file`
    /// (`--api-token-file`), else from `PLUGVISOR_API_TOKEN`.
    pub(crate) fn new(url: &str, token_file: Option<&std::path::Path>) -> anyhow::Result<Self> {
        let uri: Uri = url
            .parse()
            .with_context(|| format!("--server {url:?} is not a URL"))?;
        if uri.scheme_str() != Some("http") {
            bail!("--server must be an http:// URL, got {url:?}");
        }
        let authority = uri
            .authority()
            .ok_or_else(|| anyhow!("--server {url:?} has no host:port"))?
            .to_string();
        let token = match token_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read --api-token-file {}", path.display()))?
                    .trim()
                    .to_owned(),
            ),
            None => std::env::var("PLUGVISOR_API_TOKEN").ok(),
        };
        Ok(Self { authority, token })
    }

    /// Sends one request and returns the response with its body unread.
    pub(crate) async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<http::Response<Incoming>> {
        let bytes = match body {
            Some(v) => Bytes::from(serde_json::to_vec(v)?),
            None => Bytes::new(),
        };
        let json = [(http::header::CONTENT_TYPE.as_str(), "application/json")];
        self.send_raw(method, path, bytes, &json).await
    }

    /// Sends one request with raw `body` bytes and `headers`; the response's body is unread.
    pub(crate) async fn send_raw(
        &self,
        method: Method,
        path: &str,
        bytes: Bytes,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<http::Response<Incoming>> {
        let stream = TcpStream::connect(&self.authority)
            .await
            .with_context(|| format!("cannot reach the server at {}", self.authority))?;
        stream.set_nodelay(true)?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, &self.authority);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(token) = &self.token {
            request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        Ok(sender.send_request(request.body(Full::new(bytes))?).await?)
    }

    /// Sends one request and returns the JSON answer; an error answer becomes an error
    /// quoting the server's message.
    pub(crate) async fn json(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let response = self.send(method, path, body).await?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        check(status, &value)?;
        Ok(value)
    }
}

/// An error for a non-success answer, quoting `{"error": {"kind", "message"}}`.
pub(crate) fn check(status: StatusCode, body: &Value) -> anyhow::Result<()> {
    if status.is_success() {
        return Ok(());
    }
    let kind = body["error"]["kind"].as_str().unwrap_or("error");
    let message = body["error"]["message"].as_str().unwrap_or("(no message)");
    if status == StatusCode::UNAUTHORIZED {
        bail!(
            "server answered {status}: {kind}: {message} (the server needs its API token: set \
             PLUGVISOR_API_TOKEN or pass --api-token-file FILE)"
        );
    }
    bail!("server answered {status}: {kind}: {message}")
}
