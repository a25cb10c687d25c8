//! Where the pipeline reads the time and draws its retry jitter: the system's in a worker, a
//! virtual clock and a seeded generator in the test harness.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The time the pipeline stamps on retry headers and dead-letter records.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    /// `None`: the system clock. `Some`: nanoseconds since the epoch (years 1677 to 2262), moved
    /// by hand.
    manual: Option<Arc<AtomicI64>>,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Self::default()
    }

    /// A clock that stands at `start` until [`advance`](Clock::advance)d.
    ///
    /// # Panics
    ///
    /// When `start` is outside the years 1677 to 2262 (a manual clock counts nanoseconds).
    pub fn manual(start: DateTime<Utc>) -> Self {
        let nanos = start
            .timestamp_nanos_opt()
            .expect("a manual clock starts between the years 1677 and 2262");
        Self {
            manual: Some(Arc::new(AtomicI64::new(nanos))),
        }
    }

    /// The current time.
    pub fn now(&self) -> DateTime<Utc> {
        match &self.manual {
            None => Utc::now(),
            Some(nanos) => DateTime::from_timestamp_nanos(nanos.load(Ordering::Acquire)),
        }
    }

    /// Moves a manual clock forward by `by` (a system clock is not moved).
    pub fn advance(&self, by: Duration) {
        if let Some(nanos) = &self.manual {
            let by = i64::try_from(by.as_nanos()).unwrap_or(i64::MAX);
            let _ = nanos.fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
                Some(now.saturating_add(by))
            });
        }
    }
}

/// The source of the random part of retry delays: fresh randomness in a worker, a seeded
/// sequence in tests (the same seed gives the same delays).
#[derive(Debug, Clone, Default)]
pub struct Jitter {
    seeded: Option<Arc<Mutex<StdRng>>>,
}

impl Jitter {
    /// Fresh randomness from the thread's generator.
    pub fn random() -> Self {
        Self::default()
    }

    /// A deterministic sequence from `seed`.
    pub fn seeded(seed: u64) -> Self {
        Self {
            seeded: Some(Arc::new(Mutex::new(StdRng::seed_from_u64(seed)))),
        }
    }

    /// A uniform duration in `0..=max`.
    pub fn draw(&self, max: Duration) -> Duration {
        let max_nanos = max.as_nanos().min(u64::MAX as u128) as u64;
        if max_nanos == 0 {
            return Duration::ZERO;
        }
        let nanos = match &self.seeded {
            None => rand::thread_rng().gen_range(0..=max_nanos),
            Some(rng) => rng
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .gen_range(0..=max_nanos),
        };
        Duration::from_nanos(nanos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_advanced() {
        let start = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let clock = Clock::manual(start);
        assert_eq!(clock.now(), start);
        clock.clone().advance(Duration::from_millis(1500));
        assert_eq!(clock.now(), start + chrono::Duration::milliseconds(1500));
        let system = Clock::system();
        system.advance(Duration::from_secs(3600));
        assert!((system.now() - Utc::now()).num_seconds().abs() < 5);
    }

    #[test]
    fn the_same_seed_gives_the_same_jitter() {
        let max = Duration::from_secs(1);
        let (a, b) = (Jitter::seeded(7), Jitter::seeded(7));
        let first: Vec<_> = (0..5).map(|_| a.draw(max)).collect();
        assert_eq!(first, (0..5).map(|_| b.draw(max)).collect::<Vec<_>>());
        assert!(first.iter().all(|d| *d <= max));
        assert_ne!(
            first,
            (0..5)
                .map(|_| Jitter::seeded(8).draw(max))
                .collect::<Vec<_>>()
        );
        assert_eq!(Jitter::random().draw(Duration::ZERO), Duration::ZERO);
    }
}
