//! Fast paths for the call bodies `{"input":…}` and `{"output":…}`: a writer that copies
//! strings needing no escapes in one piece, and a reader for a body whose value is such a
//! string.
//!
//! serde_json looks at every byte of a string on its own, both when it writes one (to escape
//! it) and when it reads one; for a large string input that was most of a call's cost. The
//! writer here is byte for byte what `serde_json::to_writer` writes (unit tests check), so the
//! wire format does not change; the reader accepts only the exact shape the writer produces
//! for a plain string and leaves everything else to serde_json. [`FieldBody`] reads such a
//! body chunk by chunk so that a plain string lands in its own buffer and becomes the
//! `String` without another copy.

use bytes::Bytes;
use serde_json::Value;
use std::cell::RefCell;
use std::io::Write;

/// Bytes tested per step of the scans below.
const BLOCK: usize = 64;

/// Writes `{"<key>":<value>}` (a call body) as compact JSON; see [`write_value`].
///
/// # Errors
/// What serde_json reports for a value it cannot write (a non-finite number never occurs in a
/// `Value`, so in practice none).
pub fn write_field(buf: &mut Vec<u8>, key: &str, value: &Value) -> serde_json::Result<()> {
    if let Value::String(s) = value {
        // One allocation of the right size instead of doubling up to it (a 1 MiB string
        // was copied twice more by the growth, into fresh pages each time).
        buf.reserve(key.len() + s.len() + 7);
    }
    buf.push(b'{');
    write_str(buf, key)?;
    buf.push(b':');
    write_value(buf, value)?;
    buf.push(b'}');
    Ok(())
}

/// A string value at least this long is written into a buffer of its own; shorter bodies
/// are written into this thread's scratch buffer and copied out.
const OWN_BUFFER: usize = 4096;
/// A scratch buffer that a large body left bigger than this is dropped.
const SCRATCH_MAX: usize = 64 * 1024;

thread_local! {
    /// Where small call bodies are written before they are copied into an exact-size
    /// `Bytes`: one allocation per body instead of two (a growing `Vec`, and the shared
    /// header `Bytes::from(Vec)` adds when the length is not the capacity).
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// `{"<key>":<value>}` as [`write_field`] writes it, as `Bytes` ready to send: a large
/// string in an exact-size buffer of its own, anything else written into a per-thread
/// buffer and copied out at its size.
///
/// # Errors
/// As [`write_field`].
pub fn field_bytes(key: &str, value: &Value) -> serde_json::Result<Bytes> {
    if matches!(value, Value::String(s) if s.len() >= OWN_BUFFER) {
        let mut buf = Vec::new();
        write_field(&mut buf, key, value)?;
        return Ok(Bytes::from(buf));
    }
    SCRATCH.with(|scratch| {
        let mut buf = scratch.borrow_mut();
        buf.clear();
        let written = write_field(&mut buf, key, value).map(|()| Bytes::copy_from_slice(&buf));
        if buf.capacity() > SCRATCH_MAX {
            *buf = Vec::new();
        }
        written
    })
}

/// Writes `value` to `out` as compact JSON, byte for byte what `serde_json::to_writer` writes,
/// copying strings that need no escaping in one piece. `out` is any writer: a `Vec<u8>`, or
/// a `BytesMut` through its `writer()` (a stream's NDJSON body).
///
/// # Errors
/// As [`write_field`], and what `out` reports (a `Vec<u8>` reports nothing).
pub fn write_value<W: Write + ?Sized>(out: &mut W, value: &Value) -> serde_json::Result<()> {
    match value {
        Value::String(s) => write_str(out, s),
        Value::Array(items) => {
            put(out, b"[")?;
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    put(out, b",")?;
                }
                write_value(out, item)?;
            }
            put(out, b"]")
        }
        Value::Object(map) => {
            put(out, b"{")?;
            for (i, (key, item)) in map.iter().enumerate() {
                if i > 0 {
                    put(out, b",")?;
                }
                write_str(out, key)?;
                put(out, b":")?;
                write_value(out, item)?;
            }
            put(out, b"}")
        }
        scalar => serde_json::to_writer(out, scalar),
    }
}

/// Writes a JSON string: in one copy when nothing in it needs escaping, else by serde_json.
fn write_str<W: Write + ?Sized>(out: &mut W, s: &str) -> serde_json::Result<()> {
    if needs_escape(s.as_bytes()) {
        return serde_json::to_writer(out, s);
    }
    put(out, b"\"")?;
    put(out, s.as_bytes())?;
    put(out, b"\"")
}

