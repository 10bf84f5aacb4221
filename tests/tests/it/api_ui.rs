//! The status page and UI plugins' assets over HTTP (no browser): served without the token,
//! with their policies; plugin assets only for a loaded UI plugin, only beneath its directory;
//! the `ui` kind's contract at load; and what `PluginInfo` says for the page.

use crate::api::{assert_error, echo, manifest, Api};
use plugvisor_manager::api::ApiOptions;
use plugvisor_tests::http::Client;
use plugvisor_tests::serially;
use serde_json::json;
use std::path::Path;

/// A UI plugin's assets, a file outside them and a symlink leading there.
fn assets(root: &Path) -> std::path::PathBuf {
    let dir = root.join("panel-ui");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("index.html"), "<!doctype html><p>panel</p>").unwrap();
    std::fs::write(dir.join("app.js"), "\"use strict\";").unwrap();
    std::fs::write(dir.join("sub/index.html"), "<p>sub</p>").unwrap();
    std::fs::write(dir.join(".hidden"), "no").unwrap();
    std::fs::write(root.join("secret.txt"), "no").unwrap();
    std::os::unix::fs::symlink(root.join("secret.txt"), dir.join("link.txt")).unwrap();
    dir
}

fn panel(dir: &Path) -> (String, String) {
    let ui = format!(
        "kind = \"ui\"\nui = {{ dir = \"{}\", mount_point = \"toolbar\" }}",
        dir.display()
    );
    manifest("panel", "echo-panel", &ui)
}

#[test]
fn the_page_needs_no_token_and_plugin_assets_stay_in_their_directory() {
    serially(async {
        let root = tempfile::tempdir().unwrap();
        let dir = assets(root.path());
        let options = ApiOptions {
            token: Some("s3cret".to_owned()),
            ..ApiOptions::default()
        };
        let api = Api::start(&[echo(), panel(&dir)], options).await;
        let anon = &api.client;
        let c = anon.with_token("s3cret");
        the_page_is_public_and_strict(anon).await;
        assert_error(&anon.get("/ui/plugins/panel/").await, 404, "not_found");
        for id in ["echo", "panel"] {
            let loaded = c.post("/api/plugins/load", &json!({"plugin_id": id})).await;
            assert_eq!(loaded.status, 200, "{}", loaded.text());
        }
        assets_are_served_beneath_their_directory(anon).await;
        // A sandboxed panel's requests come as Origin: null, Sec-Fetch-Site: cross-site: its
        // files are served, the API refuses the same headers even with the token.
        let framed = anon
            .with_header("Origin", "null")
            .with_header("Sec-Fetch-Site", "cross-site");
        assert_eq!(framed.get("/ui/plugins/panel/app.js").await.status, 200);
        let api_call = framed.with_token("s3cret").get("/api/plugins").await;
        assert_error(&api_call, 403, "forbidden_origin");
        // Host is still checked (DNS rebinding).
        let rebound = anon
            .with_header("Host", "attacker.example:8620")
            .get("/")
            .await;
        assert_error(&rebound, 403, "forbidden_host");
        let unloaded = c.post("/api/plugins/panel/unload", &json!({})).await;
        assert_eq!(unloaded.status, 200, "{}", unloaded.text());
        assert_error(&anon.get("/ui/plugins/panel/").await, 404, "not_found");
        api.finish().await;
    })
}

async fn the_page_is_public_and_strict(anon: &Client) {
    assert_error(&anon.get("/api/plugins").await, 401, "unauthorized");
    let page = anon.get("/").await;
    assert_eq!(page.status, 200, "{}", page.text());
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let csp = page.header("content-security-policy").unwrap();
    for rule in [
        "default-src 'none'",
        "script-src 'self'",
        "connect-src 'self'",
        "frame-src 'self'",
        "frame-ancestors 'none'",
        "form-action 'none'",
    ] {
        assert!(csp.contains(rule), "{rule} missing from {csp}");
    }
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(page.header("cache-control"), Some("no-store"));
    assert!(page.text().contains("src=\"/ui/status.js\""));
    let script = anon.get("/ui/status.js").await;
    assert_eq!(
        script.header("content-type"),
        Some("text/javascript; charset=utf-8")
    );
    assert_eq!(anon.get("/ui/status.css").await.status, 200);
    assert_error(&anon.get("/ui/other.js").await, 404, "not_found");
    let post = anon.post("/", &json!({})).await;
    assert_error(&post, 405, "method_not_allowed");
    assert_eq!(post.header("allow"), Some("GET, HEAD"));
}

