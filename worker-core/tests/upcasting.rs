//! Versioned events through the pipeline a worker runs (in the test harness): a handler that
//! knows version 3 of `OrderPlaced` reads versions 1 and 2 through a chain of upcasters, and a
//! newer, a malformed or an unreadable version is dead-lettered as poison saying why.

use serde::Deserialize;
use serde_json::{json, Value};
use worker_core::testing::{TestHarness, TestMessage};
use worker_core::{handler, ErrorKind, HandlerError, Upcasters};

/// Version 3: `amountCents` (v1 had `amount` in whole euros) and `currency` (new in v3).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct OrderPlaced {
    order_id: String,
    amount_cents: i64,
    currency: String,
}

#[handler(event = "OrderPlaced", version = 3)]
async fn charge(event: OrderPlaced) -> Result<(), HandlerError> {
    if event.order_id.is_empty() || event.amount_cents <= 0 || event.currency.len() != 3 {
        return Err(HandlerError::poison(format!("bad order: {event:?}")));
    }
    Ok(())
}

fn upcasters() -> Upcasters {
    Upcasters::new()
        .upcast("OrderPlaced", 1, |mut v: Value| {
            let map = v
                .as_object_mut()
                .ok_or("a v1 OrderPlaced is a JSON object")?;
            let euros = map
                .remove("amount")
                .and_then(|a| a.as_i64())
                .ok_or("a v1 OrderPlaced has an integer `amount`")?;
            map.insert("amountCents".into(), json!(euros * 100));
            Ok::<_, &str>(v)
        })
        .upcast("OrderPlaced", 2, |mut v: Value| {
            v["currency"] = json!("EUR");
            Ok::<_, &str>(v)
        })
}

async fn harness(upcasters: Upcasters) -> TestHarness {
    TestHarness::builder()
        .handler(charge)
        .upcasters(upcasters)
        .build()
        .await
        .expect("harness")
}

fn last_error(h: &TestHarness, event_id: &str) -> (ErrorKind, String) {
    let outcomes = h.outcomes("charge", event_id);
    assert_eq!(
        outcomes.len(),
        1,
        "poison on the first attempt: {outcomes:?}"
    );
    let record = outcomes[0].dead_letter().expect("dead-lettered");
    (
        record.failure_metadata.error_kind,
        record.failure_metadata.last_error.clone(),
    )
}

#[tokio::test]
async fn versions_one_two_and_three_all_reach_the_handler_as_version_three() {
    let mut h = harness(upcasters()).await;
    h.publish(TestMessage::json(
        "OrderPlaced",
        "evt_v1",
        &json!({"orderId": "o1", "amount": 49}),
    ));
    h.publish(
        TestMessage::json(
            "OrderPlaced",
            "evt_v2",
            &json!({"orderId": "o2", "amountCents": 4900}),
        )
        .version(2),
    );
    h.publish(
        TestMessage::json(
            "OrderPlaced",
            "evt_v3",
            &json!({"orderId": "o3", "amountCents": 4900, "currency": "USD"}),
        )
        .version(3),
    );
    h.run_until_idle().await;
    for id in ["evt_v1", "evt_v2", "evt_v3"] {
        assert_eq!(
            h.outcomes("charge", id)
                .iter()
                .map(|o| o.name())
                .collect::<Vec<_>>(),
            ["processed"],
            "{id}"
        );
    }
}

#[tokio::test]
async fn a_version_the_handler_cannot_read_is_poison_with_the_reason() {
    let mut h = harness(upcasters()).await;
    h.publish(TestMessage::json("OrderPlaced", "evt_v4", &json!({"orderId": "o4"})).version(4));
    h.publish(
        TestMessage::json("OrderPlaced", "evt_bad", &json!({"orderId": "o5"}))
            .header("x-event-version", "two"),
    );
    h.publish(TestMessage::json(
        "OrderPlaced",
        "evt_v1_bad",
        &json!({"orderId": "o6", "amount": "lots"}),
    ));
    h.publish(TestMessage::json(
        "OrderPlaced",
        "evt_v1_short",
        &json!({"amount": 1}),
    ));
    h.run_until_idle().await;

    assert_eq!(
        last_error(&h, "evt_v4"),
        (
            ErrorKind::Poison,
            "OrderPlaced version 4 is newer than version 3, the newest this handler knows: \
             deploy a consumer that knows version 4, then replay this dead letter"
                .into()
        )
    );
    assert_eq!(
        last_error(&h, "evt_bad").1,
        "x-event-version of OrderPlaced is \"two\", not a positive integer version"
    );
    assert_eq!(
        last_error(&h, "evt_v1_bad").1,
        "upcasting OrderPlaced from version 1 to 2 failed: a v1 OrderPlaced has an integer `amount`"
    );
    assert_eq!(
        last_error(&h, "evt_v1_short").1,
        "payload of OrderPlaced, upcast from version 1 to 3, does not match the handler's type \
         at `.`: missing field `orderId`"
    );
}

#[tokio::test]
async fn a_missing_step_is_named() {
    let only_the_first = Upcasters::new().upcast("OrderPlaced", 1, |v: Value| Ok::<_, &str>(v));
    let mut h = harness(only_the_first).await;
    h.publish(TestMessage::json(
        "OrderPlaced",
        "evt_v1",
        &json!({"orderId": "o1", "amount": 1}),
    ));
    h.run_until_idle().await;
    assert_eq!(
        last_error(&h, "evt_v1").1,
        "OrderPlaced version 2 cannot be read: the handler knows version 3 and no upcaster from \
         version 2 to 3 is registered (WorkerBuilder::upcast)"
    );
}
