//! The route table and path matching. The same table drives the router and the OpenAPI
//! document, so the two cannot disagree.
//!
//! Literal segments win over `{id}`: `GET /api/plugins/status` is the status route, never the
//! plugin named `status` (such names are reserved; see docs/API.md).

use super::errors::ApiError;
use http::Method;

/// What a route does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    /// `GET /api/plugins`
    ListLoaded,
    /// `GET /api/plugins/available`
    ListAvailable,
    /// `GET /api/plugins/health`
    Health,
    /// `GET /api/plugins/status`
    Status,
    /// `GET /api/plugins/events`
    Events,
    /// `POST /api/plugins/load`
    Load,
    /// `POST /api/plugins/execute`
    Execute,
    /// `POST /api/plugins/execute_stream`
    ExecuteStream,
    /// `GET /api/plugins/{id}`
    Get,
    /// `POST /api/plugins/{id}/unload`
    Unload,
    /// `POST /api/plugins/{id}/reload`
    Reload,
    /// `PUT /api/plugins/{id}/config`
    SetConfig,
    /// `GET /api/plugins/{id}/config`
    GetConfig,
    /// `GET /api/plugins/{id}/tasks`
    Tasks,
    /// `POST /api/plugins/{id}/tasks/{task}/run`
    RunTask,
    /// `POST /api/files`
    Upload,
    /// `GET /api/files/{download}`
    Download,
    /// `GET /api/openapi.json`
    OpenApi,
    /// `GET /metrics`
    Metrics,
}

/// One route: method, path template (`{id}` is a plugin id, `{download}` a download id,
/// `{task}` a task name, after `{id}`), and what it does.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Endpoint {
    pub(crate) method: &'static str,
    pub(crate) path: &'static str,
    pub(crate) op: Op,
}

const fn ep(method: &'static str, path: &'static str, op: Op) -> Endpoint {
    Endpoint { method, path, op }
}

/// Every route of the API.
pub(crate) const ENDPOINTS: &[Endpoint] = &[
    ep("GET", "/api/plugins", Op::ListLoaded),
    ep("GET", "/api/plugins/available", Op::ListAvailable),
    ep("GET", "/api/plugins/health", Op::Health),
    ep("GET", "/api/plugins/status", Op::Status),
    ep("GET", "/api/plugins/events", Op::Events),
    ep("POST", "/api/plugins/load", Op::Load),
    ep("POST", "/api/plugins/execute", Op::Execute),
    ep("POST", "/api/plugins/execute_stream", Op::ExecuteStream),
    ep("GET", "/api/plugins/{id}", Op::Get),
    ep("POST", "/api/plugins/{id}/unload", Op::Unload),
    ep("POST", "/api/plugins/{id}/reload", Op::Reload),
    ep("PUT", "/api/plugins/{id}/config", Op::SetConfig),
    ep("GET", "/api/plugins/{id}/config", Op::GetConfig),
    ep("GET", "/api/plugins/{id}/tasks", Op::Tasks),
    ep("POST", "/api/plugins/{id}/tasks/{task}/run", Op::RunTask),
    ep("POST", "/api/files", Op::Upload),
    ep("GET", "/api/files/{download}", Op::Download),
    ep("GET", "/api/openapi.json", Op::OpenApi),
    ep("GET", "/metrics", Op::Metrics),
];

/// A request matched to its route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Matched {
    pub(crate) op: Op,
    /// The `{id}` segment, for routes that have one.
    pub(crate) id: Option<String>,
    /// The `{task}` segment, for routes that have one.
    pub(crate) task: Option<String>,
}

/// The route of `method` on `path`, its `{id}` percent-decoded.
///
/// # Errors
/// 404 when no route has this path, 405 (with the allowed methods) when routes have it but
/// not with this method, 400 for an `{id}` that does not decode to UTF-8 without `/` or
/// control characters.
pub(crate) fn resolve(method: &Method, path: &str) -> Result<Matched, ApiError> {
    let candidates = matching(path);
    if let Some((endpoint, params)) = candidates.iter().find(|(e, _)| e.method == method.as_str()) {
        return Ok(Matched {
            op: endpoint.op,
            id: params.first().map(|p| decode_segment(p)).transpose()?,
            task: params.get(1).map(|p| decode_segment(p)).transpose()?,
        });
    }
    if candidates.is_empty() {
        return Err(ApiError::no_route(path));
    }
    let allow: Vec<&str> = candidates.iter().map(|(e, _)| e.method).collect();
    Err(ApiError::method_not_allowed(method.as_str(), path, &allow))
}

