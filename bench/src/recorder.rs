//! What a scenario's consumer records: when each delivery was done, its publish-to-done latency,
//! and the process's peak RSS. The same for every scenario, and its memory does not grow with the
//! number of messages (the peak RSS it reports is the consumer's, not the recorder's): latencies
//! go into a fixed-size lock-free histogram, and publish times wait for their settlement in a map
//! bounded by the deliveries in flight.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::event::now_us;

/// Counts and latencies of one scenario run.
#[derive(Debug)]
pub struct Recorder {
    expected: u64,
    done: AtomicU64,
    failures: AtomicU64,
    missing_latency: AtomicU64,
    first_us: AtomicU64,
    last_us: AtomicU64,
    /// Publish-to-done latencies of the done deliveries that carried a publish time.
    latencies: Histogram,
    /// Publish time by event sequence number, between `received` and `settled` (the framework's
    /// observer sees the headers only in `received`); holds only the deliveries in flight.
    pending: Mutex<HashMap<usize, u64>>,
    finished: Notify,
}

impl Recorder {
    /// A recorder for `expected` deliveries.
    pub fn new(expected: u64) -> Self {
        Self {
            expected,
            done: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            missing_latency: AtomicU64::new(0),
            first_us: AtomicU64::new(0),
            last_us: AtomicU64::new(0),
            latencies: Histogram::new(),
            pending: Mutex::new(HashMap::new()),
            finished: Notify::new(),
        }
    }

