//! The host's private directory: worker sockets and per-worker transfer directories.
//!
//! Layout, under a base directory (`/dev/shm/plugvisor-<uid>` when `/dev/shm` is writable, else
//! `$TMPDIR/plugvisor-<uid>`):
//!
//! ```text
//! plugvisor-<uid>/              0700
//!   h-<pid>-<rand>/             0700, one per live host; `.lock` is flock'ed while it lives
//!     .lock
//!     w1.sock                   a worker's socket
//!     x1/                       0700, that worker's transfer directory
//! ```
//!
//! A host that dies without cleaning up leaves its `h-*` directory unlocked; the next host to
//! start removes it ([`sweep_stale`]).

use std::fs::{self, DirBuilder, File};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

const LOCK_FILE: &str = ".lock";
/// Environment variable naming the base directory when the embedder sets none.
pub const RUNTIME_DIR_ENV: &str = "PLUGVISOR_RUNTIME_DIR";
const HOST_DIR_PREFIX: &str = "h-";
/// Mode of a directory others may pass through but not list or change.
const TRAVERSABLE: u32 = 0o711;

/// The per-host directory: created private, locked while the host lives, removed on drop.
#[derive(Debug)]
pub(crate) struct HostDir {
    path: PathBuf,
    // Held for the flock: dropping it (or the host dying) releases the lock.
    _lock: File,
}

impl HostDir {
    /// Creates a fresh host directory under `base` (or the default base), sweeping stale ones.
    pub(crate) fn create(base: Option<&Path>) -> io::Result<Self> {
        let from_env = std::env::var_os(RUNTIME_DIR_ENV).map(PathBuf::from);
        let base = match base.or(from_env.as_deref()) {
            // The embedder chose it: it may be shared; our own directory inside is private.
            Some(b) => {
                fs::create_dir_all(b)?;
                b.to_path_buf()
            }
            // A well-known name: refuse one that another user made or opened up.
            None => {
                let b = default_base()?;
                make_private_dir(&b, true)?;
                b
            }
        };
        sweep_stale(&base);
        let name = format!("{HOST_DIR_PREFIX}{}-{}", std::process::id(), short_id());
        let path = base.join(name);
        make_private_dir(&path, false)?;
        let lock = File::create(path.join(LOCK_FILE))?;
        lock.try_lock().map_err(io::Error::other)?;
        Ok(Self { path, _lock: lock })
    }

    /// The directory's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Lets other users traverse (not list) the base and this directory: a worker running as
    /// another user (`Sandbox::user`) must reach its own transfer directory inside.
    pub(crate) fn allow_traversal(&self) -> io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        for dir in [self.path.parent(), Some(self.path.as_path())]
            .into_iter()
            .flatten()
        {
            fs::set_permissions(dir, fs::Permissions::from_mode(TRAVERSABLE))?;
        }
        Ok(())
    }

    /// Socket path for worker number `n`.
    pub(crate) fn socket_path(&self, n: u64) -> PathBuf {
        self.path.join(format!("w{n}.sock"))
    }

    /// Creates (mode 0700) and returns the transfer directory of worker number `n`.
    pub(crate) fn transfer_dir(&self, n: u64) -> io::Result<PathBuf> {
        let dir = self.path.join(format!("x{n}"));
        make_private_dir(&dir, false)?;
        Ok(dir)
    }
}

impl HostDir {
    /// Removes the directory and everything in it (again on drop; a second time is a no-op).
    pub(crate) fn remove(&self) {
        match fs::remove_dir_all(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "could not remove host directory")
            }
        }
    }
}

impl Drop for HostDir {
    fn drop(&mut self) {
        self.remove();
    }
}

/// `/dev/shm/plugvisor-<uid>` when `/dev/shm` is a writable directory, else the temp dir.
fn default_base() -> io::Result<PathBuf> {
    let uid = nix::unistd::getuid();
    let shm = Path::new("/dev/shm");
    let writable = nix::unistd::access(shm, nix::unistd::AccessFlags::W_OK).is_ok();
    let root = if shm.is_dir() && writable {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    Ok(root.join(format!("plugvisor-{uid}")))
}

/// Creates `dir` with mode 0700; an existing one must be ours and private.
fn make_private_dir(dir: &Path, may_exist: bool) -> io::Result<()> {
    match DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if may_exist && e.kind() == io::ErrorKind::AlreadyExists => check_private(dir),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("cannot create {}: {e}", dir.display()),
        )),
    }
}

fn check_private(dir: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(dir)?;
    let ours = meta.uid() == nix::unistd::getuid().as_raw();
    // Others may at most pass through (see `allow_traversal`), never list or write.
    if !meta.is_dir() || !ours || meta.mode() & 0o066 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} must be a directory owned by this user with mode 0700 (or 0711)",
                dir.display()
            ),
        ));
    }
    Ok(())
}

/// Removes host directories under `base` whose owner is gone (their lock can be taken).
pub(crate) fn sweep_stale(base: &Path) {
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with(HOST_DIR_PREFIX) {
            continue;
        }
        let dir = entry.path();
        if is_abandoned(&dir) {
            match fs::remove_dir_all(&dir) {
                Ok(()) => tracing::info!(path = %dir.display(), "swept a dead host's leftovers"),
                Err(e) => tracing::warn!(path = %dir.display(), error = %e, "could not sweep"),
            }
        }
    }
}

fn is_abandoned(dir: &Path) -> bool {
    match File::open(dir.join(LOCK_FILE)) {
        // A live host holds the lock; if we can take it, nobody does.
        Ok(lock) => lock.try_lock().is_ok(),
        // No lock file: a host that died between mkdir and lock, or debris.
        Err(e) => e.kind() == io::ErrorKind::NotFound,
    }
}

/// Eight random hex digits.
pub(crate) fn short_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_private_dir_and_removes_it_on_drop() {
        let base = tempfile::tempdir().unwrap();
        let dir = HostDir::create(Some(base.path())).unwrap();
        let mode = fs::metadata(dir.path()).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let x = dir.transfer_dir(1).unwrap();
        assert_eq!(fs::metadata(&x).unwrap().mode() & 0o777, 0o700);
        let path = dir.path().to_path_buf();
        drop(dir);
        assert!(!path.exists());
    }

    #[test]
    fn sweeps_unlocked_dirs_but_not_live_ones() {
        let base = tempfile::tempdir().unwrap();
        let live = HostDir::create(Some(base.path())).unwrap();
        let dead = base.path().join("h-1-deadbeef");
        fs::create_dir_all(dead.join("x1")).unwrap();
        File::create(dead.join(LOCK_FILE)).unwrap();
        fs::write(dead.join("x1/leftover"), b"x").unwrap();
        let other = HostDir::create(Some(base.path())).unwrap();
        assert!(!dead.exists(), "stale dir swept");
        assert!(live.path().exists(), "live dir kept");
        drop((live, other));
    }
}
