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
/// Concurrent deliveries for one entity are serialized on its row (`FOR UPDATE`; for the
/// entity's first version, on the primary key of the insert), so two versions processed at the
/// same time are judged one after the other, and `previous` is always the version the other one
/// committed. Uses the `entity_versions` table on the connection's `search_path` (the worker's
/// schema comes first on handler connections).
///
/// ```no_run
/// use sqlx::PgConnection;
/// use worker_core::{apply_if_newer, Freshness};
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
    let current = match locked_version(tx, handler, entity_id).await? {
        Some(current) => current,
        None => {
            let inserted: Option<i64> = sqlx::query_scalar(
                "INSERT INTO entity_versions (handler, entity_id, version) VALUES ($1, $2, $3)
                 ON CONFLICT (handler, entity_id) DO NOTHING RETURNING version",
            )
            .bind(handler)
            .bind(entity_id)
            .bind(version)
            .fetch_optional(&mut *tx)
            .await?;
            if inserted.is_some() {
                return Ok(Freshness::Fresh { previous: None });
            }
            // A concurrent transaction inserted the entity's first version (the insert waited
            // for it to commit): lock that row and compare with it.
            match locked_version(tx, handler, entity_id).await? {
                Some(current) => current,
                None => {
                    return Err(sqlx::Error::Protocol(format!(
                        "entity_versions row ({handler}, {entity_id}) conflicted on insert but cannot be read"
                    )))
                }
            }
        }
    };
    if current >= version {
        return Ok(Freshness::Stale { current });
    }
    sqlx::query(
        "UPDATE entity_versions SET version = $3, applied_at = now()
         WHERE handler = $1 AND entity_id = $2",
    )
    .bind(handler)
    .bind(entity_id)
    .bind(version)
    .execute(&mut *tx)
    .await?;
    Ok(Freshness::Fresh {
        previous: Some(current),
    })
}

/// The applied version, locked until the transaction ends so concurrent deliveries for one
/// entity are judged one after the other.
async fn locked_version(
    tx: &mut PgConnection,
    handler: &str,
    entity_id: &str,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT version FROM entity_versions WHERE handler = $1 AND entity_id = $2 FOR UPDATE",
    )
    .bind(handler)
    .bind(entity_id)
    .fetch_optional(tx)
    .await
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
