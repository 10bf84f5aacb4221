//! Decoding a streamed answer: NDJSON frames off a chunked HTTP body, terminal frame required.
//!
//! Built for throughput (millions of small items, or gigabytes of large ones, per second):
//! lines are cut out of the body's data without copying unless a line spans two pieces of
//! data, newlines are found by `memchr`'s vector search, and an item that is a plain string
//! (`{"item":"…"}` without escapes, the usual shape of bulk data; checked by
//! `fast_json::plain_text`'s vector scan) is taken as is instead of going through the JSON
//! parser.

use crate::client::{ClientError, Lease};
use bytes::Bytes;
use futures_util::{ready, Stream};
use hyper::body::{Body as _, Incoming};
use plugvisor_proto::fast_json::plain_text;
use plugvisor_proto::wire::StreamFrame;
use plugvisor_proto::{PluginError, Value};
use std::pin::Pin;
use std::task::{Context, Poll};

/// Why a stream ended without its next item.
#[derive(Debug)]
pub(crate) enum Fault {
    /// The worker's own error: an error frame, or a frame that is not valid.
    Plugin(PluginError),
    /// The connection failed mid-stream.
    Broken(ClientError),
    /// The body ended cleanly but without a terminal frame.
    CutShort,
}

/// Turns a `200` answer of `/v1/execute_stream` into a stream of items.
///
/// The stream ends after an `end` frame; an `error` frame, a broken connection or a body that
/// ends without a terminal frame is its last item, a [`Fault`] for the caller to attribute.
/// It holds the connection lease: dropping it early closes the connection, which cancels the
/// worker's producer.
pub(crate) fn decode(body: Incoming, lease: Lease) -> impl Stream<Item = Result<Value, Fault>> {
    FrameDecoder {
        body,
        lines: Lines::default(),
        lease: Some(lease),
        state: State::Reading,
    }
}

/// Reads NDJSON frames off a streamed answer. A hand-written [`Stream`], not an `unfold` of an
/// async step: that moved the whole decoder (body, lease, buffers) out of and back into a new
/// future for every item, ≈ 300 instructions of copying per item (docs/PERFORMANCE.md, P3).
struct FrameDecoder {
    body: Incoming,
    lines: Lines,
    lease: Option<Lease>,
    state: State,
}

/// Where a [`FrameDecoder`] is.
enum State {
    /// Reading frames.
    Reading,
    /// A terminal frame arrived: reading the body's (empty) rest so the connection can be
    /// reused, then ending with this (nothing after `end`, the fault after `error`).
    Finishing(Option<Fault>),
    /// Ended.
    Done,
}

impl Stream for FrameDecoder {
    type Item = Result<Value, Fault>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            match this.state {
                State::Done => return Poll::Ready(None),
                State::Finishing(_) => return this.poll_finish(cx),
                State::Reading => {}
            }
            if let Some(line) = this.lines.next_line() {
                match read_frame(line) {
                    Frame::Item(value) => return Poll::Ready(Some(Ok(value))),
                    Frame::End => this.state = State::Finishing(None),
                    Frame::Error(e) => this.state = State::Finishing(Some(Fault::Plugin(e))),
                    Frame::Bad(e) => return this.end_with(Fault::Plugin(e)),
                }
                continue;
            }
            match ready!(Pin::new(&mut this.body).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        this.lines.push(data);
                    }
                }
                Some(Err(e)) => return this.end_with(Fault::Broken(ClientError::Http(e))),
                None => return this.end_with(Fault::CutShort),
            }
        }
    }
}

impl FrameDecoder {
    /// Ends the stream with `fault` as its last item.
    fn end_with(&mut self, fault: Fault) -> Poll<Option<Result<Value, Fault>>> {
        self.state = State::Done;
        Poll::Ready(Some(Err(fault)))
    }