fn put<W: Write + ?Sized>(out: &mut W, bytes: &[u8]) -> serde_json::Result<()> {
    out.write_all(bytes).map_err(serde_json::Error::io)
}

/// The string of a body that is exactly `{"<key>":"<text>"}` with no escapes in the text and
/// valid UTF-8 (what serde_json would read from it), else `None`: then serde_json decides.
pub fn plain_string_field(body: &[u8], key: &str) -> Option<String> {
    let text = strip_head(body, key)?.strip_suffix(b"\"}")?;
    plain_text(text).map(str::to_owned)
}

/// `text` (the inside of a JSON string) as the string it encodes when it holds no escapes
/// and is valid UTF-8, else `None`. The usual case, ASCII without escapes, takes one scan.
/// Inlined: it sits on the stream decoder's per-item path in the host crate.
#[inline]
pub fn plain_text(text: &[u8]) -> Option<&str> {
    if !any_byte(text, |b| is_special(b) | (b >= 0x80)) {
        // SAFETY: every byte of `text` is below 0x80 (checked just above), and ASCII is UTF-8.
        return Some(unsafe { std::str::from_utf8_unchecked(text) });
    }
    if needs_escape(text) {
        return None;
    }
    std::str::from_utf8(text).ok()
}

/// A call body `{"<key>":…}` read chunk by chunk. A body that arrives in one chunk (every
/// small one) is kept as that chunk, uncopied. Otherwise the chunks are copied into one
/// buffer, and when the first begins the way a string value does (`{"<key>":"`) those bytes
/// are left out, so a plain string (no escapes, valid UTF-8) ends up alone in the buffer and
/// [`finish`](Self::finish) hands that buffer over as the `String`: one copy from the
/// connection's chunks instead of two (chunks into one body, the body's text into a `String`).
#[derive(Debug)]
pub struct FieldBody {
    key: &'static str,
    /// The only chunk so far, not yet copied.
    first: Option<Bytes>,
    buf: Vec<u8>,
    /// The expected body size.
    capacity: usize,
    /// `{"<key>":"` was left out of `buf`.
    headless: bool,
    /// A chunk has been pushed.
    started: bool,
}

/// What a [`FieldBody`] read.
#[derive(Debug, PartialEq, Eq)]
pub enum Field {
    /// The body was `{"<key>":"<text>"}` with plain text: the text.
    Plain(String),
    /// Anything else: the whole body, for serde_json.
    Body(Bytes),
}

impl FieldBody {
    /// An empty body of a call with field `key`; `capacity` is the expected body size (its
    /// `Content-Length`), bounded by the caller.
    pub fn new(key: &'static str, capacity: usize) -> Self {
        Self {
            key,
            first: None,
            buf: Vec::new(),
            capacity,
            headless: false,
            started: false,
        }
    }

    /// Appends the body's next chunk.
    pub fn push(&mut self, chunk: Bytes) {
        if chunk.is_empty() {
            return;
        }
        if !self.started {
            self.started = true;
            self.first = Some(chunk);
            return;
        }
        if let Some(first) = self.first.take() {
            self.buf
                .reserve(self.capacity.max(first.len() + chunk.len()));
            match strip_head(&first, self.key) {
                Some(rest) => {
                    self.headless = true;
                    self.buf.extend_from_slice(rest);
                }
                None => self.buf.extend_from_slice(&first),
            }
        }
        self.buf.extend_from_slice(&chunk);
    }

    /// Bytes of the body read so far.
    pub fn len(&self) -> usize {
        let head = if self.headless { head_len(self.key) } else { 0 };
        self.first.as_ref().map_or(0, Bytes::len) + self.buf.len() + head
    }

    /// True before any byte was read.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The plain string, or the whole body.
    pub fn finish(self) -> Field {
        if let Some(first) = self.first {
            return match plain_string_field(&first, self.key) {
                Some(text) => Field::Plain(text),
                None => Field::Body(first),
            };
        }
        if !self.headless {
            return match plain_string_field(&self.buf, self.key) {
                Some(text) => Field::Plain(text),
                None => Field::Body(Bytes::from(self.buf)),
            };
        }
        let mut buf = self.buf;
        if let Some(text) = buf.strip_suffix(b"\"}") {
            if !needs_escape(text) {
                buf.truncate(text.len());
                match String::from_utf8(buf) {
                    Ok(text) => return Field::Plain(text),
                    Err(e) => {
                        buf = e.into_bytes();
                        buf.extend_from_slice(b"\"}");
                    }
                }
            }
        }
        let mut whole = Vec::with_capacity(head_len(self.key) + buf.len());
        whole.extend_from_slice(b"{\"");
        whole.extend_from_slice(self.key.as_bytes());
        whole.extend_from_slice(b"\":\"");
        whole.extend_from_slice(&buf);
        Field::Body(Bytes::from(whole))
    }
}

