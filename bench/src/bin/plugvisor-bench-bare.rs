//! `plugvisor-bench-bare SOCKET`: the bare-spawn baseline, a minimal binary (std only) that
//! binds a Unix socket, prints one line, echoes one 16-byte message and exits.

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;

fn main() -> std::io::Result<()> {
    let Some(path) = std::env::args_os().nth(1) else {
        eprintln!("usage: plugvisor-bench-bare SOCKET");
        std::process::exit(2);
    };
    let listener = UnixListener::bind(&path)?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "ready")?;
    stdout.flush()?;
    let (mut stream, _) = listener.accept()?;
    let mut buf = [0u8; 16];
    stream.read_exact(&mut buf)?;
    stream.write_all(&buf)?;
    std::fs::remove_file(&path)
}
