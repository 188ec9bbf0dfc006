//! Mock OpenAI provider for tests and benchmarks. See `switchyard_loadtest::mock::openai`.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use switchyard_loadtest::mock::openai::{self, MockConfig};

/// Mock OpenAI chat completions provider (POST /v1/chat/completions).
#[derive(Debug, Parser)]
#[command(name = "mock-provider", version)]
struct Args {
    /// Address to listen on; port 0 picks a free port (printed on stdout).
    #[arg(long, env = "MOCK_BIND", default_value = "127.0.0.1:9090")]
    bind: String,
    /// Delay before the response, or before the first chunk when streaming.
    #[arg(long, env = "MOCK_LATENCY_MS", default_value_t = 0)]
    latency_ms: u64,
    /// Number of content chunks when streaming (also the reply's completion_tokens).
    #[arg(long, env = "MOCK_CHUNKS", default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    chunks: u32,
    /// Delay between consecutive content chunks.
    #[arg(long, env = "MOCK_CHUNK_DELAY_MS", default_value_t = 0)]
    chunk_delay_ms: u64,
    /// Error mode: answer every request with this status in OpenAI's error format.
    #[arg(long, env = "MOCK_FAIL_STATUS",
          value_parser = clap::value_parser!(u16).range(400..=599))]
    fail_status: Option<u16>,
    /// Require `Authorization: Bearer <key>`; others get OpenAI's 401. Prefer the env var.
    #[arg(long, env = "MOCK_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Runtime worker threads: 1 = current-thread runtime, 0 = one per core.
    #[arg(long, env = "MOCK_THREADS", default_value_t = 0)]
    threads: usize,
}

fn main() -> ExitCode {
    let args = Args::parse();
    switchyard_telemetry::init_tracing_with("info");
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            switchyard_telemetry::report_error(&err);
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let config = MockConfig {
        latency: Duration::from_millis(args.latency_ms),
        chunks: usize::try_from(args.chunks)?,
        chunk_delay: Duration::from_millis(args.chunk_delay_ms),
        fail_status: args
            .fail_status
            .map(axum::http::StatusCode::from_u16)
            .transpose()?,
        api_key: args.api_key,
    };
    let runtime =
        switchyard_telemetry::runtime(args.threads).context("cannot start the tokio runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&args.bind)
            .await
            .with_context(|| format!("cannot bind {}", args.bind))?;
        let addr = listener.local_addr()?;
        tracing::info!(%addr, ?config, "mock OpenAI provider listening");
        announce(addr)?;
        openai::serve(listener, config, switchyard_telemetry::shutdown_signal()).await?;
        tracing::info!("mock OpenAI provider stopped");
        Ok(())
    })
}

/// The one stdout line, for scripts that bind port 0.
fn announce(addr: SocketAddr) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "listening on http://{addr}")?;
    out.flush()
}
