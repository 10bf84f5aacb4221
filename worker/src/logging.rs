//! The worker's log: one line per event on stderr, filtered by `PLUGVISOR_LOG`.
//!
//! The filter is a comma-separated list of `level` and `target=level` directives
//! (`info`, `plugvisor_worker=debug,warn`): tracing-subscriber's `Targets`, not its
//! `EnvFilter`. `EnvFilter`'s span and field filters compile regular expressions, and its
//! parser links regex-syntax's Unicode tables into every worker binary: ≈ 120 KiB of them are
//! pointer tables the dynamic loader relocates at each start, private memory in every worker
//! that never used them (docs/PERFORMANCE.md, "Hot text"). The Python SDK takes the same
//! subset.

use crate::cli::LOG_ENV;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// Logs to stderr without colors, filtered by `PLUGVISOR_LOG` (default `info`). A filter
/// that cannot be used is reported in the log itself, and `info` applies.
pub(crate) fn init() {
    let text = std::env::var(LOG_ENV).ok();
    let (filter, problem) = match parse(text.as_deref()) {
        Ok(filter) => (filter, None),
        Err(problem) => (
            Targets::new().with_default(LevelFilter::INFO),
            Some(problem),
        ),
    };
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(false);
    let installed = tracing_subscriber::registry()
        .with(layer)
        .with(filter)
        .try_init()
        .is_ok();
    if let (true, Some(problem)) = (installed, problem) {
        tracing::warn!(
            "{LOG_ENV}={:?} is not used: {problem}; logging at info",
            text.unwrap_or_default()
        );
    }
}

/// The filter `text` asks for (`None` or blank: `info`), or why it cannot be used.
fn parse(text: Option<&str>) -> Result<Targets, String> {
    let text = text.map(str::trim).unwrap_or_default();
    if text.is_empty() {
        return Ok(Targets::new().with_default(LevelFilter::INFO));
    }
    if text.contains(['[', '{']) {
        return Err("span and field filters are not supported by workers; use \
                    comma-separated `level` or `target=level` directives"
            .to_owned());
    }
    text.parse::<Targets>().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;

    fn enabled(filter: &Targets, target: &str, level: Level) -> bool {
        filter.would_enable(target, &level)
    }

    #[test]
    fn levels_and_targets_are_read() {
        let info = parse(None).unwrap();
        assert!(enabled(&info, "anything", Level::INFO));
        assert!(!enabled(&info, "anything", Level::DEBUG));
        let mixed = parse(Some("warn,plugvisor_worker=debug")).unwrap();
        assert!(enabled(&mixed, "plugvisor_worker::run", Level::DEBUG));
        assert!(!enabled(&mixed, "hyper", Level::INFO));
        assert!(enabled(&mixed, "hyper", Level::WARN));
        let off = parse(Some("off")).unwrap();
        assert!(!enabled(&off, "anything", Level::ERROR));
        assert!(enabled(&parse(Some("  ")).unwrap(), "x", Level::INFO));
    }

    #[test]
    fn unusable_filters_name_the_problem() {
        let span = parse(Some("plugvisor_worker[call]=debug")).unwrap_err();
        assert!(span.contains("span and field filters"), "{span}");
        let level = parse(Some("plugvisor_worker=loud")).unwrap_err();
        assert!(!level.is_empty());
        assert!(parse(Some("a=b=c")).is_err());
    }
}
