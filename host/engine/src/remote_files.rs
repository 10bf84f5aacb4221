//! File references to and from a remote worker, which shares no filesystem with the host:
//! each input file is hashed (SHA-256) and streamed to the worker unless it already holds that
//! content (`GET`/`PUT /v1/files/<sha256>`), the input is rewritten to the worker's copies, and
//! each output file is streamed back into the host's transfer directory (`GET /v1/file`), then
//! removed on the worker. Memory is O(1) in file size on both sides (256 KiB chunks). A file
//! sent again unchanged is not hashed again (its digest is remembered by device, inode, size
//! and times).

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

/// Bytes read at a time (uploads, hashing).
const CHUNK: usize = 256 * 1024;
/// Chunks an upload reads ahead of the connection.
const READ_AHEAD: usize = 8;

/// Where the worker holds a file.
#[derive(Debug, Deserialize)]
struct Stored {
    path: PathBuf,
    size: u64,
}

fn access(message: String) -> Failure {
    Failure::Answer(PluginError::FileAccess(message))
}

/// `input` with every file reference pointing at the worker's copy of its content, uploading
/// what the worker does not hold yet.
pub(crate) async fn send_inputs(
    client: &Arc<WorkerClient>,
    input: &Value,
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
            let stored = upload(client, slot.key()).await?;
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

/// Makes sure the worker holds the content of `path`: hashed here, sent only when missing.
async fn upload(client: &Arc<WorkerClient>, path: &Path) -> Result<Stored, Failure> {
    let (sha, size) = hash_file(path)
        .await
        .map_err(|e| access(format!("{}: {e}", path.display())))?;
    let at = format!("{}{sha}", routes::FILES_PREFIX);
    let (answer, lease) = client.send(Method::GET, &at, Bytes::new()).await?;
    let status = answer.status();
    let bytes = exchange::read_all(answer.into_body(), lease).await?;
    if status.is_success() {
        return exchange::parse(&bytes).map_err(Failure::Answer);
    }
    if status != StatusCode::NOT_FOUND {
        return Err(Failure::Answer(exchange::error_from_body(status, &bytes)));
    }
    let file = std::fs::File::open(path).map_err(|e| access(format!("{}: {e}", path.display())))?;
    let request = Request::builder()
        .method(Method::PUT)
        .uri(&at)
        .header(
            CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        )
        .header(CONTENT_LENGTH, size)
        .body(ReqBody::Streamed(BodyExt::boxed_unsync(StreamBody::new(
            chunks(file),
        ))))
        .map_err(|e| Failure::Transport(e.into()))?;
    let (answer, lease) = client.send_request(request).await?;
    let status = answer.status();
    let bytes = exchange::read_all(answer.into_body(), lease).await?;
    match status.is_success() {
        true => exchange::parse(&bytes).map_err(Failure::Answer),
        false => Err(access(format!(
            "sending {} to the worker: {}",
            path.display(),
            exchange::error_from_body(status, &bytes)
        ))),
    }
}

/// The file's bytes as body frames, read ahead by a blocking thread through a bounded queue
/// (so reading overlaps with sending, and memory stays O(1) in the file's size). The thread
/// ends when the file does or when the body is dropped.
fn chunks(
    file: std::fs::File,
) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, crate::client::BoxError>> + Send {
    let (pieces, queue) = tokio::sync::mpsc::channel(READ_AHEAD);
    tokio::task::spawn_blocking(move || read_into(file, &pieces));
    futures_util::stream::unfold(queue, |mut queue| async move {
        let piece = queue.recv().await?;
        let frame = piece
            .map(Frame::data)
            .map_err(|e| Box::new(e) as crate::client::BoxError);
        Some((frame, queue))
    })
}

/// Reads `file` in [`CHUNK`]s into `pieces` until its end, an error (sent on), or until
/// nobody listens.
fn read_into(mut file: std::fs::File, pieces: &tokio::sync::mpsc::Sender<std::io::Result<Bytes>>) {
    use std::io::Read;
    loop {
        let mut buf = vec![0u8; CHUNK];
        let piece = match file.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                buf.truncate(n);
                Ok(Bytes::from(buf))
            }
            Err(e) => Err(e),
        };
        let failed = piece.is_err();
        if pieces.blocking_send(piece).is_err() || failed {
            return;
        }
    }
}

