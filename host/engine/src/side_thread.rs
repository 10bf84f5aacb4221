//! Running async work from synchronous trait methods (`Plugin::current_config`).

use plugvisor_proto::Value;

/// Runs `fut` to completion from synchronous code, inside or outside a runtime: on a scoped
/// thread with a runtime of its own, so a single-threaded caller's runtime cannot deadlock.
pub(crate) fn block_on_side_thread<F>(fut: F) -> Value
where
    F: std::future::Future<Output = Value> + Send,
{
    let run = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map(|rt| rt.block_on(fut))
            .unwrap_or(Value::Null)
    };
    std::thread::scope(|s| s.spawn(run).join().unwrap_or(Value::Null))
}