    /// A delivery arrived; the first one starts the clock.
    pub fn received(&self) {
        if self.first_us.load(Ordering::Relaxed) == 0 {
            let _ =
                self.first_us
                    .compare_exchange(0, now_us(), Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    /// Remembers the publish time of event `seq` until it is settled.
    pub fn hold(&self, seq: usize, published_us: u64) {
        self.pending_map().insert(seq, published_us);
    }

    /// Takes the publish time remembered for event `seq`.
    pub fn take(&self, seq: usize) -> Option<u64> {
        self.pending_map().remove(&seq).filter(|&us| us != 0)
    }

    /// The pending map; a panic elsewhere while it was locked leaves it usable (every update is
    /// a single insert or remove).
    fn pending_map(&self) -> std::sync::MutexGuard<'_, HashMap<usize, u64>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A delivery is done (acked, or failed when `ok` is false).
    pub fn done(&self, published_us: Option<u64>, ok: bool) {
        let now = now_us();
        if !ok {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
        match published_us {
            Some(published) => self.latencies.record(now.saturating_sub(published)),
            None => {
                self.missing_latency.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.last_us.fetch_max(now, Ordering::Relaxed);
        let i = self.done.fetch_add(1, Ordering::AcqRel);
        if i + 1 == self.expected {
            self.finished.notify_one();
        }
    }

    /// Whether every expected delivery is done.
    pub fn complete(&self) -> bool {
        self.done.load(Ordering::Acquire) >= self.expected
    }

    /// Waits until every expected delivery is done; `false` on timeout.
    pub async fn wait(&self, timeout: Duration) -> bool {
        if self.complete() {
            return true;
        }
        tokio::time::timeout(timeout, self.finished.notified())
            .await
            .is_ok()
            || self.complete()
    }

    /// The figures of the run so far.
    pub fn report(&self, scenario: &str) -> RunReport {
        let done = self.done.load(Ordering::Acquire);
        let ms = |us: Option<f64>| us.map_or(f64::NAN, |us| us / 1000.0);
        let first = self.first_us.load(Ordering::Relaxed);
        let last = self.last_us.load(Ordering::Relaxed);
        let seconds = last.saturating_sub(first) as f64 / 1e6;
        RunReport {
            scenario: scenario.into(),
            deliveries: done,
            expected: self.expected,
            failures: self.failures.load(Ordering::Relaxed),
            missing_latency: self.missing_latency.load(Ordering::Relaxed),
            seconds,
            per_second: if seconds > 0.0 {
                done as f64 / seconds
            } else {
                f64::NAN
            },
            p50_ms: ms(self.latencies.quantile(0.50)),
            p99_ms: ms(self.latencies.quantile(0.99)),
            max_ms: ms(self.latencies.max()),
            peak_rss_kb: peak_rss_kb(),
        }
    }
}

/// Values below this are counted exactly, one bucket each.
const EXACT: u64 = 128;
/// Sub-buckets per power of two from [`EXACT`] up: a bucket is at most 1/64 of its lower bound
/// wide.
const SUB_BUCKETS: u64 = 64;
/// `log2(SUB_BUCKETS)`.
const SUB_BITS: u32 = SUB_BUCKETS.trailing_zeros();
/// Buckets covering `0..=u32::MAX`: the exact ones, then `SUB_BUCKETS` for each power of two from
/// `2^7` to `2^31`.
const BUCKETS: usize = (EXACT + (32 - EXACT.trailing_zeros() as u64) * SUB_BUCKETS) as usize;

/// A fixed-size, lock-free log-linear histogram of microsecond latencies (13.5 KiB whatever the
/// number of samples). Values below 128 are exact; above, a quantile is the midpoint of its
/// bucket, within 1/128 (0.8%) of the true order statistic; values beyond `u32::MAX` share the
/// last bucket. The maximum is exact.
#[derive(Debug)]
struct Histogram {
    counts: Box<[AtomicU64]>,
    /// Samples recorded.
    total: AtomicU64,
    /// Largest sample, exact.
    max: AtomicU64,
}

impl Histogram {
    fn new() -> Self {
        Self {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            total: AtomicU64::new(0),
            max: AtomicU64::new(0),
        }
    }

    /// The bucket of `value` (clamped to `u32::MAX`).
    fn index(value: u64) -> usize {
        let value = value.min(u64::from(u32::MAX));
        if value < EXACT {
            return value as usize;
        }
        let log = 63 - value.leading_zeros(); // 7..=31
        let sub = (value >> (log - SUB_BITS)) - SUB_BUCKETS; // 0..64
        (EXACT + u64::from(log - EXACT.trailing_zeros()) * SUB_BUCKETS + sub) as usize
    }

    /// The smallest and largest value of bucket `index`.
    fn bounds(index: usize) -> (u64, u64) {
        let index = index as u64;
        if index < EXACT {
            return (index, index);
        }
        let log = EXACT.trailing_zeros() as u64 + (index - EXACT) / SUB_BUCKETS;
        let sub = (index - EXACT) % SUB_BUCKETS;
        let width = 1u64 << (log - u64::from(SUB_BITS));
        let low = (SUB_BUCKETS + sub) * width;
        (low, low + width - 1)
    }

    /// Counts one sample.
    fn record(&self, value: u64) {
        self.counts[Self::index(value)].fetch_add(1, Ordering::Relaxed);
        self.max.fetch_max(value, Ordering::Relaxed);
        self.total.fetch_add(1, Ordering::Release);
    }

    /// The largest sample; `None` without samples.
    fn max(&self) -> Option<f64> {
        (self.total.load(Ordering::Acquire) > 0).then(|| self.max.load(Ordering::Relaxed) as f64)
    }

    /// The sample of rank `round((n - 1) * q)` among the `n` sorted samples, to the bucket's
    /// precision and at most the maximum; `None` without samples.
    fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.total.load(Ordering::Acquire);
        if total == 0 {
            return None;
        }
        let rank = ((total - 1) as f64 * q.clamp(0.0, 1.0)).round() as u64;
        let max = self.max.load(Ordering::Relaxed);
        let mut seen = 0;
        for (index, count) in self.counts.iter().enumerate() {
            seen += count.load(Ordering::Relaxed);
            if seen > rank {
                let (low, high) = Self::bounds(index);
                let middle = (low as f64 + high as f64) / 2.0;
                return Some(middle.min(max as f64));
            }
        }
        // Only while samples are still being recorded: the buckets lag behind `total`.
        Some(max as f64)
    }
}

/// What a child process reports to the harness (one JSON line on stdout).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunReport {
    /// `a`..`d`.
    pub scenario: String,
    /// Deliveries done.
    pub deliveries: u64,
    /// Deliveries expected.
    pub expected: u64,
    /// Deliveries settled other than processed/duplicate + acked.
    pub failures: u64,
    /// Deliveries without a latency sample (their publish time was not found).
    pub missing_latency: u64,
    /// From the first delivery received to the last one done.
    pub seconds: f64,
    /// Deliveries per second over `seconds` (NaN when no time passed).
    #[serde(deserialize_with = "nan_if_null")]
    pub per_second: f64,
    /// Median publish-to-done latency (NaN without samples, `null` in JSON).
    #[serde(deserialize_with = "nan_if_null")]
    pub p50_ms: f64,
    /// 99th percentile publish-to-done latency.
    #[serde(deserialize_with = "nan_if_null")]
    pub p99_ms: f64,
    /// Largest publish-to-done latency.
    #[serde(deserialize_with = "nan_if_null")]
    pub max_ms: f64,
    /// The process's peak resident set (`VmHWM`), in KiB.
    pub peak_rss_kb: u64,
}

/// A figure that JSON carries as `null` when it is NaN (serde_json writes NaN as `null`).
fn nan_if_null<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(deserializer)?.unwrap_or(f64::NAN))
}

/// `VmHWM` of this process in KiB (0 where `/proc` is not available).
pub fn peak_rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse().ok())
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The order statistic the histogram approximates.
    fn exact(sorted: &[u64], q: f64) -> f64 {
        sorted[((sorted.len() - 1) as f64 * q).round() as usize] as f64
    }

