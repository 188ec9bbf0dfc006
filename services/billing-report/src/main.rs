//! `billing-report`: see the crate docs and `--help`.

use std::io::Write;
use std::process::ExitCode;

use chrono::NaiveDate;
use clap::Parser;
use switchyard_billing_report::{By, Format, build, render};

/// An account's open-model bill — instance-seconds, price per second and cost per row
/// and in total — and its token usage (recorded, not charged), from the billing
/// database. Costs are exact; only the amount due is rounded, once, to the cent.
#[derive(Parser)]
#[command(name = "billing-report", version, about)]
struct Cli {
    /// The account id.
    #[arg(long)]
    account: String,
    /// First day of the report, UTC, YYYY-MM-DD (included).
    #[arg(long, value_parser = parse_date)]
    from: NaiveDate,
    /// Last day of the report, UTC, YYYY-MM-DD (included).
    #[arg(long, value_parser = parse_date)]
    to: NaiveDate,
    /// Group rows by one dimension; without it, one row per day × cluster × model ×
    /// instance type.
    #[arg(long, value_enum)]
    by: Option<By>,
    /// Output: an aligned table, CSV (one header; a `section` column tells instance
    /// rows, the total and token rows apart) or JSON (amounts as exact decimal strings).
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
    /// Postgres holding the billing tables.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true,
          default_value = switchyard_store::DEFAULT_DATABASE_URL)]
    database_url: String,
}

fn parse_date(text: &str) -> Result<NaiveDate, String> {
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .map_err(|e| format!("'{text}' is not a date as YYYY-MM-DD (UTC), e.g. 2026-03-01 ({e})"))
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            switchyard_telemetry::report_error(&e);
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let db = switchyard_store::connect(&cli.database_url, false)
        .await
        .map_err(|e| {
            anyhow::anyhow!("cannot connect to the billing database (DATABASE_URL): {e}")
        })?;
    let report = build(&db, &cli.account, cli.from, cli.to, cli.by).await?;
    let text = render(&report, cli.format);
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    if !text.ends_with('\n') {
        writeln!(out)?;
    }
    db.close().await?;
    Ok(())
}
