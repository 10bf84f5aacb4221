//! File references without a shared filesystem: a host streams each input file to the worker
//! (`PUT /v1/files/<sha256>`, content-addressed, checked on arrival, skipped when the worker
//! already has it: `GET /v1/files/<sha256>`; or `PUT /v1/files` when the host has not hashed
//! it yet, and the worker names the digest), and reads output files back (`GET /v1/file?path=`,
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
use tokio::io::AsyncReadExt;

/// Where uploaded content lives, inside the transfer directory.
const CAS_DIR: &str = "cas";
/// Bytes read at a time when streaming a file out.
const CHUNK: usize = 64 * 1024;
/// Pieces of an upload in flight between receiving and writing (each at most a TLS record
/// or a socket read: O(1) memory whatever the file's size).
const UPLOAD_QUEUE: usize = 8;
/// Bytes written to the upload's file at a time.
const WRITE_BUFFER: usize = 1 << 20;

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

/// `{"path", "size", "sha256"}` of content in the store (named by its digest).
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
        &json!({"path": path, "size": size, "sha256": path.file_name().map(|n| n.to_string_lossy())}),
    ))
}

/// `GET /v1/files/<sha256>`: `{"path", "size"}` of content the worker already holds, else 404.
pub(crate) fn lookup<P>(shared: &Shared<P>, sha: &str) -> Handled {
    let path = transfer(shared)?.path().join(CAS_DIR).join(digest_of(sha)?);
    match path.is_file() {
        true => {
            touch(&path); // Used now: the last to be evicted.
            stored(&path)
        }
        false => Err(wire(ErrorKind::NotFound, format!("no content {sha}"))),
    }
}

/// Marks `path` used now (its modification time is the store's "last used").
fn touch(path: &Path) {
    if let Ok(file) = std::fs::File::options().append(true).open(path) {
        let _ = file.set_modified(std::time::SystemTime::now());
    }
}

/// The environment variable bounding the content store (`cas/`) of a worker, in MiB.
pub const STORE_MAX_ENV: &str = "PLUGVISOR_STORE_MAX_MIB";
/// The store's bound when [`STORE_MAX_ENV`] is not set: 4 GiB.
const STORE_MAX_DEFAULT_MIB: u64 = 4096;
/// Content used (uploaded or looked up) this recently is never evicted, so a call that was
/// just given a file finds it; the store may exceed its bound meanwhile.
const EVICT_GRACE: std::time::Duration = std::time::Duration::from_secs(60);

/// The store's bound in bytes, from [`STORE_MAX_ENV`].
///
/// # Errors
/// The variable is set to something other than a whole number of MiB.
pub(crate) fn store_limit() -> Result<u64, String> {
    match std::env::var(STORE_MAX_ENV) {
        Err(_) => Ok(STORE_MAX_DEFAULT_MIB << 20),
        Ok(text) => text
            .trim()
            .parse::<u64>()
            .map(|mib| mib.saturating_mul(1 << 20))
            .map_err(|e| format!("{STORE_MAX_ENV}={text:?}: expected a number of MiB ({e})")),
    }
}

/// Removes the least recently used content of the store `dir` until it holds at most
/// `limit` bytes, sparing `keep` and whatever was used within [`EVICT_GRACE`] of `now`.
/// Returns the bytes removed.
pub(crate) fn evict(dir: &Path, limit: u64, keep: &Path, now: std::time::SystemTime) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut held: Vec<(std::time::SystemTime, u64, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            Some((meta.modified().ok()?, meta.len(), e.path()))
        })
        .collect();
    let mut total: u64 = held.iter().map(|(_, size, _)| size).sum();
    held.sort();
    let mut removed = 0;
    for (used, size, path) in held {
        if total <= limit {
            break;
        }
        let recent = now.duration_since(used).unwrap_or_default() < EVICT_GRACE;
        if recent || path == keep || std::fs::remove_file(&path).is_err() {
            continue;
        }
        total -= size;
        removed += size;
    }
    removed
}

