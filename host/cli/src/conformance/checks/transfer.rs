//! Section 14: file transfer, for a worker that announces `file_transfer` — content goes up by
//! its SHA-256 (`GET`/`PUT /v1/files/<sha256>`), a body whose digest differs is refused and
//! leaves nothing, content without a digest is named by the worker (`PUT /v1/files`, with
//! `streamed_upload`), and a file comes back and goes away by path (`GET`/`DELETE /v1/file`),
//! confined to the transfer directory as a file reference is.

use super::Ctx;
use plugvisor_proto::wire::routes;
use plugvisor_proto::ErrorKind;
use serde_json::Value;
use std::path::{Path, PathBuf};

const S14: &str = "§14 file transfer";

/// The content the kit uploads, made different on every run so the worker cannot hold it yet.
fn content() -> Vec<u8> {
    format!("plugvisor conformance {}\n", uuid::Uuid::new_v4())
        .repeat(2_000)
        .into_bytes()
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    format!("{:x}", Sha256::digest(data))
}

/// `?path=<path, percent-encoded>`.
fn file_query(path: &str) -> String {
    let mut query = String::from(routes::FILE);
    query.push_str("?path=");
    for b in path.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                query.push(char::from(b));
            }
            _ => query.push_str(&format!("%{b:02X}")),
        }
    }
    query
}

/// §14: every check of the section, or one skip when the worker does not take files.
pub(crate) async fn file_transfer(ctx: &mut Ctx<'_>) {
    if !ctx.has("file_transfer") {
        ctx.report.skip(
            S14,
            "content by SHA-256, checked on arrival; files back by path",
            "the worker does not announce `file_transfer` in /v1/info",
        );
        return;
    }
    let data = content();
    let sha = sha256_hex(&data);
    let at = format!("{}{sha}", routes::FILES_PREFIX);
    let result = ctx
        .call("GET", &at, None)
        .await
        .and_then(|a| ctx.expect_error(&a, ErrorKind::NotFound).map(drop));
    ctx.report.record(
        S14,
        "GET /v1/files/<sha256> of content it lacks is 404 not_found",
        result,
    );
    mismatch(ctx, &data).await;
    let stored = upload(ctx, &at, &data, &sha).await.map(|(path, _)| path);
    ctx.report.record(
        S14,
        "PUT /v1/files/<sha256> stores a body of that digest: {\"path\", \"size\"} in the transfer directory",
        stored.as_ref().map(drop).map_err(Clone::clone),
    );
    let Ok(path) = stored else {
        let why = "the upload failed";
        ctx.report.skip(S14, "GET /v1/files/<sha256> finds it", why);
        ctx.report
            .skip(S14, "GET /v1/file?path= streams it back", why);
        ctx.report
            .skip(S14, "DELETE /v1/file?path= removes it", why);
        return;
    };
    let result = ctx
        .call("GET", &at, None)
        .await
        .and_then(|a| match a.status {
            200 => same_place(&a.json()?, &path, data.len()),
            _ => Err(format!("expected 200, got {}", a.brief())),
        });
    ctx.report
        .record(S14, "GET /v1/files/<sha256> finds it", result);
    let shown = path.display().to_string();
    download(ctx, &shown, &data).await;
    remove(ctx, &shown, &path).await;
    outside(ctx).await;
    streamed(ctx).await;
}

/// With `streamed_upload`: `PUT /v1/files` (no digest) stores the body under the SHA-256 the
/// worker computes and answers it as `sha256`.
async fn streamed(ctx: &mut Ctx<'_>) {
    const WHAT: &str =
        "PUT /v1/files stores a body under the digest it has and answers {\"path\", \"size\", \"sha256\"}";
    if !ctx.has("streamed_upload") {
        let why = "the worker does not announce `streamed_upload` in /v1/info";
        ctx.report.skip(S14, WHAT, why);
        return;
    }
    let data = content();
    let sha = sha256_hex(&data);
    let stored = upload(ctx, routes::FILES, &data, &sha).await;
    let result = stored.and_then(|(path, body)| {
        let _ = std::fs::remove_file(&path);
        match body["sha256"].as_str() {
            Some(said) if said == sha => Ok(()),
            _ => Err(format!(
                "expected \"sha256\": {sha:?} in the answer, got {body}"
            )),
        }
    });
    ctx.report.record(S14, WHAT, result);
}

/// A body whose digest is not the one named is `400 bad_request` (checksum mismatch), and
/// nothing of it stays in the transfer directory.
async fn mismatch(ctx: &mut Ctx<'_>, data: &[u8]) {
    let before = entries(&ctx.worker.transfer_dir);
    let wrong = sha256_hex(b"not the content");
    let at = format!("{}{wrong}", routes::FILES_PREFIX);
    let result = ctx
        .call("PUT", &at, Some(data))
        .await
        .and_then(|a| ctx.expect_error(&a, ErrorKind::BadRequest))
        .and_then(|body| {
            let message = body["error"]["message"].as_str().unwrap_or_default();
            if !message.contains("checksum mismatch") {
                return Err(format!(
                    "the message does not say `checksum mismatch`: {message:?}"
                ));
            }
            let after = entries(&ctx.worker.transfer_dir);
            let new: Vec<_> = after.difference(&before).collect();
            match new.is_empty() {
                true => Ok(()),
                false => Err(format!("the refused body left files behind: {new:?}")),
            }
        });
    ctx.report.record(
        S14,
        "PUT with a wrong digest is 400 bad_request (checksum mismatch) and leaves nothing",
        result,
    );
}

