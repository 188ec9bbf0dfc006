//! The billing report: an account's instance-seconds, price per second and cost per
//! row and in total, plus its token usage (recorded, not charged), over a range of
//! UTC days, as a table, CSV or JSON — read from the aggregates the billing service
//! keeps (`instance_usage_daily`, `token_usage_daily`).
//!
//! Amounts are exact everywhere (sums of `NUMERIC`s, printed in full). The one
//! rounding is the amount due: the exact total, rounded once to the cent, half away
//! from zero — never row by row.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use chrono::NaiveDate;
use rust_decimal::{Decimal, RoundingStrategy};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder};
use switchyard_store::entities::{instance_usage_daily as instance, token_usage_daily as tokens};
use switchyard_store::keys;

/// What rows are grouped by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum By {
    Day,
    Cluster,
    Model,
    InstanceType,
}

impl By {
    pub fn as_str(self) -> &'static str {
        match self {
            By::Day => "day",
            By::Cluster => "cluster",
            By::Model => "model",
            By::InstanceType => "instance-type",
        }
    }
}

/// How the report is printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Json,
}

/// The report cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(
        "no account '{0}': it is neither in the accounts table nor in any usage (see `switchyard-admin account create`)"
    )]
    UnknownAccount(String),
    #[error("--to {to} is before --from {from}")]
    BadRange { from: NaiveDate, to: NaiveDate },
    #[error("database: {0}")]
    Db(#[from] switchyard_store::Error),
}

impl From<sea_orm::DbErr> for ReportError {
    fn from(e: sea_orm::DbErr) -> Self {
        Self::Db(e.into())
    }
}

/// One row of instance usage. Fields the grouping leaves out are `None`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub day: Option<NaiveDate>,
    pub cluster: Option<String>,
    pub model: Option<String>,
    pub instance_type: Option<String>,
    pub instance_ms: i64,
    /// USD per second; `None` when the row mixes prices (several instance types).
    pub price_per_second: Option<Decimal>,
    /// USD, exact.
    pub cost: Decimal,
}

/// One row of token usage (no charge).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRow {
    /// Set when the report is by day (or not grouped).
    pub day: Option<NaiveDate>,
    pub provider: String,
    pub model: String,
    pub requests: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cached_input_tokens: i64,
}

/// A whole report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub account: String,
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub by: Option<By>,
    pub rows: Vec<Row>,
    pub total_ms: i64,
    /// USD, exact.
    pub total_cost: Decimal,
    pub tokens: Vec<TokenRow>,
}

/// How the amount due is rounded (said in every format).
pub const ROUNDING: &str = "costs are exact (ms x price per second / 1000, summed); only the amount due is rounded, once, to the cent, half away from zero";

impl Report {
    /// The exact total rounded once to the cent, half away from zero.
    pub fn amount_due(&self) -> Decimal {
        let mut due = self
            .total_cost
            .round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero);
        due.rescale(2);
        due
    }
}

type Key = (
    Option<NaiveDate>,
    Option<String>,
    Option<String>,
    Option<String>,
);