/// `PUT /v1/files/<sha256>` (`expected` set): stores the body under its digest after checking
/// it; `PUT /v1/files` (`expected` none): stores it under the digest it turns out to have.
/// Answers `{"path", "size", "sha256"}`. A body whose digest differs from the one named is
/// discarded (`bad_request`); a body cut short or a full disk leaves nothing behind.
pub(crate) async fn upload<P>(
    shared: &Shared<P>,
    expected: Option<&str>,
    req: Request<Incoming>,
) -> Handled {
    let dir = transfer(shared)?.path().join(CAS_DIR);
    let expected = expected.map(digest_of).transpose()?;
    std::fs::create_dir_all(&dir).map_err(store_error)?;
    let part = dir.join(format!(".{}.part", fastrand::u64(..)));
    let received = receive(req.into_body(), &part).await;
    let (digest, size) = match received {
        Ok(done) => done,
        Err(e) => {
            let _ = std::fs::remove_file(&part);
            return Err(e);
        }
    };
    if let Some(sha) = expected.filter(|sha| *sha != digest) {
        let _ = std::fs::remove_file(&part);
        let why =
            format!("checksum mismatch: the {size} bytes received hash to {digest}, not {sha}");
        return Err(wire(ErrorKind::BadRequest, why));
    }
    let path = dir.join(&digest);
    if path.is_file() {
        // Held already (sent by another host, or again before the host could remember its
        // digest): the copy a call may be using stays, marked used now.
        let _ = std::fs::remove_file(&part);
        touch(&path);
        return stored(&path);
    }
    std::fs::rename(&part, &path).map_err(store_error)?;
    let limit = store_limit().unwrap_or(STORE_MAX_DEFAULT_MIB << 20);
    let freed = evict(&dir, limit, &path, std::time::SystemTime::now());
    if freed > 0 {
        tracing::info!(freed, limit, "evicted least recently used uploads");
    }
    stored(&path)
}

/// Receives an upload into `part`: the body's data goes through a bounded queue to a
/// blocking thread that hashes and writes it, so receiving (and TLS) overlaps with hashing
/// and writing, and memory stays bounded by the queue.
async fn receive(mut body: Incoming, part: &Path) -> Result<(String, u64), WireError> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(part)
        .map_err(store_error)?;
    let (data, queue) = tokio::sync::mpsc::channel::<Bytes>(UPLOAD_QUEUE);
    let writer = tokio::task::spawn_blocking(move || hash_and_write(file, queue));
    let mut broke = None;
    while let Some(frame) = body.frame().await {
        match frame {
            Err(e) => {
                broke = Some(wire(
                    ErrorKind::BadRequest,
                    format!("the upload broke off: {e}"),
                ));
                break;
            }
            Ok(frame) => {
                let Ok(bytes) = frame.into_data() else {
                    continue;
                };
                // A closed queue means the writer failed: its error is the answer.
                if data.send(bytes).await.is_err() {
                    break;
                }
            }
        }
    }
    drop(data);
    let written = writer
        .await
        .map_err(|e| store_error(std::io::Error::other(e)))?;
    if let Some(broke) = broke {
        return Err(broke);
    }
    written.map_err(store_error)
}

fn store_error(e: std::io::Error) -> WireError {
    wire(
        ErrorKind::PluginFailed,
        format!("cannot store the upload: {e}"),
    )
}

/// Hashes and writes what arrives on `queue` until it closes: the hex SHA-256 and the size.
/// (No fsync: the store lives only as long as the worker.)
fn hash_and_write(
    file: std::fs::File,
    mut queue: tokio::sync::mpsc::Receiver<Bytes>,
) -> std::io::Result<(String, u64)> {
    use std::io::Write;
    let mut out = std::io::BufWriter::with_capacity(WRITE_BUFFER, file);
    let mut hasher = ring::digest::Context::new(&ring::digest::SHA256);
    let mut size = 0u64;
    while let Some(data) = queue.blocking_recv() {
        hasher.update(&data);
        size += data.len() as u64;
        out.write_all(&data)?;
    }
    out.flush()?;
    let digest = hasher
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok((digest, size))
}

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

#[cfg(test)]
mod store_tests {
    use super::evict;
    use std::time::{Duration, SystemTime};

    #[test]
    fn eviction_removes_the_least_recently_used_beyond_the_bound_and_spares_recent_use() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let now = SystemTime::now();
        let put = |name: &str, age_secs: u64| {
            let path = dir.path().join(name);
            std::fs::write(&path, vec![0u8; 1000]).expect("write");
            let file = std::fs::File::options()
                .append(true)
                .open(&path)
                .expect("open");
            file.set_modified(now - Duration::from_secs(age_secs))
                .expect("set mtime");
            path
        };
        let oldest = put("a", 3600);
        let older = put("b", 1800);
        let recent = put("c", 5); // within the grace: spared
        let new = put("d", 7200); // the upload just stored: spared
        std::fs::write(dir.path().join(".x.part"), vec![0u8; 5000]).expect("part");

        // Control: within the bound, nothing goes.
        assert_eq!(evict(dir.path(), 10_000, &new, now), 0);
        assert!(oldest.exists() && older.exists());

        // 4000 bytes held, bound 2500: the oldest two that may go, oldest first.
        assert_eq!(evict(dir.path(), 2500, &new, now), 2000);
        assert!(!oldest.exists() && !older.exists());
        assert!(recent.exists() && new.exists());
        assert!(dir.path().join(".x.part").exists(), "an upload in progress");

        // Nothing else may go, even far over a tiny bound.
        assert_eq!(evict(dir.path(), 0, &new, now), 0);
    }
}
