//! Application state: a worker is checked at start for every `State<T>` its handlers take.

use worker_core::transport::pipeline::States;
use worker_core::transport::registry::{Registry, RegistryError};
use worker_core::{handler, HandlerError, State};

#[derive(serde::Deserialize)]
struct OrderPlaced {}

#[derive(Clone)]
struct PaymentGateway;

#[derive(Clone)]
struct Mailer;

#[handler(event = "OrderPlaced")]
async fn charge(
    _event: OrderPlaced,
    State(_gateway): State<PaymentGateway>,
) -> Result<(), HandlerError> {
    Ok(())
}

#[handler(event = "OrderPlaced")]
async fn send_receipt(
    _event: OrderPlaced,
    State(_mailer): State<Mailer>,
    State(_gateway): State<PaymentGateway>,
) -> Result<(), HandlerError> {
    Ok(())
}

#[handler(event = "OrderPlaced")]
async fn audit(_event: OrderPlaced) -> Result<(), HandlerError> {
    Ok(())
}

#[test]
fn a_missing_state_type_is_named_with_its_handler() {
    let mut registry = Registry::new();
    registry.add(audit);
    registry.add(charge);
    registry.add(send_receipt);
    let mut states = States::new();
    let error = registry.check_states(&states).expect_err("nothing given");
    assert!(
        matches!(&error, RegistryError::MissingState { handler: "charge", state, .. } if state.ends_with("PaymentGateway")),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(
        message.starts_with("handler `charge` takes `State<state::PaymentGateway>`, but the worker was given no `state::PaymentGateway`"),
        "{message}"
    );
    assert!(
        message.contains("add `.state(value)`") && message.ends_with("(given: none)"),
        "{message}"
    );

    states.insert(PaymentGateway);
    let error = registry.check_states(&states).expect_err("no mailer");
    assert!(
        error
            .to_string()
            .starts_with("handler `send-receipt` takes `State<state::Mailer>`"),
        "{error}"
    );
    assert!(
        error.to_string().contains("(given: state::PaymentGateway)"),
        "{error}"
    );

    states.insert(Mailer);
    registry.check_states(&states).expect("every state given");
}