/// Reads `account`'s usage on the days `from..=to` (UTC), grouped `by`.
pub async fn build(
    db: &impl ConnectionTrait,
    account: &str,
    from: NaiveDate,
    to: NaiveDate,
    by: Option<By>,
) -> Result<Report, ReportError> {
    if to < from {
        return Err(ReportError::BadRange { from, to });
    }
    if keys::find_account(db, account).await?.is_none()
        && instance::Entity::find()
            .filter(instance::Column::AccountId.eq(account))
            .one(db)
            .await?
            .is_none()
        && tokens::Entity::find()
            .filter(tokens::Column::AccountId.eq(account))
            .one(db)
            .await?
            .is_none()
    {
        return Err(ReportError::UnknownAccount(account.to_string()));
    }
    let daily = instance::Entity::find()
        .filter(instance::Column::AccountId.eq(account))
        .filter(instance::Column::Day.between(from, to))
        .order_by_asc(instance::Column::Day)
        .all(db)
        .await?;
    let mut groups: BTreeMap<Key, Row> = BTreeMap::new();
    let (mut total_ms, mut total_cost) = (0i64, Decimal::ZERO);
    for d in daily {
        let key: Key = match by {
            None => (
                Some(d.day),
                Some(d.cluster.clone()),
                Some(d.model.clone()),
                Some(d.instance_type.clone()),
            ),
            Some(By::Day) => (Some(d.day), None, None, None),
            Some(By::Cluster) => (None, Some(d.cluster.clone()), None, None),
            Some(By::Model) => (None, None, Some(d.model.clone()), None),
            Some(By::InstanceType) => (None, None, None, Some(d.instance_type.clone())),
        };
        let row = groups.entry(key.clone()).or_insert_with(|| Row {
            day: key.0,
            cluster: key.1.clone(),
            model: key.2.clone(),
            instance_type: key.3.clone(),
            instance_ms: 0,
            price_per_second: Some(d.price_per_second),
            cost: Decimal::ZERO,
        });
        if row.price_per_second != Some(d.price_per_second) {
            row.price_per_second = None;
        }
        row.instance_ms += d.instance_ms;
        row.cost += d.cost;
        total_ms += d.instance_ms;
        total_cost += d.cost;
    }
    let by_day = matches!(by, None | Some(By::Day));
    let mut token_groups: BTreeMap<(Option<NaiveDate>, String, String), TokenRow> = BTreeMap::new();
    let token_rows = tokens::Entity::find()
        .filter(tokens::Column::AccountId.eq(account))
        .filter(tokens::Column::Day.between(from, to))
        .all(db)
        .await?;
    for t in token_rows {
        let day = by_day.then_some(t.day);
        let row = token_groups
            .entry((day, t.provider.clone(), t.model.clone()))
            .or_insert_with(|| TokenRow {
                day,
                provider: t.provider.clone(),
                model: t.model.clone(),
                requests: 0,
                input_tokens: 0,
                output_tokens: 0,
                cached_input_tokens: 0,
            });
        row.requests += t.requests;
        row.input_tokens += t.input_tokens;
        row.output_tokens += t.output_tokens;
        row.cached_input_tokens += t.cached_input_tokens;
    }
    Ok(Report {
        account: account.to_string(),
        from,
        to,
        by,
        rows: groups.into_values().collect(),
        total_ms,
        total_cost,
        tokens: token_groups.into_values().collect(),
    })
}

/// Instance-seconds from ms, exact to the millisecond (`1234.500`).
pub fn seconds(ms: i64) -> Decimal {
    Decimal::new(ms, 3)
}

/// An exact amount as text, without trailing zeros (`0.05234623`, `0`).
pub fn money(d: Decimal) -> String {
    d.normalize().to_string()
}

fn opt_day(d: Option<NaiveDate>) -> String {
    d.map(|d| d.to_string()).unwrap_or_default()
}

