//! A simulated payment gateway. `PAYMENT_FAILURE_RATE` (0.0-1.0, default 0) makes it time out
//! at that rate, so retries can be watched.

use rand::Rng;

/// The gateway timed out: transient, worth retrying.
#[derive(Debug, thiserror::Error)]
#[error("upstream returned 504 after 30s (simulated, PAYMENT_FAILURE_RATE={rate})")]
pub struct PaymentGatewayTimeout {
    rate: f64,
}

/// Charges `amount` cents to `user_id`. A real gateway would get `idempotency_key` (the event
/// id) so that a retried charge is not charged twice on its side either.
pub async fn charge(
    user_id: &str,
    amount: i64,
    idempotency_key: &str,
) -> Result<(), PaymentGatewayTimeout> {
    let rate = failure_rate();
    if rate > 0.0 && rand::thread_rng().gen_bool(rate) {
        return Err(PaymentGatewayTimeout { rate });
    }
    tracing::info!(user_id, amount, idempotency_key, "charged");
    Ok(())
}

fn failure_rate() -> f64 {
    std::env::var("PAYMENT_FAILURE_RATE")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .map(|r| r.clamp(0.0, 1.0))
        .unwrap_or(0.0)
}
