//! Entry points for the fuzz targets (`fuzz/`); not a stable API.
//!
//! They run the NDJSON stream decoder's own parts (`stream::Lines`, the line splitter, and
//! `stream::plain_string_item`, the fast path for plain string items, and `stream::read_frame`,
//! the per-line decision the decoder makes) on bytes in memory, without a connection.

use crate::stream::{plain_string_item, read_frame, Frame, Lines};
use bytes::Bytes;
use plugvisor_proto::wire::StreamFrame;
use plugvisor_proto::Value;

/// Decodes a streamed answer whose body arrives as `pieces`: the items in order, then (unless
/// an `end` frame came first) one error, the stream's last item. `"cut short"` is the error of
/// a body that ends without a terminal frame.
pub fn decode_ndjson(pieces: &[&[u8]]) -> Vec<Result<Value, String>> {
    let mut lines = Lines::default();
    let mut pieces = pieces.iter();
    let mut out = Vec::new();
    loop {
        if let Some(line) = lines.next_line() {
            match read_frame(line) {
                Frame::Item(value) => out.push(Ok(value)),
                Frame::End => return out,
                Frame::Error(e) | Frame::Bad(e) => {
                    out.push(Err(e.to_string()));
                    return out;
                }
            }
            continue;
        }
        match pieces.next() {
            Some(piece) => lines.push(Bytes::copy_from_slice(piece)),
            None => {
                out.push(Err("cut short".to_owned()));
                return out;
            }
        }
    }
}

/// The complete lines (newline included) the splitter cuts out of `pieces`, and whether it
/// holds nothing afterwards (true only when the data ends with a newline, or is empty).
pub fn split_lines(pieces: &[&[u8]]) -> (Vec<Vec<u8>>, bool) {
    let mut lines = Lines::default();
    let mut out = Vec::new();
    for piece in pieces {
        lines.push(Bytes::copy_from_slice(piece));
        while let Some(line) = lines.next_line() {
            out.push(line.to_vec());
        }
    }
    (out, lines.is_empty())
}

/// Checks the fast path against the JSON parser on one line: when the fast path takes the
/// line, the parser must read it as an `item` frame with the same value.
///
/// # Errors
/// A description of the disagreement.
pub fn check_fast_path(line: &[u8]) -> Result<(), String> {
    let Some(fast) = plain_string_item(line) else {
        return Ok(());
    };
    match serde_json::from_slice::<StreamFrame>(line) {
        Ok(StreamFrame::Item(parsed)) if parsed == fast => Ok(()),
        Ok(other) => Err(format!("fast path read {fast:?}, the parser {other:?}")),
        Err(e) => Err(format!("fast path read {fast:?}, the parser failed: {e}")),
    }
}
