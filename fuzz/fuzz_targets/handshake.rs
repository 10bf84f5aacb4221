//! Fuzzes `Handshake::parse` (the worker's one handshake line) on arbitrary UTF-8: no panic, a
//! refused line is quoted without its newline, and a parsed handshake's `Display` parses back to
//! the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plugvisor_proto::wire::Handshake;

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    match Handshake::parse(line) {
        Ok(handshake) => {
            let shown = handshake.to_string();
            let again = Handshake::parse(&shown)
                .unwrap_or_else(|e| panic!("{line:?} parsed, its Display {shown:?} did not: {e}"));
            assert_eq!(again, handshake, "{line:?} -> {shown:?}");
            // Displayed once more, it is stable.
            assert_eq!(again.to_string(), shown);
        }
        Err(bad) => {
            assert_eq!(bad.line, line.trim_end_matches(['\n', '\r']));
            let _ = bad.to_string();
        }
    }
});
