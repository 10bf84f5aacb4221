//! The operator's web pages: the status page (`GET /`, its script and style, embedded in the
//! binary) and UI plugins' assets (`/ui/plugins/<plugin>/…`, read from the plugin's `ui.dir`).
//!
//! - `mod.rs`: which paths are pages, the checks they share, the security headers;
//! - `page.rs`: the embedded status page (`static/`: plain HTML, CSS and JavaScript);
//! - `assets.rs`: a loaded UI plugin's files, with path checks that never leave its directory.
//!
//! These answers hold no data (the page's script reads the API with the token the operator
//! types in), so they are served without the token. `Host` is checked as for the API
//! (DNS rebinding); `Origin` and `Sec-Fetch-Site` are not: a sandboxed panel has an opaque
//! origin and its script and style requests arrive as `Origin: null`, `Sec-Fetch-Site:
//! cross-site` (measured in Chromium), and only `GET` and `HEAD` are served here.

mod assets;
mod page;

use super::errors::ApiError;
use super::reply::Reply;
use super::{guard, Ctx};
use crate::manifest::under;
use http::header::{HeaderName, HeaderValue, CACHE_CONTROL, X_CONTENT_TYPE_OPTIONS};
use http::request::Parts;
use http::Method;

/// The status page's policy: its own script, style and API only; frames only from this
/// server (the UI plugins' panels); never framed itself.
pub(crate) const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; frame-src 'self'; frame-ancestors 'none'; \
     base-uri 'none'; form-action 'none'";

/// A UI plugin's policy: its own files only, no network (it asks the page through the
/// bridge), framed only by this server's page, and sandboxed even when opened on its own
/// (an opaque origin: no token, no storage of the page's origin, no same-origin API calls).
pub(crate) const PLUGIN_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; font-src 'self'; media-src 'self'; connect-src 'none'; \
     frame-ancestors 'self'; base-uri 'none'; form-action 'none'; sandbox allow-scripts";

/// The answer for the status page or a UI plugin's file; `None` when `parts` asks for
/// neither (the API and plugin routes then answer).
pub(crate) async fn answer(ctx: &Ctx, parts: &Parts) -> Option<Result<Reply, ApiError>> {
    let path = parts.uri.path();
    if path != "/" && !under(path, "/ui") {
        return None;
    }
    Some(serve(ctx, parts).await)
}

async fn serve(ctx: &Ctx, parts: &Parts) -> Result<Reply, ApiError> {
    guard::check_host(parts, &ctx.options.browser)?;
    let path = parts.uri.path();
    if parts.method != Method::GET && parts.method != Method::HEAD {
        return Err(ApiError::method_not_allowed(
            parts.method.as_str(),
            path,
            &["GET", "HEAD"],
        ));
    }
    match path.strip_prefix(crate::ui::ASSETS_PREFIX) {
        Some(rest) => assets::serve(&ctx.manager, path, rest).await,
        None => page::serve(path),
    }
}

/// Adds the headers every page answer carries: `csp`, `nosniff`, no caching, no referrer.
fn secure(mut reply: Reply, csp: &'static str) -> Reply {
    let headers = reply.headers_mut();
    headers.insert(
        HeaderName::from_static("content-security-policy"),
        HeaderValue::from_static(csp),
    );
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        HeaderName::from_static("referrer-policy"),
        HeaderValue::from_static("no-referrer"),
    );
    reply
}
