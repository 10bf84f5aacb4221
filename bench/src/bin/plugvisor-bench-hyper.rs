//! `plugvisor-bench-hyper SOCKET`: P7's tokio + hyper reference. A minimal binary that starts
//! a multi-thread tokio runtime with two threads (as many as a worker's plugin runtime),
//! binds a Unix socket, prints one line, answers HTTP/1.1 `{"input": …}` with
//! `{"output": …}` on the first connection and exits when it closes: what a spawn costs with
//! the stack a worker is built on and nothing of plugvisor's (no arguments, logging,
//! guardian, second runtime, auth or routing).

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::io::Write;

// bare-hyper's answer, shared so that both baselines do the same work per call.
#[path = "../baseline/json_echo.rs"]
mod json_echo;

fn main() -> std::io::Result<()> {
    let Some(path) = std::env::args_os().nth(1) else {
        eprintln!("usage: plugvisor-bench-hyper SOCKET");
        std::process::exit(2);
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::UnixListener::bind(&path)?;
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(b"ready\n")?;
        stdout.flush()?;
        drop(stdout);
        let (stream, _) = listener.accept().await?;
        // Served in a task of its own, as a server serves each connection.
        let serve = tokio::spawn(
            http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service_fn(json_echo::answer)),
        );
        let _ = serve.await;
        std::fs::remove_file(&path)
    })
}
