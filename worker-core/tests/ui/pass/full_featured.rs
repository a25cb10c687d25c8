use std::time::Duration;

use sqlx::PgConnection;
use worker_core::{handler, Context, Handler, HandlerError, RetryPolicy};

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderPlaced {
    pub order_id: String,
    pub amount: i64,
}

/// Charges the customer once per order.
#[handler(
    event = "OrderPlaced",
    dedup,
    retry = 12,
    name = "charge.on-order_placed.v2",
    concurrency = 8,
    base = 250ms,
    cap = "1m",
    jitter = 0s,
    breaker = 5,
    version = 3,
)]
pub async fn charge_on_order_placed(
    event: OrderPlaced,
    tx: &mut PgConnection,
    ctx: &Context,
) -> Result<(), HandlerError> {
    if event.amount <= 0 {
        return Err(HandlerError::poison("amount must be positive"));
    }
    sqlx::query("INSERT INTO charges (event_id, order_id, amount) VALUES ($1, $2, $3)")
        .bind(ctx.event_id())
        .bind(&event.order_id)
        .bind(event.amount)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

#[derive(serde::Deserialize)]
struct OrderShipped {
    order_id: String,
}

/// Parameters in another order, a pattern, and the defaults of all but `event` and the backoff.
#[handler(event = "OrderShipped", dedup, base = "1s", cap = 2m, breaker = off)]
async fn record_shipment(
    ctx: &Context,
    OrderShipped { order_id }: OrderShipped,
    tx: &mut sqlx::PgConnection,
) -> Result<(), HandlerError> {
    sqlx::query("INSERT INTO shipments (event_id, order_id) VALUES ($1, $2)")
        .bind(ctx.event_id())
        .bind(order_id)
        .execute(tx)
        .await?;
    Ok(())
}

fn assert_handler<H: Handler>(handler: H) -> H {
    handler
}

fn assert_send<T: Send>(_: T) {}

fn main() {
    let spec = assert_handler(charge_on_order_placed).spec();
    assert_eq!(spec.name, "charge.on-order_placed.v2");
    assert_eq!(spec.event_type, "OrderPlaced");
    assert!(spec.dedup);
    assert_eq!(spec.concurrency, 8);
    assert_eq!(
        spec.retry,
        RetryPolicy {
            max_attempts: 12,
            base: Duration::from_millis(250),
            cap: Duration::from_secs(60),
            jitter: Duration::ZERO,
        }
    );
    assert_eq!(spec.breaker.failures, 5);
    assert_eq!(spec.breaker.probe, worker_core::BreakerSettings::DEFAULT.probe);
    assert_eq!(spec.version, 3);

    let spec = assert_handler(record_shipment).spec();
    assert_eq!(spec.name, "record-shipment");
    assert_eq!(spec.event_type, "OrderShipped");
    assert_eq!(spec.concurrency, worker_core::transport::config::DEFAULT_CONCURRENCY);
    assert_eq!(
        spec.retry,
        RetryPolicy {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(120),
            ..RetryPolicy::DEFAULT
        }
    );
    assert!(!spec.breaker.enabled());
    assert_eq!(spec.version, 1, "version 1 unless declared");

    // The unit struct is `Copy + Default + Debug`, and `handle` calls the function directly.
    let copy = charge_on_order_placed;
    let _ = (copy, charge_on_order_placed::default(), format!("{copy:?}"));
    let _ = |event: OrderPlaced, tx: &mut PgConnection, ctx: &Context| {
        assert_send(charge_on_order_placed::handle(event, tx, ctx));
    };
}
