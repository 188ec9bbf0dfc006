//! Property: whatever order events arrive in, late, duplicated, in batches of any
//! size, the books hold the same totals — those computed independently from the
//! distinct events. Against a real Postgres database (emptied between cases).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

use std::collections::BTreeMap;
use std::str::FromStr;

use chrono::{NaiveDate, TimeZone, Utc};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use rust_decimal::Decimal;
use schemas::{UsageBody, UsageEvent};
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use switchyard_billing::{event, ledger, prices::Prices};
use switchyard_store::testing::TestDb;

const DAY_MS: i64 = 86_400_000;
const TYPES: [&str; 3] = ["cpu", "gpu-t4-16gb", "gpu-a100-40gb"];

/// A distinct fact: instance `instance` of `account` ran `[start, start + len)`; or,
/// with `tokens`, a request used that many tokens at `start`.
#[derive(Debug, Clone)]
struct Fact {
    account: u8,
    instance: u8,
    type_index: usize,
    start: i64,
    len: i64,
    tokens: Option<(u64, u64)>,
}

fn base() -> i64 {
    // 2026-01-30T00:00Z: cases cross days and the month's end.
    Utc.with_ymd_and_hms(2026, 1, 30, 0, 0, 0)
        .unwrap()
        .timestamp_millis()
}

fn fact() -> impl Strategy<Value = Fact> {
    (
        0u8..2,
        0u8..3,
        0usize..TYPES.len(),
        0i64..4 * DAY_MS,
        0i64..=3 * 3_600_000,
        proptest::option::weighted(0.2, (0u64..5_000, 0u64..5_000)),
    )
        .prop_map(
            |(account, instance, type_index, offset, len, tokens)| Fact {
                account,
                instance,
                type_index,
                start: base() + offset,
                len,
                tokens,
            },
        )
}

fn to_event(f: &Fact, seq: usize) -> UsageEvent {
    let account = format!("acct-{}", f.account);
    match f.tokens {
        Some((input, output)) => {
            let request_id = uuid::Uuid::from_u128(seq as u128 + 1);
            UsageEvent {
                schema_version: schemas::SCHEMA_VERSION,
                event_id: UsageEvent::tokens_id(request_id),
                account,
                emitted_at: Utc::now(),
                body: UsageBody::Tokens {
                    request_id,
                    provider: "anthropic".into(),
                    model: "claude".into(),
                    input_tokens: input,
                    output_tokens: output,
                    cached_input_tokens: 0,
                    at_ms: f.start,
                },
            }
        }
        None => {
            // Instance ids are unique per fact, so period ids (instance, start) are too.
            let instance = format!("i-{}-{}-{seq}", f.account, f.instance);
            UsageEvent {
                schema_version: schemas::SCHEMA_VERSION,
                event_id: UsageEvent::period_id(&instance, f.start),
                account,
                emitted_at: Utc::now(),
                body: UsageBody::InstancePeriod {
                    cluster: format!("cluster-{}", f.instance),
                    model: "m".into(),
                    instance_type: TYPES[f.type_index].into(),
                    instance_id: instance,
                    start_ms: f.start,
                    end_ms: f.start + f.len,
                },
            }
        }
    }
}

/// The deliveries: every event at least once, some again, shuffled, cut into batches.
fn deliveries() -> impl Strategy<Value = (Vec<Fact>, Vec<usize>, Vec<usize>)> {
    proptest::collection::vec(fact(), 1..40).prop_flat_map(|facts| {
        let n = facts.len();
        let all: Vec<usize> = (0..n).chain(0..n).collect();
        // Each event once, plus a random subset of second copies, shuffled.
        let order = proptest::collection::vec(any::<bool>(), n).prop_flat_map(move |again| {
            let picked: Vec<usize> = all
                .iter()
                .enumerate()
                .filter(|(i, _)| *i < n || again[*i - n])
                .map(|(_, e)| *e)
                .collect();
            Just(picked).prop_shuffle()
        });
        let batches = proptest::collection::vec(1usize..12, 1..20);
        (Just(facts), order, batches)
    })
}

/// Independently of `event::split`: per (account, day, type) the ms spent and the
/// cost, from each period's overlap with each day; per account × month the cost;
/// per (account, day) the tokens.
#[derive(Debug, Default, PartialEq)]
struct Books {
    instance: BTreeMap<(String, NaiveDate, String), (i64, Decimal)>,
    monthly: BTreeMap<(String, NaiveDate), Decimal>,
    tokens: BTreeMap<(String, NaiveDate), (i64, i64, i64)>,
}

