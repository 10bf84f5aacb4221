//! Files of API clients: uploads (`POST /api/files`) that call inputs refer to as
//! `{"$upload": ID}`, downloads of a call's output files (`GET /api/files/{download}`), and the rule
//! that an API client never names a path of the server's machine outside the operator's
//! `--file-root` directories.
//!
//! Stored files live in the host's private directory (`<host dir>/api-files`, mode 0700). An
//! upload is used once: the call that names it takes it, and it is deleted when that call
//! ends. A download is served once and deleted. Whatever is not used expires after the TTL.

use super::errors::{ApiError, ApiKind};
use super::reply::{self, Body, Reply};
use super::request::{drain, ApiBody};
use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use plugvisor_host::OutputFile;
use plugvisor_proto::{FileRef, Value};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

/// The key of an input object that names an upload: `{"$upload": "<id>"}`.
pub const UPLOAD_TAG: &str = "$upload";
/// The key of an output object that names a download: `{"$download": {"id", "url", …}}`.
pub const DOWNLOAD_TAG: &str = "$download";
/// The key of a file reference (`{"$file": {"path", …}}`).
const FILE_TAG: &str = "$file";

/// Limits and rules for API clients' files.
#[derive(Debug, Clone)]
pub struct FileOptions {
    /// Directories whose files API clients may name by path in `{"$file": …}` references
    /// (`serve --file-root DIR`). None by default: clients upload instead.
    pub roots: Vec<PathBuf>,
    /// Largest upload in bytes. Default 256 MiB.
    pub max_upload: u64,
    /// How long an unused upload or an unfetched download is kept. Default 10 minutes.
    pub ttl: Duration,
    /// Bytes of live uploads one client (by IP address) may hold. Default 1 GiB.
    pub quota_bytes: u64,
    /// Live uploads one client may hold. Default 64.
    pub quota_files: usize,
}

