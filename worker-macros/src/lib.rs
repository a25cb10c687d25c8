//! The `#[handler]` attribute of the worker framework.
//!
//! Use it through `worker_rabbitmq::handler` (or `worker_core::handler`): the generated code
//! refers to the `__private` module of whichever of the two the calling crate depends on, and
//! worker-core's crate docs show a complete handler.

mod attr;
mod duration;
mod errors;
mod expand;
mod signature;

use proc_macro::TokenStream;

/// Turns an `async fn` into an event handler that a worker can register.
///
/// ```text
/// #[handler(event = "OrderPlaced", dedup, retry = 12, base = 250ms, cap = "1m", jitter = 1s)]
/// async fn charge_on_order_placed(event: OrderPlaced, tx: &mut PgConnection, ctx: &Context)
///     -> Result<(), HandlerError>
/// ```
///
/// - `event = "..."` (required): the event type (routing key) the handler consumes.
/// - `dedup`: process each event once, in a transaction that also writes the dedup row; the
///   function then takes that transaction as a `&mut PgConnection` parameter.
/// - `retry = N`: attempts in total, the first included (default 5).
/// - `name = "..."`: the handler's queue, dedup key and metric label; by default the function's
///   name with `_` turned into `-`. ASCII letters, digits, `-`, `_` and `.`, at most 200 bytes.
/// - `concurrency = N`: deliveries in flight at once (default `DEFAULT_CONCURRENCY`).
/// - `base`, `cap`, `jitter`: the backoff, as `250ms`, `2s`, `5m`, `1h`, `7d`, `1h30m` or the
///   same in a string: a whole number and a unit (`ms`, `s`, `m`, `h` or `d`), several terms
///   from the largest unit down. It is the grammar of the `WORKER_RETRY_*` variables too
///   (the `worker-duration` crate); a value it rejects is an error at the literal.
/// - `breaker = N` or `breaker = off`: the handler's circuit breaker opens when N different
///   events failed with a retryable error in a row (default 10); while it is open, deliveries
///   wait without running the handler or spending attempts, and one probe at a time checks
///   whether the dependency is back. `WORKER_BREAKER_*` variables override it.
/// - `version = N`: the version of the event's shape the event type is (default 1). Producers
///   send `x-event-version`; older events are brought to N by the upcasters registered with
///   `WorkerBuilder::upcast`, newer ones are dead-lettered as poison saying so.
///
/// Parameters are told apart by their form: the event is taken by value, the context as
/// `&Context`, the dedup transaction as `&mut PgConnection`; declare them in any order. The
/// function returns `Result<(), E>` for any `E` that converts into `HandlerError`.
///
/// The function's name then names a unit struct that implements `worker_core::Handler`; its
/// associated `handle` function calls the original function directly, for tests.
#[proc_macro_attribute]
pub fn handler(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::handler(args.into(), item.into()).into()
}
