//! The version check: is this event newer than what the handler already applied to its entity?

use sqlx::PgConnection;

/// The verdict of [`apply_if_newer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Newer than anything applied (or the first version seen): apply it. The new version is
    /// recorded in the caller's transaction, so it commits with the handler's writes.
    Fresh {
        /// The version applied before, if any.
        previous: Option<i64>,
    },
    /// Not newer than the version already applied (an older event that arrived late, or the
    /// same version again): skip it and return `Ok(())`.
    Stale {
        /// The version already applied.
        current: i64,
    },
}

impl Freshness {
    /// Whether the handler should apply the event.
    pub fn is_fresh(&self) -> bool {
        matches!(self, Freshness::Fresh { .. })
    }
}

/// Compares `version` of `entity_id` with the last version `handler` applied, inside the
/// handler's dedup transaction, and records it when newer.
///
/// Concurrent deliveries for one entity are serialized on its row (`FOR UPDATE`), so two
/// versions processed at the same time cannot both be judged fresh against the same old
/// version. Uses the `entity_versions` table on the connection's `search_path` (the worker's
/// schema comes first on handler connections).
///
/// ```no_run
/// use sqlx::PgConnection;
/// use worker_core::versioning::{apply_if_newer, Freshness};
/// use worker_core::{handler, Context, HandlerError};
///
/// #[derive(serde::Deserialize)]
/// struct PriceChanged { product_id: String, version: i64, price: i64 }
///
/// #[handler(event = "PriceChanged", dedup)]
/// async fn update_price(event: PriceChanged, tx: &mut PgConnection, ctx: &Context) -> Result<(), HandlerError> {
///     if let Freshness::Stale { current } = apply_if_newer(tx, ctx.handler(), &event.product_id, event.version).await? {
///         tracing::info!(current, stale = event.version, "skipping a stale price");
///         return Ok(());
///     }
///     sqlx::query("UPDATE products SET price = $2 WHERE id = $1")
///         .bind(&event.product_id).bind(event.price).execute(&mut *tx).await?;
///     Ok(())
/// }
/// ```
pub async fn apply_if_newer(
    tx: &mut PgConnection,
    handler: &str,
    entity_id: &str,
    version: i64,
) -> Result<Freshness, sqlx::Error> {
    let previous: Option<i64> = sqlx::query_scalar(
        "SELECT version FROM entity_versions WHERE handler = $1 AND entity_id = $2 FOR UPDATE",
    )
    .bind(handler)
    .bind(entity_id)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(current) = previous.filter(|current| *current >= version) {
        return Ok(Freshness::Stale { current });
    }
    // The guard covers a concurrent first insert of the same entity (no row to lock above): the
    // loser of that race waits for the winner and re-checks against its version.
    let applied: Option<i64> = sqlx::query_scalar(
        "INSERT INTO entity_versions (handler, entity_id, version) VALUES ($1, $2, $3)
         ON CONFLICT (handler, entity_id) DO UPDATE
             SET version = EXCLUDED.version, applied_at = now()
             WHERE entity_versions.version < EXCLUDED.version
         RETURNING version",
    )
    .bind(handler)
    .bind(entity_id)
    .bind(version)
    .fetch_optional(&mut *tx)
    .await?;
    if applied.is_some() {
        return Ok(Freshness::Fresh { previous });
    }
    let current: i64 = sqlx::query_scalar(
        "SELECT version FROM entity_versions WHERE handler = $1 AND entity_id = $2",
    )
    .bind(handler)
    .bind(entity_id)
    .fetch_one(&mut *tx)
    .await?;
    Ok(Freshness::Stale { current })
}

/// The last version `handler` applied to `entity_id`, if any.
pub async fn applied_version(
    conn: &mut PgConnection,
    handler: &str,
    entity_id: &str,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT version FROM entity_versions WHERE handler = $1 AND entity_id = $2")
        .bind(handler)
        .bind(entity_id)
        .fetch_optional(conn)
        .await
}
