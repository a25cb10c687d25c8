//! Where the retry delay is computed (`docs/contracts.md` §4).

use std::time::Duration;

use crate::clock::Jitter;

/// Maximum attempts in total and the exponential backoff between them.
///
/// The delay before the next attempt after the k-th failure (k = 1, 2, ...) is
/// `min(base * 2^(k-1), cap) + uniform(0, jitter)`.
///
/// ```
/// use std::time::Duration;
/// use worker_core::RetryPolicy;
///
/// let policy = RetryPolicy::default();
/// assert_eq!(policy.max_attempts, 5);
/// assert_eq!(policy.base_delay(1), Duration::from_millis(200));
/// assert_eq!(policy.base_delay(3), Duration::from_millis(800));
/// assert_eq!(policy.base_delay(20), Duration::from_secs(30)); // capped
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total, including the first; at least 1.
    pub max_attempts: u32,
    /// Delay after the first failure.
    pub base: Duration,
    /// Upper bound of the exponential part of the delay.
    pub cap: Duration,
    /// Upper bound of the uniformly random part added to every delay.
    pub jitter: Duration,
}

impl RetryPolicy {
    /// The defaults: 5 attempts, base 200 ms, cap 30 s, jitter 1 s.
    pub const DEFAULT: RetryPolicy = RetryPolicy {
        max_attempts: 5,
        base: Duration::from_millis(200),
        cap: Duration::from_secs(30),
        jitter: Duration::from_secs(1),
    };

    /// The deterministic part of the delay after the `failures`-th failure:
    /// `min(base * 2^(failures-1), cap)`.
    pub fn base_delay(&self, failures: u32) -> Duration {
        let exponent = failures.saturating_sub(1).min(63);
        let factor = 1u128 << exponent;
        let nanos = self.base.as_nanos().saturating_mul(factor);
        let delay = if nanos >= u64::MAX as u128 {
            Duration::MAX
        } else {
            Duration::from_nanos(nanos as u64)
        };
        delay.min(self.cap)
    }

    /// The full delay after the `failures`-th failure, with a fresh uniform jitter.
    pub fn delay(&self, failures: u32) -> Duration {
        self.delay_with(failures, &Jitter::random())
    }

    /// The full delay after the `failures`-th failure, its jitter drawn from `jitter`.
    pub fn delay_with(&self, failures: u32, jitter: &Jitter) -> Duration {
        self.base_delay(failures) + jitter.draw(self.jitter)
    }

    /// The longest time from the first attempt to the last one (all delays at their maximum).
    pub fn horizon(&self) -> Duration {
        (1..self.max_attempts)
            .map(|k| self.base_delay(k) + self.jitter)
            .sum()
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self::DEFAULT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_matches_the_contract() {
        let p = RetryPolicy::DEFAULT;
        let expected = [200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000];
        for (k, ms) in expected.iter().enumerate() {
            assert_eq!(
                p.base_delay(k as u32 + 1),
                Duration::from_millis(*ms),
                "k = {}",
                k + 1
            );
        }
        for k in 1..20 {
            let d = p.delay(k);
            assert!(d >= p.base_delay(k) && d <= p.base_delay(k) + p.jitter);
        }
    }

    #[test]
    fn huge_failure_counts_do_not_overflow() {
        let p = RetryPolicy::DEFAULT;
        assert_eq!(p.base_delay(u32::MAX), p.cap);
    }

    #[test]
    fn horizon_sums_the_worst_case_delays() {
        let p = RetryPolicy {
            max_attempts: 3,
            ..RetryPolicy::DEFAULT
        };
        assert_eq!(p.horizon(), Duration::from_millis(200 + 1000 + 400 + 1000));
    }
}
