use std::fmt;

use worker_core::{handler, Handler, HandlerError, ResultExt};

#[derive(serde::Deserialize)]
struct PaymentRequested {
    amount: String,
}

#[derive(Debug)]
struct GatewayTimeout;

impl fmt::Display for GatewayTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("payment gateway timed out")
    }
}

impl std::error::Error for GatewayTimeout {}

async fn call_gateway(amount: i64) -> Result<(), GatewayTimeout> {
    if amount > 100 {
        Err(GatewayTimeout)
    } else {
        Ok(())
    }
}

/// `?` on any error is retryable; `.poison()` marks what can never succeed.
#[handler(event = "PaymentRequested")]
async fn pay(event: PaymentRequested) -> Result<(), HandlerError> {
    let amount: i64 = event.amount.parse().poison()?;
    call_gateway(amount).await?;
    Ok(())
}

/// A handler may return its own error type, as long as it converts into `HandlerError`.
#[handler(event = "PaymentRequested", name = "pay_directly")]
async fn pay_directly(event: PaymentRequested) -> Result<(), GatewayTimeout> {
    call_gateway(event.amount.len() as i64).await
}

fn main() {
    let run = |amount: &str| {
        futures::executor::block_on(pay::handle(PaymentRequested {
            amount: amount.into(),
        }))
    };
    assert!(run("10").is_ok());
    assert!(run("ten").unwrap_err().is_poison());
    let err = run("1000").unwrap_err();
    assert!(!err.is_poison());
    assert_eq!(err.message(), "GatewayTimeout: payment gateway timed out");
    assert_eq!(pay_directly.spec().name, "pay_directly");
}
