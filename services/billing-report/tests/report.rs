//! The `billing-report` binary against a Postgres database of the test's own: its
//! table, CSV and JSON agree with each other and with SQL; bad input fails clearly.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

use std::process::{Command, Output};
use std::str::FromStr;

use chrono::{NaiveDate, Utc};
use rust_decimal::Decimal;
use sea_orm::{ActiveValue::Set, ConnectionTrait, DbBackend, EntityTrait, Statement};
use serde_json::Value;
use switchyard_store::entities::{instance_usage_daily, token_usage_daily};
use switchyard_store::keys;
use switchyard_store::testing::TestDb;

fn dec(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

fn day(d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 3, d).unwrap()
}

async fn seed(db: &TestDb) {
    keys::create_account(&db.db, "acme", None).await.unwrap();
    keys::create_account(&db.db, "idle", None).await.unwrap();
    let rows = [
        (9, "c1", "m1", "cpu", "0.00001", 1_800_000),
        (10, "c1", "m1", "cpu", "0.00001", 3_435_123),
        (10, "c2", "m2", "gpu-a100-40gb", "0.00018", 600_001),
        (11, "c2", "m2", "gpu-a100-40gb", "0.00018", 86_400_000),
        (11, "c2", "m2", "gpu-t4-16gb", "0.000072", 7),
        (12, "c1", "m1", "cpu", "0.00001", 999_999), // outside the range asked for
    ];
    for (d, cluster, model, itype, price, ms) in rows {
        let price = dec(price);
        instance_usage_daily::Entity::insert(instance_usage_daily::ActiveModel {
            account_id: Set("acme".into()),
            day: Set(day(d)),
            cluster: Set(cluster.into()),
            model: Set(model.into()),
            instance_type: Set(itype.into()),
            price_per_second: Set(price),
            instance_ms: Set(ms),
            cost: Set(Decimal::from(ms) * price / Decimal::from(1000)),
            periods: Set(1),
            updated_at: Set(Utc::now()),
        })
        .exec(&db.db)
        .await
        .unwrap();
    }
    for (d, provider, model, n) in [
        (9, "openai", "gpt-4o-mini", 3),
        (10, "anthropic", "claude-x", 2),
    ] {
        token_usage_daily::Entity::insert(token_usage_daily::ActiveModel {
            account_id: Set("acme".into()),
            day: Set(day(d)),
            provider: Set(provider.into()),
            model: Set(model.into()),
            requests: Set(n),
            input_tokens: Set(100 * n),
            output_tokens: Set(10 * n),
            cached_input_tokens: Set(n),
            updated_at: Set(Utc::now()),
        })
        .exec(&db.db)
        .await
        .unwrap();
    }
}

fn report(db: &TestDb, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_billing-report"))
        .args(args)
        .env("DATABASE_URL", &db.url)
        .output()
        .unwrap()
}