/// The hex SHA-256 and the size of the file at `path`, read in chunks off the runtime; a
/// file hashed before and unchanged since (see [`Identity`]) is not read again.
async fn hash_file(path: &Path) -> std::io::Result<(String, u64)> {
    let path = path.to_path_buf();
    let hashed = tokio::task::spawn_blocking(move || {
        let mut file = std::fs::File::open(&path)?;
        let before = Identity::of(&file)?;
        if let Some(known) = digests().get(&before) {
            return Ok((known.clone(), before.size));
        }
        let (hex, size) = hash_all(&mut file)?;
        if Identity::of(&file)? == before && before.settled() {
            remember(before, hex.clone());
        }
        Ok((hex, size))
    });
    hashed.await.map_err(std::io::Error::other)?
}

fn hash_all(file: &mut std::fs::File) -> std::io::Result<(String, u64)> {
    use std::io::Read;
    let mut hasher = ring::digest::Context::new(&ring::digest::SHA256);
    let (mut size, mut buf) = (0u64, vec![0u8; CHUNK]);
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    let hex = hasher
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok((hex, size))
}

/// What stands for a file's content without reading it: device, inode, size, and the
/// modification and change times (a write moves both; nobody can set the change time).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Identity {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Identity {
    fn of(file: &std::fs::File) -> std::io::Result<Self> {
        use std::os::unix::fs::MetadataExt;
        let m = file.metadata()?;
        Ok(Self {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }

    /// True when its last change is old enough that a change in the same clock tick (which
    /// would keep the times) cannot be still to come: only such a digest is remembered.
    fn settled(&self) -> bool {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        now - self.ctime.0 >= SETTLED_SECS
    }
}

/// Seconds since its last change before a file's digest is remembered.
const SETTLED_SECS: i64 = 2;
/// Digests remembered (forgotten all at once when full: a cache, not a record).
const DIGESTS_KEPT: usize = 4096;

fn digests() -> std::sync::MutexGuard<'static, HashMap<Identity, String>> {
    static DIGESTS: std::sync::OnceLock<std::sync::Mutex<HashMap<Identity, String>>> =
        std::sync::OnceLock::new();
    let map = DIGESTS.get_or_init(Default::default);
    map.lock().unwrap_or_else(|p| p.into_inner())
}

fn remember(identity: Identity, hex: String) {
    let mut known = digests();
    if known.len() >= DIGESTS_KEPT {
        known.clear();
    }
    known.insert(identity, hex);
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
    let query = percent_encoding::utf8_percent_encode(
        &file.path.to_string_lossy(),
        percent_encoding::NON_ALPHANUMERIC,
    )
    .to_string();
    let at = format!("{}?path={query}", routes::FILE);
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

#[cfg(test)]
mod tests {
    use super::{hash_file, remember, Identity};

    const EMPTY_SHA: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[tokio::test]
    async fn a_remembered_digest_is_used_until_the_file_changes() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("f");
        std::fs::write(&path, b"").expect("write");
        assert_eq!(hash_file(&path).await.expect("hash").0, EMPTY_SHA);

        // The cache is what answers: a digest remembered for this very file comes back
        // without the file being read.
        let identity = Identity::of(&std::fs::File::open(&path).expect("open")).expect("stat");
        remember(identity, "remembered".into());
        assert_eq!(hash_file(&path).await.expect("hash").0, "remembered");

        // Written (same size, so only the times tell; a clock tick later, as `settled`
        // guarantees for every digest really remembered): hashed again, never the stale one.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&path, b"").expect("rewrite");
        assert_eq!(hash_file(&path).await.expect("hash").0, EMPTY_SHA);
    }
}
