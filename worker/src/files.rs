//! File references for plugin code: [`open`] an input, [`create_output`] for a result.
//!
//! Inside a worker both functions work in the transfer directory the worker was given
//! (`--transfer-dir` / `PLUGVISOR_TRANSFER_DIR`): inputs are opened with the same checks the
//! server applies before calling the plugin, outputs are created there for the host to adopt.
//! A plugin used in-process (no worker) opens paths directly, still refusing symlinks, and
//! creates outputs in [`std::env::temp_dir`].
//!
//! ```no_run
//! use plugvisor_proto::{FileRef, PluginError};
//! use std::io::{Read, Write};
//!
//! fn copy(input: &FileRef) -> Result<FileRef, PluginError> {
//!     let mut data = Vec::new();
//!     plugvisor_worker::files::open(input)?
//!         .read_to_end(&mut data)
//!         .map_err(PluginError::failed)?;
//!     let (mut out, path) = plugvisor_worker::files::create_output("copy.bin")?;
//!     out.write_all(&data).map_err(PluginError::failed)?;
//!     Ok(FileRef::new(path, data.len() as u64))
//! }
//! ```

use crate::transfer::{self, TransferDir};
use nix::fcntl::{self, OFlag};
use nix::sys::stat::Mode;
use plugvisor_proto::{FileRef, PluginError};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

static TRANSFER_DIR: OnceLock<TransferDir> = OnceLock::new();

/// The transfer directory of this worker process, once `run` or `serve` has set it.
pub fn transfer_dir() -> Option<&'static Path> {
    TRANSFER_DIR.get().map(TransferDir::path)
}

/// Opens the regular file `file` refers to, read-only.
///
/// # Errors
/// [`PluginError::FileAccess`] naming the path and the reason when the path lies outside the
/// transfer directory, contains `.`/`..`, is or passes through a symlink, does not exist, or
/// is not a regular file.
pub fn open(file: &FileRef) -> Result<File, PluginError> {
    match TRANSFER_DIR.get() {
        Some(dir) => dir.open_ref(file),
        None => open_in_process(&file.path),
    }
}

/// Creates a new, uniquely named, empty file (mode 0600) for output and returns it with its
/// absolute path. `name_hint` becomes the end of the name (sanitized), e.g. `"data.gz"`.
///
/// Return the path to the host as a [`FileRef`]; the host adopts the file and deletes it.
///
/// # Errors
/// [`PluginError::FileAccess`] when the file cannot be created.
pub fn create_output(name_hint: &str) -> Result<(File, PathBuf), PluginError> {
    // A sandboxed worker may write only in its output area (the host names it).
    let output_dir = std::env::var_os(plugvisor_proto::wire::OUTPUT_DIR_ENV);
    if output_dir.is_none() {
        if let Some(dir) = TRANSFER_DIR.get() {
            return dir.create(name_hint);
        }
    }
    let dir_path = output_dir.map_or_else(std::env::temp_dir, PathBuf::from);
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let dir = fcntl::open(&dir_path, flags, Mode::empty())
        .map_err(|e| transfer::denied(&dir_path, transfer::errno_reason(e)))?;
    transfer::create_unique(std::os::fd::AsFd::as_fd(&dir), &dir_path, name_hint)
}

/// Makes `path` the process's transfer directory for [`open`] and [`create_output`].
///
/// The first call wins: a process serving twice with different directories (tests) keeps the
/// first for these helpers, while each server still checks references against its own.
pub(crate) fn install(path: &Path) -> std::io::Result<()> {
    let dir = TransferDir::open(path)?;
    let installed = TRANSFER_DIR.get_or_init(|| dir);
    if installed.path() != std::path::absolute(path)? {
        tracing::warn!(
            installed = %installed.path().display(),
            requested = %path.display(),
            "a transfer directory is already installed for files::open; keeping the first"
        );
    }
    Ok(())
}

/// In-process open: no directory to stay beneath, but still no symlink and a regular file.
fn open_in_process(path: &Path) -> Result<File, PluginError> {
    let flags = OFlag::O_RDONLY
        | OFlag::O_CLOEXEC
        | OFlag::O_NOFOLLOW
        | OFlag::O_NONBLOCK
        | OFlag::O_NOCTTY;
    let fd = fcntl::open(path, flags, Mode::empty())
        .map_err(|e| transfer::denied(path, transfer::errno_reason(e)))?;
    transfer::regular_file(fd).map_err(|reason| transfer::denied(path, reason))
}
