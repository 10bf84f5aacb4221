//! raw-uds: 16-byte messages echoed between two processes over a Unix socket (blocking I/O),
//! the physical floor of a round trip.

use crate::procs::{spawn_self, ChildGuard};
use anyhow::{Context as _, Result};
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

/// Size of one message.
const MESSAGE: usize = 16;

/// The server side (hidden subcommand `serve-raw-uds SOCKET`): echoes 16-byte messages on
/// every connection, one thread each, until killed.
///
/// # Errors
/// When the socket cannot be bound.
pub fn serve(socket: &Path) -> Result<()> {
    let listener = UnixListener::bind(socket).with_context(|| format!("binding {socket:?}"))?;
    println!("ready {}", socket.display());
    for stream in listener.incoming() {
        let mut stream = stream?;
        std::thread::spawn(move || {
            let mut buf = [0u8; MESSAGE];
            while stream.read_exact(&mut buf).is_ok() {
                if stream.write_all(&buf).is_err() {
                    break;
                }
            }
        });
    }
    Ok(())
}

/// A running raw-uds server and one connection to it.
#[derive(Debug)]
pub struct RawUds {
    stream: UnixStream,
    _server: ChildGuard,
}

impl RawUds {
    /// Starts the server process on a socket in `dir` and connects.
    ///
    /// # Errors
    /// When the server does not start or cannot be reached.
    pub fn start(dir: &Path) -> Result<Self> {
        let socket = dir.join("raw-uds.sock");
        let path = socket.to_str().context("non-UTF-8 scratch path")?;
        let (server, _) = spawn_self(&["serve-raw-uds", path])?;
        let stream = UnixStream::connect(&socket).context("connecting to raw-uds")?;
        Ok(Self {
            stream,
            _server: server,
        })
    }

    /// Times `n` round trips of one 16-byte message each.
    ///
    /// # Errors
    /// When the connection fails.
    pub fn round_trips(&mut self, n: usize) -> Result<Vec<Duration>> {
        let mut samples = Vec::with_capacity(n);
        let out = *b"0123456789abcdef";
        let mut back = [0u8; MESSAGE];
        for _ in 0..n {
            let start = Instant::now();
            self.stream.write_all(&out)?;
            self.stream.read_exact(&mut back)?;
            samples.push(start.elapsed());
        }
        Ok(samples)
    }
}
