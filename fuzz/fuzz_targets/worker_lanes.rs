//! Fuzzes how the worker routes a new connection (`worker/src/lanes.rs` through
//! `plugvisor_worker::fuzzing`): `read_head` on a connection whose bytes arrive in arbitrary
//! pieces, `lane` on what it read, and `Prefixed` replaying it. Checks: no panic; the head is a
//! prefix of the input and the replay is exactly the input; the lane does not depend on how the
//! bytes were cut (reading stops only once more bytes cannot change it); and wherever hyper's
//! parsers (`httparse`, `http::Uri`) read an origin-form request line, the lane is the
//! protocol's rule `Lane::of` applied to the method and path the router will see (except that
//! a head starting with empty lines, which hyper skips, is allowed to go to the control lane).
//!
//! Input: byte 0 holds the number of cuts (mod 8), the next bytes their positions (scaled to the
//! rest), the rest is what the client sends.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plugvisor_proto::wire::routes::Lane;
use plugvisor_worker::fuzzing::{lane, route};

/// `HEAD_MAX` of `lanes.rs`: at most this much is read before routing.
const HEAD_MAX: usize = 8 * 1024;

/// The input cut at the positions it asks for.
fn pieces(data: &[u8]) -> (Vec<&[u8]>, &[u8]) {
    let Some((&count, rest)) = data.split_first() else {
        return (Vec::new(), data);
    };
    let count = usize::from(count % 8).min(rest.len());
    let (cuts, sent) = rest.split_at(count);
    let mut at: Vec<usize> = cuts
        .iter()
        .map(|&c| usize::from(c) * sent.len() / 255)
        .collect();
    at.sort_unstable();
    let mut out = Vec::new();
    let mut start = 0;
    for end in at {
        out.push(&sent[start..end]);
        start = end;
    }
    out.push(&sent[start..]);
    (out, sent)
}

/// The lane by hyper's reading of the request line, when it reads one in origin form.
fn lane_by_hyper(sent: &[u8]) -> Option<Lane> {
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut request = httparse::Request::new(&mut headers);
    // A partial parse still fills in a complete request line; errors in headers don't matter
    // only if the line itself was read, which `version` tells.
    let _ = request.parse(sent);
    let (method, target, _version) = (request.method?, request.path?, request.version?);
    if !target.starts_with('/') {
        return None;
    }
    let uri: http::Uri = target.parse().ok()?;
    let method: http::Method = method.parse().ok()?;
    Some(Lane::of(method == http::Method::GET, uri.path()))
}

fuzz_target!(|data: &[u8]| {
    let (pieces, sent) = pieces(data);
    let routed = route(&pieces).expect("in-memory reads do not fail");
    assert!(
        sent.starts_with(&routed.head),
        "the head is not a prefix of the input"
    );
    assert_eq!(routed.replayed, sent, "Prefixed does not replay the input");
    assert_eq!(routed.lane, lane(&routed.head));
    if routed.head.len() < HEAD_MAX {
        assert_eq!(
            routed.lane,
            lane(sent),
            "the lane of {:?} depends on the cuts (head {:?})",
            String::from_utf8_lossy(sent),
            String::from_utf8_lossy(&routed.head)
        );
        if let Some(expected) = lane_by_hyper(sent) {
            // A call connection runs on the plugin runtime, where stuck plugin code would stall a
            // control request: it must never carry one. The other way round is the designed
            // fallback (control connections offload calls), taken for every head `lanes.rs`
            // does not read as a request line, such as one after empty lines, which hyper skips.
            let skipped_empty_lines = sent.starts_with(b"\r") || sent.starts_with(b"\n");
            if routed.lane == Lane::Call || !skipped_empty_lines {
                assert_eq!(
                    routed.lane,
                    expected,
                    "lane of {:?} disagrees with what the router sees",
                    String::from_utf8_lossy(sent)
                );
            }
        }
    }
});
