//! `plugvisor tls-certs`: a private CA and the certificates remote workers and hosts need
//! (worker server certificate, host client certificate for mutual TLS) and a token, written as
//! PEM files: for trying remote workers, tests, the demo, and Kubernetes Secrets.

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Arguments of `plugvisor tls-certs`.
#[derive(Debug, clap::Args)]
pub struct CertsArgs {
    /// The directory to write into (created if missing): ca.crt, tls.crt, tls.key,
    /// client.crt, client.key, token.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// A name (DNS name or IP address) the worker certificate is valid for; repeatable.
    /// Default: localhost and 127.0.0.1.
    #[arg(long = "name", value_name = "NAME")]
    pub names: Vec<String>,
}

/// The files [`write_all`] makes.
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// The CA certificate (give it to the host as `tls_ca`, to workers as `--tls-client-ca`).
    pub ca: PathBuf,
    /// The worker's certificate and key (`--tls-cert`, `--tls-key`).
    pub server: (PathBuf, PathBuf),
    /// The host's client certificate and key (`tls_cert`, `tls_key`).
    pub client: (PathBuf, PathBuf),
    /// A fresh 256-bit token (`--token-file` and `token_file`).
    pub token: PathBuf,
}

/// Runs `plugvisor tls-certs`.
///
/// # Errors
/// When a key cannot be made or a file cannot be written.
pub fn run(args: &CertsArgs) -> Result<()> {
    let names = match args.names.is_empty() {
        true => vec!["localhost".to_owned(), "127.0.0.1".to_owned()],
        false => args.names.clone(),
    };
    let files = write_all(&args.out, &names)?;
    println!("CA:                  {}", files.ca.display());
    println!(
        "worker certificate:  {} (valid for {})",
        files.server.0.display(),
        names.join(", ")
    );
    println!("worker key:          {}", files.server.1.display());
    println!("client certificate:  {}", files.client.0.display());
    println!("client key:          {}", files.client.1.display());
    println!("token:               {}", files.token.display());
    Ok(())
}

/// Makes a CA, a worker certificate valid for `names`, a client certificate and a token in
/// `dir` (keys and token mode 0600).
///
/// # Errors
/// As [`run`].
pub fn write_all(dir: &Path, names: &[String]) -> Result<CertFiles> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.distinguished_name
        .push(DnType::CommonName, "plugvisor private CA");
    let ca_cert = ca.self_signed(&ca_key)?;
    let leaf = |names: Vec<String>, usage: ExtendedKeyUsagePurpose, cn: &str| -> Result<_> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names)?;
        params.extended_key_usages = vec![usage];
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params.signed_by(&key, &ca_cert, &ca_key)?;
        Ok((cert.pem(), key.serialize_pem()))
    };
    let server = leaf(
        names.to_vec(),
        ExtendedKeyUsagePurpose::ServerAuth,
        "plugvisor worker",
    )?;
    let client = leaf(
        Vec::new(),
        ExtendedKeyUsagePurpose::ClientAuth,
        "plugvisor host",
    )?;
    let files = CertFiles {
        ca: dir.join("ca.crt"),
        server: (dir.join("tls.crt"), dir.join("tls.key")),
        client: (dir.join("client.crt"), dir.join("client.key")),
        token: dir.join("token"),
    };
    write(&files.ca, &ca_cert.pem(), 0o644)?;
    write(&files.server.0, &server.0, 0o644)?;
    write(&files.server.1, &server.1, 0o600)?;
    write(&files.client.0, &client.0, 0o644)?;
    write(&files.client.1, &client.1, 0o600)?;
    let token = format!(
        "{}{}\n",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    write(&files.token, &token, 0o600)?;
    Ok(files)
}

fn write(path: &Path, text: &str, mode: u32) -> Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}