fn ok(db: &TestDb, args: &[&str]) -> String {
    let out = report(db, args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// (key cells, instance-seconds, price, cost) of each row, and the total's
/// (seconds, cost), from the JSON output.
type Rows = (Vec<(Vec<String>, String, String, String)>, (String, String));

fn from_json(v: &Value, keys: &[&str]) -> Rows {
    let rows = v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                keys.iter()
                    .map(|k| r[*k].as_str().unwrap_or_default().to_string())
                    .collect(),
                r["instance_seconds"].as_str().unwrap().to_string(),
                r["price_per_second"]
                    .as_str()
                    .unwrap_or("mixed")
                    .to_string(),
                r["cost"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let t = &v["total"];
    (
        rows,
        (
            t["instance_seconds"].as_str().unwrap().to_string(),
            t["cost"].as_str().unwrap().to_string(),
        ),
    )
}

fn from_csv(text: &str, keys: &[&str]) -> Rows {
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let mut rows = Vec::new();
    let mut total = None;
    for line in lines {
        let cells: Vec<&str> = line.split(',').collect();
        assert_eq!(cells.len(), header.len(), "{line}");
        match cells[0] {
            "instances" => rows.push((
                keys.iter().map(|k| cells[col(k)].to_string()).collect(),
                cells[col("instance_seconds")].to_string(),
                match cells[col("price_per_second_usd")] {
                    "" => "mixed".to_string(),
                    p => p.to_string(),
                },
                cells[col("cost_usd")].to_string(),
            )),
            "total" => {
                total = Some((
                    cells[col("instance_seconds")].to_string(),
                    cells[col("cost_usd")].to_string(),
                ))
            }
            "tokens" => {}
            other => panic!("unknown section {other}"),
        }
    }
    (rows, total.unwrap())
}

fn from_table(text: &str, nkeys: usize) -> Rows {
    let mut lines = text.lines().skip_while(|l| !l.contains("instance-seconds"));
    lines.next().unwrap();
    let mut rows = Vec::new();
    for line in lines {
        let cells: Vec<&str> = line.split_whitespace().collect();
        if cells.first() == Some(&"total") {
            return (rows, (cells[1].to_string(), cells[2].to_string()));
        }
        assert_eq!(cells.len(), nkeys + 3, "{line}");
        rows.push((
            cells[..nkeys].iter().map(|s| s.to_string()).collect(),
            cells[nkeys].to_string(),
            cells[nkeys + 1].to_string(),
            cells[nkeys + 2].to_string(),
        ));
    }
    panic!("no total line in\n{text}");
}

#[tokio::test]
async fn table_csv_and_json_agree_with_each_other_and_with_sql() {
    let db = TestDb::new().await.unwrap();
    seed(&db).await;
    let sql = db
        .db
        .query_one(Statement::from_string(
            DbBackend::Postgres,
            "SELECT SUM(instance_ms)::BIGINT AS ms, SUM(cost) AS cost FROM instance_usage_daily \
             WHERE account_id = 'acme' AND day BETWEEN '2026-03-09' AND '2026-03-11'",
        ))
        .await
        .unwrap()
        .unwrap();
    let sql_ms: i64 = sql.try_get("", "ms").unwrap();
    let sql_cost: Decimal = sql.try_get("", "cost").unwrap();
    // By hand: 5,835,124 ms of cpu and a100 … exactly.
    assert_eq!(
        sql_cost,
        dec("0.05235123") + dec("0.10800018") + dec("15.552") + dec("0.000000504")
    );

    let base = [
        "--account",
        "acme",
        "--from",
        "2026-03-09",
        "--to",
        "2026-03-11",
    ];
    let cases: [(Option<&str>, &[&str]); 5] = [
        (None, &["day", "cluster", "model", "instance_type"]),
        (Some("day"), &["day"]),
        (Some("cluster"), &["cluster"]),
        (Some("model"), &["model"]),
        (Some("instance-type"), &["instance_type"]),
    ];
    for (by, keys) in cases {
        let mut args: Vec<&str> = base.to_vec();
        if let Some(by) = by {
            args.extend(["--by", by]);
        }
        let with = |format: &str| {
            let mut a = args.clone();
            a.extend(["--format", format]);
            ok(&db, &a)
        };
        let json: Value = serde_json::from_str(&with("json")).unwrap();
        let from_json = from_json(&json, keys);
        let from_csv = from_csv(&with("csv"), keys);
        let from_table = from_table(&with("table"), keys.len());
        assert_eq!(from_json, from_csv, "by {by:?}");
        assert_eq!(from_json, from_table, "by {by:?}");
        // The total is SQL's, exactly; and so is the sum of the rows.
        assert_eq!(dec(&from_json.1.1), sql_cost);
        assert_eq!(dec(&from_json.1.0), Decimal::new(sql_ms, 3));
        let row_sum: Decimal = from_json.0.iter().map(|r| dec(&r.3)).sum();
        assert_eq!(row_sum, sql_cost);
        assert_eq!(json["total"]["amount_due"], "15.71");
        // Every row's cost is its seconds times its price, where it has one price.
        for (_, secs, price, cost) in &from_json.0 {
            if price != "mixed" {
                assert_eq!(dec(secs) * dec(price), dec(cost));
            }
        }
    }
    // Grouped by instance type: one price per row; by day, the 11th mixes two.
    let by_type: Value = serde_json::from_str(&ok(
        &db,
        &[&base[..], &["--by", "instance-type", "--format", "json"]].concat(),
    ))
    .unwrap();
    let prices: Vec<&str> = by_type["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["price_per_second"].as_str().unwrap())
        .collect();
    assert_eq!(prices, ["0.00001", "0.00018", "0.000072"]);
    // Tokens: shown, not charged.
    let all: Value =
        serde_json::from_str(&ok(&db, &[&base[..], &["--format", "json"]].concat())).unwrap();
    let tokens = all["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 2);
    assert!(tokens.iter().all(|t| t["charge"] == "0"));
    assert_eq!(tokens[0]["input_tokens"], 300);
    let table = ok(&db, &base);
    assert!(
        table.contains("Token usage (recorded, not charged)"),
        "{table}"
    );
    assert!(table.contains("gpt-4o-mini"), "{table}");
}

#[tokio::test]
async fn bad_input_fails_clearly() {
    let db = TestDb::new().await.unwrap();
    seed(&db).await;
    let out = report(
        &db,
        &[
            "--account",
            "acme",
            "--from",
            "2026-02-30",
            "--to",
            "2026-03-01",
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("YYYY-MM-DD"), "{err}");

    let out = report(
        &db,
        &[
            "--account",
            "nobody",
            "--from",
            "2026-03-01",
            "--to",
            "2026-03-31",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no account 'nobody'"), "{err}");

    let out = report(
        &db,
        &[
            "--account",
            "acme",
            "--from",
            "2026-03-31",
            "--to",
            "2026-03-01",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("before --from"));

    let out = report(
        &db,
        &[
            "--account",
            "acme",
            "--from",
            "2026-03-01",
            "--to",
            "2026-03-31",
            "--by",
            "week",
        ],
    );
    assert!(!out.status.success());

    // An account without usage gets an empty report, not an error.
    let empty = ok(
        &db,
        &[
            "--account",
            "idle",
            "--from",
            "2026-03-01",
            "--to",
            "2026-03-31",
            "--format",
            "json",
        ],
    );
    let v: Value = serde_json::from_str(&empty).unwrap();
    assert_eq!(v["total"]["cost"], "0");
    assert_eq!(v["rows"].as_array().unwrap().len(), 0);
}

#[test]
fn help_explains_every_flag() {
    let out = Command::new(env!("CARGO_BIN_EXE_billing-report"))
        .arg("--help")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--account",
        "--from",
        "--to",
        "--by",
        "--format",
        "--database-url",
    ] {
        assert!(text.contains(flag), "{flag} in\n{text}");
    }
}
