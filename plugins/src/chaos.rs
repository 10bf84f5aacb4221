//! `chaos`: a plugin that misbehaves on demand, to prove the host survives every fault.
//!
//! Input `{"fault": NAME, ...}`; faults that end the process do so mid-call:
//!
//! | fault | what happens |
//! |---|---|
//! | `none` | answers `{"ok": true, "pid": …}` |
//! | `panic` | a panic escapes to the process: exit code 101, `panicked at` on stderr |
//! | `panic_in_call` | a panic inside the call; the worker contains it (`plugin_failed`) |
//! | `abort` | `abort()`: SIGABRT |
//! | `segfault` | SIGSEGV with the default action, as an invalid memory access ends |
//! | `exit` | `{"code": N}`: exits with status N |
//! | `hang` | the call never finishes (the worker still answers health probes) |
//! | `deadlock` | the whole process freezes (SIGSTOP): even health probes stall |
//! | `sleep` | `{"ms": N}`: answers `{"slept_ms": N, "pid": …}` after N ms |
//! | `alloc` | `{"mib": N}`: allocates and touches N MiB and keeps it (a leak) |
//! | `stdout` | writes garbage to stdout (which the runtime has redirected to stderr) |
//! | `fork` | starts a grandchild (`sleep 3600`) that keeps running; answers its pid |
//! | `ignore_sigterm` | from now on SIGTERM is ignored and cleanup hangs |
//! | `spin` | burns CPU forever (to meet a CPU-time limit) |
//! | `crash_once` | `{"marker": PATH}`: aborts if PATH does not exist (creating it), else answers |
//! | `open_files` | `{"n": N}`: opens N files and keeps them, or none if one fails |
//! | `config` | answers `{"config": …}`, the configuration in force, secrets included (so a test can see what reached the worker) |
//! | `call_service` | `{"service": S, "input": V, "method"?: M, "timeout_ms"?: T, "repeat"?: N, "stream"?: true}`: calls service S through the host (N times; or streams from it, collecting the items) and answers `{"output": …, "nanos": [each call's time]}`, or `{"inner_error": {kind, message, crash?}}` when a call fails (the caller decides: it does not fail itself) |
//!
//! `execute_stream` with `{"fault": "stream_crash", "chunks": K}` yields K chunks, then aborts;
//! with `{"fault": "stream_fork"}` it starts a grandchild, yields `{"grandchild": pid}`, and
//! then never ends (a host to kill while a grandchild runs).
//! As a middleware (when a manifest of kind `middleware` runs `chaos-worker`), the request
//! header `x-chaos-hook: NAME` runs fault NAME in `before_request` (`report` answers 200 with
//! the request as the hook saw it; `body` adds `"chaos": true` to a JSON body), and
//! `x-chaos-after: NAME` runs it in `after_response`. Otherwise it appends `chaos` to the
//! `x-chain` header both ways and sets `x-chaos-saw` to the request header names it saw.
//! `CHAOS_HOOKS=before_request` (or `after_response`) declares only that hook.
//! Its own health check answers what `CHAOS_HEALTH` says: `pass` (the default), `warn`, `fail`,
//! or `hang` (never answers).
//! As an event subscriber it handles every event its manifest's `hooks` name, as
//! `CHAOS_EVENTS` says: `ok` (the default), `slow:<ms>` (takes that long), `fail` (answers an
//! error), `panic` (panics; the worker contains it), `crash` (aborts the process) or `hang`
//! (never answers).
//! Start-up faults come from the environment (see [`startup_fault`]) or the config
//! (`{"crash_on_initialize": true}` aborts in `initialize`, so a supervisor that re-applies the
//! config after each restart sees a crash loop; `{"initialize_delay_ms": N}` makes every
//! `initialize` take N ms, so a test can act while one runs; `{"accept_once_file": path}` is
//! taken by the first worker only, which creates `path`, and refused by every later one).

