//! The NDJSON answers: a plugin's result stream as [`StreamFrame`] lines, and the live
//! lifecycle events.
//!
//! A result stream always ends with an `end` or an `error` frame; dropping the body (the
//! client went away) drops the plugin stream, which cancels the work in the worker. The event
//! stream ends when the client goes away or the server shuts down.

use super::reply::Body;
use crate::PluginManager;
use bytes::Bytes;
use futures_util::stream::{self, ReadyChunks, StreamExt};
use http_body_util::StreamBody;
use hyper::body::Frame;
use plugvisor_host::LifecycleEvent;
use plugvisor_proto::wire::StreamFrame;
use plugvisor_proto::{ErrorKind, PluginError, PluginStream, WireError};
use std::convert::Infallible;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// `application/x-ndjson`.
pub(crate) const NDJSON: &str = "application/x-ndjson";

/// Items the plugin has ready are batched into one chunk, at most this many.
const BATCH: usize = 256;

/// Where a result stream is.
struct Frames {
    /// The plugin's items; `None` once the terminal frame was written.
    items: Option<ReadyChunks<PluginStream>>,
    count: u64,
}

/// The body of `execute_stream`: one [`StreamFrame`] per line, ending with `end` or `error`.
pub(crate) fn frames(stream: PluginStream) -> Body {
    let state = Frames {
        items: Some(stream.ready_chunks(BATCH)),
        count: 0,
    };
    let chunks = stream::unfold(state, next_chunk);
    super::reply::boxed(StreamBody::new(chunks))
}

/// The next chunk: every item the plugin has ready, or the terminal frame.
async fn next_chunk(mut state: Frames) -> Option<(Result<Frame<Bytes>, Infallible>, Frames)> {
    let items = state.items.as_mut()?;
    let mut buf = Vec::new();
    match items.next().await {
        Some(batch) => {
            for item in batch {
                let frame = match item {
                    Ok(value) => StreamFrame::Item(value),
                    Err(e) => StreamFrame::Error(WireError::from(&e)),
                };
                let terminal = matches!(frame, StreamFrame::Error(_));
                if !terminal {
                    state.count += 1;
                }
                if !push_line(&mut buf, &frame) || terminal {
                    state.items = None;
                    break;
                }
            }
        }
        None => {
            push_line(&mut buf, &StreamFrame::End { count: state.count });
            state.items = None;
        }
    }
    Some((Ok(Frame::data(Bytes::from(buf))), state))
}

/// Appends `frame` and a newline; a frame that cannot be serialized becomes a terminal
/// `protocol` error frame (and false is returned).
fn push_line(buf: &mut Vec<u8>, frame: &StreamFrame) -> bool {
    let start = buf.len();
    if serde_json::to_writer(&mut *buf, frame).is_ok() {
        buf.push(b'\n');
        return true;
    }
    buf.truncate(start);
    let error = StreamFrame::Error(WireError::new(
        ErrorKind::Protocol,
        "a stream item could not be serialized",
    ));
    if serde_json::to_writer(&mut *buf, &error).is_ok() {
        buf.push(b'\n');
    }
    false
}

/// The body of `GET /api/plugins/events`: one [`LifecycleEvent`] per line, from the moment of
/// the request on, until the client goes away or `shutdown` is cancelled. A subscriber that
/// falls more than the bus's capacity behind skips the oldest events (logged).
pub(crate) fn events(manager: &PluginManager, shutdown: CancellationToken) -> Body {
    let rx = manager.host().events();
    let lines = stream::unfold((rx, shutdown), |(mut rx, shutdown)| async move {
        let event = next_event(&mut rx, &shutdown).await?;
        let mut line = serde_json::to_vec(&event).ok()?;
        line.push(b'\n');
        Some((Ok(Frame::data(Bytes::from(line))), (rx, shutdown)))
    });
    super::reply::boxed(StreamBody::new(lines))
}

async fn next_event(
    rx: &mut broadcast::Receiver<LifecycleEvent>,
    shutdown: &CancellationToken,
) -> Option<LifecycleEvent> {
    loop {
        let received = tokio::select! {
            () = shutdown.cancelled() => return None,
            received = rx.recv() => received,
        };
        match received {
            Ok(event) => return Some(event),
            Err(broadcast::error::RecvError::Lagged(skipped)) => {
                tracing::warn!(skipped, "an API event stream fell behind; events skipped");
            }
            Err(broadcast::error::RecvError::Closed) => return None,
        }
    }
}

/// `stream` cut at `deadline` (`execute_stream`'s `timeout_ms`): past it, one `TimedOut` item
/// ends the stream, and dropping the rest cancels it in the worker.
pub(crate) fn with_deadline<T: Send + 'static>(
    stream: std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<T, PluginError>> + Send>>,
    deadline: tokio::time::Instant,
) -> std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<T, PluginError>> + Send>> {
    Box::pin(stream::unfold(Some(stream), move |state| async move {
        let mut inner = state?;
        match tokio::time::timeout_at(deadline, inner.next()).await {
            Ok(Some(item)) => Some((item, Some(inner))),
            Ok(None) => None,
            Err(_) => {
                let late = "the stream exceeded its timeout_ms".to_owned();
                Some((Err(PluginError::TimedOut(late)), None))
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use plugvisor_proto::{json, PluginError};

    async fn body_text(body: Body) -> String {
        let bytes = body.collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn a_clean_stream_ends_with_its_count() {
        let items: PluginStream = Box::pin(stream::iter([Ok(json!(1)), Ok(json!("two"))]));
        let text = body_text(frames(items)).await;
        assert_eq!(
            text,
            "{\"item\":1}\n{\"item\":\"two\"}\n{\"end\":{\"count\":2}}\n"
        );
    }

    #[tokio::test]
    async fn an_error_is_the_last_frame() {
        let items: PluginStream = Box::pin(stream::iter([
            Ok(json!(1)),
            Err(PluginError::failed("boom")),
            Ok(json!(3)),
        ]));
        let text = body_text(frames(items)).await;
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(
            lines[1],
            r#"{"error":{"kind":"plugin_failed","message":"boom"}}"#
        );
    }
}
