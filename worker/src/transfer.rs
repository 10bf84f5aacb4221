//! `TransferDir`: the one directory file references may point into, and safe opens beneath it.
//!
//! A reference is accepted only when its path is absolute, lies lexically inside the directory,
//! has no `.` or `..` components, and names a regular file reached without following any
//! symbolic link. The open itself is done relative to a descriptor of the directory with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, falling back to one `O_NOFOLLOW` open per
//! component on kernels (or sandboxes) without `openat2`.

use nix::errno::Errno;
use nix::fcntl::{self, FcntlArg, OFlag};
use nix::sys::stat::Mode;
use plugvisor_proto::{FileRef, PluginError};
use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A directory opened once, beneath which file references are resolved.
#[derive(Debug)]
pub(crate) struct TransferDir {
    path: PathBuf,
    fd: OwnedFd,
}

impl TransferDir {
    /// Opens `path` (made absolute, not canonicalized: references are compared lexically).
    pub(crate) fn open(path: &Path) -> std::io::Result<Self> {
        let path = std::path::absolute(path)?;
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let fd = fcntl::open(&path, flags, Mode::empty())?;
        Ok(Self { path, fd })
    }

    /// The directory's absolute path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the regular file `file` names, read-only, after every check of the module doc.
    pub(crate) fn open_ref(&self, file: &FileRef) -> Result<File, PluginError> {
        let rel = relative_inside(&self.path, &file.path).map_err(|r| denied(&file.path, r))?;
        let fd = open_beneath(self.fd.as_fd(), rel)
            .map_err(|errno| denied(&file.path, errno_reason(errno)))?;
        regular_file(fd).map_err(|reason| denied(&file.path, reason))
    }

    /// Creates a new, uniquely named file (mode 0600) in the directory.
    pub(crate) fn create(&self, name_hint: &str) -> Result<(File, PathBuf), PluginError> {
        create_unique(self.fd.as_fd(), &self.path, name_hint)
    }
}

/// The part of `path` below `dir`, or why `path` may not be used.
fn relative_inside<'a>(dir: &Path, path: &'a Path) -> Result<&'a Path, String> {
    if !path.is_absolute() {
        return Err("the path is not absolute".into());
    }
    let dotted = path
        .as_os_str()
        .as_bytes()
        .split(|b| *b == b'/')
        .any(|part| part == b"." || part == b"..");
    if dotted {
        return Err("the path contains a '.' or '..' component".into());
    }
    let rel = path.strip_prefix(dir).map_err(|_| {
        format!(
            "the path is outside the transfer directory {}",
            dir.display()
        )
    })?;
    if rel.as_os_str().is_empty() {
        return Err("the path names the transfer directory itself".into());
    }
    Ok(rel)
}

fn read_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_NOCTTY
}

/// Opens `rel` beneath `dir` without following symlinks or leaving `dir`.
fn open_beneath(dir: BorrowedFd<'_>, rel: &Path) -> nix::Result<OwnedFd> {
    use fcntl::{OpenHow, ResolveFlag};
    let how = OpenHow::new()
        .flags(read_flags())
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
    match fcntl::openat2(dir, rel, how) {
        // No openat2 (kernel < 5.6, or a seccomp filter): walk the components instead.
        Err(Errno::ENOSYS | Errno::EPERM) => open_by_components(dir, rel),
        other => other,
    }
}

/// The `openat2` fallback: one `O_NOFOLLOW` open per component, directories first.
fn open_by_components(dir: BorrowedFd<'_>, rel: &Path) -> nix::Result<OwnedFd> {
    let parts: Vec<&OsStr> = rel
        .components()
        .map(|c| match c {
            Component::Normal(part) => Ok(part),
            _ => Err(Errno::EXDEV),
        })
        .collect::<nix::Result<_>>()?;
    let dir_flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mut current: Option<OwnedFd> = None;
    for (i, part) in parts.iter().enumerate() {
        let base = current.as_ref().map_or(dir, |fd| fd.as_fd());
        let flags = if i + 1 == parts.len() {
            read_flags()
        } else {
            dir_flags
        };
        current = Some(fcntl::openat(base, *part, flags, Mode::empty())?);
    }
    current.ok_or(Errno::ENOENT)
}

/// Turns an open descriptor into a `File` if it is a regular file, in blocking mode.
pub(crate) fn regular_file(fd: OwnedFd) -> Result<File, String> {
    let file = File::from(fd);
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot stat the file: {e}"))?;
    if !meta.is_file() {
        return Err(format!("not a regular file ({})", file_kind(&meta)));
    }
    // Opened O_NONBLOCK so a FIFO could not block the open; regular files need no such flag.
    fcntl::fcntl(&file, FcntlArg::F_SETFL(OFlag::empty()))
        .map_err(|e| format!("cannot reset the file's flags: {e}"))?;
    Ok(file)
}

fn file_kind(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let kind = meta.file_type();
    match () {
        _ if kind.is_dir() => "a directory",
        _ if kind.is_symlink() => "a symbolic link",
        _ if kind.is_fifo() => "a FIFO",
        _ if kind.is_socket() => "a socket",
        _ if kind.is_block_device() || kind.is_char_device() => "a device",
        _ => "not a plain file",
    }
}

