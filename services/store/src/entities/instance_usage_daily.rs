//! `instance_usage_daily`: instance time and its cost per account × day (UTC) ×
//! cluster × model × instance type × price. The price is part of the key, so a row's
//! `cost` is exactly `instance_ms × price_per_second / 1000` even across a price change.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "instance_usage_daily")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false, column_type = "Text")]
    pub account_id: String,
    /// The UTC day the time was spent on (a period crossing midnight is split there).
    #[sea_orm(primary_key, auto_increment = false)]
    pub day: Date,
    #[sea_orm(primary_key, auto_increment = false, column_type = "Text")]
    pub cluster: String,
    #[sea_orm(primary_key, auto_increment = false, column_type = "Text")]
    pub model: String,
    #[sea_orm(primary_key, auto_increment = false, column_type = "Text")]
    pub instance_type: String,
    /// USD per instance-second.
    #[sea_orm(primary_key, auto_increment = false, column_type = "Decimal(None)")]
    pub price_per_second: Decimal,
    /// Instance time, in milliseconds.
    pub instance_ms: i64,
    /// USD, exact: the sum of each period's `ms × price_per_second / 1000`.
    #[sea_orm(column_type = "Decimal(None)")]
    pub cost: Decimal,
    /// Period pieces counted into this row.
    pub periods: i64,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