/// `chunk` after `{"<key>":"`, if it starts so.
fn strip_head<'a>(chunk: &'a [u8], key: &str) -> Option<&'a [u8]> {
    chunk
        .strip_prefix(b"{\"")?
        .strip_prefix(key.as_bytes())?
        .strip_prefix(b"\":\"")
}

/// The length of `{"<key>":"`.
fn head_len(key: &str) -> usize {
    key.len() + 5
}

/// True when `bytes` holds a byte JSON escapes: a control character (below 0x20), a quote or
/// a backslash ([`any_byte`]'s vector scan).
pub fn needs_escape(bytes: &[u8]) -> bool {
    any_byte(bytes, is_special)
}

/// True when `pred` holds for a byte of `bytes`. Full blocks of [`BLOCK`] bytes, then of
/// [`LANE`] bytes, are tested by loops without early exit, which the compiler turns into
/// vector instructions; the last few bytes are copied into a lane padded with `b'a'` (for
/// which `pred` must be false) and tested the same way. A byte-by-byte test of a 16-byte
/// string cost ≈ 195 instructions, a 64-byte padded block ≈ 70, this ≈ 30.
#[inline(always)]
pub fn any_byte(bytes: &[u8], pred: impl Fn(u8) -> bool + Copy) -> bool {
    let mut blocks = bytes.chunks_exact(BLOCK);
    if blocks.by_ref().any(|block| all_of::<BLOCK>(block, pred)) {
        return true;
    }
    let mut lanes = blocks.remainder().chunks_exact(LANE);
    if lanes.by_ref().any(|lane| all_of::<LANE>(lane, pred)) {
        return true;
    }
    let tail = lanes.remainder();
    if tail.is_empty() {
        return false;
    }
    let mut padded = [b'a'; LANE];
    padded[..tail.len()].copy_from_slice(tail);
    all_of::<LANE>(&padded, pred)
}

/// Bytes tested per step after the full blocks: one SSE2 vector.
const LANE: usize = 16;

/// Whether `pred` holds for a byte of `chunk` (exactly `N` bytes), tested without early exit.
#[inline(always)]
fn all_of<const N: usize>(chunk: &[u8], pred: impl Fn(u8) -> bool) -> bool {
    let Ok(chunk) = <&[u8; N]>::try_from(chunk) else {
        return chunk.iter().any(|&b| pred(b));
    };
    let mut any = 0u8;
    for &b in chunk {
        any |= u8::from(pred(b));
    }
    any != 0
}

