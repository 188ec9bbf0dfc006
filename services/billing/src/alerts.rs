//! Spend alerts out to `usage.alert.<account-token>`: every `spend_alerts` row not yet
//! published is published (JetStream, awaited PubAck, `Nats-Msg-Id` = its id) and
//! then marked. A crash between the two publishes it again with the same id, which
//! JetStream drops within the stream's duplicate window and readers can dedupe after.

use async_nats::jetstream;
use chrono::Utc;
use schemas::SpendAlert;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QueryOrder};
use switchyard_store::entities::spend_alerts;

/// Why pending alerts were not all published.
#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    #[error("database: {0}")]
    Db(#[from] DbErr),
    #[error("cannot publish spend alert {id}: {message}")]
    Publish { id: String, message: String },
}

/// The message of one `spend_alerts` row.
pub fn alert_of(row: &spend_alerts::Model) -> SpendAlert {
    SpendAlert {
        schema_version: schemas::SCHEMA_VERSION,
        event_id: row.event_id.clone(),
        account: row.account_id.clone(),
        month: row.month.format("%Y-%m").to_string(),
        threshold_percent: u8::try_from(row.threshold_percent).unwrap_or(u8::MAX),
        limit_usd: row.limit_usd.normalize().to_string(),
        spent_usd: row.spent_usd.normalize().to_string(),
        emitted_at: Utc::now(),
    }
}

/// Publishes every alert not yet published, oldest first; returns how many.
pub async fn publish_pending(
    db: &DatabaseConnection,
    js: &jetstream::Context,
) -> Result<usize, AlertError> {
    let pending = spend_alerts::Entity::find()
        .filter(spend_alerts::Column::PublishedAt.is_null())
        .order_by_asc(spend_alerts::Column::ReachedAt)
        .order_by_asc(spend_alerts::Column::EventId)
        .all(db)
        .await?;
    for row in &pending {
        let alert = alert_of(row);
        let fail = |message: String| AlertError::Publish {
            id: alert.event_id.clone(),
            message,
        };
        let subject = alert.subject().map_err(|e| fail(e.to_string()))?;
        let payload = schemas::encode(&alert).map_err(|e| fail(e.to_string()))?;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(schemas::headers::MSG_ID, alert.event_id.as_str());
        js.publish_with_headers(subject, headers, payload.into())
            .await
            .map_err(|e| fail(e.to_string()))?
            .await
            .map_err(|e| fail(e.to_string()))?;
        spend_alerts::Entity::update_many()
            .col_expr(spend_alerts::Column::PublishedAt, Expr::value(Utc::now()))
            .filter(spend_alerts::Column::EventId.eq(row.event_id.as_str()))
            .exec(db)
            .await?;
        tracing::info!(
            account = %alert.account,
            month = %alert.month,
            threshold_percent = alert.threshold_percent,
            "spend alert published"
        );
    }
    Ok(pending.len())
}