    /// After a terminal frame: waits for the body's end, returns the connection to its pool
    /// when nothing followed the frame, then ends (with the fault an `error` frame carried).
    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Value, Fault>>> {
        let ended = ready!(Pin::new(&mut self.body).poll_frame(cx)).is_none();
        if ended && self.lines.is_empty() {
            if let Some(lease) = self.lease.as_mut() {
                lease.finish();
            }
        }
        self.lease.take();
        match std::mem::replace(&mut self.state, State::Done) {
            State::Finishing(Some(fault)) => Poll::Ready(Some(Err(fault))),
            _ => Poll::Ready(None),
        }
    }
}

/// What one line of a streamed answer means.
#[derive(Debug)]
pub(crate) enum Frame {
    /// An item for the caller.
    Item(Value),
    /// The `end` frame: the stream is complete.
    End,
    /// An `error` frame: the stream's last item.
    Error(PluginError),
    /// A line that is not a frame (a protocol error).
    Bad(PluginError),
}

/// Reads one line: the fast path for plain string items first, then the JSON parser.
pub(crate) fn read_frame(line: &[u8]) -> Frame {
    if let Some(item) = plain_string_item(line) {
        return Frame::Item(item);
    }
    match serde_json::from_slice::<StreamFrame>(line) {
        Ok(StreamFrame::Item(value)) => Frame::Item(value),
        Ok(StreamFrame::End { .. }) => Frame::End,
        Ok(StreamFrame::Error(wire)) => Frame::Error(crate::exchange::from_worker(wire)),
        Err(e) => Frame::Bad(PluginError::Protocol(format!("bad stream frame: {e}"))),
    }
}

/// Splits body data into lines: complete lines inside one piece of data are lent out of it
/// (no copy, no reference count touched per line); only a line spanning pieces is gathered
/// into `partial`.
#[derive(Debug, Default)]
pub(crate) struct Lines {
    /// The start of a line whose end has not arrived yet, or (when `lent`) the gathered line
    /// the last `next_line` returned.
    partial: Vec<u8>,
    /// `partial` holds a line already returned: cleared on the next call.
    lent: bool,
    /// The current piece of data.
    pending: Bytes,
    /// How much of `pending` was searched and returned.
    pos: usize,
}

impl Lines {
    /// Adds the next piece of data (call only once `next_line` returned `None`).
    pub(crate) fn push(&mut self, data: Bytes) {
        self.pending = data;
        self.pos = 0;
    }

    /// True when nothing is buffered.
    pub(crate) fn is_empty(&self) -> bool {
        (self.lent || self.partial.is_empty()) && self.pos == self.pending.len()
    }

    /// The next complete line, newline included.
    pub(crate) fn next_line(&mut self) -> Option<&[u8]> {
        if std::mem::take(&mut self.lent) {
            self.partial.clear();
        }
        let start = self.pos;
        let rest = &self.pending[start..];
        match find_newline(rest) {
            Some(i) => {
                self.pos = start + i + 1;
                let line = &self.pending[start..self.pos];
                if self.partial.is_empty() {
                    return Some(line);
                }
                self.partial.extend_from_slice(line);
                self.lent = true;
                Some(&self.partial)
            }
            None => {
                self.partial.extend_from_slice(rest);
                self.pos = self.pending.len();
                None
            }
        }
    }
}

/// The index of the first `\n` in `bytes`: `memchr`'s vector search, which is as fast on the
/// 28-byte lines of small items as on 64 KiB ones (a block scan then a byte-by-byte search of
/// the block was ≈ 120 instructions per small item).
fn find_newline(bytes: &[u8]) -> Option<usize> {
    memchr::memchr(b'\n', bytes)
}

