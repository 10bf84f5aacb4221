//! The status page, embedded in the binary: `GET /` (HTML), `/ui/status.js`, `/ui/status.css`.
//! No build step and nothing from elsewhere: the files in `static/` are served as they are.

use super::{secure, PAGE_CSP};
use crate::api::errors::ApiError;
use crate::api::reply::{self, Reply};
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::StatusCode;

/// The page's files: path, content type, bytes.
const FILES: [(&str, &str, &str); 3] = [
    (
        "/",
        "text/html; charset=utf-8",
        include_str!("static/index.html"),
    ),
    (
        "/ui/status.js",
        "text/javascript; charset=utf-8",
        include_str!("static/status.js"),
    ),
    (
        "/ui/status.css",
        "text/css; charset=utf-8",
        include_str!("static/status.css"),
    ),
];

/// The answer for `path`, one of the page's files.
///
/// # Errors
/// 404 for any other path under `/ui` that is not a plugin's.
pub(crate) fn serve(path: &str) -> Result<Reply, ApiError> {
    let (_, content_type, text) = FILES
        .iter()
        .find(|(p, _, _)| *p == path)
        .ok_or_else(|| ApiError::no_route(path))?;
    let body = Bytes::from_static(text.as_bytes());
    let mut answer = secure(
        reply::with_body(StatusCode::OK, content_type, body),
        PAGE_CSP,
    );
    let headers = answer.headers_mut();
    headers.insert(
        HeaderName::from_static("x-frame-options"),
        HeaderValue::from_static("DENY"),
    );
    headers.insert(
        HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    );
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_is_served_with_its_policy_and_other_paths_are_404() {
        let page = serve("/").unwrap();
        assert_eq!(page.status(), StatusCode::OK);
        let header = |name: &str| page.headers()[name].to_str().unwrap().to_owned();
        assert_eq!(header("content-type"), "text/html; charset=utf-8");
        assert!(header("content-security-policy").contains("frame-ancestors 'none'"));
        assert_eq!(header("x-content-type-options"), "nosniff");
        assert_eq!(header("cache-control"), "no-store");
        let script = serve("/ui/status.js").unwrap();
        assert_eq!(
            script.headers()["content-type"],
            "text/javascript; charset=utf-8"
        );
        assert_eq!(
            serve("/ui/nope.js").unwrap_err().status,
            StatusCode::NOT_FOUND
        );
        // The page loads nothing from elsewhere.
        for (_, _, text) in FILES {
            assert!(!text.contains("http://") && !text.contains("https://"));
        }
    }
}
