//! Order statistics over samples: percentiles of latencies and medians over trials.

use std::time::Duration;

/// The `q` quantile (0.0 ..= 1.0) of `values`, nearest-rank on a sorted copy; NaN when empty.
pub fn quantile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = (q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// The median of `values`; NaN when empty.
pub fn median(values: &[f64]) -> f64 {
    quantile(values, 0.5)
}

/// Durations as microseconds.
pub fn micros(samples: &[Duration]) -> Vec<f64> {
    samples.iter().map(|d| d.as_secs_f64() * 1e6).collect()
}

/// Durations as milliseconds.
pub fn millis(samples: &[Duration]) -> Vec<f64> {
    samples.iter().map(|d| d.as_secs_f64() * 1e3).collect()
}

/// p50 and p99 of one trial's latencies, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
}

impl Latency {
    /// The p50 and p99 of `samples`.
    pub fn of(samples: &[Duration]) -> Self {
        let us = micros(samples);
        Self {
            p50: quantile(&us, 0.5),
            p99: quantile(&us, 0.99),
        }
    }

    /// The p50 and p99 of samples already in microseconds.
    pub fn of_us(us: &[f64]) -> Self {
        Self {
            p50: quantile(us, 0.5),
            p99: quantile(us, 0.99),
        }
    }

    /// The median over trials of each figure.
    pub fn median_of(trials: &[Latency]) -> Self {
        let p50: Vec<f64> = trials.iter().map(|t| t.p50).collect();
        let p99: Vec<f64> = trials.iter().map(|t| t.p99).collect();
        Self {
            p50: median(&p50),
            p99: median(&p99),
        }
    }
}

/// Rounds to `digits` decimals, for readable JSON.
pub fn round(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round() / scale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(median(&v), 51.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&v, 0.0), 1.0);
        assert_eq!(quantile(&v, 1.0), 100.0);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn latency_medians_over_trials() {
        let a = Latency { p50: 1.0, p99: 9.0 };
        let b = Latency { p50: 3.0, p99: 7.0 };
        let c = Latency { p50: 2.0, p99: 8.0 };
        assert_eq!(
            Latency::median_of(&[a, b, c]),
            Latency { p50: 2.0, p99: 8.0 }
        );
    }
}
