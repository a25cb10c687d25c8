//! Per-error policies: error types mapped to poison, a retry-after wait, or a retry schedule of
//! their own, through the same pipeline a worker runs (in the test harness).

use std::time::Duration;

use serde_json::json;
use worker_core::testing::{Outcome, TestHarness, TestMessage};
use worker_core::{handler, ErrorKind, ErrorPolicies, ErrorPolicy, HandlerError, RetryPolicy};

#[derive(Debug, thiserror::Error)]
#[error("the API answered 429; retry after {0:?}")]
struct RateLimited(Duration);

#[derive(Debug, thiserror::Error)]
#[error("the card was declined")]
struct CardDeclined;

#[derive(Debug, thiserror::Error)]
#[error("the inventory service timed out")]
struct InventoryTimeout;

#[derive(serde::Deserialize)]
struct Call {
    fails: String,
}

#[handler(event = "Call", retry = 3)]
async fn call_services(event: Call) -> Result<(), HandlerError> {
    match event.fails.as_str() {
        "rate-limited" => Err(RateLimited(Duration::from_secs(40)))?,
        "declined" => Err(CardDeclined)?,
        "inventory" => Err(InventoryTimeout)?,
        _ => Ok(()),
    }
}

fn policies() -> ErrorPolicies {
    ErrorPolicies::new()
        .on(|e: &RateLimited| Some(ErrorPolicy::RetryAfter(e.0)))
        .on(|_: &CardDeclined| Some(ErrorPolicy::Poison))
        .for_handler("call-services", |_: &InventoryTimeout| {
            Some(ErrorPolicy::Retry(RetryPolicy {
                max_attempts: 6,
                base: Duration::from_secs(5),
                cap: Duration::from_secs(60),
                jitter: Duration::ZERO,
            }))
        })
}

async fn harness(policies: ErrorPolicies) -> TestHarness {
    TestHarness::builder()
        .handler(call_services)
        .error_policies(policies)
        .build()
        .await
        .expect("harness")
}

fn publish(h: &mut TestHarness, id: &str, fails: &str) {
    h.publish(TestMessage::json("Call", id, &json!({ "fails": fails })));
}

#[tokio::test]
async fn a_typed_error_is_poison_waits_its_retry_after_or_follows_its_own_schedule() {
    let mut h = harness(policies()).await;
    publish(&mut h, "evt_declined", "declined");
    publish(&mut h, "evt_limited", "rate-limited");
    publish(&mut h, "evt_inventory", "inventory");
    h.run_until_idle().await;

    let declined = h.outcomes("call-services", "evt_declined");
    assert_eq!(
        declined.len(),
        1,
        "poison on the first attempt: {declined:?}"
    );
    let record = declined[0].dead_letter().expect("dead-lettered");
    assert_eq!(record.failure_metadata.error_kind, ErrorKind::Poison);

    let limited = h.outcomes("call-services", "evt_limited");
    match limited[0] {
        Outcome::RetryScheduled { delay, .. } => assert!(
            *delay >= Duration::from_secs(40),
            "waits the 40 s the error says: {delay:?}"
        ),
        other => panic!("expected a retry, got {other}"),
    }
    assert_eq!(
        limited.len(),
        3,
        "still the handler's 3 attempts: {limited:?}"
    );

    let inventory = h.outcomes("call-services", "evt_inventory");
    assert_eq!(
        inventory.len(),
        6,
        "the policy's 6 attempts, not the handler's 3"
    );
    let delays: Vec<Duration> = inventory
        .iter()
        .filter_map(|o| match o {
            Outcome::RetryScheduled { delay, .. } => Some(*delay),
            _ => None,
        })
        .collect();
    assert_eq!(
        delays,
        [5, 10, 20, 40, 60].map(Duration::from_secs),
        "the policy's schedule"
    );
    let record = inventory[5]
        .dead_letter()
        .expect("dead-lettered at the end");
    assert_eq!(
        (
            record.failure_metadata.attempts,
            record.failure_metadata.error_kind
        ),
        (6, ErrorKind::Retryable)
    );
}

#[tokio::test]
async fn without_policies_every_error_is_retried_on_the_handler_schedule() {
    let mut h = harness(ErrorPolicies::new()).await;
    publish(&mut h, "evt_declined", "declined");
    publish(&mut h, "evt_inventory", "inventory");
    h.run_until_idle().await;
    for id in ["evt_declined", "evt_inventory"] {
        let outcomes = h.outcomes("call-services", id);
        assert_eq!(outcomes.len(), 3, "{id}: {outcomes:?}");
        let record = outcomes[2].dead_letter().expect("dead-lettered");
        assert_eq!(record.failure_metadata.error_kind, ErrorKind::Retryable);
    }
}