use futures_util::StreamExt;
use plugvisor_proto::wire::{
    AfterResponse, BeforeAction, EventDelivery, HealthReport, Hook, HookRequest, HookResponse,
    MethodSpec, RouteSpec, ServiceCall, ANY_EVENT,
};
use plugvisor_proto::{json, Plugin, PluginError, PluginStream, Value, WireError};
use plugvisor_worker::{
    Events, HealthCheck, Methods, Middleware, RouteRequest, RouteResponse, Routes,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Environment variable selecting a start-up fault (read by `chaos-worker` before serving).
pub const STARTUP_ENV: &str = "CHAOS_STARTUP";

/// Environment variable naming the middleware hooks chaos declares (default: both).
pub const HOOKS_ENV: &str = "CHAOS_HOOKS";

/// Environment variable with the verdict of chaos's own health check (`pass`, `warn`, `fail`,
/// `hang`).
pub const HEALTH_ENV: &str = "CHAOS_HEALTH";

/// Environment variable saying how chaos handles host events (`ok`, `slow:<ms>`, `fail`,
/// `panic`, `crash`, `hang`).
pub const EVENTS_ENV: &str = "CHAOS_EVENTS";

/// Memory kept alive by `alloc`, so it stays resident.
static LEAKED: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
/// Set by `ignore_sigterm`: cleanup then never finishes.
static HANG_CLEANUP: AtomicBool = AtomicBool::new(false);

/// The chaos plugin. Its configuration: `{"crash_on_initialize": bool, "api_key": string}`
/// (`api_key` is a `writeOnly` secret that does nothing: it shows that secrets are masked).
#[derive(Debug, Default)]
pub struct Chaos {
    config: Mutex<Value>,
}

impl Plugin for Chaos {
    fn name(&self) -> &str {
        "chaos"
    }

    fn version(&self) -> &str {
        env!("CARGO_PKG_VERSION")
    }

    async fn initialize(&self, config: Option<Value>) -> Result<(), PluginError> {
        let config = config.unwrap_or_else(|| json!({}));
        let crash = match config.get("crash_on_initialize") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                return Err(PluginError::invalid_config(format!(
                    "crash_on_initialize: must be a boolean, got {other}"
                )))
            }
        };
        if crash {
            eprintln!("chaos: crash_on_initialize is set; aborting");
            std::process::abort();
        }
        if let Some(ms) = config.get("initialize_delay_ms").and_then(Value::as_u64) {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        if let Some(marker) = config.get("accept_once_file").and_then(Value::as_str) {
            // The first worker to see this configuration takes it and leaves the file; every
            // later one refuses it (so a pool's rolling change is refused by its 2nd replica).
            let created = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(marker);
            if created.is_err() {
                return Err(PluginError::invalid_config(format!(
                    "accept_once_file: {marker} exists; another worker took this configuration"
                )));
            }
        }
        if let Ok(mut kept) = self.config.lock() {
            *kept = config;
        }
        Ok(())
    }

    async fn execute(&self, input: Value) -> Result<Value, PluginError> {
        let fault = input.get("fault").and_then(Value::as_str).unwrap_or("none");
        if fault == "config" {
            let pid = std::process::id();
            return Ok(json!({ "config": self.current_config(), "pid": pid }));
        }
        run_fault(fault, &input).await
    }

    async fn execute_stream(&self, input: Value) -> Result<PluginStream, PluginError> {
        if input.get("fault").and_then(Value::as_str) == Some("stream_fork") {
            let first = fork_grandchild();
            let forever = futures_util::stream::pending();
            return Ok(Box::pin(futures_util::stream::iter([first]).chain(forever)));
        }
        if input.get("fault").and_then(Value::as_str) != Some("stream_crash") {
            let value = self.execute(input).await?;
            return Ok(Box::pin(futures_util::stream::iter([Ok(value)])));
        }
        let chunks = input.get("chunks").and_then(Value::as_u64).unwrap_or(1);
        let items = futures_util::stream::iter(0..=chunks).then(move |i| async move {
            if i == chunks {
                eprintln!("chaos: crashing after {chunks} chunks");
                std::process::abort();
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
            Ok(json!({ "chunk": i }))
        });
        Ok(Box::pin(items))
    }

    fn config_schema(&self) -> Value {
        json!({
            "type": "object",
            "properties": {
                "crash_on_initialize": {"type": "boolean", "default": false},
                "initialize_delay_ms": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "Every initialize waits this long first (for tests)."
                },
                "accept_once_file": {
                    "type": "string",
                    "description": "Only the first worker to get this configuration takes it \
                        (creating this file); later ones refuse it (for tests)."
                },
                "api_key": {
                    "type": "string",
                    "writeOnly": true,
                    "description": "A secret, only to show that secrets are masked; never used."
                }
            },
            "additionalProperties": false
        })
    }

    fn current_config(&self) -> Value {
        self.config.lock().map(|c| c.clone()).unwrap_or(Value::Null)
    }

    async fn cleanup(&self) -> Result<(), PluginError> {
        if HANG_CLEANUP.load(Ordering::Acquire) {
            std::future::pending::<()>().await;
        }
        Ok(())
    }
}

