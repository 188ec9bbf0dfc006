//! `account_monthly_spend`: an account's open-model spend per calendar month (UTC),
//! kept in the same transaction as `instance_usage_daily`, so it always equals the sum
//! of that month's daily rows. Spend limits are checked against it.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "account_monthly_spend")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false, column_type = "Text")]
    pub account_id: String,
    /// The month's first day.
    #[sea_orm(primary_key, auto_increment = false)]
    pub month: Date,
    /// USD, exact.
    #[sea_orm(column_type = "Decimal(None)")]
    pub cost: Decimal,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