/// A path segment, percent-decoded (`ech%6F` is `echo`): it must decode to UTF-8 without `/`
/// or control characters.
fn decode_segment(raw: &str) -> Result<String, ApiError> {
    let decoded = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| {
            ApiError::bad_request(format!(
                "the path segment {raw:?} is not UTF-8 once percent-decoded"
            ))
        })?;
    if decoded.chars().any(|c| c == '/' || c.is_control()) {
        return Err(ApiError::bad_request(format!(
            "the path segment {raw:?} decodes to {decoded:?}, which holds '/' or a control character"
        )));
    }
    Ok(decoded.into_owned())
}

/// The endpoints whose template matches `path` (literal templates first, and only them when
/// any matches), each with its parameters in order.
fn matching(path: &str) -> Vec<(Endpoint, Vec<String>)> {
    let found: Vec<(Endpoint, Vec<String>)> = ENDPOINTS
        .iter()
        .filter_map(|e| template_match(e.path, path).map(|params| (*e, params)))
        .collect();
    let literal: Vec<_> = found
        .iter()
        .filter(|(_, params)| params.is_empty())
        .cloned()
        .collect();
    if literal.is_empty() {
        found
    } else {
        literal
    }
}

/// The parameters (in order; none for a literal template) when `path` fits `template`.
fn template_match(template: &str, path: &str) -> Option<Vec<String>> {
    let mut want = template.split('/');
    let mut got = path.split('/');
    let mut params = Vec::new();
    loop {
        match (want.next(), got.next()) {
            (None, None) => return Some(params),
            (Some(w), Some(seg)) if w.starts_with('{') && !seg.is_empty() => {
                params.push(seg.to_owned())
            }
            (Some(w), Some(g)) if w == g => {}
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(method: Method, path: &str) -> Result<Matched, u16> {
        resolve(&method, path).map_err(|e| e.status.as_u16())
    }

    #[test]
    fn literal_routes_win_over_ids() {
        let m = op(Method::GET, "/api/plugins/status").unwrap();
        assert_eq!((m.op, m.id), (Op::Status, None));
        let m = op(Method::GET, "/api/plugins/echo").unwrap();
        assert_eq!((m.op, m.id.as_deref()), (Op::Get, Some("echo")));
        let m = op(Method::PUT, "/api/plugins/echo/config").unwrap();
        assert_eq!((m.op, m.id.as_deref()), (Op::SetConfig, Some("echo")));
        let m = op(Method::POST, "/api/plugins/echo/tasks/greet/run").unwrap();
        assert_eq!(
            (m.op, m.id.as_deref(), m.task.as_deref()),
            (Op::RunTask, Some("echo"), Some("greet"))
        );
        assert_eq!(
            op(Method::GET, "/api/plugins/echo/tasks/greet/run"),
            Err(405)
        );
    }

    #[test]
    fn ids_are_percent_decoded_and_odd_ones_refused() {
        let m = op(Method::GET, "/api/plugins/ech%6F").unwrap();
        assert_eq!(m.id.as_deref(), Some("echo"));
        let m = op(Method::PUT, "/api/plugins/%65cho/config").unwrap();
        assert_eq!((m.op, m.id.as_deref()), (Op::SetConfig, Some("echo")));
        for bad in [
            "/api/plugins/a%2Fb",
            "/api/plugins/ec%00ho",
            "/api/plugins/%FF",
            "/api/plugins/a%0Ab",
        ] {
            assert_eq!(op(Method::GET, bad).map(|m| m.id), Err(400), "{bad}");
        }
    }

    #[test]
    fn unknown_paths_are_404_and_wrong_methods_405() {
        assert_eq!(op(Method::GET, "/nope"), Err(404));
        assert_eq!(op(Method::GET, "/api/plugins/"), Err(404));
        assert_eq!(op(Method::GET, "/api/plugins/echo/config/x"), Err(404));
        assert_eq!(op(Method::DELETE, "/api/plugins"), Err(405));
        assert_eq!(op(Method::GET, "/api/plugins/load"), Err(405));
        assert_eq!(op(Method::GET, "/api/plugins/echo/unload"), Err(405));
        let e = resolve(&Method::POST, "/metrics").unwrap_err();
        assert!(e.message.contains("GET"), "{}", e.message);
    }
}