/// A column naming a row: its heading and how to read it.
type KeyColumn = (&'static str, fn(&Row) -> String);

/// The columns that name a row, for this grouping.
fn key_columns(by: Option<By>) -> Vec<KeyColumn> {
    let day: KeyColumn = ("day", |r| opt_day(r.day));
    let cluster: KeyColumn = ("cluster", |r| r.cluster.clone().unwrap_or_default());
    let model: KeyColumn = ("model", |r| r.model.clone().unwrap_or_default());
    let itype: KeyColumn = ("instance type", |r| {
        r.instance_type.clone().unwrap_or_default()
    });
    match by {
        None => vec![day, cluster, model, itype],
        Some(By::Day) => vec![day],
        Some(By::Cluster) => vec![cluster],
        Some(By::Model) => vec![model],
        Some(By::InstanceType) => vec![itype],
    }
}

/// Prints `report` in `format`.
pub fn render(report: &Report, format: Format) -> String {
    match format {
        Format::Table => table(report),
        Format::Csv => csv(report),
        Format::Json => json(report).to_string(),
    }
}

fn price_text(p: Option<Decimal>) -> String {
    p.map_or_else(|| "mixed".to_string(), money)
}

fn table(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Account {} · {} to {} (UTC days, inclusive) · by {} · USD",
        r.account,
        r.from,
        r.to,
        r.by.map_or("day, cluster, model and instance type", By::as_str)
    );
    let _ = writeln!(out);
    let keys = key_columns(r.by);
    let mut grid: Vec<Vec<String>> = Vec::new();
    let mut head: Vec<String> = keys.iter().map(|(n, _)| n.to_string()).collect();
    head.extend(["instance-seconds", "price/s", "cost"].map(String::from));
    grid.push(head);
    for row in &r.rows {
        let mut line: Vec<String> = keys.iter().map(|(_, f)| f(row)).collect();
        line.push(seconds(row.instance_ms).to_string());
        line.push(price_text(row.price_per_second));
        line.push(money(row.cost));
        grid.push(line);
    }
    let mut total = vec![String::new(); keys.len()];
    total[0] = "total".into();
    total.extend([
        seconds(r.total_ms).to_string(),
        String::new(),
        money(r.total_cost),
    ]);
    grid.push(total);
    // Numbers right-aligned: the last three columns.
    let numeric_from = keys.len();
    write_grid(&mut out, &grid, numeric_from, &[numeric_from + 1]);
    if r.rows.is_empty() {
        let _ = writeln!(out, "(no instance usage in this range)");
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "Amount due: {} USD. Rounding: {ROUNDING}.",
        r.amount_due()
    );
    let _ = writeln!(out);
    let _ = writeln!(out, "Token usage (recorded, not charged)");
    let by_day = r.tokens.iter().any(|t| t.day.is_some());
    let mut grid: Vec<Vec<String>> = Vec::new();
    let mut head: Vec<String> = Vec::new();
    if by_day {
        head.push("day".into());
    }
    head.extend(
        [
            "provider",
            "model",
            "requests",
            "input",
            "output",
            "cached input",
            "charge",
        ]
        .map(String::from),
    );
    grid.push(head);
    for t in &r.tokens {
        let mut line = Vec::new();
        if by_day {
            line.push(opt_day(t.day));
        }
        line.extend([
            t.provider.clone(),
            t.model.clone(),
            t.requests.to_string(),
            t.input_tokens.to_string(),
            t.output_tokens.to_string(),
            t.cached_input_tokens.to_string(),
            "0".into(),
        ]);
        grid.push(line);
    }
    if r.tokens.is_empty() {
        let _ = writeln!(out, "(none in this range)");
    } else {
        let first_number = usize::from(by_day) + 2;
        write_grid(&mut out, &grid, first_number, &[]);
    }
    out
}

