//! Who may talk to the API from a browser: the `Host` check that stops DNS rebinding and the
//! `Origin` check that stops cross-site requests (CSRF), before authentication.
//!
//! A web page the operator visits can send requests to `127.0.0.1:8620` (a form post or a
//! `text/plain` fetch needs no CORS preflight), and a page on a domain that the attacker points
//! at 127.0.0.1 (DNS rebinding) can even read the answers. Browsers always send `Host` and, on
//! cross-origin writes, `Origin`; programs like curl and the CLI send no `Origin`. So:
//! - `Host` must name the server by an IP address, `localhost`, or a configured name;
//! - an `Origin`, when present, must be the server's own (`http://` + the `Host` it was asked
//!   by) or a configured one; `Sec-Fetch-Site: cross-site` is refused as well.
//!
//! The API sends no CORS headers, so no other origin is ever allowed to read an answer.

use super::errors::{ApiError, ApiKind};
use http::header::{HOST, ORIGIN};
use http::request::Parts;
use http::uri::Authority;
use std::net::IpAddr;

/// Names and origins the operator allows besides the built-in ones.
#[derive(Debug, Clone, Default)]
pub struct BrowserPolicy {
    /// Extra host names the server may be addressed by (`Host` header), e.g. `plugins.lan`.
    /// IP addresses and `localhost` are always accepted.
    pub allowed_hosts: Vec<String>,
    /// Extra origins allowed to call the API, exactly as browsers send them, e.g.
    /// `http://localhost:3000`.
    pub allowed_origins: Vec<String>,
}

/// Refuses a request whose `Host` or `Origin` says it comes from a web page it must not.
///
/// # Errors
/// 403 `forbidden_host` or `forbidden_origin`, naming the value and how to allow it.
pub(crate) fn check(parts: &Parts, policy: &BrowserPolicy) -> Result<(), ApiError> {
    let host = header(parts, HOST.as_str());
    if let Some(host) = host {
        check_host_name(host, policy)?;
    }
    if let Some(origin) = header(parts, ORIGIN.as_str()) {
        check_origin(origin, host, policy)?;
    }
    if header(parts, "sec-fetch-site") == Some("cross-site") {
        return Err(forbidden_origin(
            "the browser marked this request cross-site (Sec-Fetch-Site)".to_owned(),
        ));
    }
    Ok(())
}

/// Refuses a request whose `Host` is not a name of this server (DNS rebinding), without
/// looking at `Origin`: for static pages that hold no data (see `api/ui`).
///
/// # Errors
/// 403 `forbidden_host`, naming the value and how to allow it.
pub(crate) fn check_host(parts: &Parts, policy: &BrowserPolicy) -> Result<(), ApiError> {
    match header(parts, HOST.as_str()) {
        Some(host) => check_host_name(host, policy),
        None => Ok(()),
    }
}

fn header<'a>(parts: &'a Parts, name: &str) -> Option<&'a str> {
    parts
        .headers
        .get(name)
        .map(|v| v.to_str().unwrap_or("\u{fffd}"))
}

fn check_host_name(host: &str, policy: &BrowserPolicy) -> Result<(), ApiError> {
    let name = host.parse::<Authority>().ok().map(|a| {
        a.host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned()
    });
    let allowed = name.as_deref().is_some_and(|name| {
        name.parse::<IpAddr>().is_ok()
            || name.eq_ignore_ascii_case("localhost")
            || policy
                .allowed_hosts
                .iter()
                .any(|h| h.eq_ignore_ascii_case(name))
    });
    if allowed {
        return Ok(());
    }
    Err(ApiError::new(
        ApiKind::ForbiddenHost,
        format!(
            "Host {host:?} is not a name of this server: use an IP address or localhost, or \
             start the server with --allow-host NAME (this stops DNS-rebinding attacks)"
        ),
    ))
}

fn check_origin(origin: &str, host: Option<&str>, policy: &BrowserPolicy) -> Result<(), ApiError> {
    let same = host.is_some_and(|h| origin.eq_ignore_ascii_case(&format!("http://{h}")));
    let listed = policy.allowed_origins.iter().any(|o| o == origin);
    if same || listed {
        return Ok(());
    }
    Err(forbidden_origin(format!(
        "Origin {origin:?} may not call this API: a web page of another origin cannot use it \
         (allow one with --allow-origin ORIGIN)"
    )))
}

fn forbidden_origin(message: String) -> ApiError {
    ApiError::new(ApiKind::ForbiddenOrigin, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(headers: &[(&str, &str)]) -> Parts {
        let mut req = http::Request::builder().uri("/api/plugins");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.body(()).unwrap().into_parts().0
    }

    fn kind(headers: &[(&str, &str)], policy: &BrowserPolicy) -> Option<&'static str> {
        check(&parts(headers), policy)
            .err()
            .map(|e| e.kind.as_str())
    }

    #[test]
    fn programs_and_the_servers_own_pages_pass() {
        let p = BrowserPolicy::default();
        assert_eq!(kind(&[("host", "127.0.0.1:8620")], &p), None);
        assert_eq!(kind(&[("host", "[::1]:8620")], &p), None);
        assert_eq!(kind(&[("host", "LocalHost:8620")], &p), None);
        assert_eq!(kind(&[], &p), None);
        let own = [
            ("host", "localhost:8620"),
            ("origin", "http://localhost:8620"),
        ];
        assert_eq!(kind(&own, &p), None);
        let same_site = [("host", "127.0.0.1:1"), ("sec-fetch-site", "same-origin")];
        assert_eq!(kind(&same_site, &p), None);
    }

    #[test]
    fn rebinding_and_cross_site_requests_are_refused() {
        let p = BrowserPolicy::default();
        assert_eq!(
            kind(&[("host", "attacker.example:8620")], &p),
            Some("forbidden_host")
        );
        assert_eq!(kind(&[("host", "not a host")], &p), Some("forbidden_host"));
        let evil = [
            ("host", "127.0.0.1:8620"),
            ("origin", "http://evil.example"),
        ];
        assert_eq!(kind(&evil, &p), Some("forbidden_origin"));
        // Another port of the same machine is another origin.
        let port = [
            ("host", "127.0.0.1:8620"),
            ("origin", "http://127.0.0.1:9999"),
        ];
        assert_eq!(kind(&port, &p), Some("forbidden_origin"));
        assert_eq!(kind(&[("origin", "null")], &p), Some("forbidden_origin"));
        let marked = [("host", "127.0.0.1:1"), ("sec-fetch-site", "cross-site")];
        assert_eq!(kind(&marked, &p), Some("forbidden_origin"));
    }

    #[test]
    fn configured_names_and_origins_are_allowed() {
        let p = BrowserPolicy {
            allowed_hosts: vec!["plugins.lan".into()],
            allowed_origins: vec!["http://localhost:3000".into()],
        };
        assert_eq!(kind(&[("host", "Plugins.LAN:8620")], &p), None);
        let dev = [
            ("host", "127.0.0.1:8620"),
            ("origin", "http://localhost:3000"),
        ];
        assert_eq!(kind(&dev, &p), None);
    }
}
