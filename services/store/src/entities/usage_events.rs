//! `usage_events`: every usage event billing has taken in, once (its deterministic id
//! is the key: `INSERT … ON CONFLICT (event_id) DO NOTHING`), kept as JSON for audit.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "usage_events")]
pub struct Model {
    /// `UsageEvent::event_id` (`period:<instance>:<start_ms>`, `tokens:<request>`, …).
    #[sea_orm(primary_key, auto_increment = false, column_type = "Text")]
    pub event_id: String,
    #[sea_orm(column_type = "Text")]
    pub account_id: String,
    /// `instance_period`, `lifecycle` or `tokens`.
    #[sea_orm(column_type = "Text")]
    pub kind: String,
    pub emitted_at: DateTimeUtc,
    pub recorded_at: DateTimeUtc,
    /// The whole event as JSON.
    #[sea_orm(column_type = "JsonBinary")]
    pub body: Json,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