/// Chaos's HTTP route: `GET /fault/{name}` runs a fault (`abort`, `panic_in_call`, `none`, …)
/// while answering an HTTP request.
impl Routes for Chaos {
    fn routes(&self) -> Vec<RouteSpec> {
        vec![RouteSpec::new("GET", "/fault/{name}").summary("Misbehaves while answering")]
    }

    async fn handle(&self, request: RouteRequest) -> Result<RouteResponse, PluginError> {
        let fault = request.params.get("name").cloned().unwrap_or_default();
        let answer = run_fault(&fault, &Value::Null).await?;
        Ok(RouteResponse::json(200, &answer))
    }
}

/// Chaos's named method: `fault` runs the fault its input names, as `execute` does (so a crash
/// inside a named method can be tested).
impl Methods for Chaos {
    fn methods(&self) -> Vec<MethodSpec> {
        vec![MethodSpec::new("fault").summary("Misbehaves as the input's `fault` says")]
    }

    async fn call_method(&self, _name: &str, input: Value) -> Result<Value, PluginError> {
        let fault = input.get("fault").and_then(Value::as_str).unwrap_or("none");
        run_fault(fault, &input).await
    }
}

/// Chaos's own health: whatever `CHAOS_HEALTH` says.
impl HealthCheck for Chaos {
    async fn health_check(&self) -> HealthReport {
        let wanted = std::env::var(HEALTH_ENV).unwrap_or_default();
        match wanted.as_str() {
            "warn" => HealthReport::warn("CHAOS_HEALTH says warn"),
            "fail" => HealthReport::fail("CHAOS_HEALTH says fail")
                .checks(json!({"chaos:env": [{"status": "fail", "observedValue": "fail"}]})),
            "hang" => std::future::pending().await,
            _ => HealthReport::pass(),
        }
    }
}

/// Chaos as an event subscriber: handles any event as `CHAOS_EVENTS` says.
impl Events for Chaos {
    fn events(&self) -> Vec<String> {
        vec![ANY_EVENT.to_owned()]
    }

    async fn on_event(&self, event: EventDelivery) -> Result<(), PluginError> {
        let how = std::env::var(EVENTS_ENV).unwrap_or_default();
        match how.as_str() {
            "" | "ok" => Ok(()),
            "fail" => Err(PluginError::failed(format!(
                "CHAOS_EVENTS says fail ({} of {})",
                event.event, event.plugin
            ))),
            "panic" => panic!("chaos: panic in an event hook"),
            "crash" => {
                eprintln!(
                    "chaos: crashing on event {} of {}",
                    event.event, event.plugin
                );
                std::process::abort()
            }
            "hang" => std::future::pending().await,
            slow => {
                let ms = slow.strip_prefix("slow:").and_then(|m| m.parse().ok());
                tokio::time::sleep(Duration::from_millis(ms.unwrap_or(0))).await;
                Ok(())
            }
        }
    }
}

/// Chaos as a middleware: faults on demand in either hook (see the module docs).
impl Middleware for Chaos {
    /// Both, or those named in `CHAOS_HOOKS` (comma-separated, e.g. `before_request`).
    fn hooks(&self) -> Vec<Hook> {
        let all = [Hook::BeforeRequest, Hook::AfterResponse];
        match std::env::var(HOOKS_ENV) {
            Ok(named) => all
                .into_iter()
                .filter(|h| named.split(',').any(|n| n.trim() == h.as_str()))
                .collect(),
            Err(_) => all.to_vec(),
        }
    }

    async fn before_request(&self, mut request: HookRequest) -> Result<BeforeAction, PluginError> {
        match request
            .header("x-chaos-hook")
            .unwrap_or("none")
            .to_owned()
            .as_str()
        {
            "none" => {}
            "report" => return Ok(BeforeAction::respond(200, json!({ "seen": request }))),
            "body" => {
                if let Some(Value::Object(body)) = request.body.as_mut() {
                    body.insert("chaos".into(), Value::Bool(true));
                }
            }
            fault => {
                run_fault(fault, &Value::Null).await?;
            }
        }
        let chain = crate::guard::appended(request.header("x-chain"), "chaos");
        request.headers.insert("x-chain".into(), chain);
        Ok(BeforeAction::proceed_with(request))
    }