async fn assets_are_served_beneath_their_directory(anon: &Client) {
    let index = anon.get("/ui/plugins/panel/").await;
    assert_eq!(index.status, 200, "{}", index.text());
    assert_eq!(index.text(), "<!doctype html><p>panel</p>");
    assert_eq!(
        index.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(index.header("x-content-type-options"), Some("nosniff"));
    let csp = index.header("content-security-policy").unwrap();
    for rule in [
        "sandbox allow-scripts",
        "connect-src 'none'",
        "frame-ancestors 'self'",
    ] {
        assert!(csp.contains(rule), "{rule} missing from {csp}");
    }
    let bare = anon.get("/ui/plugins/panel").await;
    assert_eq!(bare.status, 308);
    assert_eq!(bare.header("location"), Some("/ui/plugins/panel/"));
    let js = anon.get("/ui/plugins/panel/app.js").await;
    assert_eq!(
        js.header("content-type"),
        Some("text/javascript; charset=utf-8")
    );
    assert_eq!(
        anon.get("/ui/plugins/panel/sub/").await.text(),
        "<p>sub</p>"
    );
    for missing in [
        "/ui/plugins/panel/nope.js",
        "/ui/plugins/panel/link.txt",
        "/ui/plugins/panel/.hidden",
        "/ui/plugins/panel/sub",
        "/ui/plugins/echo/",
        "/ui/plugins/nobody/",
    ] {
        assert_error(&anon.get(missing).await, 404, "not_found");
    }
    for trick in [
        "/ui/plugins/panel/../panel/app.js",
        "/ui/plugins/panel/%2e%2e/%2e%2e/api/plugins",
        "/ui/plugins/panel/..%2f..%2fsecret.txt",
        "/ui/plugins/panel/sub%5c..%5capp.js",
        "/ui/plugins/panel//app.js",
    ] {
        assert_error(&anon.get(trick).await, 400, "bad_request");
    }
}

#[test]
fn plugin_info_has_counts_routes_and_the_panel() {
    serially(async {
        let root = tempfile::tempdir().unwrap();
        let dir = assets(root.path());
        let chaos = manifest("chaos", "chaos", "");
        let api = Api::start(&[echo(), panel(&dir), chaos], ApiOptions::default()).await;
        let c = &api.client;
        for id in ["echo", "panel", "chaos"] {
            let loaded = c.post("/api/plugins/load", &json!({"plugin_id": id})).await;
            assert_eq!(loaded.status, 200, "{}", loaded.text());
        }
        for text in ["a", "b"] {
            let body = json!({"plugin_id": "echo", "input": text});
            assert_eq!(c.post("/api/plugins/execute", &body).await.status, 200);
        }
        let recent = c.get("/plugins/echo/recent").await.json();
        assert_eq!(recent["total"], 2, "{recent}");
        assert_eq!(recent["outputs"][0]["output"], "b", "{recent}");
        let failing = json!({"plugin_id": "chaos", "input": {"fault": "panic_in_call"}});
        assert_error(
            &c.post("/api/plugins/execute", &failing).await,
            500,
            "plugin_failed",
        );
        let echo_info = c.get("/api/plugins/echo").await.json();
        // Two calls and the route request to /recent.
        assert_eq!(echo_info["calls_total"], 3, "{echo_info}");
        assert_eq!(echo_info["errors_total"], 0, "{echo_info}");
        assert_eq!(echo_info["ui"], json!(null));
        let routes = echo_info["routes"].as_array().unwrap();
        assert!(
            routes.contains(&json!({"method": "GET", "path": "/plugins/echo/recent",
                "summary": "Its last outputs, newest first"})),
            "{routes:?}"
        );
        let chaos_info = c.get("/api/plugins/chaos").await.json();
        assert_eq!(
            (&chaos_info["calls_total"], &chaos_info["errors_total"]),
            (&json!(1), &json!(1))
        );
        let panel_info = c.get("/api/plugins/panel").await.json();
        assert_eq!(
            panel_info["ui"],
            json!({"mount_point": "toolbar", "url": "/ui/plugins/panel/"})
        );
        assert_eq!(panel_info["kind"], "ui");
        api.finish().await;
    })
}

#[test]
fn a_ui_plugin_without_its_index_does_not_load() {
    serially(async {
        let root = tempfile::tempdir().unwrap();
        let empty = root.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        let api = Api::start(&[panel(&empty)], ApiOptions::default()).await;
        let c = &api.client;
        let refused = c
            .post("/api/plugins/load", &json!({"plugin_id": "panel"}))
            .await;
        assert_error(&refused, 422, "invalid_manifest");
        let message = refused.error_message();
        assert!(
            message.contains("panel.toml") && message.contains("holds no index.html"),
            "{message}"
        );
        let available = c.get("/api/plugins/available").await.json();
        let errors = available["manifest_errors"].to_string();
        assert!(errors.contains("holds no index.html"), "{errors}");
        api.finish().await;
    })
}
