//! The call context a nested call carries to its worker: while a future runs inside
//! [`with_call_context`], every request the engine sends to a worker bears the
//! `x-plugvisor-call` header with that context's id (see `docs/PROTOCOL.md`, services).

use http::HeaderValue;
use std::future::Future;

tokio::task_local! {
    static CONTEXT: CallContext;
}

/// The id of one service call in flight, chosen by whoever routes service calls (the
/// manager). A worker serving a call that bears it passes it back on the service calls it
/// makes, so the router can follow the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CallContext(pub u64);

impl CallContext {
    /// The header value: 16 hex digits.
    pub fn to_header(self) -> HeaderValue {
        HeaderValue::from(self)
    }

    /// The context a header value names, if it is one.
    pub fn parse(value: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(value).ok()?;
        (text.len() == 16)
            .then(|| u64::from_str_radix(text, 16).ok())
            .flatten()
            .map(Self)
    }
}

impl From<CallContext> for HeaderValue {
    fn from(context: CallContext) -> Self {
        let text = format!("{:016x}", context.0);
        // 16 hex digits are always a valid header value.
        HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static("0000000000000000"))
    }
}

/// Runs `future` with `context` as the call context of every worker request it makes.
pub async fn with_call_context<F: Future>(context: CallContext, future: F) -> F::Output {
    CONTEXT.scope(context, future).await
}

/// The call context of the running task, if it runs inside [`with_call_context`].
pub(crate) fn current() -> Option<CallContext> {
    CONTEXT.try_with(|c| *c).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_context_round_trips_through_its_header_and_garbage_is_none() {
        let c = CallContext(0xdead_beef_0000_0001);
        assert_eq!(CallContext::parse(c.to_header().as_bytes()), Some(c));
        for bad in [&b""[..], b"xyz", b"00000000000000000", b"zzzzzzzzzzzzzzzz"] {
            assert_eq!(CallContext::parse(bad), None);
        }
    }

    #[tokio::test]
    async fn the_context_is_visible_only_inside_its_scope() {
        assert_eq!(current(), None);
        let inside = with_call_context(CallContext(7), async { current() }).await;
        assert_eq!(inside, Some(CallContext(7)));
        assert_eq!(current(), None);
    }
}
