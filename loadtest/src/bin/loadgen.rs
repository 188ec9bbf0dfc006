//! Open-loop load generator. See `switchyard_loadtest::loadgen`.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use switchyard_loadtest::loadgen::{self, LoadgenConfig, Provider, Summary};

/// Open-loop load generator for a chat endpoint on this machine, in OpenAI's,
/// Anthropic's or Gemini's wire format.
#[derive(Debug, Parser)]
#[command(name = "loadgen", version)]
struct Args {
    /// Endpoint (loopback only): the full chat completions URL (openai), the full
    /// messages URL, …/v1/messages (anthropic), or the API root, to which
    /// /v1beta/models/{model}:streamGenerateContent?alt=sse (or :generateContent) is
    /// added (gemini).
    #[arg(long, env = "LOADGEN_URL")]
    url: reqwest::Url,
    /// Wire format: request body, required headers, URL shape and stream grammar.
    /// Keys go in --header / LOADGEN_HEADERS: "Authorization: Bearer …" (openai),
    /// "x-api-key: …" (anthropic; anthropic-version: 2023-06-01 is added unless given),
    /// "x-goog-api-key: …" (gemini).
    #[arg(long, env = "LOADGEN_PROVIDER", value_enum, default_value_t = Provider::OpenAi)]
    provider: Provider,
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
    /// Model to ask for [default: openai/gpt-4o-mini, claude-3-5-haiku-latest,
    /// gemini-2.0-flash by provider].
    #[arg(long, env = "LOADGEN_MODEL")]
    model: Option<String>,
    /// Text of the user message.
    #[arg(long, env = "LOADGEN_PROMPT", default_value = "hello")]
    prompt: String,
    /// Stream (SSE in the provider's grammar) and also time first token and chunk gaps.
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
        provider: args.provider,
        rate: args.rate,
        duration: seconds("duration-secs", args.duration_secs)?,
        warmup: seconds("warmup-secs", args.warmup_secs)?,
        max_in_flight: args.max_in_flight,
        headers,
        model: args
            .model
            .unwrap_or_else(|| args.provider.default_model().to_owned()),
        prompt: args.prompt,
        stream: args.stream,
        timeout: seconds("timeout-secs", args.timeout_secs)?,
    };
    // Refuse bad targets and bounds before anything starts.
    config.validate()?;
    let runtime = switchyard_telemetry::runtime(usize::from(args.threads))
        .context("cannot start the tokio runtime")?;
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
