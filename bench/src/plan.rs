//! Sizes, durations and trial counts of a run (`--quick` shrinks them).

use serde_json::{json, Value};
use std::time::Duration;

/// What a run measures, and how much.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// True for `--quick`.
    pub quick: bool,
    /// Trials of every repeated measurement (figures are medians over them).
    pub trials: usize,
    /// Sequential calls per trial (P1, P11).
    pub calls: usize,
    /// Duration of one throughput trial (P2).
    pub concurrent_for: Duration,
    /// Concurrent callers (P2).
    pub callers: usize,
    /// Chunks of the small-chunk stream (P3).
    pub small_chunks: u64,
    /// Bytes of the bulk stream (P4), the big file (P5, P6) and the inline body (P5).
    pub big_bytes: u64,
    /// Calls per trial with a file reference (P5).
    pub file_calls: usize,
    /// Spawns, kills and restarts measured (P7, P8, P9).
    pub lifecycle_trials: usize,
    /// Workers started at once (P10).
    pub workers: usize,
}

/// One GiB.
pub const GIB: u64 = 1 << 30;
/// One MiB.
pub const MIB: u64 = 1 << 20;

impl Plan {
    /// The full plan (under 5 minutes) or the quick one (under 1 minute).
    pub fn new(quick: bool) -> Self {
        if quick {
            Self {
                quick,
                trials: 3,
                calls: 3_000,
                concurrent_for: Duration::from_secs(1),
                callers: 8,
                small_chunks: 100_000,
                big_bytes: 128 * MIB,
                file_calls: 200,
                lifecycle_trials: 15,
                workers: 50,
            }
        } else {
            Self {
                quick,
                trials: 5,
                calls: 10_000,
                concurrent_for: Duration::from_secs(3),
                callers: 8,
                small_chunks: 100_000,
                big_bytes: GIB,
                file_calls: 500,
                lifecycle_trials: 40,
                workers: 200,
            }
        }
    }

    /// The plan as JSON, for the report.
    pub fn to_json(&self) -> Value {
        json!({
            "trials": self.trials,
            "sequential_calls_per_trial": self.calls,
            "concurrent_seconds": self.concurrent_for.as_secs_f64(),
            "concurrent_callers": self.callers,
            "small_stream_chunks": self.small_chunks,
            "big_bytes": self.big_bytes,
            "file_calls_per_trial": self.file_calls,
            "lifecycle_trials": self.lifecycle_trials,
            "workers_at_once": self.workers,
        })
    }
}