    #[test]
    fn buckets_cover_every_u32_in_order() {
        assert_eq!(Histogram::index(0), 0);
        assert_eq!(Histogram::index(127), 127);
        assert_eq!(Histogram::index(128), 128);
        assert_eq!(Histogram::index(u64::from(u32::MAX)), BUCKETS - 1);
        assert_eq!(Histogram::index(u64::MAX), BUCKETS - 1);
        let mut previous = (0, 0);
        for index in 1..BUCKETS {
            let (low, high) = Histogram::bounds(index);
            assert_eq!(
                low,
                previous.1 + 1,
                "bucket {index} follows the previous one"
            );
            assert!(high >= low);
            assert!(
                (high - low + 1) * SUB_BUCKETS <= low.max(EXACT),
                "bucket {index} too wide"
            );
            assert_eq!(Histogram::index(low), index);
            assert_eq!(Histogram::index(high), index);
            previous = (low, high);
        }
        assert_eq!(previous.1, u64::from(u32::MAX));
    }

    #[test]
    fn quantiles_of_a_known_distribution_are_within_the_relative_error() {
        let histogram = Histogram::new();
        // A skewed spread from 0 to ~100 s with a tail, in a scrambled order.
        let mut values: Vec<u64> = (0..100_000u64)
            .map(|i| (i * 7_919) % 100_000)
            .map(|i| i * i / 100 + i % 13)
            .collect();
        for &value in &values {
            histogram.record(value);
        }
        values.sort_unstable();
        for q in [0.0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 0.999, 1.0] {
            let want = exact(&values, q);
            let got = histogram.quantile(q).expect("has samples");
            let error = (got - want).abs() / want.max(1.0);
            assert!(
                error <= 1.0 / 128.0,
                "q {q}: {got} for {want}, error {error}"
            );
        }
        assert_eq!(
            histogram.max(),
            Some(*values.last().expect("values") as f64)
        );
    }

    #[test]
    fn small_values_are_exact() {
        let histogram = Histogram::new();
        for value in 0..=100 {
            histogram.record(value);
        }
        assert_eq!(histogram.quantile(0.0), Some(0.0));
        assert_eq!(histogram.quantile(0.5), Some(50.0));
        assert_eq!(histogram.quantile(0.99), Some(99.0));
        assert_eq!(histogram.max(), Some(100.0));
    }

    #[test]
    fn max_is_exact_and_bounds_the_quantiles() {
        let histogram = Histogram::new();
        histogram.record(1_000_003);
        histogram.record(5);
        assert_eq!(histogram.max(), Some(1_000_003.0));
        assert_eq!(histogram.quantile(1.0), Some(1_000_003.0));
        assert_eq!(histogram.quantile(0.0), Some(5.0));
        histogram.record(u64::from(u32::MAX) + 10);
        assert_eq!(histogram.max(), Some((u64::from(u32::MAX) + 10) as f64));
    }

    #[test]
    fn a_report_without_latencies_survives_json() {
        let report = Recorder::new(1).report("h");
        let json = serde_json::to_string(&report).expect("serializes");
        let back: RunReport = serde_json::from_str(&json).expect("deserializes");
        assert!(back.p50_ms.is_nan() && back.p99_ms.is_nan() && back.max_ms.is_nan());
    }

    #[test]
    fn empty_histogram_gives_nan() {
        let recorder = Recorder::new(10);
        let report = recorder.report("a");
        assert!(report.p50_ms.is_nan());
        assert!(report.p99_ms.is_nan());
        assert!(report.max_ms.is_nan());
        assert_eq!(Histogram::new().quantile(0.5), None);
    }

    #[test]
    fn deliveries_without_publish_time_have_no_sample() {
        let recorder = Recorder::new(3);
        let now = now_us();
        recorder.done(Some(now.saturating_sub(2_000)), true);
        recorder.done(None, true);
        recorder.done(Some(now.saturating_sub(2_000)), false);
        assert!(recorder.complete());
        let report = recorder.report("a");
        assert_eq!(report.deliveries, 3);
        assert_eq!(report.missing_latency, 1);
        assert_eq!(report.failures, 1);
        assert!(report.p50_ms >= 2.0 && report.p50_ms < 60_000.0);
    }

    #[test]
    fn pending_holds_only_what_is_not_taken() {
        let recorder = Recorder::new(1);
        recorder.hold(7, 1_234);
        recorder.hold(1_000_000_000, 5);
        assert_eq!(recorder.take(7), Some(1_234));
        assert_eq!(recorder.take(7), None);
        assert_eq!(recorder.take(8), None);
        assert_eq!(recorder.take(1_000_000_000), Some(5));
        assert!(recorder.pending_map().is_empty());
    }
}
