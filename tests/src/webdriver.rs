//! Headless Chromium for the browser tests: chromedriver started on a free loopback port, a
//! small W3C WebDriver client over [`crate::http::Client`], and the end of every process it
//! started, by PID (never by name).
//!
//! Chromium and chromedriver get a private `HOME`, `TMPDIR` and profile directory (removed at
//! the end), so a test run leaves nothing in the real home directory.

use crate::http::{Answer, Client};
use crate::{proc_entries, process_state};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The browser the tests drive (Debian package `chromium`).
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// Its driver (Debian package `chromium-driver`).
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// The key of a web element reference in W3C WebDriver answers.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// How long chromedriver may take to be ready.
const DRIVER_START: Duration = Duration::from_secs(30);

/// A running chromedriver, and every process it started that was ever seen.
pub struct Driver {
    child: Option<Child>,
    client: Client,
    seen: BTreeSet<u32>,
    dirs: tempfile::TempDir,
}

impl Driver {
    /// Starts chromedriver on a free loopback port and waits until it is ready.
    pub async fn start() -> Self {
        let dirs = tempfile::tempdir().expect("a directory for the browser");
        for sub in ["home", "tmp", "profile"] {
            std::fs::create_dir(dirs.path().join(sub)).expect("browser directories");
        }
        let port = free_port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .env("HOME", dirs.path().join("home"))
            .env("TMPDIR", dirs.path().join("tmp"))
            .env("XDG_CONFIG_HOME", dirs.path().join("home/.config"))
            .env("XDG_CACHE_HOME", dirs.path().join("home/.cache"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut driver = Self {
            child: Some(child),
            client: Client::new(addr),
            seen: BTreeSet::new(),
            dirs,
        };
        driver.wait_ready().await;
        driver
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + DRIVER_START;
        loop {
            if let Ok(answer) = self.try_get("/status").await {
                if answer.json()["value"]["ready"] == json!(true) {
                    return;
                }
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            assert!(exited.is_none(), "chromedriver exited: {exited:?}");
            assert!(Instant::now() < deadline, "chromedriver not ready in time");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A GET that fails instead of panicking while nothing listens yet.
    async fn try_get(&self, path: &str) -> Result<Answer, ()> {
        tokio::net::TcpStream::connect(self.client.addr)
            .await
            .map_err(|_| ())?;
        Ok(self.client.get(path).await)
    }

    /// The private profile directory for a session.
    pub fn profile_dir(&self) -> PathBuf {
        self.dirs.path().join("profile")
    }

    /// A browser session: headless Chromium with a fresh profile, as root-safe as the CI
    /// needs (`--no-sandbox`), with nothing phoning home.
    pub async fn session(&mut self) -> Session {
        let profile = self.profile_dir();
        let args = [
            "--headless".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--window-size=1400,900".to_owned(),
            format!("--user-data-dir={}", profile.display()),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
        }}});
        let answer = self.client.post("/session", &caps).await;
        let value = value_of("POST /session", &answer);
        let id = value["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session id in {value}"))
            .to_owned();
        self.track();
        Session {
            client: self.client.clone(),
            id,
        }
    }

    /// Remembers every process now below chromedriver (the browser and its helpers).
    pub fn track(&mut self) {
        if let Some(child) = &self.child {
            self.seen.extend(descendants(child.id()));
        }
    }

    /// The processes chromedriver started that were seen so far.
    pub fn seen(&self) -> Vec<u32> {
        self.seen.iter().copied().collect()
    }

    /// Ends chromedriver (SIGTERM, then SIGKILL after 5 s) and waits for it; returns its pid
    /// and every process it was seen to start.
    pub async fn stop(mut self) -> Vec<u32> {
        self.track();
        let mut pids = self.seen();
        if let Some(mut child) = self.child.take() {
            pids.push(child.id());
            end_child(&mut child).await;
        }
        pids
    }

    /// The driver's private directory (removed when the driver is dropped).
    pub fn dir(&self) -> &Path {
        self.dirs.path()
    }
}

impl Drop for Driver {
    /// A failed test still ends what it started: every process below chromedriver, then
    /// chromedriver itself, each by its PID.
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        self.track();
        for pid in &self.seen {
            if process_state(*pid).is_some_and(|s| s != 'Z') {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(*pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// SIGTERM, a grace period, SIGKILL; always reaped.
async fn end_child(child: &mut Child) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if child.try_wait().ok().flatten().is_some() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// One browser session.
pub struct Session {
    client: Client,
    id: String,
}

impl Session {
    async fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let path = format!("/session/{}{path}", self.id);
        let answer = match body {
            Some(body) => {
                let bytes = body.to_string();
                self.client
                    .send(method, &path, Some(bytes.as_bytes()))
                    .await
            }
            None => self.client.send(method, &path, None).await,
        };
        value_of(&format!("{method} {path}"), &answer)
    }

    /// Navigates to `url` and waits for the page to load.
    pub async fn goto(&self, url: &str) {
        self.call("POST", "/url", Some(&json!({ "url": url })))
            .await;
    }

    /// Runs `script` (a function body; `arguments` are `args`) and returns its value.
    pub async fn script(&self, script: &str, args: Value) -> Value {
        let body = json!({ "script": script, "args": args });
        self.call("POST", "/execute/sync", Some(&body)).await
    }

    /// Runs `script`, which calls its last argument with the result, and returns that.
    pub async fn script_async(&self, script: &str, args: Value) -> Value {
        let body = json!({ "script": script, "args": args });
        self.call("POST", "/execute/async", Some(&body)).await
    }

    /// The first element matching the CSS `selector` (a web element reference).
    pub async fn find(&self, selector: &str) -> Value {
        let body = json!({ "using": "css selector", "value": selector });
        let element = self.call("POST", "/element", Some(&body)).await;
        assert!(
            element.get(ELEMENT_KEY).is_some(),
            "not an element: {element}"
        );
        element
    }

    /// Clicks `element` as a user would.
    pub async fn click(&self, element: &Value) {
        let path = format!("/element/{}/click", element_id(element));
        self.call("POST", &path, Some(&json!({}))).await;
    }

    /// Types `text` into `element`.
    pub async fn type_into(&self, element: &Value, text: &str) {
        let path = format!("/element/{}/value", element_id(element));
        self.call("POST", &path, Some(&json!({ "text": text })))
            .await;
    }

    /// Makes `frame` (an iframe element) the context of later commands.
    pub async fn enter_frame(&self, frame: &Value) {
        self.call("POST", "/frame", Some(&json!({ "id": frame })))
            .await;
    }

    /// Returns to the parent of the current frame.
    pub async fn leave_frame(&self) {
        self.call("POST", "/frame/parent", Some(&json!({}))).await;
    }

    /// A PNG of the window.
    pub async fn screenshot(&self) -> Vec<u8> {
        let value = self.call("GET", "/screenshot", None).await;
        let text = value.as_str().expect("a base64 screenshot");
        base64_decode(text).expect("valid base64")
    }

    /// Ends the session (the browser exits).
    pub async fn quit(self) {
        self.call("DELETE", "", None).await;
    }
}

/// The `value` of a WebDriver answer; panics with the driver's error otherwise.
fn value_of(what: &str, answer: &Answer) -> Value {
    let doc = answer.json();
    assert!(
        answer.status == 200,
        "{what}: WebDriver answered {}: {}",
        answer.status,
        doc["value"]
    );
    doc["value"].clone()
}

/// The id of a web element reference.
fn element_id(element: &Value) -> &str {
    element[ELEMENT_KEY]
        .as_str()
        .unwrap_or_else(|| panic!("not an element: {element}"))
}

/// Every process below `pid` (children, their children, …).
pub fn descendants(pid: u32) -> Vec<u32> {
    let all = proc_entries();
    let mut found = Vec::new();
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for p in all.iter().filter(|p| p.ppid == parent) {
            found.push(p.pid);
            frontier.push(p.pid);
        }
    }
    found
}

/// The processes of `pids` that still run (zombies left to init are not running).
pub fn still_running(pids: &[u32]) -> Vec<(u32, char)> {
    pids.iter()
        .filter_map(|&p| process_state(p).map(|s| (p, s)))
        .filter(|(_, s)| *s != 'Z')
        .collect()
}

/// A loopback port nothing listens on right now.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("its address").port()
}

/// Decodes standard base64 (with or without padding).
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let digits: Vec<u8> = text
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
        .collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for group in digits.chunks(4) {
        let mut n = 0u32;
        for (i, c) in group.iter().enumerate() {
            n |= value(*c)? << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..group.len()]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_decodes_with_and_without_padding() {
        assert_eq!(base64_decode("aGk=").unwrap(), b"hi");
        assert_eq!(base64_decode("aGk").unwrap(), b"hi");
        assert_eq!(base64_decode("aGVsbG8gd29ybGQ=").unwrap(), b"hello world");
        assert_eq!(base64_decode("iVBORw0KGgo=").unwrap(), b"\x89PNG\r\n\x1a\n");
        assert!(base64_decode("a*b=").is_none());
    }
}
