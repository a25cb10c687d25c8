//! What a scenario's consumer records: when each delivery was done, its publish-to-done latency,
//! and the process's peak RSS. Preallocated, lock-free, the same for every scenario.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
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
    /// Latency of the i-th done delivery, in microseconds.
    samples: Vec<AtomicU32>,
    /// Publish time of the event with this sequence number, between `received` and `settled`
    /// (the framework's observer sees the headers only in `received`).
    pending: Vec<AtomicU64>,
    finished: Notify,
}

impl Recorder {
    /// A recorder for `expected` deliveries of `events` distinct events.
    pub fn new(expected: u64, events: u64) -> Self {
        Self {
            expected,
            done: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            missing_latency: AtomicU64::new(0),
            first_us: AtomicU64::new(0),
            last_us: AtomicU64::new(0),
            samples: (0..expected).map(|_| AtomicU32::new(0)).collect(),
            pending: (0..events).map(|_| AtomicU64::new(0)).collect(),
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
        if let Some(slot) = self.pending.get(seq) {
            slot.store(published_us, Ordering::Relaxed);
        }
    }

    /// Takes the publish time remembered for event `seq`.
    pub fn take(&self, seq: usize) -> Option<u64> {
        self.pending
            .get(seq)
            .map(|slot| slot.swap(0, Ordering::Relaxed))
            .filter(|&us| us != 0)
    }

    /// A delivery is done (acked, or failed when `ok` is false).
    pub fn done(&self, published_us: Option<u64>, ok: bool) {
        let now = now_us();
        if !ok {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
        let i = self.done.fetch_add(1, Ordering::AcqRel);
        match published_us {
            Some(published) => {
                let latency = now.saturating_sub(published).min(u64::from(u32::MAX)) as u32;
                if let Some(slot) = self.samples.get(i as usize) {
                    slot.store(latency, Ordering::Relaxed);
                }
            }
            None => {
                self.missing_latency.fetch_add(1, Ordering::Relaxed);
                if let Some(slot) = self.samples.get(i as usize) {
                    slot.store(u32::MAX, Ordering::Relaxed);
                }
            }
        }
        self.last_us.fetch_max(now, Ordering::Relaxed);
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
        let mut latencies: Vec<u32> = self
            .samples
            .iter()
            .take(done as usize)
            .map(|s| s.load(Ordering::Relaxed))
            .filter(|&l| l != u32::MAX)
            .collect();
        latencies.sort_unstable();
        let pick = |q: f64| -> f64 {
            if latencies.is_empty() {
                return f64::NAN;
            }
            let i = ((latencies.len() as f64 - 1.0) * q).round() as usize;
            f64::from(latencies[i]) / 1000.0
        };
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
            p50_ms: pick(0.50),
            p99_ms: pick(0.99),
            max_ms: pick(1.0),
            peak_rss_kb: peak_rss_kb(),
        }
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
    /// Deliveries per second over `seconds`.
    pub per_second: f64,
    /// Median publish-to-done latency.
    pub p50_ms: f64,
    /// 99th percentile publish-to-done latency.
    pub p99_ms: f64,
    /// Largest publish-to-done latency.
    pub max_ms: f64,
    /// The process's peak resident set (`VmHWM`), in KiB.
    pub peak_rss_kb: u64,
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
