//! File-backed data on the host side: staging inputs into a worker's transfer directory and
//! adopting the files a worker returns.
//!
//! Ownership rules (docs/PROTOCOL.md, "File references"):
//! - A `FileRef` in an input that points outside the worker's transfer directory is staged for
//!   the call: hard-linked in (no copy) when on the same filesystem, copied otherwise. The staged
//!   link is deleted when the call ends, however it ends ([`StagedInputs`] is a drop guard).
//! - [`StagedFile`] is a file the caller placed in the transfer directory (from a
//!   [`FileBacked`] value); it lives until the caller drops it.
//! - A `FileRef` in an output must lie inside the transfer directory; the caller adopts it as an
//!   [`OutputFile`], deleted on drop unless [`persist`](OutputFile::persist)ed.

use plugvisor_proto::file_ref::{contains_file_refs, rewrite_file_refs, visit_file_refs};
use plugvisor_proto::{FileBacked, FileRef, PluginError, Value};
use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

/// Links staged for one call; removed when dropped.
#[derive(Debug, Default)]
pub(crate) struct StagedInputs {
    paths: Vec<PathBuf>,
}

impl StagedInputs {
    fn contains(&self, path: &Path) -> bool {
        self.paths.iter().any(|p| p == path)
    }
}

impl Drop for StagedInputs {
    fn drop(&mut self) {
        for path in &self.paths {
            remove_quietly(path);
        }
    }
}

/// Rewrites every foreign `FileRef` in `input` to a staged link inside `dir`. For a worker
/// running as another user (`other_user`), a file that user could not read is staged as a
/// copy readable by it (never by changing the caller's file).
///
/// Runs blocking file operations; call it from `spawn_blocking` for inputs with file refs.
///
/// # Errors
/// [`PluginError::InvalidInput`] naming the path when a referenced file is missing or is not a
/// regular file; links staged before the failure are removed.
pub(crate) fn stage_inputs(
    dir: &Path,
    input: &mut Value,
    other_user: bool,
) -> Result<StagedInputs, PluginError> {
    let mut staged = StagedInputs::default();
    if !contains_file_refs(input) {
        return Ok(staged);
    }
    rewrite_file_refs::<RefError>(input, &mut |file| {
        if is_inside(dir, &file.path) {
            return Ok(file);
        }
        let linked = link_or_copy(dir, &file, other_user).map_err(RefError)?;
        staged.paths.push(linked.path.clone());
        Ok(linked)
    })
    .map_err(|e| e.0)?;
    Ok(staged)
}

/// A walker error: a malformed reference reads as [`PluginError::InvalidInput`].
struct RefError(PluginError);

impl From<String> for RefError {
    fn from(message: String) -> Self {
        Self(PluginError::InvalidInput(message))
    }
}

impl From<PluginError> for RefError {
    fn from(err: PluginError) -> Self {
        Self(err)
    }
}

fn link_or_copy(dir: &Path, file: &FileRef, other_user: bool) -> Result<FileRef, PluginError> {
    let source = &file.path;
    let meta = fs::metadata(source).map_err(|e| {
        PluginError::InvalidInput(format!("file reference {}: {e}", source.display()))
    })?;
    if !meta.is_file() {
        return Err(PluginError::InvalidInput(format!(
            "file reference {} is not a regular file",
            source.display()
        )));
    }
    let target = dir.join(format!(
        "in-{}-{}",
        crate::dirs::short_id(),
        safe_name(source)
    ));
    // Another user can read a link only to a file anyone may read.
    let linkable = !other_user || meta.mode() & 0o004 != 0;
    if !linkable || fs::hard_link(source, &target).is_err() {
        copy_readable(source, &target, other_user).map_err(|e| {
            remove_quietly(&target);
            PluginError::InvalidInput(format!("cannot stage {}: {e}", source.display()))
        })?;
    }
    Ok(FileRef {
        path: target,
        size: meta.len(),
        media_type: file.media_type.clone(),
    })
}

/// Copies `source` to `target`; with `other_user`, readable by anyone who reaches it (the
/// worker's own directory is private to the worker's user).
fn copy_readable(source: &Path, target: &Path, other_user: bool) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::copy(source, target)?;
    if other_user {
        fs::set_permissions(target, fs::Permissions::from_mode(0o644))?;
    }
    Ok(())
}

fn safe_name(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect()
}

