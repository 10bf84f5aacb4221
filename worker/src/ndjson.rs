//! `NdjsonBody`: the chunked body of `execute_stream`, one JSON frame per line.
//!
//! Throughput matters here (millions of small items per second), so the body does not make
//! one HTTP chunk per item. Each time hyper asks for data it drains every item the plugin
//! stream has *ready* into one buffer, serializing straight into it, and hands the buffer over
//! as a single chunk when it passes [`CHUNK_TARGET`], when the plugin stream is `Pending`, or
//! when the stream ends. The last line is always a terminal frame, `{"end":{"count":N}}` or
//! `{"error":{...}}`, so a cut-off stream can never look like a clean end.
//!
//! Dropping the body (the client went away) drops the plugin stream, which cancels its work,
//! and the in-flight guard, which uncounts the call.

use crate::state::InFlight;
use crate::unwind;
use bytes::{BufMut, Bytes, BytesMut};
use hyper::body::{Body, Frame};
use plugvisor_proto::fast_json::{needs_escape, write_value};
use plugvisor_proto::wire::StreamFrame;
use plugvisor_proto::{PluginError, PluginStream, Value, WireError};
use std::convert::Infallible;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};

/// What comes before and after a plain string item's text.
const STRING_ITEM: &[u8] = b"{\"item\":\"";
const STRING_ITEM_END: &[u8] = b"\"}\n";

/// A chunk is handed to hyper once the buffer holds at least this many bytes.
pub(crate) const CHUNK_TARGET: usize = 64 * 1024;

/// Smallest buffer reserved for a new chunk.
const MIN_RESERVE: usize = 4 * 1024;

/// The NDJSON body of one `execute_stream` answer.
pub(crate) struct NdjsonBody {
    /// The plugin's stream; `None` once a terminal frame was written.
    stream: Option<PluginStream>,
    /// Counts the call as in flight while the stream is alive.
    guard: Option<InFlight>,
    /// Frames serialized but not yet handed to hyper.
    buf: BytesMut,
    /// Size of the previous chunk, to reserve about as much for the next one.
    last_chunk: usize,
    /// Items written so far.
    count: u64,
}

impl NdjsonBody {
    /// A body streaming `stream`, keeping `guard` alive until the stream is done or dropped.
    pub(crate) fn new(stream: PluginStream, guard: InFlight) -> Self {
        Self {
            stream: Some(stream),
            guard: Some(guard),
            buf: BytesMut::new(),
            last_chunk: MIN_RESERVE,
            count: 0,
        }
    }

    /// Polls the plugin stream once, containing a panic as an error item.
    fn poll_plugin(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Value, PluginError>>> {
        let Some(stream) = self.stream.as_mut() else {
            return Poll::Ready(None);
        };
        match std::panic::catch_unwind(AssertUnwindSafe(|| stream.as_mut().poll_next(cx))) {
            Ok(poll) => poll,
            Err(payload) => Poll::Ready(Some(Err(unwind::panicked(payload.as_ref())))),
        }
    }

    /// Writes what one step of the plugin stream produced.
    fn write_step(&mut self, step: Option<Result<Value, PluginError>>) {
        match step {
            Some(Ok(value)) => match write_item(&mut self.buf, &value) {
                Ok(()) => self.count += 1,
                Err(e) => self.finish(&StreamFrame::Error(WireError::from(PluginError::failed(
                    format!("an item could not be serialized: {e}"),
                )))),
            },
            Some(Err(err)) => self.finish(&StreamFrame::Error(WireError::from(
                crate::unwind::own(err),
            ))),
            None => self.finish(&StreamFrame::End { count: self.count }),
        }
    }

    /// Writes the terminal frame and lets go of the plugin stream and the in-flight guard.
    fn finish(&mut self, frame: &StreamFrame) {
        if let StreamFrame::Error(err) = frame {
            tracing::warn!(kind = ?err.kind, message = %err.message, "stream failed");
        }
        self.stream = None;
        self.guard = None;
        // A frame of plain enums, numbers and strings always serializes.
        let _ = serde_json::to_writer((&mut self.buf).writer(), frame);
        self.buf.put_u8(b'\n');
    }

    /// Makes room for the next chunk, about as large as the previous one.
    fn reserve(&mut self) {
        if self.buf.is_empty() {
            let want = self
                .last_chunk
                .clamp(MIN_RESERVE, CHUNK_TARGET + CHUNK_TARGET / 4);
            self.buf.reserve(want);
        }
    }

    /// Hands the buffered frames to hyper as one chunk.
    fn take_chunk(&mut self) -> Frame<Bytes> {
        self.last_chunk = self.buf.len();
        Frame::data(self.buf.split().freeze())
    }
}

/// Appends `{"item":<value>}\n`; on failure leaves `buf` as it was.
fn write_item(buf: &mut BytesMut, value: &Value) -> serde_json::Result<()> {
    // The usual small item, a string needing no escapes: one reservation, three copies.
    if let Value::String(s) = value {
        if !needs_escape(s.as_bytes()) {
            buf.reserve(STRING_ITEM.len() + s.len() + STRING_ITEM_END.len());
            buf.extend_from_slice(STRING_ITEM);
            buf.extend_from_slice(s.as_bytes());
            buf.extend_from_slice(STRING_ITEM_END);
            return Ok(());
        }
    }
    let start = buf.len();
    buf.put_slice(b"{\"item\":");
    // Strings that need no escaping go in one copy (serde_json inspects every byte of every
    // string on its own: the bulk of the cost of streaming large string items).
    if let Err(e) = write_value(&mut (&mut *buf).writer(), value) {
        buf.truncate(start);
        return Err(e);
    }
    buf.put_slice(b"}\n");
    Ok(())
}

impl Body for NdjsonBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        this.reserve();
        while this.stream.is_some() && this.buf.len() < CHUNK_TARGET {
            match this.poll_plugin(cx) {
                Poll::Ready(step) => this.write_step(step),
                Poll::Pending => break,
            }
        }
        if !this.buf.is_empty() {
            Poll::Ready(Some(Ok(this.take_chunk())))
        } else if this.stream.is_none() {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    }

