//! Hours, days and sums of units: the grammar of the `WORKER_RETRY_*` variables.

use std::time::Duration;

use worker_core::{handler, Handler, HandlerError, RetryPolicy};

#[derive(serde::Deserialize)]
struct OrderPlaced {
    order_id: String,
}

#[handler(event = "OrderPlaced", base = "1s", cap = "1h", jitter = "1m30s")]
async fn charge(event: OrderPlaced) -> Result<(), HandlerError> {
    let _ = event.order_id;
    Ok(())
}

#[handler(event = "OrderPlaced", base = 1h, cap = 1d12h, jitter = 2s)]
async fn remind(event: OrderPlaced) -> Result<(), HandlerError> {
    let _ = event.order_id;
    Ok(())
}

fn main() {
    assert_eq!(
        charge.spec().retry,
        RetryPolicy {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(3_600),
            jitter: Duration::from_secs(90),
            ..RetryPolicy::DEFAULT
        }
    );
    assert_eq!(
        remind.spec().retry,
        RetryPolicy {
            base: Duration::from_secs(3_600),
            cap: Duration::from_secs(36 * 3_600),
            jitter: Duration::from_secs(2),
            ..RetryPolicy::DEFAULT
        }
    );
}
