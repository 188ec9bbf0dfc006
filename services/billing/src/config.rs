//! Billing configuration: flags, each also read from the environment.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

use crate::prices::{Prices, PricesError};

/// Billing: takes usage events off the USAGE stream (durable consumer `billing`) into
/// Postgres exactly once, keeps the daily aggregates and monthly spend, and publishes
/// spend alerts.
#[derive(Clone, Parser)]
#[command(name = "switchyard-billing", version, about)]
pub struct Config {
    /// NATS server URL.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,

    /// Postgres, migrated by `switchyard-admin migrate`.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true,
          default_value = switchyard_store::DEFAULT_DATABASE_URL)]
    pub database_url: String,

    /// Address of the health and metrics endpoint (`/healthz`, `/metrics`).
    #[arg(long, env = "BILLING_BIND", default_value = "127.0.0.1:8083")]
    pub bind: SocketAddr,

    /// Prices per instance type per second (JSON; see services/billing/prices.json,
    /// which is compiled in and used when this is unset).
    #[arg(long, env = "BILLING_PRICES_FILE")]
    pub prices_file: Option<PathBuf>,

    /// Most events written to Postgres in one transaction.
    #[arg(long, env = "BILLING_BATCH_SIZE", default_value_t = 500,
          value_parser = clap::value_parser!(u32).range(1..=5_000))]
    pub batch_size: u32,

    /// Longest instance period accepted, in seconds; a longer one is dead-lettered
    /// (instances report every few seconds; a day-long period is a publisher's bug).
    #[arg(long, env = "BILLING_MAX_PERIOD_SECS", default_value_t = 86_400,
          value_parser = clap::value_parser!(u64).range(1..=31 * 86_400))]
    pub max_period_secs: u64,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The database URL may carry a password.
        f.debug_struct("Config")
            .field("nats_url", &switchyard_nats::redact_url(&self.nats_url))
            .field("bind", &self.bind)
            .field("prices_file", &self.prices_file)
            .field("batch_size", &self.batch_size)
            .field("max_period_secs", &self.max_period_secs)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// The prices: the file when one is given, else the compiled-in default.
    pub fn prices(&self) -> Result<Prices, PricesError> {
        match &self.prices_file {
            Some(path) => Prices::load(path),
            None => Prices::embedded(),
        }
    }

    /// The longest period accepted, in ms.
    pub fn max_period_ms(&self) -> i64 {
        i64::try_from(self.max_period_secs.saturating_mul(1000)).unwrap_or(i64::MAX)
    }
}
