//! Forwards a worker's stderr into `tracing`, keeping the last lines for crash reports; after
//! the handshake, its stdout too (a worker written in another language may print there).

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::process::ChildStderr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::unix::pipe;
use tokio::sync::watch;

/// How many stderr lines a crash report carries.
pub(crate) const TAIL_LINES: usize = 20;
/// Longest stderr line read at once; longer lines are split (a runaway plugin cannot bloat the host).
const MAX_LINE: usize = 4096;

/// The last lines a worker wrote to stderr, and whether the pipe has closed.
#[derive(Debug)]
pub(crate) struct StderrTail {
    lines: Mutex<VecDeque<String>>,
    closed: watch::Sender<bool>,
}

impl StderrTail {
    /// A tail that stays empty (a remote worker's stderr is not the host's to read).
    pub(crate) fn none() -> Arc<Self> {
        let (closed, _) = watch::channel(true);
        Arc::new(Self {
            lines: Mutex::new(VecDeque::new()),
            closed,
        })
    }

    /// Starts forwarding `stderr` of plugin `label` (pid `pid`) into `tracing`.
    pub(crate) fn start(
        stderr: ChildStderr,
        label: String,
        pid: u32,
    ) -> std::io::Result<Arc<Self>> {
        let (closed, _) = watch::channel(false);
        let tail = Arc::new(Self {
            lines: Mutex::new(VecDeque::with_capacity(TAIL_LINES)),
            closed,
        });
        let receiver = pipe::Receiver::from_owned_fd(OwnedFd::from(stderr))?;
        let source = Source {
            label,
            pid,
            stream: "stderr",
        };
        let tail_of_stderr = Arc::clone(&tail);
        tokio::spawn(async move {
            forward(BufReader::new(receiver), &source, &tail_of_stderr).await;
            tail_of_stderr.closed.send_replace(true);
        });
        Ok(tail)
    }

    /// Keeps reading the worker's stdout after its handshake line, into `tracing` and the
    /// same tail as stderr: a worker whose stdout pipe closed would die of SIGPIPE on its next
    /// write. Ends when the pipe closes (the worker and its group are gone).
    pub(crate) fn drain_stdout(
        self: &Arc<Self>,
        stdout: impl AsyncBufRead + Unpin + Send + 'static,
        label: String,
        pid: u32,
    ) {
        let source = Source {
            label,
            pid,
            stream: "stdout",
        };
        let tail = Arc::clone(self);
        tokio::spawn(async move { forward(stdout, &source, &tail).await });
    }

    fn push(&self, line: String) {
        if let Ok(mut lines) = self.lines.lock() {
            if lines.len() == TAIL_LINES {
                lines.pop_front();
            }
            lines.push_back(line);
        }
    }

    /// The kept lines, oldest first.
    pub(crate) fn lines(&self) -> Vec<String> {
        self.lines
            .lock()
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Waits up to `timeout` for the pipe to close, so the tail includes a dying worker's last
    /// words (a grandchild holding the pipe open can delay that forever; hence the timeout).
    pub(crate) async fn wait_closed(&self, timeout: Duration) {
        let mut rx = self.closed.subscribe();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|c| *c)).await;
    }
}

/// Whose lines a forwarder reads.
struct Source {
    label: String,
    pid: u32,
    stream: &'static str,
}

async fn forward(mut reader: impl AsyncBufRead + Unpin, source: &Source, tail: &StderrTail) {
    let mut buf = Vec::with_capacity(256);
    loop {
        buf.clear();
        // `take` bounds a line without a newline: it is split, never buffered whole.
        let mut limited = (&mut reader).take(MAX_LINE as u64);
        match limited.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let line = String::from_utf8_lossy(&buf);
        let line = line.trim_end_matches(['\n', '\r']);
        let Source { label, pid, stream } = source;
        tracing::info!(target: "plugvisor::worker", plugin = %label, pid, stream, "{line}");
        tail.push(line.to_owned());
    }
}
