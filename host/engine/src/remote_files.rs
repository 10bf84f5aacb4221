//! File references to and from a remote worker, which shares no filesystem with the host:
//! each input file is streamed to the worker unless it already holds that content
//! (`GET`/`PUT /v1/files/<sha256>`; a file whose SHA-256 the host does not know yet goes at
//! once to `PUT /v1/files`, hashed while it is sent, and the worker's digest is checked
//! against the host's), the input is rewritten to the worker's copies, and each output file
//! is streamed back into the host's transfer directory (`GET /v1/file`), then removed on the
//! worker. Memory is O(1) in file size on both sides (256 KiB chunks). A file sent again
//! unchanged is not hashed again (its digest is remembered: `crate::digests`).

use crate::client::{ReqBody, WorkerClient};
use crate::exchange::{self, Failure};
use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use plugvisor_proto::file_ref::{rewrite_file_refs, visit_file_refs};
use plugvisor_proto::wire::routes;
use plugvisor_proto::{FileRef, PluginError, Value};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;

/// Bytes read at a time.
const CHUNK: usize = 256 * 1024;
/// Chunks an upload reads ahead of the connection.
const READ_AHEAD: usize = 8;

/// Where the worker holds a file, and the digest it found (workers before `streamed_upload`
/// do not say).
#[derive(Debug, Deserialize)]
struct Stored {
    path: PathBuf,
    size: u64,
    #[serde(default)]
    sha256: Option<String>,
}

fn access(message: String) -> Failure {
    Failure::Answer(PluginError::FileAccess(message))
}

/// `input` with every file reference pointing at the worker's copy of its content, uploading
/// what the worker does not hold yet. With `streamed` (the worker's `streamed_upload`), a file
/// whose digest the host does not know yet is hashed while it is sent, not before.
pub(crate) async fn send_inputs(
    client: &Arc<WorkerClient>,
    input: &Value,
    streamed: bool,
) -> Result<Value, Failure> {
    let mut paths = Vec::new();
    visit_file_refs::<String>(input, &mut |f| {
        paths.push(f.path);
        Ok(())
    })
    .map_err(|e| Failure::Answer(PluginError::InvalidInput(e)))?;
    let mut copies: HashMap<PathBuf, Stored> = HashMap::new();
    for path in paths {
        if let std::collections::hash_map::Entry::Vacant(slot) = copies.entry(path) {
            let stored = upload(client, slot.key(), streamed).await?;
            slot.insert(stored);
        }
    }
    let mut owned = input.clone();
    rewrite_file_refs::<String>(&mut owned, &mut |f| {
        let copy = copies
            .get(&f.path)
            .ok_or("a file reference changed while uploading")?;
        Ok(FileRef {
            path: copy.path.clone(),
            size: copy.size,
            ..f
        })
    })
    .map_err(|e| Failure::Answer(PluginError::InvalidInput(e)))?;
    Ok(owned)
}

/// Makes sure the worker holds the content of `path`. A digest known here (remembered, or
/// computed first when the worker cannot name one) is looked up and the content sent only
/// when missing; otherwise the content goes at once, hashed on the way.
async fn upload(
    client: &Arc<WorkerClient>,
    path: &Path,
    streamed: bool,
) -> Result<Stored, Failure> {
    let failed = |e: std::io::Error| access(format!("{}: {e}", path.display()));
    let file = std::fs::File::open(path).map_err(failed)?;
    let digest = match crate::digests::known(&file).map_err(failed)? {
        Some(known) => Some(known),
        None if streamed => None,
        None => Some(crate::digests::hash_file(path).await.map_err(failed)?),
    };
    if let Some((sha, _)) = &digest {
        if let Some(held) = lookup(client, sha).await? {
            return Ok(held);
        }
    }
    put(client, path, file, digest).await
}

/// Where the worker holds the content of digest `sha`, if it does.
async fn lookup(client: &Arc<WorkerClient>, sha: &str) -> Result<Option<Stored>, Failure> {
    let at = format!("{}{sha}", routes::FILES_PREFIX);
    let (answer, lease) = client.send(Method::GET, &at, Bytes::new()).await?;
    let status = answer.status();
    let bytes = exchange::read_all(answer.into_body(), lease).await?;
    match status {
        StatusCode::NOT_FOUND => Ok(None),
        s if s.is_success() => exchange::parse(&bytes).map(Some).map_err(Failure::Answer),
        s => Err(Failure::Answer(exchange::error_from_body(s, &bytes))),
    }
}

