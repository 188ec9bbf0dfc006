//! The books: a batch of checked events written in one Postgres transaction.
//!
//! 1. every event is inserted into `usage_events` with `ON CONFLICT (event_id) DO
//!    NOTHING RETURNING event_id`, so only events never seen before come back;
//! 2. those, and only those, are added to `instance_usage_daily`,
//!    `token_usage_daily` and `account_monthly_spend` (upserts that add);
//! 3. accounts whose month's spend has reached 80 % or 100 % of their limit get a
//!    `spend_alerts` row (once per account, month and threshold);
//! 4. commit. The caller acks the messages only after this returns `Ok`.
//!
//! Upserts run in key order, so two transactions touching the same rows lock them in
//! the same order and cannot deadlock each other.

use std::collections::{BTreeMap, HashSet};

use chrono::{NaiveDate, Utc};
use rust_decimal::Decimal;
use sea_orm::sea_query::{Expr, InsertStatement, OnConflict, Query, SimpleExpr};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter,
    TransactionTrait, Value,
};
use switchyard_store::billing::month_of;
use switchyard_store::entities::{
    account_monthly_spend as monthly, instance_usage_daily as instance, spend_alerts, spend_limits,
    token_usage_daily as tokens, usage_events,
};

use crate::event::{Checked, Fact};

/// The alert thresholds, in percent of the monthly limit.
pub const THRESHOLDS: [u8; 2] = [80, 100];

/// What one batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recorded {
    /// For each event of the batch, in order: `true` when it was new (recorded now),
    /// `false` when it had been recorded before (or came twice in the batch).
    pub new: Vec<bool>,
    /// Spend alerts raised by this batch (to publish).
    pub alerts_raised: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct InstanceKey {
    account: String,
    day: NaiveDate,
    cluster: String,
    model: String,
    instance_type: String,
    price: Decimal,
}

