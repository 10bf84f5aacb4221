//! A UI plugin's files at `/ui/plugins/<plugin>/…`: only for a loaded plugin with a `ui`
//! table, only beneath its assets directory (no `..`, no encoded separator, no dot file, no
//! symlink leading out), with a content type by extension and the plugins' strict policy.

use super::{secure, PLUGIN_CSP};
use crate::api::errors::{ApiError, ApiKind};
use crate::api::files::file_reply;
use crate::api::plugin_routes::percent_decode;
use crate::api::reply::{self, Reply};
use crate::PluginManager;
use bytes::Bytes;
use http::header::{HeaderValue, LOCATION};
use http::StatusCode;
use std::path::{Path, PathBuf};

/// The file of `rest` (the path after `/ui/plugins/`) of a loaded UI plugin; `path` is the
/// whole request path (for messages and the redirect of `/ui/plugins/<plugin>`).
///
/// # Errors
/// 400 for a path that tries to leave the directory, 404 for a plugin that is not loaded or
/// has no UI, and for a missing file.
pub(crate) async fn serve(
    manager: &PluginManager,
    path: &str,
    rest: &str,
) -> Result<Reply, ApiError> {
    let Some((plugin, file)) = rest.split_once('/') else {
        return redirect_to_dir(path, rest);
    };
    let plugin = percent_decode(plugin).map_err(|why| refused(path, why))?;
    let segments = segments(file).map_err(|why| refused(path, why))?;
    let dir = manager
        .ui_dir(&plugin)
        .ok_or_else(|| not_found(format!("no loaded UI plugin {plugin:?}")))?;
    let found = beneath(&dir, &segments)
        .await
        .ok_or_else(|| not_found(format!("no file {path}")))?;
    let opened = tokio::fs::File::open(&found).await;
    let file = opened.map_err(|_| not_found(format!("no file {path}")))?;
    let size = file.metadata().await.map(|m| m.len()).unwrap_or(0);
    let answer = file_reply(file, size, content_type(&found));
    Ok(secure(answer, PLUGIN_CSP))
}

/// `/ui/plugins/<plugin>` → `/ui/plugins/<plugin>/`, so the page's relative links resolve.
fn redirect_to_dir(path: &str, plugin: &str) -> Result<Reply, ApiError> {
    let name_like = !plugin.is_empty()
        && plugin
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !name_like {
        return Err(not_found(format!("no file {path}")));
    }
    let location = HeaderValue::from_str(&format!("{path}/"))
        .map_err(|_| not_found(format!("no file {path}")))?;
    let mut answer = reply::with_body(StatusCode::PERMANENT_REDIRECT, "text/plain", Bytes::new());
    answer.headers_mut().insert(LOCATION, location);
    Ok(answer)
}

/// The decoded segments of `file` (`""` and a trailing `/` mean `index.html`).
///
/// # Errors
/// An empty segment (`//`), a `.` or `..` segment (plain or encoded), an encoded `/` or `\`,
/// a control character, bad `%`-escapes.
fn segments(file: &str) -> Result<Vec<String>, &'static str> {
    let parts: Vec<&str> = file.split('/').collect();
    let mut out = Vec::with_capacity(parts.len());
    for (i, part) in parts.iter().enumerate() {
        if part.is_empty() {
            if i + 1 == parts.len() {
                out.push(crate::ui::INDEX.to_owned());
                continue;
            }
            return Err("an empty segment (//)");
        }
        let decoded = percent_decode(part)?;
        if decoded.contains(['/', '\\']) || decoded.chars().any(char::is_control) {
            return Err("a segment holds an encoded '/', a '\\' or a control character");
        }
        if decoded == "." || decoded == ".." {
            return Err("'.' and '..' segments are not served");
        }
        out.push(decoded);
    }
    Ok(out)
}

/// The regular file `segments` names beneath `dir`, after every symlink is resolved; `None`
/// when it does not exist, is not a regular file, is a dot file, or lies outside `dir`.
async fn beneath(dir: &Path, segments: &[String]) -> Option<PathBuf> {
    if segments.iter().any(|s| s.starts_with('.')) {
        return None;
    }
    let root = tokio::fs::canonicalize(dir).await.ok()?;
    let wanted = segments.iter().fold(root.clone(), |p, s| p.join(s));
    let real = tokio::fs::canonicalize(&wanted).await.ok()?;
    let is_file = tokio::fs::metadata(&real).await.ok()?.is_file();
    (is_file && real.starts_with(&root)).then_some(real)
}

/// The content type of a UI file, by its extension (`application/octet-stream` if unknown;
/// with `nosniff`, a browser will not run or style with it).
fn content_type(path: &Path) -> &'static str {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    match ext.as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "txt" => "text/plain; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "woff" => "font/woff",
        "wasm" => "application/wasm",
        _ => "application/octet-stream",
    }
}

fn refused(path: &str, why: &str) -> ApiError {
    ApiError::bad_request(format!("path {path:?}: {why}"))
}

fn not_found(message: String) -> ApiError {
    ApiError::new(ApiKind::Wire(plugvisor_proto::ErrorKind::NotFound), message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_decoded_and_tricks_refused() {
        assert_eq!(segments("").unwrap(), ["index.html"]);
        assert_eq!(segments("a/").unwrap(), ["a", "index.html"]);
        assert_eq!(segments("panel%2Ejs").unwrap(), ["panel.js"]);
        for bad in [
            "..", "a/../b", "%2e%2e/x", "%2E", ".", "a//b", "a%2fb", "a%5cb", "a%00", "%zz",
        ] {
            assert!(segments(bad).is_err(), "{bad} was accepted");
        }
    }

    #[tokio::test]
    async fn only_regular_files_beneath_the_directory_are_found() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("ui");
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("index.html"), "<p>hi</p>").unwrap();
        std::fs::write(dir.join(".secret"), "no").unwrap();
        std::fs::write(root.path().join("outside.txt"), "no").unwrap();
        std::os::unix::fs::symlink(root.path().join("outside.txt"), dir.join("link.txt")).unwrap();
        std::os::unix::fs::symlink(dir.join("index.html"), dir.join("sub/inner.html")).unwrap();
        let seg = |p: &str| segments(p).unwrap();
        assert!(beneath(&dir, &seg("")).await.is_some());
        assert!(beneath(&dir, &seg("sub/inner.html")).await.is_some());
        assert!(
            beneath(&dir, &seg("link.txt")).await.is_none(),
            "a symlink led out"
        );
        assert!(beneath(&dir, &seg(".secret")).await.is_none());
        assert!(beneath(&dir, &seg("sub")).await.is_none(), "a directory");
        assert!(beneath(&dir, &seg("missing.js")).await.is_none());
    }

    #[test]
    fn content_types_follow_the_extension() {
        assert_eq!(
            content_type(Path::new("a/INDEX.HTML")),
            "text/html; charset=utf-8"
        );
        assert_eq!(
            content_type(Path::new("p.js")),
            "text/javascript; charset=utf-8"
        );
        assert_eq!(content_type(Path::new("p.css")), "text/css; charset=utf-8");
        assert_eq!(content_type(Path::new("p")), "application/octet-stream");
    }
}
