//! `switchyard-nats apply`: creates or updates every stream, consumer and KV bucket.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use switchyard_nats::{Definitions, apply_recreating};

/// Applies Switchyard's NATS definitions (streams, consumers, KV buckets), idempotently.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// NATS server URL.
    #[arg(
        long,
        env = "NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        global = true
    )]
    nats_url: String,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Create or update everything; safe to run again.
    Apply {
        /// Read definitions from this directory (the repo's `nats/`) instead of the
        /// copies compiled into this binary.
        #[arg(long, env = "SWITCHYARD_NATS_DIR")]
        dir: Option<PathBuf>,
        /// Replicas for every stream and bucket (3 on a production cluster).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
        replicas: u8,
        /// Delete and recreate these streams first (their messages are lost), for
        /// settings NATS cannot change in place, e.g. a stream's persist mode.
        #[arg(long, value_delimiter = ',')]
        recreate: Vec<String>,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    switchyard_telemetry::init_tracing();
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            switchyard_telemetry::report_error(&e);
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Cmd::Apply {
            dir,
            replicas,
            recreate,
        } => {
            let defs = match &dir {
                Some(dir) => Definitions::load(dir)?,
                None => Definitions::embedded()?,
            }
            .with_replicas(usize::from(replicas));
            let client = async_nats::connect(&cli.nats_url)
                .await
                .with_context(|| format!("cannot connect to NATS at {}", cli.nats_url))?;
            let js = async_nats::jetstream::new(client);
            let applied = apply_recreating(&js, &defs, &recreate).await?;
            tracing::info!(
                streams = applied.streams.len(),
                consumers = applied.consumers.len(),
                kv = applied.kv.len(),
                "NATS definitions applied"
            );
        }
    }
    Ok(())
}
