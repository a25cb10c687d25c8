//! A simulated payment gateway, with switches to make it fail the ways real ones do (read once,
//! by [`PaymentGateway::from_env`] in `main`'s builder):
//!
//! | variable | default | effect |
//! |---|---|---|
//! | `PAYMENT_FAILURE_RATE` | `0` | every charge times out with this probability (0.0-1.0) |
//! | `PAYMENT_FLAKY_USERS` | `usr_33` | these users' charges time out on the first attempt, then succeed |
//! | `PAYMENT_ISSUER_DOWN_FOR` | `usr_77` | these users' card issuer is down: every attempt fails until you set it to `none` |
//!
//! User lists are comma-separated; `none` (or empty) means nobody.

use std::sync::Arc;

use rand::Rng;

/// The gateway could not charge: transient, worth retrying.
#[derive(Debug, thiserror::Error)]
pub enum PaymentError {
    /// The gateway timed out.
    #[error("PaymentGatewayTimeout: upstream returned 504 after 30s (simulated: {why})")]
    Timeout {
        /// Which switch caused it.
        why: String,
    },
    /// The customer's card issuer is unavailable.
    #[error("IssuerUnavailable: card issuer of {user_id} answered 503 (simulated: PAYMENT_ISSUER_DOWN_FOR={setting}; set it to `none` to fix)")]
    IssuerDown {
        /// The customer.
        user_id: String,
        /// The switch's value.
        setting: String,
    },
}

/// The payment gateway client: built once in `main` (from the variables above) and handed to
/// the charge handler as `State<PaymentGateway>`. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct PaymentGateway {
    switches: Arc<Switches>,
}

#[derive(Debug, Clone, Default)]
struct Switches {
    issuer_down_for: Vec<String>,
    flaky_users: Vec<String>,
    failure_rate: f64,
}

impl PaymentGateway {
    /// A gateway where every charge succeeds (set failures with the other methods).
    pub fn new() -> Self {
        Self::default()
    }

    /// The gateway the variables in this module's table describe (their defaults when unset).
    pub fn from_env() -> Self {
        Self::new()
            .issuer_down_for(users("PAYMENT_ISSUER_DOWN_FOR", "usr_77"))
            .flaky_users(users("PAYMENT_FLAKY_USERS", "usr_33"))
            .failure_rate(failure_rate())
    }

    /// These users' card issuer is down: every charge fails.
    pub fn issuer_down_for<S: Into<String>>(mut self, users: impl IntoIterator<Item = S>) -> Self {
        self.switches_mut().issuer_down_for = users.into_iter().map(Into::into).collect();
        self
    }

    /// These users' first attempt times out.
    pub fn flaky_users<S: Into<String>>(mut self, users: impl IntoIterator<Item = S>) -> Self {
        self.switches_mut().flaky_users = users.into_iter().map(Into::into).collect();
        self
    }

    /// Every charge times out with this probability (clamped to 0.0-1.0).
    pub fn failure_rate(mut self, rate: f64) -> Self {
        self.switches_mut().failure_rate = rate.clamp(0.0, 1.0);
        self
    }

    fn switches_mut(&mut self) -> &mut Switches {
        Arc::make_mut(&mut self.switches)
    }

    /// Charges `amount` cents to `user_id` on the `attempt`-th try. A real gateway would get
    /// `idempotency_key` (the event id) so that a retried charge is not charged twice on its
    /// side either.
    pub async fn charge(
        &self,
        user_id: &str,
        amount: i64,
        idempotency_key: &str,
        attempt: u32,
    ) -> Result<(), PaymentError> {
        let switches = &self.switches;
        if switches.issuer_down_for.iter().any(|u| u == user_id) {
            return Err(PaymentError::IssuerDown {
                user_id: user_id.into(),
                setting: switches.issuer_down_for.join(","),
            });
        }
        if attempt == 1 && switches.flaky_users.iter().any(|u| u == user_id) {
            return Err(PaymentError::Timeout {
                why: format!("PAYMENT_FLAKY_USERS has {user_id}: its first attempt times out"),
            });
        }
        let rate = switches.failure_rate;
        if rate > 0.0 && rand::thread_rng().gen_bool(rate) {
            return Err(PaymentError::Timeout {
                why: format!("PAYMENT_FAILURE_RATE={rate}"),
            });
        }
        tracing::info!(user_id, amount, idempotency_key, "charged");
        Ok(())
    }
}

fn users(var: &str, default: &str) -> Vec<String> {
    let value = std::env::var(var).unwrap_or_else(|_| default.into());
    value
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty() && *u != "none")
        .map(str::to_owned)
        .collect()
}

fn failure_rate() -> f64 {
    std::env::var("PAYMENT_FAILURE_RATE")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .map(|r| r.clamp(0.0, 1.0))
        .unwrap_or(0.0)
}
