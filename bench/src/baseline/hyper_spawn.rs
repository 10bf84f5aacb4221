//! tokio+hyper spawn: start `plugvisor-bench-hyper` (a minimal tokio + hyper server, no
//! plugvisor), read its ready line, connect and have one small JSON call answered: P7's
//! reference for what the stack a worker is built on costs by itself, beside bare-spawn.

use crate::baseline::client::HttpConn;
use crate::procs::{binary, spawn_with_line};
use anyhow::{bail, Result};
use bytes::Bytes;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Times one spawn → ready line → connect → one `POST` of `body` answered. The process is
/// killed and reaped (not timed) before returning.
///
/// # Errors
/// When the binary is missing or misbehaves.
pub async fn once(dir: &Path, n: usize, body: &Bytes) -> Result<Duration> {
    let program = binary("plugvisor-bench-hyper")?;
    let socket = dir.join(format!("hyper-spawn-{n}.sock"));
    let start = Instant::now();
    let mut command = Command::new(&program);
    command.arg(&socket).stdin(Stdio::null());
    let (guard, _) = spawn_with_line(command)?;
    let mut conn = HttpConn::unix(&socket, None).await?;
    let answer = conn.post("/v1/execute", body.clone()).await?;
    let elapsed = start.elapsed();
    drop(conn);
    guard.stop();
    let _ = std::fs::remove_file(&socket);
    if !answer.starts_with(b"{\"output\"") {
        bail!(
            "plugvisor-bench-hyper answered {}",
            String::from_utf8_lossy(&answer)
        );
    }
    Ok(elapsed)
}