/// Streams `file` to the worker: to `PUT /v1/files/<sha256>` when its digest is known, else to
/// `PUT /v1/files`, hashing it as it is read, and checking the digest the worker found
/// against ours (a mismatch removes the worker's copy).
async fn put(
    client: &Arc<WorkerClient>,
    path: &Path,
    file: std::fs::File,
    digest: Option<(String, u64)>,
) -> Result<Stored, Failure> {
    let failed = |e: std::io::Error| access(format!("{}: {e}", path.display()));
    let (at, size, hashing) = match &digest {
        Some((sha, size)) => (format!("{}{sha}", routes::FILES_PREFIX), *size, None),
        None => {
            let running = crate::digests::Running::start(&file).map_err(failed)?;
            let size = file.metadata().map_err(failed)?.len();
            (routes::FILES.to_owned(), size, Some(running))
        }
    };
    let (read, ours) = tokio::sync::oneshot::channel();
    let request = Request::builder()
        .method(Method::PUT)
        .uri(&at)
        .header(
            CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        )
        .header(CONTENT_LENGTH, size)
        .body(ReqBody::Streamed(BodyExt::boxed_unsync(StreamBody::new(
            chunks(file, hashing.map(|running| (running, read))),
        ))))
        .map_err(|e| Failure::Transport(e.into()))?;
    let (answer, lease) = client.send_request(request).await?;
    let status = answer.status();
    let bytes = exchange::read_all(answer.into_body(), lease).await?;
    if !status.is_success() {
        return Err(access(format!(
            "sending {} to the worker: {}",
            path.display(),
            exchange::error_from_body(status, &bytes)
        )));
    }
    let stored: Stored = exchange::parse(&bytes).map_err(Failure::Answer)?;
    if digest.is_none() {
        let ours = ours
            .await
            .map_err(|_| access(format!("{}: the read did not finish", path.display())))?;
        check_named(client, path, &stored, ours).await?;
    }
    Ok(stored)
}

/// Fails (removing the worker's copy) unless the worker's digest and size of a streamed
/// upload are the ones this host read.
async fn check_named(
    client: &Arc<WorkerClient>,
    path: &Path,
    stored: &Stored,
    (sha, size): (String, u64),
) -> Result<(), Failure> {
    if stored.sha256.as_deref() == Some(sha.as_str()) && stored.size == size {
        return Ok(());
    }
    let at = format!("{}?path={}", routes::FILE, encoded(&stored.path));
    let _ = exchange::send(client, Method::DELETE, &at, Bytes::new()).await;
    Err(access(format!(
        "sending {}: checksum mismatch: this host read {size} bytes hashing to {sha}, the \
         worker stored {} bytes hashing to {}",
        path.display(),
        stored.size,
        stored.sha256.as_deref().unwrap_or("(no digest given)")
    )))
}

/// `path` percent-encoded for a query.
fn encoded(path: &Path) -> String {
    percent_encoding::utf8_percent_encode(
        &path.to_string_lossy(),
        percent_encoding::NON_ALPHANUMERIC,
    )
    .to_string()
}

/// What a streamed upload's reader hands back: the running digest, and where to send it.
type Hashing = (
    crate::digests::Running,
    tokio::sync::oneshot::Sender<(String, u64)>,
);

/// The file's bytes as body frames, read ahead by a blocking thread through a bounded queue
/// (so reading, and hashing when `hashing` is given, overlap with sending, and memory stays
/// O(1) in the file's size). The thread ends when the file does or when the body is dropped.
fn chunks(
    file: std::fs::File,
    hashing: Option<Hashing>,
) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, crate::client::BoxError>> + Send {
    let (pieces, queue) = tokio::sync::mpsc::channel(READ_AHEAD);
    tokio::task::spawn_blocking(move || read_into(file, &pieces, hashing));
    futures_util::stream::unfold(queue, |mut queue| async move {
        let piece = queue.recv().await?;
        let frame = piece
            .map(Frame::data)
            .map_err(|e| Box::new(e) as crate::client::BoxError);
        Some((frame, queue))
    })
}

