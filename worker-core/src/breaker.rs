//! The circuit breaker of one handler: when a downstream dependency is down, stop taking
//! deliveries instead of spending their attempts.
//!
//! Closed, it counts the different events that failed with a retryable error in a row; a success
//! resets the count, and poison failures, duplicates and deliveries held through a database
//! outage are not counted (they say nothing about the handler's dependencies). Counting events,
//! not attempts, keeps one event that fails on its own (retried again and again while nothing
//! else arrives) from opening it. At [`BreakerSettings::failures`] events in a row it opens:
//! deliveries wait at [`Breaker::admit`] without running the handler and without spending an
//! attempt. After [`BreakerSettings::probe`] one delivery is let through as a probe (half-open):
//! a success closes the breaker and lets every waiting delivery through; a retryable failure opens
//! it again for twice as long, up to [`BreakerSettings::max_probe`]. A success of a delivery that
//! was admitted before the breaker opened closes it too.
//!
//! The transport calls [`Breaker::admit`] before the pipeline and [`Breaker::record`] with the
//! outcome; the state goes to the metrics (`worker_breaker_state`), `/readyz`'s detail and the
//! log (`docs/decisions.md`, "A circuit breaker per handler").

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// When a handler's breaker opens and how it probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSettings {
    /// Different events failing with a retryable error in a row (no success in between) that
    /// open the breaker; `0` turns it off.
    pub failures: u32,
    /// How long the breaker stays open before the first probe.
    pub probe: Duration,
    /// The longest wait between probes (each failed probe doubles the wait up to this).
    pub max_probe: Duration,
}

impl BreakerSettings {
    /// The defaults: opens after 10 different events failed in a row, probes after 2 s, then
    /// 4 s, 8 s ... up to 60 s.
    ///
    /// Ten events and no success in between is not a bad event or two but a dependency that
    /// answers nobody; a full outage opens it within the first few deliveries. A first probe after 2 s and at most a minute between probes means a
    /// recovered dependency is used again within a minute, at one delivery per probe.
    pub const DEFAULT: BreakerSettings = BreakerSettings {
        failures: 10,
        probe: Duration::from_secs(2),
        max_probe: Duration::from_secs(60),
    };

    /// A breaker that never opens.
    pub const OFF: BreakerSettings = BreakerSettings {
        failures: 0,
        ..Self::DEFAULT
    };

    /// Whether the breaker can open at all.
    pub fn enabled(&self) -> bool {
        self.failures > 0
    }
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// The state of a breaker, as the metrics and `/readyz` show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Deliveries run as usual.
    Closed,
    /// Deliveries wait; no handler runs until the next probe.
    Open,
    /// One probe delivery is running; the others wait for its outcome.
    HalfOpen,
}

impl BreakerState {
    /// `closed`, `open` or `half-open`.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
        }
    }

    /// The value of `worker_breaker_state`: 0 closed, 1 open, 2 half-open.
    pub fn gauge_value(self) -> i64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        }
    }
}

/// How a delivery was let through [`Breaker::admit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The breaker was closed.
    Normal,
    /// The breaker was open: this delivery is the probe.
    Probe,
}

/// What a delivery's outcome says about the handler's dependencies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The handler ran and succeeded.
    Success,
    /// The handler ran and failed with a retryable error.
    Failure,
    /// Nothing either way: poison, a duplicate, a delivery held or deferred.
    Neutral,
}

#[derive(Debug)]
enum Phase {
    /// The events that failed since the last success (at most `failures` of them).
    Closed {
        failed: HashSet<String>,
    },
    Open {
        until: Instant,
        wait: Duration,
    },
    Probing {
        wait: Duration,
    },
}

/// One handler's breaker, shared by its consumers (see the module documentation).
pub struct Breaker {
    handler: &'static str,
    settings: BreakerSettings,
    phase: Mutex<Phase>,
    changed: Notify,
    on_change: Box<dyn Fn(BreakerState) + Send + Sync>,
}

impl std::fmt::Debug for Breaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breaker")
            .field("handler", &self.handler)
            .field("settings", &self.settings)
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

impl Breaker {
    /// A closed breaker for `handler`; `on_change` hears every state it enters (the metrics).
    pub fn new(
        handler: &'static str,
        settings: BreakerSettings,
        on_change: impl Fn(BreakerState) + Send + Sync + 'static,
    ) -> Self {
        on_change(BreakerState::Closed);
        Self {
            handler,
            settings,
            phase: Mutex::new(Phase::Closed {
                failed: HashSet::new(),
            }),
            changed: Notify::new(),
            on_change: Box::new(on_change),
        }
    }

