//! `TlsServer`: a worker serving TLS itself on TCP (remote use), from PEM files, with rustls
//! (ring); optionally requiring client certificates signed by a CA (mutual TLS).

use crate::error::WorkerError;
use rustls::server::WebPkiClientVerifier;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// How long a client may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// TLS settings of a worker listening on TCP: its certificate chain and key, and optionally
/// the CA that client certificates must be signed by.
///
/// ```no_run
/// use plugvisor_worker::{ServeOptions, TlsServer};
/// let tls = TlsServer::from_pem_files("tls.crt".as_ref(), "tls.key".as_ref(), None)?;
/// let options = ServeOptions::new("s3cret").with_tls(tls);
/// # Ok::<(), plugvisor_worker::WorkerError>(())
/// ```
#[derive(Clone)]
pub struct TlsServer {
    acceptor: TlsAcceptor,
    mutual: bool,
}

impl std::fmt::Debug for TlsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsServer")
            .field("mutual", &self.mutual)
            .finish_non_exhaustive()
    }
}

impl TlsServer {
    /// Loads a PEM certificate chain (leaf first) and its PEM private key; with `client_ca`,
    /// clients must present a certificate that CA signed.
    ///
    /// # Errors
    /// [`WorkerError::Tls`] naming the file that cannot be read or parsed, or a key that
    /// does not match the certificate.
    pub fn from_pem_files(
        cert: &Path,
        key: &Path,
        client_ca: Option<&Path>,
    ) -> Result<Self, WorkerError> {
        let chain = read_certs(cert)?;
        let key = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| WorkerError::Tls(format!("no private key in {}: {e}", key.display())))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| WorkerError::Tls(e.to_string()))?;
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let roots = Arc::new(root_store(ca)?);
                let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider)
                    .build()
                    .map_err(|e| WorkerError::Tls(format!("client CA {}: {e}", ca.display())))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder
            .with_single_cert(chain, key)
            .map_err(|e| WorkerError::Tls(format!("{} and its key: {e}", cert.display())))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            mutual: client_ca.is_some(),
        })
    }

    /// True when clients must present a certificate.
    pub fn is_mutual(&self) -> bool {
        self.mutual
    }

    /// Completes the server side of the handshake on `stream`, within a time limit.
    pub(crate) async fn accept(&self, stream: TcpStream) -> std::io::Result<TlsStream<TcpStream>> {
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor.accept(stream)).await {
            Ok(done) => done,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "TLS handshake took too long",
            )),
        }
    }
}

/// Every certificate in the PEM file at `path` (at least one).
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, WorkerError> {
    let bad = |e: String| WorkerError::Tls(format!("certificates in {}: {e}", path.display()));
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no CERTIFICATE block".into()));
    }
    Ok(certs)
}

/// A root store of the CA certificates in the PEM file at `path`.
fn root_store(path: &Path) -> Result<rustls::RootCertStore, WorkerError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| WorkerError::Tls(format!("CA in {}: {e}", path.display())))?;
    }
    Ok(roots)
}