/// The value of a line `{"item":"<text>"}\n` whose text has no escapes and is UTF-8 (exactly
/// what the JSON parser would return for it), else `None` (then the parser decides).
pub(crate) fn plain_string_item(line: &[u8]) -> Option<Value> {
    let text = line.strip_prefix(b"{\"item\":\"")?.strip_suffix(b"\"}\n")?;
    plain_text(text).map(|text| Value::String(text.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newlines_are_found_at_every_offset() {
        for len in 0..100 {
            let mut bytes = vec![b'x'; len];
            assert_eq!(find_newline(&bytes), None);
            for at in 0..len {
                bytes.fill(0x8a);
                bytes[at] = b'\n';
                if at + 1 < len {
                    bytes[at + 1] = b'\n';
                }
                assert_eq!(find_newline(&bytes), Some(at), "len {len} at {at}");
            }
        }
    }

    #[test]
    fn lines_are_cut_across_pieces_of_data() {
        let text = b"{\"item\":1}\n{\"item\":\"two\"}\n{\"end\":{\"count\":2}}\n";
        for cut in 0..text.len() {
            for cut2 in cut..text.len() {
                let mut lines = Lines::default();
                let mut out = Vec::new();
                for piece in [&text[..cut], &text[cut..cut2], &text[cut2..]] {
                    lines.push(Bytes::copy_from_slice(piece));
                    while let Some(line) = lines.next_line() {
                        out.push(line.to_vec());
                    }
                }
                assert!(lines.is_empty());
                let joined: Vec<u8> = out.concat();
                assert_eq!(joined, text, "cuts {cut} {cut2}");
                assert_eq!(out.len(), 3);
            }
        }
    }

    #[test]
    fn plain_string_items_read_as_the_parser_reads_them() {
        let cases: [&[u8]; 8] = [
            b"{\"item\":\"abc\"}\n",
            b"{\"item\":\"\"}\n",
            "{\"item\":\"ünï ✓\"}\n".as_bytes(),
            b"{\"item\":\"a\\\"b\"}\n",
            b"{\"item\":\"a\\\\b\"}\n",
            b"{\"item\":\"a\\nb\"}\n",
            b"{\"item\":1}\n",
            b"{\"item\":\"a\",\"x\":1}\n",
        ];
        for line in cases {
            if let Some(fast) = plain_string_item(line) {
                let parsed = serde_json::from_slice::<StreamFrame>(line).unwrap();
                assert!(
                    matches!(parsed, StreamFrame::Item(v) if v == fast),
                    "{line:?}"
                );
            }
        }
        let fast: Vec<bool> = cases
            .iter()
            .map(|l| plain_string_item(l).is_some())
            .collect();
        assert_eq!(fast, [true, true, true, false, false, false, false, false]);
        let long = format!("{{\"item\":\"{}\"}}\n", "x".repeat(70_000));
        assert_eq!(
            plain_string_item(long.as_bytes()),
            Some(Value::String("x".repeat(70_000)))
        );
        // Past the first block of 64 bytes, in the padded tail: an escape, a control
        // character, non-ASCII text (taken, as the parser takes it) and invalid UTF-8.
        let x70 = "x".repeat(70);
        for (text, fast) in [
            (format!("{x70}\\\"q"), false),
            (format!("{x70}\u{1}"), false),
            (format!("{x70}ünï"), true),
        ] {
            let line = format!("{{\"item\":\"{text}\"}}\n");
            assert_eq!(
                plain_string_item(line.as_bytes()).is_some(),
                fast,
                "{text:?}"
            );
            if fast {
                let parsed = serde_json::from_slice::<StreamFrame>(line.as_bytes()).unwrap();
                let item = plain_string_item(line.as_bytes()).unwrap();
                assert!(matches!(parsed, StreamFrame::Item(v) if v == item));
            }
        }
        let mut bad = format!("{{\"item\":\"{x70}").into_bytes();
        bad.extend_from_slice(b"\xff\"}\n");
        assert_eq!(plain_string_item(&bad), None);
        assert_eq!(plain_string_item(b"{\"item\":\"\xff\"}\n"), None);
        assert_eq!(plain_string_item(b"{\"item\":\"a\x01\"}\n"), None);
    }
}
