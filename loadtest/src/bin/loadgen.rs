//! Open-loop load generator. See `switchyard_loadtest::loadgen`.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use switchyard_loadtest::cli;
use switchyard_loadtest::loadgen::{self, LoadgenConfig, Summary};

/// Open-loop load generator for a chat completions endpoint on this machine.
#[derive(Debug, Parser)]
#[command(name = "loadgen", version)]
struct Args {
    /// Full URL of the chat completions endpoint (loopback only).
    #[arg(long, env = "LOADGEN_URL")]
    url: reqwest::Url,
    /// Offered rate in requests per second, kept whatever the server does.
    #[arg(long, env = "LOADGEN_RATE")]
    rate: f64,
    /// Measured window.
    #[arg(long, env = "LOADGEN_DURATION_SECS", default_value_t = 10.0)]
    duration_secs: f64,
    /// Load before the measured window, not recorded.
    #[arg(long, env = "LOADGEN_WARMUP_SECS", default_value_t = 2.0)]
    warmup_secs: f64,
    /// Most requests outstanding; a request due beyond it is not sent and counts as
    /// "dropped".
    #[arg(long, env = "LOADGEN_MAX_IN_FLIGHT", default_value_t = 10_000)]
    max_in_flight: usize,
    /// Extra header "Name: value" (repeatable; in the env var, one per line).
    #[arg(
        long = "header",
        env = "LOADGEN_HEADERS",
        value_delimiter = '\n',
        hide_env_values = true
    )]
    headers: Vec<String>,
    /// Model to ask for.
    #[arg(long, env = "LOADGEN_MODEL", default_value = "openai/gpt-4o-mini")]
    model: String,
    /// Text of the user message.
    #[arg(long, env = "LOADGEN_PROMPT", default_value = "hello")]
    prompt: String,
    /// Stream (stream: true, include_usage) and also time first token and chunk gaps.
    #[arg(long, env = "LOADGEN_STREAM")]
    stream: bool,
    /// Per-request limit, from sending to the end of the body.
    #[arg(long, env = "LOADGEN_TIMEOUT_SECS", default_value_t = 30.0)]
    timeout_secs: f64,
    /// Print one JSON object instead of a table.
    #[arg(long, env = "LOADGEN_JSON")]
    json: bool,
    /// Runtime worker threads: 1 = current-thread runtime (pin with taskset).
    #[arg(long, env = "LOADGEN_THREADS", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    threads: u16,
}

fn seconds(flag: &str, secs: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(secs).with_context(|| format!("--{flag} must be a number >= 0"))
}

fn main() -> ExitCode {
    let args = Args::parse();
    switchyard_telemetry::init_tracing_with("warn");
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            switchyard_telemetry::report_error(&err);
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let headers = args
        .headers
        .iter()
        .filter(|h| !h.trim().is_empty())
        .map(|h| loadgen::parse_header(h))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let config = LoadgenConfig {
        url: args.url,
        rate: args.rate,
        duration: seconds("duration-secs", args.duration_secs)?,
        warmup: seconds("warmup-secs", args.warmup_secs)?,
        max_in_flight: args.max_in_flight,
        headers,
        model: args.model,
        prompt: args.prompt,
        stream: args.stream,
        timeout: seconds("timeout-secs", args.timeout_secs)?,
    };
    // Refuse bad targets and bounds before anything starts.
    config.validate()?;
    let runtime =
        cli::runtime(usize::from(args.threads)).context("cannot start the tokio runtime")?;
    let summary = runtime.block_on(loadgen::run(
        &config,
        switchyard_telemetry::shutdown_signal(),
    ))?;
    report(&summary, args.json)
}

/// Writes the summary to stdout.
fn report(summary: &Summary, json: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer(&mut out, summary)?;
        writeln!(out)?;
    } else {
        writeln!(out, "{summary}")?;
    }
    out.flush()?;
    Ok(())
}
