//! The machine a run happened on: cores, kernel, compiler.

use serde_json::{json, Value};

/// Where the benchmark ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    /// CPUs available to this process.
    pub cores: usize,
    /// Kernel release (`uname -r`).
    pub kernel: String,
    /// The compiler that built the benchmark.
    pub rustc: String,
}

impl Machine {
    /// Describes this machine.
    pub fn detect() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "unknown".to_owned());
        Self {
            cores,
            kernel,
            rustc: env!("PLUGVISOR_BENCH_RUSTC").to_owned(),
        }
    }

    /// `{"cores", "kernel", "rustc", "cpu"}`.
    pub fn to_json(&self) -> Value {
        json!({
            "cores": self.cores,
            "kernel": self.kernel,
            "rustc": self.rustc,
            "cpu": cpu_model(),
        })
    }
}

/// The CPU model name from `/proc/cpuinfo`, if there is one.
fn cpu_model() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    info.lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, name)| name.trim().to_owned())
}
