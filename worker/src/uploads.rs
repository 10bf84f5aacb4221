//! File references without a shared filesystem: a host streams each input file to the worker
//! (`PUT /v1/files/<sha256>`, content-addressed, checked on arrival, skipped when the worker
//! already has it: `GET /v1/files/<sha256>`), and reads output files back (`GET /v1/file?path=`,
//! then `DELETE` once it has its copy). Memory stays O(1) in the file size: bodies are
//! streamed through a 64 KiB buffer.

use crate::handlers::Handled;
use crate::reply::{self, Reply};
use crate::routes::streamed;
use crate::state::Shared;
use crate::transfer::TransferDir;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Either};
use hyper::body::Incoming;
use plugvisor_proto::{json, ErrorKind, FileRef, WireError};
use std::path::{Path, PathBuf};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Where uploaded content lives, inside the transfer directory.
const CAS_DIR: &str = "cas";
/// Bytes read at a time when streaming a file out.
const CHUNK: usize = 64 * 1024;

fn wire(kind: ErrorKind, message: impl Into<String>) -> WireError {
    WireError::new(kind, message)
}

fn transfer<P>(shared: &Shared<P>) -> Result<&TransferDir, WireError> {
    shared.transfer.as_ref().ok_or_else(|| {
        wire(
            ErrorKind::FileAccessDenied,
            "this worker has no transfer directory",
        )
    })
}

/// The 64 lower-case hex digits of a SHA-256, or `bad_request`.
fn digest_of(text: &str) -> Result<&str, WireError> {
    let ok = text.len() == 64
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    match ok {
        true => Ok(text),
        false => Err(wire(
            ErrorKind::BadRequest,
            format!("{text:?} is not a lower-case hex SHA-256"),
        )),
    }
}

fn stored(path: &Path) -> Result<Reply, WireError> {
    let size = std::fs::metadata(path)
        .map_err(|e| {
            wire(
                ErrorKind::FileAccessDenied,
                format!("{}: {e}", path.display()),
            )
        })?
        .len();
    Ok(reply::json(
        StatusCode::OK,
        &json!({"path": path, "size": size}),
    ))
}

/// `GET /v1/files/<sha256>`: `{"path", "size"}` of content the worker already holds, else 404.
pub(crate) fn lookup<P>(shared: &Shared<P>, sha: &str) -> Handled {
    let path = transfer(shared)?.path().join(CAS_DIR).join(digest_of(sha)?);
    match path.is_file() {
        true => stored(&path),
        false => Err(wire(ErrorKind::NotFound, format!("no content {sha}"))),
    }
}

/// `PUT /v1/files/<sha256>`: stores the body under its digest after checking it; answers
/// `{"path", "size"}`. A body whose digest differs is discarded (`bad_request`); a body cut
/// short or a full disk leaves nothing behind.
pub(crate) async fn upload<P>(shared: &Shared<P>, sha: &str, req: Request<Incoming>) -> Handled {
    let dir = transfer(shared)?.path().join(CAS_DIR);
    let sha = digest_of(sha)?;
    let store = |e: std::io::Error| {
        wire(
            ErrorKind::PluginFailed,
            format!("cannot store the upload: {e}"),
        )
    };
    std::fs::create_dir_all(&dir).map_err(store)?;
    let part = dir.join(format!(".{sha}.{}.part", fastrand::u64(..)));
    let received = receive(req.into_body(), &part).await;
    let (digest, size) = match received {
        Ok(done) => done,
        Err(e) => {
            let _ = std::fs::remove_file(&part);
            return Err(e);
        }
    };
    if digest != sha {
        let _ = std::fs::remove_file(&part);
        let why =
            format!("checksum mismatch: the {size} bytes received hash to {digest}, not {sha}");
        return Err(wire(ErrorKind::BadRequest, why));
    }
    let path = dir.join(sha);
    std::fs::rename(&part, &path).map_err(store)?;
    stored(&path)
}

/// Writes `body` to a new file at `part`, hashing it: its hex SHA-256 and size.
async fn receive(mut body: Incoming, part: &Path) -> Result<(String, u64), WireError> {
    let store = |e: std::io::Error| {
        wire(
            ErrorKind::PluginFailed,
            format!("cannot store the upload: {e}"),
        )
    };
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(part)
        .await
        .map_err(store)?;
    let mut hasher = ring::digest::Context::new(&ring::digest::SHA256);
    let mut size = 0u64;
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| wire(ErrorKind::BadRequest, format!("the upload broke off: {e}")))?;
        if let Ok(data) = frame.into_data() {
            hasher.update(&data);
            size += data.len() as u64;
            file.write_all(&data).await.map_err(store)?;
        }
    }
    file.flush().await.map_err(store)?;
    file.sync_data().await.map_err(store)?;
    let digest = hasher
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok((digest, size))
}

/// The `path` query parameter of `req`, percent-decoded.
fn path_param(req: &Request<Incoming>) -> Result<PathBuf, WireError> {
    let query = req.uri().query().unwrap_or_default();
    let raw = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("path="))
        .ok_or_else(|| {
            wire(
                ErrorKind::BadRequest,
                "expected ?path=<a file in the transfer directory>",
            )
        })?;
    let decoded = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|e| wire(ErrorKind::BadRequest, format!("path: {e}")))?;
    Ok(PathBuf::from(decoded.as_ref()))
}

/// `GET /v1/file?path=P`: the bytes of `P` (checked as a file reference is), streamed.
pub(crate) fn download<P>(shared: &Shared<P>, req: &Request<Incoming>) -> Handled {
    let path = path_param(req)?;
    let file = transfer(shared)?
        .open_ref(&FileRef::new(&path, 0))
        .map_err(|e| WireError::from(&e))?;
    let size = file.metadata().map(|m| m.len()).unwrap_or_default();
    let chunks =
        futures_util::stream::unfold(tokio::fs::File::from_std(file), |mut file| async move {
            let mut buf = vec![0u8; CHUNK];
            match file.read(&mut buf).await {
                Ok(0) | Err(_) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Bytes::from(buf), file))
                }
            }
        });
    let mut answer = Response::new(Either::Right(Either::Right(Either::Right(streamed(
        Box::pin(chunks),
    )))));
    let length = http::HeaderValue::from(size);
    answer
        .headers_mut()
        .insert(http::header::CONTENT_LENGTH, length);
    Ok(answer)
}

/// `DELETE /v1/file?path=P`: removes `P` from the transfer directory (204).
pub(crate) fn remove<P>(shared: &Shared<P>, req: &Request<Incoming>) -> Handled {
    let path = path_param(req)?;
    // Opening it runs every check a file reference gets (inside, no links, a regular file).
    drop(
        transfer(shared)?
            .open_ref(&FileRef::new(&path, 0))
            .map_err(|e| WireError::from(&e))?,
    );
    std::fs::remove_file(&path).map_err(|e| {
        wire(
            ErrorKind::FileAccessDenied,
            format!("{}: {e}", path.display()),
        )
    })?;
    Ok(reply::empty(StatusCode::NO_CONTENT))
}
