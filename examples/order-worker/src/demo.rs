//! `order-worker demo` (or `run --demo`): a realistic burst of `OrderPlaced` events that shows
//! dedup, retries and dead letters in the first minute, and each paid order shipped by the
//! partitioned `ship-order` from the `OrderPaid` the charge emitted through the outbox.

use rand::Rng;
use serde_json::json;
use worker_rabbitmq::demo::{DemoError, DemoPublisher};

/// Publishes the burst and says what to look at.
pub async fn burst(events: DemoPublisher) -> Result<String, DemoError> {
    let run: u32 = rand::thread_rng().gen_range(0x1000..0xffff);
    let id = |n: &str| format!("evt_{run:04x}_{n}");
    let order = |n: &str, user: &str, amount: i64| json!({"orderId": format!("ord_{run:04x}_{n}"), "userId": user, "amount": amount});
    for (n, user, amount) in [
        ("1", "usr_12", 4900),
        ("2", "usr_15", 1250),
        ("3", "usr_21", 18000),
    ] {
        events
            .publish(
                "OrderPlaced",
                &id(n),
                &order(n, user, amount),
                "charged once, receipt sent, shipped",
            )
            .await?;
    }
    for _ in 0..3 {
        events
            .publish(
                "OrderPlaced",
                &id("dbl"),
                &order("dbl", "usr_12", 2500),
                "double click x3: charged and shipped once (dedup), 3 receipts",
            )
            .await?;
    }
    events
        .publish(
            "OrderPlaced",
            &id("flaky"),
            &order("flaky", "usr_33", 990),
            "gateway times out once, charged on attempt 2, shipped",
        )
        .await?;
    let poison = events
        .publish(
            "OrderPlaced",
            &id("bad"),
            &order("bad", "usr_40", -5),
            "poison (amount -5): dead-lettered at once by both handlers",
        )
        .await?;
    let down = events
        .publish(
            "OrderPlaced",
            &id("issuer"),
            &order("issuer", "usr_77", 7300),
            "issuer down: 12 attempts, then dead-lettered (retryable)",
        )
        .await?;
    Ok(format!(
        "What to look at, in another terminal (cargo run -p order-worker -- <command>):\n\
         \x20 dlq list                       the poison order at once; usr_77's after its 12 attempts\n\
         \x20 dlq list --trace-id {}   the poison order, found by its trace id\n\
         \x20 dlq show {}        why usr_77's charge failed (trace {down})\n\
         \x20 dlq stats                      one fingerprint per cause\n\
         \x20 topology                       ship-order's 4 partition queues behind its hash exchange\n\
         Shipments (OrderPaid via the outbox, one order at a time in its partition):\n\
         \x20 psql -h 127.0.0.1 -U postgres -c \"select order_id, version from {schema}.shipments where order_id like 'ord_{run:04x}%'\"",
        &poison[..12],
        id("issuer"),
        schema = events.db_schema(),
    ))
}