/// Columns padded to their widest cell; from `numeric_from` on right-aligned, except
/// `left` ones.
fn write_grid(out: &mut String, grid: &[Vec<String>], numeric_from: usize, left: &[usize]) {
    let cols = grid.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..cols)
        .map(|c| grid.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    for row in grid {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c > 0 {
                line.push_str("  ");
            }
            let pad = widths[c].saturating_sub(cell.chars().count());
            if c >= numeric_from && !left.contains(&c) {
                line.push_str(&" ".repeat(pad));
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.push_str(&" ".repeat(pad));
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
}

/// CSV columns (one header for every section).
pub const CSV_HEADER: &str = "section,day,cluster,model,instance_type,instance_seconds,price_per_second_usd,cost_usd,provider,requests,input_tokens,output_tokens,cached_input_tokens,charge_usd";

fn field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn csv(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{CSV_HEADER}");
    let line = |cells: [String; 14]| cells.iter().map(|c| field(c)).collect::<Vec<_>>().join(",");
    let e = String::new;
    for row in &r.rows {
        let _ = writeln!(
            out,
            "{}",
            line([
                "instances".into(),
                opt_day(row.day),
                row.cluster.clone().unwrap_or_default(),
                row.model.clone().unwrap_or_default(),
                row.instance_type.clone().unwrap_or_default(),
                seconds(row.instance_ms).to_string(),
                row.price_per_second.map(money).unwrap_or_default(),
                money(row.cost),
                e(),
                e(),
                e(),
                e(),
                e(),
                e(),
            ])
        );
    }
    let _ = writeln!(
        out,
        "{}",
        line([
            "total".into(),
            e(),
            e(),
            e(),
            e(),
            seconds(r.total_ms).to_string(),
            e(),
            money(r.total_cost),
            e(),
            e(),
            e(),
            e(),
            e(),
            e(),
        ])
    );
    for t in &r.tokens {
        let _ = writeln!(
            out,
            "{}",
            line([
                "tokens".into(),
                opt_day(t.day),
                e(),
                t.model.clone(),
                e(),
                e(),
                e(),
                e(),
                t.provider.clone(),
                t.requests.to_string(),
                t.input_tokens.to_string(),
                t.output_tokens.to_string(),
                t.cached_input_tokens.to_string(),
                "0".into(),
            ])
        );
    }
    out
}

/// The report as JSON; amounts are strings (exact decimals).
pub fn json(r: &Report) -> serde_json::Value {
    let rows: Vec<serde_json::Value> = r
        .rows
        .iter()
        .map(|row| {
            serde_json::json!({
                "day": row.day.map(|d| d.to_string()),
                "cluster": row.cluster,
                "model": row.model,
                "instance_type": row.instance_type,
                "instance_seconds": seconds(row.instance_ms).to_string(),
                "price_per_second": row.price_per_second.map(money),
                "cost": money(row.cost),
            })
        })
        .collect();
    let tokens: Vec<serde_json::Value> = r
        .tokens
        .iter()
        .map(|t| {
            serde_json::json!({
                "day": t.day.map(|d| d.to_string()),
                "provider": t.provider,
                "model": t.model,
                "requests": t.requests,
                "input_tokens": t.input_tokens,
                "output_tokens": t.output_tokens,
                "cached_input_tokens": t.cached_input_tokens,
                "charge": "0",
            })
        })
        .collect();
    serde_json::json!({
        "account": r.account,
        "from": r.from.to_string(),
        "to": r.to.to_string(),
        "by": r.by.map(By::as_str),
        "currency": "USD",
        "rounding": ROUNDING,
        "rows": rows,
        "total": {
            "instance_seconds": seconds(r.total_ms).to_string(),
            "cost": money(r.total_cost),
            "amount_due": r.amount_due().to_string(),
        },
        "tokens": tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn report() -> Report {
        Report {
            account: "acme".into(),
            from: NaiveDate::from_ymd_opt(2026, 3, 1).unwrap(),
            to: NaiveDate::from_ymd_opt(2026, 3, 31).unwrap(),
            by: Some(By::Model),
            rows: vec![Row {
                day: None,
                cluster: None,
                model: Some("a,\"b\"".into()),
                instance_type: None,
                instance_ms: 1_234_567,
                price_per_second: Some(Decimal::from_str("0.00001").unwrap()),
                cost: Decimal::from_str("0.0123456700").unwrap(),
            }],
            total_ms: 1_234_567,
            total_cost: Decimal::from_str("0.0123456700").unwrap(),
            tokens: vec![],
        }
    }

    #[test]
    fn amounts_are_exact_and_only_the_total_is_rounded() {
        let r = report();
        assert_eq!(money(r.total_cost), "0.01234567");
        assert_eq!(seconds(1_234_567).to_string(), "1234.567");
        assert_eq!(r.amount_due().to_string(), "0.01");
        let mut half = report();
        half.total_cost = Decimal::from_str("0.005").unwrap();
        assert_eq!(half.amount_due().to_string(), "0.01");
    }

    #[test]
    fn csv_quotes_what_needs_it() {
        let text = render(&report(), Format::Csv);
        assert!(text.contains("\"a,\"\"b\"\"\""), "{text}");
        assert_eq!(text.lines().next(), Some(CSV_HEADER));
    }
}
