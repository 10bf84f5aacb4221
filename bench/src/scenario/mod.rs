//! The scenarios P1 … P11, grouped by what they exercise, and what they share.
//!
//! - `calls`: P1 (sequential calls), P11 (TCP instead of a Unix socket), P2 (8 callers).
//! - `streams`: P3 (100,000 small chunks), P4 (bulk stream).
//! - `files`: P5 (file reference vs size, and inline for contrast), P6 (hashing).
//! - `lifecycle`: P7 (spawn to first answer), P8 (crash detection), P9 (restart).
//! - `scale`: P10 (memory and start-up of many workers).
//! - `sandbox`: P12 (a call, sandboxed vs not), P13 (spawn, sandboxed vs not).
//! - `routes`: P15 (a plugin route vs execute through the API), P16 (a streamed route).
//! - `middleware`: P17 (what one middleware adds to a request, vs one plugin call).
//! - `tasks`: P18 (how late scheduled task runs start, idle and under call load).
//! - `python`: P20 (the Python SDK's worker vs cjm-plugin-system's proxy and worker).
//! - `pools`: P21 (a CPU-bound Python plugin with two replicas vs one worker).
//! - `peers`: P23 (HashiCorp go-plugin over net/rpc and gRPC, built and run in the same run).
//! - `callgrind`: P24 (instructions per small call, each side, plugvisor vs bare hyper).
//! - `escape`: P14, the escape table (hostile attempts, unsandboxed vs sandboxed).

pub mod callgrind;
pub mod calls;
pub mod escape;
pub mod files;
pub mod lifecycle;
pub mod middleware;
pub mod peers;
pub mod pools;
pub mod python;
pub mod remote;
pub mod remote_file;
pub mod routes;
pub mod sandbox;
pub mod scale;
pub mod services;
pub mod streams;
pub mod tasks;

use crate::plan::Plan;
use crate::procs::worker_binary;
use anyhow::Result;
use plugvisor_host::{Host, WorkerSpec};
use plugvisor_proto::{json, Value};
use std::path::Path;
use std::time::Duration;

/// What every scenario gets: the plan, a host, and a scratch directory.
#[derive(Debug)]
pub struct Ctx {
    /// Sizes and durations.
    pub plan: Plan,
    /// The host that starts plugvisor workers.
    pub host: Host,
    /// Scratch space (sockets of the baselines, big files), removed at the end.
    pub scratch: tempfile::TempDir,
}

impl Ctx {
    /// The scratch directory.
    pub fn dir(&self) -> &Path {
        self.scratch.path()
    }

    /// A spec for the bundled worker `<plugin>-worker` beside the benchmark.
    ///
    /// # Errors
    /// When the binary is missing.
    pub fn spec(&self, plugin: &str) -> Result<WorkerSpec> {
        // The bundled workers arm their own parent-death signal: spawned with posix_spawn.
        Ok(WorkerSpec::new(worker_binary(plugin)?)
            .start_timeout(Duration::from_secs(10))
            .stop_grace(Duration::from_secs(2))
            .self_armed(true))
    }
}

/// The small `execute` input of P1, P2 and P11 (32 bytes of JSON).
pub fn small_input() -> Value {
    json!({"text": "hello, plugvisor bench"})
}

/// Formats microseconds for the table.
pub fn us(value: f64) -> String {
    format!("{value:.1} µs")
}

/// Formats a rate for the table (`1.23 M/s`, `45.6 k/s`).
pub fn rate(per_second: f64, unit: &str) -> String {
    if per_second >= 1e6 {
        format!("{:.2} M {unit}/s", per_second / 1e6)
    } else {
        format!("{:.1} k {unit}/s", per_second / 1e3)
    }
}
