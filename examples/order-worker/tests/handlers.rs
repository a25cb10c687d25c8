//! The order worker's handlers, unit-tested with the test harness: the real pipeline (dedup in a
//! Postgres transaction, classification, the retry schedule, dead-letter records, the outbox)
//! without RabbitMQ and in virtual time. Each test gets its own database from `#[sqlx::test]`,
//! with this crate's migrations applied; nothing here connects to a broker, so these tests pass
//! with `AMQP_URL` pointing at a closed port.

use std::time::Duration;

use order_worker::payment::PaymentGateway;
use serde_json::json;
use sqlx::PgPool;
use worker_rabbitmq::testing::{Outcome, TestHarness, TestMessage};
use worker_rabbitmq::ErrorKind;

fn order_placed(event_id: &str, order_id: &str, user_id: &str, amount: i64) -> TestMessage {
    TestMessage::json(
        "OrderPlaced",
        event_id,
        &json!({"orderId": order_id, "userId": user_id, "amount": amount}),
    )
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// The worker `main` runs, as a harness: its handlers, with `gateway` instead of the one from
/// the environment.
async fn harness(pool: &PgPool, gateway: PaymentGateway) -> TestHarness {
    order_worker::worker()
        .test_harness()
        .state(gateway)
        .pool(pool.clone())
        .build()
        .await
        .expect("the order worker's handlers")
}

#[sqlx::test]
async fn a_duplicate_is_charged_once(pool: PgPool) {
    let mut harness = harness(&pool, PaymentGateway::new()).await;
    harness.publish(order_placed("evt_1", "ord_1", "usr_1", 4900));
    harness.publish(order_placed("evt_1", "ord_1", "usr_1", 4900));
    harness.run_until_idle().await;

    assert_eq!(
        harness.outcomes("charge-on-order-placed", "evt_1"),
        [&Outcome::Processed, &Outcome::Duplicate]
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM charges WHERE event_id = 'evt_1'"
        )
        .await,
        1
    );
    // The receipt has no dedup: at least once, so one per delivery.
    assert_eq!(
        harness.outcomes("send-receipt", "evt_1"),
        [&Outcome::Processed, &Outcome::Processed]
    );
}

#[sqlx::test]
async fn a_non_positive_amount_is_poison(pool: PgPool) {
    let mut harness = harness(&pool, PaymentGateway::new()).await;
    harness.publish(order_placed("evt_0", "ord_0", "usr_1", 0));
    harness.publish(order_placed("evt_neg", "ord_neg", "usr_1", -5));
    harness.run_until_idle().await;

    for (event_id, order_id, amount) in [("evt_0", "ord_0", 0), ("evt_neg", "ord_neg", -5)] {
        let outcomes = harness.outcomes("charge-on-order-placed", event_id);
        assert_eq!(outcomes.len(), 1, "no retry for poison: {outcomes:?}");
        let record = outcomes[0].dead_letter().expect("dead-lettered");
        assert_eq!(record.failure_metadata.error_kind, ErrorKind::Poison);
        assert_eq!(record.failure_metadata.attempts, 1);
        assert_eq!(
            record.failure_metadata.last_error,
            format!(
                "InvalidAmount: order {order_id} has amount {amount}; amounts are positive numbers of cents"
            )
        );
        assert_eq!(record.original_message.id.as_deref(), Some(event_id));
    }
    assert_eq!(count(&pool, "SELECT count(*) FROM charges").await, 0);
}

#[sqlx::test]
async fn an_issuer_outage_retries_twelve_times_then_dead_letters(pool: PgPool) {
    let mut harness = harness(&pool, PaymentGateway::new().issuer_down_for(["usr_77"])).await;
    let started = harness.now();
    let wall = std::time::Instant::now();
    harness.publish(order_placed("evt_77", "ord_77", "usr_77", 1500));
    harness.run_until_idle().await;
    let wall = wall.elapsed();

    let charges: Vec<_> = harness
        .deliveries()
        .iter()
        .filter(|d| d.handler == "charge-on-order-placed")
        .collect();
    assert_eq!(
        charges.iter().map(|d| d.attempt).collect::<Vec<_>>(),
        (1..=12).collect::<Vec<_>>()
    );
    // On the schedule: each attempt is delivered when the previous one's backoff ran out.
    let policy = harness
        .spec("charge-on-order-placed")
        .expect("registered")
        .retry;
    for pair in charges.windows(2) {
        let Outcome::RetryScheduled { at, delay, .. } = &pair[0].outcome else {
            panic!(
                "attempt {} should schedule a retry: {:?}",
                pair[0].attempt, pair[0]
            );
        };
        assert_eq!(pair[1].at, *at);
        let failures = pair[0].attempt;
        assert!(
            *delay >= policy.base_delay(failures)
                && *delay <= policy.base_delay(failures) + policy.jitter,
            "attempt {failures}: {delay:?}"
        );
    }
    let record = charges[11].outcome.dead_letter().expect("dead-lettered");
    assert_eq!(record.failure_metadata.attempts, 12);
    assert_eq!(record.failure_metadata.error_kind, ErrorKind::Retryable);
    assert!(
        record
            .failure_metadata
            .last_error
            .contains("IssuerUnavailable: card issuer of usr_77 answered 503"),
        "{record:?}"
    );
    assert_eq!(record.failure_metadata.first_failed_at, started);
    let virtual_span = (record.failure_metadata.last_failed_at - started)
        .to_std()
        .expect("forward in time");
    // 0.2 s doubling to the 30 s cap: at least 0.2+0.4+...+25.6+30+30 s of backoff, none waited.
    assert!(
        virtual_span >= Duration::from_millis(111_100),
        "{virtual_span:?}"
    );
    assert!(
        wall < virtual_span,
        "{wall:?} of wall time for {virtual_span:?} of virtual time"
    );
    println!("12 attempts over {virtual_span:?} of virtual time took {wall:?}");
    assert_eq!(count(&pool, "SELECT count(*) FROM charges").await, 0);
}

#[sqlx::test]
async fn a_charge_enqueues_order_paid_and_the_shipment_follows(pool: PgPool) {
    let mut harness = harness(&pool, PaymentGateway::new()).await;
    harness.publish(order_placed("evt_5", "ord_5", "usr_5", 2500));
    harness.run_until_idle().await;
    assert_eq!(
        harness.outcomes("charge-on-order-placed", "evt_5"),
        [&Outcome::Processed]
    );

    let relayed = harness.relay_outbox().await.expect("the outbox");
    assert_eq!(relayed.len(), 1, "{relayed:?}");
    assert_eq!(relayed[0].event_type, "OrderPaid");
    assert_eq!(relayed[0].aggregate_id, "ord_5");
    let paid: serde_json::Value = serde_json::from_str(&relayed[0].payload).expect("JSON");
    assert_eq!(
        paid,
        json!({"orderId": "ord_5", "userId": "usr_5", "amount": 2500, "version": 1})
    );

    // The relayed OrderPaid carries its partition key; ship-order (partitioned) takes it.
    harness.run_until_idle().await;
    let event_id = &relayed[0].event_id;
    assert_eq!(
        harness.outcomes("ship-order", event_id),
        [&Outcome::Processed]
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM shipments WHERE order_id = 'ord_5' AND version = 1"
        )
        .await,
        1
    );
}