/// True when `path` lies inside `dir` lexically: absolute, under `dir`, no `..` or `.`.
pub(crate) fn is_inside(dir: &Path, path: &Path) -> bool {
    let Ok(rest) = path.strip_prefix(dir) else {
        return false;
    };
    rest.components().count() > 0 && rest.components().all(|c| matches!(c, Component::Normal(_)))
}

/// Adopts every `FileRef` in `output` (except this call's own staged inputs).
///
/// # Errors
/// [`PluginError::Protocol`] when the worker returned a reference outside its transfer
/// directory; nothing is adopted then (the caller's files are never deleted on a worker's word).
pub(crate) fn adopt_outputs(
    dir: &Path,
    output: &Value,
    staged: &StagedInputs,
) -> Result<Vec<OutputFile>, PluginError> {
    // The usual output (a stream item, a small answer) names no file: no set, no visitor.
    if !plugvisor_proto::file_ref::contains_file_refs(output) {
        return Ok(Vec::new());
    }
    let mut found = Vec::new();
    let mut seen = HashSet::new();
    visit_file_refs::<RefError>(output, &mut |file| {
        if !is_inside(dir, &file.path) {
            return Err(RefError(PluginError::Protocol(format!(
                "worker returned a file reference outside its transfer directory: {}",
                file.path.display()
            ))));
        }
        // A symlink would lead the caller to a file the worker may not read itself.
        if fs::symlink_metadata(&file.path).is_ok_and(|m| !m.is_file()) {
            return Err(RefError(PluginError::Protocol(format!(
                "worker returned a file reference to something that is not a regular file: {}",
                file.path.display()
            ))));
        }
        if !staged.contains(&file.path) && seen.insert(file.path.clone()) {
            found.push(file);
        }
        Ok(())
    })
    .map_err(|e| match e.0 {
        PluginError::InvalidInput(m) => PluginError::Protocol(format!("worker output: {m}")),
        other => other,
    })?;
    Ok(found.into_iter().map(OutputFile::adopt).collect())
}

fn remove_quietly(path: &Path) {
    if let Err(e) = fs::remove_file(path) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %e, "could not remove transfer file");
        }
    }
}

/// A file the caller placed in a worker's transfer directory; deleted when dropped.
///
/// Made by [`crate::RemotePlugin::stage`] from any [`FileBacked`] value. Put
/// [`StagedFile::to_value`] into inputs; the worker reads the file in place.
#[derive(Debug)]
pub struct StagedFile {
    file: FileRef,
}

impl StagedFile {
    pub(crate) fn create(dir: &Path, data: &dyn FileBacked) -> io::Result<Self> {
        let file = data.to_temp_file(dir)?;
        if !is_inside(dir, &file.path) {
            remove_quietly(&file.path);
            return Err(io::Error::other(format!(
                "FileBacked::to_temp_file wrote {} outside {}",
                file.path.display(),
                dir.display()
            )));
        }
        Ok(Self { file })
    }

    /// The reference to put into an input.
    pub fn file_ref(&self) -> &FileRef {
        &self.file
    }

    /// The tagged JSON form of the reference.
    pub fn to_value(&self) -> Value {
        self.file.to_value()
    }
}

impl Drop for StagedFile {
    fn drop(&mut self) {
        remove_quietly(&self.file.path);
    }
}

/// A file a worker returned, owned by the caller: deleted on drop unless persisted.
#[derive(Debug)]
pub struct OutputFile {
    file: Option<FileRef>,
}

impl OutputFile {
    fn adopt(file: FileRef) -> Self {
        Self { file: Some(file) }
    }

    /// The reference as the worker returned it.
    pub fn file_ref(&self) -> Option<&FileRef> {
        self.file.as_ref()
    }

    /// Where the file is now (inside the worker's transfer directory).
    pub fn path(&self) -> Option<&Path> {
        self.file.as_ref().map(|f| f.path.as_path())
    }

    /// Gives up ownership without deleting: the file then lives as long as its directory.
    pub(crate) fn disarm(mut self) {
        self.file = None;
    }

