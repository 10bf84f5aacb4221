//! The trace a call runs in: while a future runs inside [`with_trace`], every request the
//! engine sends to a worker (call, stream, route, hook, event) bears a W3C `traceparent`
//! header that is a child of that trace (`docs/PROTOCOL.md`, "Trace context").

use http::HeaderValue;
use plugvisor_proto::wire::trace::TRACEPARENT_HEADER;
use plugvisor_proto::wire::TraceParent;
use std::future::Future;

tokio::task_local! {
    static TRACE: TraceParent;
}

/// A new trace with random ids (for a request that arrived without one).
pub fn new_trace() -> TraceParent {
    TraceParent::root(uuid::Uuid::new_v4().as_u128(), random_span())
}

/// A random span id (never zero).
fn random_span() -> u64 {
    // The low 64 bits of a v4 UUID: 62 random bits, plenty for a span id.
    uuid::Uuid::new_v4().as_u64_pair().1.max(1)
}

/// The span this process opens in `parent`'s trace: the same trace and flags, a new random
/// parent id (what a server answers in `traceresponse` and makes its requests under).
pub fn child_span(parent: TraceParent) -> TraceParent {
    parent.child(random_span())
}

/// Runs `future` inside `trace`: every worker request it makes carries a child of it.
pub async fn with_trace<F: Future>(trace: TraceParent, future: F) -> F::Output {
    TRACE.scope(trace, future).await
}

/// The trace of the running task, if it runs inside [`with_trace`].
pub fn current_trace() -> Option<TraceParent> {
    TRACE.try_with(|t| *t).ok()
}

/// The valid W3C `traceparent` among `headers`, if there is one (an invalid one counts as
/// none, as the W3C rules say).
pub fn traceparent_of(headers: &http::HeaderMap) -> Option<TraceParent> {
    headers
        .get(TRACEPARENT_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(TraceParent::parse)
}

/// The `traceparent` a worker request with `headers` carries: a child of the running task's
/// trace, else a child of the valid one the request already has (a forwarded request), else
/// none.
pub(crate) fn outgoing(headers: &http::HeaderMap) -> Option<HeaderValue> {
    child_header(current_trace().or_else(|| traceparent_of(headers))?)
}

/// The `traceparent` of a request the host makes itself: a child of the running task's
/// trace, else none.
pub(crate) fn outgoing_own() -> Option<HeaderValue> {
    child_header(current_trace()?)
}

fn child_header(parent: TraceParent) -> Option<HeaderValue> {
    HeaderValue::try_from(parent.child(random_span()).to_string()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn requests_inside_a_trace_carry_a_child_of_it() {
        let none = http::HeaderMap::new();
        assert_eq!(outgoing(&none), None);
        let trace = new_trace();
        let sent = with_trace(trace, async { outgoing(&none) }).await.unwrap();
        let sent = TraceParent::parse(sent.to_str().unwrap()).unwrap();
        assert_eq!(sent.trace_id, trace.trace_id);
        assert_ne!(sent.parent_id, trace.parent_id);
        assert_eq!(current_trace(), None);
    }

    #[test]
    fn a_forwarded_valid_header_is_continued_and_garbage_is_dropped() {
        let theirs = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let with = |value: &'static str| {
            let mut headers = http::HeaderMap::new();
            headers.insert(TRACEPARENT_HEADER, HeaderValue::from_static(value));
            headers
        };
        let sent = outgoing(&with(theirs)).unwrap();
        let sent = TraceParent::parse(sent.to_str().unwrap()).unwrap();
        assert_eq!(sent.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(sent.flags, 1);
        assert_eq!(outgoing(&with("nope")), None);
    }

    #[test]
    fn new_traces_differ() {
        assert_ne!(new_trace().trace_id, new_trace().trace_id);
    }
}
