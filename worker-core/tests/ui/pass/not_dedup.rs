use worker_core::{handler, Context, Handler, HandlerError};

#[derive(serde::Deserialize)]
struct OrderCancelled {
    order_id: String,
}

mod handlers {
    use super::*;

    /// Releases the stock held for a cancelled order; idempotent on its own, so no `dedup`.
    #[handler(
        event = "OrderCancelled",
        retry = 1,
        concurrency = 64,
        jitter = "250ms"
    )]
    pub(crate) async fn release_stock(
        ctx: &Context,
        event: OrderCancelled,
    ) -> Result<(), HandlerError> {
        sqlx::query("UPDATE stock SET held = held - 1 WHERE order_id = $1")
            .bind(&event.order_id)
            .execute(ctx.pool())
            .await?;
        Ok(())
    }
}

fn main() {
    let spec = handlers::release_stock.spec();
    assert_eq!(spec.name, "release-stock");
    assert!(!spec.dedup);
    assert_eq!(spec.retry.max_attempts, 1);
    assert_eq!(spec.retry.jitter, std::time::Duration::from_millis(250));
    assert_eq!(spec.concurrency, 64);
}