    /// The handler it guards.
    pub fn handler(&self) -> &'static str {
        self.handler
    }

    /// The settings it runs with.
    pub fn settings(&self) -> BreakerSettings {
        self.settings
    }

    /// The current state.
    pub fn state(&self) -> BreakerState {
        match *self.phase.lock().expect("breaker lock") {
            Phase::Closed { .. } => BreakerState::Closed,
            Phase::Open { .. } => BreakerState::Open,
            Phase::Probing { .. } => BreakerState::HalfOpen,
        }
    }

    /// Waits until a delivery may run: at once while closed; while open, until this delivery
    /// is the probe or a probe closed the breaker. Cancel-safe (dropping the future gives up the
    /// turn, and a probe that never reports is not possible: only [`Breaker::record`] ends one).
    pub async fn admit(&self) -> Admission {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Register for the wake-up before looking, so a change in between is not missed.
            changed.as_mut().enable();
            let wait_until = {
                let mut phase = self.phase.lock().expect("breaker lock");
                match *phase {
                    Phase::Closed { .. } => return Admission::Normal,
                    Phase::Open { until, wait } if Instant::now() >= until => {
                        *phase = Phase::Probing { wait };
                        drop(phase);
                        self.entered(BreakerState::HalfOpen, None);
                        return Admission::Probe;
                    }
                    Phase::Open { until, .. } => Some(until),
                    Phase::Probing { .. } => None,
                }
            };
            match wait_until {
                Some(until) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(until.into()) => {}
                        _ = changed => {}
                    }
                }
                None => changed.await,
            }
        }
    }

    /// Reports the outcome of a delivery of `event_id` let through as `admission`.
    pub fn record(&self, admission: Admission, verdict: Verdict, event_id: &str) {
        if !self.settings.enabled() {
            return;
        }
        let mut phase = self.phase.lock().expect("breaker lock");
        let entered = match (&mut *phase, admission, verdict) {
            (Phase::Closed { failed }, _, Verdict::Success) => {
                failed.clear();
                None
            }
            (Phase::Closed { failed }, _, Verdict::Failure) => {
                if !failed.contains(event_id) {
                    failed.insert(event_id.to_owned());
                }
                (failed.len() >= self.settings.failures as usize).then(|| {
                    let wait = self.settings.probe.min(self.settings.max_probe);
                    *phase = Phase::Open {
                        until: Instant::now() + wait,
                        wait,
                    };
                    (BreakerState::Open, Some(wait))
                })
            }
            (Phase::Closed { .. }, _, Verdict::Neutral) => None,
            // Any success says the dependency answers again.
            (_, _, Verdict::Success) => {
                *phase = Phase::Closed {
                    failed: HashSet::new(),
                };
                Some((BreakerState::Closed, None))
            }
            (Phase::Probing { wait }, Admission::Probe, Verdict::Failure) => {
                let wait = (*wait * 2).min(self.settings.max_probe);
                *phase = Phase::Open {
                    until: Instant::now() + wait,
                    wait,
                };
                Some((BreakerState::Open, Some(wait)))
            }
            // An inconclusive probe: let the next delivery probe at once.
            (Phase::Probing { wait }, Admission::Probe, Verdict::Neutral) => {
                let wait = *wait;
                *phase = Phase::Open {
                    until: Instant::now(),
                    wait,
                };
                Some((BreakerState::Open, None))
            }
            // Failures of deliveries admitted before the breaker opened change nothing.
            (Phase::Open { .. } | Phase::Probing { .. }, _, _) => None,
        };
        drop(phase);
        if let Some((state, wait)) = entered {
            self.entered(state, wait);
            self.changed.notify_waiters();
        }
    }

    fn entered(&self, state: BreakerState, wait: Option<Duration>) {
        (self.on_change)(state);
        let handler = self.handler;
        match (state, wait) {
            (BreakerState::Open, Some(wait)) => tracing::warn!(
                handler,
                events_failed_in_a_row = self.settings.failures,
                probe_in = ?wait,
                "circuit breaker open: different events failed in a row; deliveries wait without spending attempts until a probe succeeds"
            ),
            (BreakerState::Open, None) => {}
            (BreakerState::HalfOpen, _) => {
                tracing::info!(handler, "circuit breaker half-open: one probe delivery")
            }
            (BreakerState::Closed, _) => {
                tracing::info!(
                    handler,
                    "circuit breaker closed: the handler succeeded again"
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn breaker(failures: u32, probe_ms: u64) -> Arc<Breaker> {
        Arc::new(Breaker::new(
            "h",
            BreakerSettings {
                failures,
                probe: Duration::from_millis(probe_ms),
                max_probe: Duration::from_millis(probe_ms * 4),
            },
            |_| {},
        ))
    }

    #[tokio::test]
    async fn opens_after_failures_in_a_row_and_a_success_resets_the_count() {
        let b = breaker(3, 50);
        b.record(Admission::Normal, Verdict::Failure, "e1");
        b.record(Admission::Normal, Verdict::Failure, "e2");
        b.record(Admission::Normal, Verdict::Success, "e3");
        b.record(Admission::Normal, Verdict::Failure, "e4");
        b.record(Admission::Normal, Verdict::Neutral, "e5"); // poison: not counted, no reset
        b.record(Admission::Normal, Verdict::Failure, "e6");
        assert_eq!(b.state(), BreakerState::Closed);
        b.record(Admission::Normal, Verdict::Failure, "e7");
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[tokio::test]
    async fn one_event_failing_again_and_again_never_opens_it() {
        let b = breaker(3, 50);
        for _ in 0..20 {
            b.record(Admission::Normal, Verdict::Failure, "the-same-event");
        }
        assert_eq!(b.state(), BreakerState::Closed);
        b.record(Admission::Normal, Verdict::Failure, "another");
        b.record(Admission::Normal, Verdict::Failure, "a-third");
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[tokio::test]
    async fn poison_never_opens_it() {
        let b = breaker(2, 50);
        for _ in 0..10 {
            b.record(Admission::Normal, Verdict::Neutral, "e8");
        }
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.admit().await, Admission::Normal);
    }

    #[tokio::test]
    async fn one_probe_at_a_time_and_its_success_lets_everyone_through() {
        let b = breaker(1, 30);
        b.record(Admission::Normal, Verdict::Failure, "e9");
        let started = Instant::now();
        assert_eq!(b.admit().await, Admission::Probe);
        assert!(started.elapsed() >= Duration::from_millis(25));
        assert_eq!(b.state(), BreakerState::HalfOpen);
        let waiting = tokio::spawn({
            let b = Arc::clone(&b);
            async move { b.admit().await }
        });
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert!(
            !waiting.is_finished(),
            "a second delivery waits for the probe"
        );
        b.record(Admission::Probe, Verdict::Success, "e10");
        assert_eq!(waiting.await.unwrap(), Admission::Normal);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test]
    async fn a_failed_probe_doubles_the_wait_up_to_the_maximum() {
        let b = breaker(1, 40);
        b.record(Admission::Normal, Verdict::Failure, "e11");
        assert_eq!(b.admit().await, Admission::Probe);
        b.record(Admission::Probe, Verdict::Failure, "e12");
        assert_eq!(b.state(), BreakerState::Open);
        let started = Instant::now();
        assert_eq!(b.admit().await, Admission::Probe);
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(75), "{waited:?}");
        b.record(Admission::Probe, Verdict::Failure, "e13"); // 160 ms, the maximum
        b.record(Admission::Normal, Verdict::Failure, "e14"); // a late failure: no change
        assert_eq!(b.state(), BreakerState::Open);
        let started = Instant::now();
        assert_eq!(b.admit().await, Admission::Probe);
        assert!(started.elapsed() >= Duration::from_millis(150));
        b.record(Admission::Probe, Verdict::Failure, "e15");
        let started = Instant::now();
        assert_eq!(b.admit().await, Admission::Probe);
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(150) && waited < Duration::from_millis(300),
            "capped at 160 ms: {waited:?}"
        );
    }

    #[tokio::test]
    async fn off_never_opens() {
        let b = breaker(0, 10);
        for i in 0..100 {
            b.record(Admission::Normal, Verdict::Failure, &format!("e{i}"));
        }
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test]
    async fn an_inconclusive_probe_lets_the_next_delivery_probe() {
        let b = breaker(1, 20);
        b.record(Admission::Normal, Verdict::Failure, "e17");
        assert_eq!(b.admit().await, Admission::Probe);
        b.record(Admission::Probe, Verdict::Neutral, "e18");
        let started = Instant::now();
        assert_eq!(b.admit().await, Admission::Probe);
        assert!(started.elapsed() < Duration::from_millis(15));
    }
}