/// Reads `file` in [`CHUNK`]s into `pieces` (hashing each first, with `hashing`) until its
/// end, an error (sent on), or until nobody listens; at the end, sends the digest on.
fn read_into(
    mut file: std::fs::File,
    pieces: &tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
    mut hashing: Option<Hashing>,
) {
    use std::io::Read;
    loop {
        // Read into spare capacity: no zeroing of a buffer about to be overwritten.
        let mut buf = Vec::with_capacity(CHUNK);
        let piece = match (&mut file).take(CHUNK as u64).read_to_end(&mut buf) {
            Ok(0) => break,
            Ok(_) => {
                if let Some((running, _)) = hashing.as_mut() {
                    running.update(&buf);
                }
                Ok(Bytes::from(buf))
            }
            Err(e) => Err(e),
        };
        let failed = piece.is_err();
        if pieces.blocking_send(piece).is_err() || failed {
            return;
        }
    }
    if let Some((running, done)) = hashing {
        let _ = done.send(running.finish(&file));
    }
}

/// Streams every file `output` references from the worker into `dir`, rewrites the
/// references to the copies, and removes the worker's files.
pub(crate) async fn fetch_outputs(
    client: &Arc<WorkerClient>,
    output: &mut Value,
    dir: &Path,
) -> Result<(), Failure> {
    let mut refs = Vec::new();
    visit_file_refs::<String>(output, &mut |f| {
        refs.push(f);
        Ok(())
    })
    .map_err(|e| Failure::Answer(PluginError::Protocol(format!("worker output: {e}"))))?;
    let mut local: HashMap<PathBuf, PathBuf> = HashMap::new();
    for file in refs {
        if let std::collections::hash_map::Entry::Vacant(slot) = local.entry(file.path.clone()) {
            slot.insert(download(client, &file, dir).await?);
        }
    }
    rewrite_file_refs::<String>(output, &mut |f| {
        let copy = local.get(&f.path).ok_or("an output reference changed")?;
        Ok(FileRef {
            path: copy.clone(),
            ..f
        })
    })
    .map_err(|e| Failure::Answer(PluginError::Protocol(e)))?;
    Ok(())
}

/// Copies one output file into `dir` (checking its size), then removes it on the worker.
async fn download(
    client: &Arc<WorkerClient>,
    file: &FileRef,
    dir: &Path,
) -> Result<PathBuf, Failure> {
    let at = format!("{}?path={}", routes::FILE, encoded(&file.path));
    let (body, lease) = exchange::send(client, Method::GET, &at, Bytes::new()).await?;
    let name = format!("remote-{}", uuid::Uuid::new_v4().simple());
    let copy = dir.join(name);
    let written = write_body(body, &copy).await;
    let mut lease = lease;
    let size = match written {
        Ok(size) => size,
        Err(e) => {
            let _ = std::fs::remove_file(&copy);
            return Err(e);
        }
    };
    lease.finish();
    drop(lease);
    if size != file.size {
        let _ = std::fs::remove_file(&copy);
        let why = format!(
            "output file {} arrived with {size} bytes, the worker said {}",
            file.path.display(),
            file.size
        );
        return Err(Failure::Answer(PluginError::Protocol(why)));
    }
    let _ = exchange::send(client, Method::DELETE, &at, Bytes::new()).await;
    Ok(copy)
}

async fn write_body(mut body: hyper::body::Incoming, copy: &Path) -> Result<u64, Failure> {
    let mut out = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(copy)
        .await
        .map_err(|e| access(format!("{}: {e}", copy.display())))?;
    let mut size = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Failure::Transport(e.into()))?;
        if let Ok(data) = frame.into_data() {
            size += data.len() as u64;
            out.write_all(&data)
                .await
                .map_err(|e| access(format!("{}: {e}", copy.display())))?;
        }
    }
    out.flush()
        .await
        .map_err(|e| access(format!("{}: {e}", copy.display())))?;
    Ok(size)
}
