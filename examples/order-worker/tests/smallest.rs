//! The smallest complete test of a handler: no broker, no database.

use order_worker::handlers::send_receipt;
use worker_rabbitmq::testing::{TestHarness, TestMessage};
use worker_rabbitmq::ErrorKind;

#[tokio::test]
async fn an_order_of_zero_cents_is_dead_lettered_as_poison() {
    let mut harness = TestHarness::builder()
        .handler(send_receipt)
        .build()
        .await
        .unwrap();
    let order = serde_json::json!({"orderId": "ord_1", "userId": "usr_1", "amount": 0});
    harness.publish(TestMessage::json("OrderPlaced", "evt_1", &order));
    harness.run_until_idle().await;

    let record = &harness.dead_letters("send-receipt")[0];
    assert_eq!(record.failure_metadata.error_kind, ErrorKind::Poison);
    assert_eq!(record.failure_metadata.attempts, 1);
    assert!(record
        .failure_metadata
        .last_error
        .starts_with("InvalidAmount: order ord_1 has amount 0"));
}
