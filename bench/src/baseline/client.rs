//! A plain hyper HTTP/1.1 client on one kept-alive connection: what a careful hand-written
//! caller would do, without pooling, staging or crash attribution.

use anyhow::{bail, Context as _, Result};
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use http::{HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use std::path::Path;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};
use tokio::task::JoinHandle;

/// One kept-alive connection.
#[derive(Debug)]
pub struct HttpConn {
    sender: SendRequest<Full<Bytes>>,
    auth: Option<HeaderValue>,
    task: JoinHandle<()>,
}

impl HttpConn {
    /// Connects to a Unix socket.
    ///
    /// # Errors
    /// When connecting or the HTTP handshake fails.
    pub async fn unix(path: &Path, token: Option<&str>) -> Result<Self> {
        let stream = UnixStream::connect(path)
            .await
            .with_context(|| format!("connecting to {}", path.display()))?;
        Self::over(stream, token).await
    }

    /// Connects over TCP (with `TCP_NODELAY`).
    ///
    /// # Errors
    /// When connecting or the HTTP handshake fails.
    pub async fn tcp(addr: &str, token: Option<&str>) -> Result<Self> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        Self::over(stream, token).await
    }

    async fn over<S>(stream: S, token: Option<&str>) -> Result<Self>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        let task = tokio::spawn(async move {
            let _ = connection.await;
        });
        let auth = token
            .map(|t| HeaderValue::try_from(format!("Bearer {t}")))
            .transpose()?;
        Ok(Self { sender, auth, task })
    }

    /// `POST path` with `body`; returns the answer's body (an error unless 2xx).
    ///
    /// # Errors
    /// When the exchange fails or the status is not a success.
    pub async fn post(&mut self, path: &str, body: Bytes) -> Result<Bytes> {
        self.request(Method::POST, path, body).await
    }

    /// `GET path`; returns the answer's body (an error unless 2xx).
    ///
    /// # Errors
    /// When the exchange fails or the status is not a success.
    pub async fn get(&mut self, path: &str) -> Result<Bytes> {
        self.request(Method::GET, path, Bytes::new()).await
    }

    /// `GET path`, reading the answer's body chunk by chunk without keeping it; its length.
    ///
    /// # Errors
    /// When the exchange fails or the status is not a success.
    pub async fn get_counted(&mut self, path: &str) -> Result<u64> {
        let request = Request::builder().uri(path).header(HOST, "bench");
        let request = request.body(Full::new(Bytes::new()))?;
        self.sender.ready().await?;
        let response = self.sender.send_request(request).await?;
        if !response.status().is_success() {
            bail!("{path} answered {}", response.status());
        }
        let mut body = response.into_body();
        let mut total = 0u64;
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                total += data.len() as u64;
            }
        }
        Ok(total)
    }

    async fn request(&mut self, method: Method, path: &str, body: Bytes) -> Result<Bytes> {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, "bench")
            .header(CONTENT_TYPE, "application/json");
        if let Some(auth) = &self.auth {
            request = request.header(AUTHORIZATION, auth.clone());
        }
        let request = request.body(Full::new(body))?;
        self.sender.ready().await?;
        let response = self.sender.send_request(request).await?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            bail!(
                "{path} answered {status}: {}",
                String::from_utf8_lossy(&bytes)
            );
        }
        Ok(bytes)
    }
}

impl Drop for HttpConn {
    fn drop(&mut self) {
        self.task.abort();
    }
}