/// Why an open failed, in words.
pub(crate) fn errno_reason(errno: Errno) -> String {
    match errno {
        Errno::ELOOP => "the path is or passes through a symbolic link".into(),
        Errno::ENOENT => "no such file".into(),
        Errno::EXDEV => "the path escapes the transfer directory".into(),
        Errno::ENOTDIR => "a path component is not a directory".into(),
        Errno::EACCES | Errno::EPERM => "permission denied".into(),
        other => format!("cannot open: {}", other.desc()),
    }
}

/// The `file_access_denied` error for `path`.
pub(crate) fn denied(path: &Path, reason: impl std::fmt::Display) -> PluginError {
    PluginError::FileAccess(format!("{}: {reason}", path.display()))
}

/// Creates `out-<pid>-<seq>-<hint>` with `O_EXCL` in `dir`, retrying on a name clash.
pub(crate) fn create_unique(
    dir: BorrowedFd<'_>,
    dir_path: &Path,
    name_hint: &str,
) -> Result<(File, PathBuf), PluginError> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let hint = sanitize_hint(name_hint);
    let flags =
        OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mode = Mode::from_bits_truncate(0o600);
    for _ in 0..64 {
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let name = format!("out-{}-{}-{seq}-{hint}", std::process::id(), nanos());
        match fcntl::openat(dir, name.as_str(), flags, mode) {
            Ok(fd) => return Ok((File::from(fd), dir_path.join(name))),
            Err(Errno::EEXIST) => continue,
            Err(e) => return Err(denied(&dir_path.join(name), errno_reason(e))),
        }
    }
    Err(PluginError::failed(
        "could not find a free output file name",
    ))
}

fn nanos() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
}

/// Keeps `[A-Za-z0-9._-]`, at most 64 characters, never starting with a dot.
fn sanitize_hint(hint: &str) -> String {
    let clean: String = hint
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '_' | '-' => c,
            _ => '_',
        })
        .take(64)
        .collect();
    let clean = clean.trim_start_matches('.');
    if clean.is_empty() {
        "file".to_owned()
    } else {
        clean.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, TransferDir) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = TransferDir::open(tmp.path()).unwrap();
        (tmp, dir)
    }

    fn reason(dir: &TransferDir, path: &Path) -> String {
        dir.open_ref(&FileRef::new(path, 0))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn lexical_rules() {
        let dir = Path::new("/t/dir");
        assert!(relative_inside(dir, Path::new("/t/dir/a/b")).is_ok());
        for bad in [
            "rel/a",
            "/t/dir/../x",
            "/t/dir/./a",
            "/t/other/a",
            "/t/dirx/a",
            "/t/dir",
        ] {
            assert!(relative_inside(dir, Path::new(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn opens_regular_files_and_refuses_the_rest() {
        let (tmp, dir) = setup();
        std::fs::create_dir(tmp.path().join("sub")).unwrap();
        std::fs::write(tmp.path().join("sub/f"), b"x").unwrap();
        assert!(dir
            .open_ref(&FileRef::new(tmp.path().join("sub/f"), 1))
            .is_ok());
        std::os::unix::fs::symlink(tmp.path().join("sub/f"), tmp.path().join("link")).unwrap();
        std::os::unix::fs::symlink(tmp.path().join("sub"), tmp.path().join("dlink")).unwrap();
        assert!(reason(&dir, &tmp.path().join("link")).contains("symbolic link"));
        assert!(reason(&dir, &tmp.path().join("dlink/f")).contains("symbolic link"));
        assert!(reason(&dir, &tmp.path().join("sub")).contains("directory"));
        assert!(reason(&dir, &tmp.path().join("missing")).contains("no such file"));
        nix::unistd::mkfifo(&tmp.path().join("fifo"), Mode::from_bits_truncate(0o600)).unwrap();
        assert!(reason(&dir, &tmp.path().join("fifo")).contains("FIFO"));
    }

    #[test]
    fn component_fallback_refuses_symlinks_too() {
        let (tmp, dir) = setup();
        std::fs::create_dir(tmp.path().join("sub")).unwrap();
        std::fs::write(tmp.path().join("sub/f"), b"x").unwrap();
        std::os::unix::fs::symlink(tmp.path().join("sub"), tmp.path().join("dlink")).unwrap();
        assert!(open_by_components(dir.fd.as_fd(), Path::new("sub/f")).is_ok());
        let err = open_by_components(dir.fd.as_fd(), Path::new("dlink/f")).unwrap_err();
        assert!(matches!(err, Errno::ELOOP | Errno::ENOTDIR), "{err}");
    }

    #[test]
    fn creates_unique_private_files() {
        let (_tmp, dir) = setup();
        let (_, a) = dir.create("../evil name.gz").unwrap();
        let (_, b) = dir.create("../evil name.gz").unwrap();
        assert_ne!(a, b);
        assert_eq!(a.parent().unwrap(), dir.path());
        assert!(
            a.to_string_lossy().ends_with("-_evil_name.gz"),
            "{}",
            a.display()
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&a).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