    fn is_end_stream(&self) -> bool {
        self.stream.is_none() && self.buf.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Counters;
    use futures_util::stream;
    use futures_util::StreamExt as _;
    use http_body_util::BodyExt;
    use plugvisor_proto::json;
    use std::sync::Arc;

    async fn lines(stream: PluginStream) -> (Vec<Value>, Arc<Counters>) {
        let counters = Arc::new(Counters::default());
        let body = NdjsonBody::new(stream, counters.start());
        let bytes = body.collect().await.unwrap().to_bytes();
        let text = std::str::from_utf8(&bytes).unwrap();
        let values = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        (values, counters)
    }

    #[test]
    fn string_items_are_written_as_serde_json_writes_them() {
        let texts = [
            "",
            "x",
            "plain text",
            "q\"uote",
            "back\\slash",
            "new\nline",
            "ünï ✓",
        ];
        let long = "y".repeat(100);
        for text in texts.iter().copied().chain([long.as_str()]) {
            let mut buf = BytesMut::new();
            write_item(&mut buf, &Value::String(text.to_owned())).unwrap();
            let expected = serde_json::to_string(&json!({ "item": text })).unwrap() + "\n";
            assert_eq!(std::str::from_utf8(&buf).unwrap(), expected, "{text:?}");
        }
    }

    #[tokio::test]
    async fn items_then_an_end_frame() {
        let items = (0..100_000).map(|i| Ok(json!(i)));
        let (values, counters) = lines(Box::pin(stream::iter(items))).await;
        assert_eq!(values.len(), 100_001);
        assert_eq!(values[7], json!({"item": 7}));
        assert_eq!(values[100_000], json!({"end": {"count": 100_000}}));
        assert_eq!(counters.in_flight(), 0);
    }

    #[tokio::test]
    async fn an_error_item_is_the_last_frame() {
        let items = vec![
            Ok(json!("a")),
            Err(PluginError::failed("disk on fire")),
            Ok(json!("b")),
        ];
        let (values, _) = lines(Box::pin(stream::iter(items))).await;
        assert_eq!(values.len(), 2);
        assert_eq!(values[1]["error"]["kind"], "plugin_failed");
        assert_eq!(values[1]["error"]["message"], "disk on fire");
    }

    #[tokio::test]
    async fn a_panicking_stream_ends_with_an_error_frame() {
        let items = stream::iter(0..3).map(|i| {
            assert!(i < 2, "item {i} exploded");
            Ok(json!(i))
        });
        let (values, counters) = lines(Box::pin(items)).await;
        assert_eq!(values.len(), 3);
        let message = values[2]["error"]["message"].as_str().unwrap();
        assert!(message.contains("item 2 exploded"), "{message}");
        assert_eq!(counters.in_flight(), 0);
    }

    #[test]
    fn values_are_written_as_serde_json_writes_them() {
        let long = "x".repeat(100_003);
        let values = [
            json!("plain ascii, longer than one word"),
            json!("quote \" backslash \\ newline \n tab \t bell \u{7}"),
            json!("ünïcödé ✓ 日本語 and \u{1f}"),
            json!(long),
            json!(""),
            json!({"a": [1, -2, 3.5, 1e100, null, true, false], "b\"": {"c": "d\\"}}),
            json!([[], {}, "", 0, u64::MAX, i64::MIN]),
        ];
        for value in values {
            let mut buf = BytesMut::new();
            write_value(&mut (&mut buf).writer(), &value).unwrap();
            assert_eq!(&buf[..], serde_json::to_vec(&value).unwrap(), "{value}");
        }
    }

    #[test]
    fn dropping_the_body_uncounts_the_call() {
        let counters = Arc::new(Counters::default());
        let body = NdjsonBody::new(Box::pin(stream::pending()), counters.start());
        assert_eq!(counters.in_flight(), 1);
        drop(body);
        assert_eq!(counters.in_flight(), 0);
    }
}