#[derive(Debug, Clone, Default)]
struct InstanceSum {
    ms: i64,
    cost: Decimal,
    periods: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct TokenKey {
    account: String,
    day: NaiveDate,
    provider: String,
    model: String,
}

#[derive(Debug, Clone, Default)]
struct TokenSum {
    requests: i64,
    input: i64,
    output: i64,
    cached: i64,
}

fn bad(e: impl std::fmt::Display) -> DbErr {
    DbErr::Custom(e.to_string())
}

fn add(a: i64, b: i64) -> Result<i64, DbErr> {
    a.checked_add(b).ok_or_else(|| bad("counter overflow"))
}

/// Writes `events` in one transaction (see the module docs).
pub async fn record(db: &DatabaseConnection, events: &[Checked]) -> Result<Recorded, DbErr> {
    let txn = db.begin().await?;
    let recorded = record_in(&txn, events).await?;
    txn.commit().await?;
    Ok(recorded)
}

async fn record_in(txn: &impl ConnectionTrait, events: &[Checked]) -> Result<Recorded, DbErr> {
    let mut recorded = Recorded {
        new: vec![false; events.len()],
        alerts_raised: 0,
    };
    // Within the batch, the first copy of an event stands for all.
    let mut seen = HashSet::new();
    let firsts: Vec<usize> = (0..events.len())
        .filter(|&i| seen.insert(events[i].event_id.as_str()))
        .collect();
    if firsts.is_empty() {
        return Ok(recorded);
    }
    let now = Utc::now();

    let mut insert = Query::insert();
    insert.into_table(usage_events::Entity).columns([
        usage_events::Column::EventId,
        usage_events::Column::AccountId,
        usage_events::Column::Kind,
        usage_events::Column::EmittedAt,
        usage_events::Column::RecordedAt,
        usage_events::Column::Body,
    ]);
    for &i in &firsts {
        let e = &events[i];
        insert
            .values([
                e.event_id.clone().into(),
                e.account.clone().into(),
                e.kind.into(),
                e.emitted_at.into(),
                now.into(),
                e.body.clone().into(),
            ])
            .map_err(bad)?;
    }
    insert
        .on_conflict(
            OnConflict::column(usage_events::Column::EventId)
                .do_nothing()
                .to_owned(),
        )
        .returning_col(usage_events::Column::EventId);
    let rows = txn
        .query_all(txn.get_database_backend().build(&insert))
        .await?;
    let mut inserted = HashSet::with_capacity(rows.len());
    for row in rows {
        inserted.insert(row.try_get::<String>("", "event_id")?);
    }

    let mut instance_sums: BTreeMap<InstanceKey, InstanceSum> = BTreeMap::new();
    let mut token_sums: BTreeMap<TokenKey, TokenSum> = BTreeMap::new();
    let mut month_sums: BTreeMap<(String, NaiveDate), Decimal> = BTreeMap::new();
    for &i in &firsts {
        let e = &events[i];
        if !inserted.contains(&e.event_id) {
            continue;
        }
        recorded.new[i] = true;
        match &e.fact {
            Fact::Period {
                cluster,
                model,
                instance_type,
                price_per_second,
                pieces,
            } => {
                for piece in pieces {
                    let sum = instance_sums
                        .entry(InstanceKey {
                            account: e.account.clone(),
                            day: piece.day,
                            cluster: cluster.clone(),
                            model: model.clone(),
                            instance_type: instance_type.clone(),
                            price: *price_per_second,
                        })
                        .or_default();
                    sum.ms = add(sum.ms, piece.ms)?;
                    sum.cost += piece.cost;
                    sum.periods += 1;
                    *month_sums
                        .entry((e.account.clone(), month_of(piece.day)))
                        .or_default() += piece.cost;
                }
            }
            Fact::Tokens {
                day,
                provider,
                model,
                input_tokens,
                output_tokens,
                cached_input_tokens,
            } => {
                let sum = token_sums
                    .entry(TokenKey {
                        account: e.account.clone(),
                        day: *day,
                        provider: provider.clone(),
                        model: model.clone(),
                    })
                    .or_default();
                sum.requests += 1;
                sum.input = add(sum.input, *input_tokens)?;
                sum.output = add(sum.output, *output_tokens)?;
                sum.cached = add(sum.cached, *cached_input_tokens)?;
            }
            Fact::Lifecycle => {}
        }
    }

    if !instance_sums.is_empty() {
        let mut up = Query::insert();
        up.into_table(instance::Entity).columns([
            instance::Column::AccountId,
            instance::Column::Day,
            instance::Column::Cluster,
            instance::Column::Model,
            instance::Column::InstanceType,
            instance::Column::PricePerSecond,
            instance::Column::InstanceMs,
            instance::Column::Cost,
            instance::Column::Periods,
            instance::Column::UpdatedAt,
        ]);
        for (k, v) in &instance_sums {
            up.values([
                k.account.clone().into(),
                k.day.into(),
                k.cluster.clone().into(),
                k.model.clone().into(),
                k.instance_type.clone().into(),
                k.price.into(),
                v.ms.into(),
                v.cost.into(),
                v.periods.into(),
                now.into(),
            ])
            .map_err(bad)?;
        }
        up.on_conflict(
            OnConflict::columns([
                instance::Column::AccountId,
                instance::Column::Day,
                instance::Column::Cluster,
                instance::Column::Model,
                instance::Column::InstanceType,
                instance::Column::PricePerSecond,
            ])
            .values([
                (
                    instance::Column::InstanceMs,
                    adds("instance_usage_daily", "instance_ms"),
                ),
                (instance::Column::Cost, adds("instance_usage_daily", "cost")),
                (
                    instance::Column::Periods,
                    adds("instance_usage_daily", "periods"),
                ),
                (
                    instance::Column::UpdatedAt,
                    Expr::cust("EXCLUDED.updated_at"),
                ),
            ])
            .to_owned(),
        );
        exec(txn, &up).await?;
    }

    if !token_sums.is_empty() {
        let mut up = Query::insert();
        up.into_table(tokens::Entity).columns([
            tokens::Column::AccountId,
            tokens::Column::Day,
            tokens::Column::Provider,
            tokens::Column::Model,
            tokens::Column::Requests,
            tokens::Column::InputTokens,
            tokens::Column::OutputTokens,
            tokens::Column::CachedInputTokens,
            tokens::Column::UpdatedAt,
        ]);
        for (k, v) in &token_sums {
            up.values([
                k.account.clone().into(),
                k.day.into(),
                k.provider.clone().into(),
                k.model.clone().into(),
                v.requests.into(),
                v.input.into(),
                v.output.into(),
                v.cached.into(),
                now.into(),
            ])
            .map_err(bad)?;
        }
        up.on_conflict(
            OnConflict::columns([
                tokens::Column::AccountId,
                tokens::Column::Day,
                tokens::Column::Provider,
                tokens::Column::Model,
            ])
            .values([
                (
                    tokens::Column::Requests,
                    adds("token_usage_daily", "requests"),
                ),
                (
                    tokens::Column::InputTokens,
                    adds("token_usage_daily", "input_tokens"),
                ),
                (
                    tokens::Column::OutputTokens,
                    adds("token_usage_daily", "output_tokens"),
                ),
                (
                    tokens::Column::CachedInputTokens,
                    adds("token_usage_daily", "cached_input_tokens"),
                ),
                (tokens::Column::UpdatedAt, Expr::cust("EXCLUDED.updated_at")),
            ])
            .to_owned(),
        );
        exec(txn, &up).await?;
    }

    if !month_sums.is_empty() {
        let mut up = Query::insert();
        up.into_table(monthly::Entity).columns([
            monthly::Column::AccountId,
            monthly::Column::Month,
            monthly::Column::Cost,
            monthly::Column::UpdatedAt,
        ]);
        for ((account, month), cost) in &month_sums {
            up.values([
                account.clone().into(),
                (*month).into(),
                (*cost).into(),
                now.into(),
            ])
            .map_err(bad)?;
        }
        up.on_conflict(
            OnConflict::columns([monthly::Column::AccountId, monthly::Column::Month])
                .values([
                    (monthly::Column::Cost, adds("account_monthly_spend", "cost")),
                    (
                        monthly::Column::UpdatedAt,
                        Expr::cust("EXCLUDED.updated_at"),
                    ),
                ])
                .to_owned(),
        )
        .returning(Query::returning().columns([
            monthly::Column::AccountId,
            monthly::Column::Month,
            monthly::Column::Cost,
        ]));
        let rows = txn.query_all(txn.get_database_backend().build(&up)).await?;
        let mut totals = Vec::with_capacity(rows.len());
        for row in rows {
            totals.push((
                row.try_get::<String>("", "account_id")?,
                row.try_get::<NaiveDate>("", "month")?,
                row.try_get::<Decimal>("", "cost")?,
            ));
        }
        recorded.alerts_raised = raise_alerts(txn, &totals).await?;
    }
    Ok(recorded)
}

/// `<table>.<col> + EXCLUDED.<col>`: an upsert that adds.
fn adds(table: &str, col: &str) -> SimpleExpr {
    Expr::cust(format!("{table}.{col} + EXCLUDED.{col}"))
}

async fn exec(txn: &impl ConnectionTrait, stmt: &InsertStatement) -> Result<(), DbErr> {
    txn.execute(txn.get_database_backend().build(stmt)).await?;
    Ok(())
}

/// Inserts a `spend_alerts` row for each threshold an account's month has reached
/// (once: the row's key is account × month × threshold). Returns how many are new.
async fn raise_alerts(
    txn: &impl ConnectionTrait,
    totals: &[(String, NaiveDate, Decimal)],
) -> Result<usize, DbErr> {
    let accounts: Vec<String> = totals.iter().map(|(a, _, _)| a.clone()).collect();
    let limits: BTreeMap<String, Decimal> = spend_limits::Entity::find()
        .filter(spend_limits::Column::AccountId.is_in(accounts))
        .all(txn)
        .await?
        .into_iter()
        .map(|l| (l.account_id, l.monthly_limit_usd))
        .collect();
    let mut insert = Query::insert();
    insert.into_table(spend_alerts::Entity).columns([
        spend_alerts::Column::AccountId,
        spend_alerts::Column::Month,
        spend_alerts::Column::ThresholdPercent,
        spend_alerts::Column::EventId,
        spend_alerts::Column::LimitUsd,
        spend_alerts::Column::SpentUsd,
        spend_alerts::Column::ReachedAt,
    ]);
    let mut any = false;
    let now = Utc::now();
    for (account, month, spent) in totals {
        let Some(limit) = limits.get(account) else {
            continue;
        };
        for threshold in THRESHOLDS {
            if *spent * Decimal::ONE_HUNDRED < *limit * Decimal::from(threshold) {
                continue;
            }
            let id =
                schemas::SpendAlert::id(account, &month.format("%Y-%m").to_string(), threshold);
            insert
                .values([
                    account.clone().into(),
                    (*month).into(),
                    Value::SmallInt(Some(i16::from(threshold))).into(),
                    id.into(),
                    (*limit).into(),
                    (*spent).into(),
                    now.into(),
                ])
                .map_err(bad)?;
            any = true;
        }
    }
    if !any {
        return Ok(0);
    }
    insert
        .on_conflict(
            OnConflict::columns([
                spend_alerts::Column::AccountId,
                spend_alerts::Column::Month,
                spend_alerts::Column::ThresholdPercent,
            ])
            .do_nothing()
            .to_owned(),
        )
        .returning_col(spend_alerts::Column::EventId);
    let rows = txn
        .query_all(txn.get_database_backend().build(&insert))
        .await?;
    Ok(rows.len())
}
