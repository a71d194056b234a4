//! Latency samples and their percentiles.

use std::time::Duration;

use serde::Serialize;

/// Latencies in microseconds.
#[derive(Debug, Default, Clone)]
pub(crate) struct Samples(Vec<u32>);

impl Samples {
    pub(crate) fn push(&mut self, latency: Duration) {
        self.0
            .push(u32::try_from(latency.as_micros()).unwrap_or(u32::MAX));
    }

    pub(crate) fn extend(&mut self, other: Samples) {
        self.0.extend(other.0);
    }

    /// p50, p99, p99.9 and max, in milliseconds.
    pub(crate) fn summary(mut self) -> Summary {
        self.0.sort_unstable();
        let at = |q: f64| -> f64 {
            if self.0.is_empty() {
                return 0.0;
            }
            // Nearest rank.
            #[expect(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                clippy::cast_precision_loss,
                reason = "ranks of at most a few million samples"
            )]
            let rank = ((q * self.0.len() as f64).ceil() as usize).clamp(1, self.0.len());
            f64::from(self.0[rank - 1]) / 1000.0
        };
        Summary {
            count: self.0.len(),
            p50_ms: at(0.50),
            p99_ms: at(0.99),
            p999_ms: at(0.999),
            max_ms: self.0.last().map_or(0.0, |m| f64::from(*m) / 1000.0),
        }
    }
}

/// Percentiles of a set of latencies.
#[derive(Debug, Clone, Copy, Serialize, Default)]
pub(crate) struct Summary {
    pub(crate) count: usize,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) p999_ms: f64,
    pub(crate) max_ms: f64,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms ({} samples)",
            self.p50_ms, self.p99_ms, self.p999_ms, self.max_ms, self.count
        )
    }
}

/// Resident memory of a process, in KiB (`VmRSS` of `/proc/<pid>/status`).
pub(crate) fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// `read` summed over the processes `pids`; none when there is none or one cannot be read.
pub(crate) fn sum_over<T: std::iter::Sum>(
    pids: &[u32],
    read: impl Fn(u32) -> Option<T>,
) -> Option<T> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&pid| read(pid)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut samples = Samples::default();
        for ms in 1..=1000 {
            samples.push(Duration::from_millis(ms));
        }
        let s = samples.summary();
        assert_eq!(s.count, 1000);
        assert!((s.p50_ms - 500.0).abs() < f64::EPSILON);
        assert!((s.p99_ms - 990.0).abs() < f64::EPSILON);
        assert!((s.p999_ms - 999.0).abs() < f64::EPSILON);
        assert!((s.max_ms - 1000.0).abs() < f64::EPSILON);
        assert_eq!(Samples::default().summary().count, 0);
    }

    #[test]
    fn rss_of_this_process_is_read() {
        assert!(rss_kib(std::process::id()).is_some_and(|kib| kib > 0));
    }

    #[test]
    fn a_sum_over_processes_needs_every_one() {
        let me = std::process::id();
        let one = rss_kib(me).unwrap();
        assert!(sum_over(&[me, me], rss_kib).is_some_and(|kib| kib >= 2 * one));
        assert_eq!(sum_over(&[], rss_kib), None);
        assert_eq!(sum_over(&[me, u32::MAX], rss_kib), None, "no such process");
    }
}
