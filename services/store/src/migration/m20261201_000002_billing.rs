//! Billing: usage events (each once), daily aggregates of instance time and tokens,
//! monthly spend, spend limits and the alerts sent about them.
//!
//! Money is `NUMERIC` without a declared precision (exact; no rounding on insert) and
//! `rust_decimal::Decimal` in Rust — never a float. The usage tables carry no foreign
//! key to `accounts`: billing records whatever usage it is told about (the dev key's
//! account `dev` has no row), and the report looks accounts up itself.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

fn now_col(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col)
        .timestamp_with_time_zone()
        .not_null()
        .default(Expr::current_timestamp())
        .to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(UsageEvents::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(UsageEvents::EventId)
                            .text()
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(UsageEvents::AccountId).text().not_null())
                    .col(ColumnDef::new(UsageEvents::Kind).text().not_null())
                    .col(
                        ColumnDef::new(UsageEvents::EmittedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(now_col(UsageEvents::RecordedAt))
                    .col(ColumnDef::new(UsageEvents::Body).json_binary().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_usage_events_account")
                    .table(UsageEvents::Table)
                    .col(UsageEvents::AccountId)
                    .col(UsageEvents::EmittedAt)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(InstanceUsageDaily::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(InstanceUsageDaily::AccountId)
                            .text()
                            .not_null(),
                    )
                    .col(ColumnDef::new(InstanceUsageDaily::Day).date().not_null())
                    .col(
                        ColumnDef::new(InstanceUsageDaily::Cluster)
                            .text()
                            .not_null(),
                    )
                    .col(ColumnDef::new(InstanceUsageDaily::Model).text().not_null())
                    .col(
                        ColumnDef::new(InstanceUsageDaily::InstanceType)
                            .text()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(InstanceUsageDaily::PricePerSecond)
                            .decimal()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(InstanceUsageDaily::InstanceMs)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(InstanceUsageDaily::Cost)
                            .decimal()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(InstanceUsageDaily::Periods)
                            .big_integer()
                            .not_null(),
                    )
                    .col(now_col(InstanceUsageDaily::UpdatedAt))
                    .primary_key(
                        Index::create()
                            .col(InstanceUsageDaily::AccountId)
                            .col(InstanceUsageDaily::Day)
                            .col(InstanceUsageDaily::Cluster)
                            .col(InstanceUsageDaily::Model)
                            .col(InstanceUsageDaily::InstanceType)
                            .col(InstanceUsageDaily::PricePerSecond),
                    )
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(TokenUsageDaily::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(TokenUsageDaily::AccountId).text().not_null())
                    .col(ColumnDef::new(TokenUsageDaily::Day).date().not_null())
                    .col(ColumnDef::new(TokenUsageDaily::Provider).text().not_null())
                    .col(ColumnDef::new(TokenUsageDaily::Model).text().not_null())
                    .col(
                        ColumnDef::new(TokenUsageDaily::Requests)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(TokenUsageDaily::InputTokens)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(TokenUsageDaily::OutputTokens)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(TokenUsageDaily::CachedInputTokens)
                            .big_integer()
                            .not_null(),
                    )
                    .col(now_col(TokenUsageDaily::UpdatedAt))
                    .primary_key(
                        Index::create()
                            .col(TokenUsageDaily::AccountId)
                            .col(TokenUsageDaily::Day)
                            .col(TokenUsageDaily::Provider)
                            .col(TokenUsageDaily::Model),
                    )
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(AccountMonthlySpend::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(AccountMonthlySpend::AccountId)
                            .text()
                            .not_null(),
                    )
                    .col(ColumnDef::new(AccountMonthlySpend::Month).date().not_null())
                    .col(
                        ColumnDef::new(AccountMonthlySpend::Cost)
                            .decimal()
                            .not_null(),
                    )
                    .col(now_col(AccountMonthlySpend::UpdatedAt))
                    .primary_key(
                        Index::create()
                            .col(AccountMonthlySpend::AccountId)
                            .col(AccountMonthlySpend::Month),
                    )
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(SpendLimits::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(SpendLimits::AccountId)
                            .text()
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(SpendLimits::MonthlyLimitUsd)
                            .decimal()
                            .not_null()
                            .check(Expr::col(SpendLimits::MonthlyLimitUsd).gte(0)),
                    )
                    .col(now_col(SpendLimits::UpdatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_spend_limits_account")
                            .from(SpendLimits::Table, SpendLimits::AccountId)
                            .to(Accounts::Table, Accounts::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(SpendAlerts::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(SpendAlerts::AccountId).text().not_null())
                    .col(ColumnDef::new(SpendAlerts::Month).date().not_null())
                    .col(
                        ColumnDef::new(SpendAlerts::ThresholdPercent)
                            .small_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(SpendAlerts::EventId)
                            .text()
                            .not_null()
                            .unique_key(),
                    )
                    .col(ColumnDef::new(SpendAlerts::LimitUsd).decimal().not_null())
                    .col(ColumnDef::new(SpendAlerts::SpentUsd).decimal().not_null())
                    .col(now_col(SpendAlerts::ReachedAt))
                    .col(
                        ColumnDef::new(SpendAlerts::PublishedAt)
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .primary_key(
                        Index::create()
                            .col(SpendAlerts::AccountId)
                            .col(SpendAlerts::Month)
                            .col(SpendAlerts::ThresholdPercent),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            SpendAlerts::Table.into_iden(),
            SpendLimits::Table.into_iden(),
            AccountMonthlySpend::Table.into_iden(),
            TokenUsageDaily::Table.into_iden(),
            InstanceUsageDaily::Table.into_iden(),
            UsageEvents::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum Accounts {
    Table,
    Id,
}

#[derive(DeriveIden)]
enum UsageEvents {
    Table,
    EventId,
    AccountId,
    Kind,
    EmittedAt,
    RecordedAt,
    Body,
}

#[derive(DeriveIden)]
enum InstanceUsageDaily {
    Table,
    AccountId,
    Day,
    Cluster,
    Model,
    InstanceType,
    PricePerSecond,
    InstanceMs,
    Cost,
    Periods,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum TokenUsageDaily {
    Table,
    AccountId,
    Day,
    Provider,
    Model,
    Requests,
    InputTokens,
    OutputTokens,
    CachedInputTokens,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum AccountMonthlySpend {
    Table,
    AccountId,
    Month,
    Cost,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum SpendLimits {
    Table,
    AccountId,
    MonthlyLimitUsd,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum SpendAlerts {
    Table,
    AccountId,
    Month,
    ThresholdPercent,
    EventId,
    LimitUsd,
    SpentUsd,
    ReachedAt,
    PublishedAt,
}
