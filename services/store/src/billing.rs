//! What billing, the ingress and the report share about money: spend limits and the
//! month's spend. The ledger itself (usage events in, aggregates updated) is written
//! by the billing service alone; see `services/billing`.
//!
//! Months and days are UTC. Money is exact ([`Decimal`], Postgres `NUMERIC`).

use chrono::{Datelike, NaiveDate, Utc};
use sea_orm::sea_query::OnConflict;
use sea_orm::{ActiveValue::Set, ConnectionTrait, DbBackend, EntityTrait, Statement};

pub use rust_decimal::Decimal;

use crate::Error;
use crate::entities::{account_monthly_spend, spend_limits};
use crate::keys::find_account;

/// The first day of `day`'s month.
pub fn month_of(day: NaiveDate) -> NaiveDate {
    day.with_day(1).unwrap_or(day)
}

/// The first day of the current month (UTC).
pub fn current_month() -> NaiveDate {
    month_of(Utc::now().date_naive())
}

/// Sets (`Some`) or removes (`None`) `account`'s monthly spend limit in USD.
pub async fn set_spend_limit(
    db: &impl ConnectionTrait,
    account: &str,
    limit: Option<Decimal>,
) -> Result<(), Error> {
    if find_account(db, account).await?.is_none() {
        return Err(Error::UnknownAccount(account.to_string()));
    }
    match limit {
        Some(limit) if limit.is_sign_negative() && !limit.is_zero() => {
            Err(Error::InvalidLimit(limit.to_string()))
        }
        Some(limit) => {
            let row = spend_limits::ActiveModel {
                account_id: Set(account.to_string()),
                monthly_limit_usd: Set(limit),
                updated_at: Set(Utc::now()),
            };
            spend_limits::Entity::insert(row)
                .on_conflict(
                    OnConflict::column(spend_limits::Column::AccountId)
                        .update_columns([
                            spend_limits::Column::MonthlyLimitUsd,
                            spend_limits::Column::UpdatedAt,
                        ])
                        .to_owned(),
                )
                .exec(db)
                .await?;
            Ok(())
        }
        None => {
            spend_limits::Entity::delete_by_id(account.to_string())
                .exec(db)
                .await?;
            Ok(())
        }
    }
}

/// `account`'s monthly spend limit, if it has one.
pub async fn spend_limit(
    db: &impl ConnectionTrait,
    account: &str,
) -> Result<Option<Decimal>, Error> {
    Ok(spend_limits::Entity::find_by_id(account.to_string())
        .one(db)
        .await?
        .map(|r| r.monthly_limit_usd))
}

/// `account`'s open-model spend in `month` (its first day), USD, exact.
pub async fn month_spend(
    db: &impl ConnectionTrait,
    account: &str,
    month: NaiveDate,
) -> Result<Decimal, Error> {
    Ok(
        account_monthly_spend::Entity::find_by_id((account.to_string(), month))
            .one(db)
            .await?
            .map_or(Decimal::ZERO, |r| r.cost),
    )
}

/// An account whose month's spend has reached its limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OverLimit {
    pub account: String,
    pub limit_usd: Decimal,
    pub spent_usd: Decimal,
}

/// Every account whose spend in `month` has reached its limit (a limit of 0 is
/// reached at once: no open-model use at all).
pub async fn over_limit(
    db: &impl ConnectionTrait,
    month: NaiveDate,
) -> Result<Vec<OverLimit>, Error> {
    let sql = "SELECT l.account_id, l.monthly_limit_usd, COALESCE(m.cost, 0) AS spent \
               FROM spend_limits l \
               LEFT JOIN account_monthly_spend m \
                 ON m.account_id = l.account_id AND m.month = $1 \
               WHERE COALESCE(m.cost, 0) >= l.monthly_limit_usd \
               ORDER BY l.account_id";
    let rows = db
        .query_all(Statement::from_sql_and_values(
            DbBackend::Postgres,
            sql,
            [month.into()],
        ))
        .await?;
    rows.iter()
        .map(|row| {
            Ok(OverLimit {
                account: row.try_get("", "account_id")?,
                limit_usd: row.try_get("", "monthly_limit_usd")?,
                spent_usd: row.try_get("", "spent")?,
            })
        })
        .collect::<Result<_, sea_orm::DbErr>>()
        .map_err(Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months() {
        let d = NaiveDate::from_ymd_opt(2026, 2, 28).unwrap();
        assert_eq!(month_of(d), NaiveDate::from_ymd_opt(2026, 2, 1).unwrap());
    }
}