/// A byte JSON escapes in a string.
#[inline(always)]
fn is_special(b: u8) -> bool {
    (b < 0x20) | (b == b'"') | (b == b'\\')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn samples() -> Vec<Value> {
        vec![
            json!("plain"),
            json!(""),
            json!("a\"b\\c\nd\u{1}"),
            json!("ünï ✓ ".repeat(40)),
            json!("x".repeat(200)),
            json!(null),
            json!(true),
            json!(-1.5e300),
            json!(u64::MAX),
            json!([1, "two", {"three": [null, "x\ty"]}]),
            json!({"k\"ey": "v", "n": {"m": []}, "z": {}}),
        ]
    }

    #[test]
    fn writes_what_serde_json_writes() {
        for value in samples() {
            let mut fast = Vec::new();
            write_field(&mut fast, "input", &value).unwrap();
            let slow = serde_json::to_vec(&json!({ "input": value })).unwrap();
            assert_eq!(
                String::from_utf8(fast).unwrap(),
                String::from_utf8(slow).unwrap()
            );
        }
    }

    /// Every sample body, cut into chunks of every size from 1 to 40 bytes (and whole), reads
    /// as `plain_string_field` reads it: the same string, or the same body bytes back.
    #[test]
    fn field_body_reads_what_plain_string_field_reads_in_any_chunks() {
        let mut bodies: Vec<Vec<u8>> = samples()
            .into_iter()
            .map(|v| serde_json::to_vec(&json!({ "output": v })).unwrap())
            .collect();
        bodies.push(b"{\"output\":\"\xff\"}".to_vec());
        bodies.push(b"{\"output\":\"a\",\"x\":\"b\"}".to_vec());
        bodies.push(b"{\"output\":\"a\" }".to_vec());
        bodies.push(b"{\"input\":\"a\"}".to_vec());
        bodies.push(b"{\"output\":\"".to_vec());
        bodies.push(Vec::new());
        for body in &bodies {
            for size in (1..=40).chain([body.len().max(1)]) {
                let mut field = FieldBody::new("output", body.len());
                for chunk in body.chunks(size) {
                    field.push(Bytes::copy_from_slice(chunk));
                }
                assert_eq!(field.len(), body.len());
                let expected = match plain_string_field(body, "output") {
                    Some(text) => Field::Plain(text),
                    None => Field::Body(Bytes::from(body.clone())),
                };
                assert_eq!(field.finish(), expected, "{body:?} in chunks of {size}");
            }
        }
    }

    #[test]
    fn field_body_keeps_a_plain_string_in_its_own_buffer() {
        let text = "y".repeat(1 << 20);
        let body = serde_json::to_vec(&json!({ "input": text })).unwrap();
        let mut field = FieldBody::new("input", body.len());
        let mut chunks = body.chunks(64 * 1024);
        field.push(Bytes::copy_from_slice(chunks.next().unwrap()));
        field.push(Bytes::copy_from_slice(chunks.next().unwrap()));
        let buffer = field.buf.as_ptr();
        for chunk in chunks {
            field.push(Bytes::copy_from_slice(chunk));
        }
        let Field::Plain(read) = field.finish() else {
            panic!("a plain string was not read as one");
        };
        assert_eq!(read, text);
        // Handed over, not copied: the string is the buffer the chunks were read into.
        assert_eq!(read.as_ptr(), buffer);
    }

    #[test]
    fn field_body_keeps_a_single_chunk_uncopied() {
        let body = Bytes::from_static(br#"{"output":{"text":"hello"}}"#);
        let mut field = FieldBody::new("output", body.len());
        field.push(body.clone());
        let Field::Body(read) = field.finish() else {
            panic!("an object was read as a string");
        };
        assert_eq!(read.as_ptr(), body.as_ptr());
    }

    /// Bodies cut from the per-thread buffer are what `write_field` writes, each its own
    /// (one body is not changed by writing the next), small and large, and across a refill.
    #[test]
    fn field_bytes_writes_what_write_field_writes() {
        let mut values = samples();
        values.push(json!("z".repeat(OWN_BUFFER + 1)));
        values.push(json!({"big": "q".repeat(2 * SCRATCH_MAX)}));
        let mut kept = Vec::new();
        for round in 0..40 {
            for value in &values {
                let mut expected = Vec::new();
                write_field(&mut expected, "input", value).unwrap();
                let got = field_bytes("input", value).unwrap();
                assert_eq!(got, expected, "round {round}: {value}");
                kept.push((got, expected));
            }
        }
        for (got, expected) in kept {
            assert_eq!(got, expected);
        }
    }

    #[test]
    fn needs_escape_finds_every_special_byte_at_every_offset() {
        // Lengths across the 64-byte blocks, the 16-byte lanes and the padded tail.
        for n in 0..150 {
            for bad in ['"', '\\', '\n', '\u{0}', '\u{1f}'] {
                let s = format!("{}{bad}{}", "a".repeat(n), "b".repeat(n % 7));
                assert!(needs_escape(s.as_bytes()), "{s:?}");
            }
            let fine = format!("{}\u{20}~\u{7f}é{}", "a".repeat(n), "z".repeat(n % 5));
            assert!(!needs_escape(fine.as_bytes()), "{fine:?}");
        }
    }

    #[test]
    fn reads_plain_strings_as_serde_json_does_and_leaves_the_rest() {
        for value in samples() {
            let body = serde_json::to_vec(&json!({ "output": value })).unwrap();
            match plain_string_field(&body, "output") {
                Some(s) => assert_eq!(Value::String(s), value),
                None => assert!(!matches!(&value, Value::String(s) if !needs_escape(s.as_bytes()))),
            }
        }
        assert_eq!(plain_string_field(b"{\"output\":\"a\"}", "input"), None);
        assert_eq!(plain_string_field(b"{\"output\":\"a\" }", "output"), None);
        assert_eq!(plain_string_field(b"{\"output\":\"\xff\"}", "output"), None);
        assert_eq!(
            plain_string_field(b"{\"output\":\"a\",\"x\":\"b\"}", "output"),
            None
        );
    }
}
