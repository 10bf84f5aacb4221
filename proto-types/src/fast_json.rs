//! Fast paths for the call bodies `{"input":…}` and `{"output":…}`: a writer that copies
//! strings needing no escapes in one piece, and a reader for a body whose value is such a
//! string.
//!
//! serde_json looks at every byte of a string on its own, both when it writes one (to escape
//! it) and when it reads one; for a large string input that was most of a call's cost. The
//! writer here is byte for byte what `serde_json::to_writer` writes (unit tests check), so the
//! wire format does not change; the reader accepts only the exact shape the writer produces
//! for a plain string and leaves everything else to serde_json.

use serde_json::Value;
use std::io::Write;

/// Bytes tested per step of the scans below.
const BLOCK: usize = 64;

/// Writes `{"<key>":<value>}` (a call body) as compact JSON; see [`write_value`].
///
/// # Errors
/// What serde_json reports for a value it cannot write (a non-finite number never occurs in a
/// `Value`, so in practice none).
pub fn write_field(buf: &mut Vec<u8>, key: &str, value: &Value) -> serde_json::Result<()> {
    buf.push(b'{');
    write_str(buf, key)?;
    buf.push(b':');
    write_value(buf, value)?;
    buf.push(b'}');
    Ok(())
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
    let rest = body.strip_prefix(b"{\"")?.strip_prefix(key.as_bytes())?;
    let text = rest.strip_prefix(b"\":\"")?.strip_suffix(b"\"}")?;
    if needs_escape(text) {
        return None;
    }
    std::str::from_utf8(text).ok().map(str::to_owned)
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
