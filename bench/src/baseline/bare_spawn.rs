//! bare-spawn: start a minimal binary (`plugvisor-bench-bare`, std only) that binds a Unix
//! socket and prints one line, then connect and exchange one 16-byte message: the floor of
//! "spawn → ready → first answer".

use crate::procs::{binary, spawn_with_line};
use anyhow::Result;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Times one spawn → ready line → connect → 16-byte round trip. The process is reaped (not
/// timed) before returning.
///
/// # Errors
/// When the binary is missing or misbehaves.
pub fn once(dir: &Path, n: usize) -> Result<Duration> {
    let program = binary("plugvisor-bench-bare")?;
    let socket = dir.join(format!("bare-{n}.sock"));
    let start = Instant::now();
    let mut command = Command::new(&program);
    command.arg(&socket).stdin(Stdio::null());
    let (guard, _) = spawn_with_line(command)?;
    let mut stream = UnixStream::connect(&socket)?;
    let mut buf = *b"0123456789abcdef";
    stream.write_all(&buf)?;
    stream.read_exact(&mut buf)?;
    let elapsed = start.elapsed();
    guard.stop();
    let _ = std::fs::remove_file(&socket);
    Ok(elapsed)
}
