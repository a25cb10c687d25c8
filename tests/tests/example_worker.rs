//! The example order worker end to end: charges once per event even when the event is
//! published twice (one after the other and concurrently), sends a receipt per delivery,
//! dead-letters a bad amount, and ships each paid order once through the partitioned,
//! version-checked `ship-order` (fed by the `OrderPaid` the charge emits through the outbox).

use serde_json::json;
use worker_tests::{eventually, TestEnv};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn charges_once_per_event_receipts_per_delivery_and_dead_letters_bad_amounts() {
    worker_tests::ensure_consistent_hash_plugin();
    let env = TestEnv::new().await;
    let worker = order_worker::worker()
        .settings(env.settings())
        .start()
        .await
        .expect("worker starts");

    let order =
        |id: &str, amount: i64| json!({ "orderId": id, "userId": "usr_12", "amount": amount });
    // The same event twice, one after the other (a double click).
    env.publish_json("OrderPlaced", "evt_seq", order("ord_seq", 4900))
        .await;
    env.publish_json("OrderPlaced", "evt_seq", order("ord_seq", 4900))
        .await;
    // The same event twice, concurrently.
    futures::join!(
        env.publish_json("OrderPlaced", "evt_conc", order("ord_conc", 1200)),
        env.publish_json("OrderPlaced", "evt_conc", order("ord_conc", 1200)),
    );
    // A poison order.
    env.publish_json("OrderPlaced", "evt_bad", order("ord_bad", -5))
        .await;

    let receipts = "SELECT count(*) FROM receipts WHERE order_id = $1";
    eventually("two receipts per duplicated event", || async {
        env.count(receipts, "ord_seq").await == 2 && env.count(receipts, "ord_conc").await == 2
    })
    .await;
    eventually("both duplicated events charged", || async {
        env.count(
            "SELECT count(*) FROM charges WHERE order_id = $1",
            "ord_conc",
        )
        .await
            >= 1
            && env
                .count(
                    "SELECT count(*) FROM charges WHERE order_id = $1",
                    "ord_seq",
                )
                .await
                >= 1
    })
    .await;
    let shipped = "SELECT count(*) FROM shipments WHERE order_id = $1 AND version = 1";
    eventually("both charged orders shipped", || async {
        env.count(shipped, "ord_seq").await == 1 && env.count(shipped, "ord_conc").await == 1
    })
    .await;
    let charge_records = env.wait_dead_letters("charge-on-order-placed", 1).await;
    let receipt_records = env.wait_dead_letters("send-receipt", 1).await;
    eventually("work queues drained", || async {
        env.depth(&env.queue("charge-on-order-placed")).await == 0
            && env.depth(&env.queue("send-receipt")).await == 0
    })
    .await;
    worker.shutdown().await.expect("clean shutdown");

    for order_id in ["ord_seq", "ord_conc"] {
        assert_eq!(
            env.count("SELECT count(*) FROM charges WHERE order_id = $1", order_id)
                .await,
            1,
            "{order_id} charged once"
        );
        assert_eq!(
            env.count(
                "SELECT count(*) FROM orders WHERE order_id = $1 AND paid",
                order_id
            )
            .await,
            1
        );
        assert_eq!(
            env.count(receipts, order_id).await,
            2,
            "{order_id}: one receipt per delivery"
        );
    }
    assert_eq!(
        env.count(
            "SELECT count(*) FROM processed_events WHERE handler = $1",
            "charge-on-order-placed"
        )
        .await,
        2
    );
    assert_eq!(
        env.count(
            "SELECT count(*) FROM charges WHERE order_id = $1",
            "ord_bad"
        )
        .await,
        0
    );
    assert_eq!(
        env.count(
            "SELECT count(*) FROM processed_events WHERE handler = $1",
            "ship-order"
        )
        .await,
        2,
        "one OrderPaid per charged order, each shipped once"
    );
    assert_eq!(
        env.count(
            "SELECT count(*) FROM shipments WHERE order_id = $1",
            "ord_bad"
        )
        .await,
        0
    );

    for (properties, record) in charge_records.iter().chain(&receipt_records) {
        let meta = &record.failure_metadata;
        assert_eq!(record.original_message.id.as_deref(), Some("evt_bad"));
        assert_eq!(record.original_message.payload["amount"], -5);
        assert_eq!(meta.attempts, 1);
        assert_eq!(meta.error_kind, worker_core::ErrorKind::Poison);
        assert!(
            meta.last_error
                .starts_with("InvalidAmount: order ord_bad has amount -5"),
            "{}",
            meta.last_error
        );
        assert_eq!(
            properties.message_id().as_ref().map(|s| s.as_str()),
            Some("evt_bad")
        );
    }
    assert_eq!(
        charge_records[0].1.failure_metadata.handler,
        "charge-on-order-placed"
    );
    assert_eq!(
        receipt_records[0].1.failure_metadata.handler,
        "send-receipt"
    );
}
