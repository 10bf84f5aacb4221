//! Entry points for the fuzz targets (`fuzz/`); not a stable API.
//!
//! They run the connection-lane code of `lanes.rs` on bytes in memory: `read_head` (how much
//! of a new connection is read before routing it), `lane` (the routing decision) and
//! `Prefixed` (the read bytes put back in front of the stream), without a socket or runtime.

use crate::lanes::{self, Prefixed};
use plugvisor_proto::wire::routes::Lane;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

/// The lane of a connection whose first bytes are `head` (see `lanes::lane`).
pub fn lane(head: &[u8]) -> Lane {
    lanes::lane(head)
}

/// What routing a connection does with its bytes, delivered in `pieces` (one read each).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    /// The bytes `read_head` read before deciding.
    pub head: Vec<u8>,
    /// The lane it decided on.
    pub lane: Lane,
    /// Everything the connection reads afterwards through `Prefixed`: head, then the rest.
    pub replayed: Vec<u8>,
}

/// Runs `read_head`, `lane` and `Prefixed` on a connection that delivers `pieces`, then ends.
///
/// # Errors
/// A read error (the in-memory stream never fails, so none is expected).
pub fn route(pieces: &[&[u8]]) -> io::Result<Routed> {
    let mut stream = Pieces {
        pieces: pieces.iter().map(|p| p.to_vec()).collect(),
        next: 0,
        at: 0,
    };
    let head = run_ready(lanes::read_head(&mut stream))?;
    let lane = lanes::lane(&head);
    let mut replayed = Vec::new();
    run_ready(Prefixed::new(head.clone(), stream).read_to_end(&mut replayed))?;
    Ok(Routed {
        head: head.to_vec(),
        lane,
        replayed,
    })
}

/// An in-memory stream: each read returns at most the rest of the current piece.
struct Pieces {
    pieces: Vec<Vec<u8>>,
    next: usize,
    at: usize,
}

impl AsyncRead for Pieces {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        while let Some(piece) = this.pieces.get(this.next) {
            let rest = &piece[this.at..];
            if rest.is_empty() {
                this.next += 1;
                this.at = 0;
                continue;
            }
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.at += n;
            break;
        }
        Poll::Ready(Ok(()))
    }
}

/// Polls a future that never waits (its I/O is in memory): it completes in one poll.
fn run_ready<F: std::future::Future>(future: F) -> F::Output {
    let future = std::pin::pin!(future);
    match future.poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => output,
        Poll::Pending => unreachable!("in-memory reads never wait"),
    }
}
