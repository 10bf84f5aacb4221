//! Where a manifest's `command` and `args` point: a path relative to the manifest, a binary
//! beside `plugvisor`, or a program on `PATH`; `./` and `../` arguments beside the manifest.

use crate::manifest::Discovered;
use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The program `found`'s `command` names. With a `/` it is a path, relative to the manifest's
/// directory unless absolute; a bare name is looked up in `worker_dir` (beside `plugvisor`)
/// first, then in each directory of `PATH`.
///
/// # Errors
/// Why nothing was found, naming every place looked at.
pub fn resolve_command(found: &Discovered, worker_dir: &Path) -> Result<PathBuf, String> {
    let command = &found.manifest.command;
    if command.contains('/') {
        let program = manifest_dir(found).join(command);
        return if program.is_file() {
            Ok(program)
        } else {
            Err(format!(
                "worker binary {} does not exist",
                program.display()
            ))
        };
    }
    let beside = worker_dir.join(command);
    if beside.is_file() {
        return Ok(beside);
    }
    on_path(command, std::env::var_os("PATH")).ok_or_else(|| {
        format!(
            "worker binary {} does not exist, and PATH has no executable {command:?}",
            beside.display()
        )
    })
}

/// `found`'s `args`, each one that starts with `./` or `../` joined to the manifest's
/// directory; the others as written.
pub fn resolve_args(found: &Discovered) -> Vec<OsString> {
    let dir = manifest_dir(found);
    found
        .manifest
        .args
        .iter()
        .map(|arg| {
            if arg.starts_with("./") || arg.starts_with("../") {
                dir.join(arg).into_os_string()
            } else {
                OsString::from(arg)
            }
        })
        .collect()
}

fn manifest_dir(found: &Discovered) -> &Path {
    found.dir()
}

/// The first executable file `name` in the directories of `path` (a `PATH` value).
pub(crate) fn on_path(name: &str, path: Option<OsString>) -> Option<PathBuf> {
    let path = path?;
    std::env::split_paths(&path)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_name_is_found_on_path_and_relative_args_beside_the_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let tool = bin.join("tool");
        std::fs::write(&tool, "#!/bin/sh\n").unwrap();
        let path = std::env::join_paths([Path::new("relative"), &bin]).unwrap();
        assert_eq!(on_path("tool", Some(path.clone())), None);
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(on_path("tool", Some(path.clone())), Some(tool));
        assert_eq!(on_path("other", Some(path)), None);
        let text = "name = \"t\"\nversion = \"1.0.0\"\ncommand = \"sh\"\n\
                    args = [\"./run.sh\", \"../up\", \"-c\", \"x/y\"]\n";
        let file = dir.path().join("m").join("t.toml");
        let found = Discovered::from_file(
            crate::manifest::Manifest::parse_file(text, &file).unwrap(),
            file.clone(),
        );
        let m = dir.path().join("m");
        let expected: Vec<OsString> = vec![
            m.join("./run.sh").into(),
            m.join("../up").into(),
            "-c".into(),
            "x/y".into(),
        ];
        assert_eq!(resolve_args(&found), expected);
    }
}
