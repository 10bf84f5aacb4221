//! Middleware plugins: the `[middleware]` manifest table, the host paths a middleware may
//! cover, and the links of the chain a host request passes through.

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use plugvisor_proto::wire::Hook;
use serde::{Deserialize, Serialize};

/// The host paths a middleware may cover: the two call routes, and plugin routes. The rest of
/// the API (load, config, files…) carries secrets and management power no plugin may see or
/// change.
pub const COVERABLE: &str = "/api/plugins/execute, /api/plugins/execute_stream, /plugins/**";

/// Default `priority`.
pub const DEFAULT_PRIORITY: i32 = 100;

/// The `[middleware]` table of a plugin of kind `middleware`.
///
/// ```toml
/// [middleware]
/// priority = 100              # lower runs first: its before_request first, after_response last
/// paths = ["/plugins/**"]     # globs: '*' one segment, '**' any number of segments
/// on_error = "fail_closed"    # "fail_closed" (default: 502 naming it) | "skip"
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MiddlewareManifest {
    /// Order in the chain; lower runs first (ties: by plugin name).
    #[serde(default = "default_priority")]
    pub priority: i32,
    /// The host paths it applies to, as globs over [`COVERABLE`] paths.
    pub paths: Vec<String>,
    /// What a failed hook (error, crash, timeout) does to the request.
    #[serde(default)]
    pub on_error: OnError,
}

fn default_priority() -> i32 {
    DEFAULT_PRIORITY
}

/// What a failed hook does to the request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// The request is answered 502, naming the middleware.
    #[default]
    FailClosed,
    /// The failure is logged and the chain goes on without it.
    Skip,
}

impl MiddlewareManifest {
    /// Rules serde cannot express; an error names the key it is about.
    pub(crate) fn check(&self) -> Result<(), (Option<&'static str>, String)> {
        if self.paths.is_empty() {
            let why =
                format!("[middleware] paths is empty: name the paths it covers ({COVERABLE})");
            return Err((Some("paths"), why));
        }
        for path in &self.paths {
            check_path(path)
                .map_err(|why| (Some("paths"), format!("[middleware] paths: {path:?} {why}")))?;
        }
        Ok(())
    }

    /// The compiled `paths`.
    pub(crate) fn scope(&self) -> Scope {
        let mut set = GlobSetBuilder::new();
        for path in &self.paths {
            if let Ok(glob) = glob(path) {
                set.add(glob);
            }
        }
        Scope(set.build().unwrap_or_else(|_| GlobSet::empty()))
    }
}

/// Whether `path` may be a middleware path: it compiles, and whatever it matches is coverable.
fn check_path(path: &str) -> Result<(), String> {
    glob(path).map_err(|e| format!("is not a valid glob: {}", e.kind()))?;
    let exact = ["/api/plugins/execute", "/api/plugins/execute_stream"];
    if exact.contains(&path) {
        return Ok(());
    }
    let rest = path
        .strip_prefix("/plugins/")
        .filter(|rest| !rest.is_empty())
        .ok_or_else(|| format!("is outside what a middleware may cover ({COVERABLE})"))?;
    if rest
        .split('/')
        .any(|s| s == ".." || s == "." || s.is_empty())
    {
        return Err("has an empty, '.' or '..' segment".to_owned());
    }
    Ok(())
}

fn glob(path: &str) -> Result<Glob, globset::Error> {
    GlobBuilder::new(path).literal_separator(true).build()
}

/// A middleware's compiled paths.
#[derive(Debug, Clone)]
pub(crate) struct Scope(GlobSet);

impl Scope {
    /// True when the (normalised) host path is covered.
    pub(crate) fn covers(&self, path: &str) -> bool {
        self.0.is_match(path)
    }
}

/// One middleware in a request's chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainLink {
    /// The middleware plugin.
    pub plugin: String,
    /// Its priority.
    pub priority: i32,
    /// What its failure does.
    pub on_error: OnError,
    /// The hooks it serves.
    pub hooks: Vec<Hook>,
}

impl ChainLink {
    /// True when it serves `hook`.
    pub fn serves(&self, hook: Hook) -> bool {
        self.hooks.contains(&hook)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(paths: &[&str]) -> MiddlewareManifest {
        MiddlewareManifest {
            priority: 1,
            paths: paths.iter().map(|p| (*p).to_owned()).collect(),
            on_error: OnError::default(),
        }
    }

    #[test]
    fn only_call_routes_and_plugin_routes_can_be_covered() {
        assert!(manifest(&["/plugins/**", "/api/plugins/execute"])
            .check()
            .is_ok());
        assert!(manifest(&["/plugins/echo/*"]).check().is_ok());
        for bad in [
            "/api/**",
            "/api/plugins/load",
            "/**",
            "/metrics",
            "/plugins/",
            "/plugins/../api",
        ] {
            let err = manifest(&[bad]).check().unwrap_err();
            assert_eq!(err.0, Some("paths"), "{bad}");
            assert!(err.1.contains(bad), "{bad}: {}", err.1);
        }
        assert!(manifest(&[]).check().is_err());
        assert!(manifest(&["/plugins/[x"])
            .check()
            .unwrap_err()
            .1
            .contains("glob"));
    }

    #[test]
    fn a_star_stays_in_its_segment_and_two_stars_cross_them() {
        let one = manifest(&["/plugins/echo/*"]).scope();
        assert!(one.covers("/plugins/echo/hello"));
        assert!(!one.covers("/plugins/echo/a/b"));
        assert!(!one.covers("/plugins/ticker/events"));
        let all = manifest(&["/plugins/**", "/api/plugins/execute"]).scope();
        assert!(all.covers("/plugins/ticker/events"));
        assert!(all.covers("/plugins/echo/a/b"));
        assert!(all.covers("/api/plugins/execute"));
        assert!(!all.covers("/api/plugins/execute_stream"));
        assert!(!all.covers("/api/plugins/load"));
    }
}
