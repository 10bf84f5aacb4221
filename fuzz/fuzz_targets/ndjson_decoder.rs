//! Fuzzes the host's NDJSON stream decoder (`host/engine/src/stream.rs` through
//! `plugvisor_host::fuzzing`): its line splitter `Lines` on a body cut into arbitrary pieces,
//! and the per-line decision (plain-string fast path, then the JSON parser). Checks: no panic,
//! the result does not depend on where the body was cut, the lines are exactly the body up to
//! its last newline, and whenever the fast path takes a line the JSON parser reads the same
//! item from it.
//!
//! Input: byte 0 holds the number of cuts (mod 8), the next bytes their positions (scaled to the
//! body), the rest is the body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plugvisor_host::fuzzing::{check_fast_path, decode_ndjson, split_lines};

/// The body cut at the positions the input asks for.
fn pieces(data: &[u8]) -> (Vec<&[u8]>, &[u8]) {
    let Some((&count, rest)) = data.split_first() else {
        return (Vec::new(), data);
    };
    let count = usize::from(count % 8).min(rest.len());
    let (cuts, body) = rest.split_at(count);
    let mut at: Vec<usize> = cuts
        .iter()
        .map(|&c| usize::from(c) * body.len() / 255)
        .collect();
    at.sort_unstable();
    let mut out = Vec::new();
    let mut start = 0;
    for end in at {
        out.push(&body[start..end]);
        start = end;
    }
    out.push(&body[start..]);
    (out, body)
}

fn check_line(line: &[u8]) {
    if let Err(disagreement) = check_fast_path(line) {
        panic!("{disagreement} on line {:?}", String::from_utf8_lossy(line));
    }
}

fuzz_target!(|data: &[u8]| {
    let (pieces, body) = pieces(data);

    let (lines, empty) = split_lines(&pieces);
    let complete = body.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    assert_eq!(
        lines.concat(),
        &body[..complete],
        "lines are the body up to its last newline"
    );
    for line in &lines {
        assert_eq!(line.iter().position(|&b| b == b'\n'), Some(line.len() - 1));
        check_line(line);
    }
    assert_eq!(
        empty,
        complete == body.len(),
        "nothing buffered only after a final newline"
    );

    let decoded = decode_ndjson(&pieces);
    assert_eq!(
        decoded,
        decode_ndjson(&[body]),
        "the result depends on the cuts"
    );
    assert!(
        decoded.iter().rev().skip(1).all(Result::is_ok),
        "only the last item may fail"
    );

    // Steer the fast path: the body as the text of a plain string item.
    let text: Vec<u8> = body.iter().copied().filter(|&b| b != b'\n').collect();
    let mut line = b"{\"item\":\"".to_vec();
    line.extend_from_slice(&text);
    line.extend_from_slice(b"\"}\n");
    check_line(&line);
});
