use std::sync::Arc;

use worker_core::{handler, Context, Handler, HandlerError, State, StateType};

#[derive(Debug, serde::Deserialize)]
struct OrderPlaced {
    amount: i64,
}

#[derive(Clone)]
struct Gateway {
    limit: i64,
}

struct Settings {
    currency: &'static str,
}

#[handler(event = "OrderPlaced")]
async fn charge(
    State(gateway): State<Gateway>,
    event: OrderPlaced,
    ctx: &Context,
    settings: worker_core::State<Arc<Settings>>,
) -> Result<(), HandlerError> {
    if event.amount > gateway.limit {
        return Err(HandlerError::poison(format!(
            "{} {} is over the limit ({})",
            event.amount,
            settings.0.currency,
            ctx.event_id()
        )));
    }
    Ok(())
}

fn main() {
    assert_eq!(
        charge.states(),
        [StateType::of::<Gateway>(), StateType::of::<Arc<Settings>>()]
    );
    let settings = Arc::new(Settings { currency: "EUR" });
    let ctx = Context::builder().event_id("evt_1").build();
    // Directly, with the state as arguments.
    let over = futures::executor::block_on(charge::handle(
        State(Gateway { limit: 10 }),
        OrderPlaced { amount: 11 },
        &ctx,
        State(Arc::clone(&settings)),
    ));
    assert!(over.unwrap_err().is_poison());
    // Through `Handler::call`, with the state in the context.
    let ctx = Context::builder()
        .handler("charge")
        .state(Gateway { limit: 100 })
        .state(settings)
        .build();
    let ok = futures::executor::block_on(charge.call(OrderPlaced { amount: 11 }, &ctx, None));
    assert!(ok.is_ok());
    // A context without the state: a clear error, not a panic.
    let error = futures::executor::block_on(charge.call(
        OrderPlaced { amount: 1 },
        &Context::builder().handler("charge").build(),
        None,
    ))
    .unwrap_err();
    assert!(error.message().contains("handler `charge` takes `State<"), "{error}");
    assert!(error.message().contains("Gateway>`, and none was given"), "{error}");
}