    /// Moves the file to `dest` (renaming, or copying across filesystems) and keeps it.
    /// Only a regular file is kept: a worker could have left a symlink there (to a file it
    /// may not read itself), which is never followed.
    ///
    /// # Errors
    /// Any I/O error, or `InvalidData` when the output is not a regular file; the file (or
    /// whatever is there) is then removed.
    pub fn persist(mut self, dest: impl AsRef<Path>) -> io::Result<PathBuf> {
        let dest = dest.as_ref().to_path_buf();
        let Some(file) = self.file.as_ref() else {
            return Err(io::Error::other("output file already released"));
        };
        if fs::rename(&file.path, &dest).is_err() {
            copy_no_follow(&file.path, &dest)?;
            remove_quietly(&file.path);
        }
        // Moved out of the worker's reach: what is at `dest` now cannot change under us.
        if !fs::symlink_metadata(&dest)?.is_file() {
            remove_quietly(&dest);
            return Err(not_regular(&file.path));
        }
        self.file = None;
        Ok(dest)
    }
}

/// Copies the regular file at `source` (never through a symlink) to a new file `dest`.
fn copy_no_follow(source: &Path, dest: &Path) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut from = fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(source)?;
    if !from.metadata()?.is_file() {
        return Err(not_regular(source));
    }
    let mut to = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dest)?;
    io::copy(&mut from, &mut to).map(|_| ())
}

fn not_regular(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "{} is not a regular file (a symlink is never followed)",
            path.display()
        ),
    )
}

impl Drop for OutputFile {
    fn drop(&mut self) {
        if let Some(file) = self.file.take() {
            remove_quietly(&file.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn foreign_refs_are_linked_in_and_removed_after() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let src = outside.path().join("data bin");
        fs::write(&src, b"hello").unwrap();
        let mut input = json!({"a": [{"f": FileRef::new(&src, 0).to_value()}]});
        let staged = stage_inputs(dir.path(), &mut input, false).unwrap();
        let file = FileRef::from_value(&input["a"][0]["f"]).unwrap().unwrap();
        assert!(is_inside(dir.path(), &file.path));
        assert_eq!(file.size, 5);
        assert_eq!(fs::read(&file.path).unwrap(), b"hello");
        drop(staged);
        assert!(!file.path.exists());
        assert!(src.exists(), "the caller's file is never touched");
    }

    #[test]
    fn missing_file_is_invalid_input_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut input = FileRef::new("/nonexistent/zz", 1).to_value();
        let err = stage_inputs(dir.path(), &mut input, false).unwrap_err();
        assert!(matches!(&err, PluginError::InvalidInput(m) if m.contains("/nonexistent/zz")));
    }

    #[test]
    fn outputs_outside_the_dir_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let out = FileRef::new("/etc/passwd", 1).to_value();
        let err = adopt_outputs(dir.path(), &out, &StagedInputs::default()).unwrap_err();
        assert!(matches!(err, PluginError::Protocol(_)));
        let sneaky = FileRef::new(dir.path().join("../x"), 1).to_value();
        assert!(adopt_outputs(dir.path(), &sneaky, &StagedInputs::default()).is_err());
    }

    #[test]
    fn adopted_outputs_are_deleted_unless_persisted() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        fs::write(&a, b"a").unwrap();
        fs::write(&b, b"b").unwrap();
        let out = json!([
            FileRef::new(&a, 1).to_value(),
            FileRef::new(&b, 1).to_value()
        ]);
        let mut files = adopt_outputs(dir.path(), &out, &StagedInputs::default()).unwrap();
        let kept = dir.path().join("kept");
        files.pop().unwrap().persist(&kept).unwrap();
        drop(files);
        assert!(!a.exists() && !b.exists());
        assert_eq!(fs::read(&kept).unwrap(), b"b");
    }

    #[test]
    fn a_symlink_is_neither_adopted_nor_persisted() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        fs::write(&secret, "s").unwrap();
        let link = dir.path().join("out-link");
        std::os::unix::fs::symlink(&secret, &link).unwrap();
        let out = json!({"file": FileRef::new(&link, 1).to_value()});
        let err = adopt_outputs(dir.path(), &out, &StagedInputs::default()).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        // Swapped in after adoption: persist refuses it and keeps nothing.
        let dest = dir.path().join("kept");
        let swapped = OutputFile::adopt(FileRef::new(&link, 1));
        let err = swapped.persist(&dest).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(fs::symlink_metadata(&dest).is_err() && fs::symlink_metadata(&link).is_err());
        assert_eq!(fs::read(&secret).unwrap(), b"s");
    }
}
