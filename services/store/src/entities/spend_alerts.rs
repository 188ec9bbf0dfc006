//! `spend_alerts`: the 80 % and 100 % spend alerts, one row per account × month ×
//! threshold (so each is raised once), with when it reached the `usage.alert.…`
//! subject (`published_at`; null until then, so a lost publish is retried).

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "spend_alerts")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false, column_type = "Text")]
    pub account_id: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub month: Date,
    /// 80 or 100.
    #[sea_orm(primary_key, auto_increment = false)]
    pub threshold_percent: i16,
    /// The alert's deterministic id (`SpendAlert::id`), also its `Nats-Msg-Id`.
    #[sea_orm(unique, column_type = "Text")]
    pub event_id: String,
    #[sea_orm(column_type = "Decimal(None)")]
    pub limit_usd: Decimal,
    /// The month's spend when the threshold was found reached.
    #[sea_orm(column_type = "Decimal(None)")]
    pub spent_usd: Decimal,
    pub reached_at: DateTimeUtc,
    pub published_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
