//! Liveness and readiness: `/healthz` says the process is alive; `/readyz` says it is connected
//! to the broker and the database and every handler is consuming.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;

use crate::breaker::{Breaker, BreakerState};

/// What readiness is made of. The transport updates the broker side; the database is checked on
/// each `/readyz` request.
#[derive(Debug)]
pub struct Health {
    /// The broker's name in readiness messages.
    broker: &'static str,
    broker_connected: AtomicBool,
    consuming: AtomicUsize,
    expected_consumers: AtomicUsize,
    pool: std::sync::OnceLock<PgPool>,
    breakers: std::sync::Mutex<Vec<Arc<Breaker>>>,
}

impl Default for Health {
    fn default() -> Self {
        Self::for_broker("the broker")
    }
}

impl Health {
    /// Nothing connected yet; readiness messages say "the broker".
    pub fn new() -> Self {
        Self::default()
    }

    /// Nothing connected yet; readiness messages name the broker (`for_broker("my-broker")` says
    /// "not connected to my-broker"), so on-call sees which connection is down.
    pub fn for_broker(broker: &'static str) -> Self {
        Self {
            broker,
            broker_connected: AtomicBool::new(false),
            consuming: AtomicUsize::new(0),
            expected_consumers: AtomicUsize::new(0),
            pool: std::sync::OnceLock::new(),
            breakers: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// The database to check.
    pub fn set_pool(&self, pool: PgPool) {
        let _ = self.pool.set(pool);
    }

    /// How many consumers a ready worker runs (one per handler).
    pub fn expect_consumers(&self, count: usize) {
        self.expected_consumers.store(count, Ordering::SeqCst);
    }

    /// The broker connection is up (`true`) or lost (`false`). Losing it also means no consumer
    /// is running.
    pub fn set_broker_connected(&self, connected: bool) {
        self.broker_connected.store(connected, Ordering::SeqCst);
        if !connected {
            self.consuming.store(0, Ordering::SeqCst);
        }
    }

    /// A handler's consumer started.
    pub fn consumer_started(&self) {
        self.consuming.fetch_add(1, Ordering::SeqCst);
    }

    /// A handler's consumer stopped.
    pub fn consumer_stopped(&self) {
        let _ = self
            .consuming
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                Some(n.saturating_sub(1))
            });
    }

    /// A handler's circuit breaker, for the detail of `/readyz`.
    pub fn watch_breaker(&self, breaker: Arc<Breaker>) {
        self.breakers.lock().expect("health lock").push(breaker);
    }

    /// The lines `/readyz` adds after its verdict: each handler whose circuit breaker is not
    /// closed (`circuit breaker open: charge-on-order-placed`). An open breaker does not make the
    /// worker unready: the worker is healthy and waits for a dependency, and restarting it would
    /// not help.
    pub fn detail(&self) -> String {
        let breakers = self.breakers.lock().expect("health lock");
        let mut detail = String::new();
        for breaker in breakers.iter() {
            let state = breaker.state();
            if state != BreakerState::Closed {
                detail.push_str(&format!(
                    "circuit breaker {}: {}\n",
                    state.as_str(),
                    breaker.handler()
                ));
            }
        }
        detail
    }

    /// `Ok` when ready, else why not.
    pub async fn readiness(&self) -> Result<(), String> {
        if !self.broker_connected.load(Ordering::SeqCst) {
            return Err(format!("not connected to {}", self.broker));
        }
        let (consuming, expected) = (
            self.consuming.load(Ordering::SeqCst),
            self.expected_consumers.load(Ordering::SeqCst),
        );
        if consuming < expected {
            return Err(format!("{consuming} of {expected} handlers consuming"));
        }
        let Some(pool) = self.pool.get() else {
            return Err("no database pool yet".into());
        };
        match tokio::time::timeout(
            Duration::from_secs(2),
            sqlx::query("SELECT 1").execute(pool),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(format!("database check failed: {error}")),
            Err(_) => Err("database check timed out after 2s".into()),
        }
    }
}
