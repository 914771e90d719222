//! What a run measured.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Latency of committed transactions, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
}

impl LatencySummary {
    /// Summarizes latencies given in microseconds (sorts `micros`). The
    /// mean is exact; a percentile is the nearest-rank value (the smallest
    /// sample with at least p % of the samples at or below it). All zero
    /// without samples.
    pub fn from_micros(micros: &mut [u64]) -> LatencySummary {
        if micros.is_empty() {
            return LatencySummary::default();
        }
        micros.sort_unstable();
        let sum: u128 = micros.iter().map(|&m| u128::from(m)).sum();
        let ms = |us: u64| us as f64 / 1000.0;
        LatencySummary {
            mean: sum as f64 / micros.len() as f64 / 1000.0,
            p50: ms(percentile_sorted(micros, 50.0)),
            p90: ms(percentile_sorted(micros, 90.0)),
            p99: ms(percentile_sorted(micros, 99.0)),
        }
    }
}

/// The nearest-rank `p`-th percentile (0 < p ≤ 100) of ascending `sorted`.
///
/// # Panics
/// If `sorted` is empty.
pub fn percentile_sorted(sorted: &[u64], p: f64) -> u64 {
    assert!(!sorted.is_empty(), "percentile of no samples");
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The outcome of one measured run (warm-up excluded).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunStats {
    /// Transactions that committed within the measured window.
    pub committed: u64,
    /// Attempts rolled back with SQLSTATE 40001 or 40P01 (each retried).
    pub aborts: u64,
    /// Transactions whose outcome is unknown (SQLSTATE 08007; not retried).
    pub unknown: u64,
    /// Length of the measured window.
    pub elapsed: Duration,
    /// `committed / elapsed`.
    pub throughput_tps: f64,
    /// Latency of the committing attempt of each committed transaction.
    pub latency_ms: LatencySummary,
    /// `aborts / (committed + aborts)`, a fraction (0 without attempts).
    pub abort_rate: f64,
}

impl RunStats {
    /// Computes the figures from raw counts and per-commit latencies in
    /// microseconds (sorted in place).
    pub fn from_samples(
        committed: u64,
        aborts: u64,
        unknown: u64,
        elapsed: Duration,
        latencies_us: &mut [u64],
    ) -> RunStats {
        let secs = elapsed.as_secs_f64();
        let attempts = committed + aborts;
        RunStats {
            committed,
            aborts,
            unknown,
            elapsed,
            throughput_tps: if secs > 0.0 {
                committed as f64 / secs
            } else {
                0.0
            },
            latency_ms: LatencySummary::from_micros(latencies_us),
            abort_rate: if attempts > 0 {
                aborts as f64 / attempts as f64
            } else {
                0.0
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_one_to_hundred() {
        let mut v: Vec<u64> = (1..=100).rev().map(|i| i * 1000).collect();
        let s = LatencySummary::from_micros(&mut v);
        assert_eq!(s.mean, 50.5);
        assert_eq!(s.p50, 50.0);
        assert_eq!(s.p90, 90.0);
        assert_eq!(s.p99, 99.0);
    }

    #[test]
    fn percentiles_of_small_and_skewed_samples() {
        assert_eq!(percentile_sorted(&[7], 50.0), 7);
        assert_eq!(percentile_sorted(&[7], 99.0), 7);
        // 1..=10: p50 is the 5th value, p90 the 9th, p99 the 10th.
        let ten: Vec<u64> = (1..=10).collect();
        assert_eq!(percentile_sorted(&ten, 50.0), 5);
        assert_eq!(percentile_sorted(&ten, 90.0), 9);
        assert_eq!(percentile_sorted(&ten, 99.0), 10);
        // One outlier among 1000: p99 still a fast one, the mean is not.
        let mut v = vec![100u64; 999];
        v.push(1_000_000);
        let s = LatencySummary::from_micros(&mut v);
        assert_eq!(s.p50, 0.1);
        assert_eq!(s.p99, 0.1);
        assert!((s.mean - (999.0 * 0.1 + 1000.0) / 1000.0).abs() < 1e-12);
    }

    #[test]
    fn no_samples_give_zeros() {
        let s = RunStats::from_samples(0, 0, 0, Duration::from_secs(1), &mut []);
        assert_eq!(s.latency_ms, LatencySummary::default());
        assert_eq!(s.throughput_tps, 0.0);
        assert_eq!(s.abort_rate, 0.0);
    }

    #[test]
    fn rates() {
        let mut lat = vec![1000; 30];
        let s = RunStats::from_samples(30, 10, 2, Duration::from_secs(2), &mut lat);
        assert_eq!(s.throughput_tps, 15.0);
        assert_eq!(s.abort_rate, 0.25);
        assert_eq!(s.unknown, 2);
        assert_eq!(s.latency_ms.mean, 1.0);
    }
}