fn expected(facts: &[Fact], prices: &Prices) -> Books {
    let mut books = Books::default();
    for (seq, f) in facts.iter().enumerate() {
        let e = to_event(f, seq);
        let day_of = |ms: i64| Utc.timestamp_millis_opt(ms).unwrap().date_naive();
        match f.tokens {
            Some((i, o)) => {
                let t = books
                    .tokens
                    .entry((e.account.clone(), day_of(f.start)))
                    .or_default();
                t.0 += 1;
                t.1 += i as i64;
                t.2 += o as i64;
            }
            None => {
                let price = prices.per_second(TYPES[f.type_index]).unwrap();
                let (start, end) = (f.start, f.start + f.len);
                let mut day_start = start.div_euclid(DAY_MS) * DAY_MS;
                loop {
                    let overlap = end.min(day_start + DAY_MS) - start.max(day_start);
                    if overlap > 0 || (f.len == 0 && day_start <= start) {
                        let day = day_of(day_start);
                        let cost = Decimal::from(overlap) * price / Decimal::from(1000);
                        let row = books
                            .instance
                            .entry((e.account.clone(), day, TYPES[f.type_index].to_string()))
                            .or_default();
                        row.0 += overlap;
                        row.1 += cost;
                        *books
                            .monthly
                            .entry((
                                e.account.clone(),
                                day - chrono::Days::new(u64::from(chrono::Datelike::day0(&day))),
                            ))
                            .or_default() += cost;
                    }
                    day_start += DAY_MS;
                    if day_start >= end {
                        break;
                    }
                }
            }
        }
    }
    books
}

async fn actual(db: &sea_orm::DatabaseConnection) -> Books {
    let mut books = Books::default();
    let rows = db
        .query_all(Statement::from_string(
            DbBackend::Postgres,
            "SELECT account_id, day, instance_type, SUM(instance_ms)::BIGINT AS ms, SUM(cost) AS cost \
             FROM instance_usage_daily GROUP BY 1, 2, 3",
        ))
        .await
        .unwrap();
    for r in rows {
        books.instance.insert(
            (
                r.try_get("", "account_id").unwrap(),
                r.try_get("", "day").unwrap(),
                r.try_get("", "instance_type").unwrap(),
            ),
            (r.try_get("", "ms").unwrap(), r.try_get("", "cost").unwrap()),
        );
    }
    let rows = db
        .query_all(Statement::from_string(
            DbBackend::Postgres,
            "SELECT account_id, month, cost FROM account_monthly_spend",
        ))
        .await
        .unwrap();
    for r in rows {
        books.monthly.insert(
            (
                r.try_get("", "account_id").unwrap(),
                r.try_get("", "month").unwrap(),
            ),
            r.try_get("", "cost").unwrap(),
        );
    }
    let rows = db
        .query_all(Statement::from_string(
            DbBackend::Postgres,
            "SELECT account_id, day, SUM(requests)::BIGINT AS r, SUM(input_tokens)::BIGINT AS i, \
             SUM(output_tokens)::BIGINT AS o FROM token_usage_daily GROUP BY 1, 2",
        ))
        .await
        .unwrap();
    for r in rows {
        books.tokens.insert(
            (
                r.try_get("", "account_id").unwrap(),
                r.try_get("", "day").unwrap(),
            ),
            (
                r.try_get("", "r").unwrap(),
                r.try_get("", "i").unwrap(),
                r.try_get("", "o").unwrap(),
            ),
        );
    }
    books
}

#[test]
fn any_order_any_duplicates_same_books() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let test_db = rt.block_on(TestDb::new()).unwrap();
    let rules = event::Rules {
        prices: Prices::embedded().unwrap(),
        max_period_ms: 3 * 3_600_000,
    };
    // Few cases: each one is a handful of Postgres transactions on a shared 2-core box.
    let mut runner = TestRunner::new(Config {
        cases: 24,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&deliveries(), |(facts, order, batch_sizes)| {
            let events: Vec<UsageEvent> =
                facts.iter().enumerate().map(|(i, f)| to_event(f, i)).collect();
            let got = rt.block_on(async {
                test_db
                    .db
                    .execute_unprepared(
                        "TRUNCATE usage_events, instance_usage_daily, token_usage_daily, account_monthly_spend",
                    )
                    .await
                    .unwrap();
                let mut rest: &[usize] = &order;
                let mut sizes = batch_sizes.iter().cycle();
                while !rest.is_empty() {
                    let n = (*sizes.next().unwrap()).min(rest.len());
                    let batch: Vec<_> = rest[..n]
                        .iter()
                        .map(|&i| event::check(events[i].clone(), &rules).unwrap())
                        .collect();
                    ledger::record(&test_db.db, &batch).await.unwrap();
                    rest = &rest[n..];
                }
                actual(&test_db.db).await
            });
            let want = expected(&facts, &rules.prices);
            prop_assert_eq!(&got.instance, &want.instance);
            prop_assert_eq!(&got.monthly, &want.monthly);
            prop_assert_eq!(&got.tokens, &want.tokens);
            let total = |b: &Books| b.instance.values().map(|v| v.1).sum::<Decimal>();
            let oracle: Decimal = facts
                .iter()
                .filter(|f| f.tokens.is_none())
                .map(|f| {
                    Decimal::from(f.len)
                        * Decimal::from_str(match f.type_index {
                            0 => "0.00001",
                            1 => "0.000072",
                            _ => "0.00018",
                        })
                        .unwrap()
                        / Decimal::from(1000)
                })
                .sum();
            prop_assert_eq!(total(&got), oracle);
            Ok(())
        })
        .unwrap();
}
