//! W3C Trace Context across the process boundary: the `traceparent` header the host sends
//! with every call, stream, route request, hook and service call made inside a trace, and
//! that a worker passes on (as its child) to the service calls it makes.
//!
//! Only parsing and formatting live here (no I/O, no randomness): the host and the worker
//! runtimes pick the random ids.

use std::fmt;

/// The request header (<https://www.w3.org/TR/trace-context/#traceparent-header>).
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// The response header the management API answers with: the trace the request ran in, so a
/// client that sent none can still find its request in the logs (Trace Context Level 2's
/// `traceresponse`, same format as `traceparent`).
pub const TRACERESPONSE_HEADER: &str = "traceresponse";

/// One `traceparent` value: the trace, the caller's span in it, and the flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    /// The trace's id (never zero).
    pub trace_id: u128,
    /// The id of the span that made this request (never zero).
    pub parent_id: u64,
    /// Trace flags; bit 0 is "sampled".
    pub flags: u8,
}

impl TraceParent {
    /// A new trace with `parent_id` as its first span (both ids must be random and non-zero;
    /// zero is replaced by 1, as an all-zero id is invalid).
    pub fn root(trace_id: u128, parent_id: u64) -> Self {
        Self {
            trace_id: trace_id.max(1),
            parent_id: parent_id.max(1),
            flags: 0,
        }
    }

    /// The same trace, with `span_id` (random, non-zero) as the span that makes the next
    /// request.
    #[must_use]
    pub fn child(self, span_id: u64) -> Self {
        Self {
            parent_id: span_id.max(1),
            ..self
        }
    }

    /// Parses a header value by the W3C rules: lowercase hex, version `00` exactly 55
    /// characters, a later version at least that with `-` after the flags, never version `ff`,
    /// never an all-zero id. Anything else is `None` (the receiver then starts a new trace).
    pub fn parse(value: &str) -> Option<Self> {
        let b = value.as_bytes();
        if !value.is_ascii() || b.len() < 55 || !(b[2] == b'-' && b[35] == b'-' && b[52] == b'-') {
            return None;
        }
        let version = hex(&value[0..2])? as u8;
        if version == 0xff || (version == 0 && b.len() != 55) || (b.len() > 55 && b[55] != b'-') {
            return None;
        }
        let trace_id = hex(&value[3..35])?;
        let parent_id = u64::try_from(hex(&value[36..52])?).ok()?;
        let flags = hex(&value[53..55])? as u8;
        (trace_id != 0 && parent_id != 0).then_some(Self {
            trace_id,
            parent_id,
            flags,
        })
    }

    /// The trace id as 32 lowercase hex digits (what log lines show).
    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }
}

/// The header value, version `00`.
impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.parent_id, self.flags
        )
    }
}

/// Lowercase hex digits only (W3C forbids upper case), at most 32 of them.
fn hex(digits: &str) -> Option<u128> {
    let lower = digits
        .bytes()
        .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    (lower && !digits.is_empty() && digits.len() <= 32)
        .then(|| u128::from_str_radix(digits, 16).ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_w3c_example_round_trips() {
        let t = TraceParent::parse(EXAMPLE).unwrap();
        assert_eq!(t.trace_id, 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736);
        assert_eq!(t.parent_id, 0x00f0_67aa_0ba9_02b7);
        assert_eq!(t.flags, 1);
        assert_eq!(t.to_string(), EXAMPLE);
        assert_eq!(t.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[test]
    fn a_child_keeps_the_trace_and_flags_and_changes_the_span() {
        let t = TraceParent::parse(EXAMPLE).unwrap();
        let c = t.child(0xabc);
        assert_eq!((c.trace_id, c.flags), (t.trace_id, t.flags));
        assert_eq!(c.parent_id, 0xabc);
        assert_eq!(t.child(0).parent_id, 1);
        assert_eq!(TraceParent::root(0, 0).to_string().len(), 55);
    }

    #[test]
    fn invalid_values_are_refused() {
        let bad = [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473x-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e47é-00f067aa0ba902b7-01",
            "é0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ];
        for value in bad {
            assert_eq!(TraceParent::parse(value), None, "{value}");
        }
    }

    #[test]
    fn a_later_version_is_read_by_its_first_fields() {
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes";
        let t = TraceParent::parse(later).unwrap();
        assert_eq!(t.to_string(), EXAMPLE);
        let glued = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x";
        assert_eq!(TraceParent::parse(glued), None);
    }
}
