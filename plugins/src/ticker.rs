//! `ticker`: streams `n` items, each a JSON string of exactly `bytes` bytes, optionally paced.
//!
//! Input: `{"n": u64, "bytes": usize (default 16, at most 16 MiB), "interval_ms": u64
//! (default 0)}`. With no interval the stream is ready on every poll and does no per-item
//! work beyond cloning one prepared string, so it measures the transport, not the plugin.
//! With an interval it sleeps between items, which makes cancellation observable.

use futures_util::stream::{self, StreamExt};
use plugvisor_proto::wire::RouteSpec;
use plugvisor_proto::{json, Plugin, PluginError, PluginStream, Value};
use plugvisor_worker::{RouteRequest, RouteResponse, Routes};
use std::time::Duration;

/// Largest item the ticker makes.
pub const MAX_ITEM_BYTES: usize = 16 * 1024 * 1024;

/// Default item size.
pub const DEFAULT_ITEM_BYTES: usize = 16;

/// A validated ticker input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TickerInput {
    /// Number of items.
    pub n: u64,
    /// Bytes per item.
    pub bytes: usize,
    /// Pause between items.
    pub interval: Duration,
}

impl TickerInput {
    /// Reads and checks an input.
    ///
    /// # Errors
    /// [`PluginError::InvalidInput`] naming the field and the rule.
    pub fn from_value(input: &Value) -> Result<Self, PluginError> {
        let map = input.as_object().ok_or_else(|| {
            PluginError::invalid_input(format!("input: must be an object, got {input}"))
        })?;
        if let Some(key) = map
            .keys()
            .find(|k| !["n", "bytes", "interval_ms"].contains(&k.as_str()))
        {
            return Err(PluginError::invalid_input(format!(
                "{key}: unknown field; allowed fields are \"n\", \"bytes\", \"interval_ms\""
            )));
        }
        let n = field_u64(input, "n")?.ok_or_else(|| PluginError::invalid_input("n: required"))?;
        let bytes = field_u64(input, "bytes")?.map_or(Ok(DEFAULT_ITEM_BYTES), |b| {
            usize::try_from(b)
                .ok()
                .filter(|b| *b <= MAX_ITEM_BYTES)
                .ok_or_else(|| {
                    PluginError::invalid_input(format!(
                        "bytes: must be at most {MAX_ITEM_BYTES}, got {b}"
                    ))
                })
        })?;
        let interval = Duration::from_millis(field_u64(input, "interval_ms")?.unwrap_or(0));
        Ok(Self { n, bytes, interval })
    }
}

/// An optional non-negative integer field.
fn field_u64(input: &Value, key: &str) -> Result<Option<u64>, PluginError> {
    match input.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value.as_u64().map(Some).ok_or_else(|| {
            PluginError::invalid_input(format!(
                "{key}: must be a non-negative integer, got {value}"
            ))
        }),
    }
}

/// The ticker plugin.
#[derive(Debug, Default)]
pub struct Ticker;

/// Largest `mib` of `GET /bytes`.
const MAX_ROUTE_MIB: u64 = 1 << 20;

/// Ticker's HTTP routes (mounted by the host under `/plugins/ticker`):
/// - `GET /events?n=5&interval_ms=100` → Server-Sent Events `tick 1` … `tick n`;
/// - `GET /bytes?mib=N` → N MiB of `x`, streamed in 64 KiB chunks.
impl Routes for Ticker {
    fn routes(&self) -> Vec<RouteSpec> {
        vec![
            RouteSpec::new("GET", "/events").summary("Server-Sent Events: ?n=5&interval_ms=100"),
            RouteSpec::new("GET", "/bytes").summary("?mib=N MiB of data, streamed"),
        ]
    }

    async fn handle(&self, request: RouteRequest) -> Result<RouteResponse, PluginError> {
        let number = |name: &str, default: u64| -> Result<u64, PluginError> {
            match request.query_param(name) {
                None => Ok(default),
                Some(v) => v.parse().map_err(|_| {
                    PluginError::invalid_input(format!("{name}: must be a number, got {v:?}"))
                }),
            }
        };
        if request.path == "/events" {
            let n = number("n", 5)?;
            let interval = Duration::from_millis(number("interval_ms", 100)?);
            let ticks = stream::unfold(1u64, move |i| async move {
                if i > n {
                    return None;
                }
                if i > 1 {
                    tokio::time::sleep(interval).await;
                }
                Some((format!("tick {i}"), i + 1))
            });
            return Ok(RouteResponse::sse(ticks));
        }
        let mib = number("mib", 1)?.min(MAX_ROUTE_MIB);
        let chunk = bytes::Bytes::from(vec![b'x'; 64 << 10]);
        let chunks = stream::repeat(chunk).take(usize::try_from(mib * 16).unwrap_or(usize::MAX));
        Ok(RouteResponse::stream(
            200,
            "application/octet-stream",
            chunks,
        ))
    }
}

