//! Decoding a streamed answer: NDJSON frames off a chunked HTTP body, terminal frame required.

use crate::client::{ClientError, Lease};
use crate::core::WorkerCore;
use crate::transfer::StagedInputs;
use bytes::BytesMut;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use plugvisor_proto::wire::StreamFrame;
use plugvisor_proto::{PluginError, PluginStream, Value};
use std::sync::Arc;

/// Turns a `200` answer of `/v1/execute_stream` into a [`PluginStream`].
///
/// The stream holds the connection lease, the call's staged input files and an in-flight
/// guard; dropping it early closes the connection, which cancels the worker's producer.
pub(crate) fn decode(
    body: Incoming,
    lease: Lease,
    core: Arc<WorkerCore>,
    staged: StagedInputs,
    guard: crate::core::InFlight,
) -> PluginStream {
    let decoder = FrameDecoder {
        body,
        buf: BytesMut::new(),
        scanned: 0,
        lease: Some(lease),
        core,
        _staged: staged,
        _guard: guard,
        done: false,
    };
    Box::pin(futures_util::stream::unfold(decoder, |mut d| async move {
        let item = d.next_item().await?;
        Some((item, d))
    }))
}

/// Reads NDJSON frames off a streamed answer.
struct FrameDecoder {
    body: Incoming,
    buf: BytesMut,
    scanned: usize,
    lease: Option<Lease>,
    core: Arc<WorkerCore>,
    _staged: StagedInputs,
    _guard: crate::core::InFlight,
    done: bool,
}

impl FrameDecoder {
    async fn next_item(&mut self) -> Option<Result<Value, PluginError>> {
        if self.done {
            return None;
        }
        loop {
            if let Some(line) = self.next_line() {
                return self.on_frame(&line).await;
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => {
                    self.done = true;
                    return Some(Err(self.core.failure(ClientError::Http(e)).await));
                }
                None => {
                    self.done = true;
                    let msg = "the stream ended without a terminal frame".to_owned();
                    return Some(Err(self.core.failure_with(msg).await.into_cut_short()));
                }
            }
        }
    }

    fn next_line(&mut self) -> Option<BytesMut> {
        let pos = self.buf[self.scanned..].iter().position(|&b| b == b'\n');
        match pos {
            Some(i) => {
                let line = self.buf.split_to(self.scanned + i + 1);
                self.scanned = 0;
                Some(line)
            }
            None => {
                self.scanned = self.buf.len();
                None
            }
        }
    }

    async fn on_frame(&mut self, line: &[u8]) -> Option<Result<Value, PluginError>> {
        match serde_json::from_slice::<StreamFrame>(line) {
            Ok(StreamFrame::Item(value)) => Some(Ok(value)),
            Ok(StreamFrame::End { .. }) => {
                self.done = true;
                self.finish().await;
                None
            }
            Ok(StreamFrame::Error(wire)) => {
                self.done = true;
                self.finish().await;
                Some(Err(wire.into()))
            }
            Err(e) => {
                self.done = true;
                Some(Err(PluginError::Protocol(format!("bad stream frame: {e}"))))
            }
        }
    }

    /// Reads the (empty) rest of the body so the connection can be reused.
    async fn finish(&mut self) {
        if self.body.frame().await.is_none() && self.buf.is_empty() {
            if let Some(lease) = self.lease.as_mut() {
                lease.finish();
            }
        }
        self.lease.take();
    }
}

trait CutShort {
    fn into_cut_short(self) -> PluginError;
}

impl CutShort for PluginError {
    /// A stream that ended early while the worker lives is a protocol error, never a clean end.
    fn into_cut_short(self) -> PluginError {
        match self {
            PluginError::Unavailable(m) => PluginError::Protocol(m),
            other => other,
        }
    }
}