/// `PUT` of `data` to `at`: the path it was stored at (checked: in the transfer directory,
/// named by `sha`, holding `data`) and the answer.
async fn upload(
    ctx: &mut Ctx<'_>,
    at: &str,
    data: &[u8],
    sha: &str,
) -> Result<(PathBuf, Value), String> {
    let answer = ctx.call("PUT", at, Some(data)).await?;
    if !(200..300).contains(&answer.status) {
        return Err(format!("expected a 2xx answer, got {}", answer.brief()));
    }
    let body = answer.json()?;
    let path = PathBuf::from(body["path"].as_str().ok_or("no `path` in the answer")?);
    same_place(&body, &path, data.len())?;
    if !path.starts_with(&ctx.worker.transfer_dir) {
        return Err(format!(
            "{} is not in the transfer directory {}",
            path.display(),
            ctx.worker.transfer_dir.display()
        ));
    }
    if !path.ends_with(sha) {
        return Err(format!("{} is not named by its digest", path.display()));
    }
    match std::fs::read(&path) {
        Ok(stored) if stored == data => Ok((path, body)),
        Ok(_) => Err(format!("{} does not hold the bytes sent", path.display())),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// The answer says `path` and `size`.
fn same_place(body: &Value, path: &Path, size: usize) -> Result<(), String> {
    let said = (body["path"].as_str(), body["size"].as_u64());
    match said {
        (Some(p), Some(s)) if Path::new(p) == path && s == size as u64 => Ok(()),
        _ => Err(format!(
            "expected {{\"path\": {:?}, \"size\": {size}}}, got {body}",
            path.display()
        )),
    }
}

/// `GET /v1/file?path=` answers the bytes with their `Content-Length`.
async fn download(ctx: &mut Ctx<'_>, path: &str, data: &[u8]) {
    let result = ctx
        .call("GET", &file_query(path), None)
        .await
        .and_then(|a| {
            if a.status != 200 {
                return Err(format!("expected 200, got {}", a.brief()));
            }
            if a.header("content-length") != Some(data.len().to_string().as_str()) {
                return Err(format!(
                    "content-length {:?}, not {}",
                    a.header("content-length"),
                    data.len()
                ));
            }
            match a.body == data {
                true => Ok(()),
                false => Err(format!("{} bytes that differ from the file", a.body.len())),
            }
        });
    ctx.report.record(
        S14,
        "GET /v1/file?path= streams the file back with its Content-Length",
        result,
    );
}

/// `DELETE /v1/file?path=` is `204` and the file is gone.
async fn remove(ctx: &mut Ctx<'_>, shown: &str, path: &Path) {
    let result = ctx
        .call("DELETE", &file_query(shown), None)
        .await
        .and_then(|a| match a.status {
            204 if path.exists() => Err("answered 204 but the file is still there".to_owned()),
            204 => Ok(()),
            _ => Err(format!("expected 204, got {}", a.brief())),
        });
    ctx.report
        .record(S14, "DELETE /v1/file?path= removes it (204)", result);
}

/// A path outside the transfer directory is `403 file_access_denied`, for both methods, and
/// the file is left alone.
async fn outside(ctx: &mut Ctx<'_>) {
    let dir = ctx.worker.transfer_dir.clone();
    let outside = dir.parent().unwrap_or(&dir).join("outside-transfer.txt");
    if std::fs::write(&outside, b"keep").is_err() {
        ctx.report.skip(
            S14,
            "GET and DELETE /v1/file outside the transfer directory are 403",
            "could not write a file beside the transfer directory",
        );
        return;
    }
    let query = file_query(&outside.display().to_string());
    let mut result = Ok(());
    for method in ["GET", "DELETE"] {
        result = result.and(
            ctx.call(method, &query, None)
                .await
                .and_then(|a| ctx.expect_error(&a, ErrorKind::FileAccessDenied).map(drop))
                .map_err(|e| format!("{method}: {e}")),
        );
    }
    if result.is_ok() && std::fs::read(&outside).ok().as_deref() != Some(b"keep".as_slice()) {
        result = Err("the file outside was changed or removed".to_owned());
    }
    let _ = std::fs::remove_file(&outside);
    ctx.report.record(
        S14,
        "GET and DELETE /v1/file outside the transfer directory are 403 file_access_denied",
        result,
    );
}

/// Every file under `dir` (directories are walked, not listed), for leftover checks.
fn entries(dir: &Path) -> std::collections::BTreeSet<PathBuf> {
    let mut found = std::collections::BTreeSet::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        let Ok(read) = std::fs::read_dir(&next) else {
            continue;
        };
        for entry in read.filter_map(Result::ok) {
            let path = entry.path();
            match entry.file_type() {
                Ok(t) if t.is_dir() => pending.push(path),
                _ => {
                    found.insert(path);
                }
            }
        }
    }
    found
}
