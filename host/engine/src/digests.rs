//! The digests of files the host sends to remote workers: SHA-256 computed in chunks off the
//! runtime, and remembered by device, inode, size and times, so a file sent again unchanged
//! is not read again.

use std::collections::HashMap;
use std::path::Path;

/// Bytes hashed at a time.
const CHUNK: usize = 256 * 1024;

/// The hex SHA-256 and the size of the file at `path`, read in chunks off the runtime; a
/// file hashed before and unchanged since (see [`Identity`]) is not read again.
pub(crate) async fn hash_file(path: &Path) -> std::io::Result<(String, u64)> {
    let path = path.to_path_buf();
    let hashed = tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut file = std::fs::File::open(&path)?;
        if let Some(known) = known(&file)? {
            return Ok(known);
        }
        let mut running = Running::start(&file)?;
        let mut buf = vec![0u8; CHUNK];
        loop {
            match file.read(&mut buf)? {
                0 => return Ok(running.finish(&file)),
                n => running.update(&buf[..n]),
            }
        }
    });
    hashed.await.map_err(std::io::Error::other)?
}

/// The remembered digest and size of `file`'s content, when it was hashed before and has not
/// changed since.
pub(crate) fn known(file: &std::fs::File) -> std::io::Result<Option<(String, u64)>> {
    let identity = Identity::of(file)?;
    Ok(digests()
        .get(&identity)
        .map(|hex| (hex.clone(), identity.size)))
}

/// A SHA-256 computed over a file's pieces as they are read (to hash while sending).
pub(crate) struct Running {
    hasher: ring::digest::Context,
    size: u64,
    before: Identity,
}

impl Running {
    /// Starts hashing `file`, which is about to be read from its start.
    pub(crate) fn start(file: &std::fs::File) -> std::io::Result<Self> {
        Ok(Self {
            hasher: ring::digest::Context::new(&ring::digest::SHA256),
            size: 0,
            before: Identity::of(file)?,
        })
    }

    /// The next piece read.
    pub(crate) fn update(&mut self, piece: &[u8]) {
        self.hasher.update(piece);
        self.size += piece.len() as u64;
    }

    /// The hex digest and size of what was read, remembered for `file` when the read left it
    /// unchanged and its last change is settled.
    pub(crate) fn finish(self, file: &std::fs::File) -> (String, u64) {
        let hex: String = self
            .hasher
            .finish()
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let unchanged = Identity::of(file).is_ok_and(|after| after == self.before);
        if unchanged && self.before.settled() && self.size == self.before.size {
            remember(self.before, hex.clone());
        }
        (hex, self.size)
    }
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