impl Default for FileOptions {
    fn default() -> Self {
        Self {
            roots: Vec::new(),
            max_upload: 256 << 20,
            ttl: Duration::from_secs(600),
            quota_bytes: 1 << 30,
            quota_files: 64,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Upload,
    Download,
}

#[derive(Debug)]
struct Entry {
    kind: Kind,
    path: PathBuf,
    size: u64,
    media_type: String,
    client: IpAddr,
    expires: Instant,
}

/// The stored files of the API's clients.
#[derive(Debug)]
pub(crate) struct FileStore {
    dir: PathBuf,
    options: FileOptions,
    /// Operator roots, canonical (symlinks resolved).
    roots: Vec<PathBuf>,
    entries: Mutex<HashMap<String, Entry>>,
}

/// Uploads taken by one call: deleted when the call ends (when this is dropped).
#[derive(Debug, Default)]
pub(crate) struct Claimed {
    paths: Vec<PathBuf>,
}

impl Drop for Claimed {
    fn drop(&mut self) {
        for path in &self.paths {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl FileStore {
    /// A store in `dir` (created, mode 0700).
    ///
    /// # Errors
    /// The directory cannot be created, or a root does not exist.
    pub(crate) fn new(dir: PathBuf, options: FileOptions) -> std::io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(&dir)?;
        let roots = options
            .roots
            .iter()
            .map(|r| {
                std::fs::canonicalize(r).map_err(|e| {
                    std::io::Error::new(e.kind(), format!("file root {}: {e}", r.display()))
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            dir,
            options,
            roots,
            entries: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // Entries are inserted and removed whole; a poisoned map is still consistent.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Removes and returns the entry `id` if it is of `kind`: no one else can take it then.
    fn take(&self, id: &str, kind: Kind) -> Option<Entry> {
        let mut entries = self.lock();
        match entries.get(id) {
            Some(e) if e.kind == kind => entries.remove(id),
            _ => None,
        }
    }

    /// How often [`FileStore::sweep`] should run.
    pub(crate) fn sweep_interval(&self) -> Duration {
        (self.options.ttl / 4).clamp(Duration::from_millis(50), Duration::from_secs(30))
    }

    /// Deletes expired files.
    pub(crate) fn sweep(&self) {
        let now = Instant::now();
        let expired: Vec<Entry> = {
            let mut entries = self.lock();
            let ids: Vec<String> = entries
                .iter()
                .filter(|(_, e)| e.expires <= now)
                .map(|(id, _)| id.clone())
                .collect();
            ids.iter().filter_map(|id| entries.remove(id)).collect()
        };
        for entry in expired {
            let _ = std::fs::remove_file(&entry.path);
        }
    }

    /// Deletes every stored file and the directory (at shutdown).
    pub(crate) fn clear(&self) {
        self.lock().clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    /// Bytes and files of live uploads held by `client`.
    fn usage(&self, client: IpAddr) -> (u64, usize) {
        let entries = self.lock();
        let mine = entries
            .values()
            .filter(|e| e.client == client && e.kind == Kind::Upload);
        mine.fold((0, 0), |(bytes, n), e| (bytes + e.size, n + 1))
    }

    /// The most `client` may upload now: the size limit, less what its quota has left.
    fn allowance(&self, client: IpAddr) -> Result<u64, ApiError> {
        let (bytes, files) = self.usage(client);
        if files >= self.options.quota_files {
            return Err(quota(format!(
                "this client already holds {files} uploads (the quota is {}); use or let them \
                 expire first",
                self.options.quota_files
            )));
        }
        let left = self.options.quota_bytes.saturating_sub(bytes);
        Ok(left.min(self.options.max_upload))
    }

    /// Stores an upload streamed from `body`: O(1) memory, sha256 on the way.
    ///
    /// # Errors
    /// 413 over the size limit, 429 over the client's quota, 408 when the body stalls for
    /// the read timeout, 400 when the connection fails; nothing is kept then.
    pub(crate) async fn upload(
        &self,
        client: IpAddr,
        declared: Option<u64>,
        media_type: String,
        mut body: ApiBody,
        idle: Duration,
    ) -> Result<Reply, ApiError> {
        let allowance = match self.allowance(client) {
            Ok(n) if declared.is_none_or(|d| d <= n) => n,
            Ok(n) => {
                drain(body, idle).await;
                return Err(self.over(n));
            }
            Err(e) => {
                drain(body, idle).await;
                return Err(e);
            }
        };
        let id = new_id();
        let path = self.dir.join(&id);
        let written = write_upload(&path, &mut body, allowance, idle).await;
        let (size, sha256) = match written {
            Ok((0, _)) => {
                let _ = std::fs::remove_file(&path);
                return Err(ApiError::bad_request(
                    "an upload needs a body: the file's bytes",
                ));
            }
            Ok(done) => done,
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                if matches!(e, WriteError::TooLarge) {
                    drain(body, idle).await;
                }
                return Err(e.into_api(|| self.over(allowance)));
            }
        };
        let expires = Instant::now() + self.options.ttl;
        let entry = Entry {
            kind: Kind::Upload,
            path,
            size,
            media_type,
            client,
            expires,
        };
        self.lock().insert(id.clone(), entry);
        tracing::info!(%client, id, size, "file uploaded");
        Ok(reply::json(
            http::StatusCode::CREATED,
            &json!({
                "id": id,
                "size": size,
                "sha256": sha256,
                "expires_in_secs": self.options.ttl.as_secs(),
                "ref": { UPLOAD_TAG: id },
            }),
        ))
    }

    /// 413 for a body over `allowance`, naming which limit it hit.
    fn over(&self, allowance: u64) -> ApiError {
        if allowance < self.options.max_upload {
            return quota(format!(
                "the upload exceeds what is left of this client's quota ({allowance} of {} \
                 bytes)",
                self.options.quota_bytes
            ));
        }
        ApiError::new(
            ApiKind::Wire(plugvisor_proto::ErrorKind::PayloadTooLarge),
            format!(
                "the upload exceeds the limit of {} bytes (serve --max-upload-mib)",
                self.options.max_upload
            ),
        )
        .header(http::header::CONNECTION, HeaderValue::from_static("close"))
    }

    /// Resolves the file references of an API client's call input, in place: each
    /// `{"$upload": ID}` becomes a reference to the stored upload (taken: no other call can
    /// use it, and it is deleted when the returned guard drops); each `{"$file": …}` must lie
    /// beneath a `--file-root`.
    ///
    /// # Errors
    /// 403 `file_path_refused` for a path outside every root (nothing is opened or staged),
    /// 404 for an unknown or used upload, 400 for a malformed reference. Uploads taken before
    /// the error are deleted.
    pub(crate) fn resolve_input(&self, input: &mut Value) -> Result<Claimed, ApiError> {
        let mut claimed = Claimed::default();
        self.resolve_in(input, &mut claimed)?;
        Ok(claimed)
    }

    fn resolve_in(&self, value: &mut Value, claimed: &mut Claimed) -> Result<(), ApiError> {
        if let Some(id) = tagged(value, UPLOAD_TAG) {
            let id = id
                .as_str()
                .ok_or_else(|| ApiError::bad_request("\"$upload\" must be an upload id string"))?
                .to_owned();
            *value = self.take_upload(&id, claimed)?;
            return Ok(());
        }
        if tagged(value, FILE_TAG).is_some() {
            let file = FileRef::from_value(value).map_err(ApiError::bad_request)?;
            if let Some(file) = file {
                *value = self.check_path(file)?.to_value();
            }
            return Ok(());
        }
        match value {
            Value::Array(items) => items
                .iter_mut()
                .try_for_each(|v| self.resolve_in(v, claimed)),
            Value::Object(map) => map
                .values_mut()
                .try_for_each(|v| self.resolve_in(v, claimed)),
            _ => Ok(()),
        }
    }

    fn take_upload(&self, id: &str, claimed: &mut Claimed) -> Result<Value, ApiError> {
        let Some(entry) = self.take(id, Kind::Upload) else {
            return Err(ApiError::new(
                ApiKind::Wire(plugvisor_proto::ErrorKind::NotFound),
                format!("no upload {id:?}: unknown, already used, or expired"),
            ));
        };
        claimed.paths.push(entry.path.clone());
        let file = FileRef::new(&entry.path, entry.size).with_media_type(entry.media_type);
        Ok(file.to_value())
    }

    /// A client's `$file` path: allowed only beneath an operator root, symlinks resolved.
    fn check_path(&self, mut file: FileRef) -> Result<FileRef, ApiError> {
        let refused = |why: &str| {
            ApiError::new(
                ApiKind::FilePathRefused,
                format!(
                    "file reference {}: {why}; API clients upload files (POST /api/files, then \
                     {{\"$upload\": ID}}) or name paths beneath a --file-root of the server",
                    file.path.display()
                ),
            )
        };
        if self.roots.is_empty() {
            return Err(refused("this server allows no file paths"));
        }
        let lexical = file.path.is_absolute()
            && file
                .path
                .components()
                .all(|c| !matches!(c, Component::ParentDir))
            && self.roots.iter().any(|r| file.path.starts_with(r));
        if !lexical {
            return Err(refused("it is not beneath a --file-root"));
        }
        // Only now touch the filesystem: a symlink beneath a root may point outside it.
        let real = std::fs::canonicalize(&file.path)
            .map_err(|_| refused("it does not exist beneath a --file-root"))?;
        if !self.roots.iter().any(|r| real.starts_with(r)) {
            return Err(refused("it resolves to a place outside every --file-root"));
        }
        file.path = real;
        Ok(file)
    }

    /// Makes a call's output files downloadable: each is moved into the store and every
    /// reference to it in `output` becomes `{"$download": {"id", "url", "size",
    /// "media_type"}}`. Files that cannot be kept are deleted and their references say so.
    pub(crate) fn publish(&self, client: IpAddr, output: &mut Value, files: Vec<OutputFile>) {
        let mut published: HashMap<PathBuf, Value> = HashMap::new();
        for file in files {
            let Some(original) = file.file_ref().cloned() else {
                continue;
            };
            let id = new_id();
            let dest = self.dir.join(&id);
            let download = match file.persist(&dest) {
                Ok(_) => self.register_download(client, id, dest, &original),
                Err(e) => json!({ "error": format!("the output file could not be kept: {e}") }),
            };
            published.insert(original.path, download);
        }
        if !published.is_empty() {
            replace_refs(output, &published);
        }
    }

    fn register_download(
        &self,
        client: IpAddr,
        id: String,
        path: PathBuf,
        file: &FileRef,
    ) -> Value {
        let url = format!("/api/files/{id}");
        let shown = json!({ DOWNLOAD_TAG: {
            "id": id,
            "url": url,
            "size": file.size,
            "media_type": file.media_type,
            "name": file.file_name(),
        }});
        let entry = Entry {
            kind: Kind::Download,
            path,
            size: file.size,
            media_type: file.media_type.clone(),
            client,
            expires: Instant::now() + self.options.ttl,
        };
        self.lock().insert(id, entry);
        shown
    }

    /// Streams a download and deletes it: it can be fetched once.
    ///
    /// # Errors
    /// 404 for an unknown, fetched or expired download.
    pub(crate) async fn download(&self, id: &str) -> Result<Reply, ApiError> {
        let entry = self.take(id, Kind::Download);
        let gone = || {
            ApiError::new(
                ApiKind::Wire(plugvisor_proto::ErrorKind::NotFound),
                format!("no download {id:?}: unknown, already fetched, or expired"),
            )
        };
        let entry = entry.ok_or_else(gone)?;
        let file = tokio::fs::File::open(&entry.path).await;
        // Unlinked at once: the open file stays readable until the answer is sent.
        let _ = std::fs::remove_file(&entry.path);
        let file = file.map_err(|_| gone())?;
        Ok(file_reply(file, entry.size, &entry.media_type))
    }
}

/// The value of `value`'s only key when that key is `tag`.
fn tagged<'a>(value: &'a Value, tag: &str) -> Option<&'a Value> {
    match value {
        Value::Object(map) if map.len() == 1 => map.get(tag),
        _ => None,
    }
}

/// Replaces every `{"$file": {"path": P, …}}` whose P is a key of `by_path`.
fn replace_refs(value: &mut Value, by_path: &HashMap<PathBuf, Value>) {
    if let Ok(Some(file)) = FileRef::from_value(value) {
        if let Some(shown) = by_path.get(&file.path) {
            *value = shown.clone();
        }
        return;
    }
    match value {
        Value::Array(items) => items.iter_mut().for_each(|v| replace_refs(v, by_path)),
        Value::Object(map) => map.values_mut().for_each(|v| replace_refs(v, by_path)),
        _ => {}
    }
}

/// Why writing an upload stopped.
enum WriteError {
    TooLarge,
    Stalled,
    Body(Box<dyn std::error::Error + Send + Sync>),
    Io(std::io::Error),
}

impl WriteError {
    fn into_api(self, too_large: impl FnOnce() -> ApiError) -> ApiError {
        match self {
            Self::TooLarge => too_large(),
            Self::Stalled => ApiError::read_timeout(),
            Self::Body(e) => ApiError::bad_request(format!("cannot read the upload: {e}")),
            Self::Io(e) => ApiError::internal(format!("cannot store the upload: {e}")),
        }
    }
}

/// Writes `body` to a new file at `path`, at most `limit` bytes; returns size and sha256.
async fn write_upload(
    path: &Path,
    body: &mut ApiBody,
    limit: u64,
    idle: Duration,
) -> Result<(u64, String), WriteError> {
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .await
        .map_err(WriteError::Io)?;
    let mut hash = Sha256::new();
    let mut size = 0u64;
    loop {
        let frame = match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => return Err(WriteError::Stalled),
            Ok(None) => break,
            Ok(Some(frame)) => frame.map_err(WriteError::Body)?,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        size += data.len() as u64;
        if size > limit {
            return Err(WriteError::TooLarge);
        }
        hash.update(&data);
        file.write_all(&data).await.map_err(WriteError::Io)?;
    }
    file.flush().await.map_err(WriteError::Io)?;
    Ok((size, hex(&hash.finalize())))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// 128 random bits, hex: an id nobody can guess.
fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn quota(message: String) -> ApiError {
    ApiError::new(ApiKind::QuotaExceeded, message)
}

/// A 200 answer streaming `file` in 64 KiB pieces, with its length.
pub(crate) fn file_reply(file: tokio::fs::File, size: u64, media_type: &str) -> Reply {
    let chunks = futures_util::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let mut buf = vec![0u8; 64 * 1024];
        match file.read(&mut buf).await {
            Ok(0) | Err(_) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Frame::data(Bytes::from(buf))), Some(file)))
            }
        }
    });
    let body: Body = super::reply::boxed(StreamBody::new(chunks));
    let mut answer = reply::streamed("application/octet-stream", body);
    let headers = answer.headers_mut();
    if let Ok(value) = HeaderValue::from_str(media_type) {
        headers.insert(CONTENT_TYPE, value);
    }
    headers.insert(CONTENT_LENGTH, HeaderValue::from(size));
    answer
}

/// A short description of the stored files, for `/api/files` listings in tests and logs.
#[cfg(test)]
fn ids(store: &FileStore) -> Vec<String> {
    store.lock().keys().cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(roots: Vec<PathBuf>) -> (tempfile::TempDir, FileStore) {
        let dir = tempfile::tempdir().unwrap();
        let options = FileOptions {
            roots,
            ..FileOptions::default()
        };
        let store = FileStore::new(dir.path().join("files"), options).unwrap();
        (dir, store)
    }

    #[test]
    fn without_roots_no_path_is_accepted_and_nothing_is_touched() {
        let (_dir, store) = store(Vec::new());
        let mut input = json!({"a": [{"$file": {"path": "/etc/shadow", "size": 0}}]});
        let err = store.resolve_input(&mut input).unwrap_err();
        assert_eq!(err.kind.as_str(), "file_path_refused");
        assert_eq!(err.status.as_u16(), 403);
        assert!(err.message.contains("/etc/shadow"), "{}", err.message);
    }

    #[test]
    fn paths_beneath_a_root_pass_and_escapes_do_not() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("in.txt"), "x").unwrap();
        std::fs::write(outside.path().join("secret"), "s").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), root.path().join("link"))
            .unwrap();
        let real_root = std::fs::canonicalize(root.path()).unwrap();
        let (_dir, store) = store(vec![root.path().to_path_buf()]);
        let ok = real_root.join("in.txt");
        let mut input = json!({"f": {"$file": {"path": ok, "size": 1}}});
        store.resolve_input(&mut input).unwrap();
        assert_eq!(input["f"]["$file"]["path"], json!(ok));
        for bad in [
            real_root.join("link"),
            real_root
                .join("../")
                .join(outside.path().file_name().unwrap())
                .join("secret"),
            outside.path().join("secret"),
            PathBuf::from("relative.txt"),
        ] {
            let mut input = json!({"$file": {"path": bad, "size": 1}});
            let err = store.resolve_input(&mut input).unwrap_err();
            assert_eq!(err.kind.as_str(), "file_path_refused", "{}", bad.display());
        }
    }

    #[test]
    fn an_unknown_upload_is_404_and_a_bad_tag_400() {
        let (_dir, store) = store(Vec::new());
        let mut input = json!([{"$upload": "nope"}]);
        assert_eq!(store.resolve_input(&mut input).unwrap_err().status, 404);
        let mut input = json!([{"$upload": 7}]);
        assert_eq!(store.resolve_input(&mut input).unwrap_err().status, 400);
        assert!(ids(&store).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn expired_files_are_swept() {
        let (_dir, store) = store(Vec::new());
        let path = store.dir.join("x");
        std::fs::write(&path, "data").unwrap();
        let file = FileRef::new(&path, 4);
        store.register_download(
            "127.0.0.1".parse().unwrap(),
            "x".into(),
            path.clone(),
            &file,
        );
        store.sweep();
        assert!(path.exists());
        tokio::time::advance(store.options.ttl).await;
        store.sweep();
        assert!(!path.exists());
        assert!(ids(&store).is_empty());
    }

    #[test]
    fn output_references_become_downloads() {
        let by_path = HashMap::from([(
            PathBuf::from("/t/out.gz"),
            json!({"$download": {"id": "d"}}),
        )]);
        let mut output = json!({"file": {"$file": {"path": "/t/out.gz", "size": 3}}, "n": 1});
        replace_refs(&mut output, &by_path);
        assert_eq!(output, json!({"file": {"$download": {"id": "d"}}, "n": 1}));
    }
}