    async fn after_response(&self, exchange: AfterResponse) -> Result<HookResponse, PluginError> {
        if let Some(fault) = exchange.request.header("x-chaos-after") {
            run_fault(fault, &Value::Null).await?;
        }
        let mut response = exchange.response;
        let chain = crate::guard::appended(response.header("x-chain"), "chaos");
        response.set_header("x-chain", chain);
        let saw: Vec<&str> = exchange
            .request
            .headers
            .keys()
            .map(String::as_str)
            .collect();
        response.set_header("x-chaos-saw", saw.join(","));
        Ok(response)
    }
}

async fn run_fault(fault: &str, input: &Value) -> Result<Value, PluginError> {
    let number = |key: &str| input.get(key).and_then(Value::as_u64).unwrap_or(0);
    match fault {
        "none" => Ok(json!({"ok": true, "pid": std::process::id()})),
        "panic" => escaped_panic(),
        "panic_in_call" => panic!("chaos: panic inside a call"),
        "abort" => std::process::abort(),
        "segfault" => segfault(),
        "exit" => std::process::exit(number("code") as i32),
        "hang" => std::future::pending().await,
        "deadlock" => freeze(),
        "sleep" => {
            tokio::time::sleep(Duration::from_millis(number("ms"))).await;
            Ok(json!({"slept_ms": number("ms"), "pid": std::process::id()}))
        }
        "alloc" => alloc(number("mib")),
        "stdout" => {
            println!("chaos: garbage on stdout \u{1} not a handshake");
            Ok(json!({"ok": true}))
        }
        "fork" => fork_grandchild(),
        "ignore_sigterm" => ignore_sigterm(),
        "spin" => spin(),
        "crash_once" => crash_once(input),
        "open_files" => open_files(number("n")),
        "call_service" => call_service(input).await,
        other => Err(PluginError::invalid_input(format!(
            "unknown fault {other:?}"
        ))),
    }
}

/// Calls the service `input` names through the host, `repeat` times (default once), timing
/// each call; a failed call is reported as data (`inner_error`), not as this call's error.
async fn call_service(input: &Value) -> Result<Value, PluginError> {
    let text = |key: &str| input.get(key).and_then(Value::as_str);
    let service = text("service").unwrap_or_default();
    let mut call = ServiceCall::new(input.get("input").cloned().unwrap_or(Value::Null));
    call.method = text("method").map(str::to_owned);
    call.timeout_ms = input.get("timeout_ms").and_then(Value::as_u64);
    let repeat = input.get("repeat").and_then(Value::as_u64).unwrap_or(1);
    let host = match plugvisor_worker::host() {
        Ok(host) => host,
        Err(e) => return Ok(inner_error(&e)),
    };
    if input.get("stream").and_then(Value::as_bool) == Some(true) {
        return Ok(stream_service(host, service, call.input).await);
    }
    let mut nanos = Vec::new();
    let mut output = Value::Null;
    for _ in 0..repeat.max(1) {
        let started = std::time::Instant::now();
        let result = host.call_with(service, call.clone()).await;
        nanos.push(started.elapsed().as_nanos() as u64);
        match result {
            Ok(value) => output = value,
            Err(e) => return Ok(inner_error(&e)),
        }
    }
    Ok(json!({"output": output, "nanos": nanos}))
}

/// Streams from `service`, collecting its items (an error ends the collection).
async fn stream_service(host: &plugvisor_worker::HostClient, service: &str, input: Value) -> Value {
    let mut items = match host.stream(service, input).await {
        Ok(items) => items,
        Err(e) => return inner_error(&e),
    };
    let mut collected = Vec::new();
    while let Some(item) = items.next().await {
        match item {
            Ok(value) => collected.push(value),
            Err(e) => return json!({"output": collected, "inner_error": WireError::from(&e)}),
        }
    }
    json!({ "output": collected })
}

fn inner_error(e: &PluginError) -> Value {
    json!({ "inner_error": WireError::from(e) })
}

/// A panic that takes the process down, as an uncaught panic in `main` does: the panic
/// message on stderr, then exit status 101.
fn escaped_panic() -> ! {
    let _ = std::thread::spawn(|| panic!("chaos: panic requested")).join();
    std::process::exit(101)
}