impl Plugin for Ticker {
    fn name(&self) -> &str {
        "ticker"
    }

    fn version(&self) -> &str {
        env!("CARGO_PKG_VERSION")
    }

    /// Counts the ticks without sending them: `{"n", "bytes", "total_bytes"}`. With an
    /// `interval_ms` it takes as long as the stream would (a slow call, for tests).
    async fn execute(&self, input: Value) -> Result<Value, PluginError> {
        let input = TickerInput::from_value(&input)?;
        if !input.interval.is_zero() {
            let ticks = u32::try_from(input.n).unwrap_or(u32::MAX);
            tokio::time::sleep(input.interval.saturating_mul(ticks)).await;
        }
        let total = input.n.saturating_mul(input.bytes as u64);
        Ok(json!({"n": input.n, "bytes": input.bytes, "total_bytes": total}))
    }

    async fn execute_stream(&self, input: Value) -> Result<PluginStream, PluginError> {
        let input = TickerInput::from_value(&input)?;
        let item = Value::String("x".repeat(input.bytes));
        let count = usize::try_from(input.n).unwrap_or(usize::MAX);
        if input.interval.is_zero() {
            return Ok(Box::pin(stream::repeat(item).take(count).map(Ok)));
        }
        Ok(Box::pin(paced(item, input.n, input.interval)))
    }
}

/// `n` clones of `item`, sleeping `interval` between two of them.
fn paced(
    item: Value,
    n: u64,
    interval: Duration,
) -> impl futures_util::Stream<Item = Result<Value, PluginError>> + Send + 'static {
    stream::unfold(0u64, move |i| {
        let item = item.clone();
        async move {
            if i >= n {
                return None;
            }
            if i > 0 {
                tokio::time::sleep(interval).await;
            }
            Some((Ok(item), i + 1))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn collect(input: Value) -> Vec<Value> {
        let stream = Ticker.execute_stream(input).await.unwrap();
        stream.map(Result::unwrap).collect().await
    }

    #[tokio::test]
    async fn streams_n_items_of_the_requested_size() {
        let items = collect(json!({"n": 1000, "bytes": 7})).await;
        assert_eq!(items.len(), 1000);
        assert!(items.iter().all(|v| v.as_str().unwrap().len() == 7));
        let items = collect(json!({"n": 3})).await;
        assert_eq!(items[0].as_str().unwrap().len(), DEFAULT_ITEM_BYTES);
        assert!(collect(json!({"n": 0})).await.is_empty());
    }

    #[tokio::test]
    async fn paced_streams_count_the_same() {
        let items = collect(json!({"n": 3, "bytes": 1, "interval_ms": 1})).await;
        assert_eq!(items, vec![json!("x"); 3]);
    }

    #[tokio::test]
    async fn bad_input_is_named() {
        let cases = [
            (json!({}), "n: required"),
            (json!({"n": -1}), "n: must be a non-negative integer"),
            (
                json!({"n": 1, "bytes": MAX_ITEM_BYTES + 1}),
                "bytes: must be at most",
            ),
            (json!({"n": 1, "speed": 2}), "speed: unknown field"),
            (json!(5), "input: must be an object"),
        ];
        for (input, want) in cases {
            let Err(err) = Ticker.execute_stream(input).await else {
                panic!("accepted")
            };
            assert!(matches!(err, PluginError::InvalidInput(_)), "{err:?}");
            assert!(
                err.to_string().contains(want),
                "{err} should contain {want}"
            );
        }
    }

    #[tokio::test]
    async fn execute_summarizes() {
        let out = Ticker.execute(json!({"n": 4, "bytes": 8})).await.unwrap();
        assert_eq!(out, json!({"n": 4, "bytes": 8, "total_bytes": 32}));
    }
}
