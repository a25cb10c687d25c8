//! A simulated payment gateway, with switches to make it fail the ways real ones do:
//!
//! | variable | default | effect |
//! |---|---|---|
//! | `PAYMENT_FAILURE_RATE` | `0` | every charge times out with this probability (0.0-1.0) |
//! | `PAYMENT_FLAKY_USERS` | `usr_33` | these users' charges time out on the first attempt, then succeed |
//! | `PAYMENT_ISSUER_DOWN_FOR` | `usr_77` | these users' card issuer is down: every attempt fails until you set it to `none` |
//!
//! User lists are comma-separated; `none` (or empty) means nobody.

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

/// Charges `amount` cents to `user_id` on the `attempt`-th try. A real gateway would get
/// `idempotency_key` (the event id) so that a retried charge is not charged twice on its side
/// either.
pub async fn charge(
    user_id: &str,
    amount: i64,
    idempotency_key: &str,
    attempt: u32,
) -> Result<(), PaymentError> {
    let issuer_down = users("PAYMENT_ISSUER_DOWN_FOR", "usr_77");
    if issuer_down.iter().any(|u| u == user_id) {
        return Err(PaymentError::IssuerDown {
            user_id: user_id.into(),
            setting: issuer_down.join(","),
        });
    }
    if attempt == 1
        && users("PAYMENT_FLAKY_USERS", "usr_33")
            .iter()
            .any(|u| u == user_id)
    {
        return Err(PaymentError::Timeout {
            why: format!("PAYMENT_FLAKY_USERS has {user_id}: its first attempt times out"),
        });
    }
    let rate = failure_rate();
    if rate > 0.0 && rand::thread_rng().gen_bool(rate) {
        return Err(PaymentError::Timeout {
            why: format!("PAYMENT_FAILURE_RATE={rate}"),
        });
    }
    tracing::info!(user_id, amount, idempotency_key, "charged");
    Ok(())
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