fn segfault() -> ! {
    use nix::sys::signal::{raise, signal, SigHandler, Signal};
    // SAFETY: restoring the default action of SIGSEGV installs no Rust code as a handler.
    // Rust's own handler (for stack overflows) would otherwise swallow a raised SIGSEGV.
    let _ = unsafe { signal(Signal::SIGSEGV, SigHandler::SigDfl) };
    let _ = raise(Signal::SIGSEGV);
    std::process::abort()
}

fn freeze() -> ! {
    let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGSTOP);
    // Only reached after a SIGCONT.
    std::process::abort()
}

fn alloc(mib: u64) -> Result<Value, PluginError> {
    let block = vec![0xA5u8; (mib as usize) << 20];
    let mut leaked = LEAKED
        .lock()
        .map_err(|_| PluginError::failed("allocation lock poisoned"))?;
    leaked.push(block);
    let total: usize = leaked.iter().map(Vec::len).sum();
    Ok(json!({"leaked_mib": total >> 20}))
}

fn fork_grandchild() -> Result<Value, PluginError> {
    let child = std::process::Command::new("sleep")
        .arg("3600")
        .spawn()
        .map_err(|e| PluginError::failed(format!("cannot fork: {e}")))?;
    // Deliberately neither waited for nor killed: it must die with the process group.
    Ok(json!({"grandchild": child.id()}))
}

fn spin() -> ! {
    let mut x = 0u64;
    loop {
        x = std::hint::black_box(x.wrapping_add(1));
    }
}

fn crash_once(input: &Value) -> Result<Value, PluginError> {
    let marker = input
        .get("marker")
        .and_then(Value::as_str)
        .ok_or_else(|| PluginError::invalid_input("marker: required, a file path"))?;
    if std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(marker)
        .is_ok()
    {
        eprintln!("chaos: first call with marker {marker}; crashing");
        std::process::abort();
    }
    Ok(json!({"ok": true, "pid": std::process::id()}))
}

/// Open files kept alive by `open_files`.
static OPEN: Mutex<Vec<std::fs::File>> = Mutex::new(Vec::new());

fn open_files(n: u64) -> Result<Value, PluginError> {
    // All or nothing: a failed call leaves no file of its own open.
    let files = (0..n)
        .map(|i| {
            std::fs::File::open("/dev/null")
                .map_err(|e| PluginError::failed(format!("open #{i} failed: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut open = OPEN
        .lock()
        .map_err(|_| PluginError::failed("lock poisoned"))?;
    open.extend(files);
    Ok(json!({"open": open.len()}))
}

fn ignore_sigterm() -> Result<Value, PluginError> {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: SIG_IGN installs no handler code; it only changes the disposition.
    unsafe { signal(Signal::SIGTERM, SigHandler::SigIgn) }
        .map_err(|e| PluginError::failed(format!("cannot ignore SIGTERM: {e}")))?;
    HANG_CLEANUP.store(true, Ordering::Release);
    Ok(json!({"ignoring": "SIGTERM"}))
}

/// Applies the start-up fault named by `CHAOS_STARTUP`, if any, before the worker serves:
/// `crash` (exit 3 before the handshake), `crash_while:<path>` (the same while `path`
/// exists, so a test can end a crash loop), `slow:<ms>` (start late), `no_handshake` (never
/// print one), `bad_handshake` (print garbage instead), `wrong_version` (claim protocol 99).
pub fn startup_fault() {
    let Ok(fault) = std::env::var(STARTUP_ENV) else {
        return;
    };
    let socket = socket_arg().unwrap_or_default();
    match fault.as_str() {
        "crash" => {
            eprintln!("chaos: crashing at start-up");
            std::process::exit(3);
        }
        "no_handshake" => sleep_forever(),
        "bad_handshake" => {
            println!("hello, I am not a worker");
            sleep_forever()
        }
        "wrong_version" => {
            println!("plugvisor 99 unix {socket}");
            sleep_forever()
        }
        other if other.starts_with("crash_while:") => {
            let path = &other["crash_while:".len()..];
            if std::path::Path::new(path).exists() {
                eprintln!("chaos: crashing at start-up while {path} exists");
                std::process::exit(3);
            }
        }
        slow => {
            let ms = slow
                .strip_prefix("slow:")
                .and_then(|m| m.parse().ok())
                .unwrap_or(0);
            std::thread::sleep(Duration::from_millis(ms));
        }
    }
}

fn socket_arg() -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    let at = args.iter().position(|a| a == "--socket")?;
    args.get(at + 1).cloned()
}

fn sleep_forever() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
